"""Stage 6: where to look. Domains and the points drawn from them.

Points are drawn in float64 and rounded to the checked dtype, from a mixture that covers
every magnitude: special values (0, -0.0, ±1, the smallest normal and subnormal numbers,
the largest finite ones), log-uniform magnitudes across the dtype's whole range, moderate
magnitudes (2^-12 to 2^12, where a band such as 4 < |x| < 4.5 gets real weight), and
uniform values in [-10, 10]. The bulk comes from torch's generator, seeded, for speed.
"""

from __future__ import annotations

import functools
import math
import struct
import time
from decimal import Decimal
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from ._errors import DomainError


@dataclass(frozen=True)
class Domain:
    """One closed interval per parameter (``-inf``/``inf`` for unbounded)."""

    names: tuple[str, ...]
    intervals: tuple[tuple[float, float], ...]

    def contains(self, points: Sequence[torch.Tensor]) -> torch.Tensor:
        inside = torch.ones_like(points[0], dtype=torch.bool)
        for (low, high), values in zip(self.intervals, points):
            inside &= (values >= low) & (values <= high)
        return inside

    def describe(self) -> str:
        return ", ".join(f"{n} in [{lo:g}, {hi:g}]" for n, (lo, hi) in zip(self.names, self.intervals))


def parse_domain(domain: Any, names: Sequence[str]) -> Domain:
    """Read ``domain=``: None, one interval ``(low, high)``, a list of them (one per
    parameter), or a mapping from parameter name to interval."""
    names = tuple(names)
    everything = (-math.inf, math.inf)
    if domain is None:
        return Domain(names, tuple(everything for _ in names))
    if isinstance(domain, Mapping):
        unknown = [k for k in domain if k not in names]
        if unknown:
            raise DomainError(
                f"domain names {unknown[0]!r}, which is not a parameter of the function "
                f"(parameters: {', '.join(names)}); use one of those names as the key"
            )
        intervals = tuple(_interval(n, domain.get(n, everything)) for n in names)
        return Domain(names, intervals)
    if _is_interval(domain):
        return Domain(names, tuple(_interval(n, domain) for n in names))
    if isinstance(domain, (list, tuple)):
        if len(domain) != len(names):
            raise DomainError(
                f"domain has {len(domain)} intervals but the function has {len(names)} parameters "
                f"({', '.join(names)}); give one (low, high) per parameter, or a dict by name"
            )
        return Domain(names, tuple(_interval(n, d) for n, d in zip(names, domain)))
    raise DomainError(
        f"domain must be (low, high), a list of them, or a dict by parameter name, got domain={domain!r}"
    )


