"""One check put together: arguments checked, then a :class:`Check` run.

This module checks arguments, builds one :class:`Check` (the function, its exact
derivatives, dtype, device, order, tolerance and seed) and hands it down the stages:
the search draws points and calls :meth:`Check.judge`, which runs autograd
(:mod:`._autograd`), evaluates the exact side (:mod:`._oracle`, :mod:`._error_model`)
and judges (:mod:`._compare`); :mod:`._report` turns the verdict into text.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch

from ._arguments import (
    check_callable, check_count, check_deadline, check_input, check_order, resolve_device, resolve_dtype,
)
from ._autograd import (
    FORWARD, REVERSE, VMAP, Concatenated, Fault, check_deterministic, cotangent, is_elementwise, structural_faults,
)
from ._budget import Deadline, interrupt_after
from ._compare import ORACLE_ACCURACY, OUT_OF_TIME, Tolerance, Verdict, require_checked, tolerance_for
from ._errors import DeadlineExceeded, NothingChecked, TraceError
from ._report import Report, build_report
from ._judge import allowance, exact_side, floating_only, judge_directional, judge_points, judge_tensor
from ._printer import POLYGAMMA_STEPS_LIMIT
from ._search import (
    Domain, Drawn, SearchSettings, database_key, derandomized_seed, draw_tensors, infer_domain, parse_domain,
    points_in_domain, search, search_settings, shrink_tensors,
)
from ._symbolic import Derivatives, KeyedCache, derivatives_for, directional_derivatives, function_key, names_of
from ._trace import MAX_SYMBOLIC_ELEMENTS, default_names, function_name

#: Batches per check when inputs are drawn (the first holds the special values).
DEFAULT_EXAMPLES = 25
#: Points per batch of an elementwise function: large enough that torch's per-call
#: overhead is small, small enough that a batch is a few milliseconds.
BULK_POINTS = 4096
#: Points per batch of a function evaluated one point at a time.
POINTWISE_POINTS = 16
#: Elements judged at once; longer inputs are judged in chunks, which bounds memory.
CHUNK = 2**20
#: Seconds a search may take by default before it stops and reports what it checked.
DEFAULT_DEADLINE = 5.0
#: Units in the last place by which backward stability may move a user Function's inputs
#: and saved output ("a few").
PERTURBATION_ULPS = 4
#: A judgement still running this long after its deadline (factor times the deadline, plus
#: seconds) is interrupted: the user's function does not return.
HARD_DEADLINE_FACTOR, HARD_DEADLINE_GRACE = 2.0, 5.0
#: Seconds after which a check of given inputs, with no deadline asked for, is interrupted.
HANG_LIMIT = 120.0
#: Points of a batch on which gradcheck's structural checks run (two extra backwards).
STRUCTURAL_POINTS = 64
#: Points of a batch on which the function is run twice to see that it is deterministic.
DETERMINISM_POINTS = 64

ELEMENTWISE, POINTWISE, TENSOR, DIRECTIONAL = "elementwise", "pointwise", "tensor", "directional"


# --------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """Everything a judgement needs: the function, its exact derivatives and the options."""

    f: Callable[..., Any]
    name: str
    derivatives: Derivatives
    dtype: torch.dtype
    device: torch.device
    tol: Tolerance
    strict: bool
    mode: str
    seed: int
    deadline: Deadline
    modes: tuple[str, ...] = (REVERSE,)  # reverse mode (x.grad), forward mode (the JVP), or both

    @property
    def pointwise(self) -> bool:
        return self.mode == POINTWISE

    @property
    def rounding_dtype(self) -> torch.dtype:
        """The dtype autograd's result is rounded to (see :func:`_leg_dtype`)."""
        return _leg_dtype(self.derivatives, self.dtype)

    @property
    def units(self) -> tuple[float, float]:
        """The allowance's units, over rtol: the error of one operation whose result
        underflows, and a perturbation of a few units in the last place."""
        info = torch.finfo(self.dtype)
        return info.tiny / max(self.tol.rtol, info.eps), PERTURBATION_ULPS * info.eps / 2 / max(self.tol.rtol, info.eps)

    @property
    def accuracy(self) -> float:
        """How close the exact values must be: well inside the tolerance."""
        return self.tol.rtol * ORACLE_ACCURACY

    def generator(self, batch: int | Sequence[tuple[int, int]]) -> torch.Generator | Concatenated:
        """Upstream gradients of batch ``batch``: the same for the same seed; of batches judged
        together (each with its number of points): each batch's own."""
        if not isinstance(batch, int):
            return Concatenated(tuple((self.generator(b), n) for b, n in batch))
        return torch.Generator().manual_seed((self.seed * 1_000_003 + batch * 7919 + 1) % 2**63)

    def points(self, domain: Domain, count: int, generator: torch.Generator) -> list[torch.Tensor]:
        """``count`` points of ``domain`` where the function is real (and autograd returns)."""
        exact = exact_side(self.derivatives, self.strict)

        def value(columns: list[torch.Tensor]) -> torch.Tensor:
            (forward,) = exact.forward(*columns)
            stalls = exact.stalls_torch(columns)
            return forward if stalls is None else torch.where(stalls, torch.nan, forward)

        return points_in_domain(value, domain, count, self.dtype, generator, self.name)

    def judge(self, columns: Sequence[torch.Tensor], batch: int | Sequence[tuple[int, int]] = 0, *,
              indexed: bool = False) -> Verdict:
        """Judge every gradient element at the given points (one tensor per parameter,
        broadcastable; a function of tensors: the tensors themselves). ``indexed`` reports
        rows with their element index (for inputs the user gave). ``batch``: which batch the
        points are, for their upstream gradients; batches judged together (points of a
        function of scalars, concatenated): each batch and its number of points, in order."""
        if self.mode == TENSOR:  # forward mode: by directions, whose exact side is forward mode already
            verdict = judge_tensor(self, columns, self.generator(batch)) if REVERSE in self.modes else Verdict()
            for mode in (FORWARD, VMAP):
                if mode in self.modes:
                    verdict.merge(judge_directional(replace(self, modes=(mode,)), columns, self.generator(batch)))
            return verdict
        if self.mode == DIRECTIONAL:
            return judge_directional(self, columns, self.generator(batch))
        values = [c.detach().to(device=self.device, dtype=self.dtype) for c in columns]
        shape = tuple(np.broadcast_shapes(*[v.shape for v in values]))
        index_shape = shape if indexed and shape else None
        total = math.prod(shape)
        if total <= CHUNK or any(tuple(v.shape) != shape for v in values):
            return judge_points(self, values, self.generator(batch), index_shape=index_shape)
        verdict = Verdict()
        flat = [v.reshape(-1) for v in values]
        for k, start in enumerate(range(0, total, CHUNK)):
            if k and self.deadline.expired():
                verdict.skip(OUT_OF_TIME, total - start)
                break
            chunk = [v[start : start + CHUNK] for v in flat]
            verdict.merge(judge_points(self, chunk, self.generator(batch * 65537 + k),
                                       index_shape=index_shape or (total,), offset=start))
        return verdict

    def fails(self, columns: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per point: whether any of its gradient elements fails (for the shrinker)."""
        verdict = self.judge(columns, batch=-1)
        mask = torch.zeros(columns[0].numel(), dtype=torch.bool)
        for k in verdict.failing_index:
            mask[k] = True
        return mask

    def faults(self, columns: Sequence[torch.Tensor]) -> list[Fault]:
        """gradcheck's structural checks on (a prefix of) one batch."""
        values = [c.detach().to(device=self.device, dtype=self.dtype) if c.is_floating_point() else c.detach().to(self.device)
                  for c in columns]
        if self.mode not in (TENSOR, DIRECTIONAL):
            values = _prefix(values, 1 if self.mode == POINTWISE else STRUCTURAL_POINTS)
            if self.mode == POINTWISE:
                values = [v.reshape(()) for v in values]
        tensors = (TENSOR, DIRECTIONAL)
        out_shape = self.derivatives.output_shape if self.mode in tensors else np.broadcast_shapes(*[v.shape for v in values])
        v = cotangent(out_shape, self.dtype, self.device, self.generator(-2))

        def same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            if a.device.type == "cpu":
                return (a == b) | (torch.isnan(a) & torch.isnan(b))
            return ((a - b).abs() <= self.tol.atol + self.tol.rtol * a.abs()) | (torch.isnan(a) & torch.isnan(b))

        if self.mode == DIRECTIONAL:  # integer inputs (targets) are held, not differentiated
            f = floating_only(self.f, values)
            values = [x for x in values if x.is_floating_point()]
            return structural_faults(f, values, v, same)
        return structural_faults(self.f, values, v, same)


AUTOMATIC: Any = object()  # deadline= not given: 5 s for a search; given inputs are all checked


@dataclass(frozen=True)
class Options:
    """One check's validated arguments."""

    reference: Any
    order: int
    dtype: torch.dtype | None
    device: torch.device | None
    examples: int | None
    seed: int
    rtol: float | None
    atol: float | None
    strict: bool
    seconds: float | None  # the judgement stops by itself after this long
    hard: float | None  # and is interrupted after this long (the function never returns)
    unseeded: bool
    settings: SearchSettings | None  # Hypothesis's, where given or a profile is loaded
    modes: tuple[str, ...] = (REVERSE,)


def options(f: Any, given: bool, *, reference: Any, order: Any, dtype: Any, device: Any, examples: Any, seed: Any,
            rtol: Any, atol: Any, domain: Any, strict: Any, deadline: Any, settings: Any,
            modes: Any = (REVERSE,)) -> Options:
    """Check every argument of a check and resolve the defaults."""
    check_callable(f)
    order = check_order(order)
    modes = check_modes(modes, order)
    check_count("examples", examples, "batches of points to draw")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer, got seed={seed!r}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False, got strict={strict!r}")
    if settings is not None and not _is_settings(settings):
        raise TypeError(f"settings must be a hypothesis.settings object, got settings={settings!r}")
    reference = _reference(reference)
    search = search_settings(settings) if not given else None
    if given and domain is not None:
        raise ValueError("domain= chooses where points are drawn; it cannot be combined with explicit inputs")
    if deadline is AUTOMATIC and search is not None:  # Hypothesis's deadline is per example (batch)
        per_batch = search.deadline
        seconds, hard = (None, HANG_LIMIT) if per_batch is None else (per_batch * (examples or search.max_examples), None)
    elif deadline is AUTOMATIC:  # a search stops by itself; inputs given are all checked
        seconds, hard = (None, HANG_LIMIT) if given else (DEFAULT_DEADLINE, None)
    else:
        seconds, hard = check_deadline(deadline), None
    if seconds is not None:
        hard = HARD_DEADLINE_FACTOR * seconds + HARD_DEADLINE_GRACE
    seed_ = seed if seed is not None else random.SystemRandom().randrange(2**32)
    return Options(reference, order, resolve_dtype(dtype), resolve_device(device), examples, seed_, rtol, atol,
                   strict, seconds, hard, seed is None, search, modes)


def check_modes(modes: Any, order: int) -> tuple[str, ...]:
    """``modes=``: a non-empty tuple of "rev" (reverse mode, x.grad), "fwd" (forward mode, the
    JVP) and "vmap" (batched gradients: torch.func.vjp's pullback vmapped over upstream gradients)."""
    if isinstance(modes, str):
        modes = (modes,)
    if not isinstance(modes, (tuple, list)) or not modes or any(m not in (REVERSE, FORWARD, VMAP) for m in modes):
        raise ValueError(f'modes must hold "rev" (reverse mode: x.grad), "fwd" (forward mode: the JVP) and/or '
                         f'"vmap" (batched gradients), such as modes=("rev", "fwd"); got modes={modes!r}')
    if VMAP in modes and order != 1:
        raise ValueError(f'modes "vmap" batches first derivatives (torch.func.vjp); order={order} is checked with '
                         '"rev" and "fwd"')
    return tuple(dict.fromkeys(modes))


def _reference(reference: Any) -> Any:
    """``reference=`` as the tracer takes it: a function of tensors or a SymPy expression (a
    formula string is parsed, as the command line does)."""
    if reference is None or callable(reference) or isinstance(reference, sympy.Basic):
        return reference
    if isinstance(reference, str):
        from ._parse import ExpressionError, parse_expression

        try:
            return parse_expression(reference).expr
        except ExpressionError as error:
            raise ValueError(f"reference={reference!r} is not a formula autocheck can read: {error}") from None
    raise TypeError(
        f"reference must be a function of tensors, a SymPy expression or a formula such as \"sin(x)\", "
        f"got reference={reference!r}"
    )


def _is_settings(value: Any) -> bool:
    from hypothesis import settings as hypothesis_settings

    return isinstance(value, hypothesis_settings)


def run(f: Callable[..., Any], inputs: Sequence[Any], domain: Any, options: Options) -> Report:
    """One check: at the given inputs, or searched over ``domain``."""
    if any(isinstance(x, Drawn) for x in inputs):
        return _check_drawn(f, inputs, options)
    small = not inputs or sum(x.numel() if isinstance(x, torch.Tensor) else 1 for x in inputs) <= SMALL_WORK
    with _one_thread(small):
        return _check_given(f, inputs, options) if inputs else _check_generated(f, domain, options)


#: Elements up to which a check runs torch on one thread: its operations on batches this
#: small are slower on two threads than on one (thread hand-offs cost more than they save).
SMALL_WORK = 2**18


@contextlib.contextmanager
def _one_thread(small: bool) -> Any:
    threads = torch.get_num_threads()
    if not small or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_given(f: Callable[..., Any], inputs: Sequence[Any], options: Options) -> Report:
    declared = names_of(f, options.reference, len(inputs))
    names = declared or default_names(len(inputs))
    tensors = [check_input(x, k, names[k] if k < len(names) else f"input {k}") for k, x in enumerate(inputs)]
    if declared and len(names) != len(tensors):
        raise TypeError(
            f"f takes {len(names)} inputs ({', '.join(names)}) but {len(tensors)} were given; "
            f"pass one tensor per parameter"
        )
    dtype = options.dtype or tensors[0].dtype
    device = options.device or tensors[0].device
    tol = tolerance_for(dtype, options.rtol, options.atol)
    values = [t.detach().to(device=device, dtype=dtype) for t in tensors]
    name = function_name(f)
    with _hang_limit(name, options):
        mode = _mode(f, values, options.reference)
        check_deterministic(f, values if mode in (TENSOR, DIRECTIONAL) else _prefix(values, DETERMINISM_POINTS), name)
    shapes = [tuple(t.shape) for t in tensors] if mode in (TENSOR, DIRECTIONAL) else None
    if mode == TENSOR and options.reference is None:
        # Element by element while that is quick; a symbolic Jacobian that grows too fast (a
        # std of 25 elements: a minute) gives way to directional derivatives.
        try:
            with interrupt_after(SYMBOLIC_SECONDS, _SYMBOLIC, "Pass a tensor of more than 100 elements."):
                check, verdict, faults = _judged(f, name, values, names, shapes, mode, options, tol)
        except DeadlineExceeded as error:
            if error.what != _SYMBOLIC:
                raise
            if options.order > 2:
                raise ValueError(
                    f"the order-{options.order} derivatives of {name} took longer than {SYMBOLIC_SECONDS:g} s to build "
                    "symbolically, and functions of tensors are checked by directional derivatives only to order 2: "
                    "lower order=, or check at fewer elements"
                ) from None
            check, verdict, faults = _judged(f, name, values, names, shapes, DIRECTIONAL, options, tol)
        except TraceError as error:  # an operator the tracer has no rule for (scatter, cdist)
            try:
                check, verdict, faults = _judged(f, name, values, names, shapes, DIRECTIONAL, options, tol)
            except (TraceError, TypeError) as second:  # no rule there either, or not a function to check that way
                if str(second) == str(error) or "no rule for torch operator" in str(second):
                    raise error from None
                raise TraceError(f"{error}\nBy directional derivatives instead: {second}") from None
    else:
        check, verdict, faults = _judged(f, name, values, names, shapes, mode, options, tol)
    require_checked(verdict, check.name, "the given inputs", check.dtype)
    return build_report(check, verdict, faults, inputs=values, reference=options.reference,
                        timed_out=check.deadline.expired())


#: Seconds a check of small tensors may spend element by element before it is checked by
#: directional derivatives instead.
SYMBOLIC_SECONDS = 5.0
_SYMBOLIC = "the symbolic Jacobian of a function of small tensors"


def _judged(f: Callable[..., Any], name: str, values: list[torch.Tensor], names: Sequence[str],
            shapes: Any, mode: str, options: Options, tol: Tolerance) -> tuple[Check, Verdict, list[Fault]]:
    """The exact side of one check of given inputs, and its judgement."""
    dtype, device = values[0].dtype, values[0].device
    if mode == DIRECTIONAL:
        with torch.no_grad():
            out = f(*values)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"f returned {type(out).__name__}, not a tensor; return a single tensor")
        output_shape = tuple(out.shape)
        derivatives = directional_derivatives(names, shapes, output_shape, options.order)
    else:
        derivatives = derivatives_for(f, options.reference, names, shapes, dtype, options.order)
    tol = _leg_tolerance(tol, derivatives, dtype, options)
    check = Check(f, name, derivatives, dtype, device, tol, options.strict, mode, options.seed,
                  Deadline.after(options.seconds), options.modes)
    stalls = None if mode in (TENSOR, DIRECTIONAL) else \
        exact_side(derivatives, options.strict).stalls_torch([v.to(torch.float64) for v in values])
    if stalls is not None:
        raise ValueError(
            f"autograd would not return at {int(stalls.sum())} of the inputs: the derivative calls torch's polygamma "
            f"of order 2 or more below {-POLYGAMMA_STEPS_LIMIT:g}, which torch computes one unit step at a time "
            "(minutes at -1e10). Check closer to zero"
        )
    with _hang_limit(name, options):
        verdict = check.judge(values, indexed=mode not in (TENSOR, DIRECTIONAL))
        faults = check.faults(values)
    return check, verdict, faults


