"""The pipeline put together: check_grad and assert_grad_matches.

trace → symbolic derivative → exact reference (float64, mpmath where needed) → autograd
on fresh leaves with random cotangents → judgement → report.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch

from . import _oracle, _printer
from ._compare import (
    Judgement,
    Tolerance,
    between,
    judge,
    rounding_abs,
    rounding_scale,
    tolerance_for,
    torch_printable_orders,
    underflow_symbol,
)
from ._errors import DomainError, GradientMismatch, TraceError
from ._report import Point, Report
from ._search import Domain, draw, infer_domain, parse_domain, search, shrink
from ._symbolic import finish
from ._trace import MAX_SYMBOLIC_ELEMENTS, Trace, parameter_names, trace

FLOATING = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
#: Hypothesis examples per check when inputs are drawn; each adds a bulk batch.
DEFAULT_EXAMPLES = 25
BULK_POINTS = 4096
#: Relative accuracy of torch's least accurate special-function kernels (trigamma: ~5e-10);
#: checks that need better go to mpmath at every point, so they draw smaller batches.
_KERNEL_ACCURACY = 1e-8
_WORST_ROWS = 5


# --------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------


def _check_callable(f: Any) -> None:
    if not callable(f):
        raise TypeError(
            f"f must be a function of tensors (a lambda, a def, torch.exp, MyFunction.apply), "
            f"got f={f!r} of type {type(f).__name__}"
        )


def _check_order(order: Any) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or order not in (1, 2):
        raise ValueError(f"order must be 1 (gradients) or 2 (second derivatives), got order={order!r}")
    return order


def resolve_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        candidate = getattr(torch, name, None)
        if isinstance(candidate, torch.dtype):
            dtype = candidate
    if dtype in FLOATING:
        return dtype
    if isinstance(dtype, torch.dtype) and dtype.is_complex:
        raise TypeError(f"dtype={dtype} is complex; complex gradients are not supported yet, use a real dtype")
    raise ValueError(
        f"dtype must be one of float64, float32, float16, bfloat16 (a torch.dtype or its name), got dtype={dtype!r}"
    )


def resolve_device(device: Any) -> torch.device | None:
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got device={device!r}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available on this machine; use device='cpu'")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    return resolved


def _check_input(value: Any, index: int, name: str) -> torch.Tensor:
    if isinstance(value, bool) or not isinstance(value, (torch.Tensor, int, float)):
        raise TypeError(
            f"input {index} ({name}) must be a floating-point tensor or a Python float, got "
            f"{type(value).__name__}: {value!r}"
        )
    if not isinstance(value, torch.Tensor):
        return torch.tensor(float(value), dtype=torch.float64)
    if value.is_complex():
        raise TypeError(
            f"input {index} ({name}) is a complex tensor ({value.dtype}); complex gradients are not supported yet, "
            "pass the real and imaginary parts as separate real inputs"
        )
    if not value.dtype.is_floating_point:
        raise TypeError(
            f"input {index} ({name}) is an integer tensor ({value.dtype}); gradients need floating point: "
            f"pass {name}.double() or {name}.float()"
        )
    if value.dtype not in FLOATING:
        raise TypeError(f"input {index} ({name}) has dtype {value.dtype}; use float64, float32, float16 or bfloat16")
    return value


# --------------------------------------------------------------------------------------
# The symbolic side
# --------------------------------------------------------------------------------------


@dataclass
class Symbolic:
    """The exact side of a check: derivative expressions and their rounding scales."""

    names: tuple[str, ...]
    symbols: list[sympy.Symbol]  # flat, one per input element
    forward: sympy.Expr | None  # scalar mode only
    # entries[k] = (output index, input symbol indices (order of them), expression)
    entries: list[tuple[tuple[int, ...], tuple[int, ...], sympy.Expr]]
    output_shape: tuple[int, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    formula: str
    _exact: Callable | None = None
    _scale: Callable | None = None
    _forward: Callable | None = None
    _fast: Callable | None = None
    scale_exprs: list[sympy.Expr] = field(default_factory=list)

    #: Relative accuracy the judgement needs of the reference, against the size of the
    #: terms; None asks for correctly rounded values.
    accuracy: float | None = None

    def exact(self, values: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return _oracle.evaluate([e for _, _, e in self.entries], self.symbols, values, accuracy=self.accuracy)

    def scale(self, values: Sequence[torch.Tensor], tol: Tolerance, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """The rounding-error size of each entry, in units of rtol (see :func:`rounding_scale`)."""
        if self._scale is None:
            self._scale = _printer.to_torch(self.scale_exprs, [*self.symbols, underflow_symbol(), CONDITIONING])
        info = torch.finfo(dtype)
        floor = info.tiny / max(tol.rtol, info.eps)
        # Intermediates computed from the inputs (x**2 - 1 in acosh's backward) carry one
        # rounding each: the derivative can be no more exact than its condition allows.
        weight = 2 * info.eps / max(tol.rtol, info.eps)
        device = values[0].device
        constants = [torch.tensor(v, dtype=torch.float64, device=device) for v in (floor, weight)]
        return self._scale(*values, *constants)

    def forward_value(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        if self._forward is None:
            self._forward = _printer.to_torch([self.forward], self.symbols)
        return self._forward(*values)[0]


def _scalar_symbolic(tr: Trace, order: int) -> Symbolic:
    syms = tr.flat_symbols
    forward = tr.output.item()
    entries = []
    for i, s in enumerate(syms):
        first = sympy.diff(forward, s)
        if order == 1:
            entries.append(((), (i,), finish(first)))
            continue
        for j, t in enumerate(syms):
            entries.append(((), (i, j), finish(sympy.diff(first, t))))
    formula = _formula(tr.names, entries, syms)
    return Symbolic(
        names=tr.names,
        symbols=syms,
        forward=finish(forward),
        entries=entries,
        output_shape=(),
        input_shapes=tuple(() for _ in syms),
        formula=formula,
        scale_exprs=[rounding_scale(e) + CONDITIONING * _condition(e, syms) for _, _, e in entries],
    )


CONDITIONING = sympy.Symbol("conditioning_", positive=True)


def _condition(expr: sympy.Expr, symbols) -> sympy.Expr:
    """How far ``expr`` moves when each input moves by its own size: sum of |s * d expr/ds|."""
    terms = []
    for s in symbols:
        if s in expr.free_symbols:
            try:
                slope = finish(sympy.diff(expr, s))
            except TraceError:
                continue
            if torch_printable_orders(slope):
                terms.append(rounding_abs(s * slope))
    return sympy.Add(*terms)


def _tensor_symbolic(tr: Trace, order: int) -> Symbolic:
    syms = tr.flat_symbols
    position = {s: k for k, s in enumerate(syms)}
    entries = []
    for out_index in np.ndindex(*tr.output.shape):
        expr = tr.output[out_index]
        present = sorted((position[s] for s in expr.free_symbols if s in position))
        for i in present:
            first = sympy.diff(expr, syms[i])
            if order == 1:
                entries.append((out_index, (i,), finish(first)))
                continue
            inner = sorted(position[s] for s in first.free_symbols if s in position)
            for j in inner:
                entries.append((out_index, (i, j), finish(sympy.diff(first, syms[j]))))
    entries = [e for e in entries if e[2] != 0]
    return Symbolic(
        names=tr.names,
        symbols=syms,
        forward=None,
        entries=entries,
        output_shape=tuple(tr.output.shape),
        input_shapes=tuple(tuple(s.shape) for s in tr.symbols),
        formula=_formula(tr.names, entries, syms),
        scale_exprs=[rounding_scale(e) for _, _, e in entries],
    )


def _formula(names: Sequence[str], entries: list, syms: Sequence[sympy.Symbol], limit: int = 4) -> str:
    parts = []
    seen = set()
    for out_index, ins, expr in entries:
        label = f"d²/{''.join('d' + str(syms[i]) for i in ins)}" if len(ins) > 1 else f"d/d{syms[ins[0]]}"
        if out_index:
            label += f" of output{list(out_index)}"
        if label in seen:
            continue
        seen.add(label)
        parts.append(f"{label} = {expr}")
    text = "; ".join(parts[:limit])
    if len(parts) > limit:
        text += f"; ... ({len(parts) - limit} more)"
    return text


def _symbolic_source(f, reference, n_inputs: int | None, shapes, dtype) -> tuple[Trace, tuple[str, ...]]:
    """Trace the function that defines the mathematics: ``reference`` if given, else ``f``."""
    f_names = parameter_names(f)
    if reference is None:
        tr = trace(f, shapes, dtype=dtype)
        return tr, tr.names
    if isinstance(reference, sympy.Expr):
        return _trace_expression(reference, f_names, n_inputs, shapes), None
    if not callable(reference):
        raise TypeError(
            f"reference must be a function of tensors or a SymPy expression, got reference={reference!r}"
        )
    tr = trace(reference, shapes, dtype=dtype)
    f_arity = len(f_names) if f_names is not None else n_inputs
    if f_arity is not None and f_arity != len(tr.names):
        raise ValueError(
            f"reference takes {len(tr.names)} inputs ({', '.join(tr.names)}) but f takes {f_arity}; "
            "give a reference with the same parameters as f"
        )
    return tr, tr.names


def _trace_expression(expr, f_names, n_inputs, shapes) -> Trace:
    free = sorted(expr.free_symbols, key=lambda s: s.name)
    names = tuple(f_names) if f_names else tuple(s.name for s in free)
    unknown = [s.name for s in free if s.name not in names]
    if unknown:
        raise ValueError(
            f"reference mentions {unknown[0]!r}, which is not a parameter of f (parameters: {', '.join(names)}); "
            "name the symbols after f's parameters"
        )
    if n_inputs is not None and n_inputs != len(names):
        raise ValueError(f"reference has {len(names)} symbols ({', '.join(names)}) but {n_inputs} inputs were given")
    if shapes is not None and any(shapes):
        raise ValueError("a SymPy reference describes an elementwise function; pass tensors of any shape it broadcasts over")
    real = {s: sympy.Symbol(s.name, real=True) for s in free}
    symbols = tuple(np.array(sympy.Symbol(n, real=True), dtype=object) for n in names)
    out = np.empty((), dtype=object)
    out[()] = expr.xreplace(real)
    return Trace(names=names, symbols=symbols, output=out, shapes=tuple(() for _ in names))


# --------------------------------------------------------------------------------------
# The autograd side
# --------------------------------------------------------------------------------------


def _cotangent(shape, dtype, device, generator) -> torch.Tensor:
    """Upstream gradients with |v| in [0.5, 0.9], exactly representable in every dtype.

    Not 1: a backward that ignores grad_output must fail. Below 1: v * (huge) must not
    overflow where the exact product is finite.
    """
    steps = torch.randint(32, 58, shape, generator=generator)
    signs = torch.randint(0, 2, shape, generator=generator) * 2 - 1
    return (signs * steps / 64.0).to(dtype=dtype, device=device)


def _autograd(f, values, order, v, u):
    """Gradients from autograd on fresh leaves: x.grad after backward(v) (and, at order 2, after
    backward(u) through the graph of the first gradients)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in values]
    out = f(*leaves)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"f returned {type(out).__name__}, not a tensor")
    if order == 1:
        out.backward(v.expand(out.shape) if v.shape != out.shape else v)
        return out.detach(), [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
    firsts = torch.autograd.grad(out, leaves, v.expand(out.shape), create_graph=True, allow_unused=True)
    connected = [(g, w) for g, w in zip(firsts, u) if g is not None and g.requires_grad]
    if connected:
        torch.autograd.backward([g for g, _ in connected], [w.expand(g.shape) for g, w in connected])
    return out.detach(), [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]


# --------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    """Flat per-element results of one or more evaluations, concatenated."""

    judgement: list[Judgement] = field(default_factory=list)
    autograd: list[torch.Tensor] = field(default_factory=list)
    exact: list[torch.Tensor] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)  # [n, n_params] float64
    where: list[Sequence[str]] = field(default_factory=list)  # per chunk: labels, or one label repeated
    forward_skipped: int = 0

    def extend(self, other: "_Outcome") -> None:
        self.judgement += other.judgement
        self.autograd += other.autograd
        self.exact += other.exact
        self.inputs += other.inputs
        self.where += other.where
        self.forward_skipped += other.forward_skipped


