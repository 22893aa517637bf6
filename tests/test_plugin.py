"""The pytest plugin, run in a child pytest session with pytester."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SUITE = """
import torch

def test_x2_exp(grad_check):
    grad_check(lambda x: x * x * torch.exp(x))

def test_device_and_dtype(autocheck_device, autocheck_dtype):
    assert autocheck_device in ("cpu", "cuda")
    assert isinstance(autocheck_dtype, torch.dtype)
"""


def test_header_shows_the_seed(pytester):
    pytester.makepyfile(SUITE)
    result = pytester.runpytest("--autocheck-seed=123", "--autocheck-examples=2")
    result.stdout.fnmatch_lines(["autocheck: seed=123 (replay with --autocheck-seed=123)"])
    result.assert_outcomes(passed=2, skipped=2)  # cuda skipped without a GPU


def test_dtypes_and_devices_are_parametrized(pytester):
    pytester.makepyfile(SUITE)
    result = pytester.runpytest(
        "-v", "--autocheck-device=cpu", "--autocheck-dtype=float32", "--autocheck-dtype=bfloat16", "--autocheck-examples=2"
    )
    result.stdout.re_match_lines([r".*test_x2_exp\[cpu-float32\] PASSED.*", r".*test_x2_exp\[cpu-bfloat16\] PASSED.*"])
    result.assert_outcomes(passed=4)


def test_a_wrong_gradient_fails_the_test_with_the_report(pytester):
    pytester.makepyfile(
        """
        import torch

        class Bad(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return torch.sin(x)

            @staticmethod
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return -g * torch.cos(x)

        def test_bad(grad_check):
            grad_check(Bad.apply, reference=torch.sin)
        """
    )
    result = pytester.runpytest("--autocheck-device=cpu", "--autocheck-examples=2", "--autocheck-seed=1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*GradientMismatch*", "*Mismatched elements*", "*Exact derivative: d/dx = cos(x)*"])


def test_suite_passes_under_xdist(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess("-n", "2", "--autocheck-device=cpu", "--autocheck-examples=2")
    result.assert_outcomes(passed=2)
