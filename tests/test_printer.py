"""SymPy → torch and mpmath translation: every gap of SymPy's own torch printer."""

from __future__ import annotations

import math

import mpmath
import pytest
import sympy
import torch
from sympy.codegen.cfunctions import expm1, log1p

from autocheck._errors import TranslationError
from autocheck._printer import (
    SYMPY_TO_MPMATH,
    SYMPY_TO_TORCH,
    Undefined,
    register_sympy_function,
    to_mpmath,
    to_torch,
)

x, y = sympy.symbols("x y", real=True)
NAN, INF = math.nan, math.inf

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.fixture(autouse=True)
def _forget_registrations():
    yield
    SYMPY_TO_TORCH.maps[0].clear()
    SYMPY_TO_MPMATH.maps[0].clear()


def at(expr, *values, device="cpu", symbols=(x,)):
    """Evaluate one expression at float64 points; a list of Python floats."""
    tensors = [torch.tensor(v, dtype=torch.float64, device=device) for v in values]
    (out,) = to_torch([expr], list(symbols))(*tensors)
    assert out.dtype == torch.float64 and out.device.type == device
    return out.cpu().tolist()


def reference(function, points):
    with mpmath.workdps(40):
        return [float(function(mpmath.mpf(p))) for p in points]


def assert_ulps(actual, expected, ulps=2):
    for a, e in zip(actual, expected, strict=True):
        if math.isnan(e) or math.isinf(e):
            assert a == e or (math.isnan(a) and math.isnan(e)), (actual, expected)
        else:
            assert abs(a - e) <= ulps * math.ulp(e), (actual, expected)


# --- 1. numeric subexpressions ------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_sqrt_of_a_number_is_folded(device):
    assert at(sympy.sqrt(2) * x, [1.0, 3.0], device=device) == [math.sqrt(2), 3 * math.sqrt(2)]


@pytest.mark.parametrize("device", DEVICES)
def test_log_of_a_number_is_folded(device):
    assert_ulps(at(sympy.log(x, 2), [8.0, 0.5], device=device), [3.0, -1.0], ulps=1)


@pytest.mark.parametrize("device", DEVICES)
def test_erf_derivative_constant(device):
    values = at(sympy.diff(sympy.erf(x), x), [0.0, 0.5, -2.0], device=device)
    assert_ulps(values, reference(lambda v: 2 * mpmath.exp(-v * v) / mpmath.sqrt(mpmath.pi), [0.0, 0.5, -2.0]))


@pytest.mark.parametrize("device", DEVICES)
def test_power_of_two_derivative(device):
    values = at(sympy.diff(2**x, x), [0.0, 3.0], device=device)
    assert_ulps(values, [math.log(2), 8 * math.log(2)], ulps=1)


def test_nested_numeric_function_is_folded():
    assert at(x * sympy.exp(sympy.sqrt(2)), [1.0]) == [math.exp(math.sqrt(2))]


# --- 2. Heaviside ---------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_heaviside_default_is_one_half_at_zero(device):
    assert at(sympy.Heaviside(x), [-1.0, 0.0, 2.0, NAN], device=device)[:3] == [0.0, 0.5, 1.0]


def test_heaviside_keeps_nan():
    assert math.isnan(at(sympy.Heaviside(x), [NAN])[0])


@pytest.mark.parametrize("device", DEVICES)
def test_heaviside_with_explicit_value_at_zero(device):
    assert at(sympy.Heaviside(x, sympy.Rational(1, 3)), [0.0, 1.0], device=device) == [1 / 3, 1.0]


def test_heaviside_with_symbolic_value_at_zero():
    assert at(sympy.Heaviside(x, y), [0.0, 0.0], [0.25, 0.75], symbols=(x, y)) == [0.25, 0.75]


# --- 3. Max and Min ---------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_max_with_a_number(device):
    assert at(sympy.Max(x, sympy.Rational(2, 5)), [0.0, 1.0], device=device) == [0.4, 1.0]


def test_min_with_a_float():
    assert at(sympy.Min(x, 0.25), [0.0, 1.0]) == [0.0, 0.25]


