"""Stage 5: judge autograd's values against the exact ones.

The tolerance is decided here, and only here. An element passes when::

    |autograd - exact| <= atol + rtol * max(|exact|, scale)

where ``scale`` is the rounding error a correct autograd may make, from the error model
(:mod:`autocheck._error_model`): the size of the terms where the chain rule sums paths
that cancel, what a local derivative computed from a rounded saved output may lose, and
how rounded intermediates move the result. Without an explicit ``rtol``/``atol`` they come
from :data:`DEFAULT_TOLERANCES`.

Judgement comes in two tiers. Nearly every element of a correct gradient passes a cheap
test against a float64 value of the exact derivative that the oracle trusts,
``|autograd - exact| <= atol + rtol * |exact|``; only the others get the full error
model, exact values refined in high precision, the kink test and ULP figures. The
report is built from reductions, so a check of a million elements keeps no per-element
table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch

from ._budget import OutOfTime
from ._errors import NothingChecked


class Tolerance(NamedTuple):
    rtol: float
    atol: float


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


#: Default (rtol, atol) per dtype. rtol is a small multiple of the dtype's machine epsilon
#: and applies to the rounding error a correct autograd may make (see the module
#: docstring), so it can be far tighter than finite-difference checkers can afford: a
#: 1e-4 relative error in float64, or a float32 gradient computed through float16, fails.
#: atol is the smallest normal number: below it, gradients legitimately underflow.
#:
#: ========  ==================  ===========
#: dtype     rtol                atol
#: ========  ==================  ===========
#: float64   256 eps = 5.7e-14   2.2e-308
#: float32   128 eps = 1.5e-5    1.2e-38
#: float16   8 eps = 7.8e-3      6.1e-5
#: bfloat16  8 eps = 6.3e-2      1.2e-38
#: ========  ==================  ===========
DEFAULT_TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(256 * _eps(torch.float64), torch.finfo(torch.float64).tiny),
    torch.float32: Tolerance(128 * _eps(torch.float32), torch.finfo(torch.float32).tiny),
    torch.float16: Tolerance(8 * _eps(torch.float16), torch.finfo(torch.float16).tiny),
    torch.bfloat16: Tolerance(8 * _eps(torch.bfloat16), torch.finfo(torch.bfloat16).tiny),
}


def tolerance_for(dtype: torch.dtype, rtol: float | None, atol: float | None) -> Tolerance:
    """The tolerance to use: both given, or both from the table."""
    if (rtol is None) != (atol is None):
        given, missing = ("rtol", "atol") if atol is None else ("atol", "rtol")
        value = rtol if atol is None else atol
        raise ValueError(
            f"{given}={value!r} was given without {missing}; give both (e.g. rtol=1e-6, atol=1e-9), "
            f"or neither to use the defaults for {dtype}"
        )
    if rtol is None:
        return DEFAULT_TOLERANCES[dtype]
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {name}={value!r}")
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(
                f"{name} must be a finite number >= 0, got {name}={value!r}: an infinite or NaN tolerance would "
                "pass any gradient. Give a finite value (e.g. rtol=1e-6, atol=1e-9), or neither for the defaults"
            )
    if rtol >= 1:
        raise ValueError(
            f"rtol={rtol!r} allows errors as large as the gradient itself, so a gradient of the wrong sign or "
            "zero would pass; give rtol < 1 (e.g. rtol=1e-6)"
        )
    return Tolerance(float(rtol), float(atol))


_DIGITS = {torch.float64: 53, torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` floats at each of ``values`` (float64 in, float64 out)."""
    info = torch.finfo(dtype)
    _, exponent = torch.frexp(values.abs().clamp_min(info.tiny).nan_to_num(posinf=info.max))
    return torch.ldexp(torch.ones_like(values, dtype=torch.float64), exponent - _DIGITS[dtype])


def step(values: torch.Tensor, ulps: float, dtype: torch.dtype) -> torch.Tensor:
    """``values`` moved by ``ulps`` units in the last place of ``dtype`` (negative: down)."""
    info = torch.finfo(dtype)
    spacing = torch.maximum(ulp(values, dtype), torch.full_like(values, info.tiny * info.eps))
    return values + ulps * spacing


