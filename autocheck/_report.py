"""Stage 7: what a check found, as data and as text a person reads at a glance."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ._autograd import Fault
from ._compare import FORWARD_LABEL, MODE_LABELS, Row
from ._judge import LOCATED
from ._oracle import SOURCE_NAMES
from ._trace import function_name

__all__ = ["Report", "build_report", "function_name"]


@dataclass
class Report:
    """The outcome of :func:`autocheck.check_grad`.

    Attributes:
        ok: True when every judged element is within tolerance and autograd's machinery
            passed gradcheck's structural checks.
        checked: number of gradient elements judged (failures and kinks included).
        failed: number of elements outside tolerance.
        skipped: number of elements not judged, by reason.
        kinks: elements accepted at a kink (between the one-sided derivatives).
        max_ulp: largest error in units in the last place of ``dtype``.
        max_rel: largest relative error.
        worst: the worst elements (failures first), at most five. Each row has ``inputs``
            (the point), ``where`` (``"d/dx"``, ``"d/dw[0, 1]"``), ``autograd`` and
            ``expected`` (autograd's derivative and the exact one: per unit of the upstream
            gradient ``upstream`` where the element had its own, else ``x.grad`` and its
            exact value), ``abs_error``, ``rel_error``, ``ulp_error``, ``allowed`` and ``failed``.
        faults: defects of the backward itself (not reentrant, changes saved tensors, ...),
            each with a one-line ``headline`` and its evidence in ``detail``.
        formula: the exact derivative, as text.
        counterexample: on failure, the input values of the simplest failing point, one per parameter.
        failing: the failing points found first (at most 256), each a tuple of input values.
        failed_at_least: ``failed`` is a lower bound: a function of large tensors, checked
            along directions, where the wrong elements were counted by blocks (see the notes).
        modes: the ways of computing derivatives that were judged: ``"rev"`` (reverse mode,
            ``x.grad``), ``"fwd"`` (forward mode, the JVP) and ``"vmap"`` (batched gradients).
        reproduce: one line of Python that replays the failure.
        timed_out: the deadline ended the check before every point was judged.
        exact_values: how the exact values of the judged elements were found, as counts:
            ``"float64"`` (float64 within the error model's bound), ``"rewritten"`` (float64
            in an equivalent form, or long double, within theirs), ``"certified"`` (proven:
            arb ball arithmetic, whose radius shows every digit right, or a magnitude certainly
            beyond float64's range), ``"uncertified"`` (mpmath, or a limit at a point where the
            formula has no value). Empty for a function of large tensors (checked along directions).
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
    worst: list[Row]
    formula: str
    rtol: float
    atol: float
    seed: int | None = None
    counterexample: tuple[Any, ...] | None = None
    reproduce: str = ""
    notes: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    kinks: int = 0
    strict: bool = False
    timed_out: bool = False
    failing: list[tuple[float, ...]] = field(default_factory=list)
    failed_at_least: bool = False
    modes: tuple[str, ...] = ("rev",)
    exact_values: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return format_report(self)

    def format(self) -> str:
        """The report as text: headline, counts, worst points, formula, reproduce line (``str(report)``)."""
        return format_report(self)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (see :meth:`to_json` for the layout)."""
        return {
            "schema": "autocheck.report",
            "version": JSON_VERSION,
            "ok": self.ok,
            "function": self.function,
            "names": list(self.names),
            "dtype": self.dtype,
            "device": self.device,
            "order": self.order,
            "checked": self.checked,
            "failed": self.failed,
            "failed_at_least": self.failed_at_least,
            "modes": list(self.modes),
            "skipped": dict(self.skipped),
            "kinks": self.kinks,
            "max_ulp": _number(self.max_ulp),
            "max_rel": _number(self.max_rel),
            "rtol": self.rtol,
            "atol": self.atol,
            "strict": self.strict,
            "seed": self.seed,
            "formula": self.formula,
            "worst": [_row_data(row) for row in self.worst],
            "counterexample": None if self.counterexample is None else [_value_data(v) for v in self.counterexample],
            "faults": [{"headline": f.headline, "detail": f.detail} for f in self.faults],
            "notes": list(self.notes),
            "reproduce": self.reproduce,
            "timed_out": self.timed_out,
            "exact_values": dict(self.exact_values),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON: an object with ``"schema": "autocheck.report"`` and
        ``"version": 1``, then the attributes above under their names (``worst`` as a list
        of row objects with ``inputs``, ``where``, ``index``, ``autograd``, ``expected``,
        ``upstream``, ``abs_error``, ``rel_error``, ``ulp_error``, ``allowed``, ``failed``:
        values per unit of ``upstream`` where it is given, as in the text; ``faults`` as
        objects with ``headline`` and ``detail``). Numbers that are
        not finite are the strings ``"inf"``, ``"-inf"`` and ``"nan"``, so the text is
        strict JSON; a tensor in ``counterexample`` is a nested list."""
        import json

        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @staticmethod
    def json_schema() -> dict[str, Any]:
        """The JSON Schema (draft 2020-12) that :meth:`to_json`'s output follows."""
        import json
        from importlib import resources

        return json.loads(resources.files("autocheck").joinpath("report.schema.json").read_text(encoding="utf-8"))

    def _repr_html_(self) -> str:
        """The report in a notebook: the text, the headline in green or red."""
        import html

        text = format_report(self).split("\n")
        colour = "#1a7f37" if self.ok else "#cf222e"
        head = f'<strong style="color: {colour}">{html.escape(text[0])}</strong>'
        return f"<pre>{head}\n{html.escape(chr(10).join(text[1:]))}</pre>"