def test_nested_max_min_with_many_arguments():
    expr = sympy.Max(x, y, 0.4, sympy.Min(x, 1, y + 3))
    assert at(expr, [-1.0, 5.0, 0.5], [0.0, -9.0, 0.45], symbols=(x, y)) == [0.4, 5.0, 0.5]


def test_max_propagates_nan():
    assert math.isnan(at(sympy.Max(x, 1), [NAN])[0])


# --- 4. gamma family ----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_gamma_positive_and_negative(device):
    points = [0.5, 3.0, 5.5, -0.5, -1.5, -2.5]
    assert_ulps(at(sympy.gamma(x), points, device=device), reference(mpmath.gamma, points), ulps=8)


def test_gamma_poles_follow_c_tgamma():
    assert at(sympy.gamma(x), [0.0, -0.0])[:2] == [INF, -INF]
    assert all(math.isnan(v) for v in at(sympy.gamma(x), [-1.0, -4.0]))


def test_loggamma_is_log_of_absolute_gamma():
    points = [0.5, 10.0, -0.5]
    assert_ulps(at(sympy.loggamma(x), points), reference(lambda v: mpmath.log(abs(mpmath.gamma(v))), points))


@pytest.mark.parametrize("device", DEVICES)
def test_digamma(device):
    points = [0.5, 2.0, 7.25]
    assert_ulps(at(sympy.polygamma(0, x), points, device=device), reference(mpmath.digamma, points), ulps=8)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_polygamma_positive_orders(order):
    points = [0.5, 2.0, 7.25]
    expected = reference(lambda v: mpmath.polygamma(order, v), points)
    actual = at(sympy.polygamma(order, x), points)
    assert all(abs(a - e) <= 1e-8 * abs(e) for a, e in zip(actual, expected))  # torch's kernel, not exact


def test_polygamma_of_symbolic_order_is_refused():
    n = sympy.Symbol("n", integer=True)
    with pytest.raises(TranslationError, match=r"(?s)polygamma of order n .* orders 0, 1, 2, \.\.\."):
        to_torch([sympy.polygamma(n, x)], [x, n])


# --- 5. the other missing functions --------------------------------------------------


