"""Forward mode: the JVP of dual tensors judged against the exact derivative, with the same
error model and report as reverse mode, for functions of scalars, of small tensors and of
large ones; a custom Function's jvp is checked, and one without it gets a clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import autocheck

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

F64 = torch.float64
BOTH = ("rev", "fwd")


class ExpWithWrongJvp(torch.autograd.Function):
    """exp, whose jvp is twice too large above 2 (its backward is right)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x)

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return tangent * torch.exp(x) * torch.where(x > 2, 2.0, 1.0)


class WrongForward(torch.autograd.Function):
    """Meant to be x**2 e**x, with both derivative formulas for that, but its forward computes x e**x."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        return x * torch.exp(x)  # the bug: x * x * torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x * x + 2 * x) * torch.exp(x)

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return tangent * (x * x + 2 * x) * torch.exp(x)


class NoJvp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x)


def test_a_wrong_jvp_is_caught_in_forward_mode_only():
    assert autocheck.check_grad(ExpWithWrongJvp.apply, seed=0).ok  # reverse mode: the backward is right
    report = autocheck.check_grad(ExpWithWrongJvp.apply, seed=0, modes=BOTH)
    assert not report.ok and report.counterexample == (3.0,)
    row = report.worst[0]
    assert row.where == "d/dx, forward mode" and row.autograd == pytest.approx(2 * row.expected, rel=1e-12)
    assert report.reproduce.endswith("seed=0, modes=('rev', 'fwd'))")
    text = str(report)
    assert "d/dx, forward mode" in text and "forward mode: the inputs carried random tangents t" in text


def test_a_wrong_forward_formula_is_caught_in_both_modes():
    for modes in (("rev",), ("fwd",)):
        report = autocheck.check_grad(WrongForward.apply, seed=0, modes=modes)
        assert not report.ok and report.worst[0].where == ("d/dx" if modes == ("rev",) else "d/dx, forward mode")


def test_a_function_without_jvp_is_a_clear_error():
    with pytest.raises(TypeError, match=r"modes includes 'fwd', but NoJvp\.apply calls a custom autograd\.Function "
                                        r"without a jvp staticmethod"):
        autocheck.check_grad(NoJvp.apply, seed=0, modes=BOTH)


def test_functions_of_several_inputs_are_checked_by_their_jvp():
    report = autocheck.check_grad(lambda x, y: x * torch.sin(y) + torch.exp(x * y), seed=0, examples=3, modes=("fwd",))
    assert report.ok and report.worst[0].where == "jvp, forward mode"


def test_small_and_large_tensor_functions_in_both_modes():
    a = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert autocheck.check_grad(lambda a: (a @ a.T).tanh().sum(), a, seed=0, modes=BOTH).ok
    x = torch.randn(8, 512, dtype=F64, generator=torch.Generator().manual_seed(1))
    report = autocheck.check_grad(lambda x: F.layer_norm(x, (512,)).pow(3).sum(), x, seed=0, modes=BOTH)
    assert report.ok and report.checked == 2 * x.numel()  # every element, once per mode


def test_a_wrong_jvp_of_a_tensor_function_is_located():
    class RunningSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.cumsum(1)

        @staticmethod
        def backward(ctx, grad):
            return grad.flip(1).cumsum(1).flip(1)

        @staticmethod
        def jvp(ctx, tangent):
            out = tangent.cumsum(1)
            out[2, 7] = 0.0  # the bug: one element of the output's tangent
            return out

    x = torch.randn(10, 20, dtype=F64, generator=torch.Generator().manual_seed(0))
    report = autocheck.check_grad(RunningSum.apply, x, seed=0, modes=BOTH)
    assert not report.ok
    # <v, J e_j> is wrong for the inputs that output [2, 7] depends on: x[2, 0..7]
    located = {row.index for row in report.worst if row.failed}
    assert located and all(i[0] == 2 and i[1] <= 7 for i in located)
    assert all(row.where == "d/dx, forward mode" for row in report.worst if row.failed)
    assert "d/dx[2, " in str(report) and "], forward mode" in str(report)


@pytest.mark.parametrize(
    ("modes", "order", "message"),
    [
        (("sideways",), 1, r'modes must hold "rev" \(reverse mode: x\.grad\), "fwd" \(forward mode: the JVP\) and/or "vmap"'),
        ((), 1, r"modes must hold"),
    ],
)
def test_bad_modes_are_refused(modes, order, message):
    with pytest.raises(ValueError, match=message):
        autocheck.check_grad(torch.sin, seed=0, modes=modes, order=order)


def _table():
    from bench_speed import table_functions

    return table_functions()


TABLE = _table()
NO_JVP = {"`autograd_function_ctx`", "`autograd_function_setup_context`"}  # custom Functions without jvp


@pytest.mark.parametrize("name", [n for n in TABLE if n not in NO_JVP])
def test_forward_mode_agrees_with_reverse_mode_on_the_derivative_table(name):
    # Every correct function passes in both modes; torch's known defects (hardsigmoid's 1/6 in
    # float32, gelu far left, ...) show in both.
    f = TABLE[name]
    reverse = autocheck.check_grad(f, seed=0, examples=2)
    forward = autocheck.check_grad(f, seed=0, examples=2, modes=("fwd",))
    assert forward.ok == reverse.ok, str(forward)


# --------------------------------------------------------------------------------------
# torch.func transforms
# --------------------------------------------------------------------------------------


def test_a_vmapped_function_is_checked():
    from torch.func import vmap

    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    report = autocheck.check_grad(vmap(lambda row: (row * torch.exp(row)).sum()), x, seed=0, modes=BOTH)
    assert report.ok and report.checked == 2 * x.numel()


def test_the_gradient_of_torch_func_grad_and_jacrev_is_the_exact_second_derivative():
    from torch.func import grad, jacrev

    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    report = autocheck.check_grad(lambda a: grad(lambda t: (t * torch.exp(t)).sum())(a).sum(), x, seed=0)
    assert report.ok and report.formula.startswith("d/da[0, 0] = a[0, 0]*exp(a[0, 0]) + 2*exp(a[0, 0])")
    v = torch.randn(3, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert autocheck.check_grad(lambda v: jacrev(lambda w: torch.sin(w) * w.sum())(v).sum(), v, seed=0).ok


def test_a_wrong_backward_under_vmap_is_caught():
    from torch.func import vmap

    class Cube(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return x**3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * 2 * x * x  # the bug: 3 x**2

    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    report = autocheck.check_grad(vmap(lambda row: Cube.apply(row).sum()), x, seed=0)
    assert not report.ok and report.worst[0].autograd == pytest.approx(2 / 3 * report.worst[0].expected, rel=1e-12)


def test_hessian_is_refused_with_what_to_check_instead():
    from torch.func import hessian

    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(autocheck.TraceError, match=r"f nests torch\.func transforms \(hessian, jacfwd over jacrev\)"
                                                   r".*order=2 checks its second derivatives"):
        autocheck.check_grad(lambda a: hessian(lambda t: (t * torch.exp(t)).sum())(a).sum(), x, seed=0)


# --------------------------------------------------------------------------------------
# Higher orders
# --------------------------------------------------------------------------------------


def test_order_3_of_a_function_of_one_and_of_two_inputs():
    report = autocheck.check_grad(lambda x: x * x * torch.exp(x), order=3, seed=0, examples=3)
    assert report.ok and report.formula == "d³/dxdxdx = x**2*exp(x) + 6*x*exp(x) + 6*exp(x)"
    assert str(report).startswith("order-3 derivative of <lambda> matches")
    report = autocheck.check_grad(lambda x, y: x * torch.sin(y) + x * x * y, order=3, seed=0, examples=3)
    assert report.ok and report.formula.startswith("d³/dxdxdx = 0; d³/dxdxdy = 2; d³/dxdydx = 2; d³/dxdydy = -sin(y)")


def test_order_3_of_a_function_of_a_small_tensor():
    a = torch.randn(3, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert autocheck.check_grad(lambda a: (a.sin() * a.sum()).sum(), a, order=3, seed=0).ok


def test_a_backward_that_is_wrong_when_differentiated_is_caught_at_order_3():
    class Quartic(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x**4

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * 4 * x * x * x.detach()  # right, but differentiated again it misses a term

    x = torch.tensor([1.5], dtype=F64)
    assert autocheck.check_grad(Quartic.apply, x, seed=0).ok  # the gradient itself is right
    report = autocheck.check_grad(Quartic.apply, x, order=3, seed=0)
    assert not report.ok and report.worst[0].where == "d³/dx··"
    assert report.reproduce.endswith("seed=0, order=3)")


def test_orders_beyond_the_limits_are_refused():
    with pytest.raises(ValueError, match=r"order must be 1 \(gradients\), 2 \(second derivatives\), \.\.\. up to 6, "
                                         r"got order=7"):
        autocheck.check_grad(torch.sin, order=7)
    x = torch.randn(200, dtype=F64)
    with pytest.raises(ValueError, match=r"order=3 is checked for functions of scalars and of tensors of up to 100"):
        autocheck.check_grad(lambda x: x.sin().sum(), x, order=3, seed=0)


def test_both_modes_at_a_point_where_values_lose_digits():
    # Each mode's allowance is widened by the jittered runs on its own (rounding in x - mean(x)
    # near 1e6), whichever mode ran first.
    x = 1e6 + torch.rand(300, dtype=F64, generator=torch.Generator().manual_seed(0))
    for modes in (("rev", "fwd"), ("fwd", "rev")):
        assert autocheck.check_grad(lambda x: F.layer_norm(x, (300,)).pow(3).sum(), x, seed=0, modes=modes).ok


def test_an_order_3_report_follows_the_json_schema():
    import json

    jsonschema = pytest.importorskip("jsonschema")
    report = autocheck.check_grad(lambda x: x**4, order=3, seed=0, examples=1)
    jsonschema.validate(json.loads(report.to_json()), autocheck.Report.json_schema())


# Forward over reverse: higher derivatives with the last level by dual tensors


def test_higher_orders_pass_forward_over_reverse():
    report = autocheck.check_grad(lambda x: x * x * torch.exp(x), order=2, seed=0, examples=3, modes=BOTH)
    assert report.ok and report.modes == BOTH
    assert any(row.where == "d²/dx·, forward over reverse mode" for row in report.worst)
    for f in (lambda x: x * x * torch.exp(x), lambda x, y: x * torch.sin(y) + x * x * y):
        report = autocheck.check_grad(f, order=3, seed=0, examples=3, modes=("fwd",))
        assert report.ok and str(report).startswith("order-3 derivative of <lambda> matches")


class DetachedQuartic(torch.autograd.Function):
    """x**4 with a right first derivative that is not differentiable (it detaches x), and a jvp."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        return x**4

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 4 * x.detach() ** 3

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return 4 * x**3 * t


