"""Issues 3 and 4: the cost of a full check, side by side with what it replaces.

Prints, measured in one run on the same inputs:
- autocheck on 1e6 given float64 points against one forward+backward plus one evaluation
  of the exact reference (target: within 2x);
- the same against torch.autograd.gradcheck(fast_mode=True) on the same 1e6 points, which
  checks one random projection only (target: autocheck faster while checking every element);
- gradcheck in slow mode at n = 2,000 (a dense Jacobian);
- search mode: points verified per second for x**2*exp(x) and the wall time of a default
  assert_grad_matches(f), warm.

Run: python benchmarks/bench_check.py
"""

from __future__ import annotations

import torch

import autocheck
from _timing import best, machine, table


def f(x):
    return x * x * torch.exp(x)


def main() -> None:
    n = 1_000_000
    x = torch.empty(n, dtype=torch.float64).uniform_(-10, 10, generator=torch.Generator().manual_seed(0))
    exact = autocheck.reference(f)

    def baseline() -> None:
        leaf = x.clone().requires_grad_(True)
        f(leaf).backward(torch.full_like(leaf, 0.75))
        exact(x)

    t_check = best(lambda: autocheck.check_grad(f, x, seed=0), repeat=3)
    t_base = best(baseline, repeat=3)
    leaf = x.clone().requires_grad_(True)
    t_fast = best(lambda: torch.autograd.gradcheck(f, (leaf,), fast_mode=True), repeat=3)
    small = torch.empty(2000, dtype=torch.float64).uniform_(-10, 10).requires_grad_(True)
    t_slow = best(lambda: torch.autograd.gradcheck(f, (small,)), repeat=1)
    t_check_small = best(lambda: autocheck.check_grad(f, small.detach(), seed=0), repeat=3)

    report = autocheck.check_grad(f, seed=0)
    t_search = best(lambda: autocheck.check_grad(f, seed=0), repeat=3)
    rate = report.checked / t_search

    print(f"machine: {machine()}")
    print(
        table(
            [
                ("autocheck.check_grad, 1e6 given points", f"{t_check * 1e3:.0f} ms", "every element"),
                ("forward+backward + exact reference, 1e6", f"{t_base * 1e3:.0f} ms", ""),
                ("  ratio (target <= 2x)", f"{t_check / t_base:.2f}x", ""),
                ("gradcheck(fast_mode=True), 1e6 points", f"{t_fast * 1e3:.0f} ms", "one projection"),
                ("  autocheck / gradcheck fast (target < 1)", f"{t_check / t_fast:.2f}x", ""),
                ("gradcheck slow mode, n = 2,000", f"{t_slow * 1e3:.0f} ms", "dense Jacobian"),
                ("autocheck.check_grad, n = 2,000", f"{t_check_small * 1e3:.0f} ms", ""),
                ("default assert_grad_matches(f), warm", f"{t_search * 1e3:.0f} ms", f"{report.checked} elements"),
                ("search mode, points verified per second", f"{rate:.3g}/s", "target >= 1e6/s"),
            ],
            ("measurement", "time", "note"),
        )
    )


if __name__ == "__main__":
    main()
