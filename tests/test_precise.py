"""The high-precision tier: certified float64 values from arb balls, mpmath where arb cannot."""

from __future__ import annotations

import math
import time

import flint
import mpmath
import numpy as np
import pytest
import sympy
import torch
from flint import arb

from autocheck import _precise
from autocheck._errors import TranslationError
from autocheck._precise import exact_values
from autocheck._printer import (
    SYMPY_TO_ARB,
    SYMPY_TO_MPMATH,
    SYMPY_TO_TORCH,
    Undecided,
    register_sympy_function,
    to_arb,
    to_torch,
)

x, y = sympy.symbols("x y", real=True)

SOFTPLUS_GRAD = sympy.diff(sympy.log(1 + sympy.exp(x)), x)  # exp(x)/(exp(x) + 1)
SINC_GRAD = sympy.diff(sympy.sinc(x), x)  # cos(x)/x - sin(x)/x**2
X2EX_GRAD = sympy.diff(x**2 * sympy.exp(x), x)  # x**2*exp(x) + 2*x*exp(x)
ONE = sympy.cosh(x) ** 2 - sympy.sinh(x) ** 2  # exactly 1, never computed exactly
TINY = sympy.Rational(1, 2**100)


@pytest.fixture(autouse=True)
def _forget_registrations():
    yield
    SYMPY_TO_TORCH.maps[0].clear()
    SYMPY_TO_MPMATH.maps[0].clear()
    SYMPY_TO_ARB.maps[0].clear()


def precise(expr, *values, symbols=(x,), deadline=None):
    """(values, found, certified) of one expression, as lists."""
    points = np.array(values, dtype=np.float64).T.reshape(-1, len(symbols))
    exact = exact_values([expr], list(symbols), points, deadline=deadline)
    return exact.values[:, 0].tolist(), exact.found[:, 0].tolist(), exact.certified[:, 0].tolist()


def truth(function, *points, digits=60):
    """The correctly rounded float64 of an mpmath function at high precision (normal results)."""
    with mpmath.workdps(digits):
        return float(function(*[mpmath.mpf(p) for p in points]))


def x2ex_grad(v):
    return v * v * mpmath.exp(v) + 2 * v * mpmath.exp(v)


# --- certified correct rounding ---------------------------------------------------------


def test_cancellation_near_minus_two_is_certified_correctly_rounded():
    points = [-2.0 + k * 2.0**-40 for k in range(-4, 5) if k] + [-1.9999, -2.0001]
    values, found, certified = precise(X2EX_GRAD, points)
    assert values == [truth(x2ex_grad, p) for p in points]
    assert all(found) and all(certified)


def test_exact_cancellation_at_minus_two_is_certified_zero():
    assert precise(X2EX_GRAD, [-2.0]) == ([0.0], [True], [True])


def test_softplus_gradient_at_800_is_certified_one():
    at_minus_800 = truth(lambda v: 1 / (1 + mpmath.exp(-v)), -800.0)
    assert precise(SOFTPLUS_GRAD, [800.0, -800.0, 0.0]) == ([1.0, at_minus_800, 0.5], [True] * 3, [True] * 3)


def test_exponential_terms_at_plus_and_minus_1e300():
    assert precise(SOFTPLUS_GRAD, [1e300, -1e300]) == ([1.0, 0.0], [True, True], [True, True])
    assert precise(X2EX_GRAD, [1e300, -1e300]) == ([math.inf, 0.0], [True, True], [True, True])


def test_tiny_input_keeps_its_square():
    values, _, certified = precise((sympy.cos(x) - 1) / x**2, [1e-300])
    assert values == [-0.5] and certified == [True]


def test_tiny_negative_result_rounds_to_negative_zero():
    (value,), _, (certified,) = precise(sympy.cos(x) - 1, [1e-300])  # -5e-601
    assert value == 0.0 and math.copysign(1.0, value) == -1.0 and certified


def test_subnormal_result_is_correctly_rounded():
    values, _, certified = precise(sympy.cos(x) - 1, [1e-160])
    with mpmath.workprec(2000):
        exact = mpmath.cos(mpmath.mpf(1e-160)) - 1
        assert values == [round(exact * 2**1074) * 2.0**-1074] and certified == [True]


