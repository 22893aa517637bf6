"""The derivative of y = x²eˣ three ways: autograd, by hand, and exactly with autocheck.

By the product rule dy/dx = 2xeˣ + x²eˣ. This script computes ``x.grad`` with autograd,
evaluates the hand-written derivative, asks autocheck for the exact derivative of the torch
code, and shows how far each floating-point value is from the exact one, in ULPs (units in
the last place of float32). Near x = -2 the two terms of the derivative cancel, so both
autograd and the hand-written formula lose many ULPs there; autocheck judges such errors
against the size of the terms, and still passes them.

Run::

    python examples/x2_exp.py

Exit status: 0 when autograd matches the exact derivative, 1 when it does not.
"""

from __future__ import annotations

import math
import sys

import mpmath
import sympy
import torch

import autocheck


def f(x: torch.Tensor) -> torch.Tensor:
    return x * x * torch.exp(x)


def df(x: torch.Tensor) -> torch.Tensor:
    """The derivative worked out by hand."""
    return 2 * x * torch.exp(x) + x * x * torch.exp(x)


def ulps(value: float, exact: float, dtype: torch.dtype) -> float:
    """|value - exact| in units of the spacing of ``dtype`` numbers at ``exact``."""
    info = torch.finfo(dtype)
    _, exponent = math.frexp(max(abs(exact), info.tiny))
    return abs(value - exact) / math.ldexp(info.eps, exponent - 1)


def main() -> int:
    torch.manual_seed(0)
    x = torch.cat([torch.randn(6), torch.tensor([-2.001, -1.9999, 3.5])]).requires_grad_()

    # Autograd: y is a tensor, so backward needs the upstream gradient dL/dy; ones give dy/dx.
    y = f(x)
    y.backward(gradient=torch.ones_like(y))

    # autocheck traces f's torch code and differentiates it with SymPy.
    exact = autocheck.derivative(f)
    s = sympy.Symbol("x", real=True)
    by_hand = 2 * s * sympy.exp(s) + s**2 * sympy.exp(s)
    print(f"autocheck's derivative of x * x * torch.exp(x): {exact}")
    print(f"the same function as the hand-written 2xeˣ + x²eˣ: {sympy.simplify(exact - by_hand) == 0}")
    print()

    # The exact value at each float32 input, in 50-digit arithmetic.
    exact_at = sympy.lambdify(s, exact, modules="mpmath")
    header = f"{'x':>12} {'x.grad':>14} {'df(x)':>14} {'exact':>14} {'x.grad ULP':>11} {'df(x) ULP':>10}"
    print(header)
    print("-" * len(header))
    hand = df(x.detach())
    for xi, gi, hi in zip(x.detach().tolist(), x.grad.tolist(), hand.tolist()):
        with mpmath.workdps(50):
            ei = float(exact_at(mpmath.mpf(xi)))
        errors = f"{ulps(gi, ei, x.dtype):11.3g} {ulps(hi, ei, x.dtype):10.3g}"
        print(f"{xi:12.6g} {gi:14.8g} {hi:14.8g} {ei:14.8g} {errors}")
    print()

    # The same comparison done by autocheck: at these points, then across the real line.
    try:
        at_points = autocheck.assert_grad_matches(f, x.detach(), seed=0)
        everywhere = autocheck.assert_grad_matches(f, dtype=torch.float32, seed=0)
    except autocheck.GradientMismatch as mismatch:
        print(mismatch, file=sys.stderr)
        return 1
    print(f"autocheck at these {at_points.checked} points: max error {at_points.max_ulp:.3g} ULP")
    print(f"autocheck at {everywhere.checked} points across the real line: max error {everywhere.max_ulp:.3g} ULP")
    print()
    print(everywhere)
    return 0


if __name__ == "__main__":
    sys.exit(main())
