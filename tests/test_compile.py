"""torch.compile: the compiled forward and backward (Inductor's kernels) against the exact
derivative, traced from the function that was compiled."""

from __future__ import annotations

import warnings

import pytest
import torch

import autocheck

pytest.importorskip("torch._inductor")


def x2exp(x):
    return x * x * torch.exp(x)


class SquareWrongAbove(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.where(x > 1.5, 3 * x, 2 * x)  # the bug: 3x above 1.5


def test_a_compiled_function_passes_without_dynamo_warnings():
    compiled = torch.compile(x2exp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning from Dynamo (one pointing into autocheck) fails the test
        report = autocheck.check_grad(compiled, torch.linspace(-3, 3, 101, dtype=torch.float64), seed=0)
    assert report.ok and report.checked == 101
    assert report.formula == "d/dx = x**2*exp(x) + 2*x*exp(x)"


def test_a_compiled_custom_function_with_a_planted_bug_fails():
    compiled = torch.compile(lambda x: SquareWrongAbove.apply(x))
    report = autocheck.check_grad(compiled, torch.linspace(-3, 3, 61, dtype=torch.float64), seed=0)
    assert not report.ok and report.failed == 15  # x in (1.5, 3]: 1.6, 1.7, ..., 3.0
    assert all(row.inputs[0] > 1.5 for row in report.worst if row.failed)
