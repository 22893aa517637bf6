"""Stage 1: run ordinary torch code on symbolic tensors and read off a SymPy expression.

A :class:`SymbolicTensor` is a storage-less ``torch.Tensor`` subclass whose elements are
SymPy expressions, held in a numpy object array of the tensor's shape. Its
``__torch_dispatch__`` sees ATen operators, after torch has already collapsed the many
spellings of one operation (``torch.exp``, ``Tensor.exp``, ``x.exp_()``) into one, and
answers each with a rule from :data:`TORCH_TO_SYMPY`. Operators without a rule fall back
to torch's own decompositions into simpler operators.

The trace follows autograd, not only the arithmetic: what the code computes where autograd
records nothing (``torch.no_grad()``, ``x.detach()``) is a constant, and constants are the
exact numbers the code runs with (a float32 ``torch.tensor(0.1)`` is 13421773/2**27).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import inspect
import math
import operator
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import sympy
import torch
from sympy.codegen.cfunctions import expm1 as sympy_expm1
from sympy.codegen.cfunctions import log1p as sympy_log1p
from torch._decomp import decomposition_table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from ._errors import TraceError

aten = torch.ops.aten

#: Functions of small tensors are traced element by element; above this many input
#: elements the symbolic Jacobian grows too fast (see NOTES: softmax of 100 symbols takes minutes).
MAX_SYMBOLIC_ELEMENTS = 100

_FIX_REGISTER = (
    "Register a rule with autocheck.register_torch_op({op!r}, rule), where rule takes the "
    "operator's arguments (numpy object arrays of SymPy expressions for tensors) and returns "
    "the result array, or pass reference=<the same math written with supported operations>."
)


# --------------------------------------------------------------------------------------
# Conversions between torch values and SymPy
# --------------------------------------------------------------------------------------


@functools.cache
def known_constants() -> dict[float, sympy.Expr]:
    """Doubles that are the correctly rounded value of a well-known irrational constant, and
    that constant. torch's composite kernels and decompositions carry such constants as
    doubles (special.ndtr is erf(x * M_SQRT1_2); gelu uses M_2_SQRTPI), and so does
    ``math.pi`` in user code; read back exactly, they keep a derivative such as ndtr's
    exp(-x**2/2)/sqrt(2*pi) exact. Built on first use (a first check may need none)."""
    pi, e, sqrt = sympy.pi, sympy.E, sympy.sqrt
    constants = [
        pi, 2 * pi, pi / 2, pi / 4, 1 / pi, 2 / pi, e, 1 / e,
        sqrt(2), 1 / sqrt(2), sqrt(3), sqrt(pi), 1 / sqrt(pi), 2 / sqrt(pi), sqrt(2 / pi),
        sqrt(2 * pi), 1 / sqrt(2 * pi), sympy.log(2), 1 / sympy.log(2), sympy.log(10),
        1 / sympy.log(10), sympy.log(2 * pi) / 2, sympy.EulerGamma,
    ]  # fmt: skip
    return {float(sympy.N(c, 40)): c for c in constants}


def exact_number(value: Any) -> sympy.Expr:
    """A Python or numpy scalar as an exact SymPy number.

    Floats become the rational that their shortest repr spells (0.1 -> 1/10): that is what
    the user wrote, it is within half an ULP of the float, and it keeps derivatives free
    of 53-bit folding of constants such as pi. A double that rounds a constant from
    :func:`known_constants` (``math.pi``, ``1/math.sqrt(2)``) becomes that constant.
    This is the rule for Python floats and float64 tensor elements; elements of narrower
    float tensors are read with :func:`exact_binary` instead (see :func:`_constant_array`).
    """
    if isinstance(value, (bool, np.bool_)):
        return sympy.true if value else sympy.false
    if isinstance(value, (int, np.integer)):
        return sympy.Integer(int(value))
    value = float(value)
    special = _non_finite(value)
    if special is not None:
        return special
    known = known_constants().get(abs(value))
    if known is not None:
        return known if value > 0 else -known
    return sympy.Rational(repr(value))


def exact_binary(value: float) -> sympy.Expr:
    """A float as the exact binary number it holds: a rational with a power-of-two denominator.

    ``torch.tensor(0.1)`` is float32 and holds 13421773/2**27 = 0.100000001490116..., and that
    is the constant autograd differentiates with, even in float64 code. The shortest-repr
    rule of :func:`exact_number` would read it as 1/10, 1.5e-9 away, or as the double
    0.10000000149011612, which is neither; either makes an exact backward look tens of
    millions of float64 ULPs off.
    """
    special = _non_finite(value)
    if special is not None:
        return special
    return sympy.Rational(*float(value).as_integer_ratio())


def _non_finite(value: float) -> sympy.Expr | None:
    if math.isnan(value):
        return sympy.nan
    if math.isinf(value):
        return sympy.oo if value > 0 else -sympy.oo
    return None


#: Float dtypes whose tensor elements are read as their exact binary value. Each is a subset
#: of float64, so ``.double()`` carries every element over exactly.
_NARROW_FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16})


def _constant_array(tensor: torch.Tensor) -> np.ndarray:
    """A constant tensor as an object array of exact numbers, each exact for the tensor's dtype.

    float64 elements follow :func:`exact_number` (shortest repr, known constants), as Python
    floats do: the derivative keeps 1/10 and pi, within half an ULP. float32, float16 and
    bfloat16 elements are what the code really multiplies by, and rounding them to their
    shortest repr moves them by up to half an ULP *of their dtype*, far more than float64
    resolves, so they are read exactly (:func:`exact_binary`).
    """
    if tensor.is_complex():  # real and imaginary parts, each as a real constant of the part's dtype
        parts = torch.view_as_real(tensor.detach().resolve_conj().resolve_neg())
        real, imag = _constant_array(parts[..., 0]), _constant_array(parts[..., 1])
        return np.asarray(real + sympy.I * imag, dtype=object).reshape(tuple(tensor.shape))
    values = tensor.detach().cpu()
    convert = exact_number
    if values.dtype in _NARROW_FLOATS:
        values, convert = values.double(), exact_binary
    flat = [convert(v) for v in values.reshape(-1).tolist()]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(tuple(tensor.shape))


def _is_condition(e: Any) -> bool:
    # Symbols are Booleans too in SymPy; a condition is a Boolean that is not an expression.
    return isinstance(e, sympy.logic.boolalg.Boolean) and not isinstance(e, sympy.Expr)


def _as_number(e: Any) -> Any:
    """Booleans take part in arithmetic as 1 and 0, as in torch."""
    if _is_condition(e):
        if e is sympy.true:
            return sympy.Integer(1)
        if e is sympy.false:
            return sympy.Integer(0)
        return sympy.Piecewise((1, e), (0, True))
    return e


def _as_condition(e: Any) -> Any:
    if _is_condition(e):
        return e
    return sympy.Ne(e, 0)


# --------------------------------------------------------------------------------------
# The symbolic tensor
# --------------------------------------------------------------------------------------


class _Abort(Exception):
    """Carries a TraceError out of ``__torch_dispatch__``.

    torch's binary operators (``x * y``, ``x @ w``) turn any TypeError raised inside them,
    TraceError included, into NotImplemented, and Python then reports only "unsupported
    operand type(s)". This is not a TypeError, so it gets through; the trace unwraps it.
    """

    def __init__(self, error: TraceError) -> None:
        super().__init__(str(error))
        self.error = error


class SymbolicTensor(torch.Tensor):
    """A tensor whose elements are SymPy expressions (``.sym``, a numpy object array).

    ``stopped_view`` marks a view taken where gradients are stopped (``torch.no_grad()``),
    or a view of such a view. Its ``.sym`` still aliases the base, so that writes through
    it land there as in torch, but whatever reads it sees its elements detached: in torch
    such a view does not require grad.
    """

    sym: np.ndarray
    stopped_view: bool

    @staticmethod
    def __new__(cls, sym: np.ndarray, dtype: torch.dtype) -> "SymbolicTensor":
        sym = np.asarray(sym, dtype=object)
        self = torch.Tensor._make_wrapper_subclass(cls, sym.shape, dtype=dtype, device="cpu", requires_grad=False)
        self.sym = sym
        self.stopped_view = False
        return self

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        try:
            return _dispatch(func, args, kwargs or {})
        except TraceError as error:
            raise _Abort(error) from None
        except TypeError as error:  # a rule called with arguments it does not expect
            raise _Abort(TraceError(f"tracing {func} failed: TypeError: {error}")) from error

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        body = self.sym.item() if self.sym.ndim == 0 else self.sym.tolist()
        return f"SymbolicTensor({body}, dtype={self.dtype})"

    # Python needs a concrete value for these; a symbolic tensor has none.
    def __bool__(self) -> bool:
        raise TraceError(
            f"Python control flow (`if`, `while`, `and`/`or`) on a traced value: {self._short()}. "
            "The branch cannot be chosen without a concrete number. Use torch.where(condition, a, b) "
            "to compute both branches and select elementwise."
        )

    def __float__(self) -> float:
        raise TraceError(
            f"float() or a math.* function on a traced value: {self._short()}. "
            "Use the torch function instead (torch.exp, torch.sqrt, ...), which keeps the value a tensor."
        )

    def __int__(self) -> int:
        raise TraceError(f"int() on a traced value: {self._short()}. Keep the value a tensor and use torch operations.")

    def __index__(self) -> int:
        raise TraceError(f"a traced value used as an index: {self._short()}. Index with constants or integer tensors.")

    def item(self) -> Any:
        raise TraceError(
            f".item() on a traced value: {self._short()}. It turns the tensor into a Python number, "
            "which autograd cannot follow either; keep the value a tensor."
        )

    def tolist(self) -> Any:
        raise TraceError(f".tolist() on a traced value: {self._short()}. Keep the value a tensor.")

    def numpy(self, *args: Any, **kwargs: Any) -> Any:
        raise TraceError(
            f".numpy() on a traced value: {self._short()}. numpy is invisible to autograd; "
            "use the torch functions instead."
        )

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TraceError(
            f"a numpy function was applied to a traced value: {self._short()}. numpy is invisible to "
            "autograd; use the torch function instead (torch.exp, not np.exp)."
        )

    def _short(self) -> str:
        if not self.sym.size:
            return f"an empty tensor of shape {tuple(self.sym.shape)}"
        text = str(self.sym.item() if self.sym.ndim == 0 else self.sym.reshape(-1)[0])
        return text if len(text) < 60 else text[:57] + "..."


class UncompiledMode(TorchDispatchMode):
    """A dispatch mode over code that runs uncompiled (the tracer's, the directional check's).

    torch otherwise wraps a mode's ``__torch_dispatch__`` to keep torch.compile out of it,
    importing ``torch._dynamo`` (over a second) on the mode's first operator.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False


