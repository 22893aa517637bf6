"""pytest plugin: command-line options, a header line with the seed, and fixtures that run
a gradient check on every chosen device and dtype.

Every pytest run imports this module, so it imports nothing heavy (torch, sympy) until a
fixture is used.

Options::

    --autocheck-device=cpu|cuda|all   devices for the ``autocheck_device`` fixture (repeatable; default all,
                                      cuda skipped where no GPU is present)
    --autocheck-dtype=float32         dtypes for the ``autocheck_dtype`` fixture (repeatable; default float64)
    --autocheck-examples=N            points per check when inputs are drawn
    --autocheck-seed=N                seed for every check (default: drawn once per run and shown in the header)

Use::

    def test_my_op(grad_check):
        grad_check(lambda x: x * x * torch.exp(x))    # once per device and dtype
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable

import pytest

_DEVICES = ("cpu", "cuda")
_DTYPES = ("float64", "float32", "float16", "bfloat16")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("autocheck", "gradient checks against exact symbolic derivatives")
    group.addoption(
        "--autocheck-device", action="append", choices=(*_DEVICES, "all"), default=None,
        help="device for grad_check/autocheck_device (repeatable; default: all, cuda skipped without a GPU)",
    )
    group.addoption(
        "--autocheck-dtype", action="append", choices=_DTYPES, default=None,
        help="dtype for grad_check/autocheck_dtype (repeatable; default: float64)",
    )
    group.addoption("--autocheck-examples", type=int, default=None, help="points per check when inputs are drawn")
    group.addoption("--autocheck-seed", type=int, default=None, help="seed for every check (default: random, shown in the header)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "autocheck: a test that runs gradient checks (see the grad_check fixture)")
    seed = config.getoption("--autocheck-seed")
    if seed is None:
        worker = getattr(config, "workerinput", None)
        seed = worker.get("autocheck_seed") if worker else None
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    config._autocheck_seed = seed  # type: ignore[attr-defined]
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistSeed(seed), "autocheck-xdist")


class _XdistSeed:
    """Hands the controller's seed to every xdist worker, so that all of them check alike."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["autocheck_seed"] = self.seed


def pytest_report_header(config: pytest.Config) -> str:
    seed = config._autocheck_seed  # type: ignore[attr-defined]
    return f"autocheck: seed={seed} (replay with --autocheck-seed={seed})"


def _devices(config: pytest.Config) -> list[str]:
    chosen = config.getoption("--autocheck-device") or ["all"]
    return list(_DEVICES) if "all" in chosen else list(dict.fromkeys(chosen))


def _dtypes(config: pytest.Config) -> list[str]:
    return list(dict.fromkeys(config.getoption("--autocheck-dtype") or ["float64"]))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    fixtures = metafunc.fixturenames
    if "autocheck_device" in fixtures or "grad_check" in fixtures:
        params = [
            pytest.param(d, marks=pytest.mark.skipif(d == "cuda" and not _cuda_available(), reason="no CUDA device"))
            for d in _devices(metafunc.config)
        ]
        metafunc.parametrize("autocheck_device", params, scope="function", indirect=True)
    if "autocheck_dtype" in fixtures or "grad_check" in fixtures:
        metafunc.parametrize("autocheck_dtype", _dtypes(metafunc.config), scope="function", indirect=True)


def _cuda_available() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return False
    import torch

    return torch.cuda.is_available()


@pytest.fixture
def autocheck_device(request: pytest.FixtureRequest) -> str:
    """The device of this run of the test ("cpu" or "cuda")."""
    return getattr(request, "param", "cpu")


@pytest.fixture
def autocheck_dtype(request: pytest.FixtureRequest) -> Any:
    """The torch dtype of this run of the test."""
    import torch

    return getattr(torch, getattr(request, "param", "float64"))


@pytest.fixture
def grad_check(request: pytest.FixtureRequest, autocheck_device: str, autocheck_dtype: Any) -> Callable[..., Any]:
    """``autocheck.assert_grad_matches`` bound to this run's device, dtype, seed and examples."""
    import autocheck

    config = request.config
    defaults = {
        "device": autocheck_device,
        "dtype": autocheck_dtype,
        "seed": config._autocheck_seed,  # type: ignore[attr-defined]
        "examples": config.getoption("--autocheck-examples"),
    }

    def check(f: Callable[..., Any], *inputs: Any, **options: Any) -> Any:
        __tracebackhide__ = True
        return autocheck.assert_grad_matches(f, *inputs, **{**defaults, **options})

    return check