def _judge_scalar(sym: Symbolic, f, points, dtype, device, order, tol, generator, elementwise: bool, out: _Outcome):
    """Check a batch of points of an elementwise function (one scalar symbol per input)."""
    sym.accuracy = _needed_accuracy(tol)
    n = len(sym.names)
    values = [p.detach().to(device=device, dtype=dtype) for p in points]
    shape = torch.broadcast_shapes(*[p.shape for p in values])
    v = _cotangent(shape, dtype, device, generator)
    u = [_cotangent(shape, dtype, device, generator) for _ in range(n)] if order == 2 else None
    if elementwise:
        forward, grads = _autograd(f, values, order, v, u)
    else:
        forward, grads = _pointwise(f, values, shape, order, v, u)
    exact64 = [p.to(device=device, dtype=torch.float64) for p in values]
    skip = ~torch.isfinite(forward.to(torch.float64).expand(shape)).reshape(-1)
    exact_parts = _exact_where_judged(sym, exact64, shape, skip)
    scales = sym.scale(exact64, tol, dtype)
    v64 = v.to(torch.float64)
    for i in range(n):
        if order == 1:
            expected = v64 * exact_parts[i]
            scale = v64.abs() * scales[i].abs()
        else:
            expected = sum(v64 * u[j].to(torch.float64) * exact_parts[j * n + i] for j in range(n))
            scale = sum(v64.abs() * u[j].to(torch.float64).abs() * scales[j * n + i].abs() for j in range(n))
        expected = expected.expand(shape)
        scale = scale.expand(shape)
        got = grads[i].to(torch.float64).expand(shape) if grads[i].shape != shape else grads[i]
        if values[i].shape != shape:  # broadcast input: the gradient sums over the broadcast
            expected = expected.sum_to_size(values[i].shape)
            scale = scale.sum_to_size(values[i].shape)
            got = grads[i]
            point_skip = torch.zeros(values[i].numel(), dtype=torch.bool, device=device)
            if skip.any():
                point_skip[:] = True
            point_inputs = values[i].reshape(-1, 1).to(torch.float64).expand(-1, n)
        else:
            point_skip = skip
            point_inputs = torch.stack([p.to(torch.float64).expand(shape).reshape(-1) for p in values], dim=1)
        j = judge(got.reshape(-1), expected.reshape(-1), scale.reshape(-1), point_skip, dtype, tol)
        out.forward_skipped += int(point_skip.sum())
        _accept_kinks(sym, j, got.reshape(-1), exact64, v64, u, i, n, order, shape, values[i].shape == shape, dtype)
        out.judgement.append(j)
        out.autograd.append(got.reshape(-1).to(torch.float64).cpu())
        out.exact.append(expected.reshape(-1).cpu())
        out.inputs.append(point_inputs.cpu())
        label = f"d/d{sym.names[i]}" if order == 1 else f"d²/d{sym.names[i]}·"
        out.where.append(_Repeated(label, got.numel()))


