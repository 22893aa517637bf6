"""Exact reference values: derivatives correctly rounded to float64.

Most points are evaluated in float64 with torch (the printed derivative, fast),
and only the points float64 cannot be trusted with are re-evaluated in mpmath:

* the float64 value is not finite (``exp(x)/(1 + exp(x))`` at 800 is inf/inf,
  yet exactly 1.0);
* the estimated rounding error of the float64 evaluation exceeds
  ``TRUSTED_ERROR`` units of roundoff relative to the result: cancellation in a
  sum (``2x·eˣ + x²eˣ`` near -2) or an ill-conditioned function of a rounded
  argument (``exp(x²/3)`` at large x, ``log(1 + x)`` near 0);
* the expression calls a special function whose torch kernel is not accurate to
  float64 (polygamma, gamma, zeta, erfinv, Bessel, Lambert W): every point.

mpmath raises the precision until two successive precisions round to the same
float64. Where mpmath has no value (0/0, a pole) the two-sided limit is taken
along several directions; if the sides agree that is the value, otherwise the
IEEE float64 value stays (inf at a pole of 1/x², inf or nan elsewhere).

>>> import sympy, torch
>>> x = sympy.Symbol("x", real=True)
>>> softplus_grad = sympy.diff(sympy.log(1 + sympy.exp(x)), x)
>>> evaluate([softplus_grad], [x], [torch.tensor([0.0, 800.0])])
(tensor([0.5000, 1.0000], dtype=torch.float64),)
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mpmath
import numpy as np
import sympy
import torch

from autocheck import _printer
from autocheck._errors import TranslationError

__all__ = ["TRUSTED_ERROR", "evaluate", "term_scale"]

#: Largest estimated float64 error (in units of roundoff, 2**-53, relative to
#: the result) that the fast path is trusted with.
TRUSTED_ERROR = 16.0

# torch kernels measurably less accurate than float64 (trigamma is off by
# ~5e-10 relative): any expression using one goes to mpmath at every point.
_INACCURATE = (
    sympy.polygamma, sympy.gamma, sympy.loggamma, sympy.zeta, sympy.erfinv, sympy.erfcinv,
    sympy.besselj, sympy.bessely, sympy.besseli, sympy.besselk, sympy.LambertW,
)
# Functions whose derivative is 0 or a DiracDelta: a rounded argument only
# matters at the jump, which no error estimate can fix.
_STEPS = (sympy.floor, sympy.ceiling, sympy.sign, sympy.Heaviside, sympy.DiracDelta)

#: Relative accuracy of torch's least accurate special-function kernels (trigamma: ~5e-10).
KERNEL_ACCURACY = 1e-8

_START_BITS = 133  # ~40 decimal digits
_MAX_BITS = 20_000
# log2 of the relative steps, in pairs: a limit must agree at both steps of a
# pair, which a divergence such as 1/h**2 does not. 1100 pushes a term of
# order h below the smallest subnormal, so that a limit of 0 rounds to 0.0.
_LIMIT_STEPS = ((64, 96), (1100, 1300))
_SMALLEST_NORMAL = 2.2250738585072014e-308
# What mpmath raises where an expression has no value: 0/0, a pole, a complex
# number compared in a Piecewise condition, a series that does not converge.
_NO_VALUE_ERRORS = (ArithmeticError, ValueError, TypeError, mpmath.libmp.NoConvergence)


def term_scale(expr: sympy.Expr) -> sympy.Expr:
    """The magnitude of the terms of ``expr``, as a SymPy expression.

    The rounding error of a sum is proportional to the size of its terms, not
    of its result: ``2x·eˣ + x²eˣ`` near ``x = -2`` is tiny, its error is not.

    Add → sum of the scales of the terms; Mul → product of the scales;
    ``b**n`` with integer ``n > 0`` → ``scale(b)**n`` (``n < 0``:
    ``scale(b)**|n| / |b|**(2|n|)``, the same relative amplification on
    ``|b**n|``); anything else → ``Abs(expr)``.

    >>> x = sympy.Symbol("x", real=True)
    >>> term_scale(x**2 * sympy.exp(x) + 2 * x * sympy.exp(x))
    x**2*exp(x) + 2*exp(x)*Abs(x)
    """
    if isinstance(expr, sympy.Add):
        return sympy.Add(*map(term_scale, expr.args))
    if isinstance(expr, sympy.Mul):
        return sympy.Mul(*map(term_scale, expr.args))
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer:
        n = int(expr.exp)
        if n > 0:
            return term_scale(expr.base) ** n
        return term_scale(expr.base) ** (-n) * sympy.Abs(expr.base) ** (2 * n)
    return sympy.Abs(expr)


def _error_bound(expr: sympy.Expr) -> sympy.Expr:
    """Estimated relative error of evaluating ``expr`` in floating point, in units of roundoff.

    A running error analysis to first order: each operation adds one rounding,
    a sum weighs its terms' errors by ``|term| / |sum|`` (cancellation), and a
    function ``f(a)`` multiplies its argument's error by the condition number
    ``|a·f'(a)/f(a)|``. Inputs are exact; constants are rounded once.
    """
    if isinstance(expr, sympy.Symbol):
        return sympy.S.Zero
    if expr.is_number:
        return sympy.S.Zero if _exact_constant(expr) else sympy.S.One
    if isinstance(expr, sympy.Add):
        bounds = [_error_bound(a) for a in expr.args]
        if all(b.is_number for b in bounds) and _same_sign(expr.args):
            return max(bounds) + 1  # no cancellation possible
        weighted = sympy.Add(*[sympy.Abs(a) * (b + 1) for a, b in zip(expr.args, bounds)])
        return weighted / sympy.Abs(expr)
    if isinstance(expr, sympy.Mul):
        rounded = sum(1 for a in expr.args if not _power_of_two(a))
        return sympy.Add(*map(_error_bound, expr.args)) + max(rounded - 1, 0)
    if isinstance(expr, sympy.Pow):
        base, exponent = expr.args
        bound = sympy.Abs(exponent) * _error_bound(base) + 1
        if not exponent.is_number:
            bound += sympy.Abs(exponent * sympy.log(sympy.Abs(base))) * _error_bound(exponent)
        return bound
    if isinstance(expr, sympy.Piecewise):
        return sympy.Add(*[_error_bound(value) for value, _ in expr.args])
    if isinstance(expr, sympy.Function):
        return 1 + sympy.Add(*[
            _condition(expr, i) * bound
            for i, arg in enumerate(expr.args)
            if (bound := _error_bound(arg)) != 0
        ])
    return sympy.S.Zero


def _exact_constant(expr: sympy.Expr) -> bool:
    """A number that float64 holds exactly and multiplies by exactly (±2**k, small integers)."""
    return bool(expr.is_Rational and (expr.q & (expr.q - 1)) == 0 and abs(expr.p) <= 2**53)


def _power_of_two(expr: sympy.Expr) -> bool:
    """±2**k: multiplying by it is exact."""
    return _exact_constant(expr) and (abs(expr.p) & (abs(expr.p) - 1)) == 0


def _same_sign(terms: Sequence[sympy.Expr]) -> bool:
    return all(t.is_nonnegative for t in terms) or all(t.is_nonpositive for t in terms)


def _condition(expr: sympy.Function, i: int) -> sympy.Expr:
    """|a·∂f/∂a / f| for argument ``i``: how much f amplifies that argument's relative error."""
    if isinstance(expr, _STEPS):
        return sympy.S.Zero
    arg = expr.args[i]
    d = sympy.Dummy()
    try:
        slope = sympy.diff(expr.func(*expr.args[:i], d, *expr.args[i + 1:]), d).xreplace({d: arg})
    except (ValueError, TypeError, NotImplementedError):
        return sympy.S.One
    slope = slope.xreplace({delta: 0 for delta in slope.atoms(sympy.DiracDelta)})
    calls = slope.atoms(sympy.core.function.Application) - slope.atoms(sympy.Piecewise)
    if slope.has(sympy.Derivative, sympy.Subs) or any(type(c) not in _printer.SYMPY_TO_TORCH for c in calls):
        return sympy.S.One  # a user function's derivative: no estimate, assume well-conditioned
    return sympy.Abs(arg * slope / expr)


