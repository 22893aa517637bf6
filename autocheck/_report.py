"""Stage 7: what a check found, as data and as text a person reads at a glance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Point:
    """One judged gradient element."""

    inputs: tuple[float, ...]  # the input values (one per parameter; tensor mode: the element's own inputs)
    where: str  # which gradient: "d/dx", "d/dw[0, 1]", ...
    autograd: float
    exact: float
    abs_error: float
    rel_error: float
    ulp_error: float
    allowed: float


@dataclass
class Report:
    """The outcome of :func:`autocheck.check_grad`.

    Attributes:
        ok: True when every judged element is within tolerance.
        checked: number of gradient elements judged.
        failed: number of elements outside tolerance.
        skipped: number of elements not judged, by reason.
        max_ulp: largest error in units in the last place of ``dtype``.
        max_rel: largest relative error.
        worst: the worst points (failures first), at most ``max_rows``.
        formula: the exact derivative, as text.
        counterexample: on failure, the input values of the simplest failing point, one per parameter.
        reproduce: one line of Python that replays the failure.
    """

    ok: bool
    function: str
    names: tuple[str, ...]
    dtype: str
    device: str
    order: int
    checked: int
    failed: int
    skipped: dict[str, int]
    max_ulp: float
    max_rel: float
    worst: list[Point]
    formula: str
    rtol: float
    atol: float
    seed: int | None = None
    counterexample: tuple[Any, ...] | None = None
    reproduce: str = ""
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return format_report(self)


def _fmt(value: float) -> str:
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if value == int(value) and abs(value) < 1e15:
        return f"{value:.1f}"
    return f"{value:.9g}"


def _fmt_err(value: float) -> str:
    if value != value or value == float("inf"):
        return "inf"
    return f"{value:.3g}"


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  " + "  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return lines


def points_table(report: Report) -> list[str]:
    header = [*report.names, "grad", "autograd", "exact", "abs err", "rel err", "ULP"]
    rows = []
    for p in report.worst:
        inputs = [_fmt(v) for v in p.inputs] + [""] * (len(report.names) - len(p.inputs))
        rows.append(
            [*inputs[: len(report.names)], p.where, _fmt(p.autograd), _fmt(p.exact),
             _fmt_err(p.abs_error), _fmt_err(p.rel_error), _fmt_err(p.ulp_error)]
        )
    return table(rows, header)


def format_report(report: Report) -> str:
    """The report as text: headline, counts, worst points, formula, reproduce line."""
    kind = "gradient" if report.order == 1 else f"order-{report.order} derivative"
    total = report.checked
    lines = []
    if report.ok:
        lines.append(f"{kind} of {report.function} matches the exact derivative ({report.dtype}, {report.device})")
    else:
        lines.append(f"{kind} of {report.function} does not match the exact derivative ({report.dtype}, {report.device})")
        share = 100.0 * report.failed / max(total, 1)
        lines.append(f"Mismatched elements: {report.failed} / {total} ({share:.1f}%) (up to 0 allowed)")
    if report.worst:
        top = report.worst[0]
        at = ", ".join(f"{n} = {_fmt(v)}" for n, v in zip(report.names, top.inputs))
        lines.append(
            f"Greatest difference: {_fmt_err(top.abs_error)} absolute, {_fmt_err(top.ulp_error)} ULP "
            f"({_fmt_err(top.rel_error)} relative) in {top.where} at {at} (up to {_fmt_err(top.allowed)} allowed)"
        )
    lines.append(
        f"Tolerance: rtol={report.rtol:.3g} of the size of the derivative's terms, atol={report.atol:.3g}"
    )
    skipped = sum(report.skipped.values())
    if skipped:
        reasons = ", ".join(f"{n} {why}" for why, n in report.skipped.items() if n)
        lines.append(f"Checked {total} elements; skipped {skipped} ({reasons})")
    else:
        lines.append(f"Checked {total} elements")
    if report.worst:
        lines.append("Worst points:" if report.ok else "Failing points (worst first):")
        lines += points_table(report)
    lines.append(f"Exact derivative: {report.formula}")
    lines += report.notes
    if report.seed is not None:
        lines.append(f"Seed: {report.seed}")
    if not report.ok and report.reproduce:
        lines.append(f"Reproduce: {report.reproduce}")
    return "\n".join(lines)