#: Draws of tensors a check of drawn inputs judges by default.
DRAWN_EXAMPLES = 12


def _check_drawn(f: Callable[..., Any], inputs: Sequence[Any], options: Options) -> Report:
    """A function of tensors at tensors it draws (:class:`Drawn`), by directional
    derivatives; a failing draw is shrunk and reported whole."""
    declared = names_of(f, None, len(inputs))
    names = declared or default_names(len(inputs))
    specs = []
    for k, x in enumerate(inputs):
        if isinstance(x, Drawn):
            specs.append(x)
        elif isinstance(x, torch.Tensor):
            specs.append(Drawn(tuple(x.shape), integers=None))
        else:
            raise TypeError(f"input {k} ({names[k]}) must be autocheck.Drawn or a tensor, got {type(x).__name__}")
    fixed = {k: x for k, x in enumerate(inputs) if isinstance(x, torch.Tensor)}
    if options.reference is not None or options.strict:
        raise TypeError("reference= and strict= do not apply to drawn tensors (they are checked by directional derivatives)")
    dtype = options.dtype or torch.float64
    device = options.device or torch.device("cpu")
    tol = tolerance_for(dtype, options.rtol, options.atol)
    name = function_name(f)
    generator = torch.Generator().manual_seed(options.seed)
    deadline = Deadline.after(options.seconds)
    examples = options.examples or (options.settings.max_examples if options.settings is not None else DRAWN_EXAMPLES)

    def judged(values: list[torch.Tensor]) -> tuple[Check, Verdict, list[Fault]]:
        shapes = [tuple(v.shape) for v in values]
        return _judged(f, name, values, names, shapes, DIRECTIONAL, options, tol)

    def draw(attempt: int) -> list[torch.Tensor]:
        drawn = draw_tensors(specs, attempt, generator, dtype, device)
        return [fixed[k].to(device=device, dtype=dtype) if k in fixed and fixed[k].is_floating_point()
                else fixed.get(k, drawn[k]) for k in range(len(specs))]

    total, checked = Verdict(), 0
    last = None
    for attempt in range(examples):
        if attempt and deadline.expired():
            break
        values = draw(attempt)
        if attempt == 0:
            with _hang_limit(name, options):
                check_deterministic(f, values, name)
        check, verdict, faults = judged(values)
        checked += 1
        last = (check, verdict, faults, values)
        if verdict.failed or faults:
            def fails(candidate: list[torch.Tensor]) -> bool:
                return bool(judged(candidate)[1].failed)

            shrunk = shrink_tensors(fails, values, specs) if verdict.failed else values
            check, verdict, faults = judged(shrunk)
            report = build_report(check, verdict, faults, inputs=shrunk, timed_out=deadline.expired())
            report.counterexample = tuple(shrunk)
            report.notes.append(f"Found at draw {attempt + 1} of {examples}, then shrunk; the inputs in full:")
            report.notes += [f"  {n} = {_whole(t)}" for n, t in zip(names, shrunk)]
            report.reproduce = f"autocheck.assert_grad_matches(f, {', '.join(names)}, seed={options.seed})"
            return report
        total.merge(verdict)
    check, verdict, faults, values = last
    total.worst = verdict.worst
    require_checked(total, name, f"{checked} drawn inputs", dtype)
    report = build_report(check, total, faults, inputs=values, timed_out=deadline.expired())
    report.notes.append(f"Inputs drawn {checked} times (shapes {', '.join(str(s.shape) for s in specs)})")
    return report


