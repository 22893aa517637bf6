"""Exact reference values: derivatives rounded to float64 from high precision.

Most points are evaluated in float64 with torch (the printed derivative, fast),
and only the points float64 cannot be trusted with are re-evaluated in mpmath:

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
  point, deduplicated. This is the slow case (trigamma: ~1 ms a point).

So points re-evaluated by mpmath are correctly rounded, and trusted points are
within ``TRUSTED_ERROR · 2**-53`` relative of the truth (measured: at most 9
ULP, typically 0 to 2).

mpmath starts at ~40 digits and raises the precision until two successive
precisions round to the same float64 *and* the error bound, evaluated in
mpmath, is far below a ULP (agreement alone is fooled when both precisions lose
the same small term). Where mpmath has no value (0/0, a pole) the limit is
taken from several directions at two step sizes: if they agree it is the value
(``sinc'(0) = 0.0``); if the magnitude grows on every side with one sign it is
that infinity (``gamma'(0) = -inf``); otherwise the IEEE float64 value stays
(``1/x`` at 0 is inf). ``DiracDelta`` at 0 is nan.

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
# Measured worst errors of those kernels in units of roundoff, relative to
# max(1, |f|), times ~10 (torch 2.13, CPU): with a requested accuracy they are
# trusted where that is enough. erfcinv(x) = erfinv(1 - x) loses x: never.
_KERNEL_ERROR = {
    sympy.polygamma: 5e7, sympy.gamma: 1e4, sympy.loggamma: 20, sympy.zeta: 100,
    sympy.erfinv: 10, sympy.erfcinv: math.inf, sympy.besselj: 1e11, sympy.bessely: 1e11,
    sympy.besseli: 100, sympy.besselk: 100, sympy.LambertW: 100,
}
# Functions whose derivative is 0 or a DiracDelta: a rounded argument only
# matters at the jump, which no error estimate can fix.
_STEPS = (sympy.floor, sympy.ceiling, sympy.sign, sympy.Heaviside, sympy.DiracDelta)

_ROUNDOFF = 2.0**-53
#: Relative accuracy of torch's least accurate special-function kernels (trigamma: ~5e-10).
_KERNEL_ACCURACY = 1e-8

_START_BITS = 133  # ~40 decimal digits
_MAX_BITS = 20_000
# log2 of the relative steps, in pairs: a limit must agree at both steps of a
# pair, which a divergence such as 1/h**2 does not. 1100 pushes a term of
# order h below the smallest subnormal, so that a limit of 0 rounds to 0.0.
_LIMIT_STEPS = ((64, 96), (1100, 1300))
_SMALLEST_NORMAL = 2.2250738585072014e-308
_SMALLEST_ULP = 5e-324
# A value is settled when its error bound is below 2**-_GUARD_BITS of a ULP.
_GUARD_BITS = 8
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


def _error_bound(expr: sympy.Expr, kernels: bool = False) -> sympy.Expr:
    """Estimated relative error of evaluating ``expr`` in floating point, in units of roundoff.

    A running error analysis to first order: each operation adds one rounding,
    a sum weighs its terms' errors by ``|term| / |sum|`` (cancellation), and a
    function ``f(a)`` multiplies its argument's error by the condition number
    ``|a·f'(a)/f(a)|``. Inputs are exact; constants are rounded once. With
    ``kernels``, the special functions' own torch errors (``_KERNEL_ERROR``) are
    added, relative to ``max(1, |f|)``.
    """
    bound = functools.partial(_error_bound, kernels=kernels)
    if isinstance(expr, sympy.Symbol):
        return sympy.S.Zero
    if expr.is_number:
        return sympy.S.Zero if _exact_constant(expr) else sympy.S.One
    if isinstance(expr, sympy.Add):
        bounds = [bound(a) for a in expr.args]
        if all(b.is_number for b in bounds) and _same_sign(expr.args):
            return max(bounds) + 1  # no cancellation possible
        weighted = sympy.Add(*[sympy.Abs(a) * (b + 1) for a, b in zip(expr.args, bounds)])
        return weighted / sympy.Abs(expr)
    if isinstance(expr, sympy.Mul):
        rounded = sum(1 for a in expr.args if not _power_of_two(a))
        return sympy.Add(*map(bound, expr.args)) + max(rounded - 1, 0)
    if isinstance(expr, sympy.Pow):
        base, exponent = expr.args
        result = sympy.Abs(exponent) * bound(base) + 1
        if not exponent.is_number:
            result += sympy.Abs(exponent * sympy.log(sympy.Abs(base))) * bound(exponent)
        return result
    if isinstance(expr, sympy.Piecewise):
        return sympy.Add(*[bound(value) for value, _ in expr.args])
    if isinstance(expr, (sympy.Max, sympy.Min)):
        return sympy.Add(*map(bound, expr.args))  # exact selection: the chosen argument's error
    if isinstance(expr, sympy.Function):
        own = _KERNEL_ERROR[type(expr)] * (1 + 1 / sympy.Abs(expr)) if kernels and type(expr) in _KERNEL_ERROR else 0
        return 1 + own + sympy.Add(*[
            _condition(expr, i) * arg_bound
            for i, arg in enumerate(expr.args)
            if (arg_bound := bound(arg)) != 0
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
        """mpmath for (value, absolute error bound in units of the working precision), or (value,)."""
        if i not in self.exact:
            expr = self.exprs[i]
            try:
                self.exact[i] = _printer.to_mpmath([expr, _error_bound(expr) * sympy.Abs(expr)], self.symbols)
            except TranslationError:
                pass
            try:
                self.exact.setdefault(i, _printer.to_mpmath([expr], self.symbols))
            except TranslationError as error:
                warnings.warn(
                    f"No mpmath reference for {self.exprs[i]}: its float64 values are used "
                    f"unchecked where float64 is unreliable. {error}",
                    stacklevel=4,
                )
                self.exact[i] = None
        return self.exact[i]


@functools.lru_cache(maxsize=256)
def _plan(
    exprs: tuple[sympy.Expr, ...], symbols: tuple[sympy.Symbol, ...], registrations: int, against_terms: bool
) -> _Plan:
    """Compile values and error bounds; ``against_terms``: bounds relative to term_scale, kernel errors included."""
    everywhere = tuple(bool(e.atoms(*_INACCURATE)) and not against_terms for e in exprs)
    bounds, checked = [], []
    for i, expr in enumerate(exprs):
        if everywhere[i] or expr.is_number:  # a constant (0 for floor's derivative) is exact
            continue
        bound = _error_bound(expr, kernels=against_terms)
        if against_terms:
            bound *= sympy.Abs(expr) / term_scale(expr)  # cancellation is the caller's business
        # |expr| too: a non-finite value makes the bound nan, so one check covers both.
        bound += _PROBE * (_overflow_probe(expr) + sympy.Abs(expr))
        if not (bound.is_number and bound <= TRUSTED_ERROR):
            bounds.append(bound)
            checked.append(i)
    fast = _printer.to_torch([*exprs, *bounds], [*symbols, _PROBE])
    return _Plan(exprs, symbols, fast, everywhere, tuple(checked))


# Multiplies _overflow_probe by 0.0 at run time: 0·inf = nan marks the point untrusted.
_PROBE = sympy.Symbol("_overflow_probe")
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
    watched = set()
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Pow) and node.exp.is_negative:
            watched.add(1 / node)  # the divisor, as computed: (1 + e^-x)**2 overflows before its base
        elif isinstance(node, _SATURATING):
            watched.update(a for a in node.args if not a.is_number)
    return sympy.Add(*[sympy.Abs(w) for w in watched if not isinstance(w, sympy.Symbol)])


def evaluate(
    exprs: Sequence[sympy.Expr],
    symbols: Sequence[sympy.Symbol],
    values: Sequence[torch.Tensor],
    *,
    accuracy: float | None = None,
) -> tuple[torch.Tensor, ...]:
    """Exact values of ``exprs`` at ``symbols = values``, rounded to float64.

    Without ``accuracy``, every point whose float64 error bound exceeds
    ``TRUSTED_ERROR`` roundoffs of the result is correctly rounded by mpmath,
    and expressions with an inaccurate special-function kernel go to mpmath at
    every point.

    With ``accuracy`` (a relative error, measured against the size of the terms of the
    expression, see :func:`term_scale`), float64 is trusted wherever its error bound
    against the terms, torch's special-function kernel errors included, is within it:
    cancellation is then left to the caller, whose tolerance is measured against
    the terms too (that is how the gradient check uses it, at a fraction of the cost).
    Non-finite values and overflowed intermediates still go to mpmath.

    Args:
        exprs: SymPy expressions (typically derivatives).
        symbols: one SymPy Symbol per entry of ``values``.
        values: tensors of any floating dtype on one device, broadcastable.
        accuracy: see above; never tighter than ``TRUSTED_ERROR`` roundoffs.

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
    plan = _plan(exprs, symbols, _printer.registrations(), accuracy is not None)
    trusted = TRUSTED_ERROR if accuracy is None else max(TRUSTED_ERROR, accuracy / _ROUNDOFF)
    values = [torch.as_tensor(v).detach().to(torch.float64) for v in values]
    results = plan.fast(*values, 0.0)
    outputs = [r.to(torch.float64) for r in results[: len(exprs)]]  # float64 even with no inputs
    bounds = dict(zip(plan.checked, results[len(exprs):]))
    for i, output in enumerate(outputs):
        if accuracy is not None:
            # The caller's tolerance is measured against the terms: only values float64
            # could not produce (not finite), and kernels less accurate than asked, need mpmath.
            untrusted = ~torch.isfinite(output)
            if accuracy < _KERNEL_ACCURACY and exprs[i].atoms(*_INACCURATE):
                untrusted = torch.ones_like(output, dtype=torch.bool)
            if bool(untrusted.any()):
                outputs[i] = _refine(plan, i, output, untrusted, values)
            continue
        if plan.everywhere[i]:
            untrusted = torch.ones_like(output, dtype=torch.bool)
        elif bool((bounds[i] <= trusted).all()) if i in bounds else bool(torch.isfinite(output).all()):
            continue  # the common case: one cheap reduction, no masks
        else:
            untrusted = ~torch.isfinite(output)
            if i in bounds:
                untrusted |= ~(bounds[i] <= trusted)  # a nan bound is untrusted too
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
        return _converged(function, arguments, _start_bits(arguments))[0]
    except _printer.Undefined:
        return math.nan
    except _NoValue:
        return _limit(function, arguments)