# --------------------------------------------------------------------------------------
# What a judgement keeps: counts and the worst elements
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One judged gradient element."""

    inputs: tuple[float, ...]  # the point: one value per parameter (tensor inputs: the element's own value)
    where: str  # which gradient: "d/dx", "d/dw[0, 1]", ...
    # Autograd's derivative and the exact one. Where the element had its own upstream
    # gradient v (``upstream``: order 1, elementwise), per unit of it: x.grad / v. Else
    # x.grad itself (a function of tensors: the vector-Jacobian product) and its exact value.
    autograd: float
    expected: float
    upstream: float | None  # the upstream gradient v of this element (order 1), else None
    abs_error: float  # |autograd - expected|, in the same units
    rel_error: float
    ulp_error: float  # in units in the last place of x.grad as the dtype holds it
    allowed: float  # the largest abs_error that passes, in the same units
    failed: bool
    index: tuple[int, ...] | None = None  # the element's index in its tensor input

    @property
    def exact(self) -> float:
        """The exact derivative (the same as ``expected``)."""
        return self.expected


#: What ends a row's ``where`` when the value is forward mode's (``d/dx, forward mode``).
FORWARD_LABEL = ", forward mode"
#: ... and when it is a higher derivative whose last level forward mode took (``d²/dx², forward
#: over reverse mode``: dual tensors through the gradient's graph).
FORWARD_OVER_REVERSE_LABEL = ", forward over reverse mode"
#: ... and when it is one of a batch of gradients (torch.func.vjp's pullback under vmap).
VMAP_LABEL = ", vmap"
#: ... and when it is torch.func.jvp's, forward mode's other entry point.
FUNC_JVP_LABEL = ", torch.func.jvp"
MODE_LABELS = (FORWARD_LABEL, FORWARD_OVER_REVERSE_LABEL, VMAP_LABEL, FUNC_JVP_LABEL)

#: Rows a judgement keeps: the failing ones first, then the largest errors.
WORST_ROWS = 5
#: Failing elements whose points a judgement keeps for the search to shrink.
FAILING_POINTS = 256
#: Failing elements whose positions in the batch a judgement keeps (the shrinker's batches
#: are far smaller; a million positions would cost tens of megabytes of Python ints).
FAILING_INDICES = 4096


@dataclass
class Verdict:
    """What one or more judgements found, as counts and a few rows (merged across batches)."""

    checked: int = 0
    failed: int = 0
    kinks: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    max_ulp: float = 0.0
    max_rel: float = 0.0
    worst: list[Row] = field(default_factory=list)
    failing: list[tuple[float, ...]] = field(default_factory=list)  # points, for the search
    failing_index: set[int] = field(default_factory=set)  # positions in the judged batch (the first ones)
    # Directional checks: blocks of the inputs looked at one by one, how many of them hold a
    # wrong element, and their size (1: every element looked at, the count is exact)
    blocks: int = 0
    wrong_blocks: int = 0
    block_size: int = 1
    # Directional checks: judgements whose exact side needed the arbitrary-precision tier
    precise: int = 0
    # Elements whose exact values float64 could not vouch for, by how they were found instead:
    # "rewritten" (an equivalent form, or long double), "certified" (proven: an arb ball, or a
    # magnitude certainly beyond float64's range), "uncertified" (mpmath, a limit)
    sources: dict[str, int] = field(default_factory=dict)

    def found(self, sources: dict[str, int]) -> None:
        for name, count in sources.items():
            if count:
                self.sources[name] = self.sources.get(name, 0) + count

    def skip(self, reason: str, count: int) -> None:
        if count:
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    def merge(self, other: "Verdict") -> None:
        self.checked += other.checked
        self.failed += other.failed
        self.kinks += other.kinks
        for reason, count in other.skipped.items():
            self.skip(reason, count)
        self.max_ulp = max(self.max_ulp, other.max_ulp)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.worst = sorted([*self.worst, *other.worst], key=_rank)[:WORST_ROWS]
        room = FAILING_POINTS - len(self.failing)
        self.failing += other.failing[:room]
        self.failing_index |= other.failing_index
        self.blocks += other.blocks
        self.wrong_blocks += other.wrong_blocks
        self.block_size = max(self.block_size, other.block_size)
        self.precise += other.precise
        self.found(other.sources)


def _rank(row: Row) -> tuple[bool, float, str, str, str]:
    """Sorts failures first, then the largest ULP error; then by the row's content, so that
    the worst rows of a check are the same whatever order its verdicts are merged in."""
    ulps = row.ulp_error if not math.isnan(row.ulp_error) else math.inf
    return (not row.failed, -ulps, row.where, repr(row.inputs), repr((row.autograd, row.upstream)))


# --------------------------------------------------------------------------------------
# The judgement
# --------------------------------------------------------------------------------------

NOT_FINITE_INPUT = "input not finite"
NOT_FINITE_FORWARD = "forward value not finite"
NOT_FINITE_EXACT = "exact derivative not finite"
OUT_OF_TIME = "not reached before the deadline"


@dataclass
class Elements:
    """One gradient's elements to judge, flat and aligned (float64 unless said)."""

    autograd: torch.Tensor  # x.grad, in the checked dtype or float64
    expected: torch.Tensor  # the cotangent times the float64 value of the exact derivative (see ``weight``)
    trusted: torch.Tensor  # bool: the oracle vouches for ``expected`` without refinement
    skip: torch.Tensor  # bool: not judged (forward value not finite, or input not finite)
    skip_input: torch.Tensor  # bool: the part of ``skip`` where an input is not finite
    upstream: torch.Tensor | None  # the cotangent per element (order 1), for rows and overflow
    where: str | Callable[[int], str]  # the label, or one per element
    point: Callable[[torch.Tensor], torch.Tensor]  # indices -> [k, n_params] float64 points
    index: Callable[[int], tuple[int, ...] | None] = lambda k: None
    # A bound on the absolute error of ``expected`` where it is not trusted (a loose kernel's
    # value); None where unknown
    error: torch.Tensor | None = None
    # Where given, ``expected`` is the exact derivative alone, and the expected gradient is
    # ``weight * expected``: the judge forms that product only where it looks at an element
    weight: torch.Tensor | None = None
    # Batches of points judged together, their elements concatenated in order: how many
    # elements each has. Each batch's worst rows are chosen as if it were judged alone, so
    # that which batches are judged together changes no report.
    batches: tuple[int, ...] = ()


