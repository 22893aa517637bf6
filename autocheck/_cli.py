"""The ``autocheck`` command: spot checks from the terminal.

Exit status: 0 all gradients match, 1 a mismatch was found, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from dataclasses import asdict
from typing import Any, Callable, Sequence

EXAMPLES = """\
examples:
  autocheck check "x**2*exp(x)"
  autocheck check "x*x*torch.exp(x)" --dtype float32 --device cuda --examples 500
  autocheck check "atan2(y, x)" --domain "x=0.1:10"
  autocheck check mypkg.ops:softplus --reference "log(1 + exp(x))"
  autocheck diff "x**2*exp(x)" --order 2 --latex
  autocheck plot "x**2*exp(x)" --range -5 3 -o grad.png
  autocheck check "sin(x)" --json
"""

_CHECK_EXAMPLES = """\
examples:
  autocheck check "x**2*exp(x)"
  autocheck check "x*x*torch.exp(x)" --dtype float32 --examples 500
  autocheck check "atan2(y, x)" --domain "x=0.1:10" --domain "y=-1:1"
  autocheck check mypkg.ops:softplus --reference "log(1 + exp(x))"
  autocheck check "log(x)" --json
"""

_DIFF_EXAMPLES = """\
examples:
  autocheck diff "x**2*exp(x)"            # x**2*exp(x) + 2*x*exp(x)
  autocheck diff "atan2(y, x)"            # one partial per variable
  autocheck diff "sin(x)" --order 2 --latex
"""

_PLOT_EXAMPLES = """\
examples:
  autocheck plot "x**2*exp(x)" --range -5 3 -o grad.png
  autocheck plot "softplus(x)" --range -30 30 --dtype float32 -o softplus.png
"""


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autocheck",
        description="Prove PyTorch gradients right or wrong against exact symbolic derivatives.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="{check,diff,plot}")

    check = sub.add_parser(
        "check", help="compare autograd with the exact derivative; exit 0 (match) or 1 (mismatch)",
        epilog=_CHECK_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("function", help='a formula such as "x**2*exp(x)", or module:function')
    check.add_argument("--reference", help="the exact mathematics as a formula (for module:function targets)")
    _common(check)
    check.add_argument("--examples", type=int, default=None, help="Hypothesis examples (each adds a bulk batch)")
    check.add_argument("--seed", type=int, default=None, help="seed for a reproducible run")
    check.add_argument("--order", type=int, default=1, choices=(1, 2), help="1: gradients, 2: second derivatives")
    check.add_argument(
        "--domain", action="append", default=[], metavar="NAME=LOW:HIGH",
        help='interval to search for one variable, e.g. "x=0.1:10" (repeatable)',
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    diff = sub.add_parser(
        "diff", help="print the exact derivative", epilog=_DIFF_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    diff.add_argument("function", help='a formula such as "x**2*exp(x)", or module:function')
    diff.add_argument("--order", type=int, default=1, help="order of the derivative (default 1)")
    diff.add_argument("--latex", action="store_true", help="print LaTeX")

    plot = sub.add_parser(
        "plot", help="plot f, the exact f', autograd's f' and the error in ULPs (needs matplotlib)",
        epilog=_PLOT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot.add_argument("function", help='a formula of one variable such as "x**2*exp(x)", or module:function')
    plot.add_argument("--range", nargs=2, type=float, default=(-5.0, 5.0), metavar=("LOW", "HIGH"))
    plot.add_argument("--points", type=int, default=2001, help="number of grid points (default 2001)")
    plot.add_argument("-o", "--output", default="autocheck.png", help="PNG file to write (default autocheck.png)")
    _common(plot)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32", "float16", "bfloat16"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.version:
        from . import __version__

        print(f"autocheck {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"check": _check, "diff": _diff, "plot": _plot}[args.command](args)
    except UsageError as error:
        print(f"autocheck {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as error:  # input errors from the library: clear messages already
        print(f"autocheck {args.command}: error: {error}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------
# Targets: a formula or module:function
# --------------------------------------------------------------------------------------


def _target(text: str) -> tuple[Callable[..., Any], str]:
    """The function to check and a display name."""
    if ":" in text and _looks_like_import(text):
        return _import_function(text), text
    from ._parse import ExpressionError, parse_expression

    try:
        parsed = parse_expression(text)
    except ExpressionError as error:
        raise UsageError(str(error)) from None
    return parsed.as_torch_function(), text


def _looks_like_import(text: str) -> bool:
    module, _, name = text.partition(":")
    parts = module.split(".") + name.split(".")
    return all(p.isidentifier() for p in parts)


def _import_function(text: str) -> Callable[..., Any]:
    import importlib

    module_name, _, attribute = text.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"cannot import module {module_name!r} ({error}); run from the directory that holds it") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise UsageError(f"{text} is not callable")
    return target


def _parse_domain(items: Sequence[str]) -> dict[str, tuple[float, float]] | None:
    if not items:
        return None
    domain = {}
    for item in items:
        name, sep, interval = item.partition("=")
        low, colon, high = interval.partition(":")
        try:
            if not sep or not colon:
                raise ValueError
            domain[name.strip()] = (_number(low), _number(high))
        except ValueError:
            raise UsageError(f'--domain expects NAME=LOW:HIGH such as "x=0.1:10", got {item!r}') from None
    return domain


def _number(text: str) -> float:
    text = text.strip()
    if text in ("", "inf", "+inf"):
        return math.inf if text else math.nan
    if text == "-inf":
        return -math.inf
    return float(text)


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def _colour(text: str, code: str, stream: Any = None) -> str:
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or not getattr(stream, "isatty", lambda: False)():
        return text
    return f"\033[{code}m{text}\033[0m"


class _Progress:
    """A one-line progress indicator on stderr for runs longer than about a second."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.shown = False

    def _run(self) -> None:
        start = time.monotonic()
        if self.done.wait(1.0):
            return
        frames = "|/-\\"
        k = 0
        while not self.done.wait(0.1):
            elapsed = time.monotonic() - start
            sys.stderr.write(f"\r{frames[k % 4]} {self.label} {elapsed:.1f} s")
            sys.stderr.flush()
            self.shown = True
            k += 1

    def __enter__(self) -> "_Progress":
        if sys.stderr.isatty():
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _check(args: argparse.Namespace) -> int:
    from ._check import check_grad

    f, name = _target(args.function)
    reference = None
    if args.reference:
        from ._parse import ExpressionError, parse_expression

        try:
            reference = parse_expression(args.reference).as_torch_function()
        except ExpressionError as error:
            raise UsageError(f"--reference: {error}") from None
    if args.examples is not None and args.examples < 1:
        raise UsageError(f"--examples must be a positive integer, got {args.examples}")
    with _Progress(f"checking {name}"):
        report = check_grad(
            f, reference=reference, order=args.order, dtype=args.dtype, device=args.device,
            examples=args.examples, seed=args.seed, domain=_parse_domain(args.domain),
        )
    report.function = name
    if args.json:
        print(json.dumps(_as_json(report), indent=2))
        return 0 if report.ok else 1
    text = str(report)
    head, _, rest = text.partition("\n")
    verdict = _colour("MATCH", "32;1") if report.ok else _colour("MISMATCH", "31;1")
    print(f"{verdict}  {head}")
    print(rest)
    return 0 if report.ok else 1


