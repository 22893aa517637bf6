"""The error model: exact bounds for small expressions, the chain rule's structure from an
op-marked trace, and torch's output-reusing backward formulas."""

from __future__ import annotations

import math

import pytest
import sympy
import torch

from autocheck._error_model import (
    KERNEL_ERROR,
    OUTPUT_REUSE,
    PERTURBATION,
    UNDERFLOW,
    UNIT,
    autograd_allowance,
    expand_ops,
    inaccurate_kernels,
    relative_bound,
    rounding,
)
from autocheck._trace import OpNode, OpPartial, trace

x, y = sympy.symbols("x y", real=True)


def no_underflow(e):
    return sympy.simplify(e.subs(UNDERFLOW, 0))


def allowance(f, at, *, strict=False, perturbation=1):
    """The allowance at one point, its atoms evaluated in 60-digit arithmetic (perturbations
    counted like roundings)."""
    tr = trace(f, mark=True)
    (s,) = tr.flat_symbols
    found = autograd_allowance(sympy.diff(tr.output.item(), s), strict=strict)
    point = {UNDERFLOW: 0, PERTURBATION: perturbation, s: sympy.Float(at, 60)}
    values = {symbol: atom.subs(point).evalf(60) for symbol, atom in found.atoms}
    return float(found.bound.subs(point).subs(values).evalf(60))


def test_an_input_is_exact():
    assert rounding(x) == 0


def test_a_sum_rounds_once_against_its_terms():
    assert no_underflow(rounding(x + y)) == sympy.Abs(x + y)


def test_a_sum_carries_the_errors_of_its_terms():
    # x*x rounds once (|x**2|), the sum once more (|x**2 + 1|): 2x**2 + 1 for real x.
    assert no_underflow(rounding(x * x + 1)) == 2 * x**2 + 1


def test_a_power_of_two_constant_is_exact_and_a_decimal_is_not():
    assert no_underflow(rounding(x / 2)) == 0  # halving is exact
    assert no_underflow(rounding(x / 10)) == sympy.Abs(x) / 5  # 1/10 rounds, and so does the product


def test_a_function_passes_on_its_arguments_error_times_its_slope():
    # exp(2x + 1): the sum rounds (|2x + 1|), exp multiplies it by exp; exp rounds once itself.
    bound = no_underflow(rounding(sympy.exp(2 * x + 1))).subs(UNIT, 0)
    assert sympy.simplify(bound - (sympy.exp(2 * x + 1) * sympy.Abs(2 * x + 1) + sympy.exp(2 * x + 1))) == 0


def test_exp_of_an_argument_off_by_more_than_one_is_bounded_beyond_first_order():
    # An argument off by d moves exp by up to exp(z) * d * e**d, not exp(z) * d: with a unit of
    # 0.01, 2x + 1 at x = 100 is off by |2x + 1| = 201 units = 2.01, so the factor is e**2.01.
    bound = no_underflow(rounding(sympy.exp(2 * x + 1)))
    at = {x: 100, UNIT: sympy.Rational(1, 100)}
    first_order = sympy.exp(201) * 201 + sympy.exp(201)
    assert sympy.simplify(bound.subs(at) - (sympy.exp(201) * 201 * sympy.exp(sympy.Rational(201, 100)) + sympy.exp(201))) == 0
    assert bound.subs(at) > 7 * first_order


def test_the_underflow_unit_appears_once_per_operation():
    assert rounding(x + y).coeff(UNDERFLOW) == 1


def test_relative_bound_counts_cancellation():
    # 2x*e^x + x**2*e^x near x = -2: the terms are ~0.5, the sum ~1e-9.
    expr = 2 * x * sympy.exp(x) + x**2 * sympy.exp(x)
    near = float(relative_bound(expr).subs({UNDERFLOW: 0, x: sympy.Rational(-2) + sympy.Rational(1, 10**9)}))
    far = float(relative_bound(expr).subs({UNDERFLOW: 0, x: 3}))
    assert near > 1e8 and far < 10


def test_kernel_errors_are_added_for_the_oracle_only():
    expr = sympy.polygamma(1, x)
    assert rounding(expr, kernels=True) != rounding(expr)
    assert inaccurate_kernels(expr, 1e-12) and not inaccurate_kernels(sympy.exp(x), 1e-12)
    assert KERNEL_ERROR[sympy.polygamma] * 2.0**-53 > 1e-12


def test_reuse_table_matches_the_derivatives():
    a, yv = sympy.symbols("a_ y_", real=True)
    rules = {"exp": sympy.exp, "sigmoid": lambda t: 1 / (1 + sympy.exp(-t)), "tanh": sympy.tanh,
             "sqrt": sympy.sqrt, "reciprocal": lambda t: 1 / t, "tan": sympy.tan, "expm1": lambda t: sympy.exp(t) - 1}
    for op, rule in rules.items():
        formula = OUTPUT_REUSE[op].xreplace({yv: rule(a)})
        assert sympy.simplify(formula - sympy.diff(rule(a), a)) == 0, op


def test_marked_trace_keeps_operations_opaque():
    tr = trace(lambda x: x - torch.tanh(x), mark=True)
    (s,) = tr.flat_symbols
    derivative = sympy.diff(tr.output.item(), s)
    assert derivative.has(OpPartial)
    assert sympy.simplify(expand_ops(derivative) - sympy.tanh(s) ** 2) == 0


def test_expansion_of_a_custom_function_node():
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * g * x

    tr = trace(Square.apply, mark=True)
    node = tr.output.item()
    assert isinstance(node, OpNode) and node.custom and expand_ops(node) == tr.flat_symbols[0] ** 2


def test_sigmoid_reusing_its_output_is_allowed_its_rounding_near_one():
    # torch computes y(1 - y) from the rounded y: at x = 40, y = 1.0 and 1 - y = 0 exactly,
    # an absolute error of sigmoid'(40) = 4.2e-18. The allowance is about 1 (in units of
    # roundoff: 1.1e-16 absolute), the strict one about sigmoid'(40) itself.
    assert allowance(torch.sigmoid, 40) == pytest.approx(1.0, rel=1e-6)
    strict = allowance(torch.sigmoid, 40, strict=True)
    assert strict == pytest.approx(math.exp(-40), rel=1e-3)


def test_tanh_shrink_cancellation_is_allowed():
    # d/dx (x - tanh x) = 1 - (1 - tanh**2): autograd subtracts two numbers near 1.
    assert allowance(lambda x: x - torch.tanh(x), 1e-3) >= 1.0


def test_a_kernel_without_reuse_gets_only_its_own_rounding():
    # torch.sinc's backward is a formula of the input: no slack for its cancellation at tiny x.
    tiny = allowance(torch.sinc, 1e-30)
    assert tiny < 1e-20


def test_custom_function_reusing_its_output_is_allowed():
    class Sigmoid(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = 1 / (1 + torch.exp(-x))
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return g * y * (1 - y)

    assert allowance(Sigmoid.apply, 40) >= 0.5
    assert allowance(Sigmoid.apply, 40, perturbation=0) < 1e-16
    assert allowance(Sigmoid.apply, 40, strict=True) < 1e-16