@dataclass
class Refinement:
    """The tier-two evaluations, on the elements that did not pass the cheap test."""

    expected: Callable[[torch.Tensor], torch.Tensor]  # indices -> refined expected values
    slack: Callable[[torch.Tensor], torch.Tensor]  # indices -> rtol * |cotangent| * the error model's bound
    # (indices, autograd, allowed) -> accepted at a kink; None where no kink test applies (order 2)
    kink: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None
    # indices -> where the chain rule as autograd evaluates it has no value (a local
    # derivative is infinite: asin(x) + acos(x) at x = 1 is inf - inf, though the sum's
    # derivative is 0); None where not known
    undefined: Callable[[torch.Tensor], torch.Tensor] | None = None
    # (indices, positions among them) -> where the allowance is beyond float64's range without
    # the underflow term
    unbounded: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # (indices, judged among them) -> how many of their exact values came from each tier beyond
    # float64 (see Verdict.sources); None where not known
    sources: Callable[[torch.Tensor, torch.Tensor], dict[str, int]] | None = None


def judge(elements: Elements, refine: Refinement, dtype: torch.dtype, tol: Tolerance) -> Verdict:
    """Judge every element of one gradient; return the counts and the worst rows."""
    verdict = Verdict()
    # Few passes over the elements, in place where possible: on a million elements each costs
    # about as much as an elementwise operation of the function checked.
    got = elements.autograd.reshape(-1).to(torch.float64)
    # The relative error as |autograd / expected - 1|, in two passes: nan where both are 0, and
    # 1, inf or nan where expected is 0 or inf, so such elements go to the full test with atol
    # below. It is within two roundings (RELATIVE_SLACK) of |autograd - expected| / |expected|,
    # and the quick test takes them off rtol: it passes nothing the exact comparison fails.
    if elements.weight is None:
        expected = elements.expected.reshape(-1)
        relative = torch.addcdiv(_MINUS_ONE.to(expected.device), got, expected).abs_()
    else:
        derivative, weight = elements.expected.reshape(-1), elements.weight.reshape(-1)
        product = torch.mul(weight, derivative)
        relative = torch.addcdiv(_MINUS_ONE.to(product.device), got, product, out=product).abs_()
        expected = _Product(weight, derivative)
    quick = _below(relative, tol.rtol - RELATIVE_SLACK)
    trusted = elements.trusted.reshape(()) if elements.trusted.numel() == 1 else elements.trusted
    if trusted.numel() == 1:  # everywhere or nowhere: no pass over a broadcast mask
        if not bool(trusted):
            quick.zero_()
    else:
        quick &= trusted.reshape(-1)
    skip = elements.skip.reshape(-1)
    if _any(skip):
        quick &= ~skip
        bad_input = _count(elements.skip_input.reshape(-1))
        verdict.skip(NOT_FINITE_INPUT, bad_input)
        verdict.skip(NOT_FINITE_FORWARD, _count(skip) - bad_input)
        relative.masked_fill_(skip, -1.0)  # below every element passed: never the worst passing row
        candidates = _nonzero(~(quick | skip))
    else:
        candidates = _nonzero(~quick)
    rest = candidates
    if candidates.numel():
        # The whole cheap test, on the few elements the relative one did not pass:
        # |autograd - expected| < atol + rtol * |expected|, for trusted values; where a loose
        # kernel's value is known to within an error bound, |autograd - exact| <= difference +
        # error, and rtol * |exact| >= rtol * (|expected| - error).
        near = expected[candidates]
        difference = (got[candidates] - near).abs()
        limit = near.abs() * tol.rtol + tol.atol
        trusted_here = trusted.expand(candidates.shape) if trusted.numel() == 1 else trusted.reshape(-1)[candidates]
        passes = (difference < limit) & trusted_here
        if elements.error is not None:
            bound = elements.error.reshape(-1)[candidates]
            passes |= difference + (1 + tol.rtol) * bound < limit
        else:  # a trusted value is within ORACLE_ACCURACY * rtol of the exact one; others unknown
            bound = torch.where(trusted_here, ORACLE_ACCURACY * tol.rtol * near.abs(), math.inf)
        if not bool(passes.all()):
            # Where the code's own rounding allows more than rtol (the slack: x**2 e**x + 2x e**x
            # as autograd sums it near x = -2, i0e's backward as i1e(x) - i0e(x)), the value with
            # its error bound settles an element that needs no better value: |autograd - exact| <=
            # difference + bound, within atol + max(rtol * |exact|, slack). What this does not
            # pass (an infinite slack, a value with no bound) goes to the full test, whose exact
            # values are refined.
            left = (~passes).nonzero().reshape(-1)
            slack = refine.slack(candidates[left]).reshape(-1).to(near.device).nan_to_num(nan=math.inf)
            wide = torch.maximum(tol.rtol * (near[left].abs() - bound[left]), slack)
            passes[left] = (difference[left] + bound[left] < tol.atol + wide) & torch.isfinite(slack)
        relative[candidates] = torch.where(passes, (difference / near.abs()).nan_to_num(nan=0.0, posinf=0.0), -1.0)
        quick[candidates[passes]] = True
        rest = candidates[~passes]
    passed_quickly = _count(quick)
    verdict.checked += passed_quickly
    if passed_quickly:
        # Rows, per batch: the element passed with the largest relative error, and the largest
        # ULP errors among the few that needed more than the relative test (those beyond rtol
        # that the slack allowed, or atol)
        worst = [start + _argmax(relative[start:stop]) for start, stop in _spans(elements)]
        worst = [k for k in worst if float(relative[k]) >= 0]
        del relative
        if candidates.numel() and bool(passes.any()):
            settled = candidates[passes]
            ulps = _ulps(difference[passes], near[passes], dtype)
            worst += settled[_worst_per_batch(settled, ulps, elements)].tolist()
        worst = sorted(set(worst))
        rows = _row(elements, torch.tensor(worst), got, expected, tol, dtype, torch.zeros(len(worst), dtype=torch.bool))
        verdict.worst = sorted(rows, key=_rank)[:WORST_ROWS]
        verdict.max_rel, verdict.max_ulp = max(r.rel_error for r in rows), max(r.ulp_error for r in rows)
    if rest.numel():
        verdict.merge(_judge_rest(elements, refine, rest, got, dtype, tol))
    return verdict