class _Routing(UncompiledMode):
    """While a trace runs: sends every operator on a symbolic tensor to the rules.

    The subclass's own ``__torch_dispatch__`` would do the same, but before calling it torch
    asks whether the argument is a DTensor and imports ``torch.distributed.tensor`` to know
    (a quarter of a second on the first operator of a process). A mode is asked first and
    answers every operator itself, so that question never comes.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        if any(isinstance(a, SymbolicTensor) for a in tree_flatten((args, kwargs))[0]):
            return SymbolicTensor.__torch_dispatch__(func, types, args, kwargs)
        return func(*args, **(kwargs or {}))


def _sym_of(value: Any) -> Any:
    """The SymPy view of one operator argument: arrays for tensors, exact numbers for scalars."""
    if isinstance(value, SymbolicTensor):
        return _detach(value.sym) if value.stopped_view else value.sym
    if isinstance(value, torch.Tensor):
        return _constant_array(value)
    if isinstance(value, (bool, int, float, np.number)):
        return exact_number(value)
    if isinstance(value, complex):
        return exact_number(value.real) + sympy.I * exact_number(value.imag)
    return value


def _wrap(result: Any, dtype: torch.dtype) -> Any:
    if isinstance(result, np.ndarray) or isinstance(result, sympy.Basic):
        arr = np.asarray(result, dtype=object) if isinstance(result, np.ndarray) else _scalar_array(result)
        return SymbolicTensor(arr, _result_dtype(arr, dtype))
    if isinstance(result, (list, tuple)):
        return type(result)(_wrap(r, dtype) for r in result)
    return result


def _scalar_array(e: Any) -> np.ndarray:
    arr = np.empty((), dtype=object)
    arr[()] = e
    return arr


def _result_dtype(arr: np.ndarray, floating: torch.dtype) -> torch.dtype:
    if arr.size and all(_is_condition(e) for e in arr.flat):
        return torch.bool
    return floating


def _floating_dtype(args: Sequence[Any]) -> torch.dtype:
    for a in args:
        if isinstance(a, SymbolicTensor) and a.dtype.is_floating_point:
            return a.dtype
    return torch.get_default_dtype()


# --------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------


def _elementwise(fn: Callable[..., Any], nin: int) -> Callable[..., np.ndarray]:
    ufunc = np.frompyfunc(fn, nin, 1)

    def rule(*args: Any, **_: Any) -> np.ndarray:
        out = ufunc(*[_to_array(a) for a in args[:nin]])
        return out if isinstance(out, np.ndarray) else _scalar_array(out)

    return rule


def _to_array(a: Any) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else _scalar_array(a)


def _num(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a SymPy builder so that boolean operands count as 0/1."""

    @functools.wraps(fn)
    def wrapped(*xs: Any) -> Any:
        return fn(*[_as_number(x) for x in xs])

    return wrapped


def _sigmoid(x):
    return 1 / (1 + sympy.exp(-x))


def _log_ndtr(x):
    return sympy.log(sympy.erfc(-x / sympy.sqrt(2)) / 2)


def _xlogy(x, y):
    return sympy.Piecewise((0, sympy.Eq(x, 0)), (x * sympy.log(y), True))


def _xlog1py(x, y):
    return sympy.Piecewise((0, sympy.Eq(x, 0)), (x * sympy_log1p(y), True))


def _entr(x):
    # -x log x at x = 0 is 0 as a limit, not a separate branch: a branch of its own would make
    # the derivative there 0, where torch (and the limit from the right) says +inf.
    return sympy.Piecewise((-x * sympy.log(x), x >= 0), (-sympy.oo, True))


def _sinc(x):
    # torch.sinc is the normalized sinc; SymPy's sinc(y) = sin(y)/y with sinc(0) = 1.
    return sympy.sinc(sympy.pi * x)


UNARY: dict[str, Callable[[Any], Any]] = {
    "neg": lambda x: -x,
    "positive": lambda x: x,
    "exp": sympy.exp,
    "exp2": lambda x: 2**x,
    "expm1": sympy_expm1,
    "log": sympy.log,
    "log2": lambda x: sympy.log(x) / sympy.log(2),
    "log10": lambda x: sympy.log(x) / sympy.log(10),
    "log1p": sympy_log1p,
    "sqrt": sympy.sqrt,
    "rsqrt": lambda x: 1 / sympy.sqrt(x),
    "reciprocal": lambda x: 1 / x,
    "square": lambda x: x**2,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "asin": sympy.asin,
    "acos": sympy.acos,
    "atan": sympy.atan,
    "sinh": sympy.sinh,
    "cosh": sympy.cosh,
    "tanh": sympy.tanh,
    "asinh": sympy.asinh,
    "acosh": sympy.acosh,
    "atanh": sympy.atanh,
    "sigmoid": _sigmoid,
    "erf": sympy.erf,
    "erfc": sympy.erfc,
    "erfinv": sympy.erfinv,
    "lgamma": sympy.loggamma,
    "digamma": lambda x: sympy.polygamma(0, x),
    "abs": sympy.Abs,
    "sign": sympy.sign,
    "sgn": sympy.sign,
    "relu": lambda x: sympy.Max(x, 0),
    "floor": sympy.floor,
    # Ties round to even in torch; they are a set of measure zero and the derivative is 0 either way.
    "round": lambda x: sympy.floor(x + sympy.Rational(1, 2)),
    "ceil": sympy.ceiling,
    "trunc": lambda x: sympy.sign(x) * sympy.floor(sympy.Abs(x)),
    "frac": lambda x: x - sympy.sign(x) * sympy.floor(sympy.Abs(x)),
    "deg2rad": lambda x: x * sympy.pi / 180,
    "rad2deg": lambda x: x * 180 / sympy.pi,
    "sinc": _sinc,
    "i0": lambda x: sympy.besseli(0, x),
    "special_i0": lambda x: sympy.besseli(0, x),
    "special_i1": lambda x: sympy.besseli(1, x),
    "special_i0e": lambda x: sympy.besseli(0, x) * sympy.exp(-sympy.Abs(x)),
    "special_i1e": lambda x: sympy.besseli(1, x) * sympy.exp(-sympy.Abs(x)),
    "special_bessel_j0": lambda x: sympy.besselj(0, x),
    "special_bessel_j1": lambda x: sympy.besselj(1, x),
    "special_ndtr": lambda x: sympy.erfc(-x / sympy.sqrt(2)) / 2,
    "special_log_ndtr": _log_ndtr,
    "special_ndtri": lambda x: sympy.sqrt(2) * sympy.erfinv(2 * x - 1),
    "special_erfcx": lambda x: sympy.exp(x**2) * sympy.erfc(x),
    "special_entr": _entr,
    "logical_not": lambda x: sympy.Not(_as_condition(x)),
}

BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "mul": operator.mul,
    "div": operator.truediv,
    "true_divide": operator.truediv,
    "pow": lambda a, b: a**b,
    "float_power": lambda a, b: a**b,
    "atan2": sympy.atan2,
    "hypot": lambda a, b: sympy.sqrt(a**2 + b**2),
    "maximum": sympy.Max,
    "minimum": sympy.Min,
    "fmax": sympy.Max,
    "fmin": sympy.Min,
    "xlogy": _xlogy,
    "special_xlog1py": _xlog1py,
    "logaddexp": lambda a, b: sympy.log(sympy.exp(a) + sympy.exp(b)),
    "logaddexp2": lambda a, b: sympy.log(2**a + 2**b) / sympy.log(2),
    "copysign": lambda a, b: sympy.Abs(a) * sympy.Piecewise((-1, b < 0), (1, True)),
    "fmod": lambda a, b: a - b * sympy.sign(a / b) * sympy.floor(sympy.Abs(a / b)),
    "remainder": lambda a, b: a - b * sympy.floor(a / b),
    "eq": sympy.Eq,
    "ne": sympy.Ne,
    "gt": sympy.Gt,
    "ge": sympy.Ge,
    "lt": sympy.Lt,
    "le": sympy.Le,
    "logical_and": lambda a, b: sympy.And(_as_condition(a), _as_condition(b)),
    "logical_or": lambda a, b: sympy.Or(_as_condition(a), _as_condition(b)),
    "logical_xor": lambda a, b: sympy.Xor(_as_condition(a), _as_condition(b)),
}

#: prims operators whose arguments and meaning are those of the aten operator of the same name.
_PRIMS_AS_ATEN = frozenset(UNARY) | frozenset(BINARY) | {"add", "sub", "where"}

_COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le", "logical_and", "logical_or", "logical_xor", "logical_not"}


def _with_alpha(op: Callable[[Any, Any], Any]) -> Callable[..., np.ndarray]:
    rule = _elementwise(_num(op), 2)

    def with_alpha(a, b, alpha=1, **_):
        return rule(a, b if alpha == 1 else _elementwise(operator.mul, 2)(b, alpha))

    return with_alpha


#: torch.div(a, b, rounding_mode=...): the quotient, then this rounding.
_ROUNDING_MODES: dict[Any, Callable[[Any], Any]] = {
    None: lambda q: q,
    "floor": sympy.floor,
    "trunc": lambda q: sympy.sign(q) * sympy.floor(sympy.Abs(q)),
}


def _div(a, b, rounding_mode=None):
    rounding = _ROUNDING_MODES[rounding_mode]
    return _elementwise(_num(lambda x, y: rounding(x / y)), 2)(a, b)


def _rsub(a, b, alpha=1, **_):
    return _with_alpha(operator.sub)(b, a, alpha)


def _where(cond, a, b):
    return _elementwise(lambda c, x, y: _piecewise_select(c, x, y), 3)(cond, a, b)


def _piecewise_select(c, x, y):
    c = _as_condition(c)
    if c is sympy.true:
        return x
    if c is sympy.false:
        return y
    return sympy.Piecewise((_as_number(x), c), (_as_number(y), True))