#: Points per batch whose float64 derivative is not finite and so need mpmath (with
#: thousands of bits for inputs such as 1e-320): beyond this many, the rest of the batch's
#: such points are not judged (and counted), so one batch costs at most about a second.
MPMATH_BUDGET = 256


def _over_budget(sym: Symbolic, values, shape) -> torch.Tensor:
    if sym._fast is None:
        sym._fast = _printer.to_torch([e for _, _, e in sym.entries], sym.symbols)
    nonfinite = torch.zeros(shape, dtype=torch.bool, device=values[0].device).reshape(-1)
    for part in sym._fast(*values):
        nonfinite |= ~torch.isfinite(part.expand(shape)).reshape(-1)
    index = nonfinite.nonzero().reshape(-1)
    over = torch.zeros_like(nonfinite)
    over[index[MPMATH_BUDGET:]] = True
    return over


def _needed_accuracy(tol: Tolerance) -> float:
    """The reference needs to be well inside the allowance, not correctly rounded: a tenth
    of rtol, against the same size of terms that the allowance is measured against."""
    return tol.rtol / 16


def _exact_where_judged(sym: Symbolic, values, shape, skip: torch.Tensor) -> list[torch.Tensor]:
    """Exact values at the points whose forward value is finite (the others are not judged,
    and their exact values, often overflowing, would cost mpmath time for nothing)."""
    skip = skip | _over_budget(sym, values, shape)
    if not skip.any():
        return [p.expand(shape) for p in sym.exact(values)]
    keep = ~skip
    flat = [p.expand(shape).reshape(-1)[keep] for p in values]
    parts = sym.exact(flat) if int(keep.sum()) else [torch.empty(0, dtype=torch.float64) for _ in sym.entries]
    full = []
    for part in parts:
        column = torch.full((skip.numel(),), torch.nan, dtype=torch.float64, device=skip.device)
        column[keep] = part.reshape(-1).to(column.device)
        full.append(column.reshape(shape))
    return full