@dataclass
class _Plan:
    """Everything evaluate() needs for one list of expressions, built once."""

    exprs: tuple[sympy.Expr, ...]
    symbols: tuple[sympy.Symbol, ...]
    fast: Callable[..., tuple[torch.Tensor, ...]]  # values, then one error bound per checked expression
    everywhere: tuple[bool, ...]  # expression i goes to mpmath at every point
    checked: tuple[int, ...]  # expressions with an error bound, in the order fast returns them
    exact: dict[int, Callable[..., tuple[Any, ...]] | None] = field(default_factory=dict)

    def exact_function(self, i: int) -> Callable[..., tuple[Any, ...]] | None:
        if i not in self.exact:
            try:
                self.exact[i] = _printer.to_mpmath([self.exprs[i]], self.symbols)
            except TranslationError as error:
                warnings.warn(
                    f"No mpmath reference for {self.exprs[i]}: its float64 values are used "
                    f"unchecked where float64 is unreliable. {error}",
                    stacklevel=4,
                )
                self.exact[i] = None
        return self.exact[i]


@functools.lru_cache(maxsize=256)
def _plan(exprs: tuple[sympy.Expr, ...], symbols: tuple[sympy.Symbol, ...], registrations: int) -> _Plan:
    everywhere = tuple(bool(e.atoms(*_INACCURATE)) for e in exprs)
    bounds, checked = [], []
    for i, expr in enumerate(exprs):
        if everywhere[i]:
            continue
        bound = _error_bound(expr)
        if not (bound.is_number and bound <= TRUSTED_ERROR):
            bounds.append(bound)
            checked.append(i)
    fast = _printer.to_torch([*exprs, *bounds], symbols)
    return _Plan(exprs, symbols, fast, everywhere, tuple(checked))


