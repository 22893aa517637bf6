"""The pytest plugin, run in a child pytest session with pytester."""

from __future__ import annotations

import pytest
import torch  # loaded before pytester's in-process runs, which restore sys.modules after each

import autocheck._api

LOADED = autocheck._api  # likewise: the plugin itself loads autocheck lazily

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
    devices = 2 if _cuda() else 1  # the CPU, and CUDA where a GPU is present: no skips either way
    result.assert_outcomes(passed=2 * devices)


def _cuda() -> bool:
    return torch.cuda.is_available()


def test_device_all_skips_cuda_without_a_gpu(pytester):
    pytester.makepyfile(SUITE)
    result = pytester.runpytest("--autocheck-device=all", "--autocheck-examples=2")
    result.assert_outcomes(passed=4) if _cuda() else result.assert_outcomes(passed=2, skipped=2)


def test_options_come_from_the_ini_file_and_the_command_line_wins(pytester):
    pytester.makefile(".toml", pyproject="""
        [tool.pytest.ini_options]
        autocheck_seed = "77"
        autocheck_dtype = ["float32", "bfloat16"]
        autocheck_device = ["cpu"]
        autocheck_examples = "2"
        autocheck_strict = true
    """)
    pytester.makepyfile("""
        import torch

        def test_options(grad_check, autocheck_dtype):
            report = grad_check(torch.sin)
            assert report.seed == 77 and report.strict and report.dtype == str(autocheck_dtype).removeprefix("torch.")
            assert report.checked < 20000  # 2 batches of points
    """)
    result = pytester.runpytest("-v")
    result.stdout.fnmatch_lines(["autocheck: seed=77 *", "*test_options?cpu-float32? PASSED*", "*test_options?cpu-bfloat16? PASSED*"])
    result.assert_outcomes(passed=2)
    result = pytester.runpytest("-v", "--autocheck-seed=5", "--autocheck-dtype=float64")
    result.stdout.fnmatch_lines(["autocheck: seed=5 *"])
    result.assert_outcomes(passed=0, failed=1)  # report.seed is 5 now: the command line won


def test_the_marker_arguments_reach_the_check_and_tests_are_marked(pytester):
    pytester.makepyfile("""
        import pytest, torch

        @pytest.mark.autocheck(dtype="float32", rtol=1e-3, atol=1e-6, examples=2)
        def test_marked(grad_check):
            report = grad_check(torch.sin)
            assert (report.dtype, report.rtol, report.atol) == ("float32", 1e-3, 1e-6)

        def test_unmarked(grad_check):
            grad_check(torch.sin, examples=2)

        @pytest.mark.autocheck(rtol=1e-3, atol=1e-6, examples=2)
        def test_the_call_wins(grad_check):
            report = grad_check(torch.sin, rtol=1e-4, atol=1e-7)
            assert (report.rtol, report.atol) == (1e-4, 1e-7)

        def test_other():
            pass
    """)
    result = pytester.runpytest("-v", "--autocheck-device=cpu", "-m", "autocheck")
    result.stdout.fnmatch_lines(["*test_marked?cpu-float32? PASSED*", "*test_unmarked?cpu-float64? PASSED*"])
    result.assert_outcomes(passed=3, deselected=1)


def test_a_bad_ini_value_is_a_usage_error(pytester):
    pytester.makeini("""
        [pytest]
        autocheck_dtype = float128
    """)
    pytester.makepyfile(SUITE)
    result = pytester.runpytest()
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*autocheck dtype 'float128' is not one of float64, float32, float16, bfloat16*"])


def test_loading_the_plugin_imports_neither_torch_nor_sympy(pytester):
    result = pytester.run(
        __import__("sys").executable, "-c",
        "import sys, autocheck.pytest_plugin; print(sorted(m for m in ('torch', 'sympy') if m in sys.modules))",
    )
    result.stdout.fnmatch_lines(["[[][]]"])


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


def test_modes_come_from_the_ini_file_or_the_command_line(pytester):
    pytester.makefile(".toml", pyproject="""
        [tool.pytest.ini_options]
        autocheck_modes = ["rev", "fwd"]
        autocheck_device = ["cpu"]
    """)
    pytester.makepyfile("""
        import torch

        def test_modes(grad_check):
            report = grad_check(torch.sin, examples=2)
            assert report.modes == ("rev", "fwd")
    """)
    pytester.runpytest().assert_outcomes(passed=1)
    pytester.runpytest("--autocheck-modes=fwd").assert_outcomes(failed=1)  # the command line wins: ("fwd",)
