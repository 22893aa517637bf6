"""Formula text from the ``autocheck`` command line, parsed safely into SymPy and torch.

The text is read with :func:`ast.parse` and nothing else: the syntax tree is walked
against a whitelist and rebuilt as a SymPy expression and, from the same tree, as a
tree of torch closures. No ``eval``, ``exec``, ``compile``, ``sympify`` or ``getattr``
ever sees the user's text, so a formula cannot import, open, or reach an attribute.

What a formula may contain:

* numbers: ``int`` and ``float`` literals, kept exact as written (``0.1`` is 1/10);
  a literal, and every constant subexpression, must be a finite real float64 (``inf`` is
  allowed where SymPy also says oo). No complex, string, bytes, bool or None.
* variables: any identifier not starting with ``_`` and not in :data:`_RESERVED`
  (module names such as ``torch``, builtins such as ``eval``, ``I``, ``nan``). Each
  becomes ``sympy.Symbol(name, real=True)``; at most :data:`MAX_SYMBOLS` of them.
* constants (:data:`CONSTANTS`): ``pi``, ``e``/``E``, ``inf``/``oo`` and the torch
  and math spellings ``torch.pi``, ``math.pi``, ...
* operators: ``+ - * / **`` and unary ``+ -``; ``a // b`` is ``floor(a/b)`` and ``a % b``
  is ``Mod(a, b)``, both with Python's (and torch's) sign rules, and both
  differentiable almost everywhere, which is what a gradient check needs.
* calls of a known function (:data:`FUNCTIONS`) with positional arguments, spelled the
  SymPy way (``exp(x)``, ``atan2(y, x)``, ``Max(x, 0)``) or the torch way (``torch.exp(x)``,
  ``torch.special.expit(x)``, ``F.softplus(x)``). Dotted names are looked up as whole
  strings in the table; they are never resolved on a real module. No keyword arguments.
* ``a if cond else b`` (SymPy ``Piecewise``, torch ``where``), where ``cond`` combines
  comparisons (``<  <=  >  >=  ==  !=``, chains such as ``0 < x < 1``) with ``and``,
  ``or`` and ``not``. Comparisons are allowed only there.

Everything else (attribute access, subscripts, lambdas, comprehensions, f-strings,
walrus, method calls such as ``x.exp()``, ``^`` ...) raises :class:`ExpressionError`,
naming the construct, its column, and what is allowed.

Work is bounded before anything large is built: the text length is checked before
parsing, the tree depth and the number of variables while walking, and a power or
gamma-like function of exact constants whose value would have more than
:data:`MAX_CONSTANT_DIGITS` digits is refused instead of computed (``9**9**9**9`` fails at
once). SymPy can still spend minutes deciding the sign of an ill-conditioned constant
(``exp(3**1e-300 - 1)``); building stops after :data:`MAX_BUILD_SECONDS`.

The torch function is built from the same tree. Literals stay Python numbers where torch
takes them (``x * 0.5``, ``x ** 2``); where a tensor is needed (``exp(2)``, ``1 / 3``) they
become 0-d tensors of the inputs' floating dtype, so constant subexpressions are computed
by torch in that dtype, as they would be in hand-written torch code.

>>> p = parse_expression("softplus(x) * atan2(y, x)")
>>> p.symbols
(x, y)
>>> p.expr
log(exp(x) + 1)*atan2(y, x)
>>> import torch
>>> f = p.as_torch_function()
>>> f(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
tensor(1.0888, dtype=torch.float64)
"""

from __future__ import annotations

import ast
import collections
import difflib
import functools
import inspect
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple, Union

import sympy
import torch
import torch.nn.functional as F

from ._budget import interrupt_after
from ._errors import DeadlineExceeded

__all__ = [
    "CONSTANTS",
    "FUNCTIONS",
    "MAX_BUILD_SECONDS",
    "MAX_CONSTANT_DIGITS",
    "MAX_SYMBOLS",
    "ExpressionError",
    "FunctionSpec",
    "Parsed",
    "parse_expression",
]

#: Most distinct variables in one formula: the tensor-argument checker and the report
#: table are built for a handful; 26 is a whole alphabet.
MAX_SYMBOLS = 26

#: Largest exact constant, in decimal digits, that parsing may build. float64 ends near
#: 1e308 (and 5e-324), so bigger exact numbers only cost time and mean inf or 0 in torch.
MAX_CONSTANT_DIGITS = 400

#: Seconds that building one formula in SymPy may take before it is refused. Every
#: formula a person writes builds in milliseconds.
MAX_BUILD_SECONDS = 5.0

#: floor, ceiling, // and % of an irrational constant beyond this are refused: float64
#: has no fractional digits there, and SymPy's exact integer part can take forever.
_MAX_EXACT_INTEGER_PART = 2**53

#: gamma, loggamma and digamma of an exact rational evaluate to factorials and harmonic
#: sums, whose size grows with the argument; larger constant arguments are refused.
#: gamma(172) already overflows float64.
_MAX_EXACT_SPECIAL_ARGUMENT = 171