def test_subnormal_result_is_rounded_once():
    # 2**-1075·(1 + 2**-60): rounded first to 53 bits it becomes the tie 2**-1075,
    # which then rounds to 0 (even); rounded once it is the smallest subnormal.
    expr = x * (1 + sympy.Rational(1, 2**60)) / sympy.Integer(2) ** 1075
    with mpmath.workprec(200):
        assert float(mpmath.mpf(2) ** -1075 * (1 + mpmath.mpf(2) ** -60)) == 0.0  # the double rounding
    assert precise(expr, [1.0]) == ([5e-324], [True], [True])


def test_overflow_rounds_to_infinity():
    assert precise(sympy.exp(x), [709.0, 710.0]) == ([truth(mpmath.exp, 709.0), math.inf], [True, True], [True, True])


def test_random_points_match_mpmath():
    points = np.random.default_rng(0).uniform(-30, 30, 200).tolist()
    values, _, certified = precise(X2EX_GRAD, points)
    assert values == [truth(x2ex_grad, p) for p in points] and all(certified)


def test_ill_conditioned_gelu_term_is_not_lost():
    gelu_grad = sympy.diff(x * (1 + sympy.erf(x / sympy.sqrt(2))) / 2, x)  # erf(x/√2)/2 + 1/2 ≈ 1e-89
    point = -20.19887971624531
    expected = truth(
        lambda v: v * mpmath.exp(-v * v / 2) / mpmath.sqrt(2 * mpmath.pi) + mpmath.erfc(-v / mpmath.sqrt(2)) / 2,
        point,
        digits=200,
    )
    assert precise(gelu_grad, [point]) == ([expected], [True], [True])


# --- limits, poles, undefined points ------------------------------------------------------


def test_removable_singularity_is_a_limit():
    assert precise(SINC_GRAD, [0.0]) == ([0.0], [True], [False])  # found, not certified


def test_removable_singularity_in_two_symbols():
    expr = (sympy.sin(x) - sympy.sin(y)) / (x - y)
    values, found, _ = precise(expr, [1.0], [1.0], symbols=(x, y))
    assert values == [truth(mpmath.cos, 1.0)] and found == [True]


def test_divergence_to_minus_infinity():
    assert precise(sympy.diff(sympy.gamma(x), x), [0.0]) == ([-math.inf], [True], [False])


def test_pole_with_a_tiny_residue_diverges():
    values, _, _ = precise(sympy.diff(sympy.gamma(x), x), [-1.0, -700.0])
    assert values == [math.inf, -math.inf]


def test_pole_without_a_limit_is_not_found():
    _, found, _ = precise(1 / x, [0.0])
    assert found == [False]  # the caller keeps its IEEE value


def test_gamma_poles_keep_the_ieee_value():
    _, found, _ = precise(sympy.gamma(x), [0.0, -1.0])
    assert found == [False, False]


def test_dirac_delta_at_zero_is_nan():
    values, found, _ = precise(2 * sympy.DiracDelta(x), [0.0, 1.0])
    assert math.isnan(values[0]) and values[1] == 0.0 and found == [True, True]


def test_nan_input_gives_nan():
    values, found, _ = precise(X2EX_GRAD, [math.nan])
    assert math.isnan(values[0]) and found == [True]


def test_non_real_is_certified_nan():
    values, found, certified = precise(sympy.log(x) + sympy.sqrt(x) + x ** sympy.Rational(1, 3), [-1.0, -8.0])
    assert all(map(math.isnan, values)) and found == [True, True] and certified == [True, True]


def test_infinite_input_follows_mpmath():
    assert precise(sympy.exp(x), [-math.inf, math.inf]) == ([0.0, math.inf], [True, True], [False, False])


# --- decisions near their boundaries ------------------------------------------------------


def test_piecewise_near_its_boundary_raises_the_precision():
    expr = sympy.Piecewise((1, ONE + TINY > 1), (-1, True))  # 1 + 2**-100 > 1: undecided at 80 bits
    assert precise(expr, [2.0]) == ([1.0], [True], [True])


def test_piecewise_on_its_boundary_falls_back_to_mpmath(monkeypatch):
    calls = []
    monkeypatch.setattr(_precise, "_MpmathSettle", _counting(_precise._MpmathSettle, calls))
    _, found, certified = precise(sympy.Piecewise((1, ONE > 1), (-1, True)), [2.0])
    assert calls and found == [True] and certified == [False]


