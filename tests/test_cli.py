"""The ``autocheck`` command: check, diff and plot, their exit status, text and JSON.

Most behaviours run in-process through ``autocheck._cli.main``; a handful of subprocesses
cover ``python -m autocheck``, the console script, and a hostile formula in a real process.
"""

from __future__ import annotations

import io
import json
import math
import os
import shlex
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import torch

import autocheck
import autocheck._cli as cli
from autocheck._cli import main

BUGGY_MODULE = textwrap.dedent(
    """
    import torch


    class _Softplus(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.nn.functional.softplus(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * torch.sigmoid(x) * 0.5  # the bug: half the derivative


    def softplus(x):
        return _Softplus.apply(x)
    """
)

HOSTILE = [
    "__import__('os').system('touch X')",
    "().__class__.__bases__",
    "x.__class__.__mro__[1].__subclasses__()",
    "lambda: open('X', 'w')",
    "[open('X', 'w') for x in (1,)]",
    "f'{x}'",
    "open('X', 'w')",
    "eval('1')",
    "x" + "+x" * 2000,  # too long
    "(" * 300 + "x" + ")" * 300,  # nested too deeply for Python's parser
    "-" * 1990 + "x",  # nested too deeply for the formula parser
    "9**9**9**9",
]


#: In-process failing checks stay on moderate inputs: at |x| near 1e300 each exact value of the
#: buggy softplus costs mpmath about 20 ms. The console-script test runs the default domain.
FAST = ("--domain", "x=-50:50")


def run(*argv: str) -> int:
    return main(list(argv))


@pytest.fixture
def buggy(tmp_path, monkeypatch):
    """A module with a softplus whose backward is off by a factor 2, importable from the cwd."""
    name = f"buggy_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(BUGGY_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


# --- check: the library's check, printed ------------------------------------------------


def x2exp(x):
    return x**2 * torch.exp(x)


def test_check_prints_the_librarys_report_and_the_verdict(capsys):
    assert run("check", "x**2*exp(x)", "--seed", "0") == 0
    out = capsys.readouterr().out
    assert out.startswith("f(x) = x**2*exp(x)\ngradient of x**2*exp(x) matches the exact derivative (float64, cpu)\n")
    assert "\nExact derivative: d/dx = x**2*exp(x) + 2*x*exp(x)\n" in out
    assert "\nSeed: 0\n" in out and "Reproduce" not in out
    assert out.endswith("MATCH: autograd agrees with the exact derivative at every checked point.\n")


def test_the_command_checks_the_points_python_checks_for_the_same_seed(capsys):
    assert run("check", "x**2*exp(x)", "--seed", "3", "--json") == 0
    command = json.loads(capsys.readouterr().out)
    python = json.loads(autocheck.check_grad(x2exp, seed=3).to_json())
    for key in ("checked", "skipped", "max_ulp", "max_rel", "rtol", "atol", "seed", "formula", "notes"):
        assert command[key] == python[key], key
    assert [(r["inputs"], r["autograd"], r["expected"]) for r in command["worst"]] == \
        [(r["inputs"], r["autograd"], r["expected"]) for r in python["worst"]]


