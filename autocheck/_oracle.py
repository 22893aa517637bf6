"""Exact reference values: derivatives rounded to float64 from high precision.

Most points are evaluated in float64 with torch (the printed derivative, fast),
and only the points float64 cannot be trusted with are re-evaluated at high
precision by :func:`autocheck._precise.exact_values` (arb ball arithmetic,
mpmath where arb has no translation):

* the float64 value is not finite (``exp(x)/(1 + exp(x))`` at 800 is inf/inf,
  yet exactly 1.0);
* the estimated rounding error of the float64 evaluation (a running error
  analysis printed next to the derivative) exceeds ``TRUSTED_ERROR`` units of
  roundoff relative to the result: cancellation in a sum (``2x·eˣ + x²eˣ``
  near -2), or an ill-conditioned function of a rounded argument
  (``exp(x²/3)`` at large x, ``log(1 + x)`` near 0);
* an intermediate that would turn a finite result wrong by overflowing (the
  divisor of ``2x/(x² + 1)`` at 1e300) is infinite;
* the expression calls a special function whose torch kernel is not accurate to
  float64 (polygamma, gamma, loggamma, zeta, erfinv, Bessel, Lambert W): every
  point, deduplicated (trigamma: ~30 µs a point in arb, ~1 ms in mpmath).

Before high precision, two cheaper tiers settle many of those points at once: values far
beyond float64's range are bounded in magnitude (:mod:`autocheck._magnitude`: they round to
0 or to an infinity), and, for a check's accuracy, a cancelling sum is evaluated in its
factored form (``x²eˣ + 2xeˣ = x(x + 2)eˣ``) wherever that form's own error bound is good
enough.

So re-evaluated points are correctly rounded (certified by arb's ball, or
settled by mpmath), and trusted points are within ``TRUSTED_ERROR · 2**-53``
relative of the truth (measured: at most 9 ULP, typically 0 to 2).

Where the exact expression has no value (0/0, a pole) the limit is taken from
several directions at two step sizes: if they agree it is the value
(``sinc'(0) = 0.0``); if the magnitude grows on every side with one sign it is
that infinity (``gamma'(0) = -inf``); otherwise the IEEE float64 value stays
(``1/x`` at 0 is inf). ``DiracDelta`` at 0 is nan. See :mod:`autocheck._precise`.

>>> import sympy, torch
>>> x = sympy.Symbol("x", real=True)
>>> softplus_grad = sympy.diff(sympy.log(1 + sympy.exp(x)), x)
>>> evaluate([softplus_grad], [x], [torch.tensor([0.0, 800.0])])
(tensor([0.5000, 1.0000], dtype=torch.float64),)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import sympy
import torch

from autocheck import _magnitude, _precise, _printer
from autocheck._budget import OutOfTime
from autocheck._error_model import KERNEL_ERROR, UNDERFLOW, kernel_error, relative_bound

__all__ = ["TRUSTED_ERROR", "evaluate", "fast", "fast_values"]

#: Largest estimated float64 error (in units of roundoff, 2**-53, relative to
#: the result) that a correctly rounded reference trusts without re-evaluating.
TRUSTED_ERROR = 16.0

_ROUNDOFF = 2.0**-53
_SMALLEST_NORMAL = 2.2250738585072014e-308


@dataclass
class _Plan:
    """Everything the float64 tier needs for one list of expressions, compiled once."""

    exprs: tuple[sympy.Expr, ...]
    symbols: tuple[sympy.Symbol, ...]
    values: Callable[..., tuple[torch.Tensor, ...]]  # the values, then one overflow probe per expression
    kernel_error: tuple[float, ...]  # per expression: its worst kernel's error, relative, in roundoffs

    @functools.cached_property
    def factored(self) -> tuple["_Plan | None", ...]:
        """Per expression: the plan of its factored form, where factoring changes a small sum."""
        return tuple(_factored_plan(e, self.symbols) for e in self.exprs)

    @functools.cached_property
    def bounds(self) -> Callable[..., tuple[torch.Tensor, ...]]:
        """Relative error bounds of the float64 values (kernel errors included), in roundoffs."""
        exprs = [relative_bound(e) if not e.is_number else sympy.Integer(0) for e in self.exprs]
        return _printer.to_torch(exprs, [*self.symbols, UNDERFLOW])


#: Largest sum (in SymPy operations) the oracle tries to factor: factoring is cheap there.
MAX_FACTORED_OPS = 40


def _factored_plan(expr: sympy.Expr, symbols: tuple[sympy.Symbol, ...]) -> "_Plan | None":
    if (not isinstance(expr, sympy.Add) or expr.has(sympy.Piecewise) or expr.atoms(*KERNEL_ERROR)
            or sympy.count_ops(expr) > MAX_FACTORED_OPS or not expr.free_symbols):
        return None  # an inaccurate kernel inside: high precision decides
    try:
        factored = sympy.factor(expr)
    except (sympy.PolynomialError, ValueError, TypeError, NotImplementedError):
        return None
    if factored == expr or isinstance(factored, sympy.Add):
        return None
    return _Plan((factored,), symbols, _printer.to_torch([factored, _overflow_probe(factored)], symbols), (0.0,))


@functools.lru_cache(maxsize=256)
def _plan(exprs: tuple[sympy.Expr, ...], symbols: tuple[sympy.Symbol, ...], registrations: int) -> _Plan:
    probes = [_overflow_probe(e) for e in exprs]
    values = _printer.to_torch([*exprs, *probes], symbols)
    kernels = tuple(max([kernel_error(f) for f in e.atoms(*KERNEL_ERROR)], default=0.0) for e in exprs)
    return _Plan(exprs, symbols, values, kernels)


def _compiled(exprs: Sequence[sympy.Expr], symbols: Sequence[sympy.Symbol]) -> _Plan:
    return _plan(tuple(sympy.sympify(e) for e in exprs), tuple(symbols), _printer.registrations())


# Functions that turn an overflowed (infinite) argument into a finite, wrong value.
_SATURATING = (
    sympy.exp, sympy.tanh, sympy.atan, sympy.acot, sympy.erf, sympy.erfc, sympy.sinc,
    sympy.sign, sympy.Heaviside, sympy.sech, sympy.csch, sympy.coth, sympy.atan2,
)


def _overflow_probe(expr: sympy.Expr) -> sympy.Expr:
    """Sum of the magnitudes that, if they overflowed to inf, would leave a finite result.

    ``2x/(x² + 1)`` at ``x = 1e300`` is 0.0 in float64 (x² is inf), not 2e-300:
    nothing in the result shows it, so the divisor itself is watched.
    """
    watched: set[sympy.Expr] = set()
    _watch(expr, watched)
    return sympy.Add(*[sympy.Abs(w) for w in watched if not isinstance(w, sympy.Symbol)])


def _watch(node: sympy.Basic, watched: set[sympy.Expr]) -> None:
    if isinstance(node, sympy.Piecewise):
        # Only the branch taken counts: the others are evaluated too, and may overflow freely.
        watched.add(sympy.Piecewise(*[(_overflow_probe(value), condition) for value, condition in node.args]))
        return
    if isinstance(node, sympy.Pow) and node.exp.is_negative:
        watched.add(1 / node)  # the divisor, as computed: (1 + e^-x)**2 overflows before its base
    elif isinstance(node, _SATURATING):
        watched.update(a for a in node.args if not a.is_number)
    for argument in node.args:
        _watch(argument, watched)


def _float64(values: Sequence[torch.Tensor | float]) -> list[torch.Tensor]:
    return [torch.as_tensor(v).detach().to(torch.float64) for v in values]


def fast(
    exprs: Sequence[sympy.Expr], symbols: Sequence[sympy.Symbol], values: Sequence[torch.Tensor], *, accuracy: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Float64 values of ``exprs`` and, per expression, where the oracle vouches for them as
    they are: finite, no intermediate overflowed, and no kernel less accurate than ``accuracy``
    (relative). Cancellation is not looked at: a caller that needs it calls :func:`evaluate`.
    """
    plan = _compiled(exprs, symbols)
    results = plan.values(*_float64(values))
    n = len(plan.exprs)
    outputs = [r.to(torch.float64) for r in results[:n]]
    trusted = []
    for i, (value, probe) in enumerate(zip(outputs, results[n:])):
        if plan.kernel_error[i] * _ROUNDOFF > accuracy:
            trusted.append(torch.zeros_like(value, dtype=torch.bool))
        else:
            trusted.append(torch.isfinite(value) & torch.isfinite(probe))
    return outputs, trusted


