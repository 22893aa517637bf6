"""assert_grad_matches / check_grad: each class of gradient bug is caught with a readable
message, correct functions pass in every dtype, and bad input gets a clear error."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import autocheck
from autocheck import _compare

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
F64 = torch.float64


def function(forward, backward):
    """A custom autograd Function from a forward and a hand-written backward."""

    class Custom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            ctx.save_for_backward(*inputs)
            return forward(*inputs)

        @staticmethod
        def backward(ctx, grad):
            return backward(grad, *ctx.saved_tensors)

    return Custom.apply


def grid(*values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


POINTS = grid(-3.0, -1.5, -0.25, 0.5, 1.0, 2.5)


# --------------------------------------------------------------------------------------
# Each class of bug is caught
# --------------------------------------------------------------------------------------

BUGS = {
    "sign error": (
        function(lambda x: x * x * torch.exp(x), lambda g, x: g * (2 * x * torch.exp(x) - x * x * torch.exp(x))),
        lambda x: x * x * torch.exp(x),
    ),
    "missing factor": (
        function(lambda x: torch.sin(2 * x), lambda g, x: g * torch.cos(2 * x)),
        lambda x: torch.sin(2 * x),
    ),
    "ignored upstream gradient": (
        function(torch.sin, lambda g, x: torch.cos(x)),
        torch.sin,
    ),
    "wrong formula": (
        function(torch.tanh, lambda g, x: g * (1 - x * x)),
        torch.tanh,
    ),
    "wrong only for x < 0": (
        function(torch.sin, lambda g, x: g * torch.where(x < 0, -torch.cos(x), torch.cos(x))),
        torch.sin,
    ),
    "off by 1e-4 relative": (
        function(torch.exp, lambda g, x: g * torch.exp(x) * (1 + 1e-4)),
        torch.exp,
    ),
}


@pytest.mark.parametrize("name", list(BUGS))
def test_bug_is_caught_at_given_points(name):
    buggy, definition = BUGS[name]
    with pytest.raises(autocheck.GradientMismatch, match="Mismatched elements: [1-9][0-9]* / 6"):
        autocheck.assert_grad_matches(buggy, POINTS, reference=definition, seed=0)


@pytest.mark.parametrize("name", list(BUGS))
def test_bug_is_caught_without_inputs(name):
    buggy, definition = BUGS[name]
    report = autocheck.check_grad(buggy, reference=definition, seed=1, examples=5)
    assert not report.ok
    assert report.counterexample is not None


def test_swapped_partials_of_two_input_op():
    def backward(g, y, x):
        r = x * x + y * y
        return g * (-y / r), g * (x / r)  # the partials of atan2(y, x), in the wrong order

    buggy = function(torch.atan2, backward)
    y, x = grid(0.5, -1.0, 2.0), grid(1.5, 0.75, -3.0)
    with pytest.raises(autocheck.GradientMismatch, match=r"d/dy"):
        autocheck.assert_grad_matches(buggy, y, x, reference=lambda y, x: torch.atan2(y, x), seed=0)


def test_wrong_only_at_order_two_passes_order_one_and_fails_order_two():
    # The backward is right, but built from detached values: its own derivative is lost.
    cube = function(lambda x: x**3, lambda g, x: g * 3 * x.detach() ** 2)
    autocheck.assert_grad_matches(cube, POINTS, reference=lambda x: x**3, seed=0)
    with pytest.raises(autocheck.GradientMismatch, match="order-2 derivative"):
        autocheck.assert_grad_matches(cube, POINTS, reference=lambda x: x**3, order=2, seed=0)


def test_float32_backward_computed_through_float16_is_caught():
    lossy = function(torch.sin, lambda g, x: (g * torch.cos(x)).half().float())
    x = torch.linspace(-3, 3, 101, dtype=torch.float32)
    with pytest.raises(autocheck.GradientMismatch, match=r"\(float32, cpu\)"):
        autocheck.assert_grad_matches(lossy, x, reference=torch.sin, seed=0)


def test_where_trap_nan_is_reported():
    f = lambda x: torch.where(x > 0, torch.sqrt(x), 0.0)  # noqa: E731
    with pytest.raises(autocheck.GradientMismatch) as caught:
        autocheck.assert_grad_matches(f, grid(-1.0, 0.0, 4.0), seed=0)
    message = str(caught.value)
    assert "nan" in message
    assert caught.value.report.failed == 2  # x = -1 and x = 0; at x = 4 the gradient is right


# --------------------------------------------------------------------------------------
# Correct functions pass
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_x2_exp_passes_in_every_dtype(dtype, device):
    report = autocheck.assert_grad_matches(lambda x: x * x * torch.exp(x), dtype=dtype, device=device, seed=3, examples=8)
    assert report.ok and report.checked > 1000
    assert report.dtype == str(dtype).removeprefix("torch.")


@pytest.mark.parametrize(
    "f",
    [torch.relu, torch.abs, lambda x: x.clamp(min=0.0), lambda x: torch.maximum(x, torch.zeros_like(x))],
    ids=["relu", "abs", "clamp", "maximum"],
)
def test_kinks_at_zero_pass(f):
    report = autocheck.assert_grad_matches(f, grid(-1.0, 0.0, -0.0, 2.0), seed=0)
    assert report.ok


def test_max_at_ties_passes():
    report = autocheck.assert_grad_matches(lambda x: x.max(), grid(1.0, 1.0, 0.0), seed=0)
    assert report.ok


def test_ill_conditioned_function_passes():
    autocheck.assert_grad_matches(lambda x: torch.sin(1e5 * x), seed=0, examples=8)


@pytest.mark.parametrize("f", [torch.log, torch.sqrt], ids=["log", "sqrt"])
def test_restricted_domain_passes(f):
    report = autocheck.assert_grad_matches(f, seed=0, examples=8)
    assert report.ok and report.checked > 1000


def test_atan2_passes():
    y, x = torch.meshgrid(grid(-3.0, -0.5, 0.0, 0.25, 2.0), grid(-2.0, -1e-3, 0.5, 4.0), indexing="ij")
    autocheck.assert_grad_matches(torch.atan2, y.reshape(-1), x.reshape(-1), seed=0)


def test_torch_atan2_defect_at_extreme_inputs_is_reported_as_such():
    # torch's atan2 backward divides by y**2 + x**2, which underflows below ~1e-154 and
    # overflows above ~1e154 (NOTES).
    report = autocheck.check_grad(torch.atan2, seed=0, examples=8)
    assert not report.ok
    assert any(0 < abs(v) < 1e-150 or abs(v) > 1e150 for v in report.counterexample)
    assert "the defect is in torch's backward at those inputs" in str(report)


def test_regression_loss_at_given_tensors():
    x = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64)
    y = 2 * x + 3
    loss = lambda w, b: 0.5 * ((x.mm(w) + b.expand_as(y) - y) ** 2).sum()  # noqa: E731
    report = autocheck.assert_grad_matches(loss, torch.tensor([[0.5]], dtype=F64), torch.tensor([0.25], dtype=F64), seed=0)
    assert report.ok and report.checked == 2


# --------------------------------------------------------------------------------------
# The report and the message
# --------------------------------------------------------------------------------------


def test_failure_message_has_headline_counts_table_formula_and_reproduce_line():
    buggy, definition = BUGS["sign error"]
    with pytest.raises(autocheck.GradientMismatch) as caught:
        autocheck.assert_grad_matches(buggy, POINTS, reference=definition, seed=7)
    message = str(caught.value)
    assert message.startswith("gradient of ")
    assert "does not match the exact derivative (float64, cpu)" in message
    assert "(up to 0 allowed)" in message
    assert "autograd" in message and "exact" in message and "ULP" in message
    assert "Exact derivative: d/dx = x**2*exp(x) + 2*x*exp(x)" in message
    assert "autocheck.assert_grad_matches(" in message and "torch.tensor([" in message and "seed=7" in message


def test_gradient_mismatch_is_an_assertion_error_named_autocheck():
    assert issubclass(autocheck.GradientMismatch, AssertionError)
    assert autocheck.GradientMismatch.__module__ == "autocheck"


def test_check_grad_returns_a_report_instead_of_raising():
    buggy, definition = BUGS["missing factor"]
    report = autocheck.check_grad(buggy, POINTS, reference=definition, seed=0)
    assert not report.ok and not bool(report)
    assert report.failed == 6 and report.checked == 6
    assert report.worst[0].where == "d/dx"


def test_same_seed_same_verdict_and_counterexample():
    buggy, definition = BUGS["wrong only for x < 0"]
    first = autocheck.check_grad(buggy, reference=definition, seed=11, examples=5)
    second = autocheck.check_grad(buggy, reference=definition, seed=11, examples=5)
    assert first.counterexample == second.counterexample
    assert first.failed == second.failed


# --------------------------------------------------------------------------------------
# The user's tensors are never touched
# --------------------------------------------------------------------------------------


def test_user_tensors_and_grad_are_untouched():
    x = torch.tensor([0.5, -1.0, 2.0], dtype=F64, requires_grad=True)
    x.grad = torch.tensor([7.0, 8.0, 9.0], dtype=F64)
    w = torch.tensor([1.5, 2.5, -0.5], dtype=F64)
    before_x, before_grad, before_w = x.detach().clone(), x.grad.clone(), w.clone()
    autocheck.assert_grad_matches(lambda x, w: (x * w).exp(), x, w, seed=0)
    assert torch.equal(x.detach(), before_x) and torch.equal(x.grad, before_grad)
    assert torch.equal(w, before_w) and w.grad is None and not w.requires_grad
    assert x.requires_grad


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_non_callable_is_refused():
    with pytest.raises(TypeError, match=r"f must be a function of tensors .* got f=3"):
        autocheck.assert_grad_matches(3)


def test_wrong_number_of_inputs_is_refused():
    with pytest.raises(TypeError, match=r"f takes 2 inputs \(x, y\) but 1 were given"):
        autocheck.assert_grad_matches(lambda x, y: x * y, grid(1.0))


def test_integer_tensor_is_refused():
    with pytest.raises(TypeError, match=r"input 0 \(x\) is an integer tensor \(torch.int64\).*x.double\(\)"):
        autocheck.assert_grad_matches(lambda x: x * x, torch.tensor([1, 2]))


def test_complex_tensor_is_checked_by_parts_and_refused_where_derivative_is_asked():
    assert autocheck.assert_grad_matches(lambda x: x * x, torch.tensor([1 + 2j]), seed=0).checked == 2
    with pytest.raises(TypeError, match=r"input 0 is a complex tensor \(torch.complex64\): derivative\(\) takes real"):
        autocheck.derivative(lambda x: x * x, torch.tensor([1 + 2j]))


def test_rtol_without_atol_is_refused():
    with pytest.raises(ValueError, match=r"rtol=1e-06 was given without atol"):
        autocheck.assert_grad_matches(torch.sin, rtol=1e-6)


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match=r"dtype must be one of float64, float32, float16, bfloat16.*dtype='float8'"):
        autocheck.assert_grad_matches(torch.sin, dtype="float8")


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match=r"device must be 'cpu', 'cuda'.*device='gpu0'"):
        autocheck.assert_grad_matches(torch.sin, device="gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_without_gpu_is_refused():
    with pytest.raises(ValueError, match=r"CUDA is not available on this machine; use device='cpu'"):
        autocheck.assert_grad_matches(torch.sin, device="cuda")


def test_domain_outside_the_function_is_refused():
    with pytest.raises(autocheck.DomainError, match=r"real only for x in \[0, inf\]"):
        autocheck.assert_grad_matches(torch.log, domain=(-5.0, -1.0))


def test_empty_domain_is_refused():
    with pytest.raises(autocheck.DomainError, match=r"domain for x is empty: \(2.0, 1.0\)"):
        autocheck.assert_grad_matches(torch.sin, domain={"x": (2.0, 1.0)})


def test_reference_with_different_arity_is_refused():
    with pytest.raises(ValueError, match=r"reference takes 2 inputs \(x, y\) but f takes 1"):
        autocheck.assert_grad_matches(lambda x: x * x, reference=lambda x, y: x * y)


def test_softplus_reference_and_functional_match():
    autocheck.assert_grad_matches(F.softplus, grid(-30.0, 0.0, 19.5, 20.5, 800.0), seed=0)


def test_a_report_as_json_has_a_versioned_schema_and_stays_strict():
    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.exp(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * torch.exp(x) * 2

    report = autocheck.check_grad(Wrong.apply, torch.tensor([0.0, 1.0, 800.0], dtype=torch.float64), seed=0)
    data = json.loads(report.to_json())
    assert (data["schema"], data["version"], data["ok"]) == ("autocheck.report", 1, False)
    assert data["checked"] == report.checked and data["failed"] == report.failed == 2
    row = data["worst"][0]
    assert set(row) == {"inputs", "where", "index", "autograd", "expected", "upstream", "abs_error",
                        "rel_error", "ulp_error", "allowed", "failed"}
    assert row["failed"] is True and row["where"] == "d/dx"
    assert report.format() == str(report)
    html = report._repr_html_()
    assert html.startswith('<pre><strong style="color: #cf222e">gradient of Wrong.apply does not match')
    assert json.loads(json.dumps({"x": autocheck.Report.to_dict(report)["max_ulp"]}))  # no bare inf or nan


def test_the_reproduce_line_raises_the_same_mismatch_when_pasted(tmp_path):
    import subprocess
    import sys

    (tmp_path / "my_ops.py").write_text(
        "import torch\n\n"
        "def softplus(x):\n"
        "    return torch.log1p(torch.exp(x))\n\n"
        "class MySoftplus(torch.autograd.Function):\n"
        "    @staticmethod\n"
        "    def forward(ctx, x):\n"
        "        ctx.save_for_backward(x)\n"
        "        return softplus(x)\n\n"
        "    @staticmethod\n"
        "    def backward(ctx, grad):\n"
        "        (x,) = ctx.saved_tensors\n"
        "        return grad * torch.sigmoid(-x)\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    first = subprocess.run(
        [sys.executable, "-c", "import torch, autocheck, my_ops\n"
         "r = autocheck.check_grad(my_ops.MySoftplus.apply, torch.linspace(-2, 2, 5, dtype=torch.float64), "
         "reference=my_ops.softplus, seed=3)\nprint(r.reproduce)"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=True,
    )
    line = first.stdout.strip().splitlines()[-1]
    assert line.startswith("import torch, autocheck, my_ops; autocheck.assert_grad_matches(my_ops.MySoftplus.apply, ")
    assert "reference=my_ops.softplus" in line and "seed=3" in line
    replay = subprocess.run([sys.executable, "-c", line], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=300)
    assert replay.returncode == 1 and "autocheck.GradientMismatch: gradient of MySoftplus.apply" in replay.stderr


def test_a_failing_point_met_twice_is_one_row():
    class WrongAtZero(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * 1.0

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return torch.where(x == 0, 2 * grad, grad)

    report = autocheck.check_grad(WrongAtZero.apply, reference=lambda x: x, seed=0)  # 0 comes back every batch
    keys = [(tuple(map(repr, r.inputs)), r.where, r.index) for r in report.worst]
    assert not report.ok and report.worst[0].inputs in ((0.0,), (-0.0,))
    assert len(keys) == len(set(keys)) and all(r.failed for r in report.worst)


# --------------------------------------------------------------------------------------
# What a failing row shows
# --------------------------------------------------------------------------------------


def test_rows_show_the_derivatives_own_values_and_state_the_upstream_gradient():
    # f = 2 sin x against the mathematics sin x: at x = 1, autograd's derivative is 2 cos 1
    # and the exact one cos 1, whatever upstream gradient the backward ran with.
    report = autocheck.check_grad(lambda x: 2 * torch.sin(x), torch.tensor([1.0], dtype=torch.float64),
                                  reference="sin(x)", seed=0)
    row = report.worst[0]
    assert row.autograd == pytest.approx(2 * math.cos(1.0), rel=1e-15)
    assert row.expected == row.exact == pytest.approx(math.cos(1.0), rel=1e-15)
    assert row.abs_error == pytest.approx(math.cos(1.0), rel=1e-15) and row.rel_error == pytest.approx(1.0)
    assert 0.5 <= abs(row.upstream) <= 0.9
    text = str(report)
    assert "  1.0  d/dx[0]  1.08060461  0.540302306     0.54        1" in text
    assert "the autograd column is x.grad / v, and the errors are per unit of v" in text
    assert "Greatest difference: 0.54 absolute" in text
    data = json.loads(report.to_json())["worst"][0]
    assert (data["autograd"], data["expected"], data["upstream"]) == (row.autograd, row.expected, row.upstream)


def test_reference_may_be_a_formula_and_the_reproduce_line_writes_it():
    report = autocheck.check_grad(torch.sin, torch.tensor([1.0, 2.0], dtype=torch.float64), reference="2*sin(x)", seed=0)
    assert not report.ok and report.formula == "d/dx = 2*cos(x)"
    assert report.reproduce.endswith("seed=0, reference='2*sin(x)')")


def test_a_reference_that_is_no_formula_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"reference='sin\(x' is not a formula autocheck can read: invalid syntax"):
        autocheck.check_grad(torch.sin, reference="sin(x")
    with pytest.raises(TypeError, match=r"reference must be a function of tensors, a SymPy expression or a formula "
                                        r"such as \"sin\(x\)\", got reference=5"):
        autocheck.check_grad(torch.sin, reference=5)


def test_a_float_constant_prints_as_a_float_not_a_long_rational():
    x = torch.tensor([1.0], dtype=torch.float64)
    assert autocheck.check_grad(lambda x: 1.2345678901234 * x * x, x, seed=0).formula == "d/dx = 2.4691357802468*x"
    assert autocheck.check_grad(lambda x: 0.1 * x * x, x, seed=0).formula == "d/dx = x/5"  # short ones stay exact


def test_torch_functions_are_named_by_their_public_names():
    x = torch.tensor([0.5], dtype=torch.float64)
    names = [autocheck.check_grad(f, x, seed=0).function for f in (torch.sigmoid, F.softplus, torch.special.expit)]
    assert names == ["torch.sigmoid", "torch.nn.functional.softplus", "torch.special.expit"]


def test_the_reproduce_line_keeps_a_tolerance_given():
    report = autocheck.check_grad(torch.special.expit, torch.tensor([0.5], dtype=torch.float64), seed=0,
                                  rtol=1e-30, atol=0.0)
    assert not report.ok
    assert report.reproduce.endswith("autocheck.assert_grad_matches(torch.special.expit, torch.tensor([0.5], "
                                     "dtype=torch.float64), dtype=torch.float64, device='cpu', seed=0, rtol=1e-30, "
                                     "atol=0.0)")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_a_rows_ulp_figure_is_the_spacing_of_the_checked_dtype(dtype):
    # A report row computes its figures in Python floats; they must be the judgement's own.
    values = [0.0, -0.0, 1.0, -3.5, 1e-310, 1e-40, 2.0**-126, 6e4, 7e4, 1e300, math.inf, -math.inf, math.nan]
    spacing = _compare.ulp(torch.tensor(values, dtype=torch.float64), dtype).tolist()
    assert [_compare._ulp(v, dtype) for v in values] == spacing
    assert _compare._ulp(1.0, torch.float64) == math.ulp(1.0) == 2.0**-52


def test_the_quick_relative_test_passes_nothing_the_full_comparison_fails():
    # Gradients whose relative error lies within a few roundings either side of rtol: the
    # quick test (autograd / expected - 1) may misjudge those by a rounding, so it leaves
    # them to the full comparison, which fails exactly those beyond rtol * |expected|. Here
    # rtol is a tenth of a float64 ULP of 1 above a multiple of one: autograd / expected rounds
    # to that grid, so a relative error just beyond rtol can round to just below it.
    rtol = (450360 + 0.1) * 2.0**-52
    generator = torch.Generator().manual_seed(0)
    derivative = torch.empty(256, dtype=torch.float64).uniform_(0.1, 10.0, generator=generator)
    weight = torch.randint(32, 58, (256,), generator=generator) / 64.0 * (torch.arange(256) % 2 * 2 - 1)
    weight = weight.to(torch.float64)
    got = weight * derivative * (1 + rtol)
    steps = torch.arange(256) % 9 - 4  # ULPs either side of the boundary
    got = got + steps * torch.sign(got) * _compare.ulp(got, torch.float64)
    elements = _compare.Elements(
        autograd=got, expected=derivative, weight=weight, trusted=torch.tensor(True), skip=torch.tensor(False),
        skip_input=torch.tensor(False), upstream=weight, where="d/dx", point=lambda index: index.reshape(-1, 1).double(),
    )
    refine = _compare.Refinement(expected=lambda index: (weight * derivative)[index],
                                 slack=lambda index: torch.zeros(index.numel(), dtype=torch.float64), kink=None)
    verdict = _compare.judge(elements, refine, torch.float64, _compare.Tolerance(rtol, 0.0))
    # the full test's own comparison, element by element
    product = weight * derivative
    beyond = (~((got - product).abs() < product.abs() * rtol)).tolist()
    assert 0 < sum(beyond) < len(beyond)
    assert verdict.failed == sum(beyond) and verdict.checked == len(beyond)


def test_a_single_element_of_two_dimensions_whose_value_overflows_on_the_way_is_checked():
    # x / (x*x + 1) at 1e200: x*x overflows in float64, so the oracle's value is not trusted
    # there; a mask of one element of shape (1, 1) must not fail to broadcast
    report = autocheck.check_grad(lambda x: x / (x * x + 1), torch.full((1, 1), 1e200, dtype=torch.float64), seed=0)
    assert report.ok and report.checked == 1


def test_a_backward_whose_square_underflows_is_caught_where_the_exact_value_is_1():
    # hypot's backward written x/sqrt(x*x + y*y): at x = -3.75e-162 x*x is subnormal, and the
    # quotient is -0.9746 (so is the float64 value of the exact derivative, which must not be
    # trusted there); torch.hypot's own backward divides by hypot(x, y) and is right
    hand_written = function(torch.hypot, lambda g, x, y: (g * x / torch.sqrt(x * x + y * y), g * y / torch.sqrt(x * x + y * y)))
    x, y = grid(-3.75e-162, 3.0), grid(-2.3e-280, 4.0)
    report = autocheck.check_grad(hand_written, x, y, seed=0)
    assert report.failed == 2
    rows = {(row.where, row.index): row for row in report.worst}
    assert rows["d/dx", (0,)].exact == -1.0 and rows["d/dx", (0,)].autograd == pytest.approx(-0.974043409)
    assert rows["d/dy", (0,)].exact == pytest.approx(-2.3e-280 / 3.75e-162, rel=1e-15)
    assert autocheck.check_grad(torch.hypot, x, y, seed=0).ok


def test_the_report_says_how_the_exact_values_were_found():
    # x**2 e**x on its default points: float64 within its error bound everywhere, and no line
    report = autocheck.check_grad(lambda x: x * x * torch.exp(x), seed=0)
    assert report.exact_values == {"float64": report.checked, "rewritten": 0, "certified": 0, "uncertified": 0}
    assert "Exact values:" not in str(report)
    # trigamma's derivative calls torch's polygamma kernel, which is not accurate to float64:
    # arb computes the values, and its balls prove them
    report = autocheck.check_grad(lambda x: torch.special.polygamma(1, x), torch.tensor([0.5, 3.0, 40.0], dtype=F64))
    assert report.exact_values == {"float64": 0, "rewritten": 0, "certified": 3, "uncertified": 0}
    assert "Exact values: 3 certified (arb ball arithmetic" in str(report)
    assert report.to_dict()["exact_values"] == report.exact_values


def test_exact_values_found_beyond_float64_are_counted_once_per_judged_element():
    report = autocheck.check_grad(torch.special.i0e, seed=0)
    counts = report.exact_values
    assert sum(counts.values()) == report.checked and counts["certified"] > 0
    assert f"Exact values: {counts['float64']:,} in float64 within its error bound" in str(report)


def test_a_nan_elsewhere_in_the_batch_does_not_hide_an_underflowed_intermediate():
    hand_written = function(torch.hypot, lambda g, x, y: (g * x / torch.sqrt(x * x + y * y), g * y / torch.sqrt(x * x + y * y)))
    report = autocheck.check_grad(hand_written, grid(-3.75e-162, 3.0, math.nan), grid(-2.3e-280, 4.0, 1.0), seed=0)
    assert report.failed == 2 and {row.index for row in report.worst if row.failed} == {(0,)}


def test_exact_values_of_a_broadcast_input_count_each_summed_element_by_its_terms():
    # y's gradient sums polygamma(1, x) over x, all three values from arb: both elements certified
    report = autocheck.check_grad(lambda x, y: torch.special.polygamma(1, x) * y,
                                  grid(0.5, 3.0, 40.0).reshape(3, 1), grid(1.5, 2.0).reshape(1, 2), seed=0)
    assert report.exact_values == {"float64": 0, "rewritten": 0, "certified": 5, "uncertified": 0}
