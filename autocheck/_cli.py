"""The ``autocheck`` command: gradient checks from the terminal.

``check`` compares autograd with the exact derivative, ``diff`` prints the exact
derivative, ``plot`` draws f, both derivatives and the error in ULPs.

Formulas are read only by :func:`autocheck._parse.parse_expression` (a whitelist over
Python's syntax tree; nothing is evaluated). ``module:function`` imports that module, from
the current directory or the installed packages, and so runs its code, as ``python -m``
would.

Exit status: 0 all gradients match, 1 a mismatch was found, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shlex
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

EXAMPLES = """\
examples:
  autocheck check "x**2*exp(x)"
  autocheck check "x*x*torch.exp(x)" --dtype float32 --device cuda --examples 500
  autocheck check "atan2(y, x)" --domain "x=0.1:10"
  autocheck check mypkg.ops:softplus --reference "log(1 + exp(x))"
  autocheck check "sin(x)" --json
  autocheck diff "x**2*exp(x)" --order 2 --latex
  autocheck plot "x**2*exp(x)" --range -5 3 -o grad.png

exit status: 0 all gradients match, 1 a mismatch was found, 2 usage or input error.
Run "autocheck COMMAND --help" for each command's options.
"""

_CHECK_EXAMPLES = """\
examples:
  autocheck check "x**2*exp(x)"                      # 256 seeded points, a few shown
  autocheck check "x*x*torch.exp(x)" --dtype float32 --examples 500
  autocheck check "atan2(y, x)" --domain "x=0.1:10" --domain "y=-1:1"
  autocheck check mypkg.ops:softplus --reference "log(1 + exp(x))"
  autocheck check mypkg.ops:softplus --reference "log(1 + exp(x))" --at x=1.5
  autocheck check "log(x)" --json

Without --examples the check is a quick spot check of --points seeded points (special
values, every magnitude, moderate values) inside the domain. With --examples N it is
autocheck's full search: N Hypothesis examples, each with a batch of 4096 points, and a
failure shrunk to the simplest failing input. The same --seed gives the same check.

A formula is parsed, never run: only numbers, variables, operators, known functions
and `a if cond else b` are accepted. module:function imports that module, which runs
its code, as `python -c "import mypkg.ops"` would.
"""

_DIFF_EXAMPLES = """\
examples:
  autocheck diff "x**2*exp(x)"            # x**2*exp(x) + 2*x*exp(x)
  autocheck diff "atan2(y, x)"            # one partial per variable
  autocheck diff "sin(x)" --order 2 --latex
  autocheck diff mypkg.ops:softplus       # traced through its torch code
"""

_PLOT_EXAMPLES = """\
examples:
  autocheck plot "x**2*exp(x)" --range -5 3 -o grad.png
  autocheck plot "softplus(x)" --range -30 30 --dtype float32 -o softplus.png
  autocheck plot mypkg.ops:softplus --reference "log(1 + exp(x))" -o softplus.png

