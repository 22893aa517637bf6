"""What forward mode and higher orders add to a check, side by side in one run.

Prints a Markdown table for docs/benchmarks.md: a default check of x²eˣ (drawn points) and
a check of a layer norm over 8 x 4096 features (directional derivatives), in reverse mode,
in both modes, and (x²eˣ) at order 3; best of 5 warm runs, interleaved, on torch's default
thread count.

Run: python benchmarks/bench_modes.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import autocheck
from _timing import interleaved, machine


def x2exp(x):
    return x * x * torch.exp(x)


def layer_norm_cubed(x):
    return F.layer_norm(x, (4096,)).pow(3).sum()


def main() -> None:
    x = torch.randn(8, 4096, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    checks = {
        "x²eˣ, default check, reverse mode": lambda: autocheck.check_grad(x2exp, seed=0),
        "x²eˣ, default check, reverse and forward mode": lambda: autocheck.check_grad(x2exp, seed=0,
                                                                                       modes=("rev", "fwd")),
        "x²eˣ, default check, order 3": lambda: autocheck.check_grad(x2exp, seed=0, order=3),
        "layer norm 8 x 4096, reverse mode": lambda: autocheck.check_grad(layer_norm_cubed, x, seed=0),
        "layer norm 8 x 4096, reverse and forward mode": lambda: autocheck.check_grad(layer_norm_cubed, x, seed=0,
                                                                                       modes=("rev", "fwd")),
    }
    times = interleaved(checks, repeat=5)
    print(machine())
    print()
    print("| check | best of 5 |")
    print("|---|---|")
    for name, runs in times.items():
        print(f"| {name} | {min(runs):.3f} s |")


if __name__ == "__main__":
    main()