def fast_values(exprs: Sequence[sympy.Expr], symbols: Sequence[sympy.Symbol]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The compiled float64 values of ``exprs`` (no refinement): for the kink test's neighbours."""
    plan = _compiled(exprs, symbols)
    n = len(plan.exprs)
    return lambda *values: tuple(r.to(torch.float64) for r in plan.values(*_float64(values))[:n])


def evaluate(
    exprs: Sequence[sympy.Expr],
    symbols: Sequence[sympy.Symbol],
    values: Sequence[torch.Tensor],
    *,
    accuracy: float | None = None,
    against: torch.Tensor | None = None,
    deadline: float | None = None,
) -> tuple[torch.Tensor, ...]:
    """Exact values of ``exprs`` at ``symbols = values``, rounded to float64.

    Each value is computed in float64 with an error bound (:mod:`autocheck._error_model`,
    torch's kernel errors included), and re-evaluated at high precision
    (:func:`autocheck._precise.exact_values`) wherever the bound is not good enough:

    * ``accuracy=None``: within ``TRUSTED_ERROR`` roundoffs of the value; the points
      re-evaluated are correctly rounded.
    * ``accuracy=a``: within ``a`` relative to the value, or with ``against`` (a tensor of
      magnitudes, broadcastable) within ``a * max(|value|, against)``: a judgement whose
      tolerance is measured against the size of the computation needs no more.

    A non-finite value or an overflowed intermediate is always re-evaluated. If the
    deadline (a ``time.monotonic()`` value) passes with points still to re-evaluate,
    :class:`~autocheck._budget.OutOfTime` is raised: no untrusted value is passed off as exact.

    Args:
        exprs: SymPy expressions (typically derivatives).
        symbols: one SymPy Symbol per entry of ``values``.
        values: tensors of any floating dtype on one device, broadcastable.

    Returns:
        One float64 tensor per expression, on the values' device, of the
        broadcast shape; nan or ±inf exactly where the true value is.

    >>> x = sympy.Symbol("x", real=True)
    >>> evaluate([sympy.diff(sympy.sinc(x), x)], [x], [torch.tensor([0.0])])
    (tensor([0.], dtype=torch.float64),)
    """
    if len(values) != len(symbols):
        raise ValueError(f"Expected one value per symbol in {list(symbols)}, but got {len(values)} values")
    plan = _compiled(exprs, symbols)
    values = _float64(values)
    results = plan.values(*values)
    n = len(plan.exprs)
    outputs = [r.to(torch.float64) for r in results[:n]]
    bounds = None
    for i, (output, probe) in enumerate(zip(outputs, results[n:])):
        beyond = ~(torch.isfinite(output) & torch.isfinite(probe))  # float64's range was left
        untrusted = beyond.clone()
        if plan.exprs[i].is_number:
            pass  # a constant (0 for floor's derivative) is exact
        else:
            if bounds is None:
                bounds = plan.bounds(*values, _SMALLEST_NORMAL)
            error = bounds[i] * _ROUNDOFF * output.abs()  # a nan bound is untrusted too
            if accuracy is None:
                allowed = TRUSTED_ERROR * _ROUNDOFF * output.abs()
            else:
                size = output.abs() if against is None else torch.maximum(output.abs(), against.to(output.device).abs())
                allowed = accuracy * size
            untrusted |= ~(error <= allowed)
        # Checks only: a correctly rounded reference (accuracy=None) needs more than the bound of
        # a factored product promises (a rounded power's kernel error is not in it).
        if accuracy is not None and bool((untrusted & ~beyond).any()) and plan.factored[i] is not None:
            output, untrusted = _try_factored(plan, i, output, untrusted & ~beyond, untrusted, values,
                                              accuracy, against)
            outputs[i] = output
        if bool(untrusted.any()):
            outputs[i] = _refine(plan, i, output, untrusted, beyond, values, deadline)
    return tuple(outputs)


def _try_factored(plan: _Plan, i: int, output: torch.Tensor, cancelled: torch.Tensor, untrusted: torch.Tensor,
                  values: list[torch.Tensor], accuracy: float, against: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a sum cancelled, the factored form (x**2 e**x + 2x e**x = x (x + 2) e**x) often
    does not: take its float64 value wherever its own error bound is good enough."""
    inputs = torch.broadcast_tensors(*values)
    columns = [v[cancelled] for v in inputs]
    factored = plan.factored[i]
    value, probe = factored.values(*columns)
    (bound,) = factored.bounds(*columns, _SMALLEST_NORMAL)
    value = value.to(torch.float64).expand(columns[0].shape)
    error = bound.expand(value.shape) * _ROUNDOFF * value.abs()
    size = value.abs() if against is None else torch.maximum(
        value.abs(), against.to(value.device).expand(inputs[0].shape)[cancelled].abs())
    allowed = accuracy * size
    # A quarter of the allowance: the bound of a product of rounded powers is looser than a sum's.
    good = torch.isfinite(value) & torch.isfinite(probe.expand(value.shape)) & (4 * error <= allowed)
    output, untrusted = output.clone(), untrusted.clone()
    where = cancelled.nonzero(as_tuple=True)
    output[tuple(w[good] for w in where)] = value[good].to(output.dtype)
    untrusted[tuple(w[good] for w in where)] = False
    return output, untrusted


#: Points beyond float64's range from which the proven-magnitude tier is tried first (it
#: costs about as much as this many points in high precision).
MAGNITUDE_POINTS = 32


def _refine(plan: _Plan, i: int, output: torch.Tensor, untrusted: torch.Tensor, beyond: torch.Tensor,
            values: list[torch.Tensor], deadline: float | None) -> torch.Tensor:
    """Replace the untrusted entries of ``output`` by high-precision values where there is one."""
    inputs = torch.broadcast_tensors(*values) if values else []
    for v in inputs:
        untrusted &= ~torch.isnan(v)  # nan in, nan out: nothing to refine
    if not bool(untrusted.any()):
        return output
    columns = [v[untrusted].cpu() for v in inputs]
    replaced = output[untrusted].cpu().numpy()
    known = np.zeros(replaced.shape, dtype=bool)
    outside = beyond.expand(untrusted.shape)[untrusted].cpu()
    if columns and int(outside.sum()) >= MAGNITUDE_POINTS:
        # First, all at once: values far outside float64's range round to 0 or to an infinity.
        settled, value = _magnitude.settle(plan.exprs[i], plan.symbols, [c[outside] for c in columns])
        where = outside.clone()
        where[outside] = settled
        known = where.numpy()
        replaced[known] = value[settled].numpy()
    rest = ~known
    if rest.any():
        points = torch.stack(columns, dim=-1).numpy()[rest] if columns else np.zeros((1, 0))
        exact = _precise.exact_values([plan.exprs[i]], plan.symbols, points, deadline=deadline)
        found = exact.found[:, 0]
        replaced[np.flatnonzero(rest)[found]] = exact.values[found, 0]
        known[np.flatnonzero(rest)[found]] = True
    if deadline is not None and time.monotonic() >= deadline and not bool(known.all()):
        raise OutOfTime(f"{int((~known).sum())} exact values were not computed before the deadline")
    output = output.clone()
    output[untrusted] = torch.from_numpy(replaced).to(output.device)
    return output