def evaluate(
    exprs: Sequence[sympy.Expr],
    symbols: Sequence[sympy.Symbol],
    values: Sequence[torch.Tensor],
    *,
    accuracy: float | None = None,
) -> tuple[torch.Tensor, ...]:
    """Exact values of ``exprs`` at ``symbols = values``, correctly rounded to float64.

    With ``accuracy`` (a relative error, measured against the size of the terms of the
    expression), float64 is trusted wherever it is finite and its kernels are at least that
    accurate: cancellation is then left to the caller, whose tolerance is measured against
    the terms too (that is how the gradient check uses it, at a fraction of the cost).

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
    exprs = tuple(sympy.sympify(e) for e in exprs)
    symbols = tuple(symbols)
    if len(values) != len(symbols):
        raise ValueError(f"Expected one value per symbol in {list(symbols)}, but got {len(values)} values")
    plan = _plan(exprs, symbols, _printer.registrations())
    values = [torch.as_tensor(v).detach().to(torch.float64) for v in values]
    results = plan.fast(*values)
    outputs = [r.to(torch.float64) for r in results[: len(exprs)]]  # float64 even with no inputs
    bounds = dict(zip(plan.checked, results[len(exprs):]))
    for i, output in enumerate(outputs):
        if accuracy is not None:
            untrusted = ~torch.isfinite(output)
            if plan.everywhere[i] and accuracy < KERNEL_ACCURACY:
                untrusted = torch.ones_like(output, dtype=torch.bool)
            if bool(untrusted.any()):
                outputs[i] = _refine(plan, i, output, untrusted, values)
            continue
        if plan.everywhere[i]:
            untrusted = torch.ones_like(output, dtype=torch.bool)
        elif bool(torch.isfinite(output).all()) and (i not in bounds or bool((bounds[i] <= TRUSTED_ERROR).all())):
            continue  # the common case: two cheap reductions, no masks
        else:
            untrusted = ~torch.isfinite(output)
            if i in bounds:
                untrusted |= ~(bounds[i] <= TRUSTED_ERROR)  # a nan bound is untrusted too
        outputs[i] = _refine(plan, i, output, untrusted, values)
    return tuple(outputs)


def _refine(plan: _Plan, i: int, output: torch.Tensor, untrusted: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
    """Replace the untrusted entries of ``output`` by mpmath values where mpmath has one."""
    inputs = torch.broadcast_tensors(*values) if values else []
    for v in inputs:
        untrusted &= ~torch.isnan(v)  # nan in, nan out: nothing to refine
    exact = plan.exact_function(i)
    if exact is None or not bool(untrusted.any()):
        return output
    points = torch.stack([v[untrusted] for v in inputs], dim=-1).cpu().numpy() if inputs else np.zeros((1, 0))
    found, known = _exact_values(exact, points)
    replaced = output[untrusted].cpu().numpy()
    replaced[known] = found[known]
    output = output.clone()
    output[untrusted] = torch.from_numpy(replaced).to(output.device)
    return output


def _exact_values(function: Callable[..., tuple[Any, ...]], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mpmath at each distinct row of ``points``: the float64 value per row, and whether there is one."""
    distinct, inverse = np.unique(points, axis=0, return_inverse=True)
    found = [_exact_at(function, tuple(row.tolist())) for row in distinct]
    known = np.array([v is not None for v in found])
    values = np.array([math.nan if v is None else v for v in found], dtype=np.float64)
    return values[inverse.reshape(-1)], known[inverse.reshape(-1)]


