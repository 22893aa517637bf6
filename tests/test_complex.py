"""Complex functions: z.grad as torch defines it (dL/dx + i dL/dy for a real loss L of
z = x + iy), judged by its real and imaginary parts against the exact derivative."""

from __future__ import annotations

import pytest
import torch

import autocheck

C128 = torch.complex128


def crandn(*shape, seed=0, dtype=C128):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "f",
    [lambda z: z * z, torch.exp, lambda z: z * z.conj(), torch.abs, torch.angle, torch.sqrt, torch.log, torch.sin,
     lambda z: 1 / z, lambda z: z.real * z.imag],
    ids=["z**2", "exp", "z*conj(z)", "abs", "angle", "sqrt", "log", "sin", "1/z", "re*im"],
)
def test_holomorphic_and_non_holomorphic_functions_pass(f):
    report = autocheck.assert_grad_matches(f, crandn(7), seed=0)
    assert report.checked == 14 and report.dtype == "complex128"  # a real and an imaginary part per element


def test_a_complex_matmul_loss_passes_and_a_search_over_complex_scalars_too():
    a, b = crandn(2, 2, seed=1), crandn(2, seed=2)
    assert autocheck.assert_grad_matches(lambda a, b: (a @ b).abs().pow(2).sum(), a, b, seed=0).checked == 12
    report = autocheck.assert_grad_matches(lambda z: z * torch.exp(z), dtype=C128, seed=0, examples=3)
    assert report.formula.startswith("d/dz_re = ") and "d/dz_im = " in report.formula


class SquareWithoutConj(torch.autograd.Function):
    """z**2 whose backward forgets to conjugate: torch wants grad * conj(2 z)."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z * z

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * 2 * z


def test_a_missing_conjugation_is_caught_and_reproduced_with_complex_inputs():
    z = crandn(5)
    report = autocheck.check_grad(SquareWithoutConj.apply, z, seed=0)
    assert not report.ok and report.failed == 10
    assert "autocheck.assert_grad_matches(test_complex.SquareWithoutConj.apply, torch.complex(" in report.reproduce
    assert "dtype=torch.complex128" in report.reproduce
    with pytest.raises(autocheck.GradientMismatch):  # the line runs as pasted (from the tests' folder)
        exec(report.reproduce.replace("test_complex.", ""), {"SquareWithoutConj": SquareWithoutConj})
    searched = autocheck.check_grad(SquareWithoutConj.apply, dtype=C128, seed=0)
    assert not searched.ok and searched.counterexample == (0.0, 1.0)  # z = 1j
    assert "torch.tensor(1j, dtype=torch.complex128)" in searched.reproduce


def test_complex64_is_judged_with_float32_tolerances():
    report = autocheck.assert_grad_matches(lambda z: z * torch.exp(z), crandn(6, dtype=torch.complex64), seed=0)
    assert report.dtype == "complex64" and report.rtol == autocheck.check_grad(torch.sin, torch.ones(1), seed=0).rtol


def test_forward_mode_and_batched_gradients_of_a_complex_function():
    report = autocheck.assert_grad_matches(lambda z: z * torch.exp(z), crandn(5), seed=0, modes=("rev", "fwd", "vmap"))
    assert report.modes == ("rev", "fwd", "vmap")


def test_the_callers_complex_tensor_is_left_alone():
    z = crandn(4).requires_grad_(True)
    before = z.detach().clone()
    autocheck.assert_grad_matches(torch.exp, z, seed=0)
    assert torch.equal(z.detach(), before) and z.grad is None


def test_complex_values_in_a_large_function_are_a_clear_error():
    with pytest.raises(autocheck.TraceError, match=r"the directional check does not follow complex values"):
        autocheck.check_grad(lambda x: (torch.polar(x, x).exp() * x.sum()).abs(), torch.rand(300, dtype=torch.float64), seed=0)


def test_a_reference_function_of_complex_inputs_gives_the_mathematics():
    class Opaque(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return torch.from_numpy(z.detach().numpy() ** 2)  # leaves torch: not traceable

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return g * (2 * z).conj()

    report = autocheck.assert_grad_matches(Opaque.apply, crandn(4), seed=0, reference=lambda z: z * z)
    assert report.checked == 8


def test_second_derivatives_of_a_complex_function_in_both_modes():
    report = autocheck.assert_grad_matches(lambda z: z * torch.exp(z), crandn(4), seed=0, order=2, modes=("rev", "fwd"))
    assert report.order == 2 and report.checked >= 16