def test_max_at_a_tie_is_certified():
    assert precise(sympy.Max(ONE, 1), [2.0]) == ([1.0], [True], [True])  # ball max picks no branch


def test_floor_near_an_integer_is_certified():
    assert precise(sympy.floor(ONE + TINY), [2.0]) == ([1.0], [True], [True])


def test_floor_on_an_integer_is_not_certified():
    _, _, certified = precise(sympy.floor(ONE), [2.0])
    assert certified == [False]


def test_to_arb_refuses_to_pick_a_branch():
    with pytest.raises(Undecided, match="cannot decide"):
        to_arb([sympy.Piecewise((1, x > 1), (0, True))], [x])(arb(1, 1e-10))


def test_to_arb_refuses_a_ball_around_a_domain_edge():
    with pytest.raises(Undecided, match="asin: the argument straddles the edge of the domain"):
        to_arb([sympy.asin(x)], [x])(arb(1, 1e-10))


def test_to_arb_refuses_a_root_of_a_ball_around_zero():
    with pytest.raises(Undecided, match=r"power: the base's ball contains 0"):
        to_arb([sympy.sqrt(x - 1)], [x])(arb(1, 1e-10))


def test_to_arb_raises_at_an_exact_pole():
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        to_arb([1 / x], [x])(0.0)


# --- special functions ----------------------------------------------------------------------


def test_trigamma_is_exact_where_torch_is_not():
    expected = truth(lambda v: mpmath.psi(1, v), 2.05)
    (kernel,) = to_torch([sympy.polygamma(1, x)], [x])(torch.tensor([2.05], dtype=torch.float64))
    assert precise(sympy.polygamma(1, x), [2.05]) == ([expected], [True], [True])
    assert kernel.item() != expected


def test_digamma_derivative_far_left_is_fast():
    point = -1e10 - 0.5
    start = time.perf_counter()
    values, _, certified = precise(sympy.diff(sympy.digamma(x), x), [point])
    assert time.perf_counter() - start < 0.5
    # mpmath's psi never returns here; the reflection formula at sin(pi·x) = ±1 does.
    assert values == [truth(lambda v: mpmath.pi**2 - mpmath.psi(1, 1 - v), point)] and certified == [True]


def test_polygamma_of_any_order_left_of_zero():
    assert precise(sympy.polygamma(3, x), [-2.5])[0] == [truth(lambda v: mpmath.polygamma(3, v), -2.5)]


def test_bessel_of_any_integer_order():
    expr = sympy.besselj(5, x) + sympy.besselk(3, y)
    values, _, _ = precise(expr, [-3.7], [0.5], symbols=(x, y))
    assert values == [truth(lambda a, b: mpmath.besselj(5, a) + mpmath.besselk(3, b), -3.7, 0.5)]


def test_loggamma_is_log_of_abs_gamma():
    assert precise(sympy.loggamma(x), [-2.5])[0] == [truth(lambda v: mpmath.log(abs(mpmath.gamma(v))), -2.5)]


def test_heaviside_at_zero_is_its_second_argument():
    assert precise(sympy.Heaviside(x) + 2 * sympy.Heaviside(x, 1), [0.0])[0] == [2.5]


def test_sinc_is_unnormalised():
    assert precise(sympy.sinc(x), [0.0, 3.0])[0] == [1.0, truth(lambda v: mpmath.sin(v) / v, 3.0)]


def test_constants_are_computed_at_the_working_precision():
    flint.ctx.prec = 300
    try:
        (value,) = to_arb([sympy.pi * x + sympy.sqrt(2) + sympy.Rational(1, 3)], [x])(1.0)
        assert value.rad() < arb(2) ** -290  # not a 53-bit literal
        assert value.overlaps(arb.pi() + arb(2).sqrt() + arb(1) / 3)
    finally:
        flint.ctx.prec = 53


# --- fallback and registrations ---------------------------------------------------------------


def test_function_arb_lacks_falls_back_to_mpmath():
    f = sympy.Function("f")
    register_sympy_function(f, torch.sigmoid, mpmath_implementation=lambda v: 1 / (1 + mpmath.exp(-v)))
    expected = [1.0, truth(lambda v: 1 / (1 + mpmath.exp(-v)), -1.0)]
    assert precise(f(x), [800.0, -1.0]) == (expected, [True, True], [False, False])