Needs matplotlib: pip install 'autocheck[plot]'.
"""

_INSTALL_MATPLOTLIB = "autocheck plot needs matplotlib, which is not installed: pip install 'autocheck[plot]'"

#: Points of the spot check (without --examples).
DEFAULT_POINTS = 256
#: Highest --order that ``diff`` computes: SymPy's expressions grow quickly with the order.
MAX_DIFF_ORDER = 10
#: Simple values tried first for the table of sample points, in order of preference.
_NICE = (-2.0, -0.5, 0.5, 1.0, 2.0, 0.0, -1.0, 3.0, 0.25, 10.0, -10.0, 100.0)
#: For functions of several variables: coordinate j of sample point k is _NICE_ND[2k + j].
_NICE_ND = (0.5, 1.0, -1.0, 2.0, -0.5, 1.5, 3.0, -2.0, 0.25, 0.75, -3.0, 4.0)
_DIGITS = {"float64": 12, "float32": 8, "float16": 4, "bfloat16": 3}


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit status 2."""


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="autocheck",
        description="Prove PyTorch gradients right or wrong against exact symbolic derivatives.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="{check,diff,plot}")
    target_help = 'a formula such as "x**2*exp(x)" or "torch.atan2(y, x)", or module:function to import'

    check = sub.add_parser(
        "check", help="compare autograd with the exact derivative; exit 0 (match) or 1 (mismatch)",
        description="Compare autograd's gradient with the exact symbolic derivative.",
        epilog=_CHECK_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("function", help=target_help)
    check.add_argument("--reference", metavar="FORMULA",
                       help="the exact mathematics as a formula in f's parameter names (for module:function)")
    _dtype_device(check)
    check.add_argument("--order", type=int, default=1, choices=(1, 2),
                       help="1: gradients (default), 2: second derivatives")
    check.add_argument("--domain", action="append", default=[], metavar="NAME=LOW:HIGH",
                       help='interval for one variable, e.g. "x=0.1:10", "x=0:" (x >= 0); repeatable')
    check.add_argument("--points", type=int, default=DEFAULT_POINTS,
                       help=f"points of the spot check (default {DEFAULT_POINTS})")
    check.add_argument("--examples", type=int, default=None, metavar="N",
                       help="run the full Hypothesis search with N examples instead of the spot check")
    check.add_argument("--at", action="append", default=[], metavar="NAME=VALUE",
                       help='check at one point only, e.g. --at x=1.5 (repeat or use "x=1,y=2" for several variables)')
    check.add_argument("--seed", type=int, default=None,
                       help="seed for a reproducible check (default: random, printed)")
    check.add_argument("--json", action="store_true", help="print the report as JSON on stdout")

    diff = sub.add_parser(
        "diff", help="print the exact derivative",
        description="Print the exact derivative (SymPy). A formula is differentiated as written; "
                    "module:function is traced through its torch code first.",
        epilog=_DIFF_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    diff.add_argument("function", help=target_help)
    diff.add_argument("--order", type=int, default=1,
                      help=f"order of the derivative, 1 to {MAX_DIFF_ORDER} (default 1)")
    diff.add_argument("--latex", action="store_true", help="print LaTeX")

    plot = sub.add_parser(
        "plot", help="plot f, the exact f', autograd's f' and the error in ULPs (needs matplotlib)",
        description="Plot f, the exact f' with autograd's f', and autograd's error in ULPs, on a grid.",
        epilog=_PLOT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot.add_argument("function", help='a formula of one variable such as "x**2*exp(x)", or module:function')
    plot.add_argument("--reference", metavar="FORMULA", help="the exact mathematics as a formula (for module:function)")
    plot.add_argument("--range", nargs=2, type=float, default=(-5.0, 5.0), metavar=("LOW", "HIGH"),
                      help="interval of x (default -5 5)")
    plot.add_argument("--points", type=int, default=2001, help="number of grid points (default 2001)")
    plot.add_argument("-o", "--output", default="autocheck.png", help="image file to write (default autocheck.png)")
    _dtype_device(plot)
    return parser, {"check": check, "diff": diff, "plot": plot}


def _protect_formulas(argv: list[str], commands: dict[str, argparse.ArgumentParser]) -> list[str]:
    """Let a formula start with a minus sign: ``autocheck check "-x*exp(x)"``.

    argparse reads any word that starts with "-" as an option. Words after the command that
    are not one of its options get a leading space, which argparse takes for a value and the
    formula parser, float() and int() all ignore. Words after "--" are left alone.
    """
    position = next((k for k, word in enumerate(argv) if word in commands), None)
    if position is None:
        return argv
    options = {s for action in commands[argv[position]]._actions for s in action.option_strings}
    out = argv[: position + 1]
    for k, word in enumerate(argv[position + 1 :], start=position + 1):
        if word == "--":
            return out + argv[k:]
        if word.startswith("-") and len(word) > 1 and not _is_option(word, options):
            word = " " + word
        out.append(word)
    return out


def _is_option(word: str, options: set[str]) -> bool:
    if word.startswith("--"):
        head = word.split("=", 1)[0]
        return any(option.startswith(head) for option in options if option.startswith("--"))
    return word[:2] in options


def _dtype_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32", "float16", "bfloat16"),
                        help="dtype autograd runs in (default float64)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 match, 1 mismatch, 2 usage or input error)."""
    parser, commands = _parser()
    argv = _protect_formulas(list(sys.argv[1:] if argv is None else argv), commands)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.version:
        from . import __version__

        print(f"autocheck {__version__}")
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.function = args.function.strip()
    command = {"check": _check, "diff": _diff, "plot": _plot}[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        print(f"autocheck {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError, TimeoutError) as error:
        # ValueError and TypeError cover the library's input errors (ExpressionError,
        # TraceError, DomainError, TranslationError, NothingChecked), TimeoutError its budgets
        # (DeadlineExceeded): their messages say what to change.
        print(f"autocheck {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - most likely raised inside the user's function
        import traceback

        traceback.print_exc()
        print(f"autocheck {args.command}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------
# Targets: a formula or module:function, and the exact side
# --------------------------------------------------------------------------------------


@dataclass
class _Target:
    """What a command works on: the torch function and the mathematics it is held to."""

    text: str  # as given on the command line
    f: Callable[..., Any]
    names: tuple[str, ...]
    forward: Any  # SymPy: the reference if given, else f as traced
    reference: Any = None  # SymPy expression from --reference, or None
    reference_text: str | None = None

    @property
    def symbols(self) -> list[Any]:
        import sympy

        return [sympy.Symbol(n, real=True) for n in self.names]


def _is_import(text: str) -> bool:
    """``pkg.module:function`` (a formula never contains a colon)."""
    module, colon, name = text.partition(":")
    return bool(colon) and all(p.isidentifier() for p in module.split(".") + name.split("."))


def _parse(text: str, what: str) -> Any:
    from ._parse import ExpressionError, parse_expression

    try:
        return parse_expression(text)
    except ExpressionError as error:
        raise UsageError(f"{what}: {error}") from None


def _function(text: str) -> Callable[..., Any]:
    """The torch function named by ``text``: imported, or built from the parsed formula."""
    if _is_import(text):
        return _import_function(text)
    parsed = _parse(text, "cannot read the formula")
    if not parsed.symbols:
        raise UsageError(f"the formula {text!r} has no variables; write a function of x such as \"x**2*exp(x)\"")
    return parsed.as_torch_function()


def _import_function(text: str) -> Callable[..., Any]:
    import importlib

    module_name, _, attribute = text.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules in the current directory
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(
            f"cannot import module {module_name!r} ({error}); run autocheck from the directory that holds it, "
            "or install its package"
        ) from None
    except Exception as error:  # noqa: BLE001 - the module's own code failed
        raise UsageError(f"importing module {module_name!r} failed: {type(error).__name__}: {error}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise UsageError(f"{text} is a {type(target).__name__}, not a function")
    return target


def _target(text: str, reference_text: str | None) -> _Target:
    from ._trace import parameter_names, trace

    f = _function(text)
    if reference_text is None:
        traced = trace(f)
        if traced.output.ndim:
            raise UsageError(
                f"{text} returns a tensor of shape {tuple(traced.output.shape)} for scalar inputs; the command "
                "checks elementwise functions (use autocheck.check_grad(f, x) in Python for tensor functions)"
            )
        return _Target(text, f, tuple(traced.names), traced.output.item())
    reference = _parse(reference_text, "cannot read --reference").expr
    used = sorted(s.name for s in reference.free_symbols)
    names = parameter_names(f) or tuple(used)
    unknown = [n for n in used if n not in names]
    if unknown:
        raise UsageError(
            f"--reference uses {unknown[0]!r}, which is not a parameter of {text} (parameters: {', '.join(names)}); "
            "write the reference in the function's parameter names"
        )
    return _Target(text, f, tuple(names), reference, reference, reference_text)


def _derivatives(target: _Target, order: int) -> tuple[list[str], list[Any]]:
    """Labels and exact SymPy expressions of every ``order``-th partial derivative.

    Order 1: one per variable. Order 2: the full Hessian, row by row (the table shows i <= j).
    """
    from ._symbolic import diff

    symbols = target.symbols
    keys = _keys(len(symbols), order)
    return [_label(target.names, k) for k in keys], [diff(target.forward, *[symbols[i] for i in k]) for k in keys]


def _keys(n: int, order: int) -> list[tuple[int, ...]]:
    """Which partials, as variable indices: each variable (order 1), each ordered pair (order 2)."""
    return [(i,) for i in range(n)] if order == 1 else [(i, j) for i in range(n) for j in range(n)]


def _label(names: Sequence[str], key: Sequence[int]) -> str:
    """``f'(x)``, ``f''(x)`` for one variable; ``df/dy``, ``d^2f/dxdy``, ``d^2f/dx^2`` for several."""
    if len(names) == 1:
        return f"f{chr(39) * len(key)}({names[0]})"
    counts: dict[int, int] = {}
    for i in key:
        counts[i] = counts.get(i, 0) + 1
    below = "".join(f"d{names[i]}" + (f"^{k}" if k > 1 else "") for i, k in sorted(counts.items()))
    return ("df" if len(key) == 1 else f"d^{len(key)}f") + f"/{below}"


# --------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------


def _parse_domain(items: Sequence[str], names: Sequence[str]) -> dict[str, tuple[float, float]] | None:
    """``--domain x=0.1:10`` (``x=0:`` and ``x=:0`` are half-lines; ``0.1:10`` sets every variable)."""
    if not items:
        return None
    domain: dict[str, tuple[float, float]] = {}
    for item in items:
        name, sep, interval = item.rpartition("=")
        low, colon, high = interval.partition(":")
        try:
            if not colon:
                raise ValueError
            bounds = (_bound(low, -math.inf), _bound(high, math.inf))
        except ValueError:
            raise UsageError(f'--domain expects NAME=LOW:HIGH such as "x=0.1:10", got {item!r}') from None
        if not sep:
            domain.update(dict.fromkeys(names, bounds))
            continue
        name = name.strip()
        if name not in names:
            raise UsageError(
                f"--domain {item!r} names {name!r}, which is not a variable (variables: {', '.join(names)})"
            )
        domain[name] = bounds
    for name, (low, high) in domain.items():
        if not low <= high:
            raise UsageError(f"--domain for {name} is empty: {low:g} > {high:g}; give LOW <= HIGH")
    return domain


def _bound(text: str, default: float) -> float:
    """One end of a --domain interval: a finite number, or empty for no bound on that side."""
    text = text.strip()
    if not text:
        return default
    value = float(text)
    if not math.isfinite(value):
        raise UsageError(
            f"--domain bound {text!r} is not a finite float64 number; leave that side empty for no bound "
            '(e.g. "x=0:" for x >= 0)'
        )
    return value


def _parse_at(items: Sequence[str], names: Sequence[str]) -> tuple[float, ...] | None:
    """``--at x=1.5 --at y=2`` or ``--at x=1.5,y=2``: one value per variable."""
    if not items:
        return None
    values: dict[str, float] = {}
    for item in items:
        for part in item.split(","):
            name, sep, value = part.partition("=")
            name = name.strip()
            try:
                if not sep:
                    raise ValueError
                values[name] = float(value)
            except ValueError:
                raise UsageError(f'--at expects NAME=VALUE such as "x=1.5", got {part!r}') from None
            if name not in names:
                raise UsageError(
                    f"--at {part!r} names {name!r}, which is not a variable (variables: {', '.join(names)})"
                )
    missing = [n for n in names if n not in values]
    if missing:
        raise UsageError(
            f"--at gives no value for {', '.join(missing)}; give one per variable, e.g. --at {missing[0]}=1.0"
        )
    return tuple(values[n] for n in names)


def _rounded(values: Sequence[float], dtype: Any) -> list[float]:
    """The values as the checked dtype stores them."""
    import torch

    return torch.tensor(list(values), dtype=torch.float64).to(dtype).to(torch.float64).tolist()


def _finite_forward(f: Callable[..., Any], points: list[tuple[float, ...]], dtype: Any, device: Any) -> list[bool]:
    """Whether f has a finite value at each point (evaluated one point at a time, in ``dtype``)."""
    import torch

    keep = []
    with torch.no_grad():
        for point in points:
            value = f(*[torch.tensor(v, dtype=torch.float64).to(dtype=dtype, device=device) for v in point])
            keep.append(isinstance(value, torch.Tensor) and value.numel() == 1 and bool(torch.isfinite(value).all()))
    return keep


def _table_points(target: _Target, domain: Any, dtype: Any, device: Any) -> list[tuple[float, ...]]:
    """A few simple points inside the domain where f is finite: five for one variable, three for more."""
    n = len(target.names)
    wanted = 5 if n == 1 else 3
    if n == 1:
        candidates = [(v,) for v in _NICE] + [(v,) for v in _inside_values(domain.intervals[0])]
    else:
        candidates = [
            tuple(_into(_NICE_ND[(2 * k + j) % len(_NICE_ND)], domain.intervals[j], k) for j in range(n))
            for k in range(8)
        ]
    chosen: list[tuple[float, ...]] = []
    for point in candidates:
        point = tuple(_rounded(point, dtype))
        if point in chosen or not all(lo <= v <= hi for v, (lo, hi) in zip(point, domain.intervals)):
            continue
        chosen.append(point)
    finite = _finite_forward(target.f, chosen, dtype, device)
    chosen = [p for p, ok in zip(chosen, finite) if ok][:wanted]
    return sorted(chosen) if n == 1 else chosen


def _inside_values(interval: tuple[float, float]) -> list[float]:
    low, high = interval
    if math.isfinite(low) and math.isfinite(high):
        return [low + (high - low) * k / 6 for k in range(1, 6)] + [low, high]
    if math.isfinite(low):
        return [low + d for d in (0.5, 1.0, 2.0, 5.0, 10.0)] + [low]
    if math.isfinite(high):
        return [high - d for d in (0.5, 1.0, 2.0, 5.0, 10.0)] + [high]
    return []


def _into(value: float, interval: tuple[float, float], k: int) -> float:
    """``value`` if it lies in ``interval``, else a value inside it that depends on ``k``."""
    low, high = interval
    if low <= value <= high:
        return value
    if math.isfinite(low) and math.isfinite(high):
        return low + (high - low) * (k + 1) / 9
    return (low if math.isfinite(low) else high) + math.copysign(abs(value), 1.0 if math.isfinite(low) else -1.0)


def _spot_points(target: _Target, domain: Any, count: int, dtype: Any, device: Any, seed: int) -> list[Any]:
    """``count`` seeded points inside the domain where f is not nan: special values, every
    magnitude, moderate values (see autocheck._search.draw). One float64 column per variable."""
    import torch

    from ._search import draw

    generator = torch.Generator().manual_seed(seed)
    kept: list[list[Any]] = [[] for _ in target.names]
    have = 0
    for _ in range(4):
        columns = draw(2 * count, len(target.names), dtype, domain, generator)
        with torch.no_grad():
            value = target.f(*[c.to(dtype=dtype, device=device) for c in columns])
        real = ~torch.isnan(value.detach().to(torch.float64).cpu().expand(columns[0].shape))
        for column, values in zip(kept, columns):
            column.append(values[real])
        have += int(real.sum())
        if have >= count:
            break
    if have == 0:
        raise UsageError(
            f"{target.text} is nan at every point drawn from {domain.describe()}; give --domain with an interval "
            "where it is defined"
        )
    return [torch.cat(c)[:count] for c in kept]


# --------------------------------------------------------------------------------------
# Values for the tables: f' by autograd and exactly, per point
# --------------------------------------------------------------------------------------


@dataclass
class _Row:
    inputs: tuple[float, ...]
    label: str
    autograd: float
    exact: float
    ulp_error: float

    def as_json(self, names: Sequence[str]) -> dict[str, Any]:
        return {"inputs": dict(zip(names, self.inputs)), "derivative": self.label, "autograd": self.autograd,
                "exact": self.exact, "ulp_error": self.ulp_error}


def _rows(target: _Target, points: list[tuple[float, ...]], order: int, dtype: Any, device: Any) -> list[_Row]:
    """Autograd's and the exact derivatives at each point (upstream gradient 1), and the error in ULPs.

    For several variables and order 2, only the Hessian entries with i <= j are shown.
    """
    import torch

    from ._compare import ulp
    from ._oracle import evaluate

    if not points:
        return []
    labels, exprs = _derivatives(target, order)
    n = len(target.names)
    keys = _keys(n, order)
    columns = [torch.tensor([p[k] for p in points], dtype=torch.float64) for k in range(n)]
    exact = torch.stack([e.expand(len(points)) for e in evaluate(exprs, target.symbols, columns)], dim=1)
    autograd = torch.stack([_autograd_at(target.f, p, order, dtype, device) for p in points])
    both_inf = (autograd == exact) & torch.isinf(exact)
    error = ((autograd - exact).abs() / ulp(exact, dtype)).masked_fill(both_inf, 0.0)
    rows = []
    for p, point in enumerate(points):
        for e, key in enumerate(keys):
            if list(key) == sorted(key):
                rows.append(_Row(point, labels[e], float(autograd[p, e]), float(exact[p, e]), float(error[p, e])))
    return rows


def _autograd_at(f: Callable[..., Any], point: tuple[float, ...], order: int, dtype: Any, device: Any) -> Any:
    """All first (or second) derivatives of f at one point, by autograd, as float64 on the CPU."""
    import torch

    leaves = [torch.tensor(v, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_(True) for v in point]
    out = f(*leaves)
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        raise UsageError("the function must return one value per point (an elementwise function)")
    firsts = torch.autograd.grad(out.reshape(()), leaves, allow_unused=True, create_graph=order == 2)
    if order == 1:
        values = [g if g is not None else torch.zeros_like(leaf) for g, leaf in zip(firsts, leaves)]
    else:
        values = []
        for g in firsts:
            if g is None or not g.requires_grad:
                values += [torch.zeros_like(leaf) for leaf in leaves]
                continue
            seconds = torch.autograd.grad(g, leaves, allow_unused=True, retain_graph=True)
            values += [s if s is not None else torch.zeros_like(leaf) for s, leaf in zip(seconds, leaves)]
    return torch.stack([v.detach().reshape(()).to(torch.float64).cpu() for v in values])


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def _colour(text: str, code: str, stream: Any = None) -> str:
    """ANSI colour on a terminal only, never with NO_COLOR set (https://no-color.org)."""
    stream = stream if stream is not None else sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return text
    if not getattr(stream, "isatty", lambda: False)():
        return text
    return f"\033[{code}m{text}\033[0m"


class _Progress:
    """A spinner on stderr, shown only on a terminal and only after the first second."""

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
            sys.stderr.write(f"\r{frames[k % 4]} {self.label} ({time.monotonic() - start:.0f} s)")
            sys.stderr.flush()
            self.shown = True
            k += 1

    def __enter__(self) -> "_Progress":
        if getattr(sys.stderr, "isatty", lambda: False)():
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _number(value: float, digits: int) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == int(value) and abs(value) < 1e15:
        return f"{value:.1f}"
    return f"{value:.{digits}g}"


def _ulps(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if value == 0:
        return "0"
    if value < 10:
        return f"{value:.2g}"
    return f"{value:.2g}" if value >= 1e6 else f"{value:.0f}"


def _input(value: float, dtype: Any) -> str:
    from ._report import shortest

    if not math.isfinite(value):
        return _number(value, 17)
    return repr(shortest(value, dtype))


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [indent + "  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def _rows_table(rows: list[_Row], names: Sequence[str], dtype: Any, dtype_name: str) -> list[str]:
    digits = _DIGITS[dtype_name]
    several = len({r.label for r in rows}) > 1
    header = [*names, *(["derivative"] if several else []), "autograd", "exact", "error (ULP)"]
    body = []
    previous = None
    for r in rows:
        shown = [_input(v, dtype) for v in r.inputs] if r.inputs != previous else [""] * len(names)
        previous = r.inputs
        body.append([*shown, *([r.label] if several else []), _number(r.autograd, digits),
                     _number(r.exact, digits), _ulps(r.ulp_error)])
    return _table(header, body)


def _short_text(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 5] + " ..."


# --------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------


@dataclass
class _Run:
    """One check as the command ran it, for the text and JSON reports."""

    target: _Target
    mode: str  # "spot", "search" or "at"
    dtype: Any
    device: Any
    order: int
    seed: int
    domain: Any
    report: Any
    drawn: int
    labels: list[str]
    exprs: list[Any]
    samples: list[_Row]
    counterexample: tuple[float, ...] | None = None
    failing: list[_Row] = field(default_factory=list)
    reproduce: str = ""


def _dtype_and_device(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from ._arguments import resolve_device, resolve_dtype

    try:
        kind = torch.device(args.device).type
    except (RuntimeError, TypeError):
        raise UsageError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    return resolve_dtype(args.dtype), resolve_device(args.device)


def _check(args: argparse.Namespace) -> int:
    dtype, device = _dtype_and_device(args)
    if args.examples is not None and args.examples < 1:
        raise UsageError(f"--examples must be a positive integer, got {args.examples}")
    if args.points < 1:
        raise UsageError(f"--points must be a positive integer, got {args.points}")
    if args.at and (args.examples is not None or args.domain):
        raise UsageError("--at checks one point; it cannot be combined with --examples or --domain")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    with _Progress(f"checking {args.function}"):
        run = _run_check(args, dtype, device, seed)
    if args.json:
        import json

        print(json.dumps(_as_json(run), indent=2))
    else:
        print("\n".join(_text(run)))
    return 0 if run.report.ok else 1


def _run_check(args: argparse.Namespace, dtype: Any, device: Any, seed: int) -> _Run:
    import torch

    from ._autograd import is_elementwise
    from ._api import check_grad
    from ._errors import NothingChecked
    from ._search import infer_domain, parse_domain

    target = _target(args.function, args.reference)
    names = target.names
    at = _parse_at(args.at, names)
    domain = infer_domain(target.forward, target.symbols, parse_domain(_parse_domain(args.domain, names), names))
    labels, exprs = _derivatives(target, args.order)
    options = dict(reference=target.reference, order=args.order, dtype=dtype, device=device, seed=seed)
    notes: list[str] = []
    columns = None  # the spot check's points
    if at is not None:
        mode, table = "at", [tuple(_rounded(at, dtype))]
        report = check_grad(target.f, *[torch.tensor(v, dtype=torch.float64) for v in table[0]], **options)
        drawn = 1
    elif args.examples is None and is_elementwise(target.f, len(names), dtype):
        mode, table = "spot", _table_points(target, domain, dtype, device)
        columns = _spot_points(target, domain, args.points, dtype, device, seed)
        if table:  # the points shown are checked too, first
            columns = [torch.cat([torch.tensor([p[k] for p in table], dtype=torch.float64), c])[: args.points]
                       for k, c in enumerate(columns)]
        drawn = int(columns[0].numel())
        try:
            report = check_grad(target.f, *columns, **options)
        except NothingChecked as error:  # the spot check's inputs were drawn, not given
            where = f"at the {drawn} points drawn from {domain.describe()}"
            raise NothingChecked(str(error).replace("at the given inputs", where)) from None
    else:  # the library's search (also for functions that are not elementwise over a batch)
        if args.examples is None:
            notes.append(f"Note: {target.text} does not act elementwise on a batch of inputs, so autocheck's "
                         "search checked points one at a time.")
        mode, table = "search", _table_points(target, domain, dtype, device)
        report = check_grad(target.f, **options, examples=args.examples, domain=dict(zip(names, domain.intervals)))
        drawn = 0
    report.function = target.text
    report.notes[:0] = notes
    run = _Run(target, mode, dtype, device, args.order, seed, domain, report, drawn, labels, exprs,
               _rows(target, table, args.order, dtype, device))
    if not report.ok:
        run.counterexample = _counterexample(run, columns)
        worst = []
        for point in report.worst:
            point_inputs = tuple(point.inputs[: len(names)])
            if point_inputs not in worst and point_inputs != run.counterexample:
                worst.append(point_inputs)
        failing = [run.counterexample] + worst[:3] if run.counterexample is not None else worst[:4]
        run.failing = _rows(target, failing, args.order, dtype, device)
        run.reproduce = _reproduce(args, names, run.counterexample, seed)
    return run


def _counterexample(run: _Run, columns: list[Any] | None) -> tuple[float, ...] | None:
    """The simplest failing point: the library's (shrunk by the search), or, for the spot check,
    the simplest of the eight simplest points that fails when checked alone."""
    import torch

    from ._api import check_grad
    from ._errors import NothingChecked
    from ._search import simplicity

    found = run.report.counterexample
    if columns is None or found is None:
        return tuple(found) if found is not None else None
    # Keyed by sign too: 0.0 == -0.0, and both are as simple as can be; 0.0 is shown first.
    distinct = {}
    for k in range(columns[0].numel()):
        point = tuple(float(c[k]) for c in columns)
        distinct[tuple((v, math.copysign(1.0, v)) for v in point)] = point
    points = sorted(distinct.values(), key=lambda p: (simplicity(p), [math.copysign(1.0, v) < 0 for v in p]))
    for point in points[:8]:
        if simplicity(point) >= simplicity(tuple(found)):
            break
        try:
            alone = check_grad(
                run.target.f, *[torch.tensor(v, dtype=torch.float64) for v in point], reference=run.target.reference,
                order=run.order, dtype=run.dtype, device=run.device, seed=run.seed,
            )
        except NothingChecked:  # a pole or a point outside the domain: nothing to show there
            continue
        if not alone.ok:
            return point
    return tuple(found)


def _reproduce(args: argparse.Namespace, names: Sequence[str], point: tuple[float, ...] | None, seed: int) -> str:
    """The command line that checks the failing point again, with the same upstream gradients."""
    from ._arguments import resolve_dtype

    words = ["autocheck", "check", args.function]
    if args.reference:
        words += ["--reference", args.reference]
    if args.dtype != "float64":
        words += ["--dtype", args.dtype]
    if args.device != "cpu":
        words += ["--device", args.device]
    if args.order != 1:
        words += ["--order", str(args.order)]
    if point is not None:
        dtype = resolve_dtype(args.dtype)
        words += ["--at", ",".join(f"{n}={_input(v, dtype)}" for n, v in zip(names, point))]
    words += ["--seed", str(seed)]
    return " ".join(shlex.quote(w) for w in words)


def _text(run: _Run) -> list[str]:
    report = run.report
    target = run.target
    names = target.names
    dtype_name = report.dtype
    variables = ", ".join(names)
    lines = [f"f({variables}) = {target.text}"]
    if target.reference_text is not None:
        lines.append(f"reference: f({variables}) = {target.reference_text}")
    shown = [(label, expr) for label, expr, key in zip(run.labels, run.exprs, _keys(len(names), run.order))
             if list(key) == sorted(key)]
    width = max(len(label) for label, _ in shown)
    lines += [f"{label.ljust(width)} = {_short_text(str(expr))}" for label, expr in shown]
    lines.append("")
    if run.samples:
        lines += _rows_table(run.samples, names, run.dtype, dtype_name)
        lines.append("")
    unit = "points" if len(names) == 1 else f"gradient elements ({len(names)} per point)"
    skipped = sum(report.skipped.values())
    where = f"({dtype_name}, {report.device}; {run.domain.describe()})"
    if run.mode == "spot":
        counts = f"Checked {report.checked} of {report.checked + skipped} {unit} drawn with seed {run.seed} {where}"
    elif run.mode == "search":
        counts = f"Checked {report.checked} {unit} in a Hypothesis search with seed {run.seed} {where}"
    else:
        counts = f"Checked {report.checked} of {report.checked + skipped} gradient elements at the given point"
        counts += f" {where}"
    if skipped:
        counts += "; skipped " + ", ".join(f"{k} ({why})" for why, k in report.skipped.items() if k)
    lines.append(counts + ".")
    lines.append(f"Tolerance: rtol={report.rtol:.2g} of the size of the derivative's terms, atol={report.atol:.2g}.")
    lines += [note for note in report.notes if not note.startswith("Domain:")]
    if report.ok:
        verdict = _colour("MATCH", "32;1")
        lines.append(f"{verdict}: autograd agrees with the exact derivative at every checked point.")
        return lines
    share = 100.0 * report.failed / max(report.checked, 1)
    lines.append(
        f"{_colour('MISMATCH', '31;1')}: autograd differs from the exact derivative at {report.failed} of "
        f"{report.checked} {unit.split(' (')[0]} ({share:.1f}%)."
    )
    if run.counterexample is not None:
        at = ", ".join(f"{n} = {_input(v, run.dtype)}" for n, v in zip(names, run.counterexample))
        lines.append(_colour(f"Counterexample: {at}", "1"))
    if run.failing and run.mode != "at":
        lines.append("Failing points (counterexample first):")
        lines += _rows_table(run.failing, names, run.dtype, dtype_name)
    lines.append(f"Reproduce: {run.reproduce}")
    return lines


def _as_json(run: _Run) -> dict[str, Any]:
    report = run.report
    names = run.target.names
    data = asdict(report)
    data.update(
        command="check",
        target=run.target.text,
        reference=run.target.reference_text,
        verdict="match" if report.ok else "mismatch",
        exit_status=0 if report.ok else 1,
        mode=run.mode,
        points=run.drawn,
        seed=run.seed,
        domain={n: list(interval) for n, interval in zip(names, run.domain.intervals)},
        derivatives={label: str(expr) for label, expr in zip(run.labels, run.exprs)},
        samples=[r.as_json(names) for r in run.samples],
        counterexample=dict(zip(names, run.counterexample)) if run.counterexample is not None else None,
        failing=[r.as_json(names) for r in run.failing],
        reproduce=run.reproduce,
        reproduce_python=report.reproduce if run.mode != "spot" else "",
    )
    data["worst"] = [dict(asdict(p), exact=p.exact, inputs=dict(zip(names, p.inputs))) for p in report.worst]
    return _finite(data)


def _finite(value: Any) -> Any:
    """JSON has no inf or nan: write them as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# --------------------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------------------


def _diff(args: argparse.Namespace) -> int:
    from ._budget import interrupt_after
    from ._symbolic import SYMBOLIC_BUDGET

    if not 1 <= args.order <= MAX_DIFF_ORDER:
        raise UsageError(f"--order must be between 1 and {MAX_DIFF_ORDER}, got {args.order}")
    if _is_import(args.function):
        target = _target(args.function, None)
        expr, symbols = target.forward, target.symbols
    else:
        parsed = _parse(args.function, "cannot read the formula")
        if not parsed.symbols:
            raise UsageError(f"the formula {args.function!r} has no variables to differentiate by")
        expr, symbols = parsed.expr, list(parsed.symbols)
    names = [s.name for s in symbols]
    what = f"differentiating {args.function} to order {args.order}"
    with interrupt_after(SYMBOLIC_BUDGET, what, "Lower --order, or simplify the formula."):
        _print_derivatives(args, expr, symbols, names)
    return 0


def _print_derivatives(args: argparse.Namespace, expr: Any, symbols: list[Any], names: list[str]) -> None:
    import itertools

    import sympy

    from ._symbolic import diff

    if len(symbols) == 1:
        result = diff(expr, *[symbols[0]] * args.order)
        print(sympy.latex(result) if args.latex else str(result))
        return
    for key in itertools.combinations_with_replacement(range(len(symbols)), args.order):
        result = diff(expr, *[symbols[i] for i in key])
        if args.latex:
            counts = {i: key.count(i) for i in sorted(set(key))}
            top = r"\partial" + (f"^{{{args.order}}}" if args.order > 1 else "") + " f"
            below = " ".join(rf"\partial {sympy.latex(symbols[i])}" + (f"^{{{k}}}" if k > 1 else "")
                             for i, k in counts.items())
            print(rf"\frac{{{top}}}{{{below}}} = {sympy.latex(result)}")
        else:
            print(f"{_label(names, key)} = {result}")


# --------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------


def _plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(_INSTALL_MATPLOTLIB, file=sys.stderr)
        return 2
    import torch

    from ._autograd import is_elementwise
    from ._compare import ulp
    from ._oracle import evaluate

    low, high = args.range
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise UsageError(f"--range needs finite LOW < HIGH, got {low:g} {high:g}")
    if not 2 <= args.points <= 1_000_000:
        raise UsageError(f"--points must be between 2 and 1000000, got {args.points}")
    dtype, device = _dtype_and_device(args)
    target = _target(args.function, args.reference)
    if len(target.names) != 1:
        raise UsageError(f"plot draws functions of one variable; {args.function} has {len(target.names)} "
                         f"({', '.join(target.names)})")
    name = target.names[0]
    x = torch.linspace(low, high, args.points, dtype=torch.float64).to(dtype).to(torch.float64)
    leaf = x.to(dtype=dtype, device=device).clone().requires_grad_(True)
    if is_elementwise(target.f, 1, dtype):
        y = target.f(leaf)
        (grad,) = torch.autograd.grad(y, leaf, torch.ones_like(y), allow_unused=True)
        grad = torch.zeros_like(leaf) if grad is None else grad
        values, autograd = y.detach(), grad.detach()
    else:  # one point at a time
        values = torch.stack([target.f(v.detach()).detach().reshape(()) for v in leaf])
        autograd = torch.stack([_autograd_at(target.f, (float(v),), 1, dtype, device)[0] for v in x])
    values = values.to(torch.float64).cpu()
    autograd = autograd.to(torch.float64).cpu()
    (exact,) = evaluate(_derivatives(target, 1)[1], target.symbols, [x])
    exact = exact.expand(x.shape)
    same = autograd == exact  # equal infinities included
    errors = ((autograd - exact).abs() / ulp(exact, dtype)).masked_fill(same, 0.0)
    xs = x.numpy()
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    top.plot(xs, values.numpy(), color="black", label=f"f({name}) = {_short_text(target.text, 60)}")
    top.set_ylabel(f"f({name})")
    top.legend(loc="best")
    middle.plot(xs, exact.numpy(), color="tab:blue", linewidth=3, alpha=0.6, label=f"exact f'({name})")
    middle.plot(xs, autograd.numpy(), color="tab:orange", linestyle="--", label=f"autograd f'({name})")
    middle.set_ylabel(f"f'({name})")
    middle.legend(loc="best")
    bottom.plot(xs, errors.numpy(), color="tab:red", linewidth=1, label=f"|autograd - exact| in ULPs of {args.dtype}")
    bottom.set_yscale("symlog", linthresh=1.0)
    finite = errors[torch.isfinite(errors)]
    # Whole decades from 0 up, at most about eight labelled, even for a narrow band of errors.
    decades = max(1, math.ceil(math.log10(max(float(finite.max()) if finite.numel() else 1.0, 1.0) * 2)))
    step = math.ceil(decades / 8)
    bottom.set_yticks([0.0] + [10.0**k for k in range(0, decades + 1, step)])
    bottom.set_ylim(0.0, 10.0**decades)
    if dtype is torch.float64:
        bottom.set_title("float64: errors of a few ULP are within the exact values' own accuracy",
                         fontsize=8, color="0.4", loc="left")
    bottom.set_xlabel(name)
    bottom.set_ylabel("error (ULP)")
    bottom.legend(loc="best")
    figure.suptitle(f"autocheck: gradient of {_short_text(target.text, 60)} ({args.dtype}, {device})")
    figure.tight_layout()
    try:
        figure.savefig(args.output, dpi=100)
    except OSError as error:
        raise UsageError(f"cannot write {args.output}: {error}") from None
    finally:
        plt.close(figure)
    if finite.numel():
        k = int(torch.argmax(torch.where(torch.isfinite(errors), errors, -1.0)))
        worst = f"largest error {_ulps(float(finite.max()))} ULP at {name} = {_input(float(x[k]), dtype)}"
    else:
        worst = "no finite errors"
    print(f"wrote {args.output}: f, exact and autograd f', error in ULPs at {args.points} points; {worst}")
    return 0
