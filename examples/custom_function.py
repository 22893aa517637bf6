"""Check a custom ``torch.autograd.Function`` whose backward is written by hand.

``NumpySoftplus`` computes softplus(x) = log(1 + eˣ) in NumPy, as a wrapper around an
external kernel would, and supplies its own backward, d/dx softplus(x) = sigmoid(x). autocheck
cannot read NumPy code, so ``reference=`` gives it the mathematics as torch code; autocheck
differentiates the reference exactly and compares autograd's gradient, which runs the
hand-written backward, with it.

Two broken backwards show what the check catches:

* ``ForgetsGrad`` returns sigmoid(x) without multiplying by the incoming gradient. With an
  upstream gradient of ones (``y.sum().backward()``) this looks right; autocheck passes
  random upstream gradients of size 0.5 to 0.9, so it fails.
* ``HalfPrecision`` computes the sigmoid in float16. Its gradients are within 1e-3 of the
  truth, which many finite-difference checks accept; autocheck's tolerance is a few hundred
  ULPs of the input's dtype, so it fails in float64.

Run::

    python examples/custom_function.py

Exit status: 0 when the correct backward passes and both broken ones are caught, 1 otherwise.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import autocheck


def softplus_reference(x: torch.Tensor) -> torch.Tensor:
    """The mathematics: log(1 + eˣ)."""
    return torch.log1p(torch.exp(x))


class NumpySoftplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        values = np.asarray(np.logaddexp(0.0, x.detach().cpu().numpy()))  # log(e⁰ + eˣ), no overflow
        return torch.from_numpy(values).to(device=x.device, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


class ForgetsGrad(NumpySoftplus):
    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.sigmoid(x)  # the bug: the chain rule needs grad * sigmoid(x)


class HalfPrecision(NumpySoftplus):
    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x.half()).to(x.dtype)  # the bug: 3 significant digits


def main() -> int:
    x = torch.linspace(-12.0, 12.0, 241, dtype=torch.float64)

    # A plain upstream gradient of ones cannot tell the correct backward from ForgetsGrad.
    for function in (NumpySoftplus, ForgetsGrad):
        leaf = x.clone().requires_grad_()
        function.apply(leaf).sum().backward()
        torch.testing.assert_close(leaf.grad, torch.sigmoid(x))
    print("With an upstream gradient of ones, NumpySoftplus and ForgetsGrad give the same x.grad.\n")

    surprises = 0
    for function, should_pass in ((NumpySoftplus, True), (ForgetsGrad, False), (HalfPrecision, False)):
        name = function.__name__
        report = autocheck.check_grad(function.apply, x, reference=softplus_reference, seed=0)
        verdict = "passes" if report.ok else "fails"
        expected = "as it should" if report.ok == should_pass else "UNEXPECTEDLY"
        print(f"== {name}: {verdict} {expected} ({report.checked} points, max error {report.max_ulp:.3g} ULP)")
        if not report.ok:
            print(report)
        print()
        surprises += report.ok != should_pass
    return 1 if surprises else 0


if __name__ == "__main__":
    sys.exit(main())