def _clamp(x, min=None, max=None):
    out = x
    if min is not None:
        out = _elementwise(sympy.Max, 2)(out, min)
    if max is not None:
        out = _elementwise(sympy.Min, 2)(out, max)
    return out


def _softplus(x, beta=1, threshold=20):
    # torch switches to the identity above the threshold; so must the reference, or a
    # correct softplus would "fail" by 2e-9 at x = 20.5.
    def one(v):
        return sympy.Piecewise((v, v * beta > threshold), (sympy_log1p(sympy.exp(v * beta)) / beta, True))

    return _elementwise(one, 1)(x)


def _polygamma(n, x):
    return _elementwise(lambda v: sympy.polygamma(n, v), 1)(x)


def _logit(x, eps=None):
    if eps is not None:
        x = _clamp(x, eps, 1 - eps)
    return _elementwise(lambda v: sympy.log(v / (1 - v)), 1)(x)


def _threshold(x, threshold, value):
    return _elementwise(lambda v: sympy.Piecewise((v, v > threshold), (value, True)), 1)(x)


def _leaky_relu(x, negative_slope=sympy.Rational(1, 100)):
    return _elementwise(lambda v: sympy.Piecewise((v, v > 0), (v * negative_slope, True)), 1)(x)


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        k = sympy.sqrt(2 / sympy.pi)
        fn = lambda v: v / 2 * (1 + sympy.tanh(k * (v + sympy.Rational(44715, 1000000) * v**3)))  # noqa: E731
    else:
        fn = lambda v: v / 2 * (1 + sympy.erf(v / sympy.sqrt(2)))  # noqa: E731
    return _elementwise(fn, 1)(x)


def _silu(x):
    return _elementwise(lambda v: v * _sigmoid(v), 1)(x)


def _elu(x, alpha=1, scale=1, input_scale=1):
    return _elementwise(
        lambda v: sympy.Piecewise((scale * v, v > 0), (alpha * scale * sympy_expm1(v * input_scale), True)), 1
    )(x)


def _hardtanh(x, min_val=-1, max_val=1):
    return _clamp(x, min_val, max_val)


# ---- reductions ---------------------------------------------------------------------


def _dims(arr: np.ndarray, dim: Any) -> tuple[int, ...]:
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return tuple(range(arr.ndim))
    dims = [dim] if isinstance(dim, int) else list(dim)
    rank = max(arr.ndim, 1)  # a 0-d tensor takes dim 0 or -1, as in torch
    for d in dims:
        if not -rank <= d < rank:  # the kernel checks this in torch, after dispatch
            raise IndexError(f"Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], but got {d})")
    return tuple(sorted(d % rank for d in dims)) if arr.ndim else ()


def _reduce(arr: Any, dim: Any, keepdim: bool, combine: Callable[[list], Any]) -> np.ndarray:
    arr = _to_array(arr)
    dims = _dims(arr, dim)
    keep = [d for d in range(arr.ndim) if d not in dims]
    moved = arr.transpose(keep + list(dims))
    # The row length is spelled out: reshape cannot infer -1 when a kept dim is 0.
    rows = moved.reshape(moved.shape[: len(keep)] + (math.prod(arr.shape[d] for d in dims),))
    out = np.empty(rows.shape[:-1], dtype=object)
    for index in np.ndindex(*out.shape):
        out[index] = combine([_as_number(e) for e in rows[index]])
    if keepdim:
        out = out.reshape(tuple(1 if d in dims else s for d, s in enumerate(arr.shape)))
    return out


def _add_all(terms):
    return sympy.Add(*terms)


def _sum(x, dim=None, keepdim=False, dtype=None):
    return _reduce(x, dim, keepdim, _add_all)


def _mean(x, dim=None, keepdim=False, dtype=None):
    return _reduce(x, dim, keepdim, lambda t: sympy.Add(*t) / len(t))


def _prod(x, dim=None, keepdim=False, dtype=None):
    return _reduce(x, dim, keepdim, lambda t: sympy.Mul(*t))


def _nonempty(combine: Callable[[list], Any], op: str) -> Callable[[list], Any]:
    """SymPy's Max() of nothing is -oo; torch refuses, as it has no identity to return."""

    def checked(t: list) -> Any:
        if not t:
            raise IndexError(f"{op}(): Expected reduction dim to have non-zero size.")
        return combine(t)

    return checked


def _amax(x, dim=(), keepdim=False):
    return _reduce(x, dim, keepdim, _nonempty(lambda t: sympy.Max(*t), "amax"))


def _amin(x, dim=(), keepdim=False):
    return _reduce(x, dim, keepdim, _nonempty(lambda t: sympy.Min(*t), "amin"))


def _logsumexp(x, dim, keepdim=False):
    # log of an empty sum is -inf in torch; SymPy's log(0) is complex infinity.
    return _reduce(x, dim, keepdim, lambda t: sympy.log(sympy.Add(*[sympy.exp(v) for v in t])) if t else -sympy.oo)


def _vector_norm(x, ord=2, dim=None, keepdim=False, dtype=None):
    ord = float(ord) if not isinstance(ord, sympy.Basic) else ord

    def norm(t):
        if ord == math.inf:
            return sympy.Max(*[sympy.Abs(v) for v in t])
        if ord == -math.inf:
            return sympy.Min(*[sympy.Abs(v) for v in t])
        if ord == 0:
            return sympy.Add(*[sympy.Piecewise((0, sympy.Eq(v, 0)), (1, True)) for v in t])
        p = exact_number(ord)
        if p == 2:
            return sympy.sqrt(sympy.Add(*[v**2 for v in t]))
        if p == 1:
            return sympy.Add(*[sympy.Abs(v) for v in t])
        return sympy.Add(*[sympy.Abs(v) ** p for v in t]) ** (1 / p)

    return _reduce(x, dim, keepdim, norm)


def _var(x, dim, correction, keepdim):
    def variance(t):
        if not t:  # torch's variance of nothing is nan, not the 0/-1 of the formula
            return sympy.nan
        mean = sympy.Add(*t) / len(t)
        return sympy.Add(*[(v - mean) ** 2 for v in t]) / (len(t) - correction)

    return _reduce(x, dim, keepdim, variance)


def _softmax(x, dim, half_to_float=False):
    return _along(x, dim, lambda t: [sympy.exp(v) / sympy.Add(*[sympy.exp(u) for u in t]) for v in t])


def _log_softmax(x, dim, half_to_float=False):
    return _along(x, dim, lambda t: [v - sympy.log(sympy.Add(*[sympy.exp(u) for u in t])) for v in t])


def _along(x, dim, transform):
    """Apply ``transform`` (a list of expressions to a list of the same length) along one dim."""
    arr = np.moveaxis(_to_array(x), dim, -1)
    out = np.empty(arr.shape, dtype=object)
    for index in np.ndindex(*arr.shape[:-1]):
        for k, v in enumerate(transform(list(arr[index]))):
            out[index + (k,)] = v
    return np.moveaxis(out, -1, dim)


def _cumulative(combine):
    def rule(x, dim, dtype=None):
        arr = np.moveaxis(_to_array(x), dim, -1)
        out = np.empty(arr.shape, dtype=object)
        for index in np.ndindex(*arr.shape[:-1]):
            acc = None
            for k, v in enumerate(arr[index]):
                acc = v if acc is None else combine(acc, v)
                out[index + (k,)] = acc
        return np.moveaxis(out, -1, dim)

    return rule


# ---- linear algebra ------------------------------------------------------------------


def _matmul(a, b):
    a, b = _to_array(a), _to_array(b)
    out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]), dtype=object)
    a = np.broadcast_to(a, out.shape[:-2] + a.shape[-2:])
    b = np.broadcast_to(b, out.shape[:-2] + b.shape[-2:])
    for index in np.ndindex(*out.shape):
        *batch, i, j = index
        batch = tuple(batch)
        out[index] = sympy.Add(*[a[batch + (i, k)] * b[batch + (k, j)] for k in range(a.shape[-1])])
    return out


def _dot(a, b):
    return _scalar_array(sympy.Add(*[x * y for x, y in zip(_to_array(a), _to_array(b))]))


def _mv(a, b):
    return _matmul(a, _to_array(b)[:, None])[:, 0]


def _addmm(bias, a, b, beta=1, alpha=1):
    product = _matmul(a, b)
    return _elementwise(lambda c, p: beta * c + alpha * p, 2)(bias, product)


# ---- views and data movement ----------------------------------------------------------


def _shape(arr: np.ndarray, size: Sequence[int]) -> tuple[int, ...]:
    size = [int(s) for s in size]
    return tuple(size)


def _view(x, size):
    return _to_array(x).reshape(_shape(x, size))


def _expand(x, size, implicit=False):
    arr = _to_array(x)
    size = list(size)
    lead = len(size) - arr.ndim
    target = [arr.shape[i - lead] if s == -1 else s for i, s in enumerate(size)]
    return np.broadcast_to(arr, tuple(target))


def _select(x, dim, index):
    arr = _to_array(x)
    # The trailing Ellipsis keeps a 0-d result a view, not the bare element, so that
    # `y[0] = v` (select, then copy_) writes through to y as in torch.
    return arr[(slice(None),) * (dim % arr.ndim) + (index, Ellipsis)]


def _slice(x, dim=0, start=None, end=None, step=1):
    arr = _to_array(x)
    dim %= arr.ndim
    n = arr.shape[dim]
    start = 0 if start is None else start
    end = n if end is None else end
    start, end = (max(min(v + n if v < 0 else v, n), 0) for v in (start, end))
    return arr[(slice(None),) * dim + (slice(start, end, step),)]


def _index(x, indices):
    return _to_array(x)[_index_key(indices)]


def _index_key(indices) -> tuple[Any, ...]:
    """A numpy index from aten's ``Tensor?[]`` indices (object arrays of SymPy integers or booleans)."""
    return tuple(slice(None) if i is None else _concrete_index(i) for i in indices)


