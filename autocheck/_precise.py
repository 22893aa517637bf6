"""Certified float64 values of SymPy expressions: the high-precision tier of the exact reference.

:func:`exact_values` evaluates expressions at float64 points and returns, per
point, the float64 nearest to the exact value (round to nearest, ties to
even; subnormals rounded once; overflow to ±inf), whether a value was found,
and whether it is *certified*. It decides each distinct point so:

1. **arb first.** The expression is evaluated in ball arithmetic (python-flint's
   ``arb``: a midpoint and a rigorous radius) at ``64 + _GUARD_BITS`` bits,
   plus two bits per binary order of magnitude of the tiniest input, so that
   ``cos(x) - 1`` keeps its ``x²`` at ``x = 1e-300``. If both ends of the ball
   round to the same float64, that float64 *is* the correctly rounded value:
   certified. Otherwise the radius says how many bits are missing, and the
   precision jumps to where it would be ``2**-_GUARD_BITS`` of an ULP, until
   certified or ``_MAX_BITS``. nan means the value is certainly not real
   (``sqrt(-1)``): nan, certified.
2. **Undecided.** Where a ball straddles a decision (a Piecewise condition, a
   domain edge, a divisor whose ball holds 0) the arb printer raises
   :class:`~autocheck._printer.Undecided` instead of picking a side, and the
   precision is doubled.
3. **Limits.** At an exact pole or 0/0 (``sinc'(0)``, ``gamma'(0)``) the
   function is evaluated at ``x + w·|x|·2**-s`` in several directions ``w`` and
   two step sizes ``s`` (64 and 96 bits, then 1100 and 1300): if all agree,
   that is the value (``sinc'(0) = 0.0``); if ``|f|`` grows on every side with
   one sign, it diverges to that infinity (``gamma'(0) = -inf``, even with a
   tiny residue); otherwise no value is found and the caller keeps its IEEE
   one (``1/x`` at 0). Found, not certified. ``DiracDelta`` at 0 is nan.
4. **mpmath fallback.** Where arb has no translation (a function registered
   with only an mpmath implementation), fails, or is still undecided at
   ``_MAX_BITS`` (a point exactly on a decision boundary, computed inexactly),
   and at infinite inputs, mpmath raises the precision until two successive
   precisions round alike: found, not certified. A ball at most one ULP wide
   at ``_MAX_BITS`` (a rounding tie computed inexactly) gives the float64
   nearest its midpoint instead.
5. **Deadline.** After ``deadline`` (a ``time.monotonic()`` value) the points
   left come back not found. It is checked between evaluations: one mpmath
   call cannot be interrupted.

>>> import sympy
>>> x = sympy.Symbol("x", real=True)
>>> softplus_grad = sympy.exp(x) / (1 + sympy.exp(x))  # inf/inf in float64 at 800
>>> exact = exact_values([softplus_grad], [x], np.array([[800.0], [0.0]]))
>>> exact.values.tolist(), exact.certified.tolist()
([[1.0], [0.5]], [[True], [True]])
>>> exact = exact_values([sympy.diff(sympy.sinc(x), x)], [x], np.array([[0.0]]))  # 0/0: a limit
>>> exact.values.tolist(), exact.found.tolist(), exact.certified.tolist()
([[0.0]], [[True]], [[False]])
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import flint
import mpmath
import numpy as np
import sympy
from flint import arb

from autocheck import _printer
from autocheck._errors import TranslationError
from autocheck._printer import Undecided, Undefined

__all__ = ["Exact", "exact_values", "remembered"]

# Bits beyond float64's 53 that a ball's radius must clear before its ends are
# expected to round alike: a jump aims at 2**-_GUARD_BITS of an ULP.
_GUARD_BITS = 16
_START_BITS = 64 + _GUARD_BITS
# A ball still undecided here sits on a rounding tie or a decision boundary that
# no precision settles; the largest legitimate need is a limit step of 2**-1300
# evaluated at 4·1300 bits. (arb's trigamma at 16,000 bits takes 0.1 s.)
_MAX_BITS = 8192
# log2 of the relative steps, in pairs: a limit must agree at both steps of a
# pair, which a divergence such as 1/h**2 does not. 1100 pushes a term of
# order h below the smallest subnormal, so that a limit of 0 rounds to 0.0.
_LIMIT_STEPS = ((64, 96), (1100, 1300))
_SMALLEST_SUBNORMAL_EXPONENT = -1074
_SMALLEST_NORMAL_EXPONENT = -1022

# The mpmath fallback: ~40 decimal digits, three bits per binary order of the
# inputs' magnitude, and the old ceiling.
_MPMATH_START_BITS = 133
_MPMATH_MAX_BITS = 20_000
# What mpmath raises where an expression has no value: 0/0, a pole, a complex
# number compared in a Piecewise condition, a series that does not converge.
_NO_VALUE_ERRORS = (ArithmeticError, ValueError, TypeError, mpmath.libmp.NoConvergence)


@dataclass(frozen=True)
class Exact:
    """Per point (row) and expression (column), shape ``(points, expressions)``.

    Attributes:
        values: the float64 nearest the exact value; nan where none was found.
        found: a value was found (False: a pole without a limit, no
            translation, or the deadline passed; keep the IEEE value).
        certified: proven: both ends of the final arb ball round to ``values``,
            or arb proved the value not real (nan). Limits and mpmath values
            are found but not certified.
    """

    values: np.ndarray
    found: np.ndarray
    certified: np.ndarray


def exact_values(
    exprs: Sequence[sympy.Expr],
    symbols: Sequence[sympy.Symbol],
    points: np.ndarray,
    *,
    deadline: float | None = None,
) -> Exact:
    """Correctly rounded float64 values of ``exprs`` at each row of ``points``.

    Args:
        exprs: SymPy expressions.
        symbols: one Symbol per column of ``points``.
        points: float64 array of shape ``(m, len(symbols))``; each distinct row
            is evaluated once.
        deadline: a ``time.monotonic()`` value after which the points not yet
            done come back not found.

    Returns:
        :class:`Exact` with arrays of shape ``(m, len(exprs))``.

    Raises:
        ValueError: ``points`` is not of shape ``(m, len(symbols))``.

    Warns:
        UserWarning: an expression has neither an arb nor an mpmath translation
            (once per expression).

    It sets ``flint.ctx.prec`` while it runs (restored on return): one thread at a time.
    """
    exprs = tuple(sympy.sympify(e) for e in exprs)
    symbols = tuple(symbols)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != len(symbols):
        raise ValueError(
            f"Expected points of shape (m, {len(symbols)}), one column per symbol in {list(symbols)}, "
            f"but got points of shape {points.shape}"
        )
    m, k = points.shape[0], len(exprs)
    values = np.full((m, k), math.nan)
    found = np.zeros((m, k), dtype=bool)
    certified = np.zeros((m, k), dtype=bool)
    if m == 0 or k == 0:
        return Exact(values, found, certified)
    if symbols:
        distinct, inverse = np.unique(points, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
    else:
        distinct, inverse = np.zeros((1, 0)), np.zeros(m, dtype=np.intp)
    # One list per symbol, not one per point: 50,000 small lists make the garbage
    # collector walk every live object several times (0.16 s after a test session).
    columns = distinct.T.tolist()
    saved = flint.ctx.prec
    try:
        for j, expr in enumerate(exprs):
            reference = _reference(expr, symbols, _printer.registrations())
            if reference.unavailable is not None and not reference.warned:
                reference.warned = True
                warnings.warn(reference.unavailable, stacklevel=4)
            n = len(distinct)
            row_values, row_found, row_certified = np.full(n, math.nan), np.zeros(n, bool), np.zeros(n, bool)
            keys = distinct.view(np.int64).tolist() if symbols else [[]]  # bit patterns: -0.0 is not 0.0
            try:
                for i, row in enumerate(zip(*columns) if symbols else [()]):
                    key = tuple(keys[i])
                    known = reference.memo.get(key)
                    if known is None:
                        known = _exact_at(reference, row, deadline)
                        reference.remember(key, known)
                    row_values[i], row_found[i], row_certified[i] = known
            finally:  # out of time: what is done still comes back
                values[:, j], found[:, j] = row_values[inverse], row_found[inverse]
                certified[:, j] = row_certified[inverse]
    except _OutOfTime:
        pass
    finally:
        flint.ctx.prec = saved
    return Exact(values, found, certified)


#: Settled points kept per expression.
MEMO_POINTS = 4096


def remembered(expr: sympy.Expr, symbols: Sequence[sympy.Symbol], points: np.ndarray) -> Exact:
    """Values of ``expr`` already settled at rows of ``points`` (a search meets its special
    values in every batch), without computing anything new: :class:`Exact` of one column."""
    memo = _reference(sympy.sympify(expr), tuple(symbols), _printer.registrations()).memo
    values = np.full((len(points), 1), math.nan)
    found = np.zeros((len(points), 1), dtype=bool)
    certified = np.zeros((len(points), 1), dtype=bool)
    if memo:
        for i, key in enumerate(np.ascontiguousarray(points, dtype=np.float64).view(np.int64).tolist()):
            known = memo.get(tuple(key))
            if known is not None and known[1]:
                values[i, 0], found[i, 0], certified[i, 0] = known
    return Exact(values, found, certified)


class _NoValue(Exception):
    """No value at this exact point (0/0, a pole): a limit may still exist."""


class _GiveUp(Exception):
    """This backend cannot decide the point: try the next one."""


class _OutOfTime(Exception):
    """The deadline passed."""


@dataclass
class _Reference:
    """The compiled arb and (on first need) mpmath functions of one expression."""

    expr: sympy.Expr
    symbols: tuple[sympy.Symbol, ...]
    arb: Callable[..., tuple[arb, ...]] | None
    unavailable: str | None = None  # the warning, when there is no reference at all
    warned: bool = False
    compiled_mpmath: bool = False
    mpmath_function: Callable[..., tuple[Any, ...]] | None = None
    # Points already settled (a search meets its special values in every batch), by bit pattern.
    memo: dict[tuple[int, ...], tuple[float, bool, bool]] = field(default_factory=dict)

    def remember(self, key: tuple[int, ...], result: tuple[float, bool, bool]) -> None:
        if len(self.memo) >= MEMO_POINTS:
            self.memo.pop(next(iter(self.memo)))
        self.memo[key] = result

    def mpmath(self) -> Callable[..., tuple[Any, ...]] | None:
        if not self.compiled_mpmath:
            self.compiled_mpmath = True
            try:
                self.mpmath_function = _printer.to_mpmath([self.expr], self.symbols)
            except TranslationError as error:
                if self.arb is None:
                    self.unavailable = (
                        f"No mpmath reference for {self.expr} (nor an arb one): its float64 "
                        f"values are used unchecked where float64 is unreliable. {error}"
                    )
        return self.mpmath_function


@functools.lru_cache(maxsize=256)
def _reference(expr: sympy.Expr, symbols: tuple[sympy.Symbol, ...], registrations: int) -> _Reference:
    """Compile once per expression, symbols and registration count (a registration may change it)."""
    try:
        function = _printer.to_arb([expr], symbols)
    except TranslationError:
        function = None
    reference = _Reference(expr, symbols, function)
    if function is None:
        reference.mpmath()  # no arb: find out now whether there is any reference
    return reference


def _exact_at(reference: _Reference, point: Sequence[float], deadline: float | None) -> tuple[float, bool, bool]:
    """(value, found, certified) at one point: arb, then mpmath."""
    if reference.arb is not None and not any(math.isinf(v) for v in point):
        try:
            return _decide(_ArbSettle(reference.arb, deadline), point)
        except _GiveUp:
            pass
    function = reference.mpmath()
    if function is None:
        return math.nan, False, False
    return _decide(_MpmathSettle(function, deadline), point)


# A settle function: (exact point, least bits) -> (float64, the value behind it (an
# mpf, or an arb ball) or None where nan, certified); raises _NoValue, Undefined,
# _GiveUp or _OutOfTime.
Settle = Callable[[Sequence[Any], int], tuple[float, Any, bool]]


def _decide(settle: Settle, point: Sequence[Any]) -> tuple[float, bool, bool]:
    try:
        rounded, _, certified = settle(point, 0)
        return rounded, True, certified
    except Undefined:
        return math.nan, True, True  # DiracDelta at 0: no value, and no limit to look for
    except _NoValue:
        limit = _limit(settle, [mpmath.mpf(v) for v in point])
        return (math.nan, False, False) if limit is None else (limit, True, False)


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise _OutOfTime


class _ArbSettle:
    """Raise the precision until both ends of the ball round to one float64."""

    def __init__(self, function: Callable[..., tuple[arb, ...]], deadline: float | None) -> None:
        self.function, self.deadline = function, deadline

    def __call__(self, point: Sequence[Any], least_bits: int) -> tuple[float, Any, bool]:
        args = [_to_arb(v) for v in point]
        bits = max(_start_bits(point), least_bits)
        while True:
            _check(self.deadline)
            flint.ctx.prec = bits
            try:
                (ball,) = self.function(*args)
            except Undecided:
                ball = None
            except ZeroDivisionError as error:
                raise _NoValue from error
            except (ArithmeticError, ValueError, TypeError) as error:
                raise _GiveUp from error  # arb itself failed: mpmath may not
            if ball is not None and ball.is_nan():
                return math.nan, None, True  # certainly not real: the printer checked every domain
            if ball is not None and ball.is_finite():
                low, high = _round(ball.lower()), _round(ball.upper())
                if low == high and low == 0 and math.copysign(1, low) != math.copysign(1, high) \
                        and bits < _zero_sign_bits(point):
                    bits = _zero_sign_bits(point)  # -0.0 or 0.0: cos(x) - 1 at 1e-300 is -5e-601
                    continue
                if low == high:
                    return (low if low != 0 else low + high), ball, True
                if bits >= _MAX_BITS:
                    if high == math.nextafter(low, math.inf):  # a tie computed inexactly: within one ULP
                        return _round(ball.mid()), ball, False
                    raise _GiveUp
                bits = min(_more_bits(ball, bits), _MAX_BITS)
                continue
            if bits >= _MAX_BITS:
                raise _GiveUp
            bits = min(2 * bits, _MAX_BITS)


class _MpmathSettle:
    """Raise the precision until two successive precisions round to the same float64."""

    def __init__(self, function: Callable[..., tuple[Any, ...]], deadline: float | None) -> None:
        self.function, self.deadline = function, deadline

    def __call__(self, point: Sequence[Any], least_bits: int) -> tuple[float, Any, bool]:
        # Exact: every float64 is an mpf (and mpf(mpf) would round a nudged point).
        arguments = [v if isinstance(v, mpmath.mpf) else mpmath.mpf(v) for v in point]
        bits = max(_mpmath_start_bits(arguments), least_bits)
        previous = None
        while True:
            _check(self.deadline)
            with mpmath.workprec(bits):
                try:
                    (value,) = self.function(*arguments)
                    rounded, value = _mpmath_to_float64(value)
                except _NO_VALUE_ERRORS as error:
                    raise _NoValue from error
            if (previous is not None and _same(rounded, previous)) or bits >= _MPMATH_MAX_BITS:
                return rounded, value, False
            previous, bits = rounded, min(bits * 3 // 2, _MPMATH_MAX_BITS)


def _limit(settle: Settle, point: list[Any]) -> float | None:
    """The two-sided limit at ``point`` if every direction and both step sizes agree, else None."""
    n = len(point)
    if n == 0 or any(not mpmath.isfinite(a) for a in point):
        return None
    # Distinct weights per symbol, so that x = y stays off a singular x - y = 0.
    weights = [1 + 0.5 * i / n for i in range(n)]
    directions = [weights, weights[::-1]] if n > 1 else [weights]
    directions += [[-w for w in d] for d in directions]
    for steps in _LIMIT_STEPS:
        try:
            # At least 4·step bits: the terms of order h**-3 that cancel must survive.
            found = [
                [settle([_nudge(a, w, step) for a, w in zip(point, direction)], 4 * step) for direction in directions]
                for step in steps
            ]
        except (_NoValue, Undefined):
            continue
        if any(value is None for row in found for _, value, _ in row):
            continue  # not real on some side
        found = [[(rounded, _as_mpf(value)) for rounded, value, _ in row] for row in found]
        # Rounding alone hides a pole with a tiny residue (both steps round to
        # 0.0): a limit must not grow as the step shrinks, and what grows on
        # every side with one sign diverges to that infinity.
        growth = [_growth(far, near) for (_, far), (_, near) in zip(found[0], found[-1])]
        signs = {mpmath.sign(value) for row in found for _, value in row}
        if all(g > 2 for g in growth) and len(signs) == 1 and 0 not in signs:
            return math.copysign(math.inf, float(signs.pop()))
        first = found[0][0][0]
        if all(_same(rounded, first) for row in found for rounded, _ in row) and all(g <= 2 for g in growth):
            return first + 0.0  # a limit of 0 has no sign
    return None


def _as_mpf(value: Any) -> Any:
    return mpmath.mpf(value.mid()) if isinstance(value, arb) else value  # the midpoint: signs and ratios only


def _growth(far: Any, near: Any) -> Any:
    """How much |f| grew from the larger step to the smaller one."""
    if far == 0:
        return mpmath.mpf(1) if near == 0 else mpmath.inf
    return abs(near) / abs(far)


def _nudge(a: Any, weight: float, step: int) -> Any:
    """a + weight·|a|·2**-step exactly (|a| replaced by 1 at 0)."""
    scale = abs(a) if a != 0 else mpmath.mpf(1)
    return mpmath.fadd(a, mpmath.fmul(mpmath.ldexp(scale, -step), weight, exact=True), exact=True)


# --- numbers -------------------------------------------------------------------------


def _to_arb(value: Any) -> arb:
    """An exact ball: every float64 and every mpf is a binary fraction."""
    if isinstance(value, float):
        return arb(value)
    if mpmath.isnan(value):
        return arb.nan()
    return arb(_man_exp(value)) if value else arb(0)


def _man_exp(value: mpmath.mpf) -> tuple[int, int]:
    """(m, e) with value = m·2**e, m signed (mpmath's own man_exp drops the sign)."""
    sign, man, exp, _ = value._mpf_
    return (-int(man) if sign else int(man)), int(exp)


def _binary_exponent(value: Any) -> int | None:
    """e with 2**(e-1) <= |value| < 2**e; None for 0, nan and infinities."""
    if isinstance(value, float):
        return math.frexp(value)[1] if value != 0 and math.isfinite(value) else None
    if not value or not mpmath.isfinite(value):
        return None
    man, exp = _man_exp(value)
    return exp + abs(man).bit_length()


def _start_bits(point: Sequence[Any]) -> int:
    """One extra bit per binary order above 1 of the largest input (exp(x) at 1e300 reduces its
    argument by multiples of log 2 that need that many bits), up to the most arb is given.
    Tiny inputs add nothing: where they cancel (cos(x) - 1 at 1e-300) the ball says so, and
    the next attempt takes the bits its radius asks for (erfcinv(2e-300) needs none)."""
    exponents = [e for e in map(_binary_exponent, point) if e is not None]
    return min(_START_BITS + max(0, max(exponents, default=0)), _MAX_BITS)


def _zero_sign_bits(point: Sequence[Any]) -> int:
    """Bits that tell the sign of a value far below the smallest subnormal: two per binary
    order below 1 of the tiniest input (cos(x) - 1 keeps x**2/2 at 1e-300)."""
    exponents = [e for e in map(_binary_exponent, point) if e is not None]
    return min(_start_bits(point) + 2 * max(0, -min(exponents, default=0)), _MAX_BITS)


def _mpmath_start_bits(arguments: Sequence[Any]) -> int:
    """As before arb: two precisions can agree on a wrong value when both absorb the same small term."""
    exponents = [abs(e) for e in map(_binary_exponent, arguments) if e is not None]
    return _MPMATH_START_BITS + 3 * max(exponents, default=0)


def _exponent_of_ball_part(value: arb) -> int:
    """e with |value| < 2**e, for an exact, finite, nonzero arb."""
    man, exp = value.man_exp()
    return int(exp) + int(man).bit_length()


def _more_bits(ball: arb, bits: int) -> int:
    """The precision at which the radius would be 2**-_GUARD_BITS of an ULP of the value (at least 1.5x)."""
    radius = ball.rad()
    if radius.is_zero():
        return bits * 3 // 2
    mid = ball.mid()
    if ball.contains(0) or _exponent_of_ball_part(mid) <= _SMALLEST_NORMAL_EXPONENT:
        target = _SMALLEST_SUBNORMAL_EXPONENT  # it may be anything down to 0: aim at the smallest ULP
    else:
        target = _exponent_of_ball_part(mid) - 53
    short = _exponent_of_ball_part(radius) - target + _GUARD_BITS
    return max(bits + short, bits * 3 // 2)


def _round(value: arb) -> float:
    """The float64 nearest an exact arb (ties to even; subnormals rounded once; overflow to ±inf)."""
    man, exp = value.man_exp()
    return _round_dyadic(int(man), int(exp))


def _round_dyadic(man: int, exp: int) -> float:
    """The float64 nearest man·2**exp."""
    if man == 0:
        return 0.0
    sign = -1.0 if man < 0 else 1.0
    top = exp + abs(man).bit_length()  # 2**(top-1) <= |value| < 2**top
    if top > 1025:
        return sign * math.inf
    if top < -1074:
        return sign * 0.0  # below half the smallest subnormal
    try:
        # Python's int -> float conversion and int / int true division are
        # correctly rounded, subnormals included.
        return float(man << exp) if exp >= 0 else man / (1 << -exp)
    except OverflowError:
        return sign * math.inf


def _mpmath_to_float64(value: Any) -> tuple[float, Any]:
    """Round an mpmath result to the nearest float64: (rounded, real value or None); nan raises _NoValue."""
    if isinstance(value, mpmath.mpc):
        if value.imag != 0:
            return math.nan, None  # real-valued semantics, as torch
        value = value.real
    value = mpmath.mpf(value)
    if mpmath.isnan(value):
        raise _NoValue
    if mpmath.isinf(value):
        return float(value), value
    return _round_dyadic(*_man_exp(value)), value


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
