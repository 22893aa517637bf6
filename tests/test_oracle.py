"""Exact reference values: float64 where it is trusted, mpmath where it is not."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import sympy
import torch

from autocheck import _oracle as oracle
from autocheck import _printer
from autocheck import _precise
from autocheck._errors import TranslationError
from autocheck._oracle import evaluate
from autocheck._printer import SYMPY_TO_MPMATH, SYMPY_TO_TORCH, register_sympy_function, to_torch

x, y = sympy.symbols("x y", real=True)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

SOFTPLUS_GRAD = sympy.diff(sympy.log(1 + sympy.exp(x)), x)  # exp(x)/(exp(x) + 1)
SINC_GRAD = sympy.diff(sympy.sinc(x), x)  # cos(x)/x - sin(x)/x**2
X2EX_GRAD = sympy.diff(x**2 * sympy.exp(x), x)  # x**2*exp(x) + 2*x*exp(x)


@pytest.fixture(autouse=True)
def _forget_registrations():
    yield
    SYMPY_TO_TORCH.maps[0].clear()
    SYMPY_TO_MPMATH.maps[0].clear()


def exact(expr, *values, device="cpu", symbols=(x,)):
    tensors = [torch.tensor(v, dtype=torch.float64, device=device) for v in values]
    (out,) = evaluate([expr], list(symbols), tensors)
    assert out.dtype == torch.float64 and out.device.type == device
    return out.cpu().tolist()


def mpmath_50(function, *points):
    """The 50-digit mpmath value, rounded to float64."""
    with mpmath.workdps(50):
        return float(function(*[mpmath.mpf(p) for p in points]))


def ulps(a, b):
    return abs(a - b) / math.ulp(b)


# --- non-finite float64 values ----------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_softplus_gradient_at_800_is_one(device):
    assert exact(SOFTPLUS_GRAD, [800.0, -800.0, 0.0], device=device) == [1.0, 0.0, 0.5]


def test_printed_softplus_gradient_at_800_is_nan():
    (out,) = to_torch([SOFTPLUS_GRAD], [x])(torch.tensor([800.0], dtype=torch.float64))
    assert math.isnan(out.item())  # what the oracle has to repair


@pytest.mark.parametrize("device", DEVICES)
def test_overflowing_derivative_is_inf(device):
    assert exact(X2EX_GRAD, [800.0, 710.0], device=device) == [math.inf, math.inf]


def test_underflowing_derivative_is_zero():
    assert exact(X2EX_GRAD, [-800.0]) == [0.0]


# --- removable singularities -------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_sinc_gradient_at_zero_is_zero(device):
    assert exact(SINC_GRAD, [0.0], device=device) == [0.0]


def test_sinc_second_derivative_at_zero():
    assert exact(sympy.diff(sympy.sinc(x), x, 2), [0.0]) == [-1 / 3]


def test_sinc_gradient_at_a_tiny_point():
    assert exact(SINC_GRAD, [1e-300]) == [mpmath_50(lambda v: -v / 3, 1e-300)]


def test_removable_singularity_in_two_symbols():
    expr = (sympy.sin(x) - sympy.sin(y)) / (x - y)
    assert exact(expr, [1.0, 2.0], [1.0, 1.0], symbols=(x, y)) == [
        mpmath_50(mpmath.cos, 1.0),
        mpmath_50(lambda a, b: (mpmath.sin(a) - mpmath.sin(b)) / (a - b), 2.0, 1.0),
    ]


def test_pole_keeps_the_ieee_value():
    assert exact(1 / x, [0.0]) == [math.inf]  # the sides disagree: no limit
    assert exact(1 / x**2, [0.0]) == [math.inf]  # both sides diverge to +inf


def test_divergence_is_not_mistaken_for_a_limit():
    assert exact(sympy.polygamma(1, x), [-1.0]) == [math.inf]


def test_dirac_delta_at_zero_is_nan():
    values = exact(2 * sympy.DiracDelta(x), [0.0, 1.0])
    assert math.isnan(values[0]) and values[1] == 0.0


def test_outside_the_domain_is_nan():
    assert all(math.isnan(v) for v in exact(sympy.log(x) + sympy.sqrt(x), [-1.0]))


def test_nan_input_gives_nan():
    assert math.isnan(exact(X2EX_GRAD, [math.nan])[0])


# --- cancellation and ill-conditioning ---------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_cancellation_near_minus_two_is_within_one_ulp(device):
    points = [-2.0 + k * 2.0**-40 for k in range(-4, 5) if k] + [-1.9999, -2.0001, -2.5, -1.5]
    for point, value in zip(points, exact(X2EX_GRAD, points, device=device)):
        assert ulps(value, mpmath_50(lambda v: v * v * mpmath.exp(v) + 2 * v * mpmath.exp(v), point)) <= 1


def test_cancellation_at_minus_two_is_exactly_zero():
    assert exact(X2EX_GRAD, [-2.0]) == [0.0]


def test_printed_gradient_near_minus_two_is_off():
    point = -2.0 + 2.0**-40
    (printed,) = to_torch([X2EX_GRAD], [x])(torch.tensor([point], dtype=torch.float64))
    truth = mpmath_50(lambda v: v * v * mpmath.exp(v) + 2 * v * mpmath.exp(v), point)
    assert ulps(printed.item(), truth) > 1000  # what the oracle has to repair


def test_ill_conditioned_inner_sum():
    expr = sympy.diff(x * sympy.log(1 + x), x)  # log(1 + x) at tiny x
    assert exact(expr, [1e-10]) == [mpmath_50(lambda v: mpmath.log1p(v) + v / (1 + v), 1e-10)]


def test_exponential_of_a_rounded_argument():
    expr = sympy.diff(sympy.exp(x**2 / 3), x)
    assert ulps(exact(expr, [25.0])[0], mpmath_50(lambda v: 2 * v / 3 * mpmath.exp(v * v / 3), 25.0)) <= 1


def test_needs_more_than_forty_digits():
    expr = (sympy.exp(x) - 1 - x) / x**2
    assert exact(expr, [1e-8, 1e-30]) == [
        mpmath_50(lambda v: (mpmath.exp(v) - 1 - v) / v**2, 1e-8),
        0.5,
    ]


# --- special functions ---------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_trigamma_matches_mpmath_where_torch_is_off(device):
    points = [0.3, 1.7, 4.1, 12.5, -0.5]
    (torch_kernel,) = to_torch([sympy.polygamma(1, x)], [x])(torch.tensor(points, dtype=torch.float64))
    values = exact(sympy.polygamma(1, x), points, device=device)
    for point, value, kernel in zip(points, values, torch_kernel.tolist()):
        truth = mpmath_50(lambda v: mpmath.psi(1, v), point)
        assert ulps(value, truth) <= 1
    assert max(ulps(k, mpmath_50(lambda v: mpmath.psi(1, v), p)) for p, k in zip(points, torch_kernel.tolist())) > 10


def test_digamma_near_its_root():
    root = 1.4616321449683622  # digamma's positive root, where relative accuracy is hardest
    expr = sympy.diff(sympy.loggamma(x), x)
    assert exact(expr, [root]) == [mpmath_50(mpmath.digamma, root)]


def test_gamma_is_exact():
    assert exact(sympy.gamma(x), [170.5]) == [mpmath_50(mpmath.gamma, 170.5)]


# --- float64 fast path ---------------------------------------------------------------


def test_trusted_points_never_reach_mpmath(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the high-precision tier was called")

    monkeypatch.setattr(_precise, "exact_values", refuse)
    values = torch.linspace(0, 10, 1001, dtype=torch.float64)
    (out,) = evaluate([SOFTPLUS_GRAD], [x], [values])
    assert torch.equal(out, to_torch([SOFTPLUS_GRAD], [x])(values)[0])


def test_fast_path_is_within_a_few_ulps():
    points = torch.linspace(-10, 10, 201, dtype=torch.float64)
    values = evaluate([X2EX_GRAD], [x], [points])[0].tolist()
    for point, value in zip(points.tolist(), values):
        assert ulps(value, mpmath_50(lambda v: v * v * mpmath.exp(v) + 2 * v * mpmath.exp(v), point) or 5e-324) <= 8


# --- shapes, dtypes, devices ---------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_any_input_dtype_gives_float64_on_the_same_device(device, dtype):
    (out,) = evaluate([SINC_GRAD], [x], [torch.tensor([0.0, 1.0], dtype=dtype, device=device)])
    assert out.dtype == torch.float64 and out.device.type == device
    zero, one = out.tolist()
    assert zero == 0.0 and ulps(one, mpmath_50(lambda v: mpmath.cos(v) - mpmath.sin(v), 1.0)) <= 1


@pytest.mark.parametrize("device", DEVICES)
def test_broadcasting_several_expressions(device):
    a = torch.tensor([[0.0], [1.0]], dtype=torch.float64, device=device)
    b = torch.tensor([0.0, 2.0, 3.0], dtype=torch.float32, device=device)
    outs = evaluate([x * y, sympy.Integer(3), sympy.sin(x) / x], [x, y], [a, b])
    assert [tuple(o.shape) for o in outs] == [(2, 3)] * 3
    assert outs[1].tolist() == [[3.0] * 3] * 2
    assert outs[2][0].tolist() == [1.0] * 3


def test_wrong_number_of_values():
    with pytest.raises(ValueError, match=r"Expected one value per symbol in \[x, y\], but got 1 values"):
        evaluate([x + y], [x, y], [torch.ones(1)])


def test_missing_mpmath_translation_warns_and_keeps_float64():
    f = sympy.Function("f")
    register_sympy_function(f, torch.reciprocal)
    with pytest.warns(UserWarning, match=r"No mpmath reference for f\(x\)"):
        (out,) = evaluate([f(x)], [x], [torch.tensor([0.0, 2.0], dtype=torch.float64)])
    assert out.tolist() == [math.inf, 0.5]


def test_registered_mpmath_implementation_is_used():
    f = sympy.Function("f")
    register_sympy_function(f, lambda v: torch.exp(v) / (1 + torch.exp(v)), mpmath_implementation=lambda v: 1 / (1 + mpmath.exp(-v)))
    assert exact(f(x), [800.0]) == [1.0]


# --- traps found by fuzzing against 700-digit mpmath ---------------------------------


def test_overflow_in_a_divisor_is_not_trusted():
    expr = sympy.diff(sympy.log(1 + x**2), x)  # 2x/(x² + 1): x² is inf at 1e300, the result 0.0
    assert exact(expr, [1e300]) == [2e-300]


def test_overflow_in_a_squared_divisor_is_not_trusted():
    expr = sympy.diff(x / (1 + sympy.exp(-x)), x)  # (1 + e^700)**2 overflows
    assert exact(expr, [-700.0]) == [mpmath_50(lambda v: v * mpmath.exp(-v) / (1 + mpmath.exp(-v)) ** 2 + 1 / (1 + mpmath.exp(-v)), -700.0)]


def test_agreeing_precisions_that_both_lose_a_term_are_not_accepted():
    gelu_grad = sympy.diff(x * (1 + sympy.erf(x / sympy.sqrt(2))) / 2, x)  # erf(x/√2)/2 + 1/2 ≈ 1e-89
    point = -20.19887971624531
    with mpmath.workdps(200):
        v = mpmath.mpf(point)
        truth = float(v * mpmath.exp(-v * v / 2) / mpmath.sqrt(2 * mpmath.pi) + mpmath.erfc(-v / mpmath.sqrt(2)) / 2)
    assert exact(gelu_grad, [point]) == [truth]


def test_pole_with_a_tiny_residue_diverges():
    assert exact(sympy.diff(sympy.gamma(x), x), [0.0, -1.0, -700.0]) == [-math.inf, math.inf, -math.inf]


def test_max_and_piecewise_in_the_reference():
    expr = sympy.Max(x, y) * sympy.Piecewise((x, x > 0), (-x, True))
    assert exact(expr, [2.0, -3.0], [1.0, 5.0], symbols=(x, y)) == [4.0, 15.0]


def test_special_and_plain_expressions_together():
    trigamma, square = evaluate([sympy.polygamma(1, x), x**2], [x], [torch.tensor([1.0], dtype=torch.float64)])
    assert trigamma.tolist() == [mpmath_50(lambda v: mpmath.pi**2 / 6 + 0 * v, 1.0)] and square.tolist() == [1.0]


def test_a_new_registration_is_seen_by_a_cached_plan():
    f = sympy.Function("f")
    register_sympy_function(f, lambda v: v + 1, mpmath_implementation=lambda v: v + 1)
    assert exact(f(x), [1.0]) == [2.0]
    register_sympy_function(f, lambda v: v + 2, mpmath_implementation=lambda v: v + 2)
    assert exact(f(x), [1.0]) == [3.0]


# --- accuracy against a scale (the gradient check's mode) ------------------------------


def test_accuracy_against_a_scale_leaves_cancellation_to_the_caller(monkeypatch):
    monkeypatch.setattr(_precise, "exact_values", lambda *a, **k: (_ for _ in ()).throw(AssertionError("refined")))
    point = torch.tensor([-2.0 + 2.0**-40], dtype=torch.float64)
    (out,) = evaluate([X2EX_GRAD], [x], [point], accuracy=1e-9, against=torch.tensor([0.5], dtype=torch.float64))
    assert torch.equal(out, to_torch([X2EX_GRAD], [x])(point)[0])


def test_accuracy_without_a_scale_is_relative_to_the_value():
    point = torch.tensor([-2.0 + 2.0**-40], dtype=torch.float64)
    (out,) = evaluate([X2EX_GRAD], [x], [point], accuracy=1e-9)
    truth = mpmath_50(lambda v: (v * v + 2 * v) * mpmath.exp(v), point.item())
    assert abs(out.item() - truth) <= 1e-9 * abs(truth)


def test_accuracy_mode_still_repairs_non_finite_values():
    (out,) = evaluate([SOFTPLUS_GRAD], [x], [torch.tensor([800.0], dtype=torch.float64)], accuracy=1e-9)
    assert out.tolist() == [1.0]


def test_accuracy_mode_trusts_a_kernel_accurate_enough():
    (out,) = evaluate([sympy.polygamma(1, x)], [x], [torch.tensor([4.1], dtype=torch.float64)], accuracy=1e-6)
    assert out.item() == to_torch([sympy.polygamma(1, x)], [x])(torch.tensor([4.1], dtype=torch.float64))[0].item()


def test_accuracy_mode_refines_a_kernel_not_accurate_enough():
    (out,) = evaluate([sympy.polygamma(1, x)], [x], [torch.tensor([4.1], dtype=torch.float64)], accuracy=1e-12)
    assert out.item() == mpmath_50(lambda v: mpmath.psi(1, v), 4.1)


def test_ill_conditioned_argument_exact_by_default_and_within_its_condition_in_accuracy_mode():
    expr = sympy.diff(sympy.exp(x**2 / 3), x)  # exp of a rounded x²/3: ~200 roundoffs at 25
    exact = mpmath_50(lambda v: 2 * v / 3 * mpmath.exp(v * v / 3), 25.0)
    (strict,) = evaluate([expr], [x], [torch.tensor([25.0], dtype=torch.float64)])
    assert ulps(strict.item(), exact) <= 1
    # Against a scale that carries the condition of the argument (x²/3 ≈ 208 roundoffs), float64's
    # value may stand, as it is within that condition.
    scale = torch.tensor([512 * exact], dtype=torch.float64)
    (fast,) = evaluate([expr], [x], [torch.tensor([25.0], dtype=torch.float64)], accuracy=2.0**-53, against=scale)
    assert abs(fast.item() - exact) / exact <= 4 * 208 * 2.0**-53


def test_a_cancelling_sum_is_evaluated_in_its_factored_form_without_high_precision(monkeypatch):
    # x**2 e**x + 2x e**x cancels near -2; x (x + 2) e**x does not, and its float64 value is
    # as good as a check needs there.
    x = sympy.Symbol("x", real=True)
    expr = x**2 * sympy.exp(x) + 2 * x * sympy.exp(x)
    points = torch.linspace(-2.001, -1.999, 101, dtype=torch.float64)
    exact = _precise.exact_values([expr], [x], points.numpy()[:, None]).values[:, 0]
    calls = []
    real = _precise.exact_values
    monkeypatch.setattr(_precise, "exact_values", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    (value,) = oracle.evaluate([expr], [x], [points], accuracy=1e-14)
    assert sum(calls) <= 1  # -2 itself, where the factored form is 0 too: nothing left to refine but it
    np.testing.assert_allclose(value.numpy(), exact, rtol=1e-14, atol=0)


# --- cheaper tiers before high precision --------------------------------------------------


def count_refinements(monkeypatch) -> list[int]:
    """The number of points each call sends to high precision."""
    calls: list[int] = []
    real = _precise.exact_values
    monkeypatch.setattr(_precise, "exact_values", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    return calls


def arb_values(expr, points, symbols=(x,)):
    return _precise.exact_values([expr], list(symbols), np.asarray(points, dtype=np.float64)[:, None]).values[:, 0]


@pytest.mark.skipif(_printer.LONGDOUBLE_BITS < 64, reason="long double is float64 here")
def test_a_ratio_of_giants_is_settled_in_long_double(monkeypatch):
    # The quotient rule's (3x**2 - 2)(1 + x**2) - (x**3 - 2x) 2x over (1 + x**2)**2 overflows
    # at 1e200 in float64; long double holds 1e800 and gives the value ~1.
    expr = sympy.diff((x**3 - 2 * x) / (1 + x**2), x)
    points = torch.tensor([1e200, -3e250, 7e120], dtype=torch.float64)
    truth = arb_values(expr, points.numpy())
    calls = count_refinements(monkeypatch)
    (value,) = evaluate([expr], [x], [points])
    assert calls == []
    assert value.tolist() == truth.tolist()


@pytest.mark.skipif(_printer.LONGDOUBLE_BITS < 64, reason="long double is float64 here")
def test_the_long_double_printer_keeps_constants_exact():
    from autocheck._printer import to_longdouble

    (value,) = to_longdouble([sympy.Float(0.7) * x + sympy.Rational(1, 3) + sympy.pi], [x])(np.array([1.0]))
    assert value[0] == np.longdouble(0.7) + np.longdouble(1) / 3 + np.longdouble("3.14159265358979323846264")
    with pytest.raises(TranslationError, match="long double"):
        to_longdouble([sympy.erf(x)], [x])


def test_softsign_cancellation_is_evaluated_factored_where_sign_is_not_zero(monkeypatch):
    # -x sign(x)/(|x| + 1)**2 + 1/(|x| + 1) is 1/(|x| + 1)**2 once x sign(x) is |x|.
    expr = sympy.diff(x / (sympy.Abs(x) + 1), x)
    points = torch.tensor([1e6, -3e9, 2.5e15, 0.0], dtype=torch.float64)
    truth = arb_values(expr, points.numpy())
    calls = count_refinements(monkeypatch)
    (value,) = evaluate([expr], [x], [points], accuracy=1e-14)
    assert sum(calls) <= 1  # at most 0, where |x|/x is not sign(x)
    np.testing.assert_allclose(value.numpy(), truth, rtol=1e-14, atol=0)


@pytest.mark.parametrize(("expr", "form"), [
    (sympy.erfinv(2 * x - 1), -sympy.erfcinv(2 * x)),
    (1 - sympy.erfc(x) / 2, _printer.ReflectedErfc(x) / 2),
    (1 - sympy.erf(x), sympy.erfc(x)),
    (sympy.besseli(0, x) / 2 + sympy.besseli(2, x) / 2, sympy.besseli(0, x) - sympy.besseli(1, x) / x),
])
def test_forms_that_float64_evaluates_well(expr, form):
    assert oracle._accurate_form(expr) == form


def test_ndtri_derivative_is_accurate_where_erfinv_of_2x_minus_1_is_not():
    # sqrt(2 pi) exp(erfinv(2x - 1)**2) is evaluated as sqrt(2 pi) erfcx(a)/(2x), a = erfcinv(2x):
    # no rounded 2x - 1, and no exponential of a rounded a**2 (700 at 1e-300).
    expr = sympy.sqrt(2 * sympy.pi) * sympy.exp(sympy.erfinv(2 * x - 1) ** 2)
    assert oracle._accurate_form(expr) == sympy.sqrt(2 * sympy.pi) * _printer.Erfcx(sympy.erfcinv(2 * x)) / (2 * x)
    points = torch.tensor([1e-300, 1e-20, 0.3, 1 - 2.0**-40], dtype=torch.float64)
    truth = arb_values(expr, points.numpy())
    fast, _, errors = oracle.fast([expr], [x], [points], accuracy=1e-15)
    assert errors[0] is not None and errors[0][:3].le(64 * 2.0**-53 * fast[0][:3].abs()).all()  # tight near 0
    assert (fast[0] - torch.from_numpy(truth)).abs().le(errors[0]).all()  # and a true bound everywhere


def test_log_ndtr_derivative_far_out_is_found_without_high_precision(monkeypatch):
    # exp(-x**2/2) / (sqrt(2 pi) ndtr(x)) is 0/0 in float64 below -38; written with erfcx it is
    # about |x|.
    expr = sympy.diff(sympy.log(1 - sympy.erfc(x / sympy.sqrt(2)) / 2), x)
    points = torch.tensor([-40.0, -1e5, -1e8], dtype=torch.float64)
    truth = [mpmath_50(lambda v: mpmath.npdf(v) / mpmath.ncdf(v), p) for p in points.tolist()]
    calls = count_refinements(monkeypatch)
    (value,) = evaluate([expr], [x], [points], accuracy=1e-13)
    assert calls == []
    np.testing.assert_allclose(value.numpy(), truth, rtol=1e-13, atol=0)


def test_a_loose_kernel_comes_with_an_error_bound_instead_of_trust():
    # torch's i1 is within ~12 units of roundoff: not trusted to 1e-15, but bounded.
    points = torch.tensor([0.5, 3.0, 600.0], dtype=torch.float64)
    values, trusted, errors = oracle.fast([sympy.besseli(1, x)], [x], [points], accuracy=1e-15)
    truth = arb_values(sympy.besseli(1, x), points.numpy())
    assert not trusted[0].any()
    assert (torch.from_numpy(truth) - values[0]).abs().le(errors[0]).all()
    assert errors[0].le(200 * 2.0**-53 * values[0].abs()).all()


def test_a_settled_point_is_not_computed_twice(monkeypatch):
    calls = []
    real = _precise._exact_at
    monkeypatch.setattr(_precise, "_exact_at", lambda *a: calls.append(a[1]) or real(*a))
    expr = sympy.exp(x) * sympy.polygamma(2, x + 3) + x  # a new expression: nothing remembered yet
    first = _precise.exact_values([expr], [x], np.array([[2.5], [-0.0], [0.0]]))
    second = _precise.exact_values([expr], [x], np.array([[2.5], [0.0]]))
    assert sorted(map(str, calls)) == ["(-0.0,)", "(0.0,)", "(2.5,)"]  # -0.0 and 0.0 apart, once each
    assert second.values[:, 0].tolist() == [first.values[0, 0], first.values[2, 0]]


def test_tiny_inputs_that_cancel_still_get_their_bits():
    points = [1e-300, 3e-200]
    assert arb_values(sympy.cos(x) - 1, [1e-150]).tolist() == [-5e-301]
    assert arb_values((sympy.cos(x) - 1) / x**2, points).tolist() == [-0.5, -0.5]
    assert arb_values(sympy.exp(x) - 1 - x, [1e-100]).tolist() == [5e-201]


def test_an_integer_power_of_a_ball_centred_on_zero_is_not_nan():
    # 1 - erfc(z)/2 at z = -28.3 is a ball [0 +/- 4e-350] at 80 bits, and python-flint's ** gives
    # nan for any power of it; the reciprocal must ask for more bits instead, and find the value.
    expr = 1 / (1 - sympy.erfc(x / sympy.sqrt(2)) / 2)
    assert arb_values(expr, [-40.0]).tolist() == [mpmath_50(lambda v: 1 / mpmath.ncdf(v), -40.0)]


def test_a_sum_that_may_cancel_is_trusted_only_within_its_error_bound():
    points = torch.tensor([1e-5, 2.0], dtype=torch.float64)
    _, trusted, errors = oracle.fast([sympy.cos(x) - 1], [x], [points], accuracy=1e-14)
    assert trusted[0].tolist() == [False, True]  # cos(1e-5) - 1 keeps 6 of its digits
    truth = arb_values(sympy.cos(x) - 1, points.numpy())
    fast, _, _ = oracle.fast([sympy.cos(x) - 1], [x], [points], accuracy=1e-14)
    assert (fast[0] - torch.from_numpy(truth)).abs().le(errors[0]).all()
    _, trusted, errors = oracle.fast([sympy.exp(-x) / (1 + sympy.exp(-x)) ** 2], [x], [points], accuracy=1e-14)
    assert trusted[0].all() and errors[0] is None  # positive terms only: nothing to lose


def test_an_overflowed_divisor_is_found_where_the_probes_sum_overflows():
    # 2x / (x**2 + 1) watches x**2 + 1: at 1.2e154 and 1.3e154 both are finite though their sum
    # is not, so the points must be looked at one by one; at 1e155 x**2 is inf and the float64
    # value (0.0) is not vouched for.
    expr = 2 * x / (x**2 + 1)
    _, trusted, _ = oracle.fast([expr], [x], [torch.tensor([1.2e154, 1.3e154], dtype=torch.float64)], accuracy=1e-14)
    assert trusted[0].tolist() in (True, [True, True])
    _, trusted, _ = oracle.fast([expr], [x], [torch.tensor([1.2e154, 1e155], dtype=torch.float64)], accuracy=1e-14)
    assert trusted[0].tolist() == [True, False]


def test_an_underflowed_intermediate_that_a_root_and_a_quotient_magnify_is_not_trusted():
    # x/sqrt(x**2 + y**2) at x = -3.75e-162, y = -2.3e-280: x**2 is subnormal (two significant
    # bits), and float64 gives -0.9746 where the exact value is -1.0 (to 236 digits)
    expr = x / sympy.sqrt(x**2 + y**2)
    point = ([-3.75e-162, 3.0], [-2.3e-280, 4.0])
    values, trusted, _ = oracle.fast([expr], [x, y], [torch.tensor(p, dtype=torch.float64) for p in point], accuracy=1e-14)
    assert values[0].tolist() == [pytest.approx(-0.974043409), 0.6]
    assert trusted[0].tolist() == [False, True]
    assert exact(expr, *point, symbols=(x, y)) == [-1.0, 0.6]


def test_underflow_that_a_sum_drowns_or_that_the_value_shares_is_trusted():
    # 1/(1 + e**-x) at 800: e**-x underflows to 0 inside the divisor, and 1 + 0 is the exact 1
    # rounded; sigmoid's derivative at 740 and 800 is subnormal or 0 itself (judged against atol)
    points = torch.tensor([740.0, 800.0, 1.0], dtype=torch.float64)
    for expr in (1 / (1 + sympy.exp(-x)), sympy.exp(-x) / (1 + sympy.exp(-x)) ** 2):
        _, trusted, _ = oracle.fast([expr], [x], [points], accuracy=1e-14)
        assert trusted[0].tolist() in (True, [True, True, True])


def test_the_float64_tier_takes_empty_points():
    values, trusted, _ = oracle.fast([x / sympy.sqrt(x**2 + y**2)], [x, y], [torch.empty(0, dtype=torch.float64)] * 2,
                                     accuracy=1e-14)
    assert values[0].shape == (0,) and trusted[0].numel() in (0, 1)
