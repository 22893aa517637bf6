"""The ``autocheck`` command: gradient checks from the terminal.

``check`` runs the library's check and prints its report, ``diff`` prints the exact
derivative, ``plot`` (:mod:`autocheck._plot`) draws f, both derivatives and the error in
ULPs against the tolerance.

Formulas are read only by :func:`autocheck._parse.parse_expression` (a whitelist over
Python's syntax tree; nothing is evaluated). ``module:function`` imports that module, from
the current directory or the installed packages, and so runs its code, as ``python -m``
would.

Exit status: 0 all gradients match, 1 a mismatch was found, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import shlex
import sys
import threading
import time
from dataclasses import dataclass
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
  autocheck check "x**2*exp(x)"
  autocheck check "x*x*torch.exp(x)" --dtype float32 --examples 100
  autocheck check "atan2(y, x)" --domain "x=0.1:10" --domain "y=-1:1"
  autocheck check mypkg.ops:softplus --reference "log(1 + exp(x))"
  autocheck check mypkg.ops:softplus --reference "log(1 + exp(x))" --at x=1.5
  autocheck check "log(x)" --json

The check is the library's: autocheck check F --seed S draws the same points as
autocheck.assert_grad_matches(F, seed=S) in Python (the special values, then batches of
4096 points, 25 batches by default, within 5 seconds), shrinks a failure to the simplest
failing input and prints the same report. --json prints Report.to_json() (schema
"autocheck.report", version 1); what the function prints goes to stderr.

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

#: Highest --order that ``diff`` computes: SymPy's expressions grow quickly with the order.
MAX_DIFF_ORDER = 10


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
    check.add_argument("--order", type=int, default=1, choices=range(1, 7), metavar="N",
                       help="1: gradients (default), 2: second derivatives, ... up to 6")
    check.add_argument("--domain", action="append", default=[], metavar="NAME=LOW:HIGH",
                       help='interval for one variable, e.g. "x=0.1:10", "x=0:" (x >= 0); repeatable')
    check.add_argument("--examples", type=int, default=None, metavar="N",
                       help="batches of points to draw (default 25, as in Python: the special values, then "
                            "batches of 4096 points)")
    check.add_argument("--at", action="append", default=[], metavar="NAME=VALUE",
                       help='check at one point only, e.g. --at x=1.5 (repeat or use "x=1,y=2" for several variables)')
    check.add_argument("--seed", type=int, default=None,
                       help="seed for a reproducible check (default: random, printed)")
    check.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    check.add_argument("--modes", default="rev", metavar="rev,fwd,vmap",
                       help="reverse mode (x.grad), forward mode (the JVP), batched gradients (vmap), comma-separated "
                            "(default rev)")

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


def run() -> None:
    """The console script and ``python -m autocheck``: :func:`main`, then the process exits
    with its status.

    Python's last garbage collections at exit walk every object torch and SymPy made
    (0.3-0.5 s of a spot check) for cyclic garbage, which an exiting process has no need to
    free: they are skipped (``gc.freeze``). Objects that still exist at exit get no
    ``__del__`` call where they sit in a reference cycle, which Python never promised anyway;
    ``atexit`` functions and ``weakref.finalize`` callbacks run as always.
    """
    status = main()
    gc.freeze()
    sys.exit(status)


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
    from ._loading import load

    try:
        for module in ("._parse", "._symbolic" if args.command == "diff" else "._api"):
            load(module)  # with the cyclic collector paused: a quarter of a second sooner
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


def _input(value: float, dtype: Any) -> str:
    from ._report import shortest

    if not math.isfinite(value):
        return _number(value, 17)
    return repr(shortest(value, dtype))


def _short_text(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 5] + " ..."


# --------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------


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
    """The library's check (the same defaults, the same points for a seed), printed."""
    dtype, device = _dtype_and_device(args)
    if args.examples is not None and args.examples < 1:
        raise UsageError(f"--examples must be a positive integer, got {args.examples}")
    if args.at and (args.examples is not None or args.domain):
        raise UsageError("--at checks one point; it cannot be combined with --examples or --domain")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    with _Progress(f"checking {args.function}"), _stdout_to_stderr():  # importing and tracing run user code too
        target = _target(args.function, args.reference)
        at = _parse_at(args.at, target.names)
        domain = _parse_domain(args.domain, target.names)
        report = _run_check(target, args, at, domain, dtype, device, seed)
    report.function = target.text
    if not report.ok:
        report.reproduce = _reproduce(args, target.names, report.counterexample, seed)
    if args.json:
        print(report.to_json())
        return 0 if report.ok else 1
    lines = [f"f({', '.join(target.names)}) = {target.text}"]
    if target.reference_text is not None:
        lines.append(f"reference: f({', '.join(target.names)}) = {target.reference_text}")
    lines.append(report.format())
    if report.ok:
        lines.append(f"{_colour('MATCH', '32;1')}: autograd agrees with the exact derivative at every checked point.")
    else:
        lines.append(f"{_colour('MISMATCH', '31;1')}: autograd differs from the exact derivative.")
    print("\n".join(lines))
    return 0 if report.ok else 1


def _run_check(target: _Target, args: argparse.Namespace, at: tuple[float, ...] | None, domain: Any,
               dtype: Any, device: Any, seed: int) -> Any:
    import torch

    from ._api import check_grad

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    options = dict(reference=target.reference, order=args.order, dtype=dtype, device=device, seed=seed, modes=modes)
    if at is not None:
        return check_grad(target.f, *[torch.tensor(v, dtype=torch.float64) for v in at], **options)
    return check_grad(target.f, examples=args.examples, domain=domain, **options)


class _stdout_to_stderr:
    """While a check runs, what the user's code prints goes to stderr (Python's print and
    writes to file descriptor 1 alike), so stdout holds only the report."""

    def __enter__(self) -> "_stdout_to_stderr":
        import contextlib

        sys.stdout.flush()
        self.saved = None
        try:
            if sys.stdout.fileno() == 1:
                self.saved = os.dup(1)
                os.dup2(2, 1)
        except (OSError, ValueError, AttributeError):  # no file descriptor behind sys.stdout (captured)
            self.saved = None
        self.redirect = contextlib.redirect_stdout(sys.stderr)
        self.redirect.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.redirect.__exit__(*exc)
        if self.saved is not None:
            sys.stdout.flush()
            os.dup2(self.saved, 1)
            os.close(self.saved)


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
    if args.modes != "rev":
        words += ["--modes", args.modes]
    if point is not None:
        dtype = resolve_dtype(args.dtype)
        words += ["--at", ",".join(f"{n}={_input(v, dtype)}" for n, v in zip(names, point))]
    elif args.at:
        words += ["--at", ",".join(args.at)]
    words += ["--seed", str(seed)]
    return " ".join(shlex.quote(w) for w in words)


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
    """Resolve the target and the range; the drawing is :func:`autocheck._plot.plot`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        print(_INSTALL_MATPLOTLIB, file=sys.stderr)
        return 2
    from ._plot import plot

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
    try:
        summary = plot(target.f, target.text, target.names[0], low, high, args.points, args.output,
                       reference=target.reference, dtype=dtype, device=device)
    except OSError as error:
        raise UsageError(f"cannot write {args.output}: {error}") from None
    print(f"wrote {args.output}: {summary}")
    return 0