def _concrete_index(i: Any) -> np.ndarray:
    arr = _to_array(i)
    if any(isinstance(e, sympy.Basic) and e.free_symbols for e in arr.flat):
        raise TraceError(
            "a traced value used as an index (x[i] or a mask x[x > 0]): the selected elements depend on "
            "concrete values. Index with constants or integer tensors, or use torch.where(mask, x, 0)."
        )
    if arr.size and all(_is_condition(e) or isinstance(e, (bool, np.bool_)) for e in arr.flat):
        return np.array([bool(e) for e in arr.flat], dtype=bool).reshape(arr.shape)
    return np.array([int(e) for e in arr.flat], dtype=np.int64).reshape(arr.shape)


def _index_put(x, indices, values, accumulate=False):
    out = _to_array(x).copy()
    return _index_put_into(out, indices, values, accumulate)


def _index_put_into(out, indices, values, accumulate=False):
    key = _index_key(indices)
    values = _to_array(values)
    if accumulate:
        out[key] = out[key] + values
    else:
        out[key] = values
    return out


def _gather(x, dim, index, sparse_grad=False):
    arr, idx = _to_array(x), _concrete_index(index)
    dim %= max(arr.ndim, 1)
    # torch lets the index be smaller than x in the other dims; numpy wants them equal.
    arr = arr[tuple(slice(None) if d == dim else slice(0, n) for d, n in enumerate(idx.shape))]
    return np.take_along_axis(arr, idx, axis=dim)


def _broadcast_in_dim(x, shape, broadcast_dimensions):
    arr = _to_array(x)
    placed = [1] * len(shape)
    for source, target in enumerate(broadcast_dimensions):
        placed[target] = arr.shape[source]
    return np.broadcast_to(arr.reshape(placed), tuple(shape))


def _squeeze(x, dim=None):
    arr = _to_array(x)
    if dim is None:
        return arr.squeeze()
    dims = [dim] if isinstance(dim, int) else list(dim)
    dims = tuple(d % arr.ndim for d in dims if arr.ndim and arr.shape[d % arr.ndim] == 1)
    return arr.squeeze(dims) if dims else arr


def _unsqueeze(x, dim):
    arr = _to_array(x)
    return np.expand_dims(arr, dim % (arr.ndim + 1))


def _permute(x, dims):
    arr = _to_array(x)
    return arr.transpose([d % arr.ndim for d in dims])


def _transpose(x, dim0, dim1):
    arr = _to_array(x)
    if arr.ndim < 2:
        return arr
    return np.swapaxes(arr, dim0, dim1)


def _t(x):
    arr = _to_array(x)
    return arr.T if arr.ndim == 2 else arr


def _cat(tensors, dim=0):
    # torch.cat skips 1-d empty tensors whatever the other shapes (a legacy rule); all skipped, the result is one.
    arrays = [_to_array(t) for t in tensors if _to_array(t).shape != (0,)]
    return np.concatenate(arrays, axis=dim) if arrays else np.empty((0,), dtype=object)


def _stack(tensors, dim=0):
    return np.stack([_to_array(t) for t in tensors], axis=dim)


def _split(x, split_size, dim=0):
    arr = _to_array(x)
    n = arr.shape[dim]
    sizes = [split_size] * (n // split_size) + ([n % split_size] if n % split_size else [])
    return _split_with_sizes(arr, sizes, dim)


def _split_with_sizes(x, split_sizes, dim=0):
    arr = _to_array(x)
    bounds = np.cumsum([0] + list(split_sizes))
    return [np.take(arr, range(a, b), axis=dim) for a, b in zip(bounds[:-1], bounds[1:])]


def _unbind(x, dim=0):
    arr = _to_array(x)
    return [_select(arr, dim, i) for i in range(arr.shape[dim])]


def _copy(x, *_, **__):
    return _to_array(x).copy()


def _like(value):
    def rule(x, *_, **__):
        return np.full(_to_array(x).shape, exact_number(value), dtype=object)

    return rule


def _full_like(x, fill_value, *_, **__):
    return np.full(_to_array(x).shape, fill_value, dtype=object)


def _new(value):
    def rule(x, size, *_, **__):
        return np.full(tuple(size), exact_number(value), dtype=object)

    return rule


def _new_full(x, size, fill_value, *_, **__):
    return np.full(tuple(size), fill_value, dtype=object)


def _masked_fill(x, mask, value):
    return _where(mask, value, x)


def _flip(x, dims):
    # torch.flip copies; a numpy view would let a later in-place op write through to x.
    return np.flip(_to_array(x), axis=tuple(dims)).copy()


def _roll(x, shifts, dims=()):
    return np.roll(_to_array(x), shifts, axis=tuple(dims) if dims else None)


def _repeat(x, repeats):
    arr = _to_array(x)
    lead = len(repeats) - arr.ndim
    return np.tile(arr.reshape((1,) * lead + arr.shape), tuple(repeats))


def _diagonal(x, offset=0, dim1=0, dim2=1):
    return np.diagonal(_to_array(x), offset, dim1, dim2)


def _refuse(what: str, fix: str) -> Callable[..., Any]:
    def rule(*_, **__):
        raise TraceError(f"{what}: {fix}")

    return rule


_NEEDS_VALUE = _refuse(
    "an operation needs the concrete value of a traced tensor (Python `if`, .item(), float(), math.*)",
    "use torch.where(condition, a, b) for branches and keep values as tensors",
)


def _needs_order(op: str) -> Callable[..., Any]:
    return _refuse(
        f"torch.{op} depends on the ordering of concrete values, which a symbolic trace does not have",
        "use torch.amax/torch.amin (or torch.max(x) without dim) for the values; indices have no derivative",
    )


#: Operators whose result is chosen by comparing concrete values, and how the user spells them.
_ORDER_DEPENDENT = {
    **{op: op for op in ("sort", "argsort", "msort", "argmax", "argmin", "topk", "kthvalue", "median")},
    **{op: op for op in ("nanmedian", "mode", "nonzero", "unique_consecutive")},
    "max.dim": "max(x, dim)",
    "min.dim": "min(x, dim)",
    "_unique2": "unique",
    "unique_dim": "unique",
}


def _detach(x):
    return _elementwise(detached, 1)(x)


def _dtype_cast(x, *args, dtype=None, **_):
    arr = _to_array(x)
    if dtype is not None and (dtype.is_floating_point or dtype.is_complex) and arr.size:
        # to a real dtype torch keeps the real part (and warns); to a complex one, the value
        keep = _as_number if dtype.is_complex else (lambda e: sympy.re(_as_number(e)))
        return np.frompyfunc(keep, 1, 1)(arr) if arr.ndim else _scalar_array(keep(arr.item()))
    return arr.copy()


# Complex values: SymPy expressions with I, in the tracer's real symbols (a complex input is
# traced as its real and imaginary parts).


def _view_as_real(z):
    arr = _to_array(z)
    return np.stack([np.frompyfunc(sympy.re, 1, 1)(arr), np.frompyfunc(sympy.im, 1, 1)(arr)], axis=-1) \
        if arr.ndim else np.array([sympy.re(arr.item()), sympy.im(arr.item())], dtype=object)


def _view_as_complex(x):
    arr = _to_array(x)
    return np.asarray(arr[..., 0] + sympy.I * arr[..., 1], dtype=object)


_COMPLEX_RULES: dict[str, Callable[..., Any]] = {
    "complex": _elementwise(lambda re, im: re + sympy.I * im, 2),
    "polar": _elementwise(lambda r, theta: r * sympy.exp(sympy.I * theta), 2),
    "view_as_real": _view_as_real,
    "view_as_complex": _view_as_complex,
    "real": _elementwise(sympy.re, 1),
    "imag": _elementwise(sympy.im, 1),
    "_conj": _elementwise(sympy.conjugate, 1),
    "conj": _elementwise(sympy.conjugate, 1),
    "conj_physical": _elementwise(sympy.conjugate, 1),
    "_conj_physical": _elementwise(sympy.conjugate, 1),
    "resolve_conj": lambda x: _to_array(x).copy(),
    "resolve_neg": lambda x: _to_array(x).copy(),
    "_neg_view": _elementwise(operator.neg, 1),
    "angle": _elementwise(lambda z: sympy.atan2(sympy.im(z), sympy.re(z)), 1),
}


_SPECIAL_RULES: dict[str, Callable[..., Any]] = {
    "add": _with_alpha(operator.add),
    "sub": _with_alpha(operator.sub),
    "rsub": _rsub,
    "round.decimals": lambda x, decimals=0: _elementwise(
        lambda v: UNARY["round"](v * sympy.Integer(10) ** decimals) / sympy.Integer(10) ** decimals, 1
    )(x),
    "div.Tensor_mode": _div,
    "div.Scalar_mode": _div,
    "log_sigmoid": _elementwise(lambda x: -sympy_log1p(sympy.exp(-x)), 1),
    "logcumsumexp": _cumulative(lambda acc, v: sympy.log(sympy.exp(acc) + sympy.exp(v))),
    "where": _where,
    "clamp": _clamp,
    "clamp_min": lambda x, m: _clamp(x, min=m),
    "clamp_max": lambda x, m: _clamp(x, max=m),
    "softplus": _softplus,
    "polygamma": _polygamma,
    "special_polygamma": _polygamma,
    "logit": _logit,
    "threshold": _threshold,
    "leaky_relu": _leaky_relu,
    "gelu": _gelu,
    "silu": _silu,
    "elu": _elu,
    "hardtanh": _hardtanh,
    "sum": _sum,
    "mean": _mean,
    "prod": _prod,
    "amax": _amax,
    "amin": _amin,
    "max": _amax,
    "min": _amin,
    "logsumexp": _logsumexp,
    "linalg_vector_norm": _vector_norm,
    "_softmax": _softmax,
    "_log_softmax": _log_softmax,
    "cumsum": _cumulative(operator.add),
    "cumprod": _cumulative(operator.mul),
    "mm": _matmul,
    "bmm": _matmul,
    "matmul": _matmul,
    "dot": _dot,
    "mv": _mv,
    "addmm": _addmm,
    "view": _view,
    "_unsafe_view": _view,
    "reshape": _view,
    "expand": _expand,
    "select": _select,
    "slice": _slice,
    "index": _index,
    "index_put": _index_put,
    "gather": _gather,
    "prims::broadcast_in_dim": _broadcast_in_dim,
    "prims::sum": lambda x, dims, output_dtype=None: _sum(x, dims),
    "squeeze": _squeeze,
    "unsqueeze": _unsqueeze,
    "permute": _permute,
    "transpose": _transpose,
    "t": _t,
    "cat": _cat,
    "stack": _stack,
    "split": _split,
    "split_with_sizes": _split_with_sizes,
    "unbind": _unbind,
    "flip": _flip,
    "roll": _roll,
    "repeat": _repeat,
    "diagonal": _diagonal,
    "clone": _copy,
    "alias": lambda x: _to_array(x),
    "lift_fresh": lambda x: _to_array(x),
    "_to_copy": _dtype_cast,
    "to": _dtype_cast,
    "prims::var": lambda x, dims, correction=1, output_dtype=None: _var(x, dims, correction, False),
    "var": lambda x, dim=None, correction=None, keepdim=False: _var(x, dim, 1 if correction is None else correction, keepdim),
    "detach": _detach,
    "zeros_like": _like(0),
    "ones_like": _like(1),
    "empty_like": _like(0),
    "full_like": _full_like,
    "new_zeros": _new(0),
    "new_ones": _new(1),
    "new_empty": _new(0),
    "new_full": _new_full,
    "masked_fill": _masked_fill,
    "_local_scalar_dense": _NEEDS_VALUE,
    "is_nonzero": _NEEDS_VALUE,
    **{op: _needs_order(spelled) for op, spelled in _ORDER_DEPENDENT.items()},
}

_BUILTIN_RULES: dict[str, Callable[..., Any]] = {
    **{name: _elementwise(_num(fn) if name not in _COMPARISONS else fn, 1) for name, fn in UNARY.items()},
    **{name: _elementwise(_num(fn), 2) for name, fn in BINARY.items()},
    **_SPECIAL_RULES,
    **_COMPLEX_RULES,
}

#: Rules by ATen operator name ("exp", "add") or full overload name ("add.Tensor").
#: A rule receives the operator's arguments with tensors as numpy object arrays of SymPy
#: expressions and Python scalars as exact SymPy numbers, and returns an object array (or a
#: list of them). The user layer comes first, so a registration overrides a built-in rule.
TORCH_TO_SYMPY: collections.ChainMap[str, Callable[..., Any]] = collections.ChainMap({}, _BUILTIN_RULES)


#: How many rules were registered: traces cached before a registration are stale.
rule_registrations = 0


def register_torch_op(op: Any, rule: Callable[..., Any], *, override: bool = False) -> "Registration":
    """Teach the tracer one torch operator.

    Args:
        op: the operator, as ``torch.ops.aten.foo``, ``torch.ops.aten.foo.default``,
            or its name ``"foo"`` / ``"aten::foo"`` / ``"foo.Tensor"`` (``"prims::foo"`` for
            another namespace). A rule for ``foo`` also serves the in-place ``foo_``.
        rule: called with the operator's arguments, tensors given as numpy object arrays
            of SymPy expressions, numbers as exact SymPy numbers, and dims, sizes and
            flags as Python ints and bools; returns the result as such an array.
        override: replace autocheck's own rule for the operator without a warning.

    Returns:
        The registration: ``.undo()`` puts back the rule that was there before (autocheck's
        own, or none), and so does leaving it as a ``with`` block.

    Raises:
        TypeError: ``rule`` is not callable, or ``op`` is neither an operator nor a name.
        ValueError: torch has no operator (or overload) of that name.

    Warns:
        UserWarning: ``op`` has a rule of autocheck's own and ``override`` is False: the
            registration replaces it (``derivative(torch.sinc)`` follows the new rule).

    Example:
        >>> import sympy, torch, autocheck
        >>> with autocheck.register_torch_op("aten::sinc", lambda x: x, override=True):
        ...     autocheck.derivative(torch.sinc)
        1
        >>> autocheck.derivative(torch.sinc)
        pi*(cos(pi*x)/(pi*x) - sin(pi*x)/(pi**2*x**2))
    """
    if not callable(rule):
        raise TypeError(
            f"register_torch_op: rule must be callable (a function of the operator's arguments that "
            f"returns an object array of SymPy expressions), got rule={rule!r}"
        )
    key = _op_key(op)
    if key in _BUILTIN_RULES and not override:
        warnings.warn(
            f"register_torch_op: {key!r} has a rule of autocheck's own, which this registration replaces; "
            "pass override=True to say so, or use the registration as a with block to put the rule back after",
            UserWarning,
            stacklevel=2,
        )
    user = TORCH_TO_SYMPY.maps[0]
    registration = Registration(key, user.get(key), key in user)
    user[key] = rule
    _registered()
    return registration


@dataclass
class Registration:
    """One :func:`register_torch_op`; undo it with ``.undo()`` or by leaving a ``with`` block."""

    key: str
    previous: Callable[..., Any] | None
    had_previous: bool
    undone: bool = False

    def undo(self) -> None:
        """Put back the rule that was there before this registration."""
        if self.undone:
            return
        user = TORCH_TO_SYMPY.maps[0]
        if self.had_previous:
            user[self.key] = self.previous
        else:
            user.pop(self.key, None)
        self.undone = True
        _registered()

    def __enter__(self) -> "Registration":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.undo()


def _registered() -> None:
    global rule_registrations
    rule_registrations += 1


def _op_key(op: Any) -> str:
    """The table key of an operator: ``name`` or ``name.overload``, ``namespace::`` outside aten."""
    if isinstance(op, torch._ops.OpOverload):
        qualified, overload = op._schema.name, op._overloadname
    elif isinstance(op, torch._ops.OpOverloadPacket):
        qualified, overload = op._qualified_op_name, ""
    elif isinstance(op, str) and op.strip():
        qualified, _, overload = op.strip().partition(".")
        if "::" not in qualified:
            qualified = f"aten::{qualified}"
    else:
        raise TypeError(
            f"register_torch_op: op must be an ATen operator such as torch.ops.aten.sinc or a name such as "
            f"'aten::sinc', got op={op!r}"
        )
    namespace, name = qualified.split("::", 1)
    packet = getattr(getattr(torch.ops, namespace, None), name, None) if namespace.isidentifier() else None
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        raise ValueError(
            f"register_torch_op: torch has no operator {qualified!r} (got op={op!r}); give the ATen name that "
            "the trace error names, e.g. 'aten::sinc', or the operator itself, torch.ops.aten.sinc"
        )
    if overload and overload != "default" and overload not in packet.overloads():
        raise ValueError(
            f"register_torch_op: {qualified} has no overload {overload!r} (got op={op!r}); "
            f"it has {sorted(packet.overloads())}"
        )
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]  # dispatch looks in-place operators up under their out-of-place name
    key = name if namespace == "aten" else f"{namespace}::{name}"
    return f"{key}.{overload}" if overload and overload != "default" else key


