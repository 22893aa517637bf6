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
float64's rounding of the bound itself, so the enclosure holds.

>>> import sympy, torch
>>> x = sympy.Symbol("x", real=True)
>>> settled, value = settle(sympy.exp(-x) / (1 + sympy.exp(-x)) ** 2, [x], [torch.tensor([-1e100, 1.0])])
>>> settled.tolist(), value[0].item()
([True, False], 0.0)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import sympy
import torch

from . import _printer

__all__ = ["settle"]

Bounds = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # low, high, sign
Node = Callable[[Sequence[torch.Tensor]], Bounds]

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
    low, high, sign = _compile(expr, tuple(symbols))(values)
    zero = high < _ZERO_BELOW
    infinite = (low > _INFINITE_ABOVE) & ~torch.isnan(sign) & (sign != 0)
    value = torch.where(zero, 0.0, torch.where(infinite, sign * _INF, math.nan))
    return zero | infinite, value


@functools.lru_cache(maxsize=256)
def _compile(expr: sympy.Expr, symbols: tuple[sympy.Symbol, ...]) -> Node:
    return _node(expr, symbols)


def _widen(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Outward by the margin; infinite bounds stay, and a bound lost to nan becomes no bound."""
    low = torch.where(torch.isinf(low), low, low - (_MARGIN * low.abs() + _FLOOR))
    high = torch.where(torch.isinf(high), high, high + (_MARGIN * high.abs() + _FLOOR))
    return torch.where(torch.isnan(low), -_INF, low), torch.where(torch.isnan(high), _INF, high)


def _unknown(like: torch.Tensor) -> Bounds:
    return torch.full_like(like, -_INF), torch.full_like(like, _INF), torch.full_like(like, math.nan)


def _of_float(value: torch.Tensor) -> Bounds:
    magnitude = torch.log2(value.abs())
    low, high = _widen(magnitude, magnitude)
    zero = value == 0
    return torch.where(zero, -_INF, low), torch.where(zero, -_INF, high), torch.sign(value)


def _node(expr: sympy.Basic, symbols: tuple[sympy.Symbol, ...]) -> Node:
    if expr in symbols:
        k = symbols.index(expr)
        return lambda values: _of_float(values[k])
    if expr.is_number:
        try:
            constant = float(expr)
        except TypeError:
            return lambda values: _unknown(values[0])
        return lambda values: _of_float(torch.full_like(values[0], constant))
    children = [_node(a, symbols) for a in expr.args] if not isinstance(expr, sympy.Piecewise) else []
    if isinstance(expr, sympy.Mul):
        return lambda values: _mul([c(values) for c in children])
    if isinstance(expr, sympy.Add):
        return lambda values: _add([c(values) for c in children])
    if isinstance(expr, sympy.Pow) and expr.exp.is_number and expr.exp.is_real:
        power = float(expr.exp)
        integer = bool(expr.exp.is_integer)
        return lambda values: _pow(children[0](values), power, integer)
    if isinstance(expr, sympy.exp):
        return lambda values: _exp(children[0](values))
    if isinstance(expr, sympy.log):
        return lambda values: _log(children[0](values))
    if isinstance(expr, sympy.Abs):
        return lambda values: _abs(children[0](values))
    if isinstance(expr, (sympy.sin, sympy.cos, sympy.tanh, sympy.atan, sympy.erf)):
        return lambda values: _bounded(children[0](values))
    if isinstance(expr, sympy.Piecewise):
        return _piecewise(expr, symbols)
    return lambda values: _unknown(values[0])


def _mul(factors: list[Bounds]) -> Bounds:
    low = sum(f[0] for f in factors)
    high = sum(f[1] for f in factors)
    sign = functools.reduce(torch.mul, [f[2] for f in factors])
    zero = functools.reduce(torch.logical_or, [f[2] == 0 for f in factors])
    unbounded = functools.reduce(torch.logical_or, [f[1] == _INF for f in factors])
    low, high = _widen(low, high)
    undefined = zero & unbounded  # 0 times a factor without bound (a pole: 1/0) is no value at all
    return (torch.where(zero, -_INF, low),
            torch.where(undefined, _INF, torch.where(zero, -_INF, high)),
            torch.where(undefined, math.nan, torch.where(zero, 0.0, sign)))


def _pow(base: Bounds, power: float, integer: bool) -> Bounds:
    low, high, sign = base
    if power >= 0:
        new_low, new_high = power * low, power * high
    else:
        new_low, new_high = power * high, power * low
    new_low, new_high = _widen(new_low, new_high)
    if integer:
        new_sign = sign if int(power) % 2 else sign.abs()
    else:
        new_sign = torch.where(sign > 0, 1.0, math.nan)  # a negative base has no real power
    return new_low, new_high, new_sign


def _values(bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """The value's own interval [smallest, largest] (inf where 2**bound overflows)."""
    low, high, sign = bounds
    small, large = torch.exp2(low), torch.exp2(high)
    smallest = torch.where(sign > 0, small, torch.where(sign < 0, -large, torch.where(sign == 0, 0.0, -large)))
    largest = torch.where(sign > 0, large, torch.where(sign < 0, -small, torch.where(sign == 0, 0.0, large)))
    return smallest, largest


def _exp(argument: Bounds) -> Bounds:
    smallest, largest = _values(argument)
    low, high = _widen(smallest * _LOG2_E, largest * _LOG2_E)
    return low, high, torch.ones_like(low)


def _log(argument: Bounds) -> Bounds:
    low, high, sign = argument
    # ln(a) = ln(2) log2(a), with log2(a) in [low, high].
    above = low > 0  # a > 1: ln(a) > 0
    below = high < 0  # a < 1: ln(a) < 0
    ln2 = math.log(2)
    out_low = torch.where(above, torch.log2(ln2 * low), torch.where(below, torch.log2(ln2 * -high), -_INF))
    out_high = torch.where(above, torch.log2(ln2 * high), torch.where(below, torch.log2(ln2 * -low), _INF))
    out_low, out_high = _widen(out_low, out_high)
    out_sign = torch.where(above, 1.0, torch.where(below, -1.0, math.nan))
    positive = sign > 0
    return torch.where(positive, out_low, -_INF), torch.where(positive, out_high, _INF), \
        torch.where(positive, out_sign, math.nan)


def _abs(argument: Bounds) -> Bounds:
    low, high, sign = argument
    return low, high, torch.where(torch.isnan(sign), 1.0, sign.abs())


def _bounded(argument: Bounds) -> Bounds:
    """sin, cos, tanh, atan, erf: at most 2 in magnitude, possibly 0, sign not tracked."""
    low, _, _ = argument
    return torch.full_like(low, -_INF), torch.full_like(low, 1.0 + _FLOOR), torch.full_like(low, math.nan)


def _add(terms: list[Bounds]) -> Bounds:
    lows = torch.stack([t[0] for t in terms])
    highs = torch.stack([t[1] for t in terms])
    signs = torch.stack([t[2] for t in terms])
    spread = math.log2(len(terms))
    known = ~torch.isnan(signs).any(0)
    nonzero = signs != 0
    same = known & ((signs >= 0).all(0) | (signs <= 0).all(0))
    top_high = highs.max(0).values
    # One sign throughout: at least the largest term's lower bound, at most n times the largest.
    same_low = torch.where(nonzero, lows, -_INF).max(0).values
    same_sign = torch.where(nonzero, signs, 0.0).sum(0).sign()
    # Mixed signs: a term whose lower bound exceeds every other term's upper bound by more than
    # log2(n) + 1 decides the sign, and the sum keeps at least half of it.
    lead = torch.argmax(lows, 0, keepdim=True)
    lead_low = lows.gather(0, lead)[0]
    positions = torch.arange(len(terms)).reshape(-1, *([1] * (lows.dim() - 1)))
    others_high = torch.where(positions == lead, -_INF, highs).max(0).values
    dominant = known & (lead_low - others_high > spread + 1)
    low = torch.where(same, same_low, torch.where(dominant, lead_low - 1.0, -_INF))
    high = top_high + spread
    sign = torch.where(same, same_sign, torch.where(dominant, signs.gather(0, lead)[0], math.nan))
    low, high = _widen(low, high)
    return low, high, sign


def _piecewise(expr: sympy.Piecewise, symbols: tuple[sympy.Symbol, ...]) -> Node:
    branches = [(_node(value, symbols), condition) for value, condition in expr.args]
    conditions = [c for _, c in branches]
    try:
        chosen = _printer.to_torch([sympy.Piecewise(*[(k, c) for k, c in enumerate(conditions)])], symbols)
    except Exception:  # a condition torch cannot evaluate: no bound
        return lambda values: _unknown(values[0])

    def node(values: Sequence[torch.Tensor]) -> Bounds:
        (index,) = chosen(*values)
        index = torch.as_tensor(index, dtype=torch.float64).expand(values[0].shape)
        low, high, sign = _unknown(values[0])
        for k, (branch, _) in enumerate(branches):
            taken = index == k
            if bool(taken.any()):
                b_low, b_high, b_sign = branch(values)
                low, high, sign = (torch.where(taken, b_low, low), torch.where(taken, b_high, high),
                                   torch.where(taken, b_sign, sign))
        return low, high, sign

    return node