#: The version of :meth:`Report.to_json`'s layout.
JSON_VERSION = 1


def _number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    return value


def _value_data(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_value_data(v) for v in value]
    return _number(value)


def _row_data(row: Row) -> dict[str, Any]:
    return {
        "inputs": [_number(v) for v in row.inputs], "where": row.where,
        "index": list(row.index) if row.index is not None else None,
        "autograd": _number(row.autograd), "expected": _number(row.expected), "upstream": _number(row.upstream),
        "abs_error": _number(row.abs_error), "rel_error": _number(row.rel_error),
        "ulp_error": _number(row.ulp_error), "allowed": _number(row.allowed), "failed": row.failed,
    }


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


def build_report(
    check: Any,
    verdict: Any,
    faults: Sequence[Fault],
    *,
    inputs: Sequence[Any] | None = None,
    counterexample: tuple[float, ...] | None = None,
    domain: Any = None,
    reference: Any = None,
    timed_out: bool = False,
) -> Report:
    """The report of one check from its merged verdict."""
    derivatives = check.derivatives
    tensor_mode = not derivatives.scalar
    names = ("value",) if tensor_mode else tuple(derivatives.names)
    if counterexample is None and verdict.failing:
        counterexample = _simplest(verdict.failing)
    notes = []
    if domain is not None:
        notes.append(f"Domain: {domain.describe()}")
    if verdict.kinks:
        notes.append(
            f"Accepted at kinks: {verdict.kinks} elements where autograd returned a value between the "
            "one-sided derivatives (relu, abs, clamp, max at ties)"
        )
    extreme = _extreme(verdict.worst, check.dtype)
    if extreme:
        notes.append(
            "Note: at the worst failing points the inputs are extreme (beyond the square root of the smallest or "
            f"largest {_dtype_name(check.dtype)} number) and autograd's value is not finite or is zero while the "
            "exact derivative is neither: an intermediate of the backward formula (such as x**2 + y**2) "
            "underflows or overflows there. For a torch built-in, the defect is in torch's backward at those inputs."
        )
    directional = not derivatives.entries and not derivatives.symbols and derivatives.input_shapes
    at_least = bool(directional and verdict.failed and (verdict.block_size > 1 or not verdict.blocks))
    if directional and verdict.failed:
        spread = ""
        if verdict.blocks:
            spread = (f"; {verdict.wrong_blocks} of {verdict.blocks} blocks of the inputs "
                      f"({'one element' if verdict.block_size == 1 else f'up to {verdict.block_size} elements'} "
                      "each) hold a wrong element")
        notes.append(
            "The rows are the elements located by bisection from a failing direction (the worst, up to "
            f"{LOCATED} of them){spread}" + (": the count of mismatched elements is a lower bound" if at_least else "")
        )
    if verdict.precise:
        notes.append(
            "Exact values in arbitrary precision: float64 forward mode overflowed on the way to a finite "
            "derivative along some directions, which were then computed in ball arithmetic (arb)"
        )
    if timed_out:
        notes.append(
            "Stopped at the deadline: the counts above are what was checked in time; pass deadline= "
            "(seconds, or None) to check more"
        )
    report = Report(
        ok=verdict.failed == 0 and not faults,
        function=check.name,
        names=names,
        dtype=_dtype_name(check.dtype),
        device=str(check.device),
        order=derivatives.order,
        checked=verdict.checked,
        failed=verdict.failed,
        skipped=dict(verdict.skipped),
        max_ulp=verdict.max_ulp,
        max_rel=verdict.max_rel,
        worst=_distinct([r for r in verdict.worst if r.failed] or list(verdict.worst)),
        formula=derivatives.formula,
        rtol=check.tol.rtol,
        atol=check.tol.atol,
        seed=check.seed,
        counterexample=tuple(shortest(v, check.dtype) for v in counterexample) if counterexample else None,
        notes=notes,
        faults=list(faults),
        kinks=verdict.kinks,
        strict=check.strict,
        timed_out=timed_out,
        failing=list(verdict.failing),
        failed_at_least=at_least,
        modes=tuple(check.modes),
        exact_values=_exact_values(verdict) if not directional else {},
    )
    if not report.ok:
        report.reproduce = _reproduce(check, inputs, report.counterexample, reference)
    return report


