"""Proven orders of magnitude, for values beyond float64's range.

Far out on the real line many derivatives are not finite in float64 although their exact
value is: ``exp(-x)/(1 + exp(-x))**2`` at ``x = -1e100`` is inf/inf, while the value is
about 2**(-1.4e100), which rounds to 0.0. High precision settles such points one at a
time; this module settles all of them at once, in torch, by bounding ``log2|value|`` with
interval arithmetic on the expression's tree. Where the upper bound is below -1075 the
correctly rounded float64 value is 0; where the lower bound is above 1024 and the sign is
known it is an infinity. Everything else is left to high precision.

Each node is evaluated to ``(low, high, sign)``: ``low <= log2|value| <= high`` (``low``
is -inf where the value may be 0, ``high`` +inf where it is unbounded) and the sign (+1,
-1, 0, or nan where unknown). Every bound is widened by a relative margin far above
float64's rounding of the bound itself, so the enclosure holds. The arrays are numpy's: the
points are few, and a numpy operation on a few values costs a fraction of torch's.

>>> import sympy, torch
>>> x = sympy.Symbol("x", real=True)
>>> settled, value = settle(sympy.exp(-x) / (1 + sympy.exp(-x)) ** 2, [x], [torch.tensor([-1e100, 1.0], dtype=torch.float64)])
>>> settled.tolist(), value[0].item()
([True, False], 0.0)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import sympy
import torch

from . import _printer

__all__ = ["settle"]

Bounds = tuple[np.ndarray, np.ndarray, np.ndarray]  # low, high, sign
Node = Callable[[Sequence[np.ndarray], dict], Bounds]  # (values, results of subexpressions so far)

_INF = math.inf
#: Relative widening of every bound, and its absolute floor (log2 units).
_MARGIN, _FLOOR = 1e-12, 1e-12
#: |value| < 2**-1075 rounds to 0.0; |value| >= 2**1024 rounds to infinity.
_ZERO_BELOW, _INFINITE_ABOVE = -1075.0, 1024.0
_LOG2_E = 1 / math.log(2)


def settle(expr: sympy.Expr, symbols: Sequence[sympy.Symbol], values: Sequence[torch.Tensor]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point: whether the float64 value of ``expr`` is settled here, and that value
    (0.0 where the value certainly rounds to 0, a signed infinity where it certainly
    overflows; nan elsewhere)."""
    arrays = [v.detach().cpu().to(torch.float64).numpy() for v in values]
    shape = np.broadcast_shapes(*[a.shape for a in arrays]) if arrays else ()
    arrays = [np.broadcast_to(a, shape) for a in arrays]
    with np.errstate(all="ignore"):
        low, high, sign = _compile(expr, tuple(symbols))(arrays)
        low, high, sign = (np.broadcast_to(b, shape) for b in (low, high, sign))
        zero = high < _ZERO_BELOW
        infinite = (low > _INFINITE_ABOVE) & ~np.isnan(sign) & (sign != 0)
        value = np.where(zero, 0.0, np.where(infinite, sign * _INF, math.nan))
    return torch.from_numpy(np.ascontiguousarray(zero | infinite)), torch.from_numpy(np.ascontiguousarray(value))


@functools.lru_cache(maxsize=256)
def _compile(expr: sympy.Expr, symbols: tuple[sympy.Symbol, ...]) -> Callable[[Sequence[np.ndarray]], Bounds]:
    root = _node(expr, symbols, {})
    return lambda values: root(values, {})


