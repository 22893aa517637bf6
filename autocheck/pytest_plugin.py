"""pytest plugin: options (command line and ini file), a marker, a header line with the
seed, and fixtures that run a gradient check on every chosen device and dtype.

Every pytest run imports this module, so it imports nothing heavy (torch, sympy) until a
test uses a fixture.

Options (``--autocheck-x`` on the command line wins over ``autocheck_x`` in the ini file,
``[tool.pytest.ini_options]`` in pyproject.toml)::

    --autocheck-device=cpu|cuda|all   devices (repeatable; default cpu, and cuda where a GPU is present;
                                      all: both, cuda skipped without a GPU)
    --autocheck-dtype=float32         dtypes (repeatable; default float64)
    --autocheck-examples=N            batches of points per check when inputs are drawn
    --autocheck-seed=N                seed for every check (default: drawn once per run and shown in the header)
    --autocheck-deadline=SECONDS      deadline of each check
    --autocheck-strict                strict checks
    --autocheck-modes=rev|fwd|vmap    reverse mode, forward mode, batched gradients (repeatable; default rev)

Use::

    def test_my_op(grad_check):
        grad_check(lambda x: x * x * torch.exp(x))    # once per device and dtype

    @pytest.mark.autocheck(dtype="float32", rtol=1e-4, atol=1e-6)
    def test_loose(grad_check):                     # the marker's arguments reach the check
        grad_check(torch.sin)
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
        help="device for grad_check/autocheck_device (repeatable; default: cpu, and cuda where a GPU is present)",
    )
    group.addoption(
        "--autocheck-dtype", action="append", choices=_DTYPES, default=None,
        help="dtype for grad_check/autocheck_dtype (repeatable; default: float64)",
    )
    group.addoption("--autocheck-examples", type=int, default=None, help="batches of points per check when inputs are drawn")
    group.addoption("--autocheck-seed", type=int, default=None, help="seed for every check (default: random, shown in the header)")
    group.addoption("--autocheck-deadline", type=float, default=None, help="seconds each check may take")
    group.addoption("--autocheck-strict", action="store_true", default=None, help="strict checks (see strict=)")
    group.addoption(
        "--autocheck-modes", action="append", choices=("rev", "fwd", "vmap"), default=None,
        help="modes of every check (repeatable: rev = reverse mode, fwd = forward mode, vmap = batched gradients; "
             "default: rev)",
    )
    parser.addini("autocheck_device", "devices for grad_check (cpu, cuda, all)", type="linelist", default=[])
    parser.addini("autocheck_dtype", "dtypes for grad_check", type="linelist", default=[])
    parser.addini("autocheck_examples", "batches of points per check when inputs are drawn", default="")
    parser.addini("autocheck_seed", "seed for every check", default="")
    parser.addini("autocheck_deadline", "seconds each check may take", default="")
    parser.addini("autocheck_strict", "strict checks", type="bool", default=False)
    parser.addini("autocheck_modes", "modes of every check (rev, fwd, vmap)", type="linelist", default=[])


def _setting(config: pytest.Config, name: str, kind: Callable[[str], Any] = str) -> Any:
    """The command line's value of ``--autocheck-<name>``, else the ini file's, else None."""
    given = config.getoption(f"--autocheck-{name}")
    if given is not None:
        return given
    value = config.getini(f"autocheck_{name}")
    if value in ("", [], None):
        return None
    if isinstance(value, list):
        return [kind(v) for v in value]
    try:
        return kind(value)
    except ValueError:
        raise pytest.UsageError(f"autocheck_{name} = {value!r} in the ini file is not a valid value") from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "autocheck(**options): a test that runs gradient checks; the options (dtype, rtol, atol, strict, "
        "deadline, examples, ...) reach grad_check",
    )
    seed = _setting(config, "seed", int)
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


def _devices(config: pytest.Config, marker: Any) -> list[str]:
    chosen = _listed(marker.kwargs.get("device")) if marker is not None and "device" in marker.kwargs else None
    chosen = chosen or _setting(config, "device")
    if not chosen:  # where it can run: the CPU, and CUDA where a GPU is present
        return ["cpu", "cuda"] if _cuda_available() else ["cpu"]
    for device in chosen:
        if device not in (*_DEVICES, "all"):
            raise pytest.UsageError(f"autocheck device {device!r} is not one of cpu, cuda, all")
    return list(_DEVICES) if "all" in chosen else list(dict.fromkeys(chosen))


def _dtypes(config: pytest.Config, marker: Any) -> list[str]:
    chosen = _listed(marker.kwargs.get("dtype")) if marker is not None and "dtype" in marker.kwargs else None
    chosen = [str(d).removeprefix("torch.") for d in chosen or _setting(config, "dtype") or ["float64"]]
    for dtype in chosen:
        if dtype not in _DTYPES:
            raise pytest.UsageError(f"autocheck dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    return list(dict.fromkeys(chosen))


def _listed(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run gradient checks carry the ``autocheck`` marker (``-m autocheck`` selects them)."""
    for item in items:
        if "grad_check" in getattr(item, "fixturenames", ()) and item.get_closest_marker("autocheck") is None:
            item.add_marker(pytest.mark.autocheck)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    fixtures = metafunc.fixturenames
    marker = metafunc.definition.get_closest_marker("autocheck")
    if "autocheck_device" in fixtures or "grad_check" in fixtures:
        params = [
            pytest.param(d, marks=pytest.mark.skipif(d == "cuda" and not _cuda_available(), reason="no CUDA device"))
            for d in _devices(metafunc.config, marker)
        ]
        metafunc.parametrize("autocheck_device", params, scope="function", indirect=True)
    if "autocheck_dtype" in fixtures or "grad_check" in fixtures:
        metafunc.parametrize("autocheck_dtype", _dtypes(metafunc.config, marker), scope="function", indirect=True)


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
        "seed": config._autocheck_seed,  # type: ignore[attr-defined]
        "examples": _setting(config, "examples", int),
    }
    deadline = _setting(config, "deadline", float)
    if deadline is not None:
        defaults["deadline"] = deadline
    if _setting(config, "strict", bool):
        defaults["strict"] = True
    modes = _setting(config, "modes")
    if modes:
        defaults["modes"] = tuple(modes)
    marker = request.node.get_closest_marker("autocheck")
    if marker is not None:  # the marker's options, but this run's device and dtype
        defaults.update({k: v for k, v in marker.kwargs.items() if k not in ("device", "dtype")})
    defaults.update(device=autocheck_device, dtype=autocheck_dtype)

    def check(f: Callable[..., Any], *inputs: Any, **options: Any) -> Any:
        __tracebackhide__ = True
        return autocheck.assert_grad_matches(f, *inputs, **{**defaults, **options})

    return check
