"""Proven orders of magnitude: a value is settled as 0 or infinity only where it is."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
import torch

from autocheck import _magnitude, _precise

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