def _accept_kinks(sym, j: Judgement, got, exact64, v64, u, i, n, order, shape, aligned: bool, dtype) -> None:
    """Where an element fails, accept it if the point is a kink and autograd's value lies
    between the derivatives on either side.

    A kink is told from a steep but smooth derivative by shrinking the step: beside a kink
    the one-sided values keep their gap however close they are taken; for a smooth
    derivative the gap shrinks with the step.
    """
    failing = ~j.passed
    if not failing.any() or not aligned or order != 1:
        return
    index = failing.nonzero().reshape(-1)
    base = [p.expand(shape).reshape(-1)[index] for p in exact64]
    weight = v64.expand(shape).reshape(-1)[index]
    info = torch.finfo(dtype)
    near, far = [], []
    for k in range(n):
        wide = torch.maximum(base[k].abs() * info.eps, torch.full_like(base[k], info.tiny))
        for step, sides in ((wide, far), (wide * 2.0**-20, near)):
            for direction in (-1.0, 1.0):
                moved = list(base)
                moved[k] = base[k] + direction * step
                sides.append(sym.exact(moved)[i] * weight)
    gap = lambda values: (torch.stack(values).amax(0) - torch.stack(values).amin(0)).nan_to_num(nan=0.0)  # noqa: E731
    is_kink = gap(near) >= 0.5 * gap(far)
    ok = is_kink & (gap(near) > 0) & between(got[index], near, j.allowed[index])
    j.passed[index] |= ok
    j.kink[index] |= ok


def _pointwise(f, values, shape, order, v, u):
    """Autograd one point at a time, for functions that are not elementwise over a batch."""
    flat = [p.expand(shape).reshape(-1) for p in values]
    forwards, grads = [], [[] for _ in values]
    for k in range(flat[0].numel()):
        uk = [w.reshape(-1)[k] for w in u] if u is not None else None
        forward, g = _autograd(f, [p[k] for p in flat], order, v.reshape(-1)[k], uk)
        forwards.append(forward.reshape(()))
        for i, gi in enumerate(g):
            grads[i].append(gi.reshape(()))
    return torch.stack(forwards).reshape(shape), [torch.stack(g).reshape(shape) for g in grads]


def _judge_tensor(sym: Symbolic, f, values, dtype, device, order, tol, generator, out: _Outcome):
    """Check one point of a function of small tensors (an array of symbols per input)."""
    sym.accuracy = _needed_accuracy(tol)
    values = [x.detach().to(device=device, dtype=dtype) for x in values]
    v = _cotangent(sym.output_shape, dtype, device, generator)
    u = [_cotangent(x.shape, dtype, device, generator) for x in values] if order == 2 else None
    forward, grads = _autograd(f, values, order, v, u)
    if tuple(forward.shape) != sym.output_shape:
        raise TraceError(
            f"f returned shape {tuple(forward.shape)} when run, but {sym.output_shape} when traced; "
            "its output shape must not depend on the values"
        )
    point = torch.cat([x.detach().to(torch.float64).reshape(-1) for x in values])
    weights = _Weights(v.to(torch.float64), torch.cat([w.to(torch.float64).reshape(-1) for w in u]) if u else None)
    expected = _contract(sym, sym.exact(list(point)), weights, device)
    scale = _contract(sym, sym.scale(list(point), tol, dtype), weights, device, absolute=True)
    got = torch.cat([g.detach().to(torch.float64).reshape(-1) for g in grads])
    skip = torch.zeros(point.numel(), dtype=torch.bool, device=device)
    if not torch.isfinite(forward.to(torch.float64)).all():
        skip[:] = True
        out.forward_skipped += point.numel()
    j = judge(got, expected, scale, skip, dtype, tol)
    if order == 1 and (~j.passed).any():
        _tensor_kinks(sym, j, got, point, weights, device, dtype)
    out.judgement.append(j)
    out.autograd.append(got.cpu())
    out.exact.append(expected.cpu())
    out.inputs.append(point.cpu().reshape(1, -1).expand(point.numel(), -1))
    out.where.append([f"d/d{s}" if order == 1 else f"d²/d{s}·" for s in sym.symbols])


@dataclass
class _Weights:
    v: torch.Tensor  # the upstream gradient, shaped like the output
    u: torch.Tensor | None  # order 2: the second upstream gradient, flat over all inputs