class _NoValue(Exception):
    """mpmath has no value here (0/0, a pole, nan): a limit may still exist."""


def _exact_at(function: Callable[..., tuple[Any, ...]], point: tuple[float, ...]) -> float | None:
    """The correctly rounded value at ``point``; None where it has none and no limit (keep IEEE's)."""
    arguments = [mpmath.mpf(v) for v in point]  # exact: every float64 is an mpf
    try:
        return _converged(lambda: function(*arguments)[0], _start_bits(arguments))
    except _printer.Undefined:
        return math.nan
    except _NoValue:
        pass
    return _limit(function, arguments)


def _converged(compute: Callable[[], Any], bits: int) -> float:
    """Raise the precision until two successive precisions round to the same float64."""
    previous = None
    while True:
        with mpmath.workprec(bits):
            try:
                value = _to_float64(compute())
            except _NO_VALUE_ERRORS as error:
                raise _NoValue from error
        if previous is not None and _same(value, previous):
            return value
        if bits >= _MAX_BITS:
            return value
        previous, bits = value, bits * 3 // 2


def _limit(function: Callable[..., tuple[Any, ...]], arguments: list[Any]) -> float | None:
    """The two-sided limit at ``arguments`` if every direction and both step sizes agree, else None."""
    n = len(arguments)
    if n == 0 or any(mpmath.isinf(a) for a in arguments):
        return None
    # Distinct weights per symbol, so that x = y stays off a singular x - y = 0.
    weights = [1 + 0.5 * i / n for i in range(n)]
    directions = [weights, weights[::-1]] if n > 1 else [weights]
    directions += [[-w for w in d] for d in directions]
    for steps in _LIMIT_STEPS:
        found = []
        try:
            for step in steps:
                for direction in directions:
                    moved = [_nudge(a, w, step) for a, w in zip(arguments, direction)]
                        # At least 4·step bits: the terms of order h**-3 that cancel must survive.
                    bits = max(4 * step, _start_bits(moved))
                    found.append(_converged(lambda moved=moved: function(*moved)[0], bits))
        except (_NoValue, _printer.Undefined):
            continue
        if all(_same(value, found[0]) for value in found) and not math.isnan(found[0]):
            return found[0]
    return None


def _nudge(a: Any, weight: float, step: int) -> Any:
    """a + weight·|a|·2**-step exactly (|a| replaced by 1 at 0)."""
    scale = abs(a) if a != 0 else mpmath.mpf(1)
    return mpmath.fadd(a, mpmath.fmul(mpmath.ldexp(scale, -step), weight, exact=True), exact=True)


def _start_bits(arguments: Sequence[Any]) -> int:
    """Enough bits that terms such as cos(x) = 1 - x²/2 keep x² even for x = 1e-300.

    Two successive precisions can agree on a wrong value when both absorb the
    same small term; starting above the inputs' dynamic range avoids that.
    """
    exponents = [abs(int(mpmath.frexp(a)[1])) for a in arguments if a != 0 and mpmath.isfinite(a)]
    return _START_BITS + 3 * max(exponents, default=0)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _to_float64(value: Any) -> float:
    """Round an mpmath result to the nearest float64 (complex → nan, nan → _NoValue)."""
    if isinstance(value, mpmath.mpc):
        if value.imag != 0:
            return math.nan  # real-valued semantics, as torch
        value = value.real
    rounded = float(value)  # mpmath rounds to nearest; overflow gives ±inf
    if rounded != rounded:
        raise _NoValue
    if 0 < abs(rounded) <= _SMALLEST_NORMAL:
        # float() rounds to 53 bits, then again to the subnormal grid: round once.
        return math.ldexp(int(mpmath.nint(mpmath.ldexp(value, 1074))), -1074)
    return rounded
