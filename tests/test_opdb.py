"""autocheck against torch's own operator database.

torch describes its operators, each with sample inputs, in OpInfo records
(``torch.testing._internal.common_methods_invocations``). For every unary ufunc, binary
ufunc and reduction there that supports autograd in float64 on the CPU, this module traces
the operator on each of its own samples (the sample's tensors are the inputs, its other
arguments are closed over), differentiates exactly and judges autograd on every element
with :func:`autocheck.check_grad`. Operators that cannot be checked are left out with a
reason, and the test of each left-out operator checks that its reason still holds.

``docs/operators.md`` is written from the tables here; regenerate it with::

    python tests/test_opdb.py --write-docs docs/operators.md
"""

from __future__ import annotations

import argparse
import functools
import random
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import autocheck

pytest.importorskip("expecttest", reason="torch's operator database needs expecttest (pip install expecttest)")

from hypothesis import settings  # noqa: E402

_PROFILE = settings.get_current_profile_name()
from torch.testing._internal.common_methods_invocations import (  # noqa: E402
    binary_ufuncs,
    reduction_ops,
    unary_ufuncs,
)

# Importing torch's test utilities loads a Hypothesis profile of theirs ("dev", or
# "pytorch_ci" where CI is set), which every check in this process would then follow.
settings.load_profile(_PROFILE)

import torch_defects  # noqa: E402

DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "operators.md"
WRITE_DOCS = "python tests/test_opdb.py --write-docs docs/operators.md"

#: A function that is not elementwise is traced element by element and its whole Jacobian
#: is built in SymPy, at a cost that grows fast with the number of elements (the std of 8
#: elements takes 4 s, of 27 elements 100 s). Samples of such operators are cut to at most
#: this many entries along every dimension, which keeps each reduction a reduction: every
#: dim, keepdim and mask still applies.
MAX_DIM_SIZE = 2
#: ... and at most this many of their samples are checked, drawn with a fixed seed (the
#: database crosses every shape with every dim, ord and mask: 375 samples for masked.norm).
MAX_SAMPLES = 8

SEED = 0


# --------------------------------------------------------------------------------------
# The operators
# --------------------------------------------------------------------------------------


def _name(op: Any) -> str:
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


def _differentiable_in_float64(op: Any) -> bool:
    return op.supports_autograd and torch.float64 in op.supported_dtypes("cpu")


#: Every operator in scope, by name ("div.floor_rounding" for a variant), with its kind.
OPS: dict[str, tuple[str, Any]] = {
    _name(op): (kind, op)
    for kind, group in (("unary", unary_ufuncs), ("binary", binary_ufuncs), ("reduction", reduction_ops))
    for op in group
    if _differentiable_in_float64(op)
}

#: Operators that are not elementwise although they sit with the ufuncs.
_NOT_ELEMENTWISE = {"nn.functional.prelu"}  # one weight per channel


def _elementwise(name: str) -> bool:
    return OPS[name][0] != "reduction" and name not in _NOT_ELEMENTWISE


# --------------------------------------------------------------------------------------
# Why an operator is left out
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeftOut:
    """Why an operator is not checked.

    ``kind`` is the category shown in the docs. Where autocheck itself stops the check
    (no rule, a bug), ``error`` and ``match`` say what the check of ``sample`` raises, and
    the test asserts that it still does: once it stops, the operator belongs with the
    covered ones.
    """

    kind: str
    detail: str
    error: type[Exception] | None = None
    match: str = ""
    sample: int = 0


COMPLEX = "complex output"
NO_COUNTERPART = "no SymPy counterpart"
NO_RULE = "autocheck has no rule yet"
BUG = "autocheck bug"

LEFT_OUT: dict[str, LeftOut] = {
    "cdouble": LeftOut(COMPLEX, "casts to complex128"),
    "cfloat": LeftOut(COMPLEX, "casts to complex64"),
    "chalf": LeftOut(COMPLEX, "casts to complex32"),
    "complex": LeftOut(COMPLEX, "builds `real + i*imag`"),
    "polar": LeftOut(COMPLEX, "builds `abs*exp(i*angle)`"),
    "nextafter": LeftOut(
        NO_COUNTERPART,
        "the adjacent float64 is a property of the number format, not a function of real numbers "
        "(torch's gradient treats it as `x`); no rule for `prims::nextafter`",
        autocheck.TraceError,
        "prims::nextafter",
    ),
    "nn.functional.rrelu": LeftOut(
        NO_COUNTERPART,
        "random negative slopes in training mode (eval mode is leaky_relu); no rule for `aten::rrelu_with_noise`",
        autocheck.TraceError,
        "aten::rrelu_with_noise",
    ),
    "frexp": LeftOut(NO_RULE, "`prims::frexp` (and an integer exponent output)", autocheck.TraceError, "prims::frexp"),
}


