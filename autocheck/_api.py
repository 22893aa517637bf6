"""The public entry points: check_grad and assert_grad_matches, check_module, verify_grads.

Each validates its arguments into :class:`~autocheck._check.Options` and runs one check
(:func:`autocheck._check.run`); this module holds the signatures and their documentation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from . import _complex
from ._check import AUTOMATIC, options, run
from ._errors import GradientMismatch
from ._report import Report
from ._search import Drawn
from ._symbolic import names_of


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
    modes: Any = ("rev",),
) -> Report:
    """Compare autograd's gradient of ``f`` with the exact symbolic derivative; return a report.

    Takes the same arguments as :func:`assert_grad_matches` and never raises for a
    mismatch: look at ``report.ok``.
    """
    __tracebackhide__ = True
    complex_check = _complex.is_complex_check(inputs, dtype)
    if complex_check:  # as a real function of the real and imaginary parts (see autocheck._complex)
        if callable(reference):  # the mathematics, given the same way
            reference = _complex.as_real(reference, inputs, dtype)[0]
        f, inputs, dtype = _complex.as_real(f, inputs, dtype)
    drawn = any(isinstance(x, Drawn) for x in inputs)  # tensors the check draws: a search, with its deadline
    settings_ = options(
        f, bool(inputs) and not drawn, reference=reference, order=order, dtype=dtype, device=device, examples=examples, seed=seed,
        rtol=rtol, atol=atol, domain=domain, strict=strict, deadline=deadline, settings=settings, modes=modes,
    )
    report = run(f, inputs, domain, settings_)
    if complex_check:
        report.dtype = _complex.complex_dtype(report.dtype)
    return report


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
    modes: Any = ("rev",),
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
            ``create_graph=True``), which catches a backward that is not itself differentiable;
            3 to 6 take the gradients through their graph again, once per order (functions
            of scalars, and of tensors of up to 100 elements).
        dtype: float64, float32, float16 or bfloat16; complex128 or complex64 for a function
            of complex inputs (checked by real and imaginary parts, with torch's convention
            for ``z.grad``: see the complex numbers page). Default: the inputs' dtype, or float64.
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
        settings: a ``hypothesis.settings`` for a check that draws its points: its
            ``max_examples`` (batches), ``deadline`` (per batch), ``database``,
            ``derandomize`` and ``verbosity`` (see the Hypothesis page of the docs).
            Default: the loaded Hypothesis profile, where one other than the default is.
        modes: which of torch's ways to compute a derivative are judged: ``"rev"``
            (reverse mode: ``x.grad`` after backward), ``"fwd"`` (forward mode: the JVP of
            dual tensors and of ``torch.func.jvp``, with random tangents; at order 2 or more,
            forward over reverse) and ``"vmap"`` (batched gradients: ``torch.func.vjp``'s
            pullback vmapped over several upstream gradients). Default ``("rev",)``.

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
        rtol=rtol, atol=atol, domain=domain, strict=strict, deadline=deadline, settings=settings, modes=modes,
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


def verify_grads(loss_fn: Callable[..., Any], params: Any, *batch: Any, **options: Any) -> Report:
    """Verify the gradients a training step's ``loss.backward()`` left in ``.grad``.

    After ``loss = loss_fn(...)`` and ``loss.backward()``, the ``.grad`` of each parameter
    is compared with the exact gradient of the same loss at the parameters' current values
    (by directional derivatives of ``loss_fn``'s own code: any size, no re-tracing per step).
    Nothing is changed: not the parameters, not their ``.grad``, not a module's buffers
    (the module runs on copies of its state, through ``torch.func.functional_call``).

    ``params`` and how ``loss_fn`` is called:

    * a sequence of tensors ``[w, b]``: ``loss_fn(w, b, *batch)``, rows named after
      ``loss_fn``'s parameters;
    * a dict ``{"w": w, "b": b}``: ``loss_fn(w, b, *batch)``, rows named by the keys;
    * an ``nn.Module``: ``loss_fn(module, *batch)``, every parameter that requires grad,
      rows named ``layer1.weight[3, 7]``.

    The loss must be a scalar that does not change from one call to the next (dropout off).
    Keyword arguments: ``rtol`` and ``atol`` (both, or neither for the dtype's defaults),
    ``seed``, ``deadline``. Returns the :class:`Report`; raises
    :class:`autocheck.GradientMismatch` where a gradient is wrong.

    Example:
        >>> import torch, autocheck
        >>> w = torch.randn(3, 1, requires_grad=True)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def loss_fn(w, x, y):
        ...     return ((x @ w - y) ** 2).mean()
        >>> loss_fn(w, x, y).backward()
        >>> autocheck.verify_grads(loss_fn, [w], x, y, seed=0).ok
        True
    """
    __tracebackhide__ = True
    for key in options:
        if key not in ("rtol", "atol", "seed", "deadline"):
            raise TypeError(f"verify_grads does not take {key}=: it checks the .grad a backward left, at the "
                            "parameters' current values (keywords: rtol, atol, seed, deadline)")
    module = params if isinstance(params, torch.nn.Module) else None
    if module is not None:
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    elif isinstance(params, dict):
        named = list(params.items())
    elif isinstance(params, (list, tuple)):
        declared = names_of(loss_fn, None, len(params) + len(batch)) or ()
        named = [(declared[k] if k < len(declared) else f"param{k}", p) for k, p in enumerate(params)]
    else:
        raise TypeError("params must be a list or tuple of tensors, a dict of them by name, or an nn.Module; "
                        f"got params={params!r}")
    if not named:
        raise ValueError("params holds no tensor that requires grad: nothing to verify")
    for name, p in named:
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise TypeError(f"params[{name!r}] must be a floating tensor, got {p!r}")
    if all(p.grad is None for _, p in named):
        name = named[0][0]
        raise ValueError(
            f"{name}.grad is None: call loss.backward() before verify_grads, on a loss computed from these "
            "parameters (and pass the tensors the loss used)"
        )
    # A parameter the loss does not use keeps .grad None after backward: its gradient is zero.
    # A sparse .grad (nn.Embedding(sparse=True)) is compared as the dense gradient it stands for.
    grads = [torch.zeros_like(p) if p.grad is None else
             (p.grad.to_dense() if p.grad.is_sparse else p.grad).detach().clone() for _, p in named]
    names = [name for name, _ in named]

    # The exact side runs the loss in float64: the batch, and a module's other state (buffers,
    # frozen parameters), are cast to the parameters' dtype where they are floating.
    def like(value: Any, dtype: torch.dtype) -> Any:
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    if module is not None:
        whole = _LossOfModule(module, loss_fn)
        state = [(f"module.{name}", t) for name, t in [*module.named_buffers(), *module.named_parameters()]
                 if name not in names]

        def loss_at(*tensors: torch.Tensor) -> torch.Tensor:
            dtype = tensors[0].dtype
            values = {key: like(t.detach(), dtype).clone() for key, t in state}  # batch norm writes its statistics
            values.update({f"module.{name}": t for name, t in zip(names, tensors)})
            return torch.func.functional_call(whole, values, tuple(like(b, dtype) for b in batch))
    else:
        def loss_at(*tensors: torch.Tensor) -> torch.Tensor:
            return loss_fn(*tensors, *[like(b, tensors[0].dtype) for b in batch])

    class StoredGradients(torch.autograd.Function):
        """The loss, with the gradients ``.grad`` held as its backward (times the upstream gradient)."""

        @staticmethod
        def forward(ctx: Any, *tensors: torch.Tensor) -> torch.Tensor:
            out = loss_at(*tensors)
            if not isinstance(out, torch.Tensor) or out.numel() != 1:
                raise ValueError(f"loss_fn must return a tensor of one element (what loss.backward() takes), "
                                 f"got {out!r}")
            return out

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(grad * g.to(grad.dtype) for g in grads)

    def stored(*tensors: torch.Tensor) -> torch.Tensor:
        return StoredGradients.apply(*tensors)

    label = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    stored.__name__ = stored.__qualname__ = label
    stored.__autocheck_names__ = tuple(names)  # type: ignore[attr-defined]
    stored.__autocheck_directional__ = True  # type: ignore[attr-defined]
    report = check_grad(stored, *[p.detach() for _, p in named], **options)
    report.reproduce = ""
    # The rows are per unit of the upstream gradient autocheck replayed the stored .grad with:
    # .grad itself and the exact gradient, as loss.backward() (upstream 1) has them.
    report.worst = [dataclasses.replace(row, upstream=None) for row in report.worst]
    report.notes.append("Verified: the .grad a backward left (loss.backward(), upstream gradient 1), at the "
                        "parameters' current values")
    if not report.ok:
        raise GradientMismatch(str(report), report=report)
    return report


class _LossOfModule(torch.nn.Module):
    """``loss_fn(module, *batch)`` as a module, for ``torch.func.functional_call``."""

    def __init__(self, module: torch.nn.Module, loss_fn: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, *batch: Any) -> Any:
        return self.loss_fn(self.module, *batch)