def _distinct(rows: Sequence[Row]) -> list[Row]:
    """The rows with each element once (a point drawn twice, or met in two batches with other
    upstream gradients, is one row: its worst). -0.0 and 0.0 are two points."""
    seen, kept = set(), []
    for row in rows:
        key = (tuple(map(repr, row.inputs)), row.where, row.index)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def _simplest(points: Sequence[tuple[float, ...]]) -> tuple[float, ...]:
    from ._search import simplest

    return simplest(list(points))


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def shortest(value: float, dtype: Any) -> float:
    """The shortest decimal that reads back as the same ``dtype`` value (4.1, not 4.099999904632568)."""
    import torch

    if not math.isfinite(value):
        return value
    for digits in range(1, 18):
        candidate = float(f"{value:.{digits}g}")
        if float(torch.tensor(candidate, dtype=torch.float64).to(dtype)) == value:
            return candidate
    return value


def _extreme(rows: Sequence[Row], dtype: Any) -> bool:
    import torch

    info = torch.finfo(dtype)
    low, high = info.tiny**0.5, info.max**0.5
    for row in rows:
        if not row.failed:
            continue
        magnitudes = [abs(v) for v in row.inputs if v == v]
        extreme = any((0 < m < low) or m > high for m in magnitudes)
        broken = not math.isfinite(row.autograd) or (row.autograd == 0 and row.expected != 0)
        if extreme and broken and math.isfinite(row.expected):
            return True
    return False


#: Elements up to which a reproduce line writes a tensor out.
LITERAL_ELEMENTS = 64


def _tensor_repr(x: Any, dtype: Any) -> str:
    if x.numel() <= LITERAL_ELEMENTS:
        return f"torch.tensor({x.detach().cpu().double().tolist()!r}, dtype={dtype})"
    return f"<tensor of shape {tuple(x.shape)}>"


def _formula(expr: Any) -> str | None:
    """A SymPy expression as a formula ``reference=`` reads back to the same expression, or None."""
    from ._parse import ExpressionError, parse_expression

    text = str(expr)
    try:
        same = parse_expression(text).expr == expr
    except (ExpressionError, TypeError):
        return None
    return text if same else None


def _complex_inputs(tensors: list[str], complex_at: Sequence[bool], inputs: Sequence[Any] | None,
                    counterexample: tuple[float, ...] | None, dtype: Any) -> tuple[list[str], str]:
    """The reproduce line's inputs of a complex function: each pair of parts as one complex tensor."""
    from ._complex import REAL_DTYPE

    complex_dtype = next((c for c, r in REAL_DTYPE.items() if r == dtype), dtype)
    out, k = [], 0
    for is_complex in complex_at:
        if not is_complex:
            out.append(tensors[k] if k < len(tensors) else "x")
            k += 1
            continue
        if inputs is None and counterexample is not None:
            out.append(f"torch.tensor({complex(counterexample[k], counterexample[k + 1])!r}, dtype={complex_dtype})")
        elif k + 1 < len(tensors):
            out.append(f"torch.complex({tensors[k]}, {tensors[k + 1]})")
        k += 2
    return out, str(complex_dtype)


