"""The cost of the exact reference.

Prints, measured side by side in one run:
- trace + differentiate + lambdify for a scalar function (warm);
- the exact reference of x**2*exp(x) on 1e6 float64 points against one forward+backward
  of the same function.

Run: python benchmarks/bench_reference.py
"""

from __future__ import annotations

import sympy
import torch

import autocheck
from autocheck._printer import to_torch
from autocheck._symbolic import derivative
from _timing import best, machine, table


def f(x):
    return x * x * torch.exp(x)


def trace_diff_lambdify() -> None:
    g = lambda x: x * x * torch.exp(x)  # noqa: E731 - a new function each time: no cache of ours helps
    d = derivative(g)
    to_torch([d], [sympy.Symbol("x", real=True)])


def main() -> None:
    n = 1_000_000
    x = torch.empty(n, dtype=torch.float64).uniform_(-10, 10, generator=torch.Generator().manual_seed(0))
    exact = autocheck.reference(f)
    checking = autocheck.reference(f, accuracy=1e-15)

    def forward_backward() -> None:
        leaf = x.clone().requires_grad_(True)
        f(leaf).backward(torch.ones_like(leaf))

    t_build = best(trace_diff_lambdify, repeat=20)
    t_reference = best(lambda: exact(x), repeat=1, warmup=0)
    t_checking = best(lambda: checking(x))
    t_autograd = best(forward_backward)
    print(f"machine: {machine()}")
    print(
        table(
            [
                ("trace + diff + lambdify (x**2*exp(x), warm)", f"{t_build * 1e3:.2f} ms", "target < 20 ms"),
                ("reference, correctly rounded, 1e6 float64 points", f"{t_reference * 1e3:.2f} ms", "mpmath in the cancellation band"),
                ("reference, accuracy=1e-15 (as checks use it), 1e6", f"{t_checking * 1e3:.2f} ms", ""),
                ("forward + backward, 1e6 float64 points", f"{t_autograd * 1e3:.2f} ms", ""),
                ("correctly rounded / (forward + backward)", f"{t_reference / t_autograd:.2f}x", "target <= 1.5x"),
                ("accuracy=1e-15 / (forward + backward)", f"{t_checking / t_autograd:.2f}x", "target <= 1.5x"),
            ],
            ("measurement", "time", "target"),
        )
    )


if __name__ == "__main__":
    main()