CASES = {
    "sec": (sympy.sec(x), mpmath.sec, [0.5, 2.0, -3.0]),
    "csc": (sympy.csc(x), mpmath.csc, [0.5, 2.0, -3.0]),
    "cot": (sympy.cot(x), mpmath.cot, [0.5, 2.0, -3.0]),
    "acot": (sympy.acot(x), mpmath.acot, [0.5, -2.0]),
    "asec": (sympy.asec(x), mpmath.asec, [1.5, -2.0]),
    "acsc": (sympy.acsc(x), mpmath.acsc, [1.5, -2.0]),
    "sech": (sympy.sech(x), mpmath.sech, [0.5, -2.0]),
    "csch": (sympy.csch(x), mpmath.csch, [0.5, -2.0]),
    "coth": (sympy.coth(x), mpmath.coth, [0.5, -2.0]),
    "acoth": (sympy.acoth(x), mpmath.acoth, [1.5, -2.0]),
    "erfc": (sympy.erfc(x), mpmath.erfc, [-1.0, 0.5, 5.0]),
    "erfinv": (sympy.erfinv(x), mpmath.erfinv, [-0.9, 0.1, 0.5]),
    "erfcinv": (sympy.erfcinv(x), lambda v: mpmath.erfinv(1 - v), [0.5, 1.5]),
    "besselj0": (sympy.besselj(0, x), lambda v: mpmath.besselj(0, v), [0.5, 1.0]),
    "besselj1": (sympy.besselj(1, x), lambda v: mpmath.besselj(1, v), [0.5, 1.0]),
    "besseli0": (sympy.besseli(0, x), lambda v: mpmath.besseli(0, v), [0.5, 3.0]),
    "besseli1": (sympy.besseli(1, x), lambda v: mpmath.besseli(1, v), [0.5, 3.0]),
    "log1p": (log1p(x), mpmath.log1p, [1e-20, 0.5]),
    "expm1": (expm1(x), mpmath.expm1, [1e-20, 0.5]),
    "asinh": (sympy.asinh(x), mpmath.asinh, [-3.0, 0.5]),
    "acosh": (sympy.acosh(x), mpmath.acosh, [1.5, 30.0]),
    "atanh": (sympy.atanh(x), mpmath.atanh, [-0.5, 0.9]),
    "erf": (sympy.erf(x), mpmath.erf, [-0.5, 2.0]),
    "lambertw": (sympy.LambertW(x), mpmath.lambertw, [-0.3, 0.5, 10.0, 1e100]),
    "zeta": (sympy.zeta(x), mpmath.zeta, [1.5, 4.0]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_function_matches_mpmath(name):
    expr, function, points = CASES[name]
    tolerance = 1e-12 if name.startswith("bessel") else 1e-14
    expected = reference(lambda v: mpmath.re(function(v)), points)
    actual = at(expr, points)
    assert all(abs(a - e) <= tolerance * abs(e) for a, e in zip(actual, expected)), (actual, expected)


def test_lambertw_below_the_branch_point_is_nan():
    assert math.isnan(at(sympy.LambertW(x), [-0.5])[0])


def test_lambertw_other_branch_is_refused():
    with pytest.raises(TranslationError, match=r"LambertW\(x, k\) with k != 0"):
        to_torch([sympy.LambertW(x, -1)], [x])(torch.tensor([-0.2]))


@pytest.mark.parametrize("bessel", [sympy.besselj, sympy.bessely, sympy.besseli, sympy.besselk])
def test_bessel_of_higher_order_by_recurrence(bessel):
    points = [0.5, 3.0, 12.0]
    (got,) = to_torch([bessel(3, x)], [x])(torch.tensor(points, dtype=torch.float64))
    mp = {sympy.besselj: mpmath.besselj, sympy.bessely: mpmath.bessely, sympy.besseli: mpmath.besseli,
          sympy.besselk: mpmath.besselk}[bessel]
    expected = [float(mp(3, v)) for v in points]
    assert got.tolist() == pytest.approx(expected, rel=1e-9)


def test_bessel_of_a_fractional_order_is_refused_with_the_fix():
    with pytest.raises(TranslationError, match=r"(?s)besselj of order 1/2 .*register_sympy_function\(sympy\.besselj"):
        to_torch([sympy.besselj(sympy.Rational(1, 2), x)], [x])


@pytest.mark.parametrize("device", DEVICES)
def test_sinc_is_unnormalized(device):
    assert at(sympy.sinc(x), [0.0, math.pi / 2], device=device) == [1.0, math.sin(math.pi / 2) / (math.pi / 2)]


def test_sinc_is_accurate_far_from_zero():
    assert_ulps(at(sympy.sinc(x), [1e6 + 0.5]), reference(mpmath.sinc, [1e6 + 0.5]), ulps=2)


@pytest.mark.parametrize("device", DEVICES)
def test_sign_and_abs(device):
    assert at(sympy.sign(x), [-2.0, 0.0, 3.0], device=device) == [-1.0, 0.0, 1.0]
    assert at(sympy.Abs(x), [-2.0, 0.0], device=device) == [2.0, 0.0]


def test_sign_keeps_nan():
    assert math.isnan(at(sympy.sign(x), [NAN])[0])


def test_floor_and_ceiling():
    assert at(sympy.floor(x), [-1.5, 2.5]) == [-2.0, 2.0]
    assert at(sympy.ceiling(x), [-1.5, 2.5]) == [-1.0, 3.0]


def test_mod_takes_the_sign_of_the_divisor():
    assert at(sympy.Mod(x, 3), [-1.0, 7.0]) == [2.0, 1.0]


def test_atan2_with_a_number():
    assert at(sympy.atan2(1, x), [1.0, -1.0]) == [math.atan2(1, 1), math.atan2(1, -1)]


@pytest.mark.parametrize("device", DEVICES)
def test_dirac_delta_is_zero_away_from_zero_and_nan_at_zero(device):
    values = at(sympy.DiracDelta(x), [-1.0, 0.0, 2.0], device=device)
    assert values[0] == 0.0 and math.isnan(values[1]) and values[2] == 0.0


# --- 6, 7. Piecewise ----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_piecewise_without_default_is_nan_where_no_condition_holds(device):
    values = at(sympy.Piecewise((x, x > 0)), [-1.0, 2.0], device=device)
    assert math.isnan(values[0]) and values[1] == 2.0


def test_piecewise_with_boolean_conditions():
    expr = sympy.Piecewise((x, sympy.And(x > 0, x < 1)), (2, sympy.Or(x < -1, sympy.Not(y > 0))), (3, True))
    assert at(expr, [0.5, -2.0, 5.0, 5.0], [1.0, 1.0, -1.0, 1.0], symbols=(x, y)) == [0.5, 2.0, 2.0, 3.0]


def test_piecewise_with_number_on_the_left_of_a_relation():
    expr = sympy.Piecewise((1, sympy.Lt(0, x, evaluate=False)), (0, True))
    assert at(expr, [-1.0, 1.0]) == [0.0, 1.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_scalar_branches_keep_the_input_dtype(device, dtype):
    (out,) = to_torch([sympy.Piecewise((1, x > 0), (sympy.Rational(1, 10), True))], [x])(
        torch.tensor([-1.0, 1.0], dtype=dtype, device=device)
    )
    assert out.dtype == dtype and out.device.type == device
    assert out.tolist() == [torch.tensor(0.1, dtype=dtype).item(), 1.0]


# --- 8. constants -------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_constant_expressions_are_full_tensors(device, dtype):
    three, zero = to_torch([sympy.Integer(3), sympy.Integer(0)], [x, y])(
        torch.zeros(2, 1, dtype=dtype, device=device), torch.zeros(3, dtype=dtype, device=device)
    )
    for out, value in [(three, 3.0), (zero, 0.0)]:
        assert out.shape == (2, 3) and out.dtype == dtype and out.device.type == device
        assert out.is_contiguous() and bool((out == value).all())


def test_constant_expression_without_symbols():
    (out,) = to_torch([sympy.pi], [])()
    assert out.shape == () and out.item() == pytest.approx(math.pi)


# --- dtype, device, broadcasting ----------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_dtype_and_device_are_kept(device, dtype):
    exprs = [sympy.diff(x**2 * sympy.exp(x), x), sympy.sqrt(2) * x, sympy.gamma(x), sympy.Max(x, 0.4)]
    outs = to_torch(exprs, [x])(torch.tensor([0.5, 1.5], dtype=dtype, device=device))
    assert [(o.dtype, o.device.type) for o in outs] == [(dtype, device)] * len(exprs)


def test_float64_is_not_computed_in_float32():
    (out,) = to_torch([sympy.Rational(1, 3) * x], [x])(torch.tensor([1.0], dtype=torch.float64))
    assert out.item() == 1 / 3


def test_half_precision_is_computed_in_float32_and_rounded():
    (out,) = to_torch([sympy.exp(x) - 1], [x])(torch.tensor([1e-3], dtype=torch.float16))
    assert out.item() == torch.tensor(math.expm1(torch.tensor(1e-3, dtype=torch.float16).item()), dtype=torch.float16).item()


def test_mixed_dtypes_promote():
    (out,) = to_torch([x * y], [x, y])(torch.ones(2, dtype=torch.float32), torch.ones(2, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_arguments_broadcast():
    (out,) = to_torch([x + y], [x, y])(torch.zeros(3, 1, dtype=torch.float64), torch.arange(4.0))
    assert out.shape == (3, 4)


# --- 9. Python numbers and integer tensors --------------------------------------------


def test_python_numbers_are_accepted():
    (out,) = to_torch([x**y + sympy.sqrt(x)], [x, y])(4.0, 2)
    assert out.item() == 18.0 and out.dtype == torch.get_default_dtype()


def test_int64_exponent_tensor():
    (out,) = to_torch([x**y], [x, y])(torch.tensor([2.0], dtype=torch.float64), torch.tensor([3], dtype=torch.int64))
    assert out.tolist() == [8.0] and out.dtype == torch.float64


def test_int64_inputs_become_floating():
    (out,) = to_torch([x / 2], [x])(torch.tensor([3]))
    assert out.tolist() == [1.5]


def test_wrong_argument_count_is_an_error():
    with pytest.raises(TypeError, match=r"Expected 2 arguments, one per symbol in \[x, y\], but got 1"):
        to_torch([x + y], [x, y])(torch.ones(1))


# --- 10. powers and constants ---------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_cube_root_of_a_negative_number_is_nan(device):
    values = at(x ** sympy.Rational(1, 3), [-8.0, 8.0], device=device)
    assert math.isnan(values[0]) and values[1] == 2.0


def test_symbolic_exponent():
    assert at(x**y, [2.0, 9.0], [10.0, 0.5], symbols=(x, y)) == [1024.0, 3.0]


def test_e_and_pi():
    assert at(sympy.E * x + sympy.pi, [1.0]) == [math.e + math.pi]


def test_infinities_and_nan_constants():
    assert at(x + sympy.oo, [1.0]) == [INF]
    assert math.isnan(at(sympy.zoo * x, [1.0])[0])  # zoo has no sign: nan
    assert math.isnan(at(sympy.nan * x, [1.0])[0])


def test_rationals_are_correctly_rounded():
    assert at(sympy.Rational(1, 10) * x, [3.0]) == [0.1 * 3.0]
    assert at(x + sympy.Rational(2, 3), [0.0]) == [2 / 3]


def test_non_real_constant_is_nan():
    assert math.isnan(at(x * sympy.sqrt(-2), [1.0])[0])


def test_reciprocal_and_rsqrt():
    assert at(1 / x + 1 / sympy.sqrt(x), [4.0]) == [0.75]


# --- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        sympy.Derivative(sympy.Function("f")(x), x),
        sympy.Subs(sympy.Derivative(sympy.Function("f")(y), y), y, x),
        sympy.Integral(sympy.Function("f")(y), (y, 0, x)),
        sympy.Limit(sympy.sin(y * x) / y, y, 0),
    ],
    ids=["Derivative", "Subs", "Integral", "Limit"],
)
def test_unevaluated_calculus_is_refused(expr):
    with pytest.raises(TranslationError, match=rf"(?s)unevaluated {type(expr).__name__}.*autograd against itself"):
        to_torch([x + expr], [x])


def test_unevaluated_derivative_is_refused_by_mpmath_too():
    with pytest.raises(TranslationError, match="unevaluated Derivative"):
        to_mpmath([sympy.Derivative(sympy.Function("f")(x), x)], [x])


def test_unknown_function_names_the_fix():
    with pytest.raises(
        TranslationError,
        match=r"(?s)No torch translation for the SymPy function f \(in f\(x\)\)\..*"
        r"register_sympy_function\(sympy\.Function\('f'\), torch_implementation\)",
    ):
        to_torch([sympy.Function("f")(x)], [x])


def test_known_sympy_function_without_translation_names_the_fix():
    with pytest.raises(TranslationError, match=r"(?s)No torch translation for the SymPy function fresnels.*sympy\.fresnels"):
        to_torch([sympy.fresnels(x)], [x])


def test_free_symbol_missing_from_symbols():
    with pytest.raises(ValueError, match=r"uses \['y'\], which are not in symbols=\[x\]"):
        to_torch([x + y], [x])


def test_a_single_expression_must_be_wrapped():
    with pytest.raises(TypeError, match=r"Expected a sequence of SymPy expressions for exprs.*wrap it"):
        to_torch(x + 1, [x])


# --- registration -------------------------------------------------------------------


def test_register_a_callable():
    softplus = sympy.Function("softplus")
    register_sympy_function(softplus, torch.nn.functional.softplus)
    assert at(softplus(x) + 1, [0.0]) == [1.0 + math.log(2)]


def test_register_a_dotted_name():
    register_sympy_function(sympy.fresnels, "torch.special.erfcx")
    assert at(sympy.fresnels(x), [0.0]) == [1.0]


def test_registered_function_receives_numbers_as_tensors():
    seen = []
    f = sympy.Function("f")
    register_sympy_function(f, lambda a, b: seen.append(b.dtype) or a * b)
    assert at(f(x, 3), [2.0]) == [6.0]
    assert seen == [torch.float64]


def test_registration_overrides_the_builtin_table():
    register_sympy_function(sympy.exp, lambda a: torch.zeros_like(a))
    assert at(sympy.exp(x), [1.0]) == [0.0]


def test_register_orders():
    register_sympy_function(sympy.besselj, {2: lambda v: torch.full_like(v, 7.0)})
    assert at(sympy.besselj(2, x), [1.0]) == [7.0]


def test_register_rejects_an_expression():
    with pytest.raises(TypeError, match=r"sympy_function=gamma\(x\) \(an expression: pass the class"):
        register_sympy_function(sympy.gamma(x), torch.lgamma)


def test_register_rejects_an_unknown_torch_name():
    with pytest.raises(ValueError, match=r"torch_implementation='torch\.special\.nope' names nothing"):
        register_sympy_function(sympy.fresnels, "torch.special.nope")


def test_register_rejects_a_non_torch_name():
    with pytest.raises(ValueError, match=r"starting with 'torch\.' for torch_implementation, but got torch_implementation='math\.exp'"):
        register_sympy_function(sympy.fresnels, "math.exp")


def test_register_rejects_a_non_callable():
    with pytest.raises(TypeError, match=r"Expected a callable .* but got torch_implementation=3"):
        register_sympy_function(sympy.fresnels, 3)


def test_register_refuses_derivative():
    with pytest.raises(ValueError, match=r"sympy_function=Derivative cannot be registered"):
        register_sympy_function(sympy.Derivative, torch.exp)


def test_register_an_mpmath_implementation():
    register_sympy_function(sympy.fresnels, "torch.special.erfcx", mpmath_implementation="mpmath.erfc")
    assert to_mpmath([sympy.fresnels(x)], [x])(mpmath.mpf(0)) == (1,)


# --- mpmath ---------------------------------------------------------------------------


def mp(expr, value):
    with mpmath.workdps(30):
        return to_mpmath([expr], [x])(mpmath.mpf(value))[0]


def test_mpmath_handles_codegen_functions():
    assert mp(log1p(x), 1e-30) == mpmath.mpf(1e-30) - mpmath.mpf(1e-30) ** 2 / 2 or abs(mp(log1p(x), 1e-30) - 1e-30) < 1e-59
    assert mpmath.almosteq(mp(expm1(x), 1.0), mpmath.e - 1)


def test_mpmath_heaviside_and_sinc():
    assert [mp(sympy.Heaviside(x), v) for v in (-1.0, 0.0, 1.0)] == [0, 0.5, 1]
    assert mp(sympy.sinc(x), 0.0) == 1


def test_mpmath_dirac_delta_has_no_value_at_zero():
    assert mp(sympy.DiracDelta(x), 1.0) == 0
    with pytest.raises(Undefined):
        mp(sympy.DiracDelta(x), 0.0)


def test_mpmath_piecewise_without_default_is_nan():
    assert mpmath.isnan(mp(sympy.Piecewise((x, x > 0)), -1.0))


def test_mpmath_zoo_is_nan():
    assert mpmath.isnan(mp(sympy.zoo * x, 1.0))


def test_mpmath_loggamma_is_real():
    assert mpmath.almosteq(mp(sympy.loggamma(x), -0.5), mpmath.log(2 * mpmath.sqrt(mpmath.pi)))


def test_mpmath_polygamma_and_erfinv():
    assert mpmath.almosteq(mp(sympy.polygamma(1, x), 1.0), mpmath.pi**2 / 6)
    assert mpmath.almosteq(mp(sympy.erfinv(x), 0.5), mpmath.erfinv(0.5))


def test_mpmath_unknown_function_names_the_fix():
    with pytest.raises(TranslationError, match=r"(?s)No mpmath translation .*mpmath_implementation="):
        to_mpmath([sympy.Function("g")(x)], [x])


# --- symbol names ---------------------------------------------------------------------


def test_symbols_with_any_name():
    odd = [sympy.Dummy("x"), sympy.Symbol("x[0]"), sympy.Symbol("_like"), sympy.Symbol("lambda")]
    (out,) = to_torch([sympy.Add(*odd) + sympy.sqrt(2) * odd[0]], odd)(1.0, 2.0, 3.0, 4.0)
    assert out.item() == pytest.approx(10 + math.sqrt(2))


@pytest.mark.parametrize("z", [-3.0, 0.5, 24.9, 25.1, 1e10, 7e199, 1.7e308])
def test_arb_erfcx_is_certified_far_out_and_agrees_with_mpmath(z):
    import flint
    import mpmath

    from autocheck._printer import Erfcx, to_arb

    s = sympy.Symbol("s", real=True)
    flint.ctx.prec = 100
    try:
        (ball,) = to_arb([Erfcx(s)], [s])(z)
    finally:
        flint.ctx.prec = 53
    assert ball.is_finite() and ball.rad() < abs(ball.mid()) * 2.0**-80  # a narrow ball, even at 1e308
    with mpmath.workdps(60):
        exact = mpmath.exp(mpmath.mpf(z) ** 2) * mpmath.erfc(z) if abs(z) < 1e5 else 1 / (mpmath.mpf(z) * mpmath.sqrt(mpmath.pi)) * (1 - 1 / (2 * mpmath.mpf(z) ** 2))
        assert float(ball.mid()) == pytest.approx(float(exact), rel=1e-15)


@pytest.mark.parametrize("u", [-30.0, 0.5, 26.0, 1e10, 7e199])
def test_arb_erfc_far_right_is_a_narrow_ball_around_a_tiny_value(u):
    import flint

    from autocheck._printer import ReflectedErfc, to_arb

    s = sympy.Symbol("s", real=True)
    flint.ctx.prec = 3000  # enough for exp(-u**2) at 7e199 (its exponent has 1329 bits)
    try:
        erfc, reflected = to_arb([sympy.erfc(s), ReflectedErfc(-s)], [s])(u)
        ratio = erfc / (-(flint.arb(u) ** 2)).exp()  # erfcx(u), which is about 1/(u sqrt(pi)) far right
    finally:
        flint.ctx.prec = 53
    assert erfc.is_finite() and erfc > 0 and erfc.rad() < erfc.mid() * 2.0**-60
    assert reflected.overlaps(erfc)
    if u > 1e5:
        assert float(ratio.mid()) == pytest.approx(1 / (u * math.sqrt(math.pi)), rel=1e-12)


# --- calls with float64 tensors of one shape and numbers -------------------------------


def test_numbers_beside_float64_tensors_keep_their_sign_and_nan():
    f = to_torch([y, x * y, x + y], [x, y])
    a = torch.tensor([1.0, 2.0], dtype=torch.float64)
    signs = [math.copysign(1.0, v) for v in f(a, -0.0)[0].tolist()]
    assert signs == [-1.0, -1.0]
    assert [t.tolist() for t in f(a, 2.5)] == [[2.5, 2.5], [2.5, 5.0], [3.5, 4.5]]
    assert all(math.isnan(v) for t in f(a, NAN) for v in t.tolist())


def test_an_output_that_is_a_number_given_is_a_fresh_tensor():
    # A symbol given as a number comes back as a tensor of its own: changing it in place
    # changes no later call
    f = to_torch([y, x], [x, y])
    a = torch.tensor([1.0, 2.0], dtype=torch.float64)
    number, same = f(a, 3.0)
    assert same is a
    number.add_(1.0)
    assert f(a, 3.0)[0].tolist() == [3.0, 3.0]
    scalar = f(torch.tensor(1.0, dtype=torch.float64), 3.0)[0]
    scalar.add_(1.0)
    assert f(torch.tensor(1.0, dtype=torch.float64), 3.0)[0].item() == 3.0


def test_tensors_of_other_shapes_dtypes_or_devices_are_broadcast_and_promoted():
    f = to_torch([x * y], [x, y])
    column = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    row = torch.tensor([1.0, 10.0], dtype=torch.float64)
    assert f(column, row)[0].tolist() == [[1.0, 10.0], [2.0, 20.0]]
    assert f(torch.tensor([2.0], dtype=torch.float32), 0.5)[0].dtype == torch.float32