def _contract(sym: Symbolic, entry_values, weights: _Weights, device, absolute: bool = False) -> torch.Tensor:
    """Vector-Jacobian product from the sparse entries: what x.grad holds after backward."""
    total = torch.zeros(len(sym.symbols), dtype=torch.float64, device=device)
    for (out_index, ins, _), value in zip(sym.entries, entry_values):
        weight = weights.v[out_index] if out_index else weights.v.reshape(())
        if weights.u is not None:
            weight = weight * weights.u[ins[0]]
        term = weight * value.reshape(())
        total[ins[-1]] += term.abs() if absolute else term
    return total


def _tensor_kinks(sym: Symbolic, j: Judgement, got, point, weights: _Weights, device, dtype) -> None:
    """The kink test of :func:`_accept_kinks` for functions of small tensors: move each input
    element that the failing gradients depend on, one at a time."""
    failing = (~j.passed).nonzero().reshape(-1)
    involved = sorted(
        {sym.symbols.index(s) for (_, ins, e) in sym.entries if ins[-1] in set(failing.tolist()) for s in e.free_symbols if s in sym.symbols}
    )
    info = torch.finfo(dtype)
    near, far = [], []
    for k in involved:
        wide = max(abs(float(point[k])) * info.eps, info.tiny)
        for step, sides in ((wide, far), (wide * 2.0**-20, near)):
            for direction in (-1.0, 1.0):
                moved = point.clone()
                moved[k] += direction * step
                sides.append(_contract(sym, sym.exact(list(moved)), weights, device)[failing])
    if not near:
        return
    gap = lambda values: (torch.stack(values).amax(0) - torch.stack(values).amin(0)).nan_to_num(nan=0.0)  # noqa: E731
    ok = (gap(near) >= 0.5 * gap(far)) & (gap(near) > 0) & between(got[failing], near, j.allowed[failing])
    j.passed[failing] |= ok
    j.kink[failing] |= ok


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


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
    settings: Any = None,
) -> Report:
    """Compare autograd's gradient of ``f`` with the exact symbolic derivative; return a report.

    Takes the same arguments as :func:`assert_grad_matches` and never raises for a
    mismatch: look at ``report.ok``.
    """
    __tracebackhide__ = True
    _check_callable(f)
    order = _check_order(order)
    dtype_ = resolve_dtype(dtype)
    device_ = resolve_device(device)
    if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 1):
        raise ValueError(f"examples must be a positive integer (number of points to check), got examples={examples!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer, got seed={seed!r}")
    if settings is not None and not _is_settings(settings):
        raise TypeError(f"settings must be a hypothesis.settings object, got settings={settings!r}")
    seed_ = seed if seed is not None else random.SystemRandom().randrange(2**32)
    generator = torch.Generator().manual_seed(seed_)
    if inputs:
        if domain is not None:
            raise ValueError("domain= chooses where points are drawn; it cannot be combined with explicit inputs")
        return _check_given(f, inputs, reference, order, dtype_, device_, seed_, generator, rtol, atol)
    return _check_generated(
        f, reference, order, dtype_, device_, examples, seed_, generator, rtol, atol, domain, settings,
        use_database=seed is None,
    )


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
    settings: Any = None,
) -> Report:
    """Assert that autograd's gradient of ``f`` equals the exact symbolic derivative.

    ``f`` is traced once into SymPy and differentiated exactly; autograd runs on fresh
    leaf tensors (the caller's tensors and their ``.grad`` are never touched), with random
    upstream gradients of magnitude 0.5 to 0.9 so that a backward that ignores
    ``grad_output`` fails. Every element is judged against the exact value.

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
        examples: number of points when inputs are drawn (default 2000).
        seed: makes drawn points and upstream gradients reproducible; printed on failure.
        rtol, atol: give both, or neither for the per-dtype defaults below. An element
            passes when ``|autograd - exact| <= atol + rtol * max(|exact|, scale)``, where
            ``scale`` is the size of the derivative's terms (so cancellation is no failure).

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

    Returns:
        The :class:`Report` (``report.ok`` is True).

    Raises:
        GradientMismatch: with a message like::

            gradient of <lambda> does not match the exact derivative (float64, cpu)
            Mismatched elements: 3 / 12 (25.0%) (up to 0 allowed)
            ...
              x   grad  autograd  exact  abs err  rel err  ULP
            ...
            Exact derivative: d/dx = x**2*exp(x) + 2*x*exp(x)
            Reproduce: autocheck.assert_grad_matches(f, torch.tensor(...), seed=...)

    Example:
        >>> import torch, autocheck
        >>> report = autocheck.assert_grad_matches(lambda x: x * x * torch.exp(x), seed=0)
        >>> report.ok
        True
    """
    __tracebackhide__ = True
    report = check_grad(
        f, *inputs, reference=reference, order=order, dtype=dtype, device=device,
        examples=examples, seed=seed, rtol=rtol, atol=atol, domain=domain, settings=settings,
    )
    if not report.ok:
        raise GradientMismatch(str(report), report=report, counterexample=report.counterexample)
    return report


def _is_settings(value: Any) -> bool:
    from hypothesis import settings as hypothesis_settings

    return isinstance(value, hypothesis_settings)