def _reproduce(check: Any, inputs: Sequence[Any] | None, counterexample: tuple[float, ...] | None, reference: Any) -> str:
    """One line that replays the failure. Where the function can be imported (a torch
    function, a module's function, a custom Function's apply) and the inputs are small enough
    to write out, it runs as it is in ``python -c``; otherwise it names ``f`` and the shapes."""
    if inputs is not None:
        tensors = [_tensor_repr(x, check.dtype) for x in inputs]
    elif counterexample is not None:
        tensors = [f"torch.tensor({v!r}, dtype={check.dtype})" for v in counterexample]
    else:
        tensors = []
    dtype = check.dtype
    complex_at = getattr(check.f, "__autocheck_complex__", None)  # a complex function, checked by its parts
    if complex_at is not None:
        tensors, dtype = _complex_inputs(tensors, complex_at, inputs, counterexample, check.dtype)
    options = [f"dtype={dtype}", f"device={str(check.device)!r}", f"seed={check.seed}"]
    if check.derivatives.order != 1:
        options.append(f"order={check.derivatives.order}")
    if check.strict:
        options.append("strict=True")
    if tuple(check.modes) != ("rev",):
        options.append(f"modes={tuple(check.modes)!r}")
    from ._compare import tolerance_for

    if tuple(check.tol) != tuple(tolerance_for(check.dtype, None, None)):
        options.append(f"rtol={check.tol.rtol!r}, atol={check.tol.atol!r}")
    modules = ["torch", "autocheck"]
    if reference is not None:
        found = _importable(reference) if callable(reference) else None
        written = _formula(reference) if not callable(reference) else None
        options.append(f"reference={found[1]}" if found else f"reference={written!r}" if written else "reference=reference")
        modules += [found[0]] if found else []
    module_inputs = getattr(check.f, "__autocheck_module_inputs__", None)  # set by check_module
    if module_inputs is not None:  # its inputs first, then the parameters, which the module holds
        return f"autocheck.assert_module_grads({', '.join(['module', *tensors[:module_inputs], *options])})"
    found = _importable(getattr(check.f, "__autocheck_original__", check.f))
    call = f"autocheck.assert_grad_matches({', '.join([found[1] if found else 'f', *tensors, *options])})"
    pasteable = found is not None and not any(t.startswith("<") for t in tensors) and "reference=reference" not in options
    if not pasteable:
        return call
    imports = ", ".join(dict.fromkeys([*modules, found[0]]))
    return f"import {imports}; {call}"


def _importable(f: Any) -> tuple[str, str] | None:
    """``(module to import, expression)`` that gives back ``f`` itself in a fresh process, or None
    (a lambda, a function defined inside another, one defined in ``__main__``)."""
    import importlib

    owner = getattr(f, "__self__", None)
    if isinstance(owner, type):  # Function.apply: through its class
        module, path = owner.__module__, f"{owner.__qualname__}.{f.__name__}"
    else:
        module, path = getattr(f, "__module__", None), getattr(f, "__qualname__", None)
    if not module or not path or "<" in path or module == "__main__":
        return None
    if module.startswith("torch") and not isinstance(owner, type):  # its public name: torch.nn.functional.gelu
        from ._trace import public_torch_name

        public = public_torch_name(f)
        if public is not None:
            module, _, path = public.rpartition(".")
    try:
        value: Any = importlib.import_module(module)
        for part in path.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError):
        return None
    if value is not f and value != f:
        return None
    return module, f"{module}.{path}"


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    if value != value:
        return "nan"
    if value in (math.inf, -math.inf):
        return "inf" if value > 0 else "-inf"
    if value == int(value) and abs(value) < 1e15:
        return f"{value:.1f}"
    return f"{value:.9g}"


def _fmt_err(value: float) -> str:
    if value != value or value == math.inf:
        return "inf"
    return f"{value:.3g}"


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  " + "  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return lines


def _where(row: Row) -> str:
    """``d/dx[2, 7]``, and ``d/dx[2, 7], forward mode`` for forward mode's derivative (the mode
    after the index)."""
    mode = next((m for m in MODE_LABELS if row.where.endswith(m)), "")
    base = row.where.removesuffix(mode)
    return base + (f"[{', '.join(map(str, row.index))}]" if row.index else "") + mode


def points_table(report: Report) -> list[str]:
    header = [*report.names, "grad", "autograd", "exact", "abs err", "rel err", "ULP"]
    rows = []
    for row in report.worst:
        inputs = [_fmt(v) if v == v else "" for v in row.inputs] + [""] * (len(report.names) - len(row.inputs))
        rows.append([*inputs[: len(report.names)], _where(row), _fmt(row.autograd), _fmt(row.expected),
                     _fmt_err(row.abs_error), _fmt_err(row.rel_error), _fmt_err(row.ulp_error)])
    return table(rows, header)


