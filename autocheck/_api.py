"""The public entry points: check_grad and assert_grad_matches.

Each validates its arguments into :class:`~autocheck._check.Options` and runs one check
(:func:`autocheck._check.run`); this module holds the signatures and their documentation.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ._check import AUTOMATIC, options, run
from ._errors import GradientMismatch
from ._report import Report
from ._search import Drawn


def check_grad(
    f: Callable[..., torch.Tensor],
    *inputs: Any,
    reference: Any = None,
    order: int = 1,
    dtype: Any = None,
    device: Any = None,
    examples: int | None = None,
    seed: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    domain: Any = None,
    strict: bool = False,
    deadline: Any = AUTOMATIC,
    settings: Any = None,
) -> Report:
    """Compare autograd's gradient of ``f`` with the exact symbolic derivative; return a report.

    Takes the same arguments as :func:`assert_grad_matches` and never raises for a
    mismatch: look at ``report.ok``.
    """
    __tracebackhide__ = True
    drawn = any(isinstance(x, Drawn) for x in inputs)  # tensors the check draws: a search, with its deadline
    settings_ = options(
        f, bool(inputs) and not drawn, reference=reference, order=order, dtype=dtype, device=device, examples=examples, seed=seed,
        rtol=rtol, atol=atol, domain=domain, strict=strict, deadline=deadline, settings=settings,
    )
    return run(f, inputs, domain, settings_)


def assert_grad_matches(
    f: Callable[..., torch.Tensor],
    *inputs: Any,
    reference: Any = None,
    order: int = 1,
    dtype: Any = None,
    device: Any = None,
    examples: int | None = None,
    seed: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    domain: Any = None,
    strict: bool = False,
    deadline: Any = AUTOMATIC,
    settings: Any = None,
) -> Report:
    """Assert that autograd's gradient of ``f`` equals the exact symbolic derivative.

    ``f`` is traced once into SymPy and differentiated exactly; autograd runs on fresh
    leaf tensors (the caller's tensors and their ``.grad`` are never touched), with random
    upstream gradients of magnitude 0.5 to 0.9 so that a backward that ignores
    ``grad_output`` fails. Every element is judged against the exact value.

    A mismatch is reported only when autograd is wrong for the code as written: results
    that a correct backward may produce (rounding where the chain rule cancels, a local
    derivative computed from a rounded saved output, a kink) pass.

    Args:
        f: a function of tensors written in ordinary torch code.
        *inputs: tensors to check at. Without them, points are drawn across the whole
            real domain of ``f`` (special values, every magnitude, bulk batches).
        reference: the mathematics, when ``f`` cannot be traced or has a hand-written
            backward: a function of tensors (traced instead of ``f``) or a SymPy expression
            in symbols named after ``f``'s parameters.
        order: 1 compares gradients; 2 compares second derivatives (through
            ``create_graph=True``), which catches a backward that is not itself differentiable.
        dtype: float64, float32, float16 or bfloat16. Default: the inputs' dtype, or float64.
        device: "cpu", "cuda" or a torch.device. Default: the inputs' device, or CPU.
        examples: batches of points when inputs are drawn (default 25: the special values,
            then batches of 4096 points).
        seed: makes drawn points and upstream gradients reproducible; printed on failure.
        rtol, atol: give both, or neither for the per-dtype defaults below. An element
            passes when ``|autograd - exact| <= atol + rtol * max(|exact|, scale)``, where
            ``scale`` is the rounding error a correct autograd may make.

            ========  =========  ========
            dtype     rtol       atol
            ========  =========  ========
            float64   5.7e-14    2.2e-308
            float32   1.5e-5     1.2e-38
            float16   7.8e-3     6.1e-5
            bfloat16  6.3e-2     1.2e-38
            ========  =========  ========
        domain: where to draw points: ``(low, high)`` for every parameter, a list with one
            interval per parameter, or a dict by parameter name.
        strict: for kernel authors: a local derivative computed from a rounded saved
            output gets no allowance, so precision lost that way (sigmoid's and expm1's
            backward in their tails) is reported.
        deadline: seconds the check may take (default 5; None for no limit). A check that
            runs out reports what it checked and says so; user code still running at the
            deadline is interrupted with :class:`autocheck.DeadlineExceeded`.
        settings: a ``hypothesis.settings``; its ``max_examples`` sets ``examples``.

    Returns:
        The :class:`Report` (``report.ok`` is True).

    Raises:
        GradientMismatch: autograd is wrong somewhere, with a message like::

            gradient of <lambda> does not match the exact derivative (float64, cpu)
            Mismatched elements: 3 / 12 (25.0%) (up to 0 allowed)
            ...
        NothingChecked: no gradient element could be judged (every point outside the
            domain, every forward value infinite, NaN inputs, empty tensors).

    Example:
        >>> import torch, autocheck
        >>> report = autocheck.assert_grad_matches(lambda x: x * x * torch.exp(x), seed=0)
        >>> report.ok
        True
    """
    __tracebackhide__ = True
    report = check_grad(
        f, *inputs, reference=reference, order=order, dtype=dtype, device=device, examples=examples, seed=seed,
        rtol=rtol, atol=atol, domain=domain, strict=strict, deadline=deadline, settings=settings,
    )
    if not report.ok:
        raise GradientMismatch(str(report), report=report, counterexample=report.counterexample)
    return report


def check_module(module: torch.nn.Module, *inputs: Any, **options: Any) -> Report:
    """Check the gradients of a module's floating inputs and of every parameter that
    requires grad, at ``inputs``; return a report (``report.ok``), failing rows named after
    the parameter (``layer1.weight[3, 7]``).

    The module runs through ``torch.func.functional_call`` with the parameters as inputs,
    so custom ``autograd.Function``\\ s inside it are checked too. Integer inputs (indices,
    targets) are held fixed. A module that returns a tuple (``nn.MultiheadAttention``) is
    checked on its first output. Put the module in ``eval()`` mode when it has dropout.
    Keyword arguments are those of :func:`check_grad` (``order``, ``dtype``, ``seed``,
    ``rtol`` and ``atol``, ``deadline``).

    Example:
        >>> import torch, autocheck
        >>> layer = torch.nn.Linear(20, 8).double()
        >>> autocheck.check_module(layer, torch.randn(4, 20, dtype=torch.float64), seed=0).ok
        True
    """
    __tracebackhide__ = True
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}: {module!r}")
    if not inputs:
        raise TypeError(f"check_module needs the inputs to run {type(module).__name__} at: check_module(module, x)")
    for key in ("reference", "domain", "examples", "settings"):
        if key in options:
            raise TypeError(f"check_module does not take {key}=: it checks the module's own code at the given inputs")
    parameters = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    moving = [k for k, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    input_names = ["input"] if len(moving) == 1 else [f"input{k}" for k in moving]
    names = [*input_names, *[name for name, _ in parameters]]

    def run_module(*tensors: torch.Tensor) -> torch.Tensor:
        args = list(inputs)
        for k, t in zip(moving, tensors):
            args[k] = t
        values = dict(zip([name for name, _ in parameters], tensors[len(moving):]))
        out = torch.func.functional_call(module, values, tuple(args))
        return out[0] if isinstance(out, (tuple, list)) else out

    run_module.__name__ = run_module.__qualname__ = type(module).__name__
    run_module.__autocheck_names__ = tuple(names)  # type: ignore[attr-defined]
    run_module.__autocheck_directional__ = True  # type: ignore[attr-defined]
    run_module.__autocheck_module_inputs__ = len(moving)  # type: ignore[attr-defined]
    tensors = [inputs[k] for k in moving] + [p.detach() for _, p in parameters]
    # Running the module updates its buffers (batch norm's running statistics in training
    # mode): they are put back as they were.
    buffers = [(b, b.detach().clone()) for _, b in module.named_buffers()]
    try:
        return check_grad(run_module, *tensors, **options)
    finally:
        with torch.no_grad():
            for buffer, before in buffers:
                buffer.copy_(before)


def assert_module_grads(module: torch.nn.Module, *inputs: Any, **options: Any) -> Report:
    """:func:`check_module`, raising :class:`autocheck.GradientMismatch` where a gradient is wrong."""
    __tracebackhide__ = True
    report = check_module(module, *inputs, **options)
    if not report.ok:
        raise GradientMismatch(str(report), report=report, counterexample=report.counterexample)
    return report