def test_examples_and_dtype_reach_the_check(capsys):
    assert run("check", "x*x*torch.exp(x)", "--dtype", "float32", "--examples", "2", "--seed", "0", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dtype"] == "float32"
    assert report["checked"] == autocheck.check_grad(x2exp, dtype=torch.float32, examples=2, seed=0).checked


def test_check_several_variables(capsys):
    assert run("check", "atan2(y, x)", "--domain", "x=0.1:10", "--domain", "y=-10:10", "--seed", "1") == 0
    out = capsys.readouterr().out
    assert "Exact derivative: d/dy = x/(x**2 + y**2); d/dx = -y/(x**2 + y**2)" in out
    assert "Domain: y in [-10, 10], x in [0.1, 10]" in out


def test_check_order_2(capsys):
    assert run("check", "log(x)", "--order", "2", "--seed", "0") == 0
    out = capsys.readouterr().out
    assert "order-2 derivative of log(x) matches" in out
    assert "Domain: x in [0, inf]" in out  # the domain of log, inferred


def test_without_a_seed_a_random_one_is_printed(capsys):
    assert run("check", "x*x", "--examples", "1") == 0
    seeds = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Seed: ")]
    assert len(seeds) == 1 and int(seeds[0].removeprefix("Seed: ")) >= 0


def test_same_seed_gives_the_same_report(capsys):
    run("check", "sin(x)*x", "--seed", "7")
    first = capsys.readouterr().out
    run("check", "sin(x)*x", "--seed", "7")
    assert capsys.readouterr().out == first


def test_a_formula_may_start_with_a_minus_sign(capsys):
    assert run("check", "-x*exp(x)", "--seed", "0") == 0
    assert capsys.readouterr().out.startswith("f(x) = -x*exp(x)\n")


def test_check_at_one_point(capsys):
    assert run("check", "x**2*exp(x)", "--at", "x=1.5", "--seed", "0") == 0
    out = capsys.readouterr().out
    assert "Checked 1 elements\n" in out
    assert "\n              1.5  d/dx" in out or "  1.5  d/dx" in out


def test_domain_half_line(capsys):
    assert run("check", "sqrt(x)", "--domain", "x=1:", "--seed", "0", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert "Domain: x in [1, inf]" in report["notes"]
    assert all(row["inputs"][0] >= 1.0 for row in report["worst"])


# --- check: a failing function from the current directory ------------------------------


def test_failing_check_names_the_counterexample_and_how_to_reproduce(buggy, capsys):
    assert run("check", f"{buggy}:softplus", "--reference", "log(1 + exp(x))", *FAST, "--seed", "5") == 1
    out = capsys.readouterr().out
    assert out.startswith(f"f(x) = {buggy}:softplus\nreference: f(x) = log(1 + exp(x))\n"
                          f"gradient of {buggy}:softplus does not match the exact derivative (float64, cpu)\n")
    assert "Exact derivative: d/dx = exp(x)/(exp(x) + 1)\n" in out
    assert "Counterexample (the simplest failing input found): x = 0.0\n" in out
    reproduce = f"Reproduce: autocheck check {buggy}:softplus --reference 'log(1 + exp(x))' --at x=0.0 --seed 5"
    assert reproduce + "\n" in out
    assert out.endswith("MISMATCH: autograd differs from the exact derivative.\n")


def test_reproduce_line_replays_the_failure(buggy, capsys):
    run("check", f"{buggy}:softplus", "--reference", "log(1 + exp(x))", *FAST, "--seed", "5")
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("Reproduce: "))
    assert main(shlex.split(line.removeprefix("Reproduce: "))[1:]) == 1
    out = capsys.readouterr().out
    assert "Mismatched elements: 1 / 1 (100.0%)" in out
    assert "         0.0  d/dx" in out or "  0.0  d/dx" in out


def test_failing_check_json_follows_the_schema(buggy, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    assert run("check", f"{buggy}:softplus", "--reference", "log(1 + exp(x))", *FAST, "--seed", "5", "--json") == 1
    report = json.loads(capsys.readouterr().out)
    jsonschema.validate(report, autocheck.Report.json_schema())
    assert report["ok"] is False and 0 < report["failed"] <= report["checked"]
    assert report["counterexample"] == [0.0]
    assert report["reproduce"].endswith("--at x=0.0 --seed 5")
    assert report["worst"][0]["autograd"] == pytest.approx(report["worst"][0]["expected"] / 2)


def test_json_follows_the_schema_and_is_strict(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    assert run("check", "atan2(y, x)", "--domain", "x=0.1:10", "--domain", "y=-10:10", "--seed", "3", "--json") == 0
    text = capsys.readouterr().out

    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    report = json.loads(text, parse_constant=refuse)
    jsonschema.validate(report, autocheck.Report.json_schema())
    assert (report["schema"], report["version"], report["ok"], report["seed"]) == ("autocheck.report", 1, True, 3)
    assert report["names"] == ["y", "x"] and report["counterexample"] is None and report["reproduce"] == ""


PRINTING_MODULE = textwrap.dedent(
    """
    import os

    import torch


    def chatty(x):
        print("forward of chatty")
        os.write(1, b"written to file descriptor 1\\n")
        return x * torch.exp(x)
    """
)


def test_json_stays_valid_when_the_function_prints(tmp_path):
    (tmp_path / "chatty_ops.py").write_text(PRINTING_MODULE)
    done = subprocess.run(
        [sys.executable, "-m", "autocheck", "check", "chatty_ops:chatty", "--seed", "0", "--examples", "2", "--json"],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert "forward of chatty" in done.stderr and "written to file descriptor 1" in done.stderr


# --- check: colour and progress ---------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    for colour_wanted in (True, False):
        if not colour_wanted:
            monkeypatch.setenv("NO_COLOR", "1")
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stdout", terminal)
        assert main(["check", "x*x", "--seed", "0"]) == 0
        assert ("\033[32;1mMATCH\033[0m" in terminal.getvalue()) is colour_wanted
        assert ("\033[" in terminal.getvalue()) is colour_wanted


def test_no_escape_codes_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    run("check", "x*x", "--seed", "0")
    captured = capsys.readouterr()
    assert "\033" not in captured.out + captured.err


def test_progress_shows_after_a_second_on_a_terminal_and_is_cleared(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with cli._Progress("checking f"):
        time.sleep(1.3)
    shown = terminal.getvalue()
    assert "checking f (1 s)" in shown and shown.endswith("\r\033[K")
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    with cli._Progress("checking f"):
        pass
    assert quiet.getvalue() == ""


# --- usage and input errors: exit 2 ---------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "x*x", "--domain", "x=1"], "--domain expects NAME=LOW:HIGH"),
        (["check", "x*x", "--domain", "z=0:1"], "names 'z', which is not a variable (variables: x)"),
        (["check", "x*x", "--domain", "x=3:2"], "--domain for x is empty"),
        (["check", "log(x)", "--domain", "x=-3:-2"], "the function is real only for x in [0, inf]"),
        (["check", "x*x", "--dtype", "float8"], "invalid choice: 'float8'"),
        (["check", "x*x", "--order", "7"], "invalid choice: 7"),
        (["check", "x*x", "--examples", "0"], "--examples must be a positive integer"),
        (["check", "x*x", "--device", "tpu:x"], "--device must be cpu, cuda or cuda:N"),
        (["check", "atan2(y, x)", "--at", "x=1"], "--at gives no value for y"),
        (["check", "x*x", "--at", "x=1", "--domain", "x=0:1"], "cannot be combined"),
        (["check", "x*x", "--at", "x"], "--at expects NAME=VALUE"),
        (["check", "2*pi"], "has no variables"),
        (["check", "x**"], "invalid syntax"),
        (["check", "nosuchmodule_xyz:f"], "cannot import module 'nosuchmodule_xyz'"),
        (["check", "math:nothing_here"], "module 'math' has no attribute 'nothing_here'"),
        (["check", "math:pi"], "math:pi is a float, not a function"),
        (["check", "x*x", "--reference", "y*y"], "--reference uses 'y', which is not a parameter"),
        (["diff", "x*x", "--order", "0"], "--order must be between 1 and 10"),
        (["diff", "3"], "no variables to differentiate by"),
        (["plot", "atan2(y, x)"], "plot draws functions of one variable"),
        (["plot", "x*x", "--range", "2", "1"], "--range needs finite LOW < HIGH"),
        (["check"], "the following arguments are required: function"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_cuda_is_a_usage_error(capsys):
    assert run("check", "x*x", "--device", "cuda") == 2
    assert "--device cuda: CUDA is not available on this machine; use --device cpu" in capsys.readouterr().err


@pytest.mark.parametrize("formula", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_formulas_are_refused_promptly_and_run_nothing(formula, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert main(["check", formula]) == 2
    assert time.monotonic() - start < 5.0
    assert "cannot read the formula" in capsys.readouterr().err
    assert not (tmp_path / "X").exists()


def test_help_shows_examples(capsys):
    for argv in (["--help"], ["check", "--help"], ["diff", "--help"], ["plot", "--help"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "examples:\n  autocheck " in out


def test_version_and_missing_command(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("autocheck ")
    assert main([]) == 2


# --- diff -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["x**2*exp(x)"], "x**2*exp(x) + 2*x*exp(x)\n"),
        (["x**2*exp(x)", "--order", "2"], "x**2*exp(x) + 4*x*exp(x) + 2*exp(x)\n"),
        (["x**2*exp(x)", "--order", "2", "--latex"], "x^{2} e^{x} + 4 x e^{x} + 2 e^{x}\n"),
        (["atan2(y, x)"], "df/dy = x/(x**2 + y**2)\ndf/dx = -y/(x**2 + y**2)\n"),
        (["x*y**2", "--order", "2"], "d^2f/dx^2 = 0\nd^2f/dxdy = 2*y\nd^2f/dy^2 = 2*x\n"),
        (["x*y", "--latex"], "\\frac{\\partial f}{\\partial x} = y\n\\frac{\\partial f}{\\partial y} = x\n"),
        (["abs(x)"], "sign(x)\n"),
    ],
)
def test_diff(argv, expected, capsys):
    assert main(["diff", *argv]) == 0
    assert capsys.readouterr().out == expected


def test_diff_of_an_imported_function_is_traced(buggy, capsys):
    assert main(["diff", f"{buggy}:softplus"]) == 0
    assert capsys.readouterr().out == "Piecewise((1, x > 20), (exp(x)/(exp(x) + 1), True))\n"


# --- plot -----------------------------------------------------------------------------


def test_plot_writes_a_png_with_three_panels(tmp_path, capsys):
    image = pytest.importorskip("matplotlib.image")
    output = tmp_path / "grad.png"
    assert main(["plot", "x**2*exp(x)", "--range", "-5", "3", "--points", "401", "-o", str(output)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {output}: f, exact and autograd f', error in ULPs at 401 points")
    assert out.endswith("; every point within the tolerance\n")
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(output)
    assert pixels.shape[:2] == (800, 700)  # 7 x 8 inches at 100 dpi: three panels stacked
    # Three panels: six horizontal frame lines (top and bottom of each), dark across the width.
    dark_rows = ((pixels[:, 120:640, :3].mean(axis=2) < 0.5).mean(axis=1) > 0.9).nonzero()[0]
    lines = 1 + int((dark_rows[1:] - dark_rows[:-1] > 1).sum())
    assert lines == 6


def test_plot_marks_the_points_outside_the_tolerance(buggy, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    output = tmp_path / "buggy.png"
    argv = ["plot", f"{buggy}:softplus", "--reference", "log(1 + exp(x))", "--points", "101", "-o", str(output)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.endswith("; 101 of 101 points outside the tolerance\n")


def test_the_plots_tolerance_is_the_checks():
    from autocheck._check import tolerance_band

    x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    exact, allowed = tolerance_band(x2exp, x)
    assert exact.tolist() == pytest.approx([-math.exp(-1), 0.0, 8 * math.exp(2)], rel=1e-15)
    # rtol times the size of the derivative's terms, x**2 e**x + |2 x e**x|, and atol where it vanishes
    rtol, atol = autocheck.DEFAULT_TOLERANCES[torch.float64]
    assert allowed[0] >= rtol * 3 * math.exp(-1) and allowed[1] == pytest.approx(atol, rel=1e-9)


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "x*x"]) == 2
    err = capsys.readouterr().err
    assert err == "autocheck plot needs matplotlib, which is not installed: pip install 'autocheck[plot]'\n"
    assert not list(tmp_path.iterdir())


# --- real processes -------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(cli.__file__).parents[1]), env.get("PYTHONPATH", "")])
    return env


def test_python_m_autocheck(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "autocheck", "check", "x**2*exp(x)", "--seed", "0"],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Exact derivative: d/dx = x**2*exp(x) + 2*x*exp(x)" in done.stdout and "MATCH" in done.stdout
    assert "\033" not in done.stdout + done.stderr  # not a terminal: no colour
    assert not list(tmp_path.iterdir())  # nothing written (no .hypothesis directory)


def test_the_program_exits_with_mains_status_and_skips_the_last_collections(monkeypatch):
    import gc

    from autocheck import _cli

    monkeypatch.setattr(_cli, "main", lambda: 1)
    try:
        with pytest.raises(SystemExit) as exit_:
            _cli.run()
        assert exit_.value.code == 1
        assert gc.get_freeze_count() > 0  # what exists at exit is left to the operating system
    finally:
        gc.unfreeze()


def test_an_interrupt_while_the_checker_loads_is_reported_as_one(monkeypatch, capsys):
    from autocheck import _cli, _loading

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(_loading, "load", interrupted)
    assert _cli.main(["check", "x**2"]) == 130
    assert "autocheck check: interrupted" in capsys.readouterr().err


def test_the_atexit_functions_and_finalizers_of_the_users_module_still_run_at_exit(tmp_path):
    (tmp_path / "closing_ops.py").write_text(textwrap.dedent("""
        import atexit
        import weakref
        import torch

        class Log:
            pass

        LOG = Log()
        weakref.finalize(LOG, print, "finalized")
        atexit.register(print, "atexit ran")

        def square(x):
            return x * x
    """))
    done = subprocess.run(
        [sys.executable, "-m", "autocheck", "check", "closing_ops:square", "--reference", "x**2", *FAST, "--seed", "0"],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("atexit ran\nfinalized")


def test_console_script_finds_a_module_in_the_current_directory(tmp_path):
    script = Path(sys.executable).with_name("autocheck")
    if not script.exists():
        pytest.skip("the autocheck console script is not installed (pip install -e .)")
    (tmp_path / "buggy_ops.py").write_text(BUGGY_MODULE)
    done = subprocess.run(
        [str(script), "check", "buggy_ops:softplus", "--reference", "log(1 + exp(x))", *FAST, "--seed", "5"],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Counterexample (the simplest failing input found): x = 0.0" in done.stdout
    assert "Reproduce: autocheck check buggy_ops:softplus --reference 'log(1 + exp(x))' --at x=0.0" in done.stdout


def test_hostile_formula_in_a_real_process_creates_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "autocheck", "check", "__import__('os').system('touch X')"],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120,
    )
    assert done.returncode == 2
    assert "calling `__import__('os').system` is not allowed" in done.stderr
    assert not (tmp_path / "X").exists()


def test_modes_reach_the_check_and_the_reproduce_line(capsys):
    assert run("check", "x**2*exp(x)", "--modes", "rev,fwd", "--seed", "0", "--examples", "2", "--json") == 0
    assert json.loads(capsys.readouterr().out)["modes"] == ["rev", "fwd"]
    assert run("check", "x*x", "--modes", "sideways") == 2
    assert 'modes must hold "rev" (reverse mode: x.grad), "fwd" (forward mode: the JVP) and/or "vmap"' in capsys.readouterr().err