def _whole(t: torch.Tensor) -> str:
    """A tensor as code that builds it, every element written out."""
    dtype = f", dtype={t.dtype}" if t.is_floating_point() else ""
    return f"torch.tensor({t.detach().cpu().tolist()!r}{dtype})"


def _mode(f: Callable[..., Any], values: Sequence[torch.Tensor], reference: Any) -> str:
    """How given inputs are checked: elementwise over their broadcast, or as small tensors."""
    if all(v.numel() == 0 for v in values):
        shapes = ", ".join(str(tuple(v.shape)) for v in values)
        raise NothingChecked(
            f"every input is empty (shape {shapes}): there is no gradient element to check. "
            "Pass tensors with at least one element"
        )
    if getattr(f, "__autocheck_directional__", False):  # check_module: layers, by directional derivatives
        return DIRECTIONAL
    try:
        broadcast = tuple(np.broadcast_shapes(*[v.shape for v in values]))
    except ValueError:  # shapes that do not broadcast
        broadcast = None
    if broadcast is not None and (isinstance(reference, sympy.Expr) or _elementwise(f, len(values), values[0].dtype)):
        if math.prod(broadcast) == 0:
            raise NothingChecked(
                f"the inputs broadcast to the empty shape {broadcast}: there is no gradient element to check. "
                "Pass tensors with at least one element"
            )
        return ELEMENTWISE
    total = sum(v.numel() for v in values)
    if total > MAX_SYMBOLIC_ELEMENTS:
        if reference is None:
            return DIRECTIONAL
        raise ValueError(
            f"inputs have {total} elements and reference= is given, so the exact Jacobian would be built from it; "
            f"check at smaller tensors (at most {MAX_SYMBOLIC_ELEMENTS} elements in all), or leave reference= out "
            "to check by directional derivatives of the code itself"
        )
    return TENSOR