def _widen(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward by the margin; infinite bounds stay (scaled, not shifted), and a bound lost to
    nan becomes no bound (fmax and fmin pass over nan)."""
    low = np.fmax(low * (1.0 - _MARGIN * np.sign(low)) - _FLOOR, -_INF)
    high = np.fmin(high * (1.0 + _MARGIN * np.sign(high)) + _FLOOR, _INF)
    return low, high


def _unknown(like: np.ndarray) -> Bounds:
    return np.full_like(like, -_INF), np.full_like(like, _INF), np.full_like(like, math.nan)


def _of_float(value: np.ndarray) -> Bounds:
    magnitude = np.log2(np.abs(value))
    low, high = _widen(magnitude, magnitude)
    zero = value == 0
    return np.where(zero, -_INF, low), np.where(zero, -_INF, high), np.sign(value)


def _node(expr: sympy.Basic, symbols: tuple[sympy.Symbol, ...], built: dict) -> Node:
    """The node of ``expr``; a subexpression met again (an error bound repeats its atoms and
    their sums many times) is the same node, evaluated once per call."""
    node = built.get(expr)
    if node is None:
        compute = _build(expr, symbols, built)

        def node(values: Sequence[np.ndarray], memo: dict, compute: Node = compute, key: sympy.Basic = expr) -> Bounds:
            found = memo.get(key)
            if found is None:
                found = memo[key] = compute(values, memo)
            return found

        built[expr] = node
    return node


def _build(expr: sympy.Basic, symbols: tuple[sympy.Symbol, ...], built: dict) -> Node:
    if expr in symbols:
        k = symbols.index(expr)
        return lambda values, memo: _of_float(values[k])
    if expr.is_number:
        try:
            constant = float(expr)
        except TypeError:
            return lambda values, memo: _unknown(values[0])
        bounds = _of_float(np.array(constant))  # 0-d arrays: they broadcast
        return lambda values, memo: bounds
    if isinstance(expr, sympy.Piecewise):
        return _piecewise(expr, symbols, built)
    children = [_node(a, symbols, built) for a in expr.args]
    if isinstance(expr, sympy.Mul):
        return lambda values, memo: _mul([c(values, memo) for c in children])
    if isinstance(expr, sympy.Add):
        return lambda values, memo: _add([c(values, memo) for c in children])
    if isinstance(expr, sympy.Pow) and expr.exp.is_number and expr.exp.is_real:
        power = float(expr.exp)
        integer = bool(expr.exp.is_integer)
        return lambda values, memo: _pow(children[0](values, memo), power, integer)
    if isinstance(expr, sympy.log) and _complement_of_erfc(expr.args[0]) is not None:
        return _log_of_ndtr(_node(_complement_of_erfc(expr.args[0]), symbols, built))
    one = {sympy.exp: _exp, sympy.log: _log, sympy.Abs: _abs, sympy.erfc: _erfc,
           _printer.ReflectedErfc: _reflected_erfc, _printer.Erfcx: _erfcx, sympy.erfcinv: _erfcinv}.get(type(expr))
    if isinstance(expr, (sympy.sin, sympy.cos, sympy.tanh, sympy.atan, sympy.erf)):
        one = _bounded
    if one is not None:
        return lambda values, memo: one(children[0](values, memo))
    return lambda values, memo: _unknown(values[0])


def _mul(factors: list[Bounds]) -> Bounds:
    low = sum(f[0] for f in factors)
    high = sum(f[1] for f in factors)
    sign = functools.reduce(np.multiply, [f[2] for f in factors])
    zero = functools.reduce(np.logical_or, [f[2] == 0 for f in factors])
    unbounded = functools.reduce(np.logical_or, [f[1] == _INF for f in factors])
    low, high = _widen(low, high)
    undefined = zero & unbounded  # 0 times a factor without bound (a pole: 1/0) is no value at all
    return (np.where(zero, -_INF, low),
            np.where(undefined, _INF, np.where(zero, -_INF, high)),
            np.where(undefined, math.nan, np.where(zero, 0.0, sign)))


def _pow(base: Bounds, power: float, integer: bool) -> Bounds:
    low, high, sign = base
    if power >= 0:
        new_low, new_high = power * low, power * high
    else:
        new_low, new_high = power * high, power * low
    new_low, new_high = _widen(new_low, new_high)
    if integer:
        new_sign = sign if int(power) % 2 else np.abs(sign)
    else:
        new_sign = np.where(sign > 0, 1.0, math.nan)  # a negative base has no real power
    return new_low, new_high, new_sign


def _values(bounds: Bounds) -> tuple[np.ndarray, np.ndarray]:
    """The value's own interval [smallest, largest] (inf where 2**bound overflows)."""
    low, high, sign = bounds
    small, large = np.exp2(low), np.exp2(high)
    smallest = np.where(sign > 0, small, np.where(sign < 0, -large, np.where(sign == 0, 0.0, -large)))
    largest = np.where(sign > 0, large, np.where(sign < 0, -small, np.where(sign == 0, 0.0, large)))
    return smallest, largest


def _exp(argument: Bounds) -> Bounds:
    smallest, largest = _values(argument)
    low, high = _widen(smallest * _LOG2_E, largest * _LOG2_E)
    return low, high, np.ones_like(low)


def _log(argument: Bounds) -> Bounds:
    low, high, sign = argument
    # ln(a) = ln(2) log2(a), with log2(a) in [low, high].
    above = low > 0  # a > 1: ln(a) > 0
    below = high < 0  # a < 1: ln(a) < 0
    ln2 = math.log(2)
    out_low = np.where(above, np.log2(ln2 * low), np.where(below, np.log2(ln2 * -high), -_INF))
    out_high = np.where(above, np.log2(ln2 * high), np.where(below, np.log2(ln2 * -low), _INF))
    out_low, out_high = _widen(out_low, out_high)
    out_sign = np.where(above, 1.0, np.where(below, -1.0, math.nan))
    positive = sign > 0
    return np.where(positive, out_low, -_INF), np.where(positive, out_high, _INF), \
        np.where(positive, out_sign, math.nan)


def _abs(argument: Bounds) -> Bounds:
    low, high, sign = argument
    return low, high, np.where(np.isnan(sign), 1.0, np.abs(sign))


def _bounded(argument: Bounds) -> Bounds:
    """sin, cos, tanh, atan, erf: at most 2 in magnitude, possibly 0, sign not tracked."""
    low, _, _ = argument
    return np.full_like(low, -_INF), np.full_like(low, 1.0 + _FLOOR), np.full_like(low, math.nan)


_LOG2_TWO_OVER_SQRT_PI = math.log2(2 / math.sqrt(math.pi))


def _scaled_erfc_log2(t: np.ndarray, c: float) -> np.ndarray:
    """log2(2/sqrt(pi) / (t + sqrt(t**2 + c))) for t >= 0: with c = 2 below and c = 4/pi above
    the scaled erfc, exp(t**2) erfc(t) (Abramowitz and Stegun 7.1.13)."""
    large = np.maximum(t, 1.0)  # written so that t**2 may overflow: log2(t) + log2(1 + sqrt(1 + c/t**2))
    far = np.log2(large) + np.log2(1 + np.sqrt(1 + c / (large * large)))
    return _LOG2_TWO_OVER_SQRT_PI - np.where(t > 1, far, np.log2(t + np.sqrt(t * t + c)))


def _erfcx_log2(t: np.ndarray, upper: bool) -> np.ndarray:
    """A bound of log2 erfcx(t): the upper one, or the lower. Below 0, erfcx(t) = 2 exp(t**2) -
    erfcx(-t) lies between exp(t**2) and 2 exp(t**2)."""
    positive = np.maximum(t, 0.0)
    above = _scaled_erfc_log2(positive, 4 / math.pi if upper else 2.0)
    below = t * t * _LOG2_E + (1.0 if upper else 0.0)
    return np.where(t >= 0, above, below)


def _decreasing(argument: Bounds, log2_bound: Callable[[np.ndarray, bool], np.ndarray]) -> Bounds:
    """A positive, decreasing function of the argument, from bounds of its log2 at a point."""
    smallest, largest = _values(argument)
    low, high = _widen(log2_bound(largest, False), log2_bound(smallest, True))
    return low, high, np.ones_like(low)


def _erfcx(argument: Bounds) -> Bounds:
    return _decreasing(argument, _erfcx_log2)


def _erfc_log2(t: np.ndarray, upper: bool) -> np.ndarray:
    """A bound of log2 erfc(t) = log2 erfcx(t) - t**2 log2(e) (at most 1: erfc is below 2)."""
    positive = np.maximum(t, 0.0)
    above = _scaled_erfc_log2(positive, 4 / math.pi if upper else 2.0) - positive * positive * _LOG2_E
    return np.where(t > 0, above, 1.0 if upper else 0.0)  # erfc(t) is in [1, 2] for t <= 0


def _erfc(argument: Bounds) -> Bounds:
    return _decreasing(argument, _erfc_log2)


def _reflected_erfc(argument: Bounds) -> Bounds:
    """erfc(-u): erfc of the argument with its sign turned."""
    low, high, sign = argument
    return _erfc((low, high, -sign))


def _erfcinv(argument: Bounds) -> Bounds:
    """erfcinv(y) for y certainly in (0, 1): positive, and at most sqrt(log(1/y)), since
    erfc(t) <= exp(-t**2) for t >= 0; no lower bound (0 at y = 1). Elsewhere unknown."""
    low, high, sign = argument
    inside = (sign > 0) & (high < 0)
    upper = 0.5 * np.log2(np.maximum(-low * math.log(2), np.finfo(float).tiny))  # log2 sqrt(ln(1/y_min))
    out_low, out_high = _widen(np.full_like(low, -_INF), upper)
    return (np.where(inside, out_low, -_INF), np.where(inside, out_high, _INF),
            np.where(inside, 1.0, math.nan))


def _complement_of_erfc(argument: sympy.Basic) -> sympy.Expr | None:
    """For ``erfc(-u)/2`` (the normal distribution's ndtr, 1 - erfc(u)/2): ``erfc(u)/2``."""
    c, rest = argument.as_coeff_Mul()
    if c == sympy.Rational(1, 2) and isinstance(rest, _printer.ReflectedErfc):
        return sympy.erfc(rest.args[0]) / 2
    return None


def _log_of_ndtr(complement: Node) -> Node:
    """log(1 - d) with d = erfc(u)/2 bounded: for d <= 1/2, |log(1 - d)| lies between d and 2d
    (log_ndtr far to the right, where it is a tiny negative number)."""

    def node(values: Sequence[np.ndarray], memo: dict) -> Bounds:
        low, high, _ = complement(values, memo)
        small = high <= -1.0
        out_low, out_high = _widen(low, high + 1.0)
        return (np.where(small, out_low, -_INF), np.where(small, out_high, _INF),
                np.where(small, -1.0, math.nan))

    return node


def _add(terms: list[Bounds]) -> Bounds:
    shape = np.broadcast_shapes(*[t[0].shape for t in terms])
    lows, highs, signs = stacked = np.empty((3, len(terms), *shape))
    for k, term in enumerate(terms):
        stacked[0, k], stacked[1, k], stacked[2, k] = term
    spread = math.log2(len(terms))
    known = ~np.isnan(signs).any(0)
    nonzero = signs != 0
    same = known & ((signs >= 0).all(0) | (signs <= 0).all(0))
    top_high = highs.max(0)
    # One sign throughout: at least the largest term's lower bound, at most n times the largest.
    same_low = np.where(nonzero, lows, -_INF).max(0)
    same_sign = np.sign(np.where(nonzero, signs, 0.0).sum(0))
    # Mixed signs: a term whose lower bound exceeds every other term's upper bound by more than
    # log2(n) + 1 decides the sign, and the sum keeps at least half of it.
    lead_low = lows.max(0)
    is_lead = np.arange(len(terms)).reshape(-1, *([1] * len(shape))) == np.argmax(lows, 0)
    others_high = np.where(is_lead, -_INF, highs).max(0)
    dominant = known & (lead_low - others_high > spread + 1)
    low = np.where(same, same_low, np.where(dominant, lead_low - 1.0, -_INF))
    high = top_high + spread
    sign = np.where(same, same_sign, np.where(dominant, np.where(is_lead, signs, 0.0).sum(0), math.nan))
    low, high = _widen(low, high)
    return low, high, sign


def _piecewise(expr: sympy.Piecewise, symbols: tuple[sympy.Symbol, ...], built: dict) -> Node:
    branches = [(_node(value, symbols, built), condition) for value, condition in expr.args]
    conditions = [c for _, c in branches]
    try:
        chosen = _printer.to_torch([sympy.Piecewise(*[(k, c) for k, c in enumerate(conditions)])], symbols)
    except Exception:  # a condition torch cannot evaluate: no bound
        return lambda values, memo: _unknown(values[0])

    def node(values: Sequence[np.ndarray], memo: dict) -> Bounds:
        (index,) = chosen(*[torch.from_numpy(np.array(v)) for v in values])
        index = np.broadcast_to(torch.as_tensor(index, dtype=torch.float64).numpy(), values[0].shape)
        low, high, sign = _unknown(values[0])
        for k, (branch, _) in enumerate(branches):
            taken = index == k
            if taken.any():
                b_low, b_high, b_sign = branch(values, memo)
                low, high, sign = (np.where(taken, b_low, low), np.where(taken, b_high, high),
                                   np.where(taken, b_sign, sign))
        return low, high, sign

    return node