def _check_given(f, inputs, reference, order, dtype, device, seed, generator, rtol, atol) -> Report:
    names = parameter_names(f) or ()
    tensors = [_check_input(x, k, names[k] if k < len(names) else f"input {k}") for k, x in enumerate(inputs)]
    if names and len(names) != len(tensors):
        raise TypeError(
            f"f takes {len(names)} inputs ({', '.join(names)}) but {len(tensors)} were given; "
            f"pass one tensor per parameter"
        )
    dtype = dtype or tensors[0].dtype
    device = device or tensors[0].device
    tol = tolerance_for(dtype, rtol, atol)
    total = sum(x.numel() for x in tensors)
    out = _Outcome()
    if isinstance(reference, sympy.Expr) or _is_elementwise(f, len(tensors), dtype):
        # Elementwise: one scalar trace, evaluated on the whole batch.
        tr, _ = _symbolic_source(f, reference, len(tensors), None, dtype)
        sym = _scalar_symbolic(tr, order)
        _judge_scalar(sym, f, tensors, dtype, device, order, tol, generator, True, out)
    elif total <= MAX_SYMBOLIC_ELEMENTS:
        tr, _ = _symbolic_source(f, reference, len(tensors), [tuple(x.shape) for x in tensors], dtype)
        sym = _tensor_symbolic(tr, order)
        _judge_tensor(sym, f, tensors, dtype, device, order, tol, generator, out)
    else:
        raise ValueError(
            f"inputs have {total} elements and the function is not elementwise, so its exact Jacobian is too "
            f"large to build; check it at smaller tensors (at most {MAX_SYMBOLIC_ELEMENTS} elements in all)"
        )
    reproduce = _reproduce_line(f, tensors_repr=[_tensor_repr(x) for x in tensors], dtype=dtype, device=device, order=order, seed=seed, reference=reference)
    return _report(f, sym, out, dtype, device, order, tol, seed, reproduce)


def _check_generated(
    f, reference, order, dtype, device, examples, seed, generator, rtol, atol, domain, settings, use_database
) -> Report:
    dtype = dtype or torch.float64
    device = device or torch.device("cpu")
    tol = tolerance_for(dtype, rtol, atol)
    tr, names = _symbolic_source(f, reference, None, None, dtype)
    if tr.output.ndim:
        raise TraceError(
            f"f returns a tensor of shape {tuple(tr.output.shape)} for scalar inputs; without inputs autocheck "
            "checks elementwise functions. Pass example tensors: assert_grad_matches(f, x)."
        )
    sym = _scalar_symbolic(tr, order)
    dom = infer_domain(sym.forward, sym.symbols, parse_domain(domain, tr.names))
    elementwise = _is_elementwise(f, len(tr.names), dtype)
    bulk_size = BULK_POINTS if elementwise else 16
    if any(e.atoms(*_oracle._INACCURATE) for _, _, e in sym.entries) and _needed_accuracy(tol) < _KERNEL_ACCURACY:
        bulk_size = min(bulk_size, 256)  # every point of these goes to mpmath
    record = _Outcome()

    def failures(columns: list[torch.Tensor], keep: bool = True) -> torch.Tensor:
        local = _Outcome()
        _judge_scalar(sym, f, columns, dtype, device, order, tol, generator, elementwise, local)
        if keep:
            record.extend(local)
        failing = torch.zeros(columns[0].numel(), dtype=torch.bool)
        for j in local.judgement:
            failing |= ~j.passed.cpu()
        return failing

    def bulk(batch_seed: int) -> list[torch.Tensor]:
        return _points_in_domain(sym, dom, bulk_size, dtype, torch.Generator().manual_seed(batch_seed))

    key = _database_key(f, sym, dtype, device, order)
    failing = search(
        failures, dom, dtype, examples=examples or DEFAULT_EXAMPLES, bulk=bulk, seed=seed,
        database_key=key if use_database else None, settings=settings,
    )
    counterexample = shrunk = None
    if failing is not None:
        shrunk = shrink(failing, lambda columns: failures(columns, keep=False), dom, dtype)
        failures([torch.tensor([v], dtype=torch.float64) for v in shrunk])
        # Shown as the shortest decimal that reads back as the same dtype value (4.1, not 4.099999904632568).
        counterexample = tuple(float(_short_float(v, dtype)) for v in shrunk)
    report = _report(f, sym, record, dtype, device, order, tol, seed, "", first=shrunk)
    report.notes.append(f"Domain: {dom.describe()}")
    if counterexample is not None:
        report.counterexample = counterexample
        tensors = [f"torch.tensor({_short_float(v, dtype)}, dtype={dtype})" for v in counterexample]
        report.reproduce = _reproduce_line(f, tensors_repr=tensors, dtype=dtype, device=device, order=order, seed=seed, reference=reference)
    return report


def _short_float(value: float, dtype: torch.dtype) -> str:
    """The shortest text that reads back as ``value`` in ``dtype``."""
    for digits in range(1, 18):
        text = f"{value:.{digits}g}"
        if float(torch.tensor(float(text), dtype=torch.float64).to(dtype)) == value:
            return repr(float(text))
    return repr(value)


def _database_key(f, sym: Symbolic, dtype, device, order) -> str:
    text = f"{getattr(f, '__module__', '')}.{_name(f)}|{sym.formula}|{dtype}|{device}|{order}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _points_in_domain(sym: Symbolic, dom: Domain, count: int, dtype, generator) -> list[torch.Tensor]:
    """Draw points, keeping those where the function is real (its float64 value is not nan)."""
    kept = [[] for _ in sym.names]
    have = 0
    for _ in range(8):
        batch = draw(max(count, 64), len(sym.names), dtype, dom, generator)
        value = sym.forward_value(batch)
        inside = ~torch.isnan(value.expand(batch[0].shape)) & dom.contains(batch)
        for column, values in zip(kept, batch):
            column.append(values[inside])
        have += int(inside.sum())
        if have >= count:
            break
    if have == 0:
        raise DomainError(
            f"no point was found where {_name(sym)} is real-valued (domain: {dom.describe()}); "
            "give domain= with an interval where the function is defined"
        )
    return [torch.cat(c)[:count] for c in kept]