@dataclass(frozen=True)
class Inaccurate:
    """An operator whose gradient in torch is genuinely off: the check must report it."""

    max_rel: float  # a bound just above the largest relative error measured on the samples
    why: str  # the cause, with the measured error


INACCURATE: dict[str, Inaccurate] = {
    "digamma": Inaccurate(
        1e-9, "the backward evaluates trigamma, whose float64 kernel is off by up to 3.6e-10 relative (at x = 2.05)"
    ),
    "nn.functional.hardsigmoid": Inaccurate(
        4e-8, "the float64 backward multiplies by 1/6 rounded to float32 (0.16666667163...): 3.0e-8 relative"
    ),
}

COVERED = [name for name in OPS if name not in LEFT_OUT]


# --------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    index: int  # position among op.sample_inputs(...)
    fn: Callable[..., torch.Tensor]
    tensors: tuple[torch.Tensor, ...]
    text: str  # shapes and closed-over arguments, for messages


def _raw_samples(op: Any) -> list[Any]:
    # OpInfo draws sample values from the global generator: fix it so that the samples,
    # and the counts in the docs, are the same on every run.
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return list(op.sample_inputs("cpu", torch.float64, requires_grad=True))


def _is_input(value: Any) -> bool:
    # Complex tensors count as inputs so that samples with them are left aside, not closed over.
    return isinstance(value, torch.Tensor) and (value.dtype.is_floating_point or value.is_complex())


def _closed_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and not _is_input(value)


def _shrink(value: Any) -> Any:
    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        return value
    return value[tuple(slice(0, MAX_DIM_SIZE) for _ in range(value.ndim))].detach().clone()


_ARITIES: dict[int, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    1: lambda call: lambda x: call(x),
    2: lambda call: lambda x, y: call(x, y),
    3: lambda call: lambda x, y, z: call(x, y, z),
}


