"""``autocheck plot``: f, its exact and autograd derivatives, and autograd's error in ULPs
against the tolerance a check allows, on a grid of one variable (needs matplotlib)."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ._check import tolerance_band
from ._compare import ulp
from ._report import shortest


def plot(f: Callable[..., Any], text: str, name: str, low: float, high: float, points: int, output: str, *,
         reference: Any = None, dtype: torch.dtype = torch.float64, device: Any = "cpu") -> str:
    """Draw three panels into ``output``; return a one-line summary of the largest error."""
    import matplotlib.pyplot as plt

    x = torch.linspace(low, high, points, dtype=torch.float64).to(dtype).to(torch.float64)
    values, autograd = _autograd(f, x, dtype, device)
    exact, allowed = tolerance_band(f, x, reference=reference, dtype=dtype)
    exact = exact.expand(x.shape)
    units = ulp(exact, dtype)
    same = autograd == exact  # equal infinities included
    errors = ((autograd - exact).abs() / units).masked_fill(same, 0.0)
    band = (allowed / units).nan_to_num(nan=0.0)
    outside = errors > band
    xs = x.numpy()
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    top.plot(xs, values.numpy(), color="black", label=f"f({name}) = {_short(text)}")
    top.set_ylabel(f"f({name})")
    top.legend(loc="best")
    middle.plot(xs, exact.numpy(), color="tab:blue", linewidth=3, alpha=0.6, label=f"exact f'({name})")
    middle.plot(xs, autograd.numpy(), color="tab:orange", linestyle="--", label=f"autograd f'({name})")
    middle.set_ylabel(f"f'({name})")
    middle.legend(loc="best")
    # Up to the largest finite error and most of the band (near a zero of f' the band is
    # wide in ULPs of a tiny value); whole decades, at most about eight labelled.
    finite_errors, finite_band = errors[torch.isfinite(errors)], band[torch.isfinite(band)]
    highest = max(float(finite_errors.max()) if finite_errors.numel() else 1.0,
                  float(finite_band.quantile(0.9)) if finite_band.numel() else 1.0, 1.0)
    decades = max(1, min(30, math.ceil(math.log10(min(highest, 1e30) * 2))))
    ceiling = 10.0 ** (decades + 1)
    bottom.fill_between(xs, 0.0, band.clamp(max=ceiling).numpy(), color="0.85", label="allowed (autocheck's tolerance)")
    bottom.plot(xs, errors.clamp(max=ceiling).numpy(), color="tab:blue", linewidth=1,
                label=f"|autograd - exact| in ULPs of {_name(dtype)}")
    if bool(outside.any()):
        bottom.scatter(xs[outside.numpy()], errors[outside].clamp(max=ceiling).numpy(), color="tab:red", s=8,
                       zorder=3, label="outside the tolerance")
    bottom.set_yscale("symlog", linthresh=1.0)
    step = math.ceil(decades / 8)
    bottom.set_yticks([0.0] + [10.0**k for k in range(0, decades + 1, step)])
    bottom.set_ylim(0.0, 10.0**decades)
    bottom.set_xlabel(name)
    bottom.set_ylabel("error (ULP)")
    bottom.legend(loc="best")
    figure.suptitle(f"autocheck: gradient of {_short(text)} ({_name(dtype)}, {torch.device(device)})")
    figure.tight_layout()
    try:
        figure.savefig(output, dpi=100)
    finally:
        plt.close(figure)
    count = int(outside.sum())
    verdict = f"{count} of {points} points outside the tolerance" if count else "every point within the tolerance"
    shown = torch.isfinite(errors)
    if not bool(shown.any()):
        return f"f, exact and autograd f', error in ULPs at {points} points; {verdict}"
    k = int(torch.argmax(torch.where(shown, errors, -1.0)))
    worst = f"largest error {_ulps(float(errors[k]))} ULP at {name} = {shortest(float(x[k]), dtype)!r}"
    return f"f, exact and autograd f', error in ULPs at {points} points; {worst}; {verdict}"


def _autograd(f: Callable[..., Any], x: torch.Tensor, dtype: torch.dtype, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """f and autograd's f' (upstream gradient 1) at every point, as float64 on the CPU."""
    from ._autograd import is_elementwise

    if is_elementwise(f, 1, dtype):
        leaf = x.to(dtype=dtype, device=device).clone().requires_grad_(True)
        y = f(leaf)
        (grad,) = torch.autograd.grad(y, leaf, torch.ones_like(y), allow_unused=True)
        grad = torch.zeros_like(leaf) if grad is None else grad
        return y.detach().to(torch.float64).cpu(), grad.detach().to(torch.float64).cpu()
    values, grads = [], []
    for v in x.tolist():  # one point at a time
        leaf = torch.tensor(v, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_(True)
        y = f(leaf)
        (grad,) = torch.autograd.grad(y.reshape(()), leaf, allow_unused=True)
        values.append(float(y))
        grads.append(0.0 if grad is None else float(grad))
    return torch.tensor(values, dtype=torch.float64), torch.tensor(grads, dtype=torch.float64)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 5] + " ..."


def _ulps(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.2g}" if value < 10 or value >= 1e6 else f"{value:.0f}"
