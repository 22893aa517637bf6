"""The search: region-limited bugs found with default settings and shrunk to short numbers;
domains inferred from the expression; the same seed gives the same counterexample."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import sympy
import torch

import autocheck
from autocheck._search import Domain, infer_domain, parse_domain


def wrong_where(condition, forward=torch.sin, derivative=torch.cos):
    """``forward`` with a backward that is off by 0.1% where ``condition(x)`` holds."""

    class Regional(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return forward(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            exact = derivative(x)
            return grad * torch.where(condition(x), exact * 1.001, exact)

    return Regional.apply


REGIONS = {
    # name: (condition, forward, derivative, check of the counterexample)
    "x > 709": (lambda x: x > 709, torch.sin, torch.cos, lambda v: v == 710.0),
    "x > 20": (lambda x: x > 20, torch.sin, torch.cos, lambda v: v == 21.0),
    "4 < |x| < 4.6": (lambda x: (x.abs() > 4) & (x.abs() < 4.6), torch.sin, torch.cos, lambda v: abs(v) in (4.1,)),
    "x = 0": (lambda x: x == 0, torch.sin, torch.cos, lambda v: v == 0.0),
    "|x| < 1e-200": (lambda x: (x != 0) & (x.abs() < 1e-200), torch.sin, torch.cos, lambda v: 0 < abs(v) < 1e-200 and len(repr(abs(v))) <= 6),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("region", list(REGIONS))
def test_region_limited_bug_is_found_and_shrunk(region, dtype):
    condition, forward, derivative, readable = REGIONS[region]
    if region == "|x| < 1e-200" and dtype == torch.float32:
        pytest.skip("float32 has no numbers below 1e-45")
    buggy = wrong_where(condition, forward, derivative)
    with pytest.raises(autocheck.GradientMismatch) as caught:
        autocheck.assert_grad_matches(buggy, reference=forward, dtype=dtype, seed=2024)
    (value,) = caught.value.counterexample
    assert readable(value), f"counterexample {value!r} is not the short number expected for {region}"
    assert "Reproduce: autocheck.assert_grad_matches(f, torch.tensor(" in str(caught.value)


def test_counterexample_is_printed_and_replays():
    buggy = wrong_where(lambda x: x > 20)
    with pytest.raises(autocheck.GradientMismatch) as caught:
        autocheck.assert_grad_matches(buggy, reference=torch.sin, seed=5)
    assert caught.value.counterexample == (21.0,)
    assert "torch.tensor(21.0, dtype=torch.float64)" in str(caught.value)
    replay = autocheck.check_grad(buggy, torch.tensor([21.0], dtype=torch.float64), reference=torch.sin, seed=5)
    assert not replay.ok


SCRIPT = """
import torch, autocheck
class F(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.where((x > 3) & (x < 3.5), 1.01 * torch.cos(x), torch.cos(x))
report = autocheck.check_grad(F.apply, reference=torch.sin, seed=77)
print(report.counterexample, report.failed, report.checked)
"""


def test_same_seed_gives_same_counterexample_in_two_processes(tmp_path):
    runs = [
        subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert runs[0].startswith("(3.")


# --------------------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------------------

x = sympy.Symbol("x", real=True)
EVERYWHERE = Domain(("x",), ((-math.inf, math.inf),))

INFERRED = [
    (sympy.log(x), (0.0, math.inf)),
    (sympy.sqrt(x), (0.0, math.inf)),
    (sympy.atanh(x), (-1.0, 1.0)),
    (sympy.acosh(x), (1.0, math.inf)),
    (sympy.asin(x), (-1.0, 1.0)),
    (sympy.acos(x), (-1.0, 1.0)),
    (sympy.log(1 - x**2), (-1.0, 1.0)),
    (sympy.sqrt(1 - x), (-math.inf, 1.0)),
    (sympy.log(x - 2), (2.0, math.inf)),
    (x**2 * sympy.exp(x), (-math.inf, math.inf)),
    (sympy.sin(x), (-math.inf, math.inf)),
    (1 / x, (-math.inf, math.inf)),
    (sympy.tanh(x), (-math.inf, math.inf)),
    (sympy.log(x) + sympy.sqrt(3 - x), (0.0, 3.0)),
    (sympy.log(x + 5), (-5.0, math.inf)),
    (sympy.asinh(x), (-math.inf, math.inf)),
]


@pytest.mark.parametrize("expr, interval", INFERRED, ids=[str(e) for e, _ in INFERRED])
def test_domain_is_inferred(expr, interval):
    assert infer_domain(expr, [x], EVERYWHERE).intervals == (interval,)


def test_given_domain_narrows_inferred_one():
    given = parse_domain({"x": (-5.0, 0.5)}, ["x"])
    assert infer_domain(sympy.log(x), [x], given).intervals == ((0.0, 0.5),)


@pytest.mark.parametrize(
    "f",
    [torch.log, torch.sqrt, torch.atanh, lambda x: 1 / x, torch.asin],
    ids=["log", "sqrt", "atanh", "reciprocal", "asin"],
)
def test_restricted_domains_never_fail_for_lack_of_inference(f):
    report = autocheck.assert_grad_matches(f, seed=3, examples=4)
    assert report.checked > 1000


def test_acosh_passes_where_torch_backward_does_not_overflow():
    # torch computes 1/sqrt(x**2 - 1): x**2 overflows above ~1e154 (a torch defect, reported as such).
    report = autocheck.assert_grad_matches(torch.acosh, domain=(1.0, 1e150), seed=3, examples=4)
    assert report.checked > 1000


def test_erfinv_passes_with_its_special_function_reference():
    report = autocheck.assert_grad_matches(torch.erfinv, seed=3, examples=2)
    assert report.checked > 100


def test_domain_by_name_list_and_interval():
    assert parse_domain({"y": (0.0, 1.0)}, ["x", "y"]).intervals == ((-math.inf, math.inf), (0.0, 1.0))
    assert parse_domain([(0.0, 1.0), (2.0, 3.0)], ["x", "y"]).intervals == ((0.0, 1.0), (2.0, 3.0))
    assert parse_domain((0.0, 1.0), ["x", "y"]).intervals == ((0.0, 1.0), (0.0, 1.0))


def test_domain_with_unknown_name_is_refused():
    with pytest.raises(autocheck.DomainError, match=r"domain names 'z', which is not a parameter .*x, y"):
        parse_domain({"z": (0.0, 1.0)}, ["x", "y"])


def test_domain_of_wrong_length_is_refused():
    with pytest.raises(autocheck.DomainError, match=r"domain has 1 intervals but the function has 2 parameters"):
        parse_domain([(0.0, 1.0)], ["x", "y"])


def test_points_are_drawn_inside_the_domain():
    report = autocheck.check_grad(torch.sin, domain=(0.25, 0.5), seed=0, examples=4)
    assert report.ok
    assert all(0.25 <= p.inputs[0] <= 0.5 for p in report.worst)


# --------------------------------------------------------------------------------------
# Strategies for users
# --------------------------------------------------------------------------------------


def test_strategies_points_are_tensors_in_the_domain():
    from hypothesis import given, settings

    seen = []

    @settings(max_examples=30, deadline=None)
    @given(autocheck.strategies.points(torch.log, shape=(4,), dtype="float32"))
    def check(point):
        (value,) = point
        assert value.dtype == torch.float32 and value.shape == (4,)
        assert bool((value >= 0).all())
        seen.append(value)

    check()
    assert len(seen) == 30


def test_strategies_tensors_respect_bounds_and_device():
    from hypothesis import given, settings

    @settings(max_examples=20, deadline=None)
    @given(autocheck.strategies.tensors((2, 3), -1.0, 1.0, dtype=torch.bfloat16, device="cpu"))
    def check(t):
        assert t.shape == (2, 3) and t.dtype == torch.bfloat16
        assert bool((t.abs() <= 1).all())

    check()


def test_the_edge_of_a_failing_interval_is_found_to_its_resolution_in_few_batches():
    from autocheck import _search

    batches = []

    def failures(columns):
        batches.append(len(columns[0]))
        return columns[0] > 20.5

    edge = _search._edge([1e300], 0, 1e300, 0.0, failures, torch.float64)  # from far out towards 0
    assert 20.5 < edge <= 20.5 * (1 + _search.EDGE_RESOLUTION)
    assert max(batches) == 2**_search.EDGE_LEVELS - 1 and len(batches) <= 20


def test_midpoints_run_from_one_end_to_the_other_in_magnitude_order():
    from autocheck import _search

    points = _search._midpoints(1e-10, 1e10, 2, torch.float64)
    assert points == pytest.approx([1e-5, 1.0, 1e5], rel=1e-12)
    assert _search._midpoints(1.0, 1.0, 4, torch.float64) == []
