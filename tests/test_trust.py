"""One rule behind every verdict: a mismatch only where autograd is wrong for the code as
written, and a pass only where points were really checked. Each false alarm, empty pass,
crash and hang found on the first release is pinned here."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import autocheck

F64 = torch.float64


def custom(forward, backward, *, save_output=False):
    class Custom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = forward(x)
            ctx.save_for_backward(y if save_output else x)
            return y

        @staticmethod
        def backward(ctx, grad):
            (saved,) = ctx.saved_tensors
            return backward(grad, saved)

    return Custom.apply


# --------------------------------------------------------------------------------------
# Correct code passes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_sigmoid_passes_in_every_dtype(dtype):
    # torch computes sigmoid' as y(1 - y) from the rounded y: near y = 1 it loses every digit,
    # as any backward that stores its output must.
    report = autocheck.assert_grad_matches(torch.sigmoid, dtype=dtype, seed=1)
    assert report.ok and report.checked > 50_000


def test_sigmoid_in_its_tail_is_reported_when_strict():
    x = torch.tensor([12.0, 20.0, 36.0], dtype=F64)
    with pytest.raises(autocheck.GradientMismatch, match=r"\(float64, cpu, strict\)"):
        autocheck.assert_grad_matches(torch.sigmoid, x, strict=True, seed=0)


def test_sigmoid_at_bfloat16_seven_passes():
    # sigmoid(7) rounds to 1.0 in bfloat16, so autograd's y(1 - y) is 0 where the exact value is 9e-4.
    report = autocheck.assert_grad_matches(torch.sigmoid, torch.tensor([7.0], dtype=torch.bfloat16), seed=0)
    assert report.ok and report.checked == 1


def test_a_custom_function_that_saves_its_output_passes():
    sigmoid = custom(lambda x: 1 / (1 + torch.exp(-x)), lambda g, y: g * y * (1 - y), save_output=True)
    autocheck.assert_grad_matches(sigmoid, torch.tensor([-3.0, 0.0, 12.0, 30.0, 40.0], dtype=F64), seed=0)


@pytest.mark.parametrize(
    "f, at",
    [
        (lambda x: torch.relu(x - 3), 3.0),
        (lambda x: torch.clamp(x, min=1), 1.0),
        (lambda x: torch.clamp(x / 6 + 0.5, 0, 1), 3.0),
        (F.hardswish, -3.0),
        (F.hardswish, 3.0),
        (lambda x: torch.relu(x - 0.1), 0.1),
    ],
    ids=["relu(x - 3) at 3", "clamp(min=1) at 1", "hardsigmoid at 3", "hardswish at -3", "hardswish at 3",
         "relu(x - 0.1) at 0.1"],
)
def test_kinks_away_from_zero_pass(f, at):
    report = autocheck.assert_grad_matches(f, torch.tensor([at, at + 1, at - 1], dtype=F64), seed=0)
    assert report.ok and report.kinks >= 1


def test_kinks_are_found_by_the_search():
    assert autocheck.assert_grad_matches(lambda x: torch.relu(x - 3), seed=0).ok


def test_a_kink_is_not_an_excuse_for_a_wrong_value_beside_it():
    buggy = custom(lambda x: torch.relu(x - 3), lambda g, x: g * (x >= 3).double() * 2)
    with pytest.raises(autocheck.GradientMismatch):
        autocheck.assert_grad_matches(buggy, torch.tensor([3.0, 4.0], dtype=F64), reference=lambda x: torch.relu(x - 3))


def test_overflowing_terms_of_the_exact_derivative_are_computed_exactly():
    # d/dx x*sigmoid(x) = sigmoid(x) + x*exp(-x)/(1 + exp(-x))**2: the divisor overflows
    # float64 at x <= -355 while the derivative is -2.4e-152 there.
    swish = custom(lambda x: x * torch.sigmoid(x), lambda g, x: g * torch.sigmoid(x) * (1 + x * torch.sigmoid(-x)))
    x = torch.tensor([-355.0, -400.0, -700.0], dtype=F64)
    report = autocheck.assert_grad_matches(swish, x, reference=lambda x: x * torch.sigmoid(x), seed=0)
    assert report.checked == 3


def test_check_and_reference_use_the_same_oracle():
    f = lambda x: torch.log(torch.cosh(x))  # noqa: E731
    exact = autocheck.reference(f)(torch.tensor([700.0, -700.0], dtype=F64))
    assert exact.tolist() == [1.0, -1.0]
    report = autocheck.check_grad(f, torch.tensor([700.0, -700.0, 3.0], dtype=F64), seed=0)
    assert report.ok and report.checked == 3 and not report.skipped


def test_an_intermediate_that_underflows_onto_a_kink_passes():
    # x**2 rounds to 0 below 1e-154, where copysign's gradient has its kink: torch's 0 is a
    # value between the one-sided derivatives of the code as written.
    f = lambda x: torch.copysign(x**2, torch.tensor(-1.0))  # noqa: E731
    report = autocheck.check_grad(f, torch.tensor([-9.30175311e-297, 2.0], dtype=F64), seed=0)
    assert report.ok and report.kinks == 1
    wrong = lambda x: torch.copysign(x**2, torch.tensor(-1.0)) * 1.0000001  # noqa: E731
    assert not autocheck.check_grad(wrong, torch.tensor([2.0], dtype=F64), reference=lambda x: -x**2, seed=0).ok


def test_a_chain_rule_with_an_infinite_term_is_not_judged_where_it_has_no_value():
    # asin(x) + acos(x) is pi/2, but autograd adds asin' and acos', which are +-inf at x = +-1.
    f = lambda x: torch.asin(x) + torch.acos(x) + torch.atan(x)  # noqa: E731
    report = autocheck.check_grad(f, torch.tensor([-1.0, 0.5, 1.0], dtype=F64), seed=0)
    assert report.ok and report.checked == 1 and report.skipped == {"exact derivative not finite": 2}


def test_contributions_summed_by_autograd_carry_their_own_rounding():
    # d/dx (3x + x**2) = 3 + 2x cancels near -1.5; autograd sums 3v and 2xv, each rounded.
    def f(x):
        y = x.clone()
        y.mul_(3)
        y.add_(x**2)
        return y

    report = autocheck.check_grad(f, torch.tensor([-1.50008017, -1.5013, 2.0], dtype=F64), seed=0)
    assert report.ok and report.checked == 3


def test_log_ndtr_far_out_is_judged_and_passes():
    # torch computes exp(-(y + x**2/2)) from the rounded y = log_ndtr(x) ~ -x**2/2: at -1e9 the
    # exponent is lost to rounding and autograd gives 1e55 where the derivative is 1e9. The code
    # as written can give any value there; the exact derivative is found (it used to be "not finite").
    x = torch.tensor([-40.0, -1e5, -1.15569311e9], dtype=F64)
    report = autocheck.assert_grad_matches(torch.special.log_ndtr, x, seed=0)
    assert (report.checked, report.failed) == (3, 0)
    assert autocheck.check_grad(torch.special.log_ndtr, x, seed=0, strict=True).checked == 3


def test_log_ndtr_far_right_is_settled_without_high_precision(monkeypatch):
    # Beyond 38 the derivative is below the smallest subnormal (proven by bounds on erfc), and
    # the error bound is 0 times the exponential of a rounding error at 1e200 (zero, not nan)
    from autocheck import _oracle

    asked = []
    original = _oracle._precise.exact_values
    monkeypatch.setattr(_oracle._precise, "exact_values",
                        lambda exprs, *args, **kwargs: asked.append(exprs) or original(exprs, *args, **kwargs))
    x = torch.logspace(1.6, 300, 320, dtype=F64)  # half of them beyond 1e154, where x**2 overflows
    report = autocheck.assert_grad_matches(torch.special.log_ndtr, x, seed=0)
    assert report.checked == 320 and asked == []


def test_a_kernel_checked_through_its_error_bound_still_finds_a_small_error():
    # i0's backward is torch's i1, less accurate than the tolerance asks of a reference: the
    # cheap test adds the kernel's error bound; a backward off by 3e-11 is still found.
    correct = custom(torch.special.i0, lambda g, x: g * torch.special.i1(x))
    off = custom(torch.special.i0, lambda g, x: g * torch.special.i1(x) * (1 + 3e-11))
    x = torch.linspace(-20, 20, 4001, dtype=F64)
    assert autocheck.check_grad(correct, x, seed=0).ok
    report = autocheck.check_grad(off, x, seed=0)
    assert report.failed >= 3900 and "d/dx" in str(report)


def test_a_reference_that_cancels_as_autograd_does_is_not_trusted_by_the_cheap_test():
    # gelu's backward computes Phi(x) + x phi(x), which cancels far left; a float64 reference
    # written the same way cancels the same way, and the two agreed bit for bit at -8.409
    # (autograd -1.17786e-15). mpmath says -1.16143e-15: the 1.4% error is torch's.
    import mpmath

    x = torch.tensor([-8.40933079], dtype=F64)
    with mpmath.workdps(50):
        v = mpmath.mpf(-8.40933079)
        exact = float(mpmath.ncdf(v) + v * mpmath.npdf(v))
    report = autocheck.check_grad(F.gelu, x, seed=0)
    assert report.failed == 1
    assert report.worst[0].expected == pytest.approx(exact, rel=1e-12)


def test_an_infinite_exact_value_does_not_pass_a_finite_gradient_unseen():
    # (x**2 * 1e-150)**2 at 1e103: the exact derivative 4e-300 x**3 is beyond float64 (inf);
    # a backward 3 times too large is finite and must still be judged, and fail.
    ref = lambda x: (x**2 * 1e-150) ** 2  # noqa: E731
    wrong = custom(ref, lambda g, x: g * 2 * (x**2 * 1e-150) * 1e-150 * 2 * x * 3.0)
    report = autocheck.check_grad(wrong, torch.tensor([1e103], dtype=F64), reference=ref, seed=0)
    assert (report.checked, report.failed) == (1, 1)


def test_a_wrapper_of_a_torch_function_is_not_taken_for_it():
    import functools

    def doubled(fn):
        @functools.wraps(fn)  # claims torch's module and name
        def wrapper(x):
            return 2 * fn(x)

        return wrapper

    x = torch.tensor([0.3, 1.2], dtype=F64)
    for fn in (torch.sin, torch.cos, torch.tanh):  # freed in turn: the same id may come back
        assert autocheck.check_grad(doubled(fn), x, seed=0).ok


def test_second_order_with_entries_of_different_trust():
    x, y = torch.tensor([0.5, 2.0], dtype=F64), torch.tensor([1.5, -3.0], dtype=F64)
    assert autocheck.check_grad(lambda x, y: y / (1 + x**2), x, y, order=2, seed=0).ok


def test_a_reference_value_near_a_cancelling_partial_sum_is_exact():
    # The derivative of x log x - x**2/2 is log(x) + 1 - x: near 1 the partial sum log(x) + 1
    # is far larger than the result, and its rounding is what a bound must count.
    values = autocheck.reference(lambda x: x * torch.log(x) - x**2 / 2)(torch.tensor([0.999, 0.9999], dtype=F64))
    assert values.tolist() == [-5.00333583533501e-07, -5.000333358334232e-09]


def test_an_infinite_local_derivative_times_an_exact_zero_is_not_judged():
    # asin(sin(x)**2 + cos(x)**2): the sum is exactly 1, where asin's local derivative is
    # infinite, and the sum's derivative exactly 0; float64 rounds the sum to 1 - 2**-53 at some
    # x, and autograd returns rounding noise times 6.7e7 (-3e-9 at 0.1638). The code as written
    # has no derivative value there: not judged, not a mismatch.
    x = torch.linspace(0.1, 3, 4000, dtype=F64)
    report = autocheck.check_grad(lambda x: torch.asin(torch.sin(x) ** 2 + torch.cos(x) ** 2), x, seed=0)
    assert report.failed == 0 and report.checked > 0


def test_no_grad_inside_f_is_stop_gradient():
    def f(x):
        with torch.no_grad():
            scale = 2 * x
        return x * scale

    assert autocheck.assert_grad_matches(f, seed=0).ok


def test_a_float32_constant_in_float64_code_is_exact():
    assert autocheck.assert_grad_matches(lambda x: x * torch.tensor(0.1), seed=0).ok


# --------------------------------------------------------------------------------------
# No empty pass
# --------------------------------------------------------------------------------------


def test_every_forward_value_infinite_is_refused():
    with pytest.raises(autocheck.NothingChecked, match=r"forward value not finite at .*choose inputs \(or domain=\)"):
        autocheck.assert_grad_matches(torch.exp, domain={"x": (1000, 2000)}, seed=0)


def test_nan_inputs_are_refused():
    with pytest.raises(autocheck.NothingChecked, match=r"input not finite at 1.*pass finite inputs"):
        autocheck.assert_grad_matches(lambda x: x * x, torch.tensor([float("nan")], dtype=F64), seed=0)


def test_a_function_infinite_everywhere_is_refused():
    with pytest.raises((autocheck.NothingChecked, autocheck.DomainError)):
        autocheck.assert_grad_matches(lambda x: x * float("inf"), seed=0)


@pytest.mark.parametrize("shape", [(0,), (0, 3)])
def test_empty_tensors_are_refused_with_a_clear_error(shape):
    with pytest.raises(autocheck.NothingChecked, match=r"every input is empty \(shape \(0"):
        autocheck.check_grad(lambda x: x * x, torch.empty(shape, dtype=F64), seed=0)


@pytest.mark.parametrize("rtol, atol", [(float("inf"), 0.0), (float("nan"), 0.0), (1e-6, float("inf")), (-1e-6, 0.0)])
def test_a_tolerance_that_passes_anything_is_refused(rtol, atol):
    with pytest.raises(ValueError, match=r"must be a finite number >= 0"):
        autocheck.assert_grad_matches(torch.exp, rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["check", "exp(x)", "--domain", "x=1000:2000"],
         "no gradient element of exp(x) was checked at the 102400 points drawn from x in [1000, 2000]"),
        (["check", "x*inf"], "forward value not finite at 102400"),
        (["check", "x*x", "--at", "x=nan"], "input not finite at 1. pass finite inputs"),
        (["check", "exp(x)", "--domain", "x=1e400:"], "--domain bound '1e400' is not a finite float64 number"),
    ],
)
def test_the_command_refuses_an_empty_pass_with_exit_2(argv, fragment, capsys):
    from autocheck._cli import main

    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_a_derivative_that_overflows_in_float64_is_refined_not_skipped():
    # tanh(x) as sinh(x)/cosh(x): both overflow beyond |x| = 710 while the quotient is +-1.
    report = autocheck.assert_grad_matches(lambda x: torch.log(torch.cosh(x)), domain={"x": (-700, 700)}, seed=0)
    assert "exact derivative not finite" not in report.skipped
    assert report.checked > 10_000


def test_a_relative_tolerance_of_one_is_refused():
    with pytest.raises(ValueError, match=r"rtol=1.0 allows errors as large as the gradient itself"):
        autocheck.assert_grad_matches(torch.exp, rtol=1.0, atol=0.0)


# --------------------------------------------------------------------------------------
# Clear errors, not crashes
# --------------------------------------------------------------------------------------


def test_a_constant_output_is_refused():
    with pytest.raises(TypeError, match="does not require grad"):
        autocheck.assert_grad_matches(lambda x: torch.ones((), dtype=F64), torch.tensor([1.0], dtype=F64))


def test_an_integer_output_is_refused():
    with pytest.raises(TypeError, match="integer or boolean tensor that does not require grad"):
        autocheck.assert_grad_matches(lambda x: (x * 3).long(), torch.tensor([1.5], dtype=F64))


def test_a_variadic_function_with_inputs_is_checked():
    report = autocheck.assert_grad_matches(lambda *a: a[0] * a[1], torch.tensor([1.0, 2.0], dtype=F64),
                                           torch.tensor([3.0, -4.0], dtype=F64), seed=0)
    assert report.ok and report.checked == 4


def test_a_variadic_function_without_inputs_gets_a_clear_error():
    with pytest.raises(autocheck.TraceError, match=r"takes \*args"):
        autocheck.assert_grad_matches(lambda *a: a[0] * a[1])


# --------------------------------------------------------------------------------------
# Budgets: nothing hangs
# --------------------------------------------------------------------------------------


def test_the_command_checks_digamma_and_reports_the_trigamma_kernel(capsys):
    # Its spot check meets digamma's poles while it looks for the simplest failing point.
    from autocheck._cli import main

    assert main(["check", "digamma(x)", "--seed", "0"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_digamma_far_out_on_the_negative_axis_returns():
    report = autocheck.check_grad(torch.digamma, torch.tensor([-1e10 - 0.5], dtype=F64), seed=0)
    assert report.checked == 1


def test_user_code_that_loops_forever_is_interrupted():
    def spins(x):
        while True:
            pass

    with pytest.raises(autocheck.DeadlineExceeded, match="spins"):
        autocheck.check_grad(spins, torch.tensor([1.0], dtype=F64), deadline=1.0)


def test_a_search_that_runs_out_of_time_says_so():
    report = autocheck.check_grad(lambda x: x * x * torch.exp(x), seed=0, examples=10_000, deadline=0.5)
    assert report.ok and report.timed_out and report.checked > 0
    assert "Stopped at the deadline" in str(report)


def test_a_high_order_derivative_in_the_command_ends_inside_its_budget(monkeypatch, capsys):
    import autocheck._symbolic as symbolic
    from autocheck._cli import main

    monkeypatch.setattr(symbolic, "SYMBOLIC_BUDGET", 0.2)
    assert main(["diff", "exp(sin(x)*cos(x))/(1 + x**2)", "--order", "10"]) == 2
    assert "took longer than 0.2 s" in capsys.readouterr().err


def test_differentiating_a_long_product_twice_ends_inside_its_budget(monkeypatch):
    import autocheck._symbolic as symbolic

    def product(x):
        y = x
        for k in range(40):
            y = y * torch.sin(x + k)
        return y

    monkeypatch.setattr(symbolic, "SYMBOLIC_BUDGET", 0.5)
    with pytest.raises(autocheck.DeadlineExceeded, match=r"tracing and differentiating product \(order 2\) took longer than 0.5 s"):
        autocheck.check_grad(product, order=2, seed=0)


def test_a_search_stops_after_five_seconds_by_default():
    import time

    start = time.monotonic()
    report = autocheck.check_grad(lambda x: x * torch.exp(x), seed=0, examples=1_000_000)
    assert report.ok and report.timed_out and "Stopped at the deadline" in str(report)
    assert time.monotonic() - start >= 5.0


def test_deadline_must_be_positive():
    with pytest.raises(ValueError, match=r"deadline must be a positive number of seconds .* got deadline=0"):
        autocheck.check_grad(torch.sin, deadline=0)


def test_a_large_input_is_judged_in_chunks_within_four_times_its_memory():
    code = (
        "import resource, torch, autocheck\n"
        "x = torch.linspace(-5, 5, 4_000_000, dtype=torch.float64)\n"
        "f = lambda x: x * x * torch.exp(x)\n"
        "autocheck.check_grad(f, x[:10], seed=0)\n"  # warm: imports, compiled callables
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "report = autocheck.check_grad(f, x, seed=0, deadline=None)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(report.checked, (after - before) * 1024 / (x.numel() * 8))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    checked, ratio = out.stdout.split()
    assert int(checked) == 4_000_000
    assert float(ratio) <= 4.0
    from autocheck import _check

    assert _check.CHUNK == 1_048_576  # the chunk size docs/verdicts.md states


def test_a_leg_of_the_code_in_float32_is_judged_with_float32s_rounding():
    # exp runs in float32 inside a float64 function: a correct autograd rounds (and overflows)
    # there, so float32's tolerance applies, and the search stays inside float32's range.
    report = autocheck.assert_grad_matches(lambda x: torch.exp(x.float()).double() * x, seed=0)
    assert report.rtol == autocheck.DEFAULT_TOLERANCES[torch.float32].rtol
    assert "Domain: x in [-3.40282e+38, 3.40282e+38]" in report.notes

    class OffByOnePartInAThousand(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.exp(x.float()).double()

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * torch.exp(x) * (1 + 1e-3)

    report = autocheck.check_grad(OffByOnePartInAThousand.apply, seed=0)
    assert not report.ok and report.worst[0].rel_error == pytest.approx(1e-3, rel=1e-3)
