"""Cold start of the command: ``autocheck check "x**2*exp(x)"`` against importing torch and sympy.

Each repetition starts fresh processes, alternating the two commands so that both see the
same machine load; the table shows the median and the fastest wall time, and the median
CPU time (user + system, which other processes on a busy machine disturb less). Target:
the check takes at most 1.4 times as long as ``python -c "import torch, sympy"``.

    python benchmarks/bench_cli.py               # 7 repetitions
    python benchmarks/bench_cli.py --repeat 15
    python benchmarks/bench_cli.py --phases      # also: where the check's own time goes

``--phases`` runs the command once more in one process and times its stages (imports,
tracing, domain, points, check_grad, table), the breakdown to read when the ratio misses.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.4

COMMANDS = {
    'python -c "import torch, sympy"': [sys.executable, "-c", "import torch, sympy"],
    'python -m autocheck check "x**2*exp(x)"': [sys.executable, "-m", "autocheck", "check", "x**2*exp(x)"],
}


def timed(command: list[str], cwd: str) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``command`` (which must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def machine() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load}; Python {platform.python_version()}; "
            f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")


def phases() -> None:
    """One in-process run of the command with its stages timed."""
    code = r"""
import time
T = time.perf_counter
t0 = T()
import torch, sympy
t1 = T()
import autocheck._api as api, autocheck._cli as cli, autocheck._search as search
t2 = T()
marks = []
def timed(module, name):
    function = getattr(module, name)
    def wrapper(*args, **kwargs):
        start = T()
        try:
            return function(*args, **kwargs)
        finally:
            marks.append((name, T() - start))
    setattr(module, name, wrapper)
for module, name in [(cli, "_target"), (api, "check_grad"), (search, "search")]:
    timed(module, name)
import contextlib, io, sys
with contextlib.redirect_stdout(io.StringIO()):
    cli.main(["check", "x**2*exp(x)", "--seed", "0"])
t3 = T()
print(f"  import torch, sympy        {t1 - t0:6.3f} s")
print(f"  import autocheck           {t2 - t1:6.3f} s")
print(f"  main(), in all             {t3 - t2:6.3f} s, of which:")
for name, seconds in marks:
    print(f"    {name:24} {seconds:6.3f} s")
print(f"  hypothesis imported: {'hypothesis' in sys.modules}")
"""
    print("\nStages of one run, in one process:")
    subprocess.run([sys.executable, "-c", code], env=_env(), check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7, help="repetitions of each command (default 7)")
    parser.add_argument("--phases", action="store_true", help="also time the stages of one run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        for command in COMMANDS.values():  # warm the disk cache: every measured run is the same kind of cold
            timed(command, cwd)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
        for _ in range(args.repeat):
            for name, command in COMMANDS.items():
                runs[name].append(timed(command, cwd))
    print(f"Machine: {machine()}")
    print(f"{args.repeat} runs each, alternating; seconds\n")
    base_wall = statistics.median(w for w, _ in runs[next(iter(COMMANDS))])
    base_cpu = statistics.median(c for _, c in runs[next(iter(COMMANDS))])
    header = (f"{'command':42} {'median wall':>11} {'min wall':>9} {'median CPU':>10} "
              f"{'wall ratio':>10} {'CPU ratio':>9}")
    print(header)
    print("-" * len(header))
    for name, results in runs.items():
        wall = statistics.median(w for w, _ in results)
        fastest = min(w for w, _ in results)
        cpu = statistics.median(c for _, c in results)
        print(f"{name:42} {wall:11.2f} {fastest:9.2f} {cpu:10.2f} {wall / base_wall:9.2f}x {cpu / base_cpu:8.2f}x")
    check_name = list(COMMANDS)[1]
    ratio = statistics.median(w for w, _ in runs[check_name]) / base_wall
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"\nWall-time ratio {ratio:.2f}x {verdict} the target of {TARGET}x.")
    if args.phases:
        phases()


if __name__ == "__main__":
    main()