class ExpressionError(ValueError):
    """Formula text that autocheck will not parse.

    The message names the offending construct, points at it with a caret, and lists what
    is allowed. Attributes:
        text: the formula as given.
        lineno: 1-based line of the problem (None for problems with the whole text).
        column: 0-based character column of the problem on that line (or None).
    """

    __module__ = "autocheck"

    def __init__(self, message: str, *, text: str = "", lineno: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.text = text
        self.lineno = lineno
        self.column = column


# --------------------------------------------------------------------------------------
# Bounds on work
# --------------------------------------------------------------------------------------


class _Refused(Exception):
    """A builder declined its arguments; the walker adds the position."""


def _digits(value: sympy.Rational) -> float:
    """Decimal digits of numerator and denominator together."""
    return sum(math.log10(abs(int(n))) for n in (value.p, value.q) if n not in (0, 1, -1))


def _format_digits(estimate: float) -> str:
    return f"{estimate:.3g}" if estimate >= 1e6 else f"{round(estimate)}"


def _large_exact(arg: sympy.Expr) -> bool:
    return bool(arg.is_Rational) and (abs(arg) > _MAX_EXACT_SPECIAL_ARGUMENT or arg.q > _MAX_EXACT_SPECIAL_ARGUMENT)


def _exact(function: Callable[[sympy.Expr], sympy.Expr]) -> Callable[[sympy.Expr], sympy.Expr]:
    """SymPy evaluates gamma(n), loggamma(n), digamma(n) of rationals exactly: refuse big n."""

    @functools.wraps(function)
    def build(arg: sympy.Expr) -> sympy.Expr:
        if _large_exact(arg):
            raise _Refused(
                f"{{segment}} would be evaluated exactly, which is too large; "
                f"exact constant arguments must be at most {_MAX_EXACT_SPECIAL_ARGUMENT} with a denominator "
                f"at most {_MAX_EXACT_SPECIAL_ARGUMENT}"
            )
        return function(arg)

    return build


def _constant_part(value: sympy.Expr) -> sympy.Expr:
    return value.as_independent(*value.free_symbols, as_Add=True)[0] if value.free_symbols else value


def _check_integer_part(value: sympy.Expr) -> None:
    """Refuse to ask SymPy for the integer part of a huge irrational constant.

    SymPy finds floor(10**300/log(3)) by evaluating to 300 digits and, when the difference
    to the nearest integer cancels, by simplify(), which rewrites 10**300*log(3) as
    log(3**10**300) and never returns. Above 2**53 float64 has no fractional part anyway.
    """
    constant = _constant_part(value)
    if constant.is_Rational or not constant.is_number:
        return
    magnitude = abs(constant.evalf(15))
    if magnitude.is_comparable and magnitude > _MAX_EXACT_INTEGER_PART:
        raise _Refused(
            f"{{segment}} needs the integer part of a constant of about {float(magnitude):.3g}; above 2**53 "
            "float64 has no fractional digits, and the exact integer part costs SymPy unbounded time"
        )


def _floor(x: sympy.Expr) -> sympy.Expr:
    _check_integer_part(x)
    return sympy.floor(x)


def _ceiling(x: sympy.Expr) -> sympy.Expr:
    _check_integer_part(x)
    return sympy.ceiling(x)


def _floor_quotient(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    return _floor(a / b)


def _mod(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    _check_integer_part(a / b)
    return sympy.Mod(a, b)


def _power(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """``base**exponent``, refused when SymPy would evaluate an exact number too large to hold.

    SymPy evaluates rational**integer eagerly, and distributes a power over numeric factors
    ((3*x)**n is 3**n*x**n, sqrt(2)**n is 2**(n/2)); estimate the digits first so that
    9**9**9**9 fails at once instead of computing 9**387420489. Without rational atoms
    (x**n, pi**n, (x - 1)**n) nothing is evaluated.
    """
    if exponent.is_Rational and exponent != 0:
        size = sum(_digits(r) for r in base.atoms(sympy.Rational))
        try:
            estimate = abs(float(exponent)) * size
        except OverflowError:
            estimate = math.inf
        if estimate > MAX_CONSTANT_DIGITS:
            raise _Refused(
                f"constant power {{segment}} is too large: its exact value would have about "
                f"{_format_digits(estimate)} digits (up to {MAX_CONSTANT_DIGITS} allowed)"
            )
    return base**exponent


# --------------------------------------------------------------------------------------
# The one table: spelling -> (SymPy builder, torch builder, arity)
# --------------------------------------------------------------------------------------


class FunctionSpec(NamedTuple):
    """How one function spelling becomes SymPy and torch.

    ``sympy`` and ``torch`` take the call's arguments (SymPy expressions, resp. tensors)
    in order; ``arity`` is ``(fewest, most)`` arguments, ``most=None`` for any number.
    """

    sympy: Callable[..., Any]
    torch: Callable[..., torch.Tensor]
    arity: tuple[int, int | None]


_TWO = sympy.Integer(2)
_SQRT2 = sympy.sqrt(2)


def _sigmoid(x: sympy.Expr) -> sympy.Expr:
    return 1 / (1 + sympy.exp(-x))


def _softplus(x: sympy.Expr) -> sympy.Expr:
    return sympy.log(1 + sympy.exp(x))


def _logsigmoid(x: sympy.Expr) -> sympy.Expr:
    return -sympy.log(1 + sympy.exp(-x))


def _relu(x: sympy.Expr) -> sympy.Expr:
    return sympy.Max(x, 0)


def _ndtr(x: sympy.Expr) -> sympy.Expr:
    return (1 + sympy.erf(x / _SQRT2)) / 2


def _erfcx(x: sympy.Expr) -> sympy.Expr:
    return sympy.exp(x**2) * sympy.erfc(x)


def _hypot(x: sympy.Expr, y: sympy.Expr) -> sympy.Expr:
    return sympy.sqrt(x**2 + y**2)


def _clamp(x: sympy.Expr, low: sympy.Expr, high: sympy.Expr) -> sympy.Expr:
    return sympy.Min(sympy.Max(x, low), high)


def _log_base(x: sympy.Expr, base: sympy.Expr | None = None) -> sympy.Expr:
    return sympy.log(x) if base is None else sympy.log(x, base)


def _torch_log_base(x: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    return torch.log(x) if base is None else torch.log(x) / torch.log(base)


def _torch_gamma(x: torch.Tensor) -> torch.Tensor:
    # torch has only log|gamma|. gamma < 0 exactly on (-1, 0), (-3, -2), ... where floor(x)
    # is odd, and has poles (nan, as in the printer) at 0, -1, -2, ... Logical ops, not
    # & and |, so that autocheck's own tracer can read this function back.
    magnitude = torch.exp(torch.lgamma(x))
    negative = torch.logical_and(x < 0, torch.remainder(torch.floor(x), 2) == 1)
    value = torch.where(negative, -magnitude, magnitude)
    pole = torch.logical_and(x < 0, x == torch.floor(x))
    return torch.where(pole, torch.full_like(value, math.nan), value)


def _torch_sinc(x: torch.Tensor) -> torch.Tensor:
    # SymPy's sinc(x) = sin(x)/x. torch.sinc(x / pi) would round x / pi; the inner where
    # keeps the gradient at 0 finite (0, as it should be) instead of 0 * nan.
    zero = x == 0
    safe = torch.where(zero, torch.ones_like(x), x)
    return torch.where(zero, torch.ones_like(x), torch.sin(safe) / safe)


def _torch_heaviside(x: torch.Tensor, at_zero: torch.Tensor | None = None) -> torch.Tensor:
    # SymPy's Heaviside(0) is 1/2 unless told otherwise; torch.heaviside must always be told.
    value = torch.full((), 0.5, dtype=x.dtype, device=x.device) if at_zero is None else at_zero.to(x.dtype)
    return torch.heaviside(x, value)


def _maximum(*args: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.maximum, args)


def _minimum(*args: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.minimum, args)


_Arity = Union[int, tuple[int, Union[int, None]]]
_Row = tuple[str, Callable[..., Any], Callable[..., torch.Tensor], _Arity]

# fmt: off
_ROWS: list[_Row] = [
    # spellings (space-separated)           SymPy builder                   torch builder           arity
    ("exp torch.exp",                        sympy.exp,                      torch.exp,              1),
    ("exp2 torch.exp2 torch.special.exp2",   lambda x: _power(_TWO, x),      torch.exp2,             1),
    ("expm1 torch.expm1 torch.special.expm1", lambda x: sympy.exp(x) - 1,    torch.expm1,            1),
    ("log ln",                               _log_base,                      _torch_log_base,        (1, 2)),
    ("torch.log",                            sympy.log,                      torch.log,              1),
    ("log2 torch.log2",                      lambda x: sympy.log(x, 2),      torch.log2,             1),
    ("log10 torch.log10",                    lambda x: sympy.log(x, 10),     torch.log10,            1),
    ("log1p torch.log1p torch.special.log1p", lambda x: sympy.log(1 + x),    torch.log1p,            1),
    ("sqrt torch.sqrt",                      sympy.sqrt,                     torch.sqrt,             1),
    ("rsqrt torch.rsqrt",                    lambda x: 1 / sympy.sqrt(x),    torch.rsqrt,            1),
    ("square torch.square",                  lambda x: _power(x, _TWO),      torch.square,           1),
    ("reciprocal torch.reciprocal",          lambda x: 1 / x,                torch.reciprocal,       1),
    ("pow torch.pow",                        _power,                         torch.pow,              2),
    ("sin torch.sin",                        sympy.sin,                      torch.sin,              1),
    ("cos torch.cos",                        sympy.cos,                      torch.cos,              1),
    ("tan torch.tan",                        sympy.tan,                      torch.tan,              1),
    ("cot",                                  sympy.cot,                      lambda x: 1 / torch.tan(x), 1),
    ("sec",                                  sympy.sec,                      lambda x: 1 / torch.cos(x), 1),
    ("csc",                                  sympy.csc,                      lambda x: 1 / torch.sin(x), 1),
    ("asin torch.asin torch.arcsin",         sympy.asin,                     torch.asin,             1),
    ("acos torch.acos torch.arccos",         sympy.acos,                     torch.acos,             1),
    ("atan torch.atan torch.arctan",         sympy.atan,                     torch.atan,             1),
    ("atan2 torch.atan2 torch.arctan2",      sympy.atan2,                    torch.atan2,            2),
    ("sinh torch.sinh",                      sympy.sinh,                     torch.sinh,             1),
    ("cosh torch.cosh",                      sympy.cosh,                     torch.cosh,             1),
    ("tanh torch.tanh F.tanh",               sympy.tanh,                     torch.tanh,             1),
    ("torch.nn.functional.tanh",             sympy.tanh,                     torch.tanh,             1),
    ("asinh torch.asinh torch.arcsinh",      sympy.asinh,                    torch.asinh,            1),
    ("acosh torch.acosh torch.arccosh",      sympy.acosh,                    torch.acosh,            1),
    ("atanh torch.atanh torch.arctanh",      sympy.atanh,                    torch.atanh,            1),
    ("hypot torch.hypot",                    _hypot,                         torch.hypot,            2),
    ("erf torch.erf torch.special.erf",      sympy.erf,                      torch.erf,              1),
    ("erfc torch.erfc torch.special.erfc",   sympy.erfc,                     torch.erfc,             1),
    ("erfinv torch.erfinv torch.special.erfinv", sympy.erfinv,               torch.erfinv,           1),
    ("erfcx torch.special.erfcx",            _erfcx,                         torch.special.erfcx,    1),
    ("ndtr torch.special.ndtr",              _ndtr,                          torch.special.ndtr,     1),
    ("log_ndtr torch.special.log_ndtr",      lambda x: sympy.log(_ndtr(x)),  torch.special.log_ndtr, 1),
    ("gamma",                                _exact(sympy.gamma),            _torch_gamma,           1),
    ("loggamma lgamma torch.lgamma",         _exact(sympy.loggamma),         torch.lgamma,           1),
    ("torch.special.gammaln",                _exact(sympy.loggamma),         torch.lgamma,           1),
    ("digamma psi torch.digamma",            _exact(sympy.digamma),          torch.digamma,          1),
    ("torch.special.digamma torch.special.psi", _exact(sympy.digamma),       torch.digamma,          1),
    ("abs Abs torch.abs",                    sympy.Abs,                      torch.abs,              1),
    ("sign torch.sign",                      sympy.sign,                     torch.sign,             1),
    ("floor torch.floor",                    _floor,                         torch.floor,            1),
    ("ceil ceiling torch.ceil",              _ceiling,                       torch.ceil,             1),
    ("max Max",                              sympy.Max,                      _maximum,               (1, None)),
    ("min Min",                              sympy.Min,                      _minimum,               (1, None)),
    ("torch.maximum torch.max",              sympy.Max,                      torch.maximum,          2),
    ("torch.minimum torch.min",              sympy.Min,                      torch.minimum,          2),
    ("clamp clip torch.clamp torch.clip",    _clamp,                         torch.clamp,            3),
    ("sigmoid expit torch.sigmoid",          _sigmoid,                       torch.sigmoid,          1),
    ("torch.special.expit F.sigmoid",        _sigmoid,                       torch.sigmoid,          1),
    ("torch.nn.functional.sigmoid",          _sigmoid,                       torch.sigmoid,          1),
    ("logit torch.logit torch.special.logit", lambda x: sympy.log(x / (1 - x)), torch.logit,         1),
    ("softplus F.softplus",                  _softplus,                      F.softplus,             1),
    ("torch.nn.functional.softplus",         _softplus,                      F.softplus,             1),
    ("logsigmoid F.logsigmoid",              _logsigmoid,                    F.logsigmoid,           1),
    ("torch.nn.functional.logsigmoid",       _logsigmoid,                    F.logsigmoid,           1),
    ("relu torch.relu F.relu",               _relu,                          torch.relu,             1),
    ("torch.nn.functional.relu",             _relu,                          torch.relu,             1),
    ("silu F.silu torch.nn.functional.silu", lambda x: x * _sigmoid(x),      F.silu,                 1),
    ("gelu F.gelu torch.nn.functional.gelu", lambda x: x * _ndtr(x),         F.gelu,                 1),
    # SymPy's sinc is sin(x)/x; torch's is normalized, sin(pi*x)/(pi*x).
    ("sinc",                                 sympy.sinc,                     _torch_sinc,            1),
    ("torch.sinc torch.special.sinc",        lambda x: sympy.sinc(sympy.pi * x), torch.sinc,         1),
    ("heaviside Heaviside",                  sympy.Heaviside,                _torch_heaviside,       (1, 2)),
    ("torch.heaviside",                      sympy.Heaviside,                _torch_heaviside,       2),
]
# fmt: on


def _table(rows: Sequence[_Row]) -> dict[str, FunctionSpec]:
    table: dict[str, FunctionSpec] = {}
    for spellings, to_sympy, to_torch, arity in rows:
        bounds = (arity, arity) if isinstance(arity, int) else arity
        for spelling in spellings.split():
            if spelling in table:
                raise AssertionError(f"function spelling {spelling!r} appears twice in _ROWS")
            table[spelling] = FunctionSpec(to_sympy, to_torch, bounds)
    return table


#: Every function spelling a formula may call. Add a spelling with
#: ``FUNCTIONS["name"] = FunctionSpec(sympy_builder, torch_builder, (1, 1))``: the write
#: lands in the ChainMap's first (user) map and shadows the built-in table.
FUNCTIONS: collections.ChainMap[str, FunctionSpec] = collections.ChainMap({}, _table(_ROWS))

#: Names (and dotted names) that are constants, with their SymPy and float values.
CONSTANTS: collections.ChainMap[str, tuple[sympy.Expr, float]] = collections.ChainMap(
    {},
    {
        **dict.fromkeys(["pi", "torch.pi", "math.pi"], (sympy.pi, math.pi)),
        **dict.fromkeys(["e", "E", "torch.e", "math.e"], (sympy.E, math.e)),
        **dict.fromkeys(["inf", "oo", "torch.inf", "math.inf"], (sympy.oo, math.inf)),
    },
)

#: Names a formula may not use as variables: they would shadow a module or builtin a
#: reader expects, or mean something non-real in SymPy (``I``) or in torch (``nan``).
_RESERVED = frozenset(
    "torch F nn math np numpy sympy sp os sys builtins eval exec compile open input print "
    "getattr setattr delattr globals locals vars dir type object breakpoint help exit quit "
    "I nan NaN zoo".split()
)

_ALLOWED = (
    "A formula may use numbers, variable names, the constants pi, e and inf, the operators "
    "+ - * / // % ** and unary + -, calls of known functions with positional arguments "
    "(exp(x), atan2(y, x), torch.exp(x), F.softplus(x)), and `a if cond else b` with "
    "comparisons joined by and/or/not."
)

# --------------------------------------------------------------------------------------
# Torch closure tree
# --------------------------------------------------------------------------------------


class _Env:
    """Per call: the argument tensors by name and the dtype/device for constants."""

    __slots__ = ("device", "dtype", "values")

    def __init__(self, values: dict[str, Any], dtype: torch.dtype, device: torch.device) -> None:
        self.values = values
        self.dtype = dtype
        self.device = device

    def tensor(self, value: Any) -> Any:
        if isinstance(value, (int, float)):
            return torch.tensor(value, dtype=self.dtype, device=self.device)
        return value


_TorchNode = Callable[[_Env], Any]


class _Constant:
    """A literal: stays a Python number so that torch sees ``x * 0.5``, not a tensor."""

    __slots__ = ("value",)

    def __init__(self, value: int | float) -> None:
        self.value = value

    def __call__(self, env: _Env) -> int | float:
        return self.value


def _torch_variable(name: str) -> _TorchNode:
    return lambda env: env.values[name]


def _torch_binary(op: Callable[[Any, Any], Any], left: _TorchNode, right: _TorchNode) -> _TorchNode:
    def node(env: _Env) -> Any:
        a, b = left(env), right(env)
        # Python arithmetic on two numbers would raise on 1/0 and go complex on (-8)**(1/3);
        # `number % tensor` has no backward in torch.
        if isinstance(a, (int, float)) and (isinstance(b, (int, float)) or op is operator.mod):
            a = env.tensor(a)
        return op(a, b)

    return node


def _floor_divide(a: Any, b: Any) -> Any:
    # torch.floor_divide has no derivative; floor(a / b) is the same number with gradient 0.
    return torch.floor(a / b)


def _torch_call(function: Callable[..., torch.Tensor], args: list[_TorchNode]) -> _TorchNode:
    return lambda env: function(*[env.tensor(arg(env)) for arg in args])


def _torch_where(cond: _TorchNode, then: _TorchNode, otherwise: _TorchNode) -> _TorchNode:
    return lambda env: torch.where(cond(env), env.tensor(then(env)), env.tensor(otherwise(env)))


def _torch_chain(ops: list[Callable[[Any, Any], Any]], operands: list[_TorchNode]) -> _TorchNode:
    def node(env: _Env) -> Any:
        values = [operand(env) for operand in operands]
        result = None
        for op, a, b in zip(ops, values, values[1:]):
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                a = env.tensor(a)
            pair = op(a, b)
            result = pair if result is None else torch.logical_and(result, pair)
        return result

    return node


def _torch_bool(op: Callable[[Any, Any], Any], values: list[_TorchNode]) -> _TorchNode:
    return lambda env: functools.reduce(op, [value(env) for value in values])


def _constant_dtype(values: Sequence[Any]) -> tuple[torch.dtype, torch.device]:
    tensors = [value for value in values if isinstance(value, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype: torch.dtype | None = None
    for value in tensors:
        if value.dtype.is_floating_point or value.dtype.is_complex:
            dtype = value.dtype if dtype is None else torch.promote_types(dtype, value.dtype)
    return (dtype or torch.get_default_dtype()), device


def _torch_function(root: _TorchNode, names: tuple[str, ...], text: str) -> Callable[..., torch.Tensor]:
    signature = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names],
        return_annotation=torch.Tensor,
    )

    def formula(*args: Any, **kwargs: Any) -> torch.Tensor:
        bound = signature.bind(*args, **kwargs)
        values = {name: torch.as_tensor(v) if isinstance(v, (int, float)) else v for name, v in bound.arguments.items()}
        dtype, device = _constant_dtype(list(values.values()))
        env = _Env(values, dtype, device)
        return env.tensor(root(env))

    formula.__signature__ = signature  # type: ignore[attr-defined]
    formula.__name__, formula.__qualname__ = "formula", text  # reports name it by its text
    formula.__doc__ = f"The formula {text!r} in torch operations."
    return formula


# --------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    """A parsed formula.

    Attributes:
        expr: the SymPy expression, with real symbols and exact numbers.
        symbols: its variables as ``Symbol(name, real=True)``, in order of first appearance.
        text: the formula as given.
    """

    expr: sympy.Expr
    symbols: tuple[sympy.Symbol, ...]
    text: str
    _torch: _TorchNode | None = field(default=None, repr=False, compare=False)

    def as_torch_function(self) -> Callable[..., torch.Tensor]:
        """The same formula as a function of one tensor per symbol, in :attr:`symbols` order.

        Built from the parsed tree with torch operations, never by evaluating the text.
        ``inspect.signature`` shows the symbol names; constants take the inputs' floating
        dtype (the default dtype when no input is floating), and the result is always a tensor.

        >>> import torch
        >>> f = parse_expression("x**2 * exp(y)").as_torch_function()
        >>> f(torch.tensor(3.0), y=torch.tensor(0.0))
        tensor(9.)
        """
        root = self._torch
        if root is None:
            root = parse_expression(self.text, max_length=max(2000, len(self.text)))._torch
            assert root is not None
        return _torch_function(root, tuple(s.name for s in self.symbols), self.text)


# --------------------------------------------------------------------------------------
# The walk
# --------------------------------------------------------------------------------------


_BINARY: dict[type[ast.operator], tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]] = {
    ast.Add: (operator.add, operator.add),
    ast.Sub: (operator.sub, operator.sub),
    ast.Mult: (operator.mul, operator.mul),
    ast.Div: (operator.truediv, operator.truediv),
    ast.Pow: (_power, operator.pow),
    ast.FloorDiv: (_floor_quotient, _floor_divide),
    ast.Mod: (_mod, operator.mod),
}

_REFUSED_BINARY = {
    ast.BitXor: "`^` (bitwise xor; write ** for a power)",
    ast.MatMult: "`@` (matrix product)",
    ast.BitAnd: "`&` (bitwise and)",
    ast.BitOr: "`|` (bitwise or)",
    ast.LShift: "`<<` (bit shift)",
    ast.RShift: "`>>` (bit shift)",
}

_COMPARE: dict[type[ast.cmpop], tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]] = {
    ast.Lt: (sympy.Lt, operator.lt),
    ast.LtE: (sympy.Le, operator.le),
    ast.Gt: (sympy.Gt, operator.gt),
    ast.GtE: (sympy.Ge, operator.ge),
    ast.Eq: (sympy.Eq, operator.eq),
    ast.NotEq: (sympy.Ne, operator.ne),
}

_CONSTRUCTS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.Slice: "slice",
    ast.Lambda: "lambda",
    ast.ListComp: "list comprehension",
    ast.SetComp: "set comprehension",
    ast.DictComp: "dict comprehension",
    ast.GeneratorExp: "generator expression",
    ast.JoinedStr: "f-string",
    ast.FormattedValue: "f-string",
    ast.Starred: "starred argument",
    ast.NamedExpr: "assignment expression (:=)",
    ast.List: "list",
    ast.Tuple: "tuple",
    ast.Set: "set",
    ast.Dict: "dict",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Compare: "comparison",
    ast.BoolOp: "and/or",
}

_CONTEXT: dict[type[ast.AST], str] = {
    ast.Compare: "; comparisons may only be the condition of `a if cond else b`",
    ast.BoolOp: "; and/or may only join comparisons in the condition of `a if cond else b`",
}

_LITERALS: dict[type, str] = {
    str: "string", bytes: "bytes", bool: "boolean", complex: "complex number",
    type(None): "None", type(...): "Ellipsis",
}

_SymPair = tuple[Any, _TorchNode]


def _dotted(node: ast.AST) -> str | None:
    """``torch.special.expit`` for an Attribute chain on a bare name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


class _Walker:
    def __init__(self, text: str, max_depth: int, original: str, indent: int) -> None:
        self.text = text  # what ast.parse saw: ``original`` without its first line's indent
        self.original = original
        self.indent = indent
        self.lines = re.split(r"\r\n|\r|\n", text)
        self.max_depth = max_depth
        self.first_seen: dict[str, tuple[int, int]] = {}
        self.variable_uses = 0
        self.symbols: dict[str, sympy.Symbol] = {}
        self.stopped_at: ast.AST | None = None  # the innermost node being built when time ran out

    # --- errors -----------------------------------------------------------------------

    def _column(self, lineno: int, byte_offset: int) -> int:
        line = self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""
        return len(line.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore"))

    def error(self, node: ast.AST, headline: str, hint: str = _ALLOWED) -> ExpressionError:
        lineno = getattr(node, "lineno", 1)
        column = self._column(lineno, getattr(node, "col_offset", 0))
        end_lineno = getattr(node, "end_lineno", lineno)
        end_column = self._column(lineno, getattr(node, "end_col_offset", 0)) if end_lineno == lineno else None
        return _located(self.original, headline, hint, lineno, column, end_column, self.indent)

    def segment(self, node: ast.AST, limit: int = 40) -> str:
        source = ast.get_source_segment(self.text, node) or type(node).__name__
        source = " ".join(source.split())
        return source if len(source) <= limit else source[: limit - 3] + "..."

    def refuse(self, node: ast.AST, context: str = "") -> ExpressionError:
        construct = _CONSTRUCTS.get(type(node), type(node).__name__)
        if isinstance(node, ast.Constant):
            construct = _LITERALS.get(type(node.value), type(node.value).__name__) + " literal"
        context = context or _CONTEXT.get(type(node), "")
        return self.error(node, f"{construct} `{self.segment(node)}` is not allowed{context}")

    # --- expressions ------------------------------------------------------------------

    def expr(self, node: ast.AST, depth: int) -> _SymPair:
        if depth > self.max_depth:
            raise self.error(node, f"the formula is nested more than max_depth={self.max_depth} levels deep",
                             "Split it up, simplify it, or raise max_depth.")
        uses = self.variable_uses
        try:
            result = self._expr(node, depth + 1)
        except _Refused as refused:
            message = str(refused).replace("{segment}", f"`{self.segment(node)}`")
            raise self.error(node, message, "float64 ends near 1e308; write the value you need, "
                                            "or keep it symbolic.") from None
        except ExpressionError:
            raise
        except RecursionError:
            raise self.error(node, "the formula is too deeply nested to build", "Lower max_depth.") from None
        except Exception as exc:  # SymPy's own failures, e.g. "The argument ... is not comparable"
            raise self.error(node, f"`{self.segment(node)}` could not be built in SymPy: {type(exc).__name__}: {exc}",
                             "Check the arguments of this call.") from None
        except BaseException:  # the time budget's interrupt (or Ctrl-C) on its way out
            self.stopped_at = self.stopped_at or node
            raise
        self._check_value(node, result[0])
        if self.variable_uses == uses:  # no variable below this node: a constant
            self._check_float(node, *result)
        return result

    def _expr(self, node: ast.AST, depth: int) -> _SymPair:
        if isinstance(node, ast.Constant):
            return self.number(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted is not None and dotted in CONSTANTS:
                value, number = CONSTANTS[dotted]
                return value, _Constant(number)
            raise self.refuse(node, "; only the constants pi, e, inf (and torch.pi, math.pi, ...) "
                                    "and calls of known functions may be dotted")
        if isinstance(node, ast.UnaryOp):
            return self.unary(node, depth)
        if isinstance(node, ast.BinOp):
            return self.binary(node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        if isinstance(node, ast.IfExp):
            cond, cond_torch = self.condition(node.test, depth)
            then, then_torch = self.expr(node.body, depth)
            otherwise, otherwise_torch = self.expr(node.orelse, depth)
            return sympy.Piecewise((then, cond), (otherwise, True)), _torch_where(cond_torch, then_torch, otherwise_torch)
        raise self.refuse(node)

    def number(self, node: ast.Constant) -> _SymPair:
        value = node.value
        if type(value) is int:
            if abs(value) > 2**1024:
                raise self.error(node, f"integer literal `{self.segment(node)}` is outside float64's range",
                                 "Write a number below 1.8e308.")
            # Huge ints would overflow torch's int64 scalars; past 2**53 float is as exact as torch gets.
            return sympy.Integer(value), _Constant(value if abs(value) <= 2**53 else float(value))
        if type(value) is float:
            source = ast.get_source_segment(self.text, node) or repr(value)
            written = Decimal(source.replace("_", ""))
            if math.isinf(value) or (value == 0 and not written.is_zero()):
                raise self.error(node, f"float literal `{self.segment(node)}` is outside float64's range",
                                 "Write a number between 5e-324 and 1.8e308 in magnitude, or use inf.")
            return sympy.Rational(*written.as_integer_ratio()), _Constant(value)
        raise self.refuse(node, "; only int and float literals are")

    def name(self, node: ast.Name) -> _SymPair:
        name = node.id
        if name in CONSTANTS:
            value, number = CONSTANTS[name]
            return value, _Constant(number)
        if name.startswith("_"):
            raise self.error(node, f"name `{name}` is not allowed: names starting with '_' are reserved",
                             "Rename the variable.")
        if name in _RESERVED:
            raise self.error(node, f"name `{name}` is reserved and cannot be a variable", "Rename the variable.")
        self.variable_uses += 1
        if name not in self.symbols:
            if len(self.symbols) >= MAX_SYMBOLS:
                raise self.error(node, f"too many variables: `{name}` would be number {MAX_SYMBOLS + 1}",
                                 f"A formula may use at most {MAX_SYMBOLS} variables.")
            self.symbols[name] = sympy.Symbol(name, real=True)
            self.first_seen[name] = (node.lineno, node.col_offset)
        else:
            self.first_seen[name] = min(self.first_seen[name], (node.lineno, node.col_offset))
        return self.symbols[name], _torch_variable(name)

    def unary(self, node: ast.UnaryOp, depth: int) -> _SymPair:
        if isinstance(node.op, ast.USub):
            value, torch_node = self.expr(node.operand, depth)
            if isinstance(torch_node, _Constant):
                return -value, _Constant(-torch_node.value)
            return -value, lambda env: -torch_node(env)
        if isinstance(node.op, ast.UAdd):
            return self.expr(node.operand, depth)
        what = "`not` outside the condition of `a if cond else b`" if isinstance(node.op, ast.Not) else "`~`"
        raise self.error(node, f"{what} `{self.segment(node)}` is not allowed")

    def binary(self, node: ast.BinOp, depth: int) -> _SymPair:
        ops = _BINARY.get(type(node.op))
        if ops is None:
            what = _REFUSED_BINARY.get(type(node.op), type(node.op).__name__)
            raise self.error(node, f"operator {what} in `{self.segment(node)}` is not allowed")
        left, left_torch = self.expr(node.left, depth)
        right, right_torch = self.expr(node.right, depth)
        to_sympy, to_torch = ops
        return to_sympy(left, right), _torch_binary(to_torch, left_torch, right_torch)

    def call(self, node: ast.Call, depth: int) -> _SymPair:
        spelling = _dotted(node.func)
        if spelling is None:
            raise self.error(node.func, f"calling `{self.segment(node.func)}` is not allowed; only known functions "
                                        "can be called, by name", _known_functions())
        spec = FUNCTIONS.get(spelling)
        if spec is None:
            if isinstance(node.func, ast.Attribute) and spelling.split(".")[0] not in _MODULE_ROOTS:
                raise self.error(node.func, f"attribute access `{spelling}` is not allowed (method calls such as "
                                            "x.exp() included); write exp(x)", _known_functions())
            raise self.error(node.func, f"unknown function `{spelling}`", _known_functions(spelling))
        if node.keywords:
            keyword = node.keywords[0]
            shown = f"{keyword.arg}=" if keyword.arg is not None else "**"
            raise self.error(keyword, f"keyword argument `{shown}{self.segment(keyword.value)}` in a call of {spelling} "
                                      "is not allowed", "Pass arguments by position, e.g. atan2(y, x).")
        fewest, most = spec.arity
        count = len(node.args)
        if count < fewest or (most is not None and count > most):
            raise self.error(node, f"{spelling}() takes {_arity_text(fewest, most)} but {count} "
                                   f"{'was' if count == 1 else 'were'} given", "Check the call's arguments.")
        pairs = [self.expr(arg, depth) for arg in node.args]
        value = spec.sympy(*[p[0] for p in pairs])
        return value, _torch_call(spec.torch, [p[1] for p in pairs])

    # --- conditions -------------------------------------------------------------------

    def condition(self, node: ast.AST, depth: int) -> _SymPair:
        if depth > self.max_depth:
            raise self.error(node, f"the formula is nested more than max_depth={self.max_depth} levels deep",
                             "Split it up, simplify it, or raise max_depth.")
        try:
            return self._condition(node, depth + 1)
        except ExpressionError:
            raise
        except Exception as exc:
            raise self.error(node, f"condition `{self.segment(node)}` could not be built in SymPy: {type(exc).__name__}: {exc}",
                             "Compare real-valued expressions.") from None
        except BaseException:
            self.stopped_at = self.stopped_at or node
            raise

    def _condition(self, node: ast.AST, depth: int) -> _SymPair:
        if isinstance(node, ast.Compare):
            operands = [self.expr(node.left, depth)] + [self.expr(c, depth) for c in node.comparators]
            relations, torch_ops = [], []
            for op, a, b in zip(node.ops, operands, operands[1:]):
                ops = _COMPARE.get(type(op))
                if ops is None:
                    raise self.error(node, f"comparison `{self.segment(node)}` is not allowed; use < <= > >= == !=")
                relations.append(ops[0](a[0], b[0]))
                torch_ops.append(ops[1])
            return sympy.And(*relations), _torch_chain(torch_ops, [o[1] for o in operands])
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(v, depth) for v in node.values]
            if isinstance(node.op, ast.And):
                return sympy.And(*[p[0] for p in parts]), _torch_bool(torch.logical_and, [p[1] for p in parts])
            return sympy.Or(*[p[0] for p in parts]), _torch_bool(torch.logical_or, [p[1] for p in parts])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            value, torch_node = self.condition(node.operand, depth)
            return sympy.Not(value), lambda env: torch.logical_not(torch_node(env))
        raise self.error(node, f"`{self.segment(node)}` is not a condition",
                         "A condition compares values (x < 1, 0 <= x < 2) and joins comparisons with and, or, not.")

    # --- checks on built values -------------------------------------------------------

    def _check_value(self, node: ast.AST, value: Any) -> None:
        if not isinstance(value, sympy.Basic):
            return
        if value.has(sympy.zoo, sympy.nan):
            raise self.error(node, f"`{self.segment(node)}` is undefined (SymPy gives {_short(value)})",
                             "Avoid dividing by an exact zero and operations such as inf - inf.")
        if value.has(sympy.I):
            raise self.error(node, f"`{self.segment(node)}` is not real (SymPy gives {_short(value)})",
                             "autocheck works over the reals.")
        coefficient = value if value.is_Rational else value.as_coeff_Mul()[0] if value.is_Mul else None
        if coefficient is not None and coefficient.is_Rational and _digits(coefficient) > MAX_CONSTANT_DIGITS:
            raise self.error(node, f"constant in `{self.segment(node)}` is too large: about "
                                   f"{_format_digits(_digits(coefficient))} digits (up to {MAX_CONSTANT_DIGITS} allowed)",
                             "float64 ends near 1e308; write the value you need.")

    def _check_float(self, node: ast.AST, value: sympy.Expr, torch_node: _TorchNode) -> None:
        """A constant must be a finite float64, as the torch function computes it.

        Besides refusing constants that are inf or nan in torch but finite in SymPy, this
        keeps SymPy's own numeric evaluation single-exponential: exp(exp(exp(100))) is
        refused here, before anything asks SymPy for its sign with 10**43-bit precision.
        """
        try:
            number = float(torch_node(_Env({}, torch.float64, torch.device("cpu"))))
        except Exception as exc:
            raise self.error(node, f"`{self.segment(node)}` cannot be computed in torch: {type(exc).__name__}: {exc}",
                             "Check the arguments of this call.") from None
        if math.isnan(number):
            raise self.error(node, f"`{self.segment(node)}` is not a real number: float64 gives nan",
                             "autocheck works over the reals; check the function's domain.")
        if math.isinf(number) and not value.has(sympy.oo, -sympy.oo):
            raise self.error(node, f"`{self.segment(node)}` overflows float64 (torch computes {number})",
                             "float64 ends near 1e308; write a smaller constant.")


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_MODULE_ROOTS = frozenset(spelling.split(".")[0] for spelling in FUNCTIONS if "." in spelling) | {"math", "np", "numpy"}


def _arity_text(fewest: int, most: int | None) -> str:
    if most is None:
        return f"at least {fewest} argument{'s' if fewest != 1 else ''}"
    if fewest == most:
        return f"{fewest} argument{'s' if fewest != 1 else ''}"
    return f"{fewest} to {most} arguments"


def _known_functions(near: str | None = None) -> str:
    bare = sorted(name for name in FUNCTIONS if "." not in name)
    hint = "Known functions: " + ", ".join(bare) + " (torch spellings such as torch.exp, " \
        "torch.special.expit and F.softplus also work)."
    if near is not None:
        close = difflib.get_close_matches(near, list(FUNCTIONS), n=3)
        if close:
            hint = f"Did you mean {' or '.join(close)}? " + hint
    return hint


def _located(
    text: str, headline: str, hint: str, lineno: int, column: int, end_column: int | None, indent: int = 0
) -> ExpressionError:
    if lineno == 1:
        column += indent
        end_column = None if end_column is None else end_column + indent
    lines = re.split(r"\r\n|\r|\n", text)
    line = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    where = f"column {column + 1}" if len(lines) == 1 else f"line {lineno}, column {column + 1}"
    # Show at most 70 characters of the line, keeping the problem in view.
    start = max(0, min(column - 20, len(line) - 70))
    shown = line[start : start + 70]
    end = end_column if end_column is not None and end_column > column else column + 1
    width = max(1, min(end, start + len(shown)) - column)
    pointer = " " * (column - start) + "^" * width
    message = f"{headline} (at {where})\n    {shown}\n    {pointer}\n{hint}"
    return ExpressionError(message, text=text, lineno=lineno, column=column)


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def parse_expression(text: str, *, max_length: int = 2000, max_depth: int = 50) -> Parsed:
    """Parse formula text into a SymPy expression and a torch function, safely.

    Args:
        text: a Python-syntax formula such as ``"x**2 * exp(x)"`` or ``"torch.atan2(y, x)"``.
        max_length: longest text accepted, in characters (checked before parsing).
        max_depth: deepest syntax tree accepted (``x + 1`` has depth 2).

    Returns:
        A :class:`Parsed` with ``expr`` (exact, real symbols), ``symbols`` (in order of
        first appearance) and ``text``; ``as_torch_function()`` gives the torch version.

    Raises:
        TypeError: ``text`` is not a str.
        ExpressionError: the text is not a formula in the allowed language, or too large
            to build. For example ``parse_expression("2 * x.__class__")`` raises (the first
            line shortened here)::

                attribute access `x.__class__` is not allowed; only the constants ... (at column 5)
                    2 * x.__class__
                        ^^^^^^^^^^^
                A formula may use numbers, variable names, the constants pi, e and inf, ...

    >>> parse_expression("0.1 * x + torch.special.expit(y)").expr
    x/10 + 1/(1 + exp(-y))
    """
    if not isinstance(text, str):
        raise TypeError(f"Expected the formula as str but got text={text!r} of type {type(text).__name__}")
    if len(text) > max_length:
        raise ExpressionError(
            f"the formula is {len(text)} characters long (up to max_length={max_length} allowed)",
            text=text,
        )
    if not text.strip():
        raise ExpressionError("the formula is empty; write an expression such as x**2 * exp(x)", text=text)
    # Python's parser calls a leading space an indent; a formula may start with one.
    source = text.lstrip(" \t\f")
    indent = len(text) - len(source)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise _syntax_error(text, exc, indent) from None
    except (RecursionError, MemoryError):
        raise ExpressionError(
            "the formula is nested too deeply for Python's parser; simplify it", text=text
        ) from None
    except ValueError as exc:  # null bytes on older Pythons
        raise ExpressionError(f"the formula cannot be parsed: {exc}", text=text) from None

    walker = _Walker(source, max_depth, text, indent)
    try:
        with interrupt_after(MAX_BUILD_SECONDS, "building the formula in SymPy", "Raise MAX_BUILD_SECONDS."):
            expr, torch_root = walker.expr(tree.body, 1)
            _check_atoms(walker, tree.body, expr)
    except DeadlineExceeded:
        node = walker.stopped_at or tree.body
        raise walker.error(
            node,
            f"building `{walker.segment(node)}` in SymPy took longer than "
            f"{MAX_BUILD_SECONDS:g} s (MAX_BUILD_SECONDS)",
            "SymPy evaluates constants exactly; a constant that needs hundreds of digits to decide "
            "its sign or integer part takes too long. Write a simpler constant.",
        ) from None
    if not isinstance(expr, sympy.Expr):
        raise walker.error(tree.body, f"`{walker.segment(tree.body)}` is not a number-valued formula", _ALLOWED)
    names = sorted(walker.first_seen, key=walker.first_seen.__getitem__)
    symbols = tuple(walker.symbols[name] for name in names)
    return Parsed(expr=expr, symbols=symbols, text=text, _torch=torch_root)


def _check_atoms(walker: _Walker, node: ast.AST, expr: sympy.Expr) -> None:
    for atom in expr.atoms(sympy.Rational):
        if _digits(atom) > MAX_CONSTANT_DIGITS:
            raise walker.error(node, f"the formula contains a constant of about {_format_digits(_digits(atom))} "
                                     f"digits (up to {MAX_CONSTANT_DIGITS} allowed)",
                               "float64 ends near 1e308; write the value you need.")


def _syntax_error(text: str, exc: SyntaxError, indent: int) -> ExpressionError:
    lineno = exc.lineno or 1
    column = max((exc.offset or 1) - 1, 0)
    end_column = (exc.end_offset - 1) if exc.end_offset and (exc.end_lineno in (None, lineno)) else None
    reason = exc.msg or "invalid syntax"
    return _located(text, f"invalid syntax: {reason}", "Write the formula as a Python expression, e.g. "
                    "x**2 * exp(x) (use ** for powers and * for every product).", lineno, column, end_column, indent)
