"""Judging one batch: autograd's gradients against the exact ones.

For each batch a check draws, this module runs autograd (:mod:`._autograd`), takes the
exact values and the error model's allowance (:mod:`._oracle`, :mod:`._error_model`) and
hands both to the judgement (:mod:`._compare`): a function of scalars over a batch of
points (elementwise, or one point at a time), or a function of small tensors at one point,
through its sparse Jacobian.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch

from . import _directional, _dual, _oracle, _precise, _printer
from ._autograd import (
    FORWARD, REVERSE, VMAP, Concatenated, batched_vjp, cotangent, forward_over_reverse, func_jvp, jvp, pointwise, pointwise_jvp, vjp,
)
from ._budget import OutOfTime
from ._compare import (
    FORWARD_LABEL, FORWARD_OVER_REVERSE_LABEL, FUNC_JVP_LABEL, NOT_FINITE_EXACT, OUT_OF_TIME, VMAP_LABEL, Elements,
    Refinement, Row, Verdict, judge, kink_test, tolerance_for, ulp,
)
from ._error_model import PERTURBATION, UNDERFLOW, UNIT, Allowance, autograd_allowance, expand_ops, formula_allowance
from ._errors import TraceError
from ._symbolic import Derivatives, higher_label, label_of
from ._trace import OpPartial, uncompiled

#: The allowance's op atoms (local derivatives) need this relative accuracy, no more: the
#: allowance is a bound, and a factor of two either way does not change a verdict.
ATOM_ACCURACY = 1e-3
_RTOL = UNIT  # the unit of the bound in a judgement: rtol
_SHIFT = sympy.Symbol("shift_", real=True)
#: Functions whose value jumps: a derivative built from them is discontinuous.
_JUMPS = (sympy.floor, sympy.ceiling, sympy.sign, sympy.Heaviside, sympy.frac, sympy.Mod, sympy.Max, sympy.Min)


@dataclass(frozen=True)
class Exact:
    """The exact side of a check, compiled once per derivatives and mode."""

    derivatives: Derivatives
    strict: bool

    @functools.cached_property
    def exprs(self) -> tuple[sympy.Expr, ...]:
        return tuple(e.expr for e in self.derivatives.entries)

    @functools.cached_property
    def allowances(self) -> tuple[Allowance, ...]:
        return tuple(
            autograd_allowance(e.marked, strict=self.strict) if e.marked is not None else formula_allowance(e.expr)
            for e in self.derivatives.entries
        )

    @functools.cached_property
    def atoms(self) -> tuple[tuple[sympy.Symbol, sympy.Expr], ...]:
        return tuple(atom for allowance in self.allowances for atom in allowance.atoms)

    @functools.cached_property
    def _bound_symbols(self) -> list[sympy.Symbol]:
        return [*self.derivatives.symbols, UNDERFLOW, PERTURBATION, _RTOL, *[symbol for symbol, _ in self.atoms]]

    @functools.cached_property
    def _bound_exprs(self) -> list[sympy.Expr]:
        # rtol times the bound, in that order: the bound alone may overflow where the slack does not.
        return [_RTOL * a.bound for a in self.allowances]

    @functools.cached_property
    def bounds(self) -> Callable[..., tuple[torch.Tensor, ...]]:
        return _printer.to_torch(self._bound_exprs, self._bound_symbols)

    @functools.cached_property
    def forward(self) -> Callable[..., tuple[torch.Tensor, ...]]:
        return _printer.to_torch([self.derivatives.forward], self.derivatives.symbols)

    @functools.cached_property
    def jumps(self) -> tuple[bool, ...]:
        """Per entry: whether the exact derivative itself jumps (floor, sign, a piecewise
        definition), so that a few ULP away from a point it may take another value."""
        return tuple(bool(e.atoms(*_JUMPS)) or e.has(sympy.Piecewise) for e in self.exprs)

    @functools.cached_property
    def _slow_arguments(self) -> Callable[..., tuple[torch.Tensor, ...]] | None:
        args = sorted({p.args[1] for e in self.exprs for p in e.atoms(sympy.polygamma) if p.args[0] >= 2}, key=str)
        return _printer.to_torch(args, self.derivatives.symbols) if args else None

    def stalls_torch(self, columns: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """Points where autograd would call torch's polygamma of order 2 or more far out on
        the negative axis, which steps up one unit at a time (minutes at -1e10) and cannot be
        interrupted; None where there are none."""
        if self._slow_arguments is None:
            return None
        shape = np.broadcast_shapes(*[c.shape for c in columns])
        stalls = torch.zeros(shape, dtype=torch.bool)
        for argument in self._slow_arguments(*columns):
            stalls |= (argument < -_printer.POLYGAMMA_STEPS_LIMIT).expand(shape).cpu()
        return stalls if bool(stalls.any()) else None

    @functools.cached_property
    def _local_derivatives(self) -> tuple[sympy.Expr | None, ...]:
        """Per entry: the sum of the magnitudes of the local derivatives autograd multiplies
        and sums for it, in the branches taken (torch.where's other branch is multiplied by
        a zero gradient; the trap that makes nan of it is reported, not excused)."""
        return tuple(_partials_taken(e.marked) if e.marked is not None and e.marked.has(OpPartial) else None
                     for e in self.derivatives.entries)

    @functools.cached_property
    def shifted(self) -> tuple[Callable[..., tuple[torch.Tensor, ...]] | None, ...]:
        """Per entry: the chain rule as autograd evaluates it, with the operands of every local
        derivative moved by :data:`_SHIFT` (an argument): an operand that underflowed to 0
        may sit at a kink of the local derivative (copysign(x**2, -1) with x**2 rounded to 0)."""
        compiled = []
        for entry in self.derivatives.entries:
            if entry.marked is None or not entry.marked.has(OpPartial):
                compiled.append(None)
                continue
            try:
                moved = entry.marked.replace(
                    lambda e: isinstance(e, OpPartial),
                    lambda e: e.func(*[a + _SHIFT if a.free_symbols else a for a in e.args]),
                )
                compiled.append(_printer.to_torch([expand_ops(moved)], [*self.derivatives.symbols, _SHIFT]))
            except (TypeError, ValueError, TraceError):  # a local derivative SymPy cannot take moved
                compiled.append(None)
        return tuple(compiled)

    def undefined(self, columns: Sequence[torch.Tensor], keys: Sequence[int]) -> torch.Tensor:
        """Per point: whether a local derivative of an entry in ``keys`` is infinite or has
        no value there, so that autograd's chain rule, as it is evaluated, has none."""
        shape = np.broadcast_shapes(*[c.shape for c in columns])
        partials = [self._local_derivatives[k] for k in keys if self._local_derivatives[k] is not None]
        if not partials or not math.prod(shape):
            return torch.zeros(shape, dtype=torch.bool)
        flat = [c.expand(shape).reshape(-1).cpu() for c in columns]
        # The oracle's cheap tiers first: log_ndtr's local derivative at -1e44 is about 1e44,
        # which its scaled form gives at once and arb would spend seconds failing to find.
        values, lost, _ = _oracle.settled_values(partials, self.derivatives.symbols, flat, accuracy=ATOM_ACCURACY)
        # A value found and finite; where none was found (a pole: asin's 1/sqrt(1 - s**2) at the
        # s = 1 that sin**2 + cos**2 is exactly) the float64 value that stays says nothing.
        shape1 = flat[0].shape if flat else torch.Size([1])
        settled = torch.stack([(torch.isfinite(v) & ~m).expand(shape1).reshape(-1) for v, m in zip(values, lost)],
                              dim=1).all(dim=1)
        none = torch.zeros(settled.shape, dtype=torch.bool)
        if bool((~settled).any()):
            points = torch.stack(flat, dim=1)[~settled].numpy()
            exact = _precise.exact_values(partials, self.derivatives.symbols, points)
            # A pole (a limit, not a certified value) or no value; a value merely beyond float64's
            # range (1/x**2 at 1e-156, times a tiny y) is certified and counts as one.
            lost = ~exact.found | np.isnan(exact.values) | (np.isinf(exact.values) & ~exact.certified)
            none[~settled] = torch.from_numpy(lost.any(axis=1))
        return none.reshape(shape)

    def slack(self, columns: Sequence[torch.Tensor], units: tuple[float, float], rtol: float) -> list[torch.Tensor]:
        """rtol times the error model's bound of every entry at the given points (float64,
        magnitudes); ``units`` are the values of :data:`UNDERFLOW` and :data:`PERTURBATION`.

        The local derivatives inside the bound are evaluated by the oracle (they may cancel),
        and so is the bound itself where float64 overflows on its way to a finite slack.
        """
        return self.slack_with(columns, self.atom_values(columns), units, rtol)

    def atom_values(self, columns: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The values of the bound's atoms (local derivatives and operations' values)."""
        return list(_oracle.evaluate([e for _, e in self.atoms], self.derivatives.symbols, columns,
                                     accuracy=ATOM_ACCURACY))

    def unbounded(self, columns: Sequence[torch.Tensor], atoms: Sequence[torch.Tensor], units: tuple[float, float],
                  rtol: float) -> list[torch.Tensor]:
        """Per entry: where the slack is beyond float64's range by the rounding the code does
        (log_ndtr's exp of a lost exponent), not by an underflow and not by a local derivative
        that is itself beyond float64 (atan2's second derivative at 1e-160), which leave the
        slack unknown rather than unbounded. ``atoms``: :meth:`atom_values` at ``columns``."""
        shape = np.broadcast_shapes(*[c.shape for c in columns])
        known = torch.ones(shape, dtype=torch.bool)
        for a in atoms:
            known &= torch.isfinite(a).expand(shape).cpu()
        masks = [torch.zeros(shape, dtype=torch.bool) for _ in self.allowances]
        if bool(known.any()):  # only there: an infinite atom leaves the slack unknown anyway
            columns = [c.expand(shape)[known] for c in columns]
            atoms = [a.expand(shape)[known] for a in atoms]
            for mask, slack in zip(masks, self.slack_with(columns, atoms, (0.0, units[1]), rtol)):
                mask[known] = torch.isinf(slack).expand(columns[0].shape if columns else ()).cpu()
        return masks

    def slack_with(self, columns: Sequence[torch.Tensor], atoms: Sequence[torch.Tensor], units: tuple[float, float],
                   rtol: float) -> list[torch.Tensor]:
        """:meth:`slack`, with the atoms' values given (:meth:`atom_values`)."""
        arguments = [*columns, *units, rtol, *[a.abs() for a in atoms]]
        slack = [b.abs() for b in self.bounds(*arguments)]
        first_atom = len(arguments) - len(atoms)
        for k, values in enumerate(slack):
            lost = ~torch.isfinite(values)
            if bool(lost.any()):
                index = lost.nonzero(as_tuple=True)
                again = [torch.as_tensor(a, dtype=torch.float64).expand(values.shape)[index] for a in arguments]
                found = self._without_zero_atoms(k, again, first_atom)
                exact = found.clone()
                missing = ~torch.isfinite(found)
                if bool(missing.any()):
                    (refined,) = _oracle.evaluate([self._bound_exprs[k]], self._bound_symbols,
                                                  [a[missing] for a in again], accuracy=ATOM_ACCURACY)
                    exact[missing] = refined.to(exact.dtype)
                values = values.clone()
                values[index] = exact.abs().to(values.device)
                slack[k] = values
        return slack

    def _without_zero_atoms(self, k: int, arguments: list[torch.Tensor], first_atom: int) -> torch.Tensor:
        """Entry ``k``'s bound in float64 where it was not finite because an atom that is exactly
        0 multiplied an overflowed factor of the bound's own (0 times the exponential of a
        rounding error at 1e200): with those atoms 0 in the expression itself, where every atom
        is finite (an infinite local derivative times 0 is no value, and is left to the oracle).
        nan where this does not give a finite value."""
        shape = arguments[0].shape
        out = torch.full(shape, math.nan, dtype=torch.float64)
        atoms = arguments[first_atom:]
        if not atoms:
            return out
        finite = torch.stack([torch.isfinite(a) for a in atoms]).all(0)
        zeros = torch.stack([a == 0 for a in atoms], dim=1) & finite[:, None]
        for pattern in {tuple(row) for row in zeros[finite].tolist() if any(row)}:
            rows = finite & (zeros == torch.tensor(pattern)).all(1)
            bound = self._bound_with_zeros(k, pattern)
            (value,) = bound(*[a[rows] for a in arguments])
            out[rows] = torch.as_tensor(value, dtype=torch.float64).expand(int(rows.sum()))
        return out

    @functools.lru_cache(maxsize=64)
    def _bound_with_zeros(self, k: int, pattern: tuple[bool, ...]) -> Callable[..., tuple[torch.Tensor, ...]]:
        atoms = [symbol for symbol, _ in self.atoms]
        zeroed = self._bound_exprs[k].subs({a: 0 for a, zero in zip(atoms, pattern) if zero})
        return _printer.to_torch([zeroed], self._bound_symbols)


def _partials_taken(e: sympy.Basic) -> sympy.Expr:
    if isinstance(e, OpPartial):
        return sympy.Abs(expand_ops(e))
    if isinstance(e, sympy.Piecewise):
        return sympy.Piecewise(*[(_partials_taken(value), condition) for value, condition in e.args])
    return sympy.Add(*[_partials_taken(a) for a in e.args if a.has(OpPartial)])


@functools.lru_cache(maxsize=64)
def exact_side(derivatives: Derivatives, strict: bool) -> Exact:
    """One compiled exact side per derivatives and mode, shared by every check of them."""
    return Exact(derivatives, strict)


# --------------------------------------------------------------------------------------
# A batch of points of a function of scalars
# --------------------------------------------------------------------------------------

#: Upstream gradients in a batch of the "vmap" mode (torch.func.vjp's pullback under vmap).
BATCHED = 3

#: Forward over reverse sums the terms of a higher derivative in its own order: the allowance
#: is at least this many rtol of the terms' summed magnitudes (a sum of a few terms, each a
#: product of a few rounded factors).
REORDERED_UNITS = 4


def judge_points(check: Any, values: Sequence[torch.Tensor], generator: torch.Generator, *,
                 index_shape: tuple[int, ...] | None = None, offset: int = 0) -> Verdict:
    """One batch of points of a function of scalars (elementwise, or one point at a time)."""
    exact = exact_side(check.derivatives, check.strict)
    d = check.derivatives
    n, order = len(d.names), d.order
    shape = np.broadcast_shapes(*[v.shape for v in values])
    v = cotangent(shape, check.dtype, check.device, generator)
    # Order n: n - 1 levels of upstream gradients for the gradients' own backward passes
    u = [[cotangent(shape, check.dtype, check.device, generator) for _ in range(n)] for _ in range(order - 1)] \
        if order > 1 else None
    if check.pointwise:
        forward, grads = pointwise(check.f, values, shape, order, v, u)
    else:
        forward, grads = vjp(check.f, values, order, v, u)
    x64 = [p.to(torch.float64) for p in values]
    skip, bad_input = _not_finite(forward, x64, shape)
    del forward  # not needed past here
    fast, trusted, errors = _oracle.fast(exact.exprs, d.symbols, x64, accuracy=check.accuracy)
    fast = [e.expand(shape).reshape(-1) for e in fast]
    trusted = [t if t.numel() == 1 else t.expand(shape).reshape(-1) for t in trusted]  # 0-d: all or none
    errors = [e.expand(shape).reshape(-1) if e is not None else None for e in errors]
    v64 = v.to(torch.float64).reshape(-1)
    u64 = [[w.to(torch.float64).reshape(-1) for w in level] for level in u] if u is not None else None

    def weight_of(k: int, v64: torch.Tensor = v64) -> torch.Tensor:
        """v times the upstream gradients of each level, at the inputs entry ``k`` differentiates by."""
        wrt = d.entries[k].wrt
        return functools.reduce(torch.mul, [u64[level][wrt[level]] for level in range(order - 1)], v64)

    batch = _Batch(check, exact, x64, shape)
    points = batch.points_at
    verdict = Verdict()
    index_of = (lambda k: tuple(int(i) for i in np.unravel_index(k + offset, index_shape))) if index_shape else \
        (lambda k: None)

    def judged(keys: list[int], weights: list[torch.Tensor], got: torch.Tensor, label: str,
               upstream: torch.Tensor | None, kink: bool, reordered: bool = False) -> Verdict:
        """Autograd's ``got`` against the sum of the entries ``keys`` times ``weights``.

        ``reordered``: autograd summed the same terms in another order than the error model
        follows (forward over reverse), so the allowance also covers rounding each term: rtol
        times the sum of the terms' magnitudes."""
        if len(keys) == 1:  # the common case: the judge weights the derivative where it looks
            expected, weight, trust = fast[keys[0]], weights[0], trusted[keys[0]]
        else:
            expected, weight = functools.reduce(torch.add, [w * fast[k] for w, k in zip(weights, keys)]), None
            trust = functools.reduce(torch.logical_and, [trusted[k] for k in keys])  # 0-d masks broadcast
        # Where a loose kernel's value is known to within an error bound: the summed bound.
        error = None
        if any(errors[k] is not None for k in keys):
            error = sum(w.abs() * (errors[k] if errors[k] is not None else torch.where(trusted[k], 0.0, math.inf))
                        for w, k in zip(weights, keys))
        elements = Elements(
            autograd=got.reshape(-1), expected=expected, weight=weight, trusted=trust, error=error,
            skip=skip, skip_input=bad_input, upstream=upstream, where=label, point=points, index=index_of,
            batches=tuple(n for _, n in generator.parts) if isinstance(generator, Concatenated) else (),
        )

        def slack(index: torch.Tensor) -> torch.Tensor:
            modelled = batch.slack(keys, weights, index)
            if not reordered:
                return modelled
            terms = sum(w[index].abs() * fast[k][index].abs().nan_to_num(nan=0.0) for w, k in zip(weights, keys))
            return torch.maximum(modelled, REORDERED_UNITS * check.tol.rtol * terms)

        refine = Refinement(
            expected=lambda index: batch.expected(keys, weights, index),
            sources=batch.sources,
            slack=slack,
            kink=batch.kink(keys[0], weights[0]) if kink else None,
            undefined=lambda index: exact.undefined(batch._columns(index), keys).reshape(-1),
            unbounded=lambda index, positions: batch.unbounded(keys, index, positions),
        )
        return judge(elements, refine, check.rounding_dtype, check.tol)

    def judge_gradients(grads: Sequence[torch.Tensor], mode: str, v64: torch.Tensor = v64) -> None:
        for i in range(n):
            keys = [k for k, entry in enumerate(d.entries) if entry.wrt[-1] == i]
            weights = [weight_of(k, v64) for k in keys]
            label = (label_of(d.symbols, d.entries[keys[0]]) if order == 1 else higher_label(order, d.names[i])) + mode
            if values[i].shape == shape:
                verdict.merge(judged(keys, weights, grads[i], label, v64 if order == 1 else None, order == 1,
                                     reordered=mode == FORWARD_OVER_REVERSE_LABEL))
            else:
                elements, refine = batch.broadcast(i, grads[i], x64[i], shape, skip, label, keys, weights)
                verdict.merge(judge(elements, refine, check.rounding_dtype, check.tol))

    if REVERSE in check.modes:
        judge_gradients(grads, "")
    if VMAP in check.modes:
        # Batched gradients: one pullback, vmapped over BATCHED upstream gradients, each judged
        vs = torch.stack([cotangent(shape, check.dtype, check.device, generator) for _ in range(BATCHED)])
        if check.pointwise:
            flat = [p.expand(shape).reshape(-1) for p in values]
            per_point = [batched_vjp(check.f, [p[k] for p in flat], vs.reshape(BATCHED, -1)[:, k], check.name)
                         for k in range(flat[0].numel())]
            batched = [torch.stack([g[i] for g in per_point], dim=1).reshape(BATCHED, *shape) for i in range(n)]
        else:
            batched = batched_vjp(check.f, values, vs, check.name)
        for b in range(BATCHED):
            judge_gradients([g[b] for g in batched], VMAP_LABEL, vs[b].to(torch.float64).reshape(-1))
    if FORWARD in check.modes and order > 1:
        # Forward over reverse: the same derivatives, the last level by dual tensors
        def gradients(f, at, order, v, u):
            return forward_over_reverse(f, at, order, v, u, check.name)

        if check.pointwise:
            _, forward_grads = pointwise(check.f, values, shape, order, v, u, gradients)
        else:
            _, forward_grads = gradients(check.f, values, order, v, u)
        judge_gradients(forward_grads, FORWARD_OVER_REVERSE_LABEL)
    elif FORWARD in check.modes:
        # The output's tangent when each input carries a random tangent t_i: sum_i f_i' t_i.
        tangents = [cotangent(shape, check.dtype, check.device, generator) for _ in range(n)]
        if check.pointwise:
            along = pointwise_jvp(check.f, values, shape, tangents, check.name)
        else:
            along = jvp(check.f, [x.expand(shape) for x in values], tangents, check.name)[1]
        t64 = [t.to(torch.float64).reshape(-1) for t in tangents]
        keys = list(range(len(d.entries)))
        weights = [t64[d.entries[k].wrt[-1]] for k in keys]
        label = label_of(d.symbols, d.entries[0]) if n == 1 else "jvp"
        verdict.merge(judged(keys, weights, along, label + FORWARD_LABEL, t64[0] if n == 1 else None, n == 1))
        # The same JVP by torch.func.jvp, where torch.func can run f (batched over the points)
        along = None if check.pointwise else func_jvp(check.f, [x.expand(shape) for x in values], tangents)
        if along is not None:
            verdict.merge(judged(keys, weights, along, label + FUNC_JVP_LABEL, t64[0] if n == 1 else None, n == 1))
    return verdict


def allowance(check: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """At the points ``x`` of a function of one variable: the exact derivative, and the
    largest difference from it that a check accepts there (per unit upstream gradient)."""
    exact = exact_side(check.derivatives, check.strict)
    x64 = x.detach().to(torch.float64).cpu().reshape(-1)
    batch = _Batch(check, exact, [x64], x64.shape)
    index, ones = torch.arange(x64.numel()), torch.ones_like(x64)
    expected = batch.expected([0], [ones], index)
    slack = batch.slack([0], [ones], index).nan_to_num(nan=math.inf)
    return expected, check.tol.atol + torch.maximum(check.tol.rtol * expected.abs(), slack)


def _not_finite(forward: torch.Tensor, inputs: Sequence[torch.Tensor], shape: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per element (flat): the forward value or an input is not finite; an input is not finite.

    A sum is finite only where every term is (an inf or nan term makes it inf or nan), so one
    read of each tensor clears the common case. Only where a sum is not finite (or overflows)
    are the elements looked at one by one.
    """
    if all(math.isfinite(float(t.sum())) for t in (forward, *inputs)):  # a 0-d mask, no pass over the elements
        nothing = torch.zeros((), dtype=torch.bool, device=forward.device)
        return nothing, nothing
    bad_input = functools.reduce(torch.logical_or, [~torch.isfinite(p) for p in inputs])
    skip = (bad_input | ~torch.isfinite(forward)).expand(shape).reshape(-1)
    return skip, bad_input.expand(shape).reshape(-1)


def _positions(known: torch.Tensor, index: torch.Tensor) -> torch.Tensor | slice | None:
    """Where the (ascending) element indices ``index`` sit in the ascending ``known``; None
    unless all are there."""
    if index is known:
        return slice(None)
    if index.numel() > known.numel() or not known.numel():
        return None
    at = torch.searchsorted(known, index).clamp_(max=known.numel() - 1)
    return at if bool((known[at] == index).all()) else None


@dataclass
class _Batch:
    """The tier-two evaluations of one batch, on the elements that ask for them."""

    check: Any
    exact: Exact
    columns: list[torch.Tensor]  # float64, one per parameter, broadcastable to ``shape``
    shape: Any
    _slack: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # the last indices asked for, and their slack
    _atoms: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # and the atoms' values there
    _sources: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the last expected values' sources

    @functools.cached_property
    def _flat(self) -> list[torch.Tensor]:
        return [c.expand(self.shape).reshape(-1) for c in self.columns]  # a copy only where broadcast

    def points_at(self, index: torch.Tensor) -> torch.Tensor:
        """[k, n_params] float64: the points of the elements at ``index``."""
        return torch.stack(self._columns(index), dim=1)

    def _columns(self, index: torch.Tensor) -> list[torch.Tensor]:
        return [c[index] for c in self._flat]

    def expected(self, keys: Sequence[int], weights: Sequence[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """Refined weighted exact values at ``points[index]``."""
        columns = self._columns(index)
        # The size of the computation: the allowance is rtol times it, so the oracle's error
        # stays within accuracy/rtol (1/16) of the allowance, however large that is.
        size = self.slack(keys, weights, index) / self.check.tol.rtol
        values, _, sources = _oracle.settled_values(
            [self.exact.exprs[k] for k in keys], self.exact.derivatives.symbols, columns,
            accuracy=self.check.accuracy, against=size, deadline=self.check.deadline.at)
        found = [s.expand(size.shape).reshape(-1) for s in sources if s is not None]
        self._sources = (index, functools.reduce(torch.maximum, found) if found else None)
        return sum(w[index] * value.reshape(-1) for w, value in zip(weights, values))

    def sources(self, index: torch.Tensor, judged: torch.Tensor) -> dict[str, int]:
        """Of the values :meth:`expected` found last, at ``index``, where ``judged``: how many
        came from each tier beyond float64 (an element's is the last tier any of its entries
        needed)."""
        if self._sources is None or self._sources[1] is None:
            return {}
        at = _positions(self._sources[0], index)
        if at is None:
            return {}
        return _tally(self._sources[1][at], judged)

    def slack(self, keys: Sequence[int], weights: Sequence[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """|weight| times the error model's slack (rtol times its bound) at ``points[index]``."""
        # The judge asks at the elements the cheap test left, then at those of them still open,
        # and expected() asks there too: one evaluation serves them all.
        at = _positions(self._slack[0], index) if self._slack is not None else None
        if at is None:
            columns = self._columns(index)
            self._atoms = (index, self.exact.atom_values(columns))
            self._slack = (index, self.exact.slack_with(columns, self._atoms[1], self.check.units, self.check.tol.rtol))
            at = slice(None)
        slack = [s.expand(self._slack[0].shape)[at] for s in self._slack[1]]
        return sum(w[index].abs() * slack[k].reshape(-1) for w, k in zip(weights, keys))

    def unbounded(self, keys: Sequence[int], index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """At ``index[positions]``: where the slack of some entry in ``keys`` is beyond float64's
        range by the rounding the code does (see :meth:`Exact.unbounded`)."""
        columns = [c[positions] for c in self._columns(index)]
        at = _positions(self._atoms[0], index) if self._atoms is not None else None
        if at is not None:  # the slack's atoms, at these positions
            atoms = [a.expand(self._atoms[0].shape)[at][positions] for a in self._atoms[1]]
        else:
            atoms = self.exact.atom_values(columns)
        masks = self.exact.unbounded(columns, atoms, self.check.units, self.check.tol.rtol)
        return torch.stack([masks[k].reshape(-1) for k in keys]).any(dim=0)

    def kink(self, key: int, weight: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        def accepted(index: torch.Tensor, got: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
            # Compiled here, on first need: most checks have no element for the kink test.
            fast = _oracle.fast_values([self.exact.exprs[key]], self.exact.derivatives.symbols)
            anywhere = self.exact.jumps[key] and not self.check.strict
            shifted = self.exact.shifted[key] if not self.check.strict else None
            w = weight[index]
            at = lambda moved: w * fast(*[moved[:, j] for j in range(moved.shape[1])])[0].reshape(-1)  # noqa: E731
            kink = kink_test(self.points_at(index), got, at, allowed, self.check.dtype, anywhere)
            if shifted is None or bool(kink.all()):
                return kink
            # An intermediate that underflowed: the local derivatives a smallest normal number
            # to either side of their operands.
            columns = self._columns(index)
            tiny = torch.finfo(self.check.dtype).tiny
            sides = torch.stack([(w * shifted(*columns, torch.tensor(s * tiny, dtype=torch.float64))[0]
                                  .expand(w.shape)).to(got.device) for s in (-1.0, 1.0)])
            value = got.to(torch.float64)
            jump = (sides[0] != sides[1]) & torch.isfinite(sides).all(0)
            inside = (value >= sides.amin(0) - allowed) & (value <= sides.amax(0) + allowed)
            return kink | (jump & inside)

        return accepted

    def broadcast(self, i: int, grad: torch.Tensor, own: torch.Tensor, shape: Any, skip: torch.Tensor,
                  label: str, keys: Sequence[int], weights: Sequence[torch.Tensor]) -> tuple[Elements, Refinement]:
        """A broadcast input's gradient sums over the broadcast dimensions: so does the exact side."""
        everything = torch.arange(math.prod(self.shape))
        input_shape = own.shape
        expected = self.expected(keys, weights, everything).reshape(shape).sum_to_size(input_shape).reshape(-1)
        slack = self.slack(keys, weights, everything).reshape(shape).sum_to_size(input_shape).reshape(-1)
        skipped = skip.expand(math.prod(shape)).reshape(shape) if skip.numel() == 1 else skip.reshape(shape)
        skipped = skipped.to(torch.float64).sum_to_size(input_shape).reshape(-1) > 0
        # The row of an element of a broadcast input shows its own value; the others vary over the sum.
        rows = torch.full((grad.numel(), len(self.columns)), math.nan, dtype=torch.float64)
        rows[:, i] = own.reshape(-1).cpu()
        codes = self._sources[1] if self._sources is not None else None
        grouped = _last_tier(codes.reshape(shape) if codes is not None else None,
                             lambda terms: terms.sum_to_size(input_shape).reshape(-1), input_shape.numel())
        elements = Elements(
            # The cheap test passes only sums of float64 values: the others are judged (and counted) in full.
            autograd=grad.reshape(-1), expected=expected, trusted=(grouped == 0).to(skipped.device), skip=skipped,
            skip_input=torch.zeros_like(skipped), upstream=None, where=label, point=lambda index: rows[index],
        )

        return elements, Refinement(expected=lambda index: expected[index], slack=lambda index: slack[index], kink=None,
                                    sources=lambda index, judged: _tally(grouped[index.cpu()], judged))


# --------------------------------------------------------------------------------------
# A function of small tensors at one point
# --------------------------------------------------------------------------------------


def judge_tensor(check: Any, columns: Sequence[torch.Tensor], generator: torch.Generator) -> Verdict:
    """One point of a function of small tensors: the whole vector-Jacobian product."""
    exact = exact_side(check.derivatives, check.strict)
    d = check.derivatives
    values = [x.detach().to(device=check.device, dtype=check.dtype) for x in columns]
    v = cotangent(d.output_shape, check.dtype, check.device, generator)
    u = [[cotangent(x.shape, check.dtype, check.device, generator) for x in values] for _ in range(d.order - 1)] \
        if d.order > 1 else None
    forward, grads = vjp(check.f, values, d.order, v, u)
    if tuple(forward.shape) != d.output_shape:
        raise TraceError(
            f"f returned shape {tuple(forward.shape)} when run, but {d.output_shape} when traced; "
            "its output shape must not depend on the values"
        )
    point = torch.cat([x.detach().to(torch.float64).reshape(-1).cpu() for x in values])
    columns64 = [p.reshape(1) for p in point]
    contract = Contraction(d, v.to(torch.float64).reshape(-1).cpu(),
                           [torch.cat([w.to(torch.float64).reshape(-1).cpu() for w in level]) for level in u or ()])
    bounds = exact.slack(columns64, check.units, check.tol.rtol) if exact.exprs else ()
    slack = contract(_row(bounds), absolute=True)
    # Each entry to the accuracy asked of its own value: entries are few, and sums of them may cancel.
    got = torch.cat([g.detach().to(torch.float64).reshape(-1).cpu() for g in grads])
    try:
        values_exact, _, sources = _oracle.settled_values(list(exact.exprs), d.symbols, columns64,
                                                          accuracy=check.accuracy, deadline=check.deadline.at)
    except OutOfTime:
        verdict = Verdict()
        verdict.skip(OUT_OF_TIME, got.numel())
        return verdict
    expected = contract(_row(values_exact))
    codes = _row([s if s is not None else torch.zeros(1, dtype=torch.int8) for s in sources]) \
        if any(s is not None for s in sources) else None
    found = _last_tier(codes, lambda terms: contract(terms, absolute=True), got.numel())
    skip = torch.full_like(got, not bool(torch.isfinite(forward.to(torch.float64)).all()), dtype=torch.bool)
    bad = torch.full_like(skip, not bool(torch.isfinite(point).all()))
    fast = _oracle.fast_values(list(exact.exprs), d.symbols)
    starts = np.cumsum([0, *[x.numel() for x in values]])

    def kink(index: torch.Tensor, got_k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        def at(moved: torch.Tensor) -> torch.Tensor:
            table = torch.stack([e.expand(moved.shape[0]) for e in fast(*moved.T)], dim=1) if exact.exprs else \
                torch.zeros(moved.shape[0], 0, dtype=torch.float64)
            return contract(table).gather(1, index.reshape(-1, 1)).reshape(-1)

        return kink_test(point.expand(len(index), -1).clone(), got_k, at, allowed, check.dtype,
                         any(exact.jumps) and not check.strict)

    def index_of(k: int) -> tuple[int, ...] | None:
        which = int(np.searchsorted(starts, k, side="right") - 1)
        shape = tuple(values[which].shape)
        return tuple(int(i) for i in np.unravel_index(k - starts[which], shape)) if shape else None

    elements = Elements(
        autograd=got, expected=expected, trusted=torch.zeros_like(skip), skip=skip | bad, skip_input=bad,
        upstream=None, where=lambda k: f"d/d{check.derivatives.names[_which(starts, k)]}" if d.order == 1 else
        higher_label(d.order, check.derivatives.names[_which(starts, k)]),
        point=lambda index: point[index].reshape(-1, 1), index=index_of,
    )
    refine = Refinement(expected=lambda index: expected[index], slack=lambda index: slack[index],
                        kink=kink if d.order == 1 else None, sources=lambda index, judged: _tally(found[index], judged))
    return judge(elements, refine, check.dtype, check.tol)


def _last_tier(codes: torch.Tensor | None, total: Callable[[torch.Tensor], torch.Tensor], n: int) -> torch.Tensor:
    """Per element of ``n`` whose exact value is a sum of terms (``total`` sums a float64 tensor
    shaped like ``codes`` into them): the last tier any of its terms needed (``_oracle``'s
    source codes; None: all float64)."""
    found = torch.zeros(n, dtype=torch.int8)
    for code in sorted(_oracle.SOURCE_NAMES) if codes is not None else ():
        found[(total((codes == code).to(torch.float64)) > 0).cpu()] = code
    return found


def _tally(found: torch.Tensor, judged: torch.Tensor) -> dict[str, int]:
    """How many ``judged`` elements had their exact values from each tier beyond float64
    (``found``: their ``_oracle`` source codes)."""
    found = found.to(judged.device)
    return {name: int((judged & (found == code)).sum()) for code, name in _oracle.SOURCE_NAMES.items()}


def _which(starts: np.ndarray, k: int) -> int:
    return int(np.searchsorted(starts, k, side="right") - 1)


def _row(values: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([value.reshape(-1)[0] for value in values]) if values else torch.zeros(0, dtype=torch.float64)


class Contraction:
    """Vector-Jacobian products from the sparse entries of a function of small tensors:
    what ``x.grad`` holds after backward, per flat input element."""

    def __init__(self, d: Derivatives, v: torch.Tensor, levels: Sequence[torch.Tensor] = ()) -> None:
        outputs = [int(np.ravel_multi_index(e.output, d.output_shape)) if e.output else 0 for e in d.entries]
        self.last = torch.tensor([e.wrt[-1] for e in d.entries], dtype=torch.long)
        weight = v[torch.tensor(outputs, dtype=torch.long)] if outputs else torch.zeros(0, dtype=torch.float64)
        for level, u in enumerate(levels if outputs else ()):  # order n: the upstream gradient of each level
            weight = weight * u[torch.tensor([e.wrt[level] for e in d.entries], dtype=torch.long)]
        self.weight = weight
        self.size = len(d.symbols)

    def __call__(self, values: torch.Tensor, absolute: bool = False) -> torch.Tensor:
        """Sum the weighted entries (``[..., entries]``) into their input elements."""
        weight = self.weight.abs() if absolute else self.weight
        terms = values.to(torch.float64) * weight
        return torch.zeros((*values.shape[:-1], self.size), dtype=torch.float64).index_add_(-1, self.last, terms)


# --------------------------------------------------------------------------------------
# A function of large tensors at one point: directional derivatives
# --------------------------------------------------------------------------------------

#: Random directions along which a function of large tensors is checked at once.
DIRECTIONS = 4
#: Blocks the bisection follows at each level (the worst ones); the elements it ends on
#: are the report's rows.
LOCATED = 5
#: Jittered runs that measure how far rounding in f's values moves the exact side.
JITTERED = 2

#: The arbitrary-precision tier of directional checks traces f once per call with SymPy
#: (about 2.5 ms per input element for a layer norm): it is tried up to this many input
#: elements, within this many seconds of the check's budget.
PRECISE_ELEMENTS = 4096
PRECISE_SECONDS = 30.0


def judge_directional(check: Any, columns: Sequence[torch.Tensor], generator: torch.Generator) -> Verdict:
    """One point of a function of large tensors: ``<x.grad, u>`` after one backward with
    cotangent ``v`` (reverse mode), and ``<v, J u>`` from dual tensors carrying ``u``
    (forward mode), against the exact ``<v, J u>`` by forward mode over ``f``'s operations,
    along random directions ``u``; where they disagree, the wrong elements are found by
    bisection."""
    values = [x.detach().to(device=check.device, dtype=check.dtype) if x.is_floating_point() else x.detach()
              for x in columns]
    moving = [i for i, x in enumerate(values) if x.is_floating_point()]
    order = check.derivatives.order
    directions = [_signed(generator, (DIRECTIONS, *values[i].shape)) for i in moving]
    if order > 2:
        raise ValueError(
            f"order={order} is checked for functions of scalars and of tensors of up to 100 elements in all "
            "(symbolically); a function of larger tensors is checked by directional derivatives, to order 2"
        )
    # Order 2: autograd's x.grad after the second backward is H w (H the Hessian of <v, f>),
    # for one direction w; along u it must equal the mixed derivative u^T H w.
    second = [_signed(generator, tuple(values[i].shape)) for i in moving] if order == 2 else None
    exact = _Directional(check, values, moving, second)
    out, tangents, magnitudes, operations, roundoff = exact.run(directions)
    v = cotangent(tuple(out.shape), check.dtype, check.device, generator)
    exact.v = v.to(torch.float64).cpu()
    # How much rounding may move either side: rtol per unit of the computation's size (the
    # same sum with every term in magnitude), more for a longer chain of operations.
    # A leg of the code in a narrower dtype (x.float() inside a float64 function) rounds there.
    rtol = max(check.tol.rtol, tolerance_for(_dtype_of(roundoff), None, None).rtol) if roundoff else check.tol.rtol
    exact.scale = rtol * (1 + operations / 16)
    u = torch.stack([torch.cat([d[k].reshape(-1) for d in directions]) for k in range(DIRECTIONS)])
    f = floating_only(check.f, values)
    verdict = Verdict()
    if REVERSE in check.modes:
        w = [[t.to(check.dtype) for t in second]] if second is not None else None
        _, grads = vjp(f, [values[i] for i in moving], order, v, w)
        flat = _concatenated(grads)
        verdict.merge(_judge_along(exact, directions, u, tangents, magnitudes, lambda rows: rows @ flat, ""))
    if VMAP in check.modes:  # batched gradients: each of a batch of upstream gradients against its own <v, J u>
        vs = torch.stack([v, *[cotangent(tuple(out.shape), check.dtype, check.device, generator)
                               for _ in range(BATCHED - 1)]])
        batched = batched_vjp(f, [values[i] for i in moving], vs, check.name)
        for b in range(BATCHED):
            exact.v = vs[b].to(torch.float64).cpu()
            flat = _concatenated([g[b] for g in batched])
            verdict.merge(_judge_along(exact, directions, u, tangents, magnitudes,
                                       lambda rows, flat=flat: rows @ flat, VMAP_LABEL))
        exact.v = v.to(torch.float64).cpu()
    if FORWARD in check.modes and order == 2:  # forward over reverse: H w with w carried by dual tensors
        w = [[t.to(check.dtype) for t in second]]
        _, grads = forward_over_reverse(f, [values[i] for i in moving], order, v, w, check.name)
        flat = _concatenated(grads)
        verdict.merge(_judge_along(exact, directions, u, tangents, magnitudes, lambda rows: rows @ flat,
                                   FORWARD_OVER_REVERSE_LABEL))
    elif FORWARD in check.modes:
        def along(rows: torch.Tensor) -> torch.Tensor:
            """<v, J r> by torch's forward mode, per row r of ``rows`` (one dual pass each)."""
            sums, parts = [], exact.split(rows)
            for r in range(rows.shape[0]):
                _, tangent = jvp(f, [values[i] for i in moving], [p[r] for p in parts], check.name)
                sums.append((tangent.to(torch.float64).cpu().reshape(-1) * exact.v.reshape(-1)).sum())
            return torch.stack(sums) if sums else torch.zeros(0, dtype=torch.float64)

        verdict.merge(_judge_along(exact, directions, u, tangents, magnitudes, along, FORWARD_LABEL))
    return verdict


def _concatenated(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gradients of the moving inputs as one float64 vector on the CPU (empty without any)."""
    if not grads:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([g.detach().to(torch.float64).reshape(-1).cpu() for g in grads])


def _judge_along(exact: "_Directional", directions: Sequence[torch.Tensor], u: torch.Tensor, tangents: torch.Tensor,
                 magnitudes: torch.Tensor, along: Callable[[torch.Tensor], torch.Tensor], mode: str) -> Verdict:
    """One of torch's modes (``along(rows)``: its ``<v, J r>`` per row of directions) against
    the exact side along ``u``; where they disagree, the elements located by bisection."""
    check, values, moving = exact.check, exact.values, exact.moving
    order = check.derivatives.order
    total = u.shape[1]
    exact.jitter = False  # each mode earns the jittered runs' widening itself (with the tangents it is judged on)
    expected, slack = exact.settled(directions, (tangents, magnitudes))
    got = along(u)
    verdict = Verdict()
    finite = torch.isfinite(expected)
    if not bool(finite.all()):
        verdict.skip(NOT_FINITE_EXACT, total)
        return verdict
    allowed = check.tol.atol + slack
    wrong = ~((got - expected).abs() <= allowed)
    if bool(wrong.any()):  # before anything is called wrong: how far f's own rounding moves the exact side
        exact.jitter = True
        expected, slack = exact.settled(directions)
        allowed = check.tol.atol + slack
        wrong = ~((got - expected).abs() <= allowed)
    verdict.checked = total
    verdict.precise = int(exact.precise)
    relative = ((got - expected).abs() / expected.abs()).nan_to_num(nan=0.0, posinf=math.inf)
    verdict.max_rel = float(relative.max())
    worst = int(torch.argmax(relative))
    start = [(0, total)]
    if not bool(wrong.any()):
        # Kinks on the way widen a direction's allowance by their half-widths, which could hide
        # an error elsewhere in it: then blocks of the inputs are checked one by one as well.
        # So does a coarse tolerance over many elements (float32: one element in 1e5 wholly
        # wrong moves <x.grad, u> by less than rtol times its size).
        coarse = exact.scale * total > RESOLUTION
        blocks = _failing_blocks(exact, u[0], along, total) if (exact.kinks or coarse) and total > 1 else []
        if not blocks:
            verdict.worst = [_direction_row(got[worst], expected[worst], allowed[worst], worst, False, mode)]
            return verdict
        k, start = 0, blocks
    else:
        k = int(torch.argmax(torch.where(wrong, (got - expected).abs() / allowed, -1.0)))
    if start == [(0, total)] and total > 1:
        # How widespread the error is: each block of the inputs wrong along u holds at least
        # one wrong element (the count is a lower bound; exact where blocks are single elements).
        start = _failing_blocks(exact, u[k], along, total) or start
    if start != [(0, total)] or total == 1:
        verdict.wrong_blocks, verdict.blocks = len(start), min(KINK_BLOCKS, total)
        verdict.block_size = -(-total // verdict.blocks)
    located = _bisect(exact, u[k], along, total, start)
    if not located:  # errors that cancel in every block: report the direction itself
        verdict.failed = max(1, verdict.wrong_blocks)
        verdict.worst = [_direction_row(got[k], expected[k], allowed[k], k, True, mode)]
        return verdict
    units = torch.zeros(len(located), total, dtype=torch.float64)
    for row, j in enumerate(located):
        units[row, j] = 1.0
    element, element_slack = exact.settled(exact.split(units))
    element_allowed = check.tol.atol + element_slack
    element_got = along(units)
    sizes = [values[i].numel() for i in moving]
    starts = np.cumsum([0, *sizes])
    # A scalar output (a loss) had one upstream gradient v: rows show the derivative per unit of it
    v = float(exact.v.reshape(-1)[0]) if exact.v.numel() == 1 and order == 1 and float(exact.v.reshape(-1)[0]) else None
    per = v or 1.0
    for row, j in enumerate(located):
        which = int(np.searchsorted(starts, j, side="right") - 1)
        position = moving[which]
        index = tuple(int(i) for i in np.unravel_index(j - starts[which], tuple(values[position].shape)))
        autograd, wanted = float(element_got[row]), float(element[row])
        difference, allowed_here = abs(autograd - wanted), float(element_allowed[row])
        failed = not difference <= allowed_here
        verdict.failed += failed
        name = check.derivatives.names[position] if position < len(check.derivatives.names) else f"input {position}"
        verdict.worst.append(Row(
            inputs=(float(values[position].reshape(-1)[j - starts[which]]),),
            where=(f"d/d{name}" if order == 1 else higher_label(order, name)) + mode,
            autograd=autograd / per, expected=wanted / per, upstream=v, abs_error=difference / abs(per),
            rel_error=difference / abs(wanted) if wanted else (0.0 if autograd == wanted else math.inf),
            ulp_error=float(difference / ulp(torch.tensor(wanted, dtype=torch.float64), check.dtype)),
            allowed=allowed_here / abs(per), failed=failed, index=index or None,
        ))
    verdict.failed = max(verdict.failed, verdict.wrong_blocks, 1)
    verdict.worst.sort(key=lambda r: (r.failed, r.abs_error / r.allowed if r.allowed else math.inf), reverse=True)
    return verdict


def floating_only(f: Callable[..., Any], values: Sequence[torch.Tensor]) -> Callable[..., Any]:
    """``f`` as a function of its floating inputs, the others (integer targets) held at ``values``."""
    moving = [i for i, x in enumerate(values) if x.is_floating_point()]
    if len(moving) == len(values):
        return f

    def of_floating(*tensors: torch.Tensor) -> Any:
        args = list(values)
        for i, t in zip(moving, tensors):
            args[i] = t
        return f(*args)

    return of_floating


def _dtype_of(roundoff: float) -> torch.dtype:
    """The floating dtype whose unit roundoff is ``roundoff`` (the widest, float64, otherwise)."""
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        if roundoff >= torch.finfo(dtype).eps / 2:
            return dtype
    return torch.float64


def _signed(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Directions with entries of magnitude in [0.5, 0.9] and random signs (no element is left out)."""
    steps = torch.randint(32, 58, shape, generator=generator).to(torch.float64) / 64
    signs = torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1
    return steps * signs


class _Directional:
    """The exact side of a directional check: forward mode at the point, contracted with ``v``."""

    def __init__(self, check: Any, values: list[torch.Tensor], moving: list[int],
                 second: list[torch.Tensor] | None = None) -> None:
        self.check, self.values, self.moving = check, values, moving
        self.second = second  # order 2: the direction w of the second backward, per moving input
        self.v: torch.Tensor | None = None
        self.scale = 0.0
        self.kinks = False  # a local derivative jumped at the point somewhere (relu at 0)
        # Before a mismatch is reported: how far rounding in f's own values (x - mean(x) for
        # x near 1e6 loses digits) moves the exact side, measured by jittered runs
        self.jitter = False
        self.precise = False  # some exact value came from the arbitrary-precision tier

    def settled(self, directions: Sequence[torch.Tensor],
                run: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``<v, J u>`` per direction and autograd's allowance around it (:meth:`contract`),
        from float64 forward mode (``run``: its tangents and magnitudes, where already run);
        where float64 gives no finite value, from the arbitrary-precision tier
        (:mod:`autocheck._dual`), and nan where that has none either."""
        if run is None:
            run = self.run(directions)[1:3]
        expected, slack = self.contract(*run)
        lost = ~(torch.isfinite(expected) & torch.isfinite(slack))
        if bool(lost.any()) and self.second is None:
            rows = lost.nonzero().reshape(-1)
            expected, slack = expected.clone(), slack.clone()
            try:
                found, size = self._precise([d[rows] for d in directions])
            except _dual.Unavailable:
                expected[rows] = math.nan
                return expected, slack
            expected[rows], slack[rows] = found, self.scale * size
            self.precise = True
        return expected, slack

    def _precise(self, directions: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The arbitrary-precision tier along ``directions``: values and sizes; with
        :attr:`jitter`, the sizes widened as :meth:`run` widens the float64 tier's."""
        if sum(self.values[i].numel() for i in self.moving) > PRECISE_ELEMENTS:
            raise _dual.Unavailable("too many input elements for the arbitrary-precision tier")
        deadline = self.check.deadline.sub(PRECISE_SECONDS).at
        graph = _dual.Graph(uncompiled(self.check.f), self.values, self.moving, directions)
        found, size = (torch.tensor(a, dtype=torch.float64) for a in graph.contract(self.v, deadline=deadline))
        if self.jitter:
            moved = torch.zeros_like(found)
            for seed in range(JITTERED):
                other, _ = graph.contract(self.v, deadline=deadline, jitter=seed)
                moved = torch.maximum(moved, (torch.tensor(other, dtype=torch.float64) - found).abs())
            size = size + 2 * moved / self.scale
        return found, size

    def run(self, directions: Sequence[torch.Tensor]) -> _directional.Run:
        """Forward mode along ``directions``; with :attr:`jitter`, the tangents' allowance is
        widened by how far they move when every computed value is moved by a few units in
        the last place (twice the largest move over :data:`JITTERED` runs; a run that gives
        no finite tangent leaves the allowance as it is)."""
        run = self._run(directions, None)
        if not self.jitter:
            return run
        k = run.tangents.shape[0]
        moved = torch.zeros_like(run.tangents)
        for seed in range(JITTERED):
            other = self._run(directions, torch.Generator().manual_seed(seed))
            moved = torch.maximum(moved, (other.tangents - run.tangents).abs().nan_to_num(nan=0.0, posinf=0.0))
        magnitudes = run.magnitudes.clone()
        magnitudes[k:] += 2 * moved
        return run._replace(magnitudes=magnitudes)

    def _run(self, directions: Sequence[torch.Tensor], jitter: torch.Generator | None) -> _directional.Run:
        k = directions[0].shape[0] if directions else 1
        tangents = []
        it = iter(directions)
        for i, x in enumerate(self.values):
            tangents.append(next(it) if i in self.moving else None)
        inputs = [x.to(torch.float64).clone() if x.is_floating_point() else x for x in self.values]
        if self.second is not None:
            ws = iter(self.second)
            seeds2 = [(x, t, next(ws)) for x, t in zip(inputs, tangents) if t is not None]
            return _directional.second_order_at(uncompiled(self.check.f), inputs, seeds2, k, jitter)
        seeds = [(x, t) for x, t in zip(inputs, tangents) if t is not None]
        return _directional.directional_at(uncompiled(self.check.f), inputs, seeds, k, jitter)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``[K, total]`` directions over the concatenated inputs, as one ``[K, *shape]`` per input."""
        parts, start = [], 0
        for i in self.moving:
            n = self.values[i].numel()
            parts.append(flat[:, start:start + n].reshape(flat.shape[0], *self.values[i].shape))
            start += n
        return parts

    def contract(self, tangents: torch.Tensor, magnitudes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``<v, J u>`` per direction, and how far from it autograd may be: rounding in
        proportion to its size ``<|v|, |J||u|>``, plus what kinks on the way leave open."""
        k = tangents.shape[0]
        v = self.v.to(tangents.device)
        weights = v.abs().reshape(1, -1)
        size = (magnitudes[:k].reshape(k, -1) * weights).sum(1).cpu()
        kinks = (magnitudes[k:].reshape(k, -1) * weights).sum(1).cpu()
        self.kinks = self.kinks or bool((kinks > 0).any())
        return (tangents.reshape(k, -1) * v.reshape(1, -1)).sum(1).cpu(), self.scale * size + kinks


#: Blocks checked one by one where kinks widen the allowance of a whole direction, or where
#: the tolerance times the number of elements exceeds :data:`RESOLUTION`.
KINK_BLOCKS = 64
RESOLUTION = 2.0**-20


Along = Callable[[torch.Tensor], torch.Tensor]  # [R, total] directions -> autograd's <v, J r> per row


def _failing_blocks(exact: _Directional, u: torch.Tensor, along: Along, total: int) -> list[tuple[int, int]]:
    """The blocks (of about ``total / KINK_BLOCKS`` elements) where autograd is wrong along ``u``."""
    edges = sorted({round(total * b / KINK_BLOCKS) for b in range(KINK_BLOCKS + 1)})
    blocks = list(zip(edges[:-1], edges[1:]))
    excess = _block_excess(exact, u, along, total, blocks)
    if bool(torch.isnan(excess).any()):
        return []  # no count where some block has no exact value
    return [b for b, bad in zip(blocks, excess) if not bad <= 1.0]


def _block_excess(exact: _Directional, u: torch.Tensor, along: Along, total: int,
                  blocks: list[tuple[int, int]], got: torch.Tensor | None = None) -> torch.Tensor:
    """Per block: |autograd - exact| along ``u`` restricted to it, over its allowance."""
    rows = torch.zeros(len(blocks), total, dtype=torch.float64)
    for r, (lo, hi) in enumerate(blocks):
        rows[r, lo:hi] = u[lo:hi]
    expected, slack = exact.settled(exact.split(rows))
    got = along(rows) if got is None else got
    # nan where the exact side has no value (beyond every tier): such a block is not located
    excess = (got - expected).abs() / (exact.check.tol.atol + slack)
    if not exact.jitter and not bool((excess <= 1.0).all()):
        exact.jitter = True
        return _block_excess(exact, u, along, total, blocks, got)
    return excess


def _bisect(exact: _Directional, u: torch.Tensor, along: Along, total: int,
            blocks: list[tuple[int, int]]) -> list[int]:
    """The elements where autograd is wrong along ``u``: halve the failing ``blocks`` of the
    concatenated inputs, keeping the :data:`LOCATED` worst at each level."""
    blocks = sorted(blocks, key=lambda b: b[0])[:LOCATED]
    while any(hi - lo > 1 for lo, hi in blocks):
        halves = []
        for lo, hi in blocks:
            if hi - lo == 1:
                halves.append((lo, hi))
            else:
                middle = (lo + hi) // 2
                halves += [(lo, middle), (middle, hi)]
        excess = _block_excess(exact, u, along, total, halves)
        if bool(torch.isnan(excess).any()):
            return []
        failing = [(float(excess[r]), halves[r]) for r in range(len(halves)) if not excess[r] <= 1.0]
        if not failing:
            return []
        failing.sort(reverse=True)
        blocks = [b for _, b in failing[:LOCATED]]
    return sorted(lo for lo, _ in blocks)


def _direction_row(got: torch.Tensor, expected: torch.Tensor, allowed: torch.Tensor, k: int, failed: bool,
                   mode: str = "") -> Row:
    g, e = float(got), float(expected)
    side = {FORWARD_LABEL: "<v, J u> by dual tensors", FORWARD_OVER_REVERSE_LABEL: "<H w by dual tensors, u>",
            VMAP_LABEL: "<vmapped vjp, u>"}.get(mode, "<x.grad, u>")
    return Row(inputs=(), where=f"{side} along random direction {k}", autograd=g, expected=e, upstream=None,
               abs_error=abs(g - e), rel_error=abs(g - e) / abs(e) if e else (0.0 if g == e else math.inf),
               ulp_error=math.nan, allowed=float(allowed), failed=failed)