def _converged(function: Callable[..., tuple[Any, ...]], arguments: Sequence[Any], bits: int) -> tuple[float, Any]:
    """The settled float64 rounding, and the mpmath value behind it.

    Settled means two successive precisions round to the same float64 (a
    fixed precision is not enough near cancellation or huge exponents) and,
    where the error bound is known, the bound at this precision is far below
    a ULP: two precisions can agree on a wrong value when both lose the same
    small term (``erf(x)/2 + 1/2`` at ``x = -20`` is 0 at 200 bits).
    """
    previous = None
    while True:
        with mpmath.workprec(bits):
            try:
                value, *bound = function(*arguments)
                rounded = _to_float64(value)
                error = mpmath.ldexp(abs(bound[0]), -bits) if bound else mpmath.mpf(0)
            except _NO_VALUE_ERRORS as error:
                raise _NoValue from error
        # A value with no significant bit may be anything down to 0: aim at the smallest ULP.
        target = math.ulp(rounded) if abs(value) > error else _SMALLEST_ULP
        settled = not (error > mpmath.ldexp(target, -_GUARD_BITS))  # a nan bound: agreement decides
        if (previous is not None and _same(rounded, previous) and settled) or bits >= _MAX_BITS:
            return rounded, value
        previous, next_bits = rounded, bits * 3 // 2
        if not settled and mpmath.isfinite(error):
            # Jump straight to the precision at which the bound would be settled.
            excess = mpmath.frexp(error)[1] - mpmath.frexp(target)[1] + _GUARD_BITS
            next_bits = max(next_bits, bits + excess + 16)
        bits = min(next_bits, _MAX_BITS)


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
        try:
            # At least 4·step bits: the terms of order h**-3 that cancel must survive.
            found = [
                [_converged(function, moved, max(4 * step, _start_bits(moved))) for moved in (
                    [_nudge(a, w, step) for a, w in zip(arguments, direction)] for direction in directions
                )]
                for step in steps
            ]
        except (_NoValue, _printer.Undefined):
            continue
        # Rounding alone hides a pole with a tiny residue (both steps round to
        # 0.0): a limit must not grow as the step shrinks, and what grows on
        # every side with one sign diverges to that infinity.
        growth = [_growth(far, near) for (_, far), (_, near) in zip(found[0], found[-1])]
        signs = {mpmath.sign(value) for row in found for _, value in row}
        if all(g > 2 for g in growth) and len(signs) == 1 and 0 not in signs:
            return math.copysign(math.inf, float(signs.pop()))
        (first, _), *_ = found[0]
        if all(_same(rounded, first) for row in found for rounded, _ in row) and all(g <= 2 for g in growth):
            return None if math.isnan(first) else first + 0.0  # a limit of 0 has no sign
    return None


def _growth(far: Any, near: Any) -> Any:
    """How much |f| grew from the larger step to the smaller one."""
    if far == 0:
        return mpmath.mpf(1) if near == 0 else mpmath.inf
    return abs(near) / abs(far)


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
