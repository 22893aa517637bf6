"""Proven orders of magnitude: a value is settled as 0 or infinity only where it is."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
import torch

from autocheck import _magnitude, _precise, _printer

x, y = sympy.symbols("x y", real=True)
F64 = torch.float64


def settle(expr, *columns):
    values = [torch.tensor(c, dtype=F64) for c in columns]
    settled, value = _magnitude.settle(expr, [x, y][: len(values)], values)
    return settled.tolist(), value.tolist()


def test_a_sigmoid_derivative_far_left_rounds_to_zero_and_is_left_alone_elsewhere():
    sigmoid_prime = sympy.exp(-x) / (1 + sympy.exp(-x)) ** 2
    settled, value = settle(sigmoid_prime, [-1e100, -800.0, 1.0, 800.0])
    assert settled == [True, True, False, True]  # e**-800 is below half the smallest subnormal
    assert [value[k] for k in (0, 1, 3)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "expr, at, expected",
    [
        (sympy.exp(x), 1e10, math.inf),
        (-sympy.exp(x), 1e10, -math.inf),
        (sympy.exp(sympy.exp(x)), 10.0, math.inf),
        (x**2, 1e200, math.inf),
        (x**-2, 1e200, 0.0),
        (sympy.sin(x) * sympy.exp(-x), 1e10, 0.0),  # bounded times tiny
        (x * sympy.exp(-x**2), 1e5, 0.0),
    ],
)
def test_values_beyond_float64_are_settled(expr, at, expected):
    assert settle(expr, [at]) == ([True], [expected])


@pytest.mark.parametrize(
    "expr, at",
    [
        (sympy.sin(x) * sympy.exp(x), 1e10),  # sin may be 0: no lower bound, no infinity
        (sympy.exp(x) - sympy.exp(x + 1), 1e10),  # the sign of a difference of giants is not tracked
        (sympy.log(x), 1e300),  # finite: not this tier's business
        (sympy.log(1 + sympy.exp(-x)), 1e10),  # log near 1: no bound
        (sympy.exp(x) * sympy.exp(-x), 1e10),  # inf * 0 in float64, exactly 1
    ],
)
def test_values_it_cannot_prove_are_left_to_high_precision(expr, at):
    assert settle(expr, [at])[0] == [False]


def test_zero_times_a_pole_is_not_zero():
    # x / sqrt(x**2 + y**2) has no value (and no limit) at the origin.
    assert settle(x / sympy.sqrt(x**2 + y**2), [0.0], [0.0])[0] == [False]


def test_only_the_branch_taken_counts():
    expr = sympy.Piecewise((0, x > 20), (sympy.exp(x) / (sympy.exp(x) + 1) ** 2, True))
    assert settle(expr, [1e10, -1e10]) == ([True, True], [0.0, 0.0])


@pytest.mark.parametrize(
    "expr",
    [
        sympy.exp(-x) / (1 + sympy.exp(-x)) ** 2,
        x * sympy.exp(x) / (1 + sympy.exp(x)),
        sympy.exp(x * y) / (x**2 + 1),
        (x**3 - y) * sympy.exp(-sympy.Abs(x)),
        sympy.tanh(x) * y**-3 + sympy.exp(y),
    ],
)
def test_every_claim_agrees_with_arb(expr):
    rng = np.random.default_rng(0)
    n = 400
    columns = [np.sign(rng.standard_normal(n)) * 2.0 ** rng.uniform(-1074, 1023, n) for _ in range(2)]
    settled, value = _magnitude.settle(expr, [x, y], [torch.tensor(c) for c in columns])
    assert bool(settled.any())
    points = np.stack(columns, axis=1)[settled.numpy()]
    exact = _precise.exact_values([expr], [x, y], points)
    found = exact.found[:, 0]
    np.testing.assert_array_equal(value[settled].numpy()[found], exact.values[found, 0])


def _log2_exact(f, t):
    import flint

    flint.ctx.prec = 200  # arb: a ball with rigorous radius, exponents without limit
    value = f(flint.arb(t))
    return -math.inf if value == 0 else float((abs(value).log() / flint.arb(2).log()).mid())


@pytest.mark.parametrize(
    "name, expr, exact",
    [
        ("erfc", sympy.erfc(x), lambda t: t.erfc()),
        ("erfc(-x)", _printer.ReflectedErfc(x), lambda t: (-t).erfc()),
        ("erfcx", _printer.Erfcx(x), lambda t: (t * t).exp() * t.erfc()),
        ("log ndtr", sympy.log(_printer.ReflectedErfc(x) / 2), lambda t: (-t.erfc() / 2).log1p()),
        ("erfcinv", sympy.erfcinv(x), lambda t: t.erfcinv()),
    ],
)
def test_erfc_family_bounds_enclose_the_exact_order_of_magnitude(name, expr, exact):
    at = [-1e300, -1e160, -1e10, -100.0, -30.0, -1.0, -1e-300, 0.0, 5e-324, 1e-300, 1e-10, 0.5, 0.999, 1.0, 5.0, 27.0,
          30.0, 38.0, 100.0, 1e5, 1e10, 1e160, 1e300]
    low, high, _ = _magnitude._compile(expr, (x,))([np.array(at)])
    for t, lo, hi in zip(at, np.broadcast_to(low, len(at)), np.broadcast_to(high, len(at))):
        if name == "log ndtr" and t < 5:  # log near 0 or of a small number: no bound claimed here
            continue
        if name == "erfcinv" and not 0 < t < 1:  # bounded (from above) inside (0, 1) only
            continue
        if abs(t) > 1e10:  # exp(t**2) at 1e160 is beyond arb's reach: see the asymptotic test below
            continue
        true = _log2_exact(exact, t)
        assert lo <= true <= hi, (name, t, lo, true, hi)
        if abs(t) < 1e10 and name not in ("log ndtr", "erfcinv"):
            assert hi - lo < 2.5, (name, t, lo, hi)  # tight: within the bounds' factor of about 2


def test_erfcx_far_right_is_bounded_around_its_asymptote():
    # erfcx(t) lies within a factor 1 - 1/(2 t**2) of 1/(t sqrt(pi)) for large t
    at = np.array([1e10, 1e160, 1e300])
    low, high, sign = _magnitude._compile(_printer.Erfcx(x), (x,))([at])
    asymptote = -np.log2(at) - math.log2(math.sqrt(math.pi))
    assert np.all(low <= asymptote) and np.all(asymptote <= high) and np.all(high - low < 1.5)
    assert sign.tolist() == [1.0] * 3


def test_ndtri_derivative_at_subnormal_probabilities_overflows_at_once():
    # sqrt(2 pi) exp(ndtri(p)**2 / 2), as the oracle writes it: about 1/p, beyond float64 below 1e-308
    derivative = sympy.sqrt(2 * sympy.pi) * _printer.Erfcx(sympy.erfcinv(2 * x)) / (2 * x)
    settled, value = settle(derivative, [5e-324, 1e-315, 1e-310, 1e-300])
    assert settled == [True, True, True, False] and value[:3] == [math.inf] * 3


def test_log_ndtr_derivative_far_right_rounds_to_zero_at_once():
    # log_ndtr's derivative exp(-x**2/2)/(sqrt(2 pi) ndtr(x)), as the oracle writes it: far to
    # the right it is far below the smallest subnormal; far to the left (about -x) it is not settled
    derivative = sympy.sqrt(2) * sympy.exp(-(x**2) / 2) / (sympy.sqrt(sympy.pi) * _printer.ReflectedErfc(x / sympy.sqrt(2)))
    settled, value = settle(derivative, [39.0, 1e5, 1e300, -1e300, -40.0, 1.0])
    assert settled == [True, True, True, False, False, False]
    assert value[:3] == [0.0, 0.0, 0.0]
    assert settle(sympy.log(_printer.ReflectedErfc(x) / 2), [1e300]) == ([True], [0.0])