def _bind(name: str, op: Any, sample: Any, shrink: bool) -> tuple[Callable[..., Any], tuple[torch.Tensor, ...], str]:
    """The sample as a function of its floating-point tensors, the others closed over."""
    prepare = _shrink if shrink else (lambda v: v.detach() if isinstance(v, torch.Tensor) else v)
    first = prepare(sample.input)
    args = [prepare(a) for a in sample.args]
    kwargs = {k: prepare(v) for k, v in sample.kwargs.items()}
    slots = [("args", i) for i, a in enumerate(args) if _is_input(a)]
    slots += [("kwargs", k) for k, v in kwargs.items() if _is_input(v)]

    def call(x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        a, k = list(args), dict(kwargs)
        for (where, key), value in zip(slots, others):
            if where == "args":
                a[key] = value
            else:
                k[key] = value
        return op.op(x, *a, **k)

    fn = _ARITIES[1 + len(slots)](call)
    fn.__name__ = fn.__qualname__ = name
    tensors = (first, *(args[key] if where == "args" else kwargs[key] for where, key in slots))
    shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
    closed = [_describe(a) for a in args if not _is_input(a)]
    closed += [f"{k}={_describe(v)}" for k, v in kwargs.items() if not _is_input(v)]
    text = f"inputs of shape {shapes}" + (f"; {', '.join(closed)}" if closed else "")
    return fn, tensors, text


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"<{str(value.dtype).removeprefix('torch.')} tensor {tuple(value.shape)}>"
    return repr(value)


@functools.cache
def samples(name: str) -> tuple[Sample, ...]:
    """The samples of one operator that autocheck can judge.

    Left aside: samples with complex, integer or bool inputs (autocheck checks real
    functions), with empty or non-finite inputs, and those outside the real domain: whose
    output is nowhere finite or, where an input element's gradient sums over several
    outputs (broadcasting, reductions), not finite everywhere. Samples of operators that
    are not elementwise are cut to ``MAX_DIM_SIZE`` along every dimension, and at most
    ``MAX_SAMPLES`` of them are kept. A sample that is the same as an earlier one (shapes
    and closed-over arguments) is checked once.
    """
    op = OPS[name][1]
    shrink = not _elementwise(name)
    kept: list[Sample] = []
    seen: set[tuple[str, str]] = set()
    for index, raw in enumerate(_raw_samples(op)):
        if not isinstance(raw.input, torch.Tensor):
            continue
        fn, tensors, text = _bind(name, op, raw, shrink)
        if any(t.dtype != torch.float64 for t in tensors):
            continue
        if any(t.numel() == 0 or not torch.isfinite(t).all() for t in tensors):
            continue
        closed = [_shrink(v) if shrink else v for v in (*raw.args, *raw.kwargs.values()) if _closed_tensor(v)]
        key = (text, repr([v.tolist() for v in closed]))
        if key in seen:
            continue
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn(*tensors)
        if not isinstance(out, torch.Tensor) or out.is_complex():
            continue
        finite = torch.isfinite(out)
        # An element of a broadcast input, or of the input of a reduction, has a gradient
        # that sums over many outputs: one that is not finite leaves nothing to judge.
        whole = shrink or any(t.shape != out.shape for t in tensors)
        if not (finite.all() if whole else finite.any()):
            continue
        seen.add(key)
        kept.append(Sample(index, fn, tensors, text))
    if shrink and len(kept) > MAX_SAMPLES:
        chosen = sorted(random.Random(SEED).sample(range(len(kept)), MAX_SAMPLES))
        kept = [kept[i] for i in chosen]
    return tuple(kept)


def check(sample: Sample) -> autocheck.Report:
    with warnings.catch_warnings():
        # var/std with a correction at least the number of elements warn about it (and
        # return inf, which the check skips).
        warnings.simplefilter("ignore", UserWarning)
        return autocheck.check_grad(sample.fn, *sample.tensors, seed=SEED)


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COVERED)
def test_gradient_matches_the_exact_derivative(name: str):
    chosen = samples(name)
    assert chosen, f"{name}: no sample of torch's database is left to check"
    mismatches: list[tuple[Sample, autocheck.Report]] = []
    for sample in chosen:
        report = check(sample)
        assert report.checked > 0, f"{name}, sample {sample.index} ({sample.text}): no element was judged\n{report}"
        if not report.ok:
            mismatches.append((sample, report))
    text = "\n\n".join(f"{name}, sample {s.index} ({s.text}):\n{r}" for s, r in mismatches)
    known = INACCURATE.get(name)
    if known is None:
        assert not mismatches, text
        return
    assert mismatches, (
        f"{name}: torch's gradient now matches on every sample ({known.why} no longer shows); "
        "remove it from INACCURATE"
    )
    worst = max(r.max_rel for _, r in mismatches)
    assert worst <= known.max_rel, f"{name}: worse than measured ({worst:.3g} > {known.max_rel:.3g} relative)\n{text}"


@pytest.mark.parametrize("name", list(LEFT_OUT))
def test_left_out_for_its_reason(name: str):
    reason = LEFT_OUT[name]
    op = OPS[name][1]
    raw = _raw_samples(op)[reason.sample]
    if reason.kind == COMPLEX:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "ComplexHalf support is experimental"
            assert op.op(raw.input, *raw.args, **raw.kwargs).is_complex(), f"{name} returns a real tensor now"
        return
    assert reason.error is not None, f"{name}: say which error shows that it is left out for {reason.kind}"
    fn, tensors, _ = _bind(name, op, raw, shrink=not _elementwise(name))
    try:
        autocheck.check_grad(fn, *tensors, seed=SEED)
    except reason.error as error:
        assert reason.match and re.search(reason.match, str(error)), str(error)
        return
    pytest.fail(
        f"{name} was left out ({reason.kind}: {reason.detail}) but its sample {reason.sample} checks now: "
        f"delete its LEFT_OUT entry and regenerate the docs ({WRITE_DOCS})"
    )


def test_atan2_backward_at_tiny_inputs_is_reported():
    # torch's atan2 backward divides by x**2 + y**2, which is subnormal below |(y, x)| ~ 1e-154
    # and gives inf where the partials are finite. The database's samples never go there.
    atan2 = OPS["atan2"][1].op
    y = torch.tensor([3e-160, 2.0], dtype=torch.float64)
    x = torch.tensor([4e-160, 1.0], dtype=torch.float64)
    report = autocheck.check_grad(lambda y, x: atan2(y, x), y, x, seed=SEED)
    assert (report.ok, report.failed) == (False, 2), str(report)
    assert report.worst[0].inputs == (3e-160, 4e-160) and report.worst[0].autograd in (-torch.inf, torch.inf)