def _worst_per_batch(positions: torch.Tensor, key: torch.Tensor, elements: Elements,
                     eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Indices into ``positions`` (ascending element positions) of the WORST_ROWS ones (of the
    ``eligible`` ones, where given) with the largest ``key`` in each batch: the rows a batch
    judged alone would show."""
    starts = torch.tensor([start for start, _ in _spans(elements)], dtype=positions.dtype, device=positions.device)
    ends = torch.searchsorted(positions, starts).tolist()[1:] + [positions.numel()]
    top = [torch.zeros(0, dtype=torch.long, device=positions.device)]
    for first, last in zip([0, *ends[:-1]], ends):
        count = min(WORST_ROWS, last - first if eligible is None else int(eligible[first:last].sum()))
        if count:
            top.append(first + torch.topk(key[first:last], count).indices)
    return torch.cat(top)


def _spans(elements: Elements) -> list[tuple[int, int]]:
    """Each batch's elements (see ``Elements.batches``): [start, stop) ranges."""
    if not elements.batches:
        return [(0, elements.autograd.numel())]
    ends = np.cumsum(elements.batches).tolist()
    return list(zip([0, *ends[:-1]], ends))


#: How far the quick test's |autograd / expected - 1| may lie from |autograd - expected| /
#: |expected|: the roundings of the quotient (and of the product weight * derivative), each
#: at most half a float64 ULP of a value near 1, with room to spare.
RELATIVE_SLACK = 4 * torch.finfo(torch.float64).eps
#: How close to the exact value the oracle's values must be, as a fraction of rtol: a value
#: it trusts is within that (relative), so judging against it moves no verdict by more.
ORACLE_ACCURACY = 1 / 16
_MINUS_ONE = torch.tensor(-1.0, dtype=torch.float64)


class _Product:
    """``weight * derivative``, formed only where indexed."""

    def __init__(self, weight: torch.Tensor, derivative: torch.Tensor) -> None:
        self.weight, self.derivative = weight, derivative

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.weight[index] * self.derivative[index]


# Reductions over masks, through numpy where the tensor is on the CPU: torch 2.13's CPU
# any/nonzero/argmax over 2**18 elements take 130-370 us, numpy's 6-130 us (measured); a
# float64 comparison with a number over 1e6 elements 0.41 ms on two threads, numpy's 0.10 ms.


def _below(values: torch.Tensor, limit: float) -> torch.Tensor:
    """``values < limit`` (False where nan)."""
    if values.device.type == "cpu":
        return torch.from_numpy(np.less(values.numpy(), limit))
    return values < limit


def _any(mask: torch.Tensor) -> bool:
    return bool(mask.numpy().any()) if mask.device.type == "cpu" else bool(mask.any())


def _count(mask: torch.Tensor) -> int:
    return int(np.count_nonzero(mask.numpy())) if mask.device.type == "cpu" else int(mask.sum())


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().reshape(-1)


def _argmax(values: torch.Tensor) -> int:
    return int(values.numpy().argmax()) if values.device.type == "cpu" else int(torch.argmax(values))


def _judge_rest(elements: Elements, refine: Refinement, rest: torch.Tensor, got_all: torch.Tensor,
                dtype: torch.dtype, tol: Tolerance) -> Verdict:
    verdict = Verdict()
    info = torch.finfo(dtype)
    got = got_all[rest]
    try:
        expected = refine.expected(rest).reshape(-1).to(got.device)
    except OutOfTime:
        verdict.skip(OUT_OF_TIME, rest.numel())
        return verdict
    finite = torch.isfinite(expected)
    raw_slack = refine.slack(rest).reshape(-1).to(got.device)
    if refine.undefined is not None:
        # Autograd's inf or nan where the simplified derivative is finite; or a slack with no
        # value (an infinite local derivative times a zero: asin(sin(x)**2 + cos(x)**2), where
        # the sum is exactly 1): is a local derivative of the chain rule infinite there?
        candidates = (finite & (~torch.isfinite(got) | torch.isnan(raw_slack))).nonzero().reshape(-1)
        if candidates.numel():
            finite[candidates[refine.undefined(rest[candidates]).to(finite.device)]] = False
    verdict.skip(NOT_FINITE_EXACT, int((~finite).sum()))
    slack = raw_slack.nan_to_num(nan=0.0, posinf=math.inf)
    allowed = tol.atol + torch.maximum(tol.rtol * expected.abs(), slack)
    difference = (got - expected).abs()
    within = (difference <= allowed) & torch.isfinite(got)
    # Where the rounding the code does (not an underflow) can move the result past float64's
    # range, an infinity is as good as any value (log_ndtr's backward far out: exp of a lost
    # exponent). An underflowed divisor is not such a place: atan2's 1/(x**2 + y**2) at 1e-160.
    lost = torch.isinf(allowed) & torch.isinf(got)
    if refine.unbounded is not None and bool(lost.any()):
        where = lost.nonzero().reshape(-1)
        within[where] = refine.unbounded(rest, where).to(within.device)
    # An exact value beyond the dtype's range rounds to inf: then inf is the right answer.
    upstream = elements.upstream.reshape(-1)[rest].to(got.device) if elements.upstream is not None else None
    derivative = expected / upstream if upstream is not None else expected
    within |= (derivative.abs() > info.max) & (got == torch.sign(expected) * torch.inf)
    judged = finite
    if refine.sources is not None:
        verdict.found(refine.sources(rest, judged))
    failing = judged & ~within
    if refine.kink is not None and bool(failing.any()):
        # Only where autograd has a finite value can it lie between the one-sided derivatives.
        candidates = (failing & torch.isfinite(got)).nonzero().reshape(-1)
        if candidates.numel():
            accepted = refine.kink(rest[candidates], got[candidates], allowed[candidates]).to(got.device)
            accepted_index = candidates[accepted]
            failing[accepted_index] = False
            verdict.kinks += int(accepted.sum())
    verdict.checked += int(judged.sum())
    verdict.failed += int(failing.sum())
    at_kink = torch.zeros_like(failing)
    if verdict.kinks:
        at_kink[accepted_index] = True
    ranked = judged & ~at_kink
    ulps = torch.where(ranked, _ulps(difference, expected, dtype), -1.0)
    relative = torch.where(expected != 0, difference / expected.abs(), torch.where(difference == 0, 0.0, math.inf))
    relative = torch.where(ranked, relative.nan_to_num(nan=math.inf), -1.0)
    if bool(ranked.any()):
        verdict.max_ulp = float(ulps.max())
        verdict.max_rel = float(relative.max())
        key = torch.log1p(ulps.clamp(max=1e300)) + 1e3 * failing.to(torch.float64)  # failures first
        top = _worst_per_batch(rest, key, elements, ranked)
        rows = _row(elements, rest[top], got_all, None, tol, dtype, failing[top], expected[top], allowed[top])
        verdict.worst = sorted(rows, key=_rank)[:WORST_ROWS]
    if verdict.failed:
        where = rest[failing.nonzero().reshape(-1)]
        verdict.failing_index = set(where[:FAILING_INDICES].tolist())
        verdict.failing = [tuple(p) for p in elements.point(where[:FAILING_POINTS]).tolist()]
    return verdict


def _row(elements: Elements, index: torch.Tensor, got_all: torch.Tensor, expected_all: torch.Tensor | None,
         tol: Tolerance, dtype: torch.dtype, failed: torch.Tensor, expected: torch.Tensor | None = None,
         allowed: torch.Tensor | None = None) -> list[Row]:
    # A few rows: their figures in Python floats (a torch operation per figure would cost
    # more than the judgement of a million elements' cheap test)
    got = got_all[index].tolist()
    expected = (expected_all[index] if expected is None else expected).tolist()
    allowed = [tol.atol + tol.rtol * abs(e) for e in expected] if allowed is None else allowed.tolist()
    points = elements.point(index).tolist()
    upstream = elements.upstream.reshape(-1)[index].tolist() if elements.upstream is not None else [None] * len(points)
    rows = []
    for j, (k, fails) in enumerate(zip(index.tolist(), failed.tolist())):
        where = elements.where if isinstance(elements.where, str) else elements.where(k)
        difference = abs(got[j] - expected[j])
        ulps = _nan_as_inf(difference / _ulp(expected[j], dtype))
        relative = difference / abs(expected[j]) if expected[j] != 0 else (0.0 if difference == 0 else math.inf)
        # Shown per unit of the upstream gradient: the derivative's own values (ULPs are x.grad's)
        v = upstream[j] or 1.0
        rows.append(Row(
            inputs=tuple(points[j]), where=where, autograd=got[j] / v, expected=expected[j] / v,
            upstream=upstream[j], abs_error=difference / abs(v), rel_error=relative,
            ulp_error=ulps, allowed=allowed[j] / abs(v), failed=bool(fails), index=elements.index(k),
        ))
    return rows


def _ulps(difference: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``difference`` in ULPs of ``dtype`` at ``expected``; inf where that is nan."""
    return (difference / ulp(expected, dtype)).nan_to_num(nan=math.inf, posinf=math.inf)


def _ulp(value: float, dtype: torch.dtype) -> float:
    """:func:`ulp` of one float64 value (nan as :func:`ulp` takes it: as 0)."""
    info = torch.finfo(dtype)
    magnitude = info.max if math.isinf(value) else max(abs(value), info.tiny)
    exponent = 0 if math.isnan(value) else math.frexp(magnitude)[1]
    return math.ldexp(1.0, exponent - _DIGITS[dtype])


def _nan_as_inf(value: float) -> float:
    return math.inf if value != value else value


# --------------------------------------------------------------------------------------
# Kinks
# --------------------------------------------------------------------------------------

#: The kink test looks this many ULPs of the checked dtype to each side for the one-sided
#: derivatives, and this many further out to tell a kink (whose gap stays when the step
#: shrinks) from a steep but smooth derivative (whose gap shrinks with the step).
KINK_NEAR_ULPS = 2.0
KINK_FAR_ULPS = 2.0**12
#: Elements per judgement that get the kink test; beyond them, failures stay failures.
KINK_BUDGET = 4096


def kink_test(
    points: torch.Tensor,
    got: torch.Tensor,
    expected_at: Callable[[torch.Tensor], torch.Tensor],
    allowed: torch.Tensor,
    dtype: torch.dtype,
    anywhere: bool = False,
) -> torch.Tensor:
    """Which of the failing elements sit at a kink with autograd between the one-sided derivatives.

    ``points`` is ``[k, n_params]`` (float64), ``got`` autograd's value, ``expected_at``
    the exact weighted derivative at moved points (same layout), ``allowed`` the tolerance.
    At a kink (relu, abs, clamp at its bound, max at a tie, wherever it lies) the derivative
    jumps, and any value between the one-sided derivatives is a valid choice: torch documents
    its own. With ``anywhere`` (a derivative that jumps, outside strict mode) a jump anywhere
    within the step counts: the exact derivative at an input moved by a few ULP, as backward
    stability allows (trunc(x / y) with the quotient rounded). Otherwise the jump must be at
    the point itself: its gap must not shrink with the step, as a steep smooth one does.
    """
    points = points[:KINK_BUDGET]
    near, far = [], []
    for k in range(points.shape[1]):
        for ulps, sides in ((KINK_NEAR_ULPS, near), (KINK_FAR_ULPS, far)):
            for direction in (-1.0, 1.0):
                moved = points.clone()
                moved[:, k] = step(points[:, k], direction * ulps, dtype)
                sides.append(expected_at(moved).reshape(-1))
    near_values, far_values = torch.stack(near), torch.stack(far)
    gap_near = _gap(near_values)
    is_kink = gap_near > 0
    if not anywhere:
        is_kink &= gap_near >= 0.5 * _gap(far_values)
    low = near_values.nan_to_num(nan=math.inf).amin(0) - allowed[: len(points)]
    high = near_values.nan_to_num(nan=-math.inf).amax(0) + allowed[: len(points)]
    value = got[: len(points)].to(torch.float64)
    accepted = is_kink & (value >= low) & (value <= high)
    out = torch.zeros(len(got), dtype=torch.bool, device=got.device)
    out[: len(points)] = accepted.to(got.device)
    return out


def _gap(values: torch.Tensor) -> torch.Tensor:
    return (values.amax(0) - values.amin(0)).nan_to_num(nan=0.0)


def require_checked(verdict: Verdict, name: str, where: str, dtype: torch.dtype) -> None:
    """No empty pass: a check that judged nothing fails, saying why and what to do."""
    if verdict.checked or verdict.failed:
        return
    reasons = ", ".join(f"{why} at {count}" for why, count in verdict.skipped.items()) or "nothing to judge"
    fix = {
        NOT_FINITE_INPUT: "pass finite inputs (NaN and infinity have no derivative to check)",
        NOT_FINITE_FORWARD: "choose inputs (or domain=) where f is finite",
        NOT_FINITE_EXACT: "choose inputs (or domain=) where f is differentiable",
        OUT_OF_TIME: "pass a larger deadline= (seconds), or deadline=None for no limit",
    }
    hints = "; ".join(fix[why] for why in verdict.skipped if why in fix) or "choose other inputs"
    raise NothingChecked(f"no gradient element of {name} was checked at {where} ({dtype}): {reasons}. {hints}")
