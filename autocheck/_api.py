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
    settings_ = options(
        f, bool(inputs), reference=reference, order=order, dtype=dtype, device=device, examples=examples, seed=seed,
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