# --------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------


def _dispatch(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
    out = _run_operator(func, args, kwargs)
    if not _is_in_place(func):  # in-place writes stop gradients in _write_into
        out = _stop_gradients(func, args, out)
    return out


def _is_in_place(func: torch._ops.OpOverload) -> bool:
    name = func._schema.name.split("::")[1]
    return name.endswith("_") and not name.endswith("__") and name not in ("_",)


def _run_operator(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
    namespace, name = func._schema.name.split("::")
    overload = func._overloadname
    in_place = _is_in_place(func)
    base = name[:-1] if in_place else name
    if base == "copy":
        return _copy_into(args[0], args[1])
    if base == "fill":
        return _fill_into(args[0], args[1])
    if namespace != "aten":
        base = f"{namespace}::{base}"
    rule = TORCH_TO_SYMPY.get(f"{base}.{overload}") or TORCH_TO_SYMPY.get(base)
    if rule is None and namespace == "prims" and name in _PRIMS_AS_ATEN:
        # torch's decompositions (layer_norm, ...) end in prims; the elementwise ones mean
        # exactly what the aten op of the same name means. Others differ (prims.transpose
        # takes a permutation), so they need their own "prims::" rule.
        rule = TORCH_TO_SYMPY.get(name)
    if rule is None:
        return _decompose(func, args, kwargs)
    dtype = _floating_dtype(args)
    complex_dtypes = _complex_result_dtypes(func, args, kwargs)
    structural = _structural_arguments(func)
    # A view must alias its base's elements, detached or not: _stop_gradients marks it instead.
    raw = func.is_view
    sym_args = [a if i in structural else _sym_of_argument(a, raw) for i, a in enumerate(args)]
    sym_kwargs = {
        k: v if k in structural else _sym_of_argument(v, raw)
        for k, v in kwargs.items()
        if k not in ("dtype", "layout", "device", "pin_memory", "memory_format", "non_blocking")
    }
    if "dtype" in kwargs and base in ("_to_copy", "to"):
        sym_kwargs["dtype"] = kwargs["dtype"]
    plain_name = base.rpartition("::")[2]
    # Complex operations stay plain SymPy (the real and imaginary parts are read off them)
    if _MARK.get() and complex_dtypes is None and (plain_name in MARKED_OPS or f"{plain_name}.{overload}" in MARKED_OPS):
        result = _marked(plain_name, rule, sym_args, sym_kwargs)
    else:
        result = rule(*sym_args, **sym_kwargs)
    if in_place and name in _RESHAPE_IN_PLACE:
        return _reshape_in_place(func, args, kwargs, result)
    if in_place:
        return _write_into(args[0], result, name)
    out = _wrap(result, dtype) if complex_dtypes is None else _wrap_as(result, complex_dtypes)
    if base in ("_to_copy", "to") and kwargs.get("dtype") is not None and isinstance(out, SymbolicTensor):
        out = SymbolicTensor(out.sym, kwargs["dtype"])
        casts = _CASTS.get()
        if casts is not None and kwargs["dtype"].is_floating_point:
            casts.append(kwargs["dtype"])
    return out


_MAKES_COMPLEX = {"aten::complex", "aten::polar", "aten::view_as_complex"}


def _complex_result_dtypes(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
    """Where a complex tensor takes part: the dtypes torch gives the results (abs and angle of
    complex values are real, a product of real and complex is complex), from running the
    operator on meta tensors; None where no complex tensor takes part."""
    flat = tree_flatten((args, kwargs))[0]
    leaves = [a for a in flat if isinstance(a, torch.Tensor)]
    if not any(a.is_complex() for a in leaves) and func.name() not in _MAKES_COMPLEX \
            and not any(isinstance(a, complex) for a in flat):
        return None

    def meta(a: Any) -> Any:
        return torch.empty(a.shape, dtype=a.dtype, device="meta") if isinstance(a, torch.Tensor) else a

    try:
        out = func(*tree_map(meta, args), **tree_map(meta, kwargs))
    except NotImplementedError:  # no meta kernel: the complex dtype taking part
        return next((a.dtype for a in leaves if a.is_complex()), torch.complex128)
    except RuntimeError as error:  # torch refuses the operation itself (a float64 @ complex128 product)
        raise TraceError(f"{func} fails in torch on these dtypes: {str(error).splitlines()[0]}") from None
    return tree_map(lambda o: o.dtype if isinstance(o, torch.Tensor) else None, out)


def _wrap_as(result: Any, dtypes: Any) -> Any:
    """:func:`_wrap` with the result dtypes given (one, or one per result)."""
    if isinstance(dtypes, torch.dtype):
        return _wrap(result, dtypes)
    if isinstance(result, (list, tuple)) and isinstance(dtypes, (list, tuple)):
        return type(result)(_wrap_as(r, d) if d is not None else r for r, d in zip(result, dtypes))
    return _wrap(result, torch.get_default_dtype())


def _sym_of_argument(value: Any, raw: bool = False) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_sym_of_argument(v, raw) for v in value)
    if raw and isinstance(value, SymbolicTensor):
        return value.sym
    return _sym_of(value)


#: Schema types that describe the shape of an operation (dims, sizes, indices, flags), not a
#: value in the mathematics: rules get them as plain Python ints and bools, as ``np.reshape``
#: and ``isinstance(dim, int)`` expect. A ``Scalar``/``float`` argument becomes an exact number.
_STRUCTURAL_TYPE_KINDS = frozenset({"IntType", "SymIntType", "BoolType", "StringType"})


@functools.lru_cache(maxsize=None)
def _structural_arguments(func: torch._ops.OpOverload) -> frozenset[Any]:
    """Positions and names of ``func``'s structural arguments."""
    out: set[Any] = set()
    for position, argument in enumerate(func._schema.arguments):
        kind = argument.type
        while kind.kind() in ("OptionalType", "ListType"):
            kind = kind.getElementType()
        if kind.kind() in _STRUCTURAL_TYPE_KINDS:
            out.add(argument.name)
            if not argument.kwarg_only:
                out.add(position)
    return frozenset(out)


def _decompose(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
    decomposition = decomposition_table.get(func)
    if decomposition is None:
        name = str(func).removesuffix(".default")
        raise TraceError(
            f"no rule to trace the torch operation {name} ({func._schema.name}). "
            + _FIX_REGISTER.format(op=func._schema.name)
        )
    return decomposition(*args, **kwargs)


def _write_into(target: Any, result: Any, op: str = "copy_") -> Any:
    if not isinstance(target, SymbolicTensor):
        raise TraceError(
            f"an in-place operation ({op}) writes a traced value into a constant tensor. Make the "
            "tensor from a traced one (x.new_zeros(3), torch.zeros_like(x), x.clone()), or build the "
            "result out of place (torch.stack, torch.cat, torch.where)"
        )
    values = _to_array(result)
    if _gradient_stopped():
        values = _STOPPED_WRITE(target.sym, values)
    if not target.sym.flags.writeable:  # a broadcast view (expand): one element stands for many
        raise TraceError(
            f"an in-place operation ({op}) writes into a broadcast view (a tensor made by expand), which the "
            "symbolic tracer cannot follow; write it with a copy first (x.expand(...).clone()). torch.func.hessian "
            "(jacfwd over jacrev) does this inside: check the function it transforms with order=2 (and "
            "modes=('rev', 'fwd') for forward over reverse, as hessian computes it) instead"
        )
    target.sym[...] = values
    return target


def _reshape_in_place(func: torch._ops.OpOverload, args: tuple, kwargs: dict, result: Any) -> Any:
    """``x.squeeze_()`` and friends: change the wrapper's own sizes, then its elements.

    C++ callers ignore what an in-place op returns and keep using ``self`` (matmul of a
    vector is ``mm(a.unsqueeze(0), b).squeeze_(0)``), so the tensor object itself must change.
    These ops only touch sizes and strides, so torch's own kernel can run on the storage-less
    wrapper once the Python dispatch key is out of the way.
    """
    target = args[0]
    if not isinstance(target, SymbolicTensor):
        return _write_into(target, result, func._schema.name)
    with torch._C._ExcludeDispatchKeyGuard(_PYTHON_KEYS):
        func(*args, **kwargs)
    target.sym = np.array(_to_array(result), dtype=object)
    return target


_PYTHON_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.Python) | torch._C.DispatchKeySet(
    torch._C.DispatchKey.PythonTLSSnapshot
)

#: In-place operations with a rule that change a tensor's shape.
_RESHAPE_IN_PLACE = frozenset({"squeeze_", "unsqueeze_", "t_", "transpose_"})


def _copy_into(target: Any, source: Any) -> Any:
    return _write_into(target, np.broadcast_to(_to_array(_sym_of(source)), target.shape))


def _fill_into(target: Any, value: Any) -> Any:
    return _write_into(target, np.full(target.shape, _sym_of(value), dtype=object))


# --------------------------------------------------------------------------------------
# Stop-gradient symbols
# --------------------------------------------------------------------------------------


class Detached(sympy.Function):
    """``detached(e)``: the value of ``e`` with its gradient stopped, as ``e.detach()`` does.

    Differentiation sees a function whose derivative is zero; the symbolic stage replaces
    it by its argument once derivatives are taken.
    """

    is_real = True

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.Integer(0)


def detached(e: Any) -> Any:
    """``e`` with its gradient stopped; unchanged where no input reaches it but through a stop."""
    if not isinstance(e, sympy.Basic) or _is_condition(e) or not _has_live_symbols(e):
        return e
    # Under one stop, inner stops change nothing; dropping them keeps formulas readable
    # when a no_grad block detaches values that were detached already.
    return Detached(_undetach(e))


def _has_live_symbols(e: Any) -> bool:
    """Whether a gradient can reach ``e``: some symbol of it is outside every Detached."""
    if not isinstance(e, sympy.Basic):
        return False
    walk = sympy.preorder_traversal(e)
    for node in walk:
        if isinstance(node, Detached):
            walk.skip()
        elif node.is_Symbol:
            return True
    return False


def _undetach(e: Any) -> Any:
    """``e`` with every stop removed: its value."""
    if isinstance(e, sympy.Basic) and e.has(Detached):
        return e.replace(lambda a: isinstance(a, Detached), lambda a: a.args[0])
    return e


def _stopped_write(old: Any, new: Any) -> Any:
    """One element written in place where gradients are stopped (``with torch.no_grad(): y.mul_(2)``).

    torch changes the value and keeps the tensor's autograd history, so the gradient stays
    the old element's while the value is the new one: a straight-through estimator.
    """
    if _is_condition(old) or _is_condition(new) or not _has_live_symbols(old):
        return detached(new)
    return old + detached(new - old)


_STOPPED_WRITE = np.frompyfunc(_stopped_write, 2, 1)

#: Grad mode on entry to the outermost custom ``torch.autograd.Function.apply`` now running,
#: or None outside one. torch runs ``forward`` with grad mode off whatever the caller's mode
#: (it turns it off in C++), so inside it ``torch.is_grad_enabled()`` cannot tell the
#: forward's mathematics, which a hand-written backward is checked against, from a block the
#: user wrapped in ``torch.no_grad()``. The mode ``apply`` was called in can: under no_grad
#: the output is a constant, otherwise everything the forward computes is the function, its
#: own no_grad blocks and nested applies included.
_FUNCTION_ENTRY_GRAD: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "autocheck_function_entry_grad", default=None
)


def _gradient_stopped() -> bool:
    """Whether autograd records nothing for the operator now traced, as under torch.no_grad()."""
    entry = _FUNCTION_ENTRY_GRAD.get()
    return not (torch.is_grad_enabled() if entry is None else entry)


def _stop_gradients(func: torch._ops.OpOverload, args: tuple, out: Any) -> Any:
    """An operator's outputs as autograd leaves them: constants where gradients are stopped.

    A view keeps aliasing its base (a write through it must reach the base) and is marked
    instead, and so is a view of a marked view, which does not require grad in torch either.
    """
    if func.is_view:
        base = args[0] if args else None
        if _gradient_stopped() or (isinstance(base, SymbolicTensor) and base.stopped_view):
            out = _map_symbolic(out, lambda t: _marked_view(t, args))
        return out
    if not _gradient_stopped():
        return out
    return _map_symbolic(out, lambda t: SymbolicTensor(_detach(t.sym), t.dtype))


def _marked_view(t: SymbolicTensor, args: tuple) -> SymbolicTensor:
    if any(t is a for a in args):  # a decomposition handed an input back: mark a new alias, not the input
        t = SymbolicTensor(t.sym, t.dtype)
    t.stopped_view = True
    return t


def _map_symbolic(out: Any, fn: Callable[[SymbolicTensor], Any]) -> Any:
    if isinstance(out, SymbolicTensor):
        return fn(out)
    if isinstance(out, (list, tuple)):
        mapped = [_map_symbolic(o, fn) for o in out]
        # A decomposition may return a named tuple (log_sigmoid_forward's output and buffer).
        return type(out)(*mapped) if hasattr(out, "_fields") else type(out)(mapped)
    return out


def _symbolic_in(out: Any) -> Iterator[SymbolicTensor]:
    if isinstance(out, SymbolicTensor):
        yield out
    elif isinstance(out, (list, tuple)):
        for o in out:
            yield from _symbolic_in(o)


def _apply_noting_grad_mode(cls: type, *args: Any, **kwargs: Any) -> Any:
    """``Function.apply``, noting the grad mode of the outermost call in :data:`_FUNCTION_ENTRY_GRAD`."""
    apply = super(_APPLY_HOOK_CLASS, cls).apply  # type: ignore[misc]
    if _FUNCTION_ENTRY_GRAD.get() is not None:  # nested: the outermost apply decides
        return apply(*args, **kwargs)
    token = _FUNCTION_ENTRY_GRAD.set(torch.is_grad_enabled())
    try:
        if _MARK.get() and torch.is_grad_enabled():
            return _marked_function(cls, apply, args, kwargs)
        return apply(*args, **kwargs)
    finally:
        _FUNCTION_ENTRY_GRAD.reset(token)


# --------------------------------------------------------------------------------------
# Operations kept opaque, for the error model
# --------------------------------------------------------------------------------------


class OpNode(sympy.Function):
    """The output of one traced operation, kept opaque: ``rule(*args)`` is its value.

    Differentiating an expression of op nodes gives the chain rule as reverse mode
    evaluates it, with each local derivative an :class:`OpPartial`; SymPy cannot simplify
    across operations (``1 - (1 - tanh(x)**2)`` stays a difference, as autograd computes
    it). Subclasses are made per operation by :func:`op_node`.
    """

    is_real = True
    op: str = ""
    custom: bool = False  # a user's autograd.Function: its backward is not a torch kernel
    rule: Callable[..., Any]

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return op_partial(type(self), (argindex - 1,))(*self.args)

    def expansion(self) -> Any:
        return type(self).rule(*self.args)


class OpPartial(sympy.Function):
    """A local derivative of an :class:`OpNode`: by its arguments ``wrt``, in turn."""

    is_real = True
    node: type[OpNode]
    wrt: tuple[int, ...] = ()

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return op_partial(self.node, self.wrt + (argindex - 1,))(*self.args)

    def expansion(self) -> Any:
        """The explicit local derivative (steps and DiracDelta still to be cleaned up by the caller)."""
        dummies = [sympy.Dummy(real=True) for _ in self.args]
        value = self.node.rule(*dummies)
        for k in self.wrt:
            value = sympy.diff(value, dummies[k])
        return value.xreplace(dict(zip(dummies, self.args)))


def op_node(op: str, rule: Callable[..., Any], nargs: int, custom: bool = False) -> type[OpNode]:
    """A new :class:`OpNode` class for one operation with ``nargs`` tensor operands."""
    return type(op, (OpNode,), {
        "op": op, "rule": staticmethod(rule), "nargs": nargs, "arity": nargs, "custom": custom, "_partials": {}
    })


def op_partial(node: type[OpNode], wrt: tuple[int, ...]) -> type[OpPartial]:
    partials = node._partials  # type: ignore[attr-defined]
    if wrt not in partials:
        name = f"d{node.op}_d{''.join(map(str, wrt))}"
        partials[wrt] = type(name, (OpPartial,), {"node": node, "wrt": wrt, "nargs": node.arity})
    return partials[wrt]


#: Whether the trace now running keeps operations opaque (``trace(..., mark=True)``).
_MARK: contextvars.ContextVar[bool] = contextvars.ContextVar("autocheck_mark_ops", default=False)

_BINARY_FUNCTIONS = {
    "atan2", "hypot", "maximum", "minimum", "fmax", "fmin", "xlogy", "special_xlog1py", "logaddexp",
    "logaddexp2", "copysign", "fmod", "remainder",
}  # fmt: skip
_ELEMENTWISE_RULES = {
    "round.decimals", "log_sigmoid", "clamp", "clamp_min", "clamp_max", "softplus", "polygamma",
    "special_polygamma", "logit", "threshold", "leaky_relu", "gelu", "silu", "elu", "hardtanh",
}  # fmt: skip

#: Operations a marked trace keeps opaque: the elementwise functions, each computed by one
#: kernel with its own backward formula. Arithmetic (+, -, *, /, **) stays explicit: its
#: rounding is modelled as written.
MARKED_OPS = frozenset(UNARY) - {"neg", "positive", "logical_not"} | _BINARY_FUNCTIONS | _ELEMENTWISE_RULES


def _marked(op: str, rule: Callable[..., Any], args: list, kwargs: dict) -> Any:
    """An elementwise operation's result with every element that depends on an input an op node."""
    plain = rule(*args, **kwargs)
    positions = [k for k, a in enumerate(args) if isinstance(a, np.ndarray)]
    if not positions or not isinstance(plain, np.ndarray):
        return plain
    try:
        operands = np.broadcast_arrays(*[args[k] for k in positions])
    except ValueError:
        return plain
    if operands[0].shape != plain.shape:
        return plain

    def scalar_rule(*values: Any) -> Any:
        full = list(args)
        for k, value in zip(positions, values):
            full[k] = _scalar_array(value)
        return _as_number(_to_array(rule(*full, **kwargs)).item())

    node = op_node(op, scalar_rule, len(positions))
    out = plain.copy()
    for index in np.ndindex(*out.shape):
        values = [o[index] for o in operands]
        if any(_is_condition(v) for v in values) or not any(_has_live_symbols(v) for v in values):
            continue
        out[index] = node(*[_as_number(v) for v in values])
    return out


def _marked_function(cls: type, apply: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """A custom Function's output as one op node per element (elementwise Functions only):
    its backward is the user's, one opaque local derivative as far as the error model knows."""
    tensors = [k for k, a in enumerate(args) if isinstance(a, SymbolicTensor)]
    out = apply(*args, **kwargs)
    if not tensors or not isinstance(out, SymbolicTensor):
        return out
    shapes = [args[k].shape for k in tensors]
    if any(tuple(s) != tuple(out.shape) for s in shapes):
        return out  # not elementwise: the operations inside stay marked one by one
    dummies = [sympy.Dummy(real=True) for _ in tensors]
    placeholders = list(args)
    for k, d in zip(tensors, dummies):
        placeholders[k] = SymbolicTensor(_scalar_array(d), args[k].dtype)
    token = _MARK.set(False)  # the rule is the forward's plain mathematics
    try:
        single = apply(*placeholders, **kwargs)
    except Exception:  # noqa: BLE001 - a forward that needs the real shapes: keep the inner marks
        return out
    finally:
        _MARK.reset(token)
    if not isinstance(single, SymbolicTensor) or single.sym.ndim:
        return out
    formula = single.sym.item()
    node = op_node(f"{cls.__name__}.apply", lambda *v: formula.xreplace(dict(zip(dummies, v))), len(tensors), custom=True)
    operands = [_sym_of(args[k]) for k in tensors]
    marked = np.empty(out.sym.shape, dtype=object)
    for index in np.ndindex(*marked.shape):
        values = [o[index] for o in operands]
        plain = out.sym[index]
        marked[index] = node(*values) if any(_has_live_symbols(v) for v in values) and not _has_stops(plain) else plain
    return SymbolicTensor(marked, out.dtype)


def _has_stops(e: Any) -> bool:
    return isinstance(e, sympy.Basic) and e.has(Detached)


#: ``Function.apply`` ends in ``super().apply(...)``, which Python looks up through the MRO at
#: call time; a classmethod on the class between ``Function`` and torch's C base sees every
#: call, ``Fn.apply(x)`` and also ``apply = Fn.apply`` bound before the trace (a common
#: idiom), which wrapping ``Function.apply`` itself would miss.
_APPLY_HOOK_CLASS = torch.autograd.function._SingleLevelFunction


class _ApplyHook:
    """Puts :func:`_apply_noting_grad_mode` in place while at least one trace runs, in any thread.

    Outside a trace the hook only notes a mode nobody reads, so traces in other threads, and
    autograd in them, are unaffected by it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._previous: Any = None
        self._hook = classmethod(_apply_noting_grad_mode)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._previous = vars(_APPLY_HOOK_CLASS).get("apply")  # None in every torch so far
                setattr(_APPLY_HOOK_CLASS, "apply", self._hook)
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._previous is None:
                    delattr(_APPLY_HOOK_CLASS, "apply")
                elif self._users == 0:
                    setattr(_APPLY_HOOK_CLASS, "apply", self._previous)


_APPLY_HOOK = _ApplyHook()


# --------------------------------------------------------------------------------------
# Tracing a user function
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """What tracing one function produced.

    Attributes:
        names: one name per positional input (the function's parameters, or x, y, z...).
        symbols: per input, an object array of real SymPy symbols shaped like that input
            (0-d for an elementwise trace).
        output: object array of SymPy expressions, shaped like the function's output.
        narrowest: the narrowest floating dtype the code cast a value to, if any.
    """

    names: tuple[str, ...]
    symbols: tuple[np.ndarray, ...]
    output: np.ndarray
    shapes: tuple[tuple[int, ...], ...] = field(default=())
    narrowest: torch.dtype | None = None  # the narrowest floating dtype the code cast values to

    @property
    def flat_symbols(self) -> list[sympy.Symbol]:
        return [s for arr in self.symbols for s in arr.reshape(-1)]

    @property
    def is_scalar(self) -> bool:
        return all(arr.ndim == 0 for arr in self.symbols) and self.output.ndim == 0


_FALLBACK_NAMES = ("x", "y", "z", "w", "u", "v", "s", "t")


def default_names(n: int) -> tuple[str, ...]:
    """Names for ``n`` inputs whose function does not name them: x, y, z, ... (x0, x1, ... beyond eight)."""
    return _FALLBACK_NAMES[:n] if n <= len(_FALLBACK_NAMES) else tuple(f"x{i}" for i in range(n))


def parameter_names(f: Callable[..., Any]) -> tuple[str, ...] | None:
    """The names of ``f``'s required positional parameters, or None where Python cannot tell.

    Functions defined by torch itself get ``x, y, z, ...`` as its builtins do: torch calls
    nearly every tensor parameter ``input`` (``F.mish(input)``, ``nn.Linear.forward``), and
    ``F.mish`` should read like ``torch.exp``.
    """
    given = getattr(f, "__autocheck_names__", None)  # set by check_module: "layer1.weight", ...
    if given is not None:
        return tuple(given)
    names = _declared_parameter_names(f)
    if names is not None and _defined_by_torch(f):
        return _FALLBACK_NAMES[: len(names)] if len(names) <= len(_FALLBACK_NAMES) else None
    return names


def _declared_parameter_names(f: Callable[..., Any]) -> tuple[str, ...] | None:
    signature = _signature(f)
    if signature is None:
        return None
    names = []
    for p in signature.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            names.append(p.name)
    if not names and isinstance(f, type) is False and hasattr(f, "__self__") and hasattr(f, "__func__"):
        return None
    return tuple(names) if names else None


def _signature(f: Callable[..., Any]) -> inspect.Signature | None:
    """The signature that says how many tensors ``f`` takes, or None for builtins without one.

    A module and ``Fn.apply`` declare ``(*args, **kwargs)``; the inputs are those of their
    ``forward`` (less ``ctx`` where ``forward`` takes it, the style without ``setup_context``).
    """
    owner = getattr(f, "__self__", None)
    if getattr(f, "__func__", None) is torch.autograd.Function.apply.__func__ and isinstance(owner, type):
        f = owner.forward
        takes_ctx = not torch.autograd.function._is_setup_context_defined(owner.setup_context)
    else:
        f = f.forward if isinstance(f, torch.nn.Module) else f
        takes_ctx = False
    try:
        signature = inspect.signature(f)
    except (TypeError, ValueError):
        return None
    parameters = list(signature.parameters.values())
    return signature.replace(parameters=parameters[1:]) if takes_ctx and parameters else signature


def _takes_varargs(f: Callable[..., Any]) -> bool:
    signature = _signature(f)
    return signature is not None and any(p.kind == p.VAR_POSITIONAL for p in signature.parameters.values())


def _defined_by_torch(f: Callable[..., Any]) -> bool:
    module = getattr(f, "__module__", None)
    return isinstance(module, str) and (module == "torch" or module.startswith("torch."))


def symbols_for(name: str, shape: tuple[int, ...]) -> np.ndarray:
    if not shape:
        return _scalar_array(sympy.Symbol(name, real=True))
    out = np.empty(shape, dtype=object)
    for index in np.ndindex(*shape):
        out[index] = sympy.Symbol(f"{name}[{', '.join(map(str, index))}]", real=True)
    return out


def _symbolic_inputs(names, shapes, dtype):
    symbols = tuple(symbols_for(n, s) for n, s in zip(names, shapes))
    tensors = [SymbolicTensor(arr.copy(), dtype) for arr in symbols]
    return symbols, tensors


def trace(
    f: Callable[..., Any],
    shapes: Sequence[tuple[int, ...]] | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    names: Sequence[str] | None = None,
    mark: bool = False,
) -> Trace:
    """Run ``f`` on symbolic tensors and return the SymPy expression of its output.

    Args:
        f: a function of tensors, written with ordinary torch code.
        shapes: one shape per input; ``None`` traces with scalar symbols and finds the
            number of inputs from the signature (or, for builtins, by trying).
        dtype: the floating dtype the symbolic inputs report (``x.dtype`` inside ``f``).
        names: symbol names; default the parameter names, else x, y, z, ...
        mark: keep each elementwise operation (:data:`MARKED_OPS`) and each custom
            ``Function`` an opaque :class:`OpNode`, so that the derivative has the chain
            rule's structure as autograd evaluates it (for the error model).
    """
    if not callable(f):
        raise TypeError(f"f must be a callable taking tensors, got f={f!r}")
    f = uncompiled(f)
    if names is None:
        names = parameter_names(f)
    if shapes is None:
        if names is not None:
            return _trace_with(f, tuple(names), tuple(() for _ in names), dtype, mark)
        if _takes_varargs(f):
            raise TraceError(
                f"{_describe(f)} takes *args, so the number of its inputs cannot be known without "
                "example inputs. Pass example tensors (autocheck.derivative(f, x, y)), or wrap it with "
                "named parameters, e.g. lambda x, y: f(x, y)."
            )
        return _trace_builtin(f, dtype, mark)
    shapes = tuple(tuple(s) for s in shapes)
    if names is None or len(names) != len(shapes):
        names = default_names(len(shapes))
    return _trace_with(f, tuple(names), shapes, dtype, mark)


def uncompiled(f: Callable[..., Any]) -> Callable[..., Any]:
    """The function ``torch.compile`` wrapped (the mathematics is traced from it, not from the
    compiled code, which Dynamo would compile again with autocheck's own tracing inside)."""
    original = getattr(f, "_torchdynamo_orig_callable", None)
    if original is None and isinstance(f, torch.nn.Module):
        original = getattr(f, "_orig_mod", None)
    return f if original is None else uncompiled(original)


def _trace_builtin(f: Callable[..., Any], dtype: torch.dtype, mark: bool = False) -> Trace:
    last_error: Exception | None = None
    for arity in range(1, 5):
        names = _FALLBACK_NAMES[:arity]
        try:
            return _trace_with(f, names, tuple(() for _ in names), dtype, mark)
        except TraceError:
            raise
        except TypeError as error:  # wrong number of arguments: try the next arity
            last_error = error
    raise TraceError(
        f"could not find how many inputs {getattr(f, '__name__', f)!r} takes (tried 1 to 4 tensors: {last_error}). "
        "Wrap it in a lambda with named parameters, e.g. lambda x, y: f(x, y)."
    )


def trace_at(f: Callable[..., Any], inputs: Sequence[np.ndarray | torch.Tensor], dtype: torch.dtype) -> np.ndarray:
    """Run ``f`` on tensors whose elements are the given SymPy expressions (object arrays; a
    torch tensor, such as integer targets, is passed as it is) and return its output's
    elements: the tracer's exact rules applied to expressions of the caller's choosing (the
    directional check's high-precision tier traces ``f(x0 + t u)`` with numbers and ``t``)."""
    tensors = [SymbolicTensor(x.copy(), dtype) if isinstance(x, np.ndarray) else x for x in inputs]
    return _run_traced(uncompiled(f), tensors).output


def _trace_with(f, names, shapes, dtype, mark: bool = False) -> Trace:
    symbols, tensors = _symbolic_inputs(names, shapes, dtype)
    traced = _run_traced(f, tensors, mark)
    return Trace(names=tuple(names), symbols=symbols, output=traced.output, shapes=tuple(shapes),
                 narrowest=traced.narrowest)


def _run_traced(f, tensors, mark: bool = False) -> Trace:
    with _tracing(mark), _Routing():
        casts = _CASTS.get()
        try:
            out = f(*tensors)
        except TraceError:
            raise
        except _Abort as abort:
            raise abort.error from None
        except (RuntimeError, NotImplementedError, IndexError, ValueError, AttributeError) as error:
            raise TraceError(f"tracing {_describe(f)} failed: {type(error).__name__}: {error}") from error
    if isinstance(out, (tuple, list)):
        raise TraceError(
            f"{_describe(f)} returned a {type(out).__name__} of {len(out)} values; return a single tensor "
            "(check each output with its own function, or sum them with weights)"
        )
    if isinstance(out, SymbolicTensor):
        output = np.array(_sym_of(out), dtype=object)
    elif isinstance(out, torch.Tensor):
        output = _constant_array(out)
    elif isinstance(out, (int, float)):
        output = _scalar_array(exact_number(out))
    else:
        raise TraceError(f"{_describe(f)} returned {type(out).__name__}, not a tensor")
    if isinstance(out, torch.Tensor) and out.is_complex():
        raise TraceError(
            f"{_describe(f)} returns complex values ({out.dtype}) of real inputs: torch differentiates a complex "
            "output through a real loss of it. Pass the inputs as complex tensors (x.to(torch.complex128)) to "
            "check_grad, which then checks it by real and imaginary parts, or return a real value (.abs(), .real)"
        )
    output = np.frompyfunc(_as_number, 1, 1)(output) if output.ndim else _scalar_array(_as_number(output.item()))
    output = np.asarray(output, dtype=object)
    narrowest = max(casts, key=lambda d: torch.finfo(d).eps, default=None)
    return Trace(names=(), symbols=(), output=output, narrowest=narrowest)


@contextlib.contextmanager
def _tracing(mark: bool) -> Iterator[None]:
    """The state one trace runs in.

    Grad mode is on, as when autograd runs ``f``, and the code changes it as it runs:
    operators traced where it is off give constants (see :func:`_gradient_stopped`). The
    trace starts outside any ``Function.apply``, even when called from inside one.
    """
    mark_token = _MARK.set(mark)
    entry_token = _FUNCTION_ENTRY_GRAD.set(None)
    casts_token = _CASTS.set([])
    try:
        with _APPLY_HOOK.active(), torch.enable_grad():
            yield
    finally:
        _CASTS.reset(casts_token)
        _FUNCTION_ENTRY_GRAD.reset(entry_token)
        _MARK.reset(mark_token)


#: The floating dtypes a trace cast values to (``x.float()`` inside a float64 function):
#: autograd rounds that leg in its own dtype.
_CASTS: contextvars.ContextVar[list | None] = contextvars.ContextVar("autocheck_casts", default=None)


def function_name(f: Any) -> str:
    """How a person would write ``f``: ``torch.sigmoid``, ``MySoftplus.apply``, ``my_loss``."""
    owner = getattr(f, "__self__", None)
    if isinstance(owner, type):  # a class defined inside a function: its own name
        return f"{owner.__qualname__.rpartition('<locals>.')[2]}.{f.__name__}"
    module = getattr(f, "__module__", None) or ""
    name = getattr(f, "__name__", None)
    qualname = getattr(f, "__qualname__", None) or name
    if name is None:
        return type(f).__name__
    if module == "torch" or module.startswith("torch."):
        # Builtins carry the name of the class that holds them (_VariableFunctionsClass.sigmoid),
        # or of a private module (torch._C._nn.softplus): the public name where there is one.
        return public_torch_name(f) or f"{module}.{name}"
    return qualname.rpartition("<locals>.")[2]  # a function defined inside another: its own name


#: Where torch's public functions live, the most specific first.
_PUBLIC_TORCH = ("torch.nn.functional", "torch.special", "torch.linalg", "torch.fft", "torch")
_public_names: dict[int, str | None] = {}


def public_torch_name(f: Any) -> str | None:
    """``torch.nn.functional.softplus`` for ``torch._C._nn.softplus``, ``torch.special.expit``
    for ``torch._C._special.special_expit``; None where torch has no public name for ``f``."""
    key = id(f)
    if key not in _public_names:
        import importlib

        found = None
        for public in _PUBLIC_TORCH:
            namespace = importlib.import_module(public)
            if getattr(namespace, getattr(f, "__name__", ""), None) is f:
                found = f"{public}.{f.__name__}"
                break
            names = [n for n, value in vars(namespace).items() if value is f and not n.startswith("_")]
            if names:
                found = f"{public}.{min(names, key=len)}"
                break
        _public_names[key] = found
    return _public_names[key]


def _describe(f: Callable[..., Any]) -> str:
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)
    return f"the function {name}"