def test_registered_arb_implementation_is_used():
    f = sympy.Function("f")
    register_sympy_function(f, torch.sigmoid, arb_implementation=lambda v: 1 / (1 + (-v).exp()))
    assert precise(f(x), [-1.0])[1:] == ([True], [True])  # certified: only arb certifies


def test_registered_arb_implementation_by_dotted_name():
    register_sympy_function(sympy.erfi, "torch.special.erfcx", arb_implementation="flint.arb.erfi")
    assert precise(sympy.erfi(x), [0.7]) == ([truth(mpmath.erfi, 0.7)], [True], [True])


def test_registered_mpmath_implementation_overrides_the_builtin_arb_one():
    register_sympy_function(sympy.exp, torch.exp, mpmath_implementation=lambda v: mpmath.mpf(7))
    assert precise(sympy.exp(x), [1.0]) == ([7.0], [True], [False])


def test_arb_implementation_must_be_a_flint_name():
    with pytest.raises(ValueError, match=r"Expected a dotted name starting with 'flint\.' for arb_implementation"):
        register_sympy_function(sympy.erfi, "torch.special.erfcx", arb_implementation="mpmath.erfi")


def test_missing_arb_translation_names_the_fix():
    f = sympy.Function("f")
    register_sympy_function(f, torch.exp, mpmath_implementation=mpmath.exp)
    fix = r"(?s)No arb translation for the SymPy function f .*arb_implementation="
    with pytest.raises(TranslationError, match=fix):
        to_arb([f(x)], [x])


def test_no_reference_at_all_warns_and_finds_nothing():
    g = sympy.Function("g")
    register_sympy_function(g, torch.exp)
    with pytest.warns(UserWarning, match=r"No mpmath reference for g\(x\) \(nor an arb one\)"):
        assert precise(g(x), [1.0])[1] == [False]


# --- cost -----------------------------------------------------------------------------------


def test_deadline_in_the_past_finds_nothing():
    values, found, _ = precise(X2EX_GRAD, [1.0, 2.0], deadline=time.monotonic() - 1)
    assert found == [False, False] and all(map(math.isnan, values))


def test_deadline_stops_work_midway():
    points = np.random.default_rng(1).uniform(-5, 5, 200_000).tolist()  # ~6 s of trigamma
    _precise._reference.cache_clear()  # nothing settled by an earlier test
    precise(sympy.polygamma(1, x), [1.0])  # compiled before the clock starts
    start = time.perf_counter()
    _, found, _ = precise(sympy.polygamma(1, x), points, deadline=time.monotonic() + 1.0)
    # Stopped before the end (how far it got in 1 s depends on the machine's load)
    assert time.perf_counter() - start < 3.0 and sum(found) < len(points)


def test_distinct_points_are_evaluated_once():
    calls = []
    f = sympy.Function("f")
    register_sympy_function(f, torch.exp, arb_implementation=lambda v: calls.append(v) or v.exp())
    assert precise(f(x), [2.0] * 100 + [3.0] * 100)[2] == [True] * 200
    assert len(calls) == 2


def test_several_expressions_and_the_precision_restored():
    flint.ctx.prec = 53
    exact = exact_values([x + y, sympy.Integer(3), SINC_GRAD], [x, y], np.array([[1.0, 2.0], [0.0, 5.0]]))
    assert exact.values.shape == (2, 3) and exact.values[:, :2].tolist() == [[3.0, 3.0], [5.0, 3.0]]
    assert exact.values[1, 2] == 0.0 and flint.ctx.prec == 53


def test_constant_expression_without_symbols():
    exact = exact_values([sympy.pi], [], np.zeros((2, 0)))
    assert exact.values.tolist() == [[math.pi], [math.pi]] and exact.certified.all()


def test_points_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"Expected points of shape \(m, 2\), one column per symbol in \[x, y\]"):
        exact_values([x + y], [x, y], np.zeros(3))


def test_points_of_the_wrong_shape_name_the_shape():
    with pytest.raises(ValueError, match=r"but got points of shape \(3,\)"):
        exact_values([x + y], [x, y], np.zeros(3))


def _counting(cls, calls):
    class Counting(cls):
        def __call__(self, *args):
            calls.append(args)
            return super().__call__(*args)

    return Counting