def _empty_samples() -> list[tuple[str, int]]:
    found = []
    for name in COVERED:
        for index, raw in enumerate(_raw_samples(OPS[name][1])):
            if isinstance(raw.input, torch.Tensor) and raw.input.dtype == torch.float64 and raw.input.numel() == 0:
                found.append((name, index))
    return found


@pytest.mark.parametrize("name, index", _empty_samples())
def test_an_empty_sample_is_checked_or_refused_with_a_clear_error(name: str, index: int):
    # Every input empty: refused. An empty input beside a non-empty one (prelu's weight):
    # the non-empty one's gradient is checked.
    raw = _raw_samples(OPS[name][1])[index]
    fn, tensors, text = _bind(name, OPS[name][1], raw, shrink=not _elementwise(name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            report = autocheck.check_grad(fn, *tensors, seed=SEED)
        except autocheck.NothingChecked as error:
            assert "there is no gradient element to check" in str(error)
            return
    assert report.ok and report.checked == sum(t.numel() for t in tensors), str(report)


# --------------------------------------------------------------------------------------
# The first two samples at their own sizes
# --------------------------------------------------------------------------------------

#: Samples of an operator checked at their own sizes: its first ones in the database,
#: uncut (functions of more than 100 coupled elements go through directional derivatives).
FULL_SIZE_SAMPLES = 2

#: Covered operators whose first samples at their own sizes leave nothing to judge, and why.
FULL_SIZE_REFUSED = {
    "__rpow__": "both samples raise negative numbers to non-integer powers: the forward is nan everywhere",
}


def full_size_samples(name: str) -> list[tuple[int, Callable[..., Any], tuple[torch.Tensor, ...], str]]:
    """The first samples of an operator as they are (empty ones included), as functions of
    their floating-point tensors."""
    op = OPS[name][1]
    found = []
    for index, raw in enumerate(_raw_samples(op)[:FULL_SIZE_SAMPLES]):
        fn, tensors, text = _bind(name, op, raw, shrink=False)
        found.append((index, fn, tensors, text))
    return found


@pytest.mark.parametrize("name", COVERED)
def test_first_two_samples_at_their_own_size(name: str):
    outcomes = []
    for index, fn, tensors, text in full_size_samples(name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                report = autocheck.check_grad(fn, *tensors, seed=SEED)
            except autocheck.NothingChecked as error:
                outcomes.append(("refused", index, text, str(error)))
                continue
        outcomes.append(("ok" if report.ok else "mismatch", index, text, str(report)))
    refused = [o for o in outcomes if o[0] == "refused"]
    mismatched = [o for o in outcomes if o[0] == "mismatch"]
    for _, index, text, message in refused:
        empty = "there is no gradient element to check" in message
        assert empty or name in FULL_SIZE_REFUSED, f"{name}, sample {index} ({text}): nothing judged\n{message}"
    if name in FULL_SIZE_REFUSED:
        assert refused, f"{name}: its first samples check now; remove it from FULL_SIZE_REFUSED"
    if name in INACCURATE:
        return  # the known torch defect may or may not show on these samples
    assert not mismatched, "\n\n".join(f"{name}, sample {i} ({t}):\n{m}" for _, i, t, m in mismatched)


# --------------------------------------------------------------------------------------
# The whole real domain, in every dtype
# --------------------------------------------------------------------------------------

#: Batches per operator and dtype in the whole-domain search (the first holds the special values).
SWEEP_EXAMPLES = 4
SWEPT = [name for name in COVERED if _elementwise(name) and OPS[name][0] != "reduction"]


def _sweep_target(name: str) -> Callable[..., torch.Tensor]:
    raw = next(r for r in _raw_samples(OPS[name][1]) if isinstance(r.input, torch.Tensor))
    return _bind(name, OPS[name][1], raw, False)[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", SWEPT)
def test_whole_domain_fails_only_inside_a_known_torch_defect(name: str, dtype: torch.dtype):
    if dtype not in OPS[name][1].supported_backward_dtypes("cpu"):
        pytest.skip(f"torch has no {dtype} backward for {name} on the CPU")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = autocheck.check_grad(_sweep_target(name), dtype=dtype, seed=SEED, examples=SWEEP_EXAMPLES)
    assert report.checked > 0
    points = [*report.failing, *(row.inputs for row in report.worst if row.failed)]
    unexplained = [p for p in points if not torch_defects.explained(name, dtype, p)]
    assert not unexplained, f"{name} fails outside every listed torch defect at {unexplained[:5]}\n{report}"


@pytest.mark.parametrize("defect", torch_defects.DEFECTS, ids=lambda d: f"{d.ops[0]}-{d.witness.dtype}")
def test_each_listed_torch_defect_is_real_and_reported(defect: torch_defects.Defect):
    w = defect.witness
    assert w.dtype in defect.dtypes and defect.region(w.point, w.dtype)
    exact, got = w.exact_value(), w.autograd()
    rtol, atol = autocheck.DEFAULT_TOLERANCES[w.dtype]
    assert not abs(got - exact) <= atol + rtol * abs(exact), (got, exact)  # nan and inf are wrong too
    inputs = [torch.tensor([p], dtype=w.dtype) for p in w.point]
    report = autocheck.check_grad(w.f, *inputs, seed=SEED)
    assert not report.ok and report.failed >= 1, str(report)


def test_every_left_out_operator_is_in_the_database():
    assert set(LEFT_OUT) <= set(OPS), sorted(set(LEFT_OUT) - set(OPS))
    assert set(INACCURATE) <= set(COVERED), sorted(set(INACCURATE) - set(COVERED))


def test_the_docs_page_is_current():
    expected = render_docs()
    actual = DOCS_PAGE.read_text(encoding="utf-8") if DOCS_PAGE.exists() else ""
    assert actual == expected, f"docs/operators.md is out of date; regenerate it with: {WRITE_DOCS}"


# --------------------------------------------------------------------------------------
# docs/operators.md
# --------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _out_of_scope() -> list[str]:
    """Operators of the same lists without autograd in float64 on the CPU (torch's Python
    references, ``_refs.*``, repeat other entries and are not counted)."""
    return [
        _name(op)
        for group in (unary_ufuncs, binary_ufuncs, reduction_ops)
        for op in group
        if not _differentiable_in_float64(op) and not op.name.startswith("_refs.")
    ]


def _defect_rows() -> list[list[str]]:
    rows = []
    for defect in torch_defects.DEFECTS:
        w = defect.witness
        dtypes = ", ".join(str(d).removeprefix("torch.") for d in defect.dtypes)
        point = ", ".join(repr(torch.tensor(p, dtype=w.dtype).item()) for p in w.point)
        grad = "d/dy" if w.wrt else "d/dx"
        rows.append([", ".join(f"`{op}`" for op in defect.ops), dtypes, defect.where,
                     f"{grad} at ({point}) in {str(w.dtype).removeprefix('torch.')}",
                     f"{w.autograd():.10g}", f"{w.exact_value():.10g}", defect.why])
    return rows


def render_docs() -> str:
    kinds = {kind: sum(1 for k, _ in OPS.values() if k == kind) for kind in ("unary", "binary", "reduction")}
    covered_rows = []
    for name in COVERED:
        known = INACCURATE.get(name)
        result = "matches" if known is None else f"**torch's gradient is off**: {known.why}"
        covered_rows.append([f"`{name}`", OPS[name][0], str(len(samples(name))), result])
    by_kind = sorted(LEFT_OUT.items(), key=lambda item: (item[1].kind, item[0]))
    left_rows = [[f"`{name}`", OPS[name][0], reason.kind, reason.detail] for name, reason in by_kind]
    counts: dict[str, int] = {}
    for reason in LEFT_OUT.values():
        counts[reason.kind] = counts.get(reason.kind, 0) + 1
    left_summary = ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items()))
    outside = _out_of_scope()
    lines = [
        "# Operators",
        "",
        "Which of torch's own operators autocheck checks, on which inputs, and which it leaves out and why.",
        "",
        "torch describes its operators, each with sample inputs, in its OpInfo database",
        "(`torch.testing._internal.common_methods_invocations`). `tests/test_opdb.py` takes every",
        "unary ufunc, binary ufunc and reduction there that supports autograd in float64 on the CPU",
        f"({len(OPS)} operators: {kinds['unary']} unary, {kinds['binary']} binary, {kinds['reduction']} reductions),",
        "traces the operator on each of its samples, differentiates exactly, and judges autograd on",
        "every element with `autocheck.check_grad` at the default float64 tolerance.",
        "",
        f"**{len(COVERED)} operators are checked and {len(LEFT_OUT)} are left out** ({left_summary}).",
        f"On {len(INACCURATE)} of the checked operators torch's own gradient is measurably off, and the",
        "test asserts that autocheck reports it.",
        "",
        "Larger functions of tensors (layers, losses, modules) are checked by directional",
        "derivatives; [](layers.md) lists the operations covered there (convolution, pooling,",
        "norms, softmax, cross_entropy and nll_loss, embedding and indexing, sort/topk/max values,",
        "attention, `einsum`, `linalg.norm`, `det`, `inv`, `solve`, and whatever torch decomposes",
        "into them), with their limits.",
        "",
        f"Each checked operator is also checked at its first {FULL_SIZE_SAMPLES} samples as they are in the database,",
        "uncut and empty ones included (`test_first_two_samples_at_their_own_size`): every one",
        "matches or, for an empty sample, is refused with `NothingChecked`, except the torch defects",
        "listed below and " + ", ".join(f"`{n}` ({why})" for n, why in FULL_SIZE_REFUSED.items()) + ".",
        "",
        "## How the samples are used",
        "",
        "- The sample's floating-point tensors (its input, tensor arguments such as `other`, and",
        "  tensor keyword arguments such as prelu's `weight`) are the inputs; every other argument",
        "  (dims, flags, scalars, masks) is closed over.",
        "- Samples with complex, integer or bool inputs, or with empty or non-finite inputs, are",
        "  left aside, and so are samples outside the real domain: whose output is nowhere finite",
        "  or, where an input element's gradient sums over several outputs (broadcasting,",
        "  reductions), not finite everywhere. Within a sample, elements whose forward value is",
        "  not finite are not judged.",
        "- Operators that are not elementwise (reductions, prelu) are checked on samples cut to at",
        f"  most {MAX_DIM_SIZE} entries along every dimension, since autocheck builds their whole Jacobian in",
        f"  SymPy, and at most {MAX_SAMPLES} of their samples, drawn with a fixed seed, are checked.",
        "- A sample that is the same as an earlier one (shapes and closed-over arguments) is checked once.",
        f"- torch draws the sample values from its generator, seeded to {SEED} here, so the counts",
        "  below are the same on every run.",
        "",
        "## Checked",
        "",
        *_table(["Operator", "Kind", "Samples checked", "Result"], covered_rows),
        "",
        "## Searched over the whole real domain",
        "",
        "Beyond the samples, every elementwise operator above is searched over its whole real domain with",
        f"`autocheck.check_grad(op, dtype=dtype)` in float64, float32, float16 and bfloat16 ({SWEEP_EXAMPLES} batches",
        "of drawn points each, with a fixed seed), with the default tolerance and no reference.",
        "Where torch's gradient is wrong for the code as written, the failing points lie in these regions,",
        "and the test asserts that every failing point does. The exact value at each point was computed",
        "with mpmath from the derivative written out by hand; autograd's value is `x.grad` divided by the",
        "upstream gradient, 0.75.",
        "",
        *_table(["Operator", "dtypes", "Where", "Point", "autograd", "exact", "Why"], _defect_rows()),
        "",
        "## Left out",
        "",
        "Where autocheck itself stops the check (no rule, a bug), the test of the operator asserts",
        "that it still does, so a fix shows up as a failing test that asks to move the operator",
        "to the table above.",
        "",
        *_table(["Operator", "Kind", "Reason", "Detail"], left_rows),
        "",
        f"The same lists hold {len(outside)} more operators without autograd in float64 on the CPU,",
        "which are out of scope: " + ", ".join(f"`{name}`" for name in outside) + ".",
        "",
        "## Regenerating this page",
        "",
        "This page is generated from the tables in `tests/test_opdb.py`, and a test checks that it is current:",
        "",
        "```console",
        f"$ {WRITE_DOCS}",
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/operators.md from torch's operator database.")
    parser.add_argument("--write-docs", metavar="PATH", type=Path, required=True)
    args = parser.parse_args(argv)
    args.write_docs.write_text(render_docs(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