#: Whether a function is elementwise, kept per function (:func:`function_key`), number of
#: inputs and dtype: a parametrized test probes its function once.
_ELEMENTWISE = KeyedCache(256)


def _elementwise(f: Callable[..., Any], n_inputs: int, dtype: torch.dtype) -> bool:
    key = function_key(f)
    if key is None:
        return is_elementwise(f, n_inputs, dtype)
    return _ELEMENTWISE.get((key, n_inputs, dtype), lambda: is_elementwise(f, n_inputs, dtype))


def _check_generated(f: Callable[..., Any], domain: Any, options: Options) -> Report:
    dtype = options.dtype or torch.float64
    device = options.device or torch.device("cpu")
    tol = tolerance_for(dtype, options.rtol, options.atol)
    name = function_name(f)
    derivatives = derivatives_for(f, options.reference, names_of(f, options.reference, None), None, dtype, options.order)
    if derivatives.output_shape:
        raise TraceError(
            f"f returns a tensor of shape {derivatives.output_shape} for scalar inputs; without inputs autocheck "
            "checks elementwise functions. Pass example tensors: assert_grad_matches(f, x)."
        )
    dom = infer_domain(derivatives.forward, derivatives.symbols, parse_domain(domain, derivatives.names))
    leg = _leg_dtype(derivatives, dtype)
    if leg != dtype:  # a leg of the code in a narrower dtype: inputs beyond its range overflow when cast
        top = float(torch.finfo(leg).max)
        dom = Domain(dom.names, tuple((max(lo, -top), min(hi, top)) for lo, hi in dom.intervals))
    tol = _leg_tolerance(tol, derivatives, dtype, options)
    hypothesis = options.settings
    examples = options.examples or (hypothesis.max_examples if hypothesis is not None else DEFAULT_EXAMPLES)
    key = database_key(f, name, derivatives.formula, dtype) if options.unseeded else None
    seed = options.seed
    if key is not None and hypothesis is not None and hypothesis.derandomize:
        seed, key = derandomized_seed(key), None
    with _hang_limit(name, options):
        elementwise = isinstance(options.reference, sympy.Expr) or _elementwise(f, len(derivatives.names), dtype)
        check = Check(f, name, derivatives, dtype, device, tol, options.strict, ELEMENTWISE if elementwise else POINTWISE,
                      seed, Deadline.after(options.seconds), options.modes)
        probe = check.points(dom, DETERMINISM_POINTS, check.generator(-3))
        check_deterministic(f, [p.to(device=device, dtype=dtype) for p in probe], name)
        found = search(
            check, dom, dtype, examples=examples, seed=seed, deadline=check.deadline,
            draw_batch=lambda g: check.points(dom, BULK_POINTS if elementwise else POINTWISE_POINTS, g),
            database_key=key, settings=hypothesis,
        )
        faults = check.faults(probe)
    require_checked(found.verdict, name, f"the {found.points} points drawn from {dom.describe()}", dtype)
    report = build_report(check, found.verdict, faults, counterexample=found.counterexample, domain=dom,
                          reference=options.reference, timed_out=found.timed_out)
    if found.replayed:
        report.notes.append("Found first among the failing examples an earlier run saved in Hypothesis's database")
    return report


