"""What a default check costs, side by side in one run.

Prints, as Markdown tables for docs/benchmarks.md:
- ``check_grad`` on 1e6 given float64 points against its floor (one forward+backward with
  a non-unit upstream gradient plus one float64 evaluation of the exact derivative) and
  against ``torch.autograd.gradcheck(fast_mode=True)`` on the same input, the three taken in
  turn 15 times on 1 and on 2 torch threads (best and median);
- search throughput (elements judged per second) of a default check of x**2*exp(x);
- a default ``check_grad(f)``, warm, for common activations (best of 3, on 1 and on 2 torch
  threads) and for every function of one variable in the tests' derivative table (best of
  3, on torch's default thread count);
- the time to find a planted bug;
- the first check in a fresh process against importing autocheck and loading its checker;
- whether the same seed gives the same work and report in two processes.

Run: python benchmarks/bench_speed.py [--quick]   (--quick: without the derivative table)
"""

from __future__ import annotations

import argparse
import compileall
import itertools
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import sympy
import torch
import torch.nn.functional as F

import autocheck
from _timing import best, interleaved, machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def custom(forward, backward):
    """A custom autograd.Function of one tensor that saves its input; its ``apply``."""

    class Custom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return forward(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * backward(x)

    return Custom.apply


def softplus(x):
    return torch.log1p(torch.exp(x))


#: A correct custom softplus; one whose backward, exp(x) / (1 + exp(x)), is nan where the
#: forward overflows; the README's, with a wrong sign inside the sigmoid; and an exp whose
#: backward is off by one part in a million.
SOFTPLUS = custom(softplus, torch.sigmoid)
NAN_ABOVE_709 = custom(softplus, lambda x: torch.exp(x) / (1 + torch.exp(x)))
WRONG_SIGN = custom(softplus, lambda x: torch.sigmoid(-x))
SLIGHTLY_OFF = custom(torch.exp, lambda x: torch.exp(x) * (1 + 1e-6))


def x2exp(x):
    return x * x * torch.exp(x)


NAMED = {
    "x**2*exp(x)": x2exp,
    "torch.sigmoid": torch.sigmoid,
    "F.softplus": F.softplus,
    "F.mish": F.mish,
    "F.logsigmoid": F.logsigmoid,
    "log(cosh(x))": lambda x: torch.log(torch.cosh(x)),
    "custom softplus (correct)": SOFTPLUS,
    "custom softplus, backward nan where the forward overflows": NAN_ABOVE_709,
}
BUGS = {
    "custom softplus, sigmoid(-x)": WRONG_SIGN,
    "custom exp, backward off by one part in a million": SLIGHTLY_OFF,
}


def throughput(repeat: int = 15) -> list[str]:
    n = 1_000_000
    symbol = sympy.Symbol("x", real=True)
    derivative = sympy.lambdify(symbol, autocheck.derivative(x2exp), modules="torch")
    # Fresh points every round: the check remembers exact values it had to compute in high
    # precision, and a user's next check meets new points.
    state: dict[str, torch.Tensor] = {}

    def fresh(k: int) -> None:
        generator = torch.Generator().manual_seed(k)
        state["x"] = torch.empty(n, dtype=torch.float64).uniform_(-10, 10, generator=generator)
        state["leaf"] = state["x"].clone().requires_grad_(True)

    def floor() -> None:
        leaf = state["x"].clone().requires_grad_(True)
        x2exp(leaf).backward(torch.full_like(leaf, 0.75))
        derivative(state["x"])

    functions = {
        "floor": floor,
        "check": lambda: autocheck.check_grad(x2exp, state["x"], seed=0),
        "gradcheck": lambda: torch.autograd.gradcheck(x2exp, (state["leaf"],), fast_mode=True),
    }
    lines = [
        "| torch threads | floor: forward + backward + one evaluation of the derivative | `check_grad(f, x)`, every "
        "element judged | `gradcheck(fast_mode=True)` (one random projection) | check / floor | gradcheck / check |",
        "|---|---|---|---|---|---|",
    ]
    default_threads = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        times = interleaved(functions, repeat, fresh)
        low = {k: min(v) for k, v in times.items()}
        mid = {k: statistics.median(v) for k, v in times.items()}

        def paired(a: str, b: str) -> float:
            """The median over rounds of a / b within each round: load that drifts between
            rounds lands on both sides of every ratio."""
            return statistics.median(x / y for x, y in zip(times[a], times[b]))

        lines.append(
            f"| {threads} | {low['floor'] * 1e3:.1f} ms ({mid['floor'] * 1e3:.1f}) | {low['check'] * 1e3:.1f} ms "
            f"({mid['check'] * 1e3:.1f}) | {low['gradcheck'] * 1e3:.1f} ms ({mid['gradcheck'] * 1e3:.1f}) "
            f"| {paired('check', 'floor'):.2f}x ({low['check'] / low['floor']:.2f}x) "
            f"| {paired('gradcheck', 'check'):.2f}x ({low['gradcheck'] / low['check']:.2f}x) |")
    torch.set_num_threads(default_threads)
    report = autocheck.check_grad(x2exp, seed=0)
    seeds = itertools.count(1)
    t_search = best(lambda: autocheck.check_grad(x2exp, seed=next(seeds)), repeat=5)
    lines += [
        "",
        f"Times: best (median) of {repeat} rounds, the three taken in turn in each. Ratios: the median of the "
        f"rounds' own ratios (the ratio of the best times). A default `check_grad(f)` of x²eˣ judged "
        f"{report.checked:,} elements in {t_search * 1e3:.1f} ms (best of 5): "
        f"{report.checked / t_search:.2e} elements per second.",
    ]
    return lines


def default_checks(functions: dict[str, object], thread_counts: tuple[int, ...] = (1, 2), repeat: int = 3) -> list[str]:
    rows = []
    seeds = itertools.count(1)
    default_threads = torch.get_num_threads()
    for name, f in functions.items():
        times = {}
        failed_seeds = []
        for threads in thread_counts:
            torch.set_num_threads(threads)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = autocheck.check_grad(f, seed=0)  # warm: traced and compiled

                def timed() -> None:  # a new seed each time: exact values are remembered per point
                    seed = next(seeds)
                    if not autocheck.check_grad(f, seed=seed).ok:
                        failed_seeds.append(seed)

                times[threads] = best(timed, repeat=repeat, warmup=0)
        torch.set_num_threads(default_threads)
        verdict = "match" if report.ok else f"mismatch ({report.failed} elements)"
        if report.ok and failed_seeds:  # the timed runs' verdicts count too
            verdict = f"mismatch with seed {failed_seeds[0]} (seed 0 matches)"
        rows.append((max(times.values()), name, [times[t] for t in thread_counts], report.checked, verdict,
                     report.timed_out))
    rows.sort(key=lambda row: row[0], reverse=True)
    header = " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in thread_counts)
    lines = [f"| function | {header} | elements | verdict |", "|---|" + "---|" * len(thread_counts) + "---|---|"]
    for _, name, seconds, checked, verdict, timed_out in rows:
        stop = " (stopped at the 5 s deadline)" if timed_out else ""
        cells = " | ".join(f"{t:.3f} s" for t in seconds)
        lines.append(f"| {name} | {cells} | {checked:,} | {verdict}{stop} |")
    matches = [r for r in rows if r[4] == "match"]
    mismatches = [r for r in rows if r[4] != "match"]
    lines.append("")
    summary = f"{sum(1 for r in matches if r[0] <= 0.3)} of {len(matches)} matches within 0.3 s"
    if mismatches:
        summary += (f"; {len(mismatches)} mismatch{'es' if len(mismatches) > 1 else ''}, "
                    f"the slowest reported in {max(r[0] for r in mismatches):.2f} s")
    lines.append(summary + ".")
    return lines


def table_functions() -> dict[str, object]:
    from test_derivative import TABLE

    def differentiable(f) -> bool:  # torch has no autograd for some (bessel_j0)
        return f(torch.tensor(0.5, dtype=torch.float64, requires_grad=True)).requires_grad

    return {f"`{name}`": f for name, f, inputs, *_ in TABLE
            if not inputs and _one_input(f) and differentiable(f)}


def _one_input(f) -> bool:
    return isinstance(autocheck.derivative(f), sympy.Expr)  # a function of several inputs gives a tuple


def bugs() -> list[str]:
    lines = ["| planted bug | time to the failing report |", "|---|---|"]
    for name, f in BUGS.items():
        seeds = itertools.count(1)
        t = best(lambda: autocheck.check_grad(f, seed=next(seeds)), repeat=3)
        assert not autocheck.check_grad(f, seed=0).ok
        lines.append(f"| {name} | {t:.3f} s |")
    return lines


def first_check(repeat: int = 15) -> list[str]:
    commands = {
        "import": [sys.executable, "-c", "import torch, autocheck"],
        "loaded": [sys.executable, "-c", "import torch, autocheck; autocheck.check_grad"],
        "first check": [sys.executable, "-c", "import torch, autocheck; "
                        "autocheck.check_grad(lambda x: x * x * torch.exp(x), seed=0)"],
    }
    # Bytecode as an install or any earlier import leaves it: where writing it is turned off
    # (PYTHONDONTWRITEBYTECODE), each process would otherwise compile the changed modules again
    compileall.compile_dir(str(ROOT / "autocheck"), quiet=1)
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(repeat):  # in turn, so that load that comes and goes lands on all three
        for key, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[key].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    return [
        "| fresh process | median wall time |",
        "|---|---|",
        f"| `import torch, autocheck` (names load on first use) | {median['import']:.2f} s |",
        f"| the same, then `autocheck.check_grad` (loads SymPy and the checker) | {median['loaded']:.2f} s |",
        f"| the same, then a default check of x²eˣ | {median['first check']:.2f} s "
        f"({median['first check'] - median['loaded']:+.2f} s over the checker loaded, "
        f"{median['first check'] - median['import']:+.2f} s over the import) |",
    ]


def same_seed() -> list[str]:
    code = ("import torch, autocheck; r = autocheck.check_grad(lambda x: x * x * torch.exp(x), seed=7); "
            "print(r.checked, r.failed, r.skipped, r.max_ulp, [(w.inputs, w.autograd) for w in r.worst])")
    runs = [subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
            for _ in range(2)]
    return [f"Same seed in two processes: {'identical work and report' if runs[0] == runs[1] else 'DIFFERENT'} "
            f"({runs[0].split()[0]} elements each)."]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the named functions only")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    print("\n".join(throughput()), "\n")
    print("\n".join(default_checks(NAMED)), "\n")
    if not args.quick:  # on torch's default thread count, best of 3 each
        print("\n".join(default_checks(table_functions(), (torch.get_num_threads(),), repeat=3)), "\n")
    print("\n".join(bugs()), "\n")
    print("\n".join(first_check()), "\n")
    print("\n".join(same_seed()))


if __name__ == "__main__":
    main()