def _is_elementwise(f, n_inputs: int, dtype) -> bool:
    """Whether ``f`` on a batch computes ``f`` of each element (compared bitwise at a few points)."""
    probe = [torch.tensor([0.5, -1.25, 2.0, 3.5], dtype=dtype) * (k + 1) for k in range(n_inputs)]
    try:
        with torch.no_grad():
            batch = f(*probe)
            single = [f(*[p[k] for p in probe]) for k in range(4)]
    except Exception:  # noqa: BLE001 - any failure on a batch means: evaluate point by point
        return False
    if not isinstance(batch, torch.Tensor) or tuple(batch.shape) != (4,):
        return False
    same = lambda a, b: bool((a == b) | (torch.isnan(a) & torch.isnan(b)))  # noqa: E731 - log(-1) is nan both ways
    return all(s.numel() == 1 and same(batch[k], s.reshape(())) for k, s in enumerate(single))


def _name(f) -> str:
    if isinstance(f, Symbolic):
        return ", ".join(f.names)
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or type(f).__name__
    return name


def _tensor_repr(x: torch.Tensor) -> str:
    if x.numel() <= 8:
        return f"torch.tensor({x.detach().cpu().to(torch.float64).tolist()!r}, dtype={x.dtype})"
    return f"<tensor of shape {tuple(x.shape)}>"


def _reproduce_line(f, tensors_repr, dtype, device, order, seed, reference) -> str:
    args = ", ".join(["f", *tensors_repr])
    options = [f"dtype={dtype}", f"device={str(device)!r}", f"seed={seed}"]
    if order != 1:
        options.append(f"order={order}")
    if reference is not None:
        options.append("reference=reference")
    return f"autocheck.assert_grad_matches({args}, {', '.join(options)})"


def _extreme_failures(failed, autograd, exact, inputs, dtype) -> int:
    info = torch.finfo(dtype)
    low, high = info.tiny**0.5, info.max**0.5
    magnitude = inputs.abs()
    tiny_or_huge = (((magnitude > 0) & (magnitude < low)) | (magnitude > high)).any(dim=1)
    broken = ~torch.isfinite(autograd) | ((autograd == 0) & (exact != 0))
    return int((failed & tiny_or_huge & broken & torch.isfinite(exact)).sum())


@dataclass
class _Repeated:
    """One label for ``count`` consecutive elements."""

    label: str
    count: int

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int) -> str:
        return self.label


class _Labels:
    """Index into the concatenation of per-chunk label sequences without building it."""

    def __init__(self, chunks: list[Sequence[str]]) -> None:
        self.chunks = chunks

    def __getitem__(self, k: int) -> str:
        for chunk in self.chunks:
            if k < len(chunk):
                return chunk[k]
            k -= len(chunk)
        raise IndexError(k)


def _report(f, sym: Symbolic, out: _Outcome, dtype, device, order, tol: Tolerance, seed, reproduce, first=None) -> Report:
    passed = torch.cat([j.passed.cpu() for j in out.judgement])
    skipped = torch.cat([j.skipped.cpu() for j in out.judgement])
    kinks = torch.cat([j.kink.cpu() for j in out.judgement])
    ulp_err = torch.cat([j.ulp_error.cpu() for j in out.judgement])
    rel_err = torch.cat([j.rel_error.cpu() for j in out.judgement])
    abs_err = torch.cat([j.abs_error.cpu() for j in out.judgement])
    allowed = torch.cat([j.allowed.cpu() for j in out.judgement])
    autograd = torch.cat(out.autograd)
    exact = torch.cat(out.exact)
    inputs = torch.cat(out.inputs)
    where = _Labels(out.where)
    judged = ~skipped
    failed = ~passed
    reasons = {
        "forward value not finite": out.forward_skipped,
        "exact derivative not finite": int(skipped.sum()) - out.forward_skipped,
    }
    # Elements accepted at a kink have no error to speak of: they rank below every other.
    ulp_err = torch.where(kinks, 0.0, ulp_err)
    rel_err = torch.where(kinks, 0.0, rel_err)
    abs_err = torch.where(kinks, 0.0, abs_err)
    # Failures first, then by ULP error (on a log scale, so that the offset keeps the order).
    magnitude = torch.log2(ulp_err.nan_to_num(nan=torch.inf) + 1).clamp(max=4000.0)
    order_keys = torch.where(failed, magnitude + 10000.0, magnitude)
    order_keys = torch.where(skipped, torch.full_like(order_keys, -1.0), order_keys)
    if first is not None:
        at_first = (inputs[:, : len(first)] == torch.tensor(first, dtype=torch.float64)).all(dim=1) & failed
        order_keys = torch.where(at_first, torch.full_like(order_keys, torch.inf), order_keys)
    worst_index = torch.topk(order_keys, min(_WORST_ROWS, order_keys.numel())).indices
    worst = [
        Point(
            inputs=tuple(float(v) for v in inputs[k]),
            where=where[k],
            autograd=float(autograd[k]),
            exact=float(exact[k]),
            abs_error=float(abs_err[k]),
            rel_error=float(rel_err[k]),
            ulp_error=float(ulp_err[k]),
            allowed=float(allowed[k]),
        )
        for k in worst_index.tolist()
        if not skipped[k] and not kinks[k]
    ]
    n_failed = int(failed.sum())
    counterexample = None
    if n_failed:
        first = int(torch.argmax(order_keys))
        counterexample = tuple(float(v) for v in inputs[first][: len(sym.names)])
    notes = []
    extreme = _extreme_failures(failed, autograd, exact, inputs, dtype)
    if extreme:
        notes.append(
            f"Note: at {extreme} failing elements the inputs are extreme (beyond the square root of the smallest or "
            f"largest {str(dtype).removeprefix('torch.')} number) and autograd's value is not finite or is zero while "
            "the exact derivative is neither: an intermediate of the backward formula (such as x**2 + y**2) "
            "underflows or overflows there. For a torch built-in, the defect is in torch's backward at those inputs."
        )
    if kinks.any():
        notes.append(
            f"Accepted at kinks: {int(kinks.sum())} elements where autograd returned a value between the "
            "one-sided derivatives (relu, abs, clamp, max at ties)"
        )
    return Report(
        notes=notes,
        ok=n_failed == 0,
        function=_name(f),
        names=tuple(sym.names) if len(inputs[0]) == len(sym.names) else tuple(str(s) for s in sym.symbols),
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        order=order,
        checked=int(judged.sum()),
        failed=n_failed,
        skipped=reasons,
        max_ulp=float(ulp_err[judged].max()) if judged.any() else 0.0,
        max_rel=float(rel_err[judged].max()) if judged.any() else 0.0,
        worst=worst,
        formula=sym.formula,
        rtol=tol.rtol,
        atol=tol.atol,
        seed=seed,
        counterexample=counterexample,
        reproduce=reproduce,
    )


