"""Directional derivatives in arbitrary precision: the high-precision tier of directional checks.

The float64 tier (:mod:`autocheck._directional`) follows ``f`` operation by operation in
float64, which is fast and almost always enough. Where it is not (a tangent on the way
overflows or underflows while the derivative itself is in range: ``1/x`` at ``1e-300``
followed by a reciprocal), this tier computes the same directional derivatives with
ball arithmetic (``flint.arb``: a value with a rigorous error radius):

1. ``f`` is traced at ``x0 + t1 u1 + ... + tK uK``, with the point and the directions as
   high-precision numbers and ``t1..tK`` symbols, by the tracer's exact rules. Linear
   operations (sums, means, matrix products with constants) collect into a few terms per
   element, and a subexpression that many elements use (a layer norm's variance) is one
   object shared by all of them: the trace is a graph, not a tree.
2. Forward mode runs over that graph once per node (memoised by identity), in arb, at
   ``t = 0``: each node's value, its derivative along each direction, and that derivative's
   size (the same sums with every term in magnitude, as the float64 tier keeps).

A kink at the point (a tie of ``max``, ``abs`` at 0), a pole, or a function without an arb
rule stops the tier: it gives no value rather than a guess, and the point stays unjudged.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import flint
import numpy as np
import sympy
import torch

from . import _printer, _trace
from ._errors import TraceError

__all__ = ["Graph", "Unavailable"]

#: Working precision of the tier, in bits: far beyond float64's 53, so that the values it
#: returns, rounded to float64, carry no error of their own worth counting.
PRECISION = 200

#: A value is returned where its ball's radius is this many bits below the size of its computation.
RESOLUTION_BITS = 64

#: A jittered run moves every value a node computes by this many float64 units in the last
#: place, as the float64 tier's jittered runs do (rounding in f's own values).
JITTER_ULPS = 4


class Unavailable(Exception):
    """The tier cannot give these derivatives (a kink or pole at the point, an operation
    without an exact rule, or the time allowed ran out)."""


Dual = tuple[Any, tuple[Any, ...], tuple[Any, ...]]  # value, derivative per direction, its size per direction


class Graph:
    """``f`` traced at ``x0 + t1 u1 + ... + tK uK``: its output's elements as SymPy expressions
    in ``t1..tK`` (see the module's docstring)."""

    def __init__(self, f: Callable[..., Any], inputs: Sequence[torch.Tensor], moving: Sequence[int],
                 directions: Sequence[torch.Tensor]) -> None:
        k = directions[0].shape[0] if directions else 0
        self.ts = sympy.symbols(f"t1:{k + 1}", real=True) if k else ()
        elements: list[np.ndarray | torch.Tensor] = []
        moved = dict(zip(moving, directions))
        for i, x in enumerate(inputs):
            if i not in moved:
                elements.append(x)
                continue
            point = x.detach().to(torch.float64).cpu().reshape(-1).tolist()
            along = moved[i].to(torch.float64).cpu().reshape(k, -1).tolist()
            flat = np.empty(len(point), dtype=object)
            for n, p in enumerate(point):
                flat[n] = _number(p) + sympy.Add(*[_number(along[j][n]) * self.ts[j] for j in range(k)])
            elements.append(flat.reshape(tuple(x.shape)))
        try:
            self.output = _trace.trace_at(f, elements, torch.float64)
        except TraceError as error:
            raise Unavailable(str(error)) from None

    def contract(self, v: torch.Tensor, *, deadline: float | None = None,
                 jitter: int | None = None) -> tuple[list[float], list[float]]:
        """``<v, J u_k>`` and its size ``<|v|, |J| |u_k|>`` for each direction, in arb, rounded
        to float64 (an infinity where the exact value is beyond float64's range).

        ``jitter``, a seed: every value the graph computes is moved by :data:`JITTER_ULPS`
        float64 units in the last place, with random signs.

        Raises:
            Unavailable: see the class.
        """
        weights = v.detach().to(torch.float64).cpu().reshape(-1).tolist()
        if self.output.size != len(weights):
            raise Unavailable("the output's shape differs from the cotangent's")
        k = len(self.ts)
        previous, flint.ctx.prec = flint.ctx.prec, PRECISION
        try:
            walk = _Walk(self.ts, deadline, random.Random(jitter) if jitter is not None else None)
            total = [flint.arb(0)] * k
            size = [flint.arb(0)] * k
            for w, e in zip(weights, self.output.reshape(-1)):
                if w == 0:
                    continue
                _, d, m = walk.dual(e)
                aw = abs(w)
                total = [a + w * b for a, b in zip(total, d)]
                size = [a + aw * b for a, b in zip(size, m)]
            return [_rounded(a, m) for a, m in zip(total, size)], [_rounded(m, m) for m in size]
        finally:
            flint.ctx.prec = previous


def _number(value: float) -> sympy.Float:
    """A double as a SymPy Float with the tier's precision (its value exact, its sums not
    rounded to 53 bits)."""
    return sympy.Float(value, precision=PRECISION)


def _rounded(ball: Any, size: Any) -> float:
    """The ball's midpoint as a float64 (an infinity beyond its range), where its radius is
    far below the size of its computation (the allowance is a fraction of that size)."""
    if not ball.is_finite() or not size.is_finite():
        raise Unavailable("a derivative is not finite in arbitrary precision")
    if ball.rad() > (abs(ball.mid()) + size.mid()) * flint.arb(2) ** -RESOLUTION_BITS:
        raise Unavailable("the ball is too wide to round")
    return float(ball.mid())


def _arb_number(e: sympy.Basic) -> Any:
    if isinstance(e, sympy.Float):
        sign, man, exp, _ = e._mpf_
        return flint.arb((-int(man) if sign else int(man), int(exp)))
    if isinstance(e, sympy.Integer):
        return flint.arb(int(e))
    if isinstance(e, sympy.Rational):
        return flint.arb(flint.fmpq(int(e.p), int(e.q)))
    try:
        (value,) = _printer.to_arb([e], [])()
    except Exception as error:  # noqa: BLE001 - a constant arb cannot evaluate
        raise Unavailable(f"no arb value of {e}") from error
    return value


@functools.lru_cache(maxsize=256)
def _function_rule(func: type, n: int) -> Callable[..., tuple[Any, ...]]:
    """A function node ``func(a1..an)``: its value and partial derivatives, in arb."""
    dummies = sympy.symbols(f"a1:{n + 1}", real=True)
    expr = func(*dummies)
    partials = [sympy.diff(expr, d) for d in dummies]
    if any(p.has(sympy.Derivative, sympy.Subs) for p in partials):
        raise Unavailable(f"no derivative rule for {func.__name__}")
    try:
        return _printer.to_arb([expr, *partials], dummies)
    except Exception as error:  # noqa: BLE001 - TranslationError: no arb rule
        raise Unavailable(f"no arb rule for {func.__name__}: {error}") from error


class _Walk:
    """Forward mode over a traced graph, each node once (by identity: shared subexpressions
    are the same object)."""

    def __init__(self, ts: Sequence[sympy.Symbol], deadline: float | None, jitter: random.Random | None) -> None:
        self.ts = {t: j for j, t in enumerate(ts)}
        self.k = len(ts)
        self.zeros = tuple(flint.arb(0) for _ in ts)
        self.memo: dict[int, tuple[sympy.Basic, Dual]] = {}
        self.deadline, self.jitter = deadline, jitter
        self.visited = 0

    def dual(self, root: sympy.Basic) -> Dual:
        stack = [root]
        while stack:  # post-order without recursion: graphs of long chains are deep
            e = stack[-1]
            if id(e) in self.memo:
                stack.pop()
                continue
            pending = [a for a in e.args if id(a) not in self.memo] if not self._leaf(e) else []
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            self.memo[id(e)] = (e, self._node(e))  # the node is kept alive: ids stay unique
        return self.memo[id(root)][1]

    def _leaf(self, e: sympy.Basic) -> bool:
        """Nodes whose arguments are not visited first: numbers, symbols, and piecewise
        functions (only the branch taken is evaluated: another may have no value here)."""
        return not e.args or isinstance(e, sympy.Piecewise)

    def _node(self, e: sympy.Basic) -> Dual:
        self.visited += 1
        if self.deadline is not None and self.visited % 1024 == 0 and time.monotonic() > self.deadline:
            raise Unavailable("out of time")
        if e.is_Symbol:
            if e not in self.ts:
                raise Unavailable(f"a free symbol {e} in the trace")
            unit = tuple(flint.arb(1) if j == self.ts[e] else flint.arb(0) for j in range(self.k))
            return flint.arb(0), unit, unit
        if not e.args:  # a number, or a constant such as pi
            return _arb_number(e), self.zeros, self.zeros
        args = [self.memo[id(a)][1] for a in e.args]
        if isinstance(e, sympy.Add):
            value = sum((a[0] for a in args[1:]), args[0][0])
            d = tuple(sum((a[1][j] for a in args[1:]), args[0][1][j]) for j in range(self.k))
            m = tuple(sum((a[2][j] for a in args[1:]), args[0][2][j]) for j in range(self.k))
            return self._jittered(value), d, m
        if isinstance(e, sympy.Mul):
            return self._product(args)
        if isinstance(e, sympy.Pow):
            return self._power(e, args)
        if isinstance(e, sympy.Piecewise):
            return self._piecewise(e)
        if isinstance(e, (sympy.Max, sympy.Min)):
            return self._extremum(e, args)
        if isinstance(e, sympy.Function):
            return self._function(e, args)
        raise Unavailable(f"no rule for {type(e).__name__} nodes")

    def _jittered(self, value: Any) -> Any:
        if self.jitter is None:
            return value
        step = JITTER_ULPS * 2.0**-52
        return value * (1 + step if self.jitter.random() < 0.5 else 1 - step)

    def _product(self, args: list[Dual]) -> Dual:
        values = [a[0] for a in args]
        n = len(values)
        before, after = [flint.arb(1)] * (n + 1), [flint.arb(1)] * (n + 1)
        for i in range(n):
            before[i + 1] = before[i] * values[i]
        for i in range(n - 1, -1, -1):
            after[i] = after[i + 1] * values[i]
        others = [before[i] * after[i + 1] for i in range(n)]  # the product of the other factors, exact at zeros
        d = tuple(sum((others[i] * args[i][1][j] for i in range(n)), flint.arb(0)) for j in range(self.k))
        m = tuple(sum((abs(others[i]) * args[i][2][j] for i in range(n)), flint.arb(0)) for j in range(self.k))
        return self._jittered(before[n]), d, m

    def _power(self, e: sympy.Pow, args: list[Dual]) -> Dual:
        (b, db, mb), (g, dg, mg) = args
        try:
            if not e.exp.free_symbols:  # b**c
                c = g
                if e.exp.is_Integer:
                    n = int(e.exp)
                    value = b**n
                    slope = n * b ** (n - 1) if n != 0 else flint.arb(0)
                else:
                    if not b > 0:
                        raise Unavailable("a real power of a base not certainly positive")
                    value = (c * b.log()).exp()
                    slope = c * value / b
                return (self._jittered(value), tuple(slope * x for x in db), tuple(abs(slope) * x for x in mb))
            if not b > 0:
                raise Unavailable("a variable power of a base not certainly positive")
            value = (g * b.log()).exp()
            by_base, by_power = value * g / b, value * b.log()
        except ZeroDivisionError:
            raise Unavailable("a pole at the point") from None
        d = tuple(by_base * x + by_power * y for x, y in zip(db, dg))
        m = tuple(abs(by_base) * x + abs(by_power) * y for x, y in zip(mb, mg))
        return self._jittered(value), d, m

    def _function(self, e: sympy.Function, args: list[Dual]) -> Dual:
        rule = _function_rule(e.func, len(e.args))
        try:
            value, *partials = rule(*[a[0] for a in args])
        except Exception as error:  # noqa: BLE001 - Undecided (a kink: abs at 0), a pole, no value
            raise Unavailable(f"{e.func.__name__} at the point: {type(error).__name__}") from None
        if not value.is_finite() or not all(p.is_finite() for p in partials):
            raise Unavailable(f"{e.func.__name__} has no finite derivative at the point")
        d = tuple(sum((p * a[1][j] for p, a in zip(partials, args)), flint.arb(0)) for j in range(self.k))
        m = tuple(sum((abs(p) * a[2][j] for p, a in zip(partials, args)), flint.arb(0)) for j in range(self.k))
        return self._jittered(value), d, m

    def _holds(self, condition: sympy.Basic) -> bool:
        """Whether a condition holds at the point, and near it (a tie raises Unavailable)."""
        if condition is sympy.true or condition is sympy.false:
            return bool(condition)
        if isinstance(condition, sympy.And):
            return all(self._holds(c) for c in condition.args)
        if isinstance(condition, sympy.Or):
            return any(self._holds(c) for c in condition.args)
        if isinstance(condition, sympy.Not):
            return not self._holds(condition.args[0])
        if isinstance(condition, sympy.core.relational.Relational):
            difference = self.dual(condition.lhs - condition.rhs)[0]
            if difference > 0:
                return isinstance(condition, (sympy.Gt, sympy.Ge, sympy.Ne))
            if difference < 0:
                return isinstance(condition, (sympy.Lt, sympy.Le, sympy.Ne))
            raise Unavailable("a condition is on its edge at the point (a kink)")
        raise Unavailable(f"no rule for the condition {type(condition).__name__}")

    def _piecewise(self, e: sympy.Piecewise) -> Dual:
        for value, condition in e.args:
            if self._holds(condition):
                return self.dual(value)
        raise Unavailable("no branch of a piecewise function holds")

    def _extremum(self, e: sympy.Basic, args: list[Dual]) -> Dual:
        values = [a[0] for a in args]
        best = 0
        for i in range(1, len(values)):
            difference = values[i] - values[best]
            if isinstance(e, sympy.Min):
                difference = -difference
            if difference > 0:
                best = i
            elif not difference < 0:
                raise Unavailable("a tie of max or min at the point (a kink)")
        return args[best]