def _leg_dtype(derivatives: Derivatives, dtype: torch.dtype) -> torch.dtype:
    """The dtype a correct autograd rounds, and overflows, in: ``dtype``, or a narrower one
    that part of the code is cast to (``x.float()`` in a float64 function)."""
    narrow = derivatives.narrowest
    return narrow if narrow is not None and torch.finfo(narrow).eps > torch.finfo(dtype).eps else dtype


def _leg_tolerance(tol: Tolerance, derivatives: Derivatives, dtype: torch.dtype, options: Options) -> Tolerance:
    """The default tolerance of the dtype autograd rounds in (``rtol`` and ``atol`` given win)."""
    leg = _leg_dtype(derivatives, dtype)
    return tol if options.rtol is not None or leg == dtype else tolerance_for(leg, None, None)


def tolerance_band(f: Callable[..., Any], x: torch.Tensor, *, reference: Any = None,
                   dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """For a plot of a function of one variable at the points ``x``: the exact derivative,
    and how far from it a check accepts autograd's (the default tolerance of ``dtype``)."""
    reference = _reference(reference)
    derivatives = derivatives_for(f, reference, names_of(f, reference, None), None, dtype, 1)
    check = Check(f, function_name(f), derivatives, dtype, torch.device("cpu"), tolerance_for(dtype, None, None),
                  False, ELEMENTWISE, 0, Deadline.after(None))
    return allowance(check, x)


def _hang_limit(name: str, options: Options) -> Any:
    """Interrupts the judgement if the function never returns (the search stops by itself)."""
    what = f"checking the gradient of {name}"
    fix = "If f itself never returns, fix it; else pass a larger deadline= (or deadline=None for no limit)."
    return interrupt_after(options.hard, what, fix)


def _prefix(values: Sequence[torch.Tensor], count: int) -> list[torch.Tensor]:
    """The first ``count`` points of broadcastable inputs, as flat tensors."""
    shape = np.broadcast_shapes(*[v.shape for v in values])
    return [v.expand(shape).reshape(-1)[:count] for v in values]
