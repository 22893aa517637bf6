"""Shared timing helper for the benchmark scripts: best-of-N wall time, warm."""

from __future__ import annotations

import platform
import time
from typing import Callable

import torch


def best(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """The best wall time of ``repeat`` calls, after ``warmup`` calls, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(functions: dict[str, Callable[[], object]], repeat: int = 15,
                before_round: Callable[[int], object] | None = None) -> dict[str, list[float]]:
    """Wall times of each function, run in turn ``repeat`` times after one warm-up round: on a
    shared machine, load that comes and goes then lands on all of them alike. ``before_round(k)``
    (untimed) runs before round ``k`` (0 is the warm-up): to give each round fresh inputs."""
    if before_round is not None:
        before_round(0)
    for fn in functions.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for k in range(repeat):
        if before_round is not None:
            before_round(k + 1)
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def machine() -> str:
    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} CPU threads"


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])