def _exact_values(verdict: Any) -> dict[str, int]:
    beyond = {name: verdict.sources.get(name, 0) for name in SOURCE_NAMES.values()}
    return {"float64": max(verdict.checked - sum(beyond.values()), 0), **beyond}


def _sources_line(counts: dict[str, int]) -> str | None:
    """Where float64 did not settle every exact value: how the others were found."""
    if not any(counts.get(name) for name in SOURCE_NAMES.values()):
        return None
    parts = [(counts.get("float64", 0), "in float64 within its error bound"),
             (counts.get("rewritten", 0), "in an equivalent form or long double"),
             (counts.get("certified", 0), "certified (arb ball arithmetic, or proven beyond float64's range)"),
             (counts.get("uncertified", 0), "from mpmath or a limit (not certified)")]
    return "Exact values: " + ", ".join(f"{n:,} {how}" for n, how in parts if n)


def format_report(report: Report) -> str:
    """The report as text: headline, counts, worst points, formula, reproduce line."""
    kind = "gradient" if report.order == 1 else f"order-{report.order} derivative"
    total = report.checked
    named = [name for mode, name in (("rev", "reverse"), ("fwd", "forward"), ("vmap", "vmap")) if mode in report.modes]
    modes = "" if tuple(report.modes) == ("rev",) else f", {' and '.join(named)} mode"
    where = f"({report.dtype}, {report.device}{', strict' if report.strict else ''}{modes})"
    lines = []
    if report.ok:
        lines.append(f"{kind} of {report.function} matches the exact derivative {where}")
    else:
        lines.append(f"{kind} of {report.function} does not match the exact derivative {where}")
    for fault in report.faults:
        lines.append(f"{fault.headline[0].upper()}{fault.headline[1:]}: {fault.detail}")
    if report.failed or not report.ok:
        share = 100.0 * report.failed / max(total, 1)
        count = f"at least {report.failed}" if report.failed_at_least else f"{report.failed}"
        lines.append(f"Mismatched elements: {count} / {total} ({share:.1f}%) (up to 0 allowed)")
    if report.worst and report.failed:
        top = report.worst[0]
        at = ", ".join(f"{n} = {_fmt(v)}" for n, v in zip(report.names, top.inputs) if v == v)
        ulps = f", {_fmt_err(top.ulp_error)} ULP" if top.ulp_error == top.ulp_error else ""
        lines.append(
            f"Greatest difference: {_fmt_err(top.abs_error)} absolute{ulps} ({_fmt_err(top.rel_error)} relative) in "
            f"{_where(top)}{f' at {at}' if at else ''} (up to {_fmt_err(top.allowed)} allowed)"
        )
    lines.append(f"Tolerance: rtol={report.rtol:.3g} of the rounding error a correct autograd may make, "
                 f"atol={report.atol:.3g}")
    skipped = sum(report.skipped.values())
    if skipped:
        reasons = ", ".join(f"{n} {why}" for why, n in report.skipped.items() if n)
        lines.append(f"Checked {total} elements; skipped {skipped} ({reasons})")
    else:
        lines.append(f"Checked {total} elements")
    sources = _sources_line(report.exact_values)
    if sources:
        lines.append(sources)
    if report.worst:
        lines.append("Worst points:" if report.ok else "Failing points (worst first):")
        lines += points_table(report)
        directional = report.formula.startswith(("<v, J u>", "u^T H w"))
        forward = not directional and any(row.where.endswith(FORWARD_LABEL) for row in report.worst)
        if any(row.upstream for row in report.worst if not row.where.endswith(FORWARD_LABEL)):
            lines.append("  (backward ran with random upstream gradients v, |v| in [0.5, 0.9]; the autograd column "
                         "is x.grad / v, and the errors are per unit of v)")
        if forward:
            lines.append("  (forward mode: the inputs carried random tangents t, |t| in [0.5, 0.9]; a row of one input "
                         "shows the JVP / t, a jvp row the JVP itself)")
    lines.append(f"Exact derivative: {report.formula}")
    if not report.ok and report.counterexample and all(isinstance(v, float) for v in report.counterexample):
        at = ", ".join(f"{n} = {_fmt(v)}" for n, v in zip(report.names, report.counterexample))
        lines.append(f"Counterexample (the simplest failing input found): {at}")
    lines += report.notes
    if report.seed is not None:
        lines.append(f"Seed: {report.seed}")
    if not report.ok and report.reproduce:
        lines.append(f"Reproduce: {report.reproduce}")
    return "\n".join(lines)
