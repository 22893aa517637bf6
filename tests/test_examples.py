"""The programs in examples/ run, and do what their docstrings say.

The main run of linear_regression.py happens in a subprocess, as a user would start it,
from a scratch directory; the other runs call each example's ``main()`` in this process,
which saves starting Python and importing torch again for each.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

DEVICES = [
    pytest.param("cpu"),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def load(name: str) -> ModuleType:
    """Import examples/<name>.py as a module, to call its main() in this process."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


# --------------------------------------------------------------------------------------
# linear_regression.py
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_linear_regression_fits_and_verifies_every_step(device: str, tmp_path: Path):
    figure = tmp_path / "fit.png"
    result = run([str(EXAMPLES / "linear_regression.py"), "--device", device, "--output", str(figure)], tmp_path)
    assert result.returncode == 0, explain(result)

    fitted = re.search(r"Fitted w = (?P<w>[-\d.]+) .*, b = (?P<b>[-\d.]+) ", result.stdout)
    assert fitted, explain(result)
    if device == "cpu":  # the tutorial's own result for seed 1000 (CUDA draws other numbers)
        assert (fitted["w"], fitted["b"]) == ("2.0501", "2.9780"), explain(result)
    assert abs(float(fitted["w"]) - 2) < 0.2, explain(result)
    assert abs(float(fitted["b"]) - 3) < 0.3, explain(result)

    summary = re.search(r"^200 gradients verified, max relative error [\d.e+-]+$", result.stdout, re.MULTILINE)
    assert summary, explain(result)
    assert re.search(r"^Epoch: 0 / 200, Parameters: w is .* gradients of 1 step verified", result.stdout, re.MULTILINE)
    assert "Epoch: 200 / 200" in result.stdout

    import matplotlib.image

    image = matplotlib.image.imread(figure)
    height, width = image.shape[:2]
    assert width >= 1000 and height >= 400, image.shape
    assert image[..., :3].std() > 0.05, "the figure is blank"


@pytest.fixture(scope="module")
def linear_regression():
    return load("linear_regression")


@pytest.fixture(autouse=True)
def _keep_the_global_rng():
    """The examples seed torch's global generator; give the next test the state it had."""
    with torch.random.fork_rng(devices=[]):
        yield


@pytest.mark.parametrize("device", DEVICES)
def test_linear_regression_catches_the_mean_bias_bug(linear_regression, device: str, tmp_path: Path, capsys):
    figure = tmp_path / "fit.png"
    status = linear_regression.main(["--device", device, "--bug", "mean-bias", "--output", str(figure)])
    report = capsys.readouterr().err
    assert status == 1, report
    assert "Gradient check failed at epoch 0" in report
    assert "does not match the exact derivative" in report
    assert re.search(r"Mismatched elements: 1 / 2\b", report), report
    worst_row = report.split("Failing points (worst first):")[1].splitlines()[2]  # after the header line
    assert "d/db[0, 0]" in worst_row, report
    # the bias gradient the backward left (the mean of the rows, 32 times too small) and the exact one
    assert worst_row.split()[3:5] == ["-6.8006311", "-217.620218"], report
    assert not figure.exists()


def test_linear_regression_plots_the_training_data(linear_regression):
    fit = linear_regression.train(torch.device("cpu"), epochs=3, check_every=1, bug="none")
    x, y = fit.data
    assert x.shape == y.shape == (3 * linear_regression.BATCH_SIZE,)
    assert fit.checked == 3 and fit.failure is None


def test_linear_regression_checks_every_k_steps(linear_regression, tmp_path: Path, capsys):
    status = linear_regression.main(
        ["--device", "cpu", "--epochs", "30", "--check-every", "7", "--output", str(tmp_path / "fit.png")]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert re.search(r"^5 gradients verified", out, re.MULTILINE), out  # steps 0, 7, 14, 21, 28


def test_linear_regression_refuses_bad_arguments(linear_regression, capsys):
    with pytest.raises(SystemExit) as exit_:
        linear_regression.main(["--check-every", "-1"])
    assert exit_.value.code == 2
    assert "--check-every must be 0 (off) or a positive number" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# The other examples
# --------------------------------------------------------------------------------------


def test_x2_exp(capsys):
    status = load("x2_exp").main()
    out = capsys.readouterr().out
    assert status == 0, out
    assert "x**2*exp(x) + 2*x*exp(x)" in out
    assert "the same function as the hand-written 2xeˣ + x²eˣ: True" in out
    assert "matches the exact derivative" in out


def test_custom_function(capsys):
    status = load("custom_function").main()
    out = capsys.readouterr().out
    assert status == 0, out
    assert "== NumpySoftplus: passes as it should" in out
    assert "== ForgetsGrad: fails as it should" in out
    assert "== HalfPrecision: fails as it should" in out


def test_plugin_example(tmp_path: Path):
    result = run(
        ["-m", "pytest", str(EXAMPLES / "test_with_plugin.py"), "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "--autocheck-seed", "0", "--autocheck-examples", "5"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    # Once on the CPU, and once more on CUDA where a GPU is present: nothing is skipped.
    passed = 8 if torch.cuda.is_available() else 4
    assert re.search(rf"\b{passed} passed in\b", result.stdout), explain(result)