# --------------------------------------------------------------------------------------
# Public: the exact reference as a torch callable
# --------------------------------------------------------------------------------------


def reference(f: Callable[..., torch.Tensor], *, order: int = 1, accuracy: float | None = None) -> Callable[..., Any]:
    """The exact derivative of ``f`` as a function of tensors.

    ``f`` is traced and differentiated once; the returned function evaluates the
    derivative in float64 on the inputs' device, with mpmath at high precision wherever
    float64 cannot be trusted (overflowing intermediates, removable singularities,
    cancellation, inaccurate special-function kernels). Autograd is never used.

    ``accuracy=None`` gives correctly rounded float64 values (within 1 ULP), which costs
    mpmath time wherever the formula cancels. A relative ``accuracy`` such as ``1e-15``,
    measured against the size of the formula's terms, trusts float64 there: that is what
    the gradient check uses, at about the cost of the printed formula.

    For an elementwise function the result has the inputs' broadcast shape: one tensor
    for one input, a tuple of partials for several (order 2: a tuple of tuples). For a
    function of small tensors with a scalar output, it is the gradient, shaped like each
    input.

    Example:
        >>> import torch, autocheck
        >>> d = autocheck.reference(lambda x: torch.log1p(torch.exp(x)))
        >>> d(torch.tensor([0.0, 800.0], dtype=torch.float64))
        tensor([0.5000, 1.0000], dtype=torch.float64)
    """
    _check_callable(f)
    order = _check_order(order)
    scalar = trace(f)
    cache: dict[tuple, Symbolic] = {}

    def evaluate(*inputs: Any) -> Any:
        names = scalar.names
        if len(inputs) != len(names):
            raise TypeError(f"the reference takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}")
        tensors = [_check_input(x, k, names[k]) for k, x in enumerate(inputs)]
        values = [x.detach().to(torch.float64) for x in tensors]
        if scalar.output.ndim == 0 and _is_elementwise(f, len(tensors), torch.float64):
            key = ("scalar",)
            if key not in cache:
                cache[key] = _scalar_symbolic(scalar, order)
                cache[key].accuracy = accuracy
            sym = cache[key]
            shape = torch.broadcast_shapes(*[v.shape for v in values])
            parts = [p.expand(shape) for p in sym.exact(values)]
            n = len(names)
            if order == 1:
                return parts[0] if n == 1 else tuple(parts)
            table = tuple(tuple(parts[i * n + j] for j in range(n)) for i in range(n))
            return table[0][0] if n == 1 else table
        if order != 1:
            raise ValueError("order=2 references are available for elementwise functions only")
        shapes = tuple(tuple(v.shape) for v in values)
        if shapes not in cache:
            if sum(v.numel() for v in values) > MAX_SYMBOLIC_ELEMENTS:
                raise ValueError(
                    f"inputs have more than {MAX_SYMBOLIC_ELEMENTS} elements and f is not elementwise; "
                    "evaluate the reference at smaller tensors"
                )
            tr = trace(f, shapes, names=names)
            if tr.output.ndim:
                raise ValueError(f"f returns shape {tuple(tr.output.shape)}; the reference of a tensor function needs a scalar output")
            cache[shapes] = _tensor_symbolic(tr, 1)
            cache[shapes].accuracy = accuracy
        sym = cache[shapes]
        point = torch.cat([v.reshape(-1) for v in values])
        weights = _Weights(torch.ones((), dtype=torch.float64, device=point.device), None)
        flat = _contract(sym, sym.exact(list(point)), weights, point.device)
        pieces = torch.split(flat, [v.numel() for v in values])
        grads = tuple(p.reshape(v.shape) for p, v in zip(pieces, values))
        return grads[0] if len(grads) == 1 else grads

    return evaluate