def _is_interval(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _interval(name: str, value: Any) -> tuple[float, float]:
    if not _is_interval(value):
        raise DomainError(f"domain for {name} must be a (low, high) pair of numbers, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if math.isnan(low) or math.isnan(high) or not low <= high:
        raise DomainError(
            f"domain for {name} is empty: ({low!r}, {high!r}); give an interval with low <= high, "
            f"e.g. domain={{{name!r}: (0.1, 10.0)}}"
        )
    return low, high


def special_values(dtype: torch.dtype) -> list[float]:
    """Values where gradients go wrong most often, representable in ``dtype``."""
    info = torch.finfo(dtype)
    base = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, math.pi, -math.pi, 10.0, -10.0]
    extremes = [info.tiny, -info.tiny, info.tiny * info.eps, -info.tiny * info.eps, info.max, -info.max]
    moderate = [20.5, -20.5, 100.0, -100.0, 1e-3, -1e-3]
    return base + moderate + extremes


def _log_uniform(n: int, low_exp: float, high_exp: float, generator: torch.Generator) -> torch.Tensor:
    exponents = torch.empty(n, dtype=torch.float64).uniform_(low_exp, high_exp, generator=generator)
    signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
    return signs * torch.exp2(exponents)


def draw(
    count: int,
    n_params: int,
    dtype: torch.dtype,
    domain: Domain,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """``count`` points (one float64 tensor per parameter), rounded to ``dtype``, inside ``domain``."""
    info = torch.finfo(dtype)
    smallest_exp = math.log2(info.tiny * info.eps)
    largest_exp = math.log2(info.max)
    columns = []
    for low, high in domain.intervals:
        quarter = max(count // 4, 1)
        parts = [
            _log_uniform(quarter, smallest_exp, largest_exp, generator),
            _log_uniform(quarter, -12.0, 12.0, generator),
            torch.empty(quarter, dtype=torch.float64).uniform_(-10.0, 10.0, generator=generator),
        ]
        if math.isfinite(low) and math.isfinite(high):
            parts.append(torch.empty(quarter, dtype=torch.float64).uniform_(low, high, generator=generator))
        elif math.isfinite(low) or math.isfinite(high):
            edge = low if math.isfinite(low) else high
            direction = 1.0 if math.isfinite(low) else -1.0
            offsets = _log_uniform(quarter, -30.0, 12.0, generator).abs()
            parts.append(edge + direction * offsets)
        specials = torch.tensor(special_values(dtype) + _edges(low, high), dtype=torch.float64)
        bulk = torch.cat(parts)
        bulk = bulk[torch.randperm(bulk.numel(), generator=generator)]
        column = torch.cat([specials[torch.randperm(specials.numel(), generator=generator)], bulk])[:count]
        if column.numel() < count:
            column = torch.cat([column, bulk[: count - column.numel()]])
        column = _clip_to(column, low, high, generator)
        columns.append(column.to(dtype).to(torch.float64))
    return columns


def _edges(low: float, high: float) -> list[float]:
    edges = []
    for edge in (low, high):
        if math.isfinite(edge):
            edges += [edge, math.nextafter(edge, 0.0) if edge else edge]
    return edges


def _clip_to(values: torch.Tensor, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """Replace values outside [low, high] by values drawn inside it."""
    outside = (values < low) | (values > high)
    if not outside.any():
        return values
    if math.isfinite(low) and math.isfinite(high):
        span = high - low
        fresh = low + span * torch.rand(int(outside.sum()), dtype=torch.float64, generator=generator)
        # Magnitudes inside a wide interval: also try log-uniform draws that fall inside.
    else:
        edge = low if math.isfinite(low) else high
        direction = 1.0 if math.isfinite(low) else -1.0
        fresh = edge + direction * _log_uniform(int(outside.sum()), -30.0, 30.0, generator).abs()
    values = values.clone()
    values[outside] = fresh
    return values.clamp(low, high)


def points_in_domain(
    forward: Callable[[list[torch.Tensor]], torch.Tensor],
    domain: Domain,
    count: int,
    dtype: torch.dtype,
    generator: torch.Generator,
    name: str,
) -> list[torch.Tensor]:
    """``count`` points drawn in ``domain`` where ``forward`` (the function's float64 value) is not nan."""
    kept: list[list[torch.Tensor]] = [[] for _ in domain.names]
    have = 0
    for _ in range(8):
        batch = draw(max(count, 64), len(domain.names), dtype, domain, generator)
        inside = ~torch.isnan(forward(batch).expand(batch[0].shape)) & domain.contains(batch)
        for column, values in zip(kept, batch):
            column.append(values[inside])
        have += int(inside.sum())
        if have >= count:
            break
    if have == 0:
        raise DomainError(
            f"no point was found where {name} is real-valued (domain: {domain.describe()}); "
            "give domain= with an interval where the function is defined"
        )
    return [torch.cat(c)[:count] for c in kept]


# --------------------------------------------------------------------------------------
# Hypothesis: special values, scalars and seeds; shrinking
# --------------------------------------------------------------------------------------

_WIDTH = {torch.float64: 64, torch.float32: 32, torch.float16: 16, torch.bfloat16: 32}


def floats_in(low: float, high: float, dtype: torch.dtype) -> Any:
    """A Hypothesis strategy of finite floats of ``dtype`` in [low, high]."""
    from hypothesis import strategies as st

    info = torch.finfo(dtype)
    low, high = max(low, -info.max), min(high, info.max)
    width = _WIDTH[dtype]
    low_w, high_w = _representable(low, dtype, up=True), _representable(high, dtype, up=False)
    strategy = st.floats(low_w, high_w, allow_nan=False, allow_infinity=False, width=width)
    if dtype is torch.bfloat16:
        strategy = strategy.map(lambda v: float(torch.tensor(v).to(torch.bfloat16))).filter(lambda v: low <= v <= high)
    return strategy


def _representable(value: float, dtype: torch.dtype, up: bool) -> float:
    """``value`` rounded into ``dtype``, moved inward so that it stays inside the interval."""
    rounded = float(torch.tensor(value, dtype=torch.float64).to(dtype))
    if up and rounded < value:
        rounded = float(torch.nextafter(torch.tensor(rounded, dtype=dtype), torch.tensor(math.inf, dtype=dtype)))
    if not up and rounded > value:
        rounded = float(torch.nextafter(torch.tensor(rounded, dtype=dtype), torch.tensor(-math.inf, dtype=dtype)))
    return rounded


def point_strategy(domain: Domain, dtype: torch.dtype) -> Any:
    """Hypothesis strategy: one point (a tuple, one float per parameter) inside ``domain``."""
    from hypothesis import strategies as st

    return st.tuples(*[floats_in(low, high, dtype) for low, high in domain.intervals])


@dataclass
class Found:
    """What a search found: the merged verdict, and the simplest failing point shrunk."""

    verdict: Any
    points: int  # points drawn and judged
    batches: int
    counterexample: tuple[float, ...] | None = None
    timed_out: bool = False
    replayed: bool = False  # a failing example saved by an earlier run was checked first


@dataclass(frozen=True)
class SearchSettings:
    """What a check takes from a ``hypothesis.settings`` object (given, or the loaded profile)."""

    max_examples: int  # batches of points
    deadline: float | None  # seconds per batch; None: no limit
    database: Any  # a Hypothesis ExampleDatabase, or None
    derandomize: bool  # an unseeded check draws the same points every run
    verbose: bool  # a line per judgement on stderr


def search_settings(given: Any) -> SearchSettings | None:
    """The Hypothesis settings a check follows: ``given``, else the active profile when one
    other than Hypothesis's default is loaded (only if the program imported Hypothesis:
    autocheck does not import it to find out), else None (autocheck's own defaults)."""
    if given is None:
        import sys

        if "hypothesis" not in sys.modules:
            return None
        from hypothesis import settings

        # The loaded profile by its name: inside a user's @given, settings.default is that
        # test's own settings (its max_examples counts its examples, not a check's batches).
        # Hypothesis loads its "ci" profile by itself where the CI variable is set: a check
        # does the same work there as elsewhere.
        name = getattr(settings, "get_current_profile_name", lambda: getattr(settings, "_current_profile", None))()
        if name in (None, "default", "ci"):
            return None
        given = settings.get_profile(name)
    from hypothesis import Verbosity

    deadline = given.deadline
    return SearchSettings(
        max_examples=given.max_examples,
        deadline=None if deadline is None else deadline.total_seconds(),
        database=None if given.derandomize else given.database,
        derandomize=bool(given.derandomize),
        verbose=given.verbosity >= Verbosity.verbose,
    )


def search(
    check: Any,
    domain: Domain,
    dtype: torch.dtype,
    *,
    examples: int,
    draw_batch: Callable[[torch.Generator], list[torch.Tensor]],
    seed: int,
    deadline: Any,
    database_key: bytes | None = None,
    settings: SearchSettings | None = None,
) -> Found:
    """Judge batches of drawn points until one fails, ``examples`` batches are done, or the
    deadline passes; shrink the simplest failing point.

    ``check.judge(columns, batch)`` returns a verdict with ``failed`` and ``failing``
    (points); ``check.fails(columns)`` a per-point mask. Batch ``b`` is drawn by
    ``draw_batch`` from a generator seeded by ``(seed, b)``, so the same seed gives the
    same points and the same work. The first batch is judged alone, later ones up to
    :data:`JUDGED_TOGETHER` at a time (their points concatenated; ``batch`` is then each
    batch with its number of points, so that every point gets the upstream gradients it
    gets judged alone). With a ``database_key``
    (unseeded checks), failing points saved by an earlier run are judged first, and a new
    counterexample is saved, in the database of ``settings``, or else that of Hypothesis's
    active profile (where the program uses Hypothesis or keeps ``.hypothesis/``).
    ``settings.verbose``: a line per judgement.
    """
    database = None if database_key is None else settings.database if settings is not None else _database()
    verbose = settings is not None and settings.verbose
    verdict = None
    points = batches = 0
    timed_out = replayed = False
    saved = _load(database, database_key) if database is not None else []
    if saved:
        columns = [torch.tensor([p[k] for p in saved], dtype=torch.float64) for k in range(len(saved[0]))]
        verdict = check.judge(columns, -4)
        points += len(saved)
        replayed = bool(verdict.failed)
        _say(verbose, f"replayed {len(saved)} saved failing example(s): {'fails' if replayed else 'passes'}")
    batch = 0
    started = time.monotonic()
    while batch < examples:
        if verdict is not None and verdict.failed:
            break
        if batch and deadline.expired():
            timed_out = True
            _say(verbose, f"deadline reached after {batches} batch(es)")
            break
        # The first batch alone (a bug found there is reported at once), then several at a time,
        # as many as the time left allows at the pace so far.
        size = 1 if not batch else _group_size(examples - batch, (time.monotonic() - started) / batch, deadline)
        drawn = [draw_batch(torch.Generator().manual_seed(_mix(seed, b))) for b in range(batch, batch + size)]
        columns = [torch.cat(parts) for parts in zip(*drawn)] if size > 1 else drawn[0]
        found = check.judge(columns, batch if size == 1 else
                            tuple((b, parts[0].numel()) for b, parts in enumerate(drawn, start=batch)))
        points += columns[0].numel()
        batches += size
        which = f"batch {batch + 1}" if size == 1 else f"batches {batch + 1}-{batch + size}"
        _say(verbose, f"{which} of {examples}: {columns[0].numel()} points, {found.failed} failing elements")
        batch += size
        if verdict is None:
            verdict = found
        else:
            verdict.merge(found)
    result = Found(verdict, points, batches, timed_out=timed_out, replayed=replayed)
    if verdict is not None and verdict.failed and verdict.failing:
        first = simplest(verdict.failing)
        shrunk = shrink(first, check.fails, domain, dtype)
        # The reproduce line checks the point alone, with the upstream gradient of batch 0:
        # report a point that fails that way (the shrunk one, else the one found).
        for candidate in (shrunk, first):
            alone = check.judge([torch.tensor([v], dtype=torch.float64) for v in candidate], 0)
            if alone.failed:
                verdict.merge(alone)
                shrunk = candidate
                break
        result.counterexample = shrunk
        _say(verbose, f"shrunk to {shrunk}")
        if database is not None:
            database.save(database_key, struct.pack(f"<{len(shrunk)}d", *shrunk))
    return result


#: Batches judged together after the first: a judgement has a fixed cost (compiled
#: evaluations, the oracle's tiers on the few points that need them) that several batches
#: then share. The points, and so the work, are those of the batches one at a time.
JUDGED_TOGETHER = 4


def _group_size(left: int, seconds_per_batch: float, deadline: Any) -> int:
    """How many of the ``left`` batches to judge next: up to :data:`JUDGED_TOGETHER`, and no
    more than fit in the time left at ``seconds_per_batch`` (at least one)."""
    fit = deadline.remaining() / seconds_per_batch if seconds_per_batch > 0 else math.inf
    return max(1, int(min(JUDGED_TOGETHER, left, fit)))


def _say(verbose: bool, line: str) -> None:
    if verbose:
        import sys

        print(f"autocheck: {line}", file=sys.stderr, flush=True)


def derandomized_seed(key: bytes) -> int:
    """The seed of a derandomized check: the same for the same function and mathematics."""
    return int.from_bytes(key[-8:], "big") % 2**32


def database_key(f: Any, name: str, formula: str, dtype: torch.dtype) -> bytes:
    """The key of a check's failing examples in Hypothesis's database: the function and its mathematics."""
    import hashlib

    text = f"{getattr(f, '__module__', '')}.{name}|{formula}|{dtype}"
    return b"autocheck:" + hashlib.sha256(text.encode()).hexdigest()[:24].encode()


def _mix(seed: int, batch: int) -> int:
    """A generator seed for batch ``batch`` of a search seeded with ``seed``."""
    return (seed * 0x9E3779B1 + (batch + 1) * 0x85EBCA77) % 2**63


def _database() -> Any:
    """Hypothesis's configured example database (its active profile), or None.

    Hypothesis is imported only where a project uses it already or keeps a database in
    the current directory: a check that passes pays nothing for it.
    """
    import os
    import sys

    if "hypothesis" not in sys.modules and not os.path.isdir(".hypothesis"):
        return None
    from hypothesis import settings

    return settings().database


def _load(database: Any, key: bytes) -> list[tuple[float, ...]]:
    found = []
    for value in database.fetch(key):
        if len(value) % 8 == 0 and value:
            found.append(struct.unpack(f"<{len(value) // 8}d", value))
    widths = {len(p) for p in found}
    return found if len(widths) == 1 else []


def simplicity(point: tuple[float, ...]) -> tuple:
    """Sort key: integers before fractions, few decimals before many, small before large."""
    return tuple(_value_simplicity(v) for v in point)


def _value_simplicity(v: float) -> tuple:
    if v == 0:
        return (0, 0, 0.0)
    text = repr(abs(v))
    digits = len(text.replace(".", "").replace("e", "").lstrip("0").rstrip("0"))
    return (0 if float(v).is_integer() and abs(v) < 2**53 else 1, digits, abs(v))


def simplest(points: list[tuple[float, ...]]) -> tuple[float, ...]:
    return min(points, key=lambda p: (max(simplicity(p)), simplicity(p)))


def shrink(
    point: tuple[float, ...],
    failures: Callable[[list[torch.Tensor]], torch.Tensor],
    domain: Domain,
    dtype: torch.dtype,
) -> tuple[float, ...]:
    """Move a failing point to the simplest failing number nearby, one coordinate at a time.

    For each coordinate: find the edges of the failing interval around it (bisection over
    the dtype's floats), then pick the number with the fewest decimal digits inside it,
    smallest in magnitude: a bug above 20 is reported at 21.0, one in 4 < |x| < 4.6 at 4.1.
    """
    current = list(point)
    for _ in range(2):
        for k in range(len(current)):
            current[k] = _shrink_coordinate(current, k, failures, domain.intervals[k], dtype)
    return tuple(current)


def _fails(current: list[float], k: int, values: list[float], failures, dtype) -> list[bool]:
    columns = []
    for j, v in enumerate(current):
        column = torch.tensor(values if j == k else [v] * len(values), dtype=torch.float64)
        columns.append(column.to(dtype).to(torch.float64))
    return failures(columns).tolist()


def _shrink_coordinate(current, k, failures, interval, dtype) -> float:
    x = current[k]
    low, high = interval
    info = torch.finfo(dtype)
    low, high = max(low, -info.max), min(high, info.max)
    # Simple candidates first: a bug at 0, at ±1, ... is reported there.
    simple = [v for v in (0.0, 1.0, -1.0, 2.0, -2.0) if low <= v <= high and abs(v) <= abs(x)]
    for v, bad in zip(simple, _fails(current, k, simple, failures, dtype) if simple else []):
        if bad:
            return v
    inner = _edge(current, k, x, 0.0 if low <= 0.0 <= high else (low if x < low else high), failures, dtype)
    outer = _edge(current, k, x, high if x > 0 else low, failures, dtype)
    lo, hi = sorted((inner, outer))
    # The failing set need not be an interval (a bug masked where the tolerance is wide):
    # try the simplest numbers of the interval in order, all in one batch.
    candidates = _simple_numbers(lo, hi, dtype)
    if candidates:
        for candidate, bad in zip(candidates, _fails(current, k, candidates, failures, dtype)):
            if bad:
                return candidate
    return x


def _simple_numbers(lo: float, hi: float, dtype: torch.dtype, count: int = 16) -> list[float]:
    """Up to ``count`` simple numbers in [lo, hi], simplest first."""
    found: list[float] = []
    a, b = lo, hi
    for _ in range(count):
        candidate = _simplest_decimal(a, b, dtype)
        if candidate is None or candidate in found:
            break
        found.append(candidate)
        step = math.nextafter(candidate, math.inf) if candidate >= 0 else math.nextafter(candidate, -math.inf)
        if candidate >= 0:
            a = step
        else:
            b = step
        if a > b:
            break
    return found


#: Levels of midpoints the edge search judges at once: 2**EDGE_LEVELS - 1 points per batch,
#: since a batch of 15 points costs about what one point does (the judgement's fixed cost).
EDGE_LEVELS = 4
#: The edge search stops where it has the edge to this relative width: the simplest number
#: chosen inside the failing interval is then the same but for edges closer than this to it.
EDGE_RESOLUTION = 2.0**-24


def _edge(current, k, bad: float, good_side: float, failures, dtype, rounds: int = 70) -> float:
    """The failing value closest to ``good_side`` on the segment from ``bad`` (a search over
    midpoints in magnitude order, :data:`EDGE_LEVELS` levels of them per batch)."""
    if bad == good_side or _fails(current, k, [good_side], failures, dtype)[0]:
        return good_side
    good = good_side
    for _ in range(rounds):
        if abs(bad - good) <= EDGE_RESOLUTION * abs(bad):
            break
        between = _midpoints(bad, good, EDGE_LEVELS, dtype)
        if not between:
            break
        verdicts = _fails(current, k, between, failures, dtype)
        # between runs from bad to good: the failing point nearest good, and the one after it
        last = max((i for i, failed in enumerate(verdicts) if failed), default=-1)
        if last >= 0:
            bad = between[last]
        if last + 1 < len(between):
            good = between[last + 1]
    return bad


def _midpoints(a: float, b: float, levels: int, dtype: torch.dtype) -> list[float]:
    """Midpoints of [a, b] (either order) to ``levels`` levels, in the dtype, ordered from
    ``a`` to ``b``, without the ends or repeats."""
    if levels == 0:
        return []
    middle = float(torch.tensor(_midpoint(a, b, torch.finfo(dtype).tiny), dtype=torch.float64).to(dtype))
    if middle in (a, b):
        return []
    return [*_midpoints(a, middle, levels - 1, dtype), middle, *_midpoints(middle, b, levels - 1, dtype)]


def _midpoint(a: float, b: float, smallest: float = 2.0**-1022) -> float:
    """Midpoint in magnitude order: geometric when both sides share a sign and differ a lot;
    towards 0, ``smallest`` (the dtype's smallest normal number) stands for 0, then halving."""
    if a == 0 or b == 0:
        other = b if a == 0 else a
        if abs(other) > 4 * smallest:
            return math.copysign(math.sqrt(abs(other)) * math.sqrt(smallest), other)
        return other / 2 if abs(other) > 1e-300 else other * 2.0**-64
    if (a > 0) != (b > 0):
        return 0.0
    if max(abs(a), abs(b)) > 4 * min(abs(a), abs(b)):
        return math.copysign(math.sqrt(abs(a)) * math.sqrt(abs(b)), a)
    return a / 2 + b / 2


def _simplest_decimal(lo: float, hi: float, dtype: torch.dtype) -> float | None:
    """The simplest number in [lo, hi], rounded into ``dtype``: the integer nearest zero;
    else the fewest significant decimal digits, nearest to 1 in magnitude among those."""
    if lo <= 0 <= hi:
        return 0.0
    sign = 1.0 if lo > 0 else -1.0
    a, b = sorted((abs(lo), abs(hi)))
    candidates = []
    if math.ceil(a) <= b and math.ceil(a) < 2**53:
        candidates.append(float(math.ceil(a)))
    for digits in range(1, 18):
        # below 1, the largest such number (nearest 1); above, the smallest
        if b < 1:
            exponent = math.floor(math.log10(b)) - digits + 1
            value = Decimal(math.floor(Decimal(b) / Decimal(10) ** exponent)) * Decimal(10) ** exponent
            found = float(value) >= a
        else:
            exponent = math.floor(math.log10(a)) - digits + 1
            value = Decimal(math.ceil(Decimal(a) / Decimal(10) ** exponent)) * Decimal(10) ** exponent
            found = float(value) <= b
        if found:
            candidates.append(float(value))
            break
    for candidate in candidates:
        rounded = float(torch.tensor(sign * candidate, dtype=torch.float64).to(dtype))
        if a <= abs(rounded) <= b:
            return rounded
    return None


# --------------------------------------------------------------------------------------
# Domain inference
# --------------------------------------------------------------------------------------

#: Expressions larger than this (SymPy operation count) skip symbolic domain inference,
#: which can take seconds; points outside the real domain are then rejected numerically.
_MAX_OPS_FOR_SYMBOLIC_DOMAIN = 40


def infer_domain(forward: Any, symbols: Sequence[Any], given: Domain) -> Domain:
    """Narrow ``given`` to where the function is real and continuous, argument by argument.

    Works on functions of one argument symbolically (log: x in [0, inf), atanh: [-1, 1]);
    for the others each argument keeps the given interval and points where the function
    is not real are rejected when drawn. An empty intersection is a :class:`DomainError`.
    """
    import sympy

    intervals = list(given.intervals)
    free = forward.free_symbols if forward is not None else set()
    for k, s in enumerate(symbols):
        if free != {s} or sympy.count_ops(forward) > _MAX_OPS_FOR_SYMBOLIC_DOMAIN:
            continue
        interval = _real_interval(forward, s)
        if interval is None:
            continue
        low, high = interval
        g_low, g_high = intervals[k]
        new_low, new_high = max(low, g_low), min(high, g_high)
        if new_low > new_high:
            raise DomainError(
                f"domain for {s} is [{g_low:g}, {g_high:g}], but the function is real only for {s} in "
                f"[{low:g}, {high:g}]; give an interval inside that range"
            )
        intervals[k] = (new_low, new_high)
    return Domain(given.names, tuple(intervals))


@functools.lru_cache(maxsize=256)
def _real_interval(forward: Any, s: Any) -> tuple[float, float] | None:
    """The hull of where ``forward`` is real and continuous in ``s`` (SymPy can take a
    second: kept per expression), or None where SymPy cannot say."""
    import sympy
    from sympy.calculus.util import continuous_domain

    # log1p, expm1 and their kin are SymPy's codegen functions, which continuous_domain does
    # not know: their rewrites in log and exp it does.
    for form in (forward, forward.rewrite(sympy.log), forward.rewrite(sympy.exp)):
        try:
            region = continuous_domain(form, s, sympy.S.Reals)
            if region.is_empty:
                return None
            return float(region.inf), float(region.sup)
        except Exception:  # noqa: BLE001 - SymPy cannot say (tan: the reals less a lattice): rejection
            continue
    return None


# --------------------------------------------------------------------------------------
# Tensors drawn for a function of tensors
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drawn:
    """An input that a check draws for itself: a tensor of ``shape``.

    Floating tensors get values in ``[low, high]`` where given, else over many magnitudes
    (normal values scaled by 1, 1e-3, 1e3, 10, 1e-8, 1e8, 30 and 0.1, with zeros and ties
    mixed in); ``integers=(low, high)`` draws an integer tensor in ``[low, high)`` (class
    targets, indices), held fixed: it has no gradient.

    >>> import torch, torch.nn.functional as F, autocheck
    >>> report = autocheck.check_grad(F.cross_entropy, autocheck.Drawn((4, 3)),
    ...                               autocheck.Drawn((4,), integers=(0, 3)), seed=0)
    >>> report.ok
    True
    """

    shape: tuple[int, ...]
    low: float | None = None
    high: float | None = None
    integers: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        shape = (self.shape,) if isinstance(self.shape, int) else self.shape
        if not isinstance(shape, (tuple, list)) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise TypeError(f"shape must be a tuple of non-negative ints, got shape={self.shape!r}")
        object.__setattr__(self, "shape", tuple(shape))
        if (self.low is None) != (self.high is None) or (self.low is not None and not self.low < self.high):
            raise ValueError(f"give both low and high, with low < high, or neither; got low={self.low!r}, "
                             f"high={self.high!r}")
        if self.integers is not None and (len(self.integers) != 2 or not self.integers[0] < self.integers[1]):
            raise ValueError(f"integers must be (low, high) with low < high, got integers={self.integers!r}")


#: Scales of the floating values drawn, attempt by attempt.
_SCALES = (1.0, 1e-3, 1e3, 10.0, 1e-8, 1e8, 30.0, 0.1)


def draw_tensors(specs: Sequence[Drawn], attempt: int, generator: torch.Generator, dtype: torch.dtype,
                 device: Any) -> list[torch.Tensor]:
    """One draw of every input: the same for the same generator state and attempt."""
    values = []
    for spec in specs:
        if spec.integers is not None:
            low, high = spec.integers
            values.append(torch.randint(low, high, spec.shape, generator=generator).to(device))
            continue
        if spec.low is not None:
            t = torch.rand(spec.shape, generator=generator, dtype=torch.float64) * (spec.high - spec.low) + spec.low
        else:
            t = torch.randn(spec.shape, generator=generator, dtype=torch.float64) * _SCALES[attempt % len(_SCALES)]
            kind = attempt % 3  # with 8 scales: every kind meets every scale
            if kind == 1 and t.numel():  # zeros sprinkled in
                t = torch.where(torch.rand(spec.shape, generator=generator) < 0.2, 0.0, t)
            elif kind == 2:  # ties: few distinct values
                t = torch.round(t / t.abs().max().clamp(min=1e-300) * 2) * t.abs().max().clamp(min=1e-300) / 2
        values.append(t.to(device=device, dtype=dtype))
    return values


def shrink_tensors(fails: Callable[[list[torch.Tensor]], bool], values: list[torch.Tensor],
                   specs: Sequence[Drawn], budget: int = 96) -> list[torch.Tensor]:
    """Simpler tensors on which ``fails`` still holds: values rounded to one significant
    digit, then blocks of elements set to 0, then to 1, each kept only where the failure
    stays; at most ``budget`` calls of ``fails``."""
    current = [v.clone() for v in values]
    calls = 0

    def attempt(candidate: list[torch.Tensor]) -> bool:
        nonlocal calls, current
        if calls >= budget:
            return False
        calls += 1
        if fails(candidate):
            current = candidate
            return True
        return False

    floating = [k for k, s in enumerate(specs) if s.integers is None]
    for digits in (1, 2, 3):
        rounded = list(current)
        for k in floating:
            rounded[k] = _round_significant(current[k], digits)
        if attempt(rounded):
            break
    for k in floating:
        for fill in (0.0, 1.0):
            size = current[k].numel()
            block = max(size // 2, 1)
            while block >= 1 and calls < budget:
                for start in range(0, size, block):
                    candidate = list(current)
                    flat = candidate[k].clone().reshape(-1)
                    if bool((flat[start:start + block] == fill).all()):
                        continue
                    flat[start:start + block] = fill
                    candidate[k] = flat.reshape(current[k].shape)
                    attempt(candidate)
                block //= 2
    return current


def _round_significant(t: torch.Tensor, digits: int) -> torch.Tensor:
    if not t.numel():
        return t.clone()
    as_list = [float(f"{v:.{digits}g}") for v in t.double().reshape(-1).tolist()]
    return torch.tensor(as_list, dtype=torch.float64).reshape(t.shape).to(device=t.device, dtype=t.dtype)