def _as_json(report: Any) -> dict[str, Any]:
    data = asdict(report)
    data["worst"] = [asdict(p) for p in report.worst]
    return _finite(data)


def _finite(value: Any) -> Any:
    """JSON has no inf or nan: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _diff(args: argparse.Namespace) -> int:
    import sympy

    from ._symbolic import derivative

    if args.order < 1:
        raise UsageError(f"--order must be a positive integer, got {args.order}")
    f, _ = _target(args.function)
    result = derivative(f, order=args.order)
    parts = result if isinstance(result, tuple) else (result,)
    flat = list(_flatten(parts))
    printer = sympy.latex if args.latex else str
    for expr in flat:
        print(printer(expr))
    return 0


def _flatten(items: Any) -> Any:
    for item in items:
        if isinstance(item, tuple):
            yield from _flatten(item)
        else:
            yield item


def _plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("autocheck plot needs matplotlib: pip install 'autocheck[plot]'", file=sys.stderr)
        return 2
    import torch

    from ._check import reference as exact_reference
    from ._check import resolve_device, resolve_dtype
    from ._compare import ulp

    f, name = _target(args.function)
    low, high = args.range
    if not low < high:
        raise UsageError(f"--range needs LOW < HIGH, got {low} {high}")
    if args.points < 2:
        raise UsageError(f"--points must be at least 2, got {args.points}")
    dtype = resolve_dtype(args.dtype)
    device = resolve_device(args.device)
    exact_fn = exact_reference(f)
    x = torch.linspace(low, high, args.points, dtype=torch.float64).to(dtype)
    leaf = x.to(device).clone().requires_grad_(True)
    y = f(leaf)
    if y.shape != leaf.shape:
        raise UsageError("plot needs an elementwise function of one variable")
    y.backward(torch.ones_like(y))
    autograd = leaf.grad.detach().to(torch.float64).cpu()
    exact = exact_fn(x.to(torch.float64)).cpu()
    errors = ((autograd - exact).abs() / ulp(exact, dtype)).nan_to_num(nan=0.0, posinf=0.0)
    xs = x.to(torch.float64).numpy()
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    top.plot(xs, y.detach().to(torch.float64).cpu().numpy(), color="black", label=f"f(x) = {name}")
    top.set_ylabel("f(x)")
    top.legend(loc="best")
    middle.plot(xs, exact.numpy(), color="tab:blue", linewidth=2.5, label="exact f'(x)")
    middle.plot(xs, autograd.numpy(), color="tab:orange", linestyle="--", label="autograd f'(x)")
    middle.set_ylabel("f'(x)")
    middle.legend(loc="best")
    bottom.plot(xs, errors.numpy(), color="tab:red", label=f"|autograd - exact| in ULPs ({args.dtype})")
    bottom.set_xlabel("x")
    bottom.set_ylabel("error (ULP)")
    bottom.legend(loc="best")
    figure.suptitle(f"autocheck: gradient of {name}")
    figure.tight_layout()
    figure.savefig(args.output, dpi=100)
    print(f"wrote {args.output} (max error {float(errors.max()):.3g} ULP)")
    return 0