def test_a_backward_that_is_not_differentiable_fails_forward_over_reverse():
    assert autocheck.check_grad(DetachedQuartic.apply, seed=0, modes=BOTH).ok
    report = autocheck.check_grad(DetachedQuartic.apply, order=2, seed=0, modes=("fwd",))
    assert not report.ok and report.worst[0].where == "d²/dx·, forward over reverse mode"
    assert report.worst[0].autograd == 0.0 and "d²/dx·, forward over reverse mode at x = " in str(report)


def test_second_derivatives_of_a_layer_forward_over_reverse():
    x = torch.randn(4, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    report = autocheck.assert_grad_matches(lambda x: torch.nn.functional.layer_norm(x, (300,)).tanh(), x, order=2,
                                           seed=0, modes=BOTH)
    assert report.order == 2 and report.checked == 2 * 4 * 300


def test_the_numbers_docs_modes_states():
    from autocheck import _arguments, _judge

    assert (_judge.REORDERED_UNITS, _judge.BATCHED, _arguments.MAX_ORDER) == (4, 3, 6)


# Batched gradients: torch.func.vjp's pullback vmapped over upstream gradients


class ExpOff(torch.autograd.Function):
    """exp whose backward is off by one part in a thousand; batchable (setup_context, generated vmap rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.exp(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x) * 1.001


def test_batched_gradients_pass_for_scalars_small_and_large_tensors():
    report = autocheck.check_grad(lambda x: x * x * torch.exp(x), seed=0, examples=2, modes=("rev", "vmap"))
    assert report.ok and report.modes == ("rev", "vmap") and "(float64, cpu, reverse and vmap mode)" in str(report)
    assert any(row.where == "d/dx, vmap" for row in report.worst)
    small = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert autocheck.check_grad(lambda a: a.sin() * a.sum(), small, seed=0, modes=("vmap",)).checked == 3 * 12
    large = torch.randn(4, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    report = autocheck.check_grad(lambda x: torch.nn.functional.layer_norm(x, (300,)).tanh(), large, seed=0,
                                  modes=("vmap",))
    assert report.ok and report.checked == 3 * 1200  # one <vmapped vjp, u> check per upstream gradient


def test_a_wrong_backward_is_found_in_batched_gradients():
    report = autocheck.check_grad(ExpOff.apply, seed=0, examples=2, modes=("vmap",))
    assert not report.ok and report.worst[0].where == "d/dx, vmap"
    assert report.worst[0].rel_error == pytest.approx(1e-3, rel=1e-6)


def test_a_function_torch_func_cannot_batch_is_a_clear_error():
    with pytest.raises(TypeError, match=r"modes includes 'vmap', but torch\.func cannot batch the backward of "
                                        r"NoJvp\.apply .*setup_context"):
        autocheck.check_grad(NoJvp.apply, seed=0, modes=("vmap",))
    with pytest.raises(ValueError, match=r'modes "vmap" batches first derivatives'):
        autocheck.check_grad(torch.sin, seed=0, modes=("vmap",), order=2)


class ExpWrongJvp(torch.autograd.Function):
    """exp whose jvp is off by one part in a thousand; written for torch.func (setup_context)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.exp(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_forward(inputs[0])
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x)

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return t * torch.exp(x) * 1.001


def test_forward_mode_is_judged_by_dual_tensors_and_by_torch_func_jvp():
    report = autocheck.check_grad(lambda x: x * x * torch.exp(x), seed=0, examples=2, modes=("fwd",))
    assert report.ok and {"d/dx, forward mode", "d/dx, torch.func.jvp"} <= {row.where for row in report.worst}
    report = autocheck.check_grad(ExpWrongJvp.apply, seed=0, examples=2, modes=("fwd",))
    assert not report.ok and {row.where for row in report.worst if row.failed} == {"d/dx, forward mode",
                                                                                   "d/dx, torch.func.jvp"}
    assert autocheck.check_grad(ExpWrongJvp.apply, seed=0, examples=2).ok  # its backward is right


def test_hessian_of_a_small_tensor_is_refused_with_what_to_check_instead():
    from torch.func import hessian

    x = torch.randn(3, dtype=F64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(autocheck.TraceError, match=r"torch\.func\.hessian \(jacfwd over jacrev\) does this inside: "
                                                   r"check the function it transforms with order=2"):
        autocheck.check_grad(lambda a: hessian(lambda t: (t * torch.exp(t)).sum())(a).sum(), x, seed=0)
