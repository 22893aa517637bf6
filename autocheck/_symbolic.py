"""Stage 2: exact derivatives of a trace.

Differentiation follows autograd's conventions where the mathematics leaves a choice: the
derivative of a step (floor, round, sign) is 0, ``DiracDelta`` is 0 (torch never returns a
delta), and ``x.detach()`` is a constant that takes its value back once derivatives are taken.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch

from ._budget import interrupt_after
from ._errors import TraceError
from . import _trace
from ._trace import MAX_SYMBOLIC_ELEMENTS, Detached, Trace, function_name, parameter_names, trace

#: Functions whose derivative is zero wherever it exists (torch's gradient is 0 everywhere).
_STEPS = (sympy.floor, sympy.ceiling, sympy.sign, sympy.frac, sympy.Heaviside)


def finish(expr: sympy.Expr) -> sympy.Expr:
    """Apply autograd's conventions to a derivative and put detached values back."""
    expr = expr.replace(lambda e: isinstance(e, sympy.DiracDelta), lambda e: sympy.Integer(0))
    expr = expr.replace(_is_step_derivative, lambda e: sympy.Integer(0))
    # replace() works from the leaves up, so d/dx floor(|x|) leaves Subs(0, xi, Abs(x)) behind.
    expr = expr.replace(
        lambda e: isinstance(e, sympy.Subs) and not e.expr.has(sympy.Derivative), lambda e: e.doit()
    )
    expr = expr.replace(lambda e: isinstance(e, Detached), lambda e: e.args[0])
    leftover = expr.atoms(sympy.Derivative, sympy.Subs)
    if leftover:
        raise TraceError(
            f"SymPy cannot differentiate {sorted(map(str, leftover))[0]}; pass reference= with the math "
            "written in functions SymPy knows how to differentiate"
        )
    return expr


def _is_step_derivative(e: Any) -> bool:
    if isinstance(e, sympy.Subs):
        e = e.expr
    return isinstance(e, sympy.Derivative) and isinstance(e.expr, _STEPS)


def diff(expr: sympy.Expr, *symbols: sympy.Symbol) -> sympy.Expr:
    """``expr`` differentiated by each symbol in turn, with autograd's conventions."""
    for s in symbols:
        expr = sympy.diff(expr, s)
    return finish(expr)


def partials(tr: Trace, order: int = 1) -> dict[tuple[int, ...], sympy.Expr]:
    """All ``order``-th partial derivatives of a scalar trace, keyed by the input indices."""
    flat = tr.flat_symbols
    out: dict[tuple[int, ...], sympy.Expr] = {}
    expr = tr.output.item()
    raw: dict[tuple[int, ...], sympy.Expr] = {(): expr}
    for k in range(1, order + 1):
        nxt = {}
        for key in itertools.product(range(len(flat)), repeat=k):
            if tuple(sorted(key)) != key:
                continue
            nxt[key] = sympy.diff(raw[key[:-1]], flat[key[-1]])
        raw = nxt
    for key, value in raw.items():
        out[key] = finish(value)
    return out


def symmetric(table: dict[tuple[int, ...], sympy.Expr], key: Sequence[int]) -> sympy.Expr:
    return table[tuple(sorted(key))]



# --------------------------------------------------------------------------------------
# The derivatives a check needs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One derivative: of output element ``output`` by the flat input symbols ``wrt`` in turn."""

    output: tuple[int, ...]
    wrt: tuple[int, ...]
    expr: sympy.Expr  # exact, with autograd's conventions
    marked: sympy.Expr | None = None  # the same derivative of the op-marked trace, for the error model


@dataclass(frozen=True)
class Derivatives:
    """The exact side of a check: every derivative it compares, and what they came from.

    For a trace with scalar inputs (an elementwise function) there is one entry per
    partial derivative (order 2: per ordered pair); for small tensor inputs, one per
    non-zero element of the Jacobian (order 2: of the Hessian of each output element).
    """

    names: tuple[str, ...]
    symbols: tuple[sympy.Symbol, ...]  # flat, one per input element
    forward: sympy.Expr | None  # the function itself (scalar traces)
    order: int
    entries: tuple[Entry, ...]
    output_shape: tuple[int, ...] = ()
    input_shapes: tuple[tuple[int, ...], ...] = ()
    narrowest: torch.dtype | None = None  # the narrowest floating dtype f's code casts to (a float32 leg)

    @property
    def scalar(self) -> bool:
        return all(not s for s in self.input_shapes)

    @functools.cached_property
    def formula(self) -> str:
        """The derivatives as text, at most four of them (printed once per derivatives)."""
        if not self.entries and not self.symbols and self.input_shapes:
            if self.order == 2:
                return "u^T H w (H the Hessian of <v, f>) along random directions u, by forward mode over forward mode"
            return "<v, J u> along random directions u, by forward mode over the operations f runs"
        limit = 4
        parts = []
        seen = set()
        for entry in self.entries:
            label = label_of(self.symbols, entry)
            if label not in seen:
                seen.add(label)
                parts.append(f"{label} = {_readable(entry.expr)}")
        text = "; ".join(parts[:limit])
        if len(parts) > limit:
            text += f"; ... ({len(parts) - limit} more)"
        return text


def _readable(expr: sympy.Expr) -> str:
    """The text of ``expr``, with a rational of many digits (a float constant of the code,
    made exact) written as the shortest float that reads back to it:
    ``6172839450617*x/2500000000000`` as ``2.4691357802468*x``."""
    long = {}
    for r in expr.atoms(sympy.Rational):
        if r.q != 1 and len(str(r)) > 12:
            text = repr(float(r))
            digits = len(text.split("e")[0].replace("-", "").replace(".", "").lstrip("0")) or 1
            long[r] = sympy.Float(text, max(digits, 1))
    return str(expr.xreplace(long) if long else expr)


def directional_derivatives(names: Sequence[str], shapes: Sequence[tuple[int, ...]],
                            output_shape: tuple[int, ...], order: int = 1) -> Derivatives:
    """The exact side of a function checked by directional derivatives: no entries (they
    are computed at the point, by forward mode), only the shapes."""
    return Derivatives(tuple(names), (), None, order, (), tuple(output_shape), tuple(tuple(s) for s in shapes))


def label_of(symbols: Sequence[sympy.Symbol], entry: Entry) -> str:
    """``d/dx``, ``d²/dxdy``, with ``of output[i]`` for an element of a tensor output."""
    if len(entry.wrt) > 1:
        label = f"d{_superscript(len(entry.wrt))}/{''.join('d' + str(symbols[i]) for i in entry.wrt)}"
    else:
        label = f"d/d{symbols[entry.wrt[0]]}"
    if entry.output:
        label += f" of output{list(entry.output)}"
    return label


def higher_label(order: int, name: str) -> str:
    """The label of x.grad after ``order`` backward passes: ``d²/dx·``, ``d³/dx··``."""
    return f"d{_superscript(order)}/d{name}" + "·" * (order - 1)


def _superscript(n: int) -> str:
    return "".join("⁰¹²³⁴⁵⁶⁷⁸⁹"[int(d)] for d in str(n))


def derivatives_of(tr: Trace, order: int, marked: Trace | None = None) -> Derivatives:
    """The derivatives of ``tr`` that a check of order ``order`` compares.

    Scalar inputs: every partial of that order (a zero one included: autograd must give 0
    too). Tensor inputs: the derivatives that are not structurally zero (the ones left out
    are compared with 0 all the same, by the contraction). ``marked`` is the same function
    traced with its operations kept as op atoms; its derivatives go with each entry, for
    the error model.
    """
    symbols = tuple(tr.flat_symbols)
    position = {s: k for k, s in enumerate(symbols)}
    entries = []
    for out_index in np.ndindex(*tr.output.shape):
        expr = tr.output[out_index]
        shadow = marked.output[out_index] if marked is not None else None
        for wrt in _wrt(expr, symbols, position, order, tensor=not tr.is_scalar):
            exact = diff(expr, *[symbols[i] for i in wrt])
            if not tr.is_scalar and exact == 0:
                continue
            shadowed = _marked_diff(shadow, [symbols[i] for i in wrt]) if shadow is not None else None
            entries.append(Entry(tuple(out_index), wrt, exact, shadowed))
    return Derivatives(
        names=tuple(tr.names),
        symbols=symbols,
        forward=finish(tr.output.item()) if tr.is_scalar else None,
        order=order,
        entries=tuple(entries),
        output_shape=tuple(tr.output.shape),
        input_shapes=tuple(tuple(s.shape) for s in tr.symbols),
    )


def _wrt(expr: sympy.Expr, symbols, position, order: int, tensor: bool) -> list[tuple[int, ...]]:
    """Which derivatives of one output element, as tuples of symbol indices."""
    if not tensor:
        return list(itertools.product(range(len(symbols)), repeat=order))
    keys: list[tuple[int, ...]] = [()]
    current = {(): expr}
    for _ in range(order):
        nxt = {}
        for key, e in current.items():
            for i in sorted(position[s] for s in e.free_symbols if s in position):
                nxt[key + (i,)] = sympy.diff(e, symbols[i])
        current = nxt
        keys = list(nxt)
    return keys


def _marked_diff(expr: sympy.Expr, symbols: Sequence[sympy.Symbol]) -> sympy.Expr:
    """The derivative of an op-marked trace, with autograd's conventions (see :func:`finish`)."""
    for s in symbols:
        expr = sympy.diff(expr, s)
    return finish(expr)


#: Seconds for tracing and differentiating (user code and SymPy) before giving up.
SYMBOLIC_BUDGET = 20.0


class KeyedCache:
    """What follows from a function, kept by key (see :func:`function_key`): the last ``size``
    values made, the least recently used dropped first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        """The value kept for ``key``, else ``make()``, kept."""
        if key in self._values:
            self._values.move_to_end(key)
            return self._values[key]
        value = self._values[key] = make()
        if len(self._values) > self.size:
            self._values.popitem(last=False)
        return value


#: Traced derivatives kept per function (code, closure, defaults, the globals it reads),
#: dtype and order: a parametrized test pays for tracing once.
CACHE_SIZE = 256
_cache = KeyedCache(CACHE_SIZE)


class _Unkeyable(Exception):
    """A value a cache key cannot stand for (it may change without a trace seeing it)."""


def _value_key(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, torch.dtype, torch.device)):
        return (type(value), value)
    if isinstance(value, torch.Tensor):
        # A tensor changed in place bumps its version counter.
        return ("tensor", id(value), value._version, tuple(value.shape), value.dtype, value.device)
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__)
    if isinstance(value, type):
        return ("class", id(value))
    if isinstance(value, (tuple, list, frozenset)) and depth < 3 and len(value) <= 64:
        return (type(value), tuple(_value_key(v, depth + 1) for v in value))
    if isinstance(value, sympy.Basic):
        return ("sympy", value)
    if callable(value) and depth < 3:
        return _function_key(value, depth + 1)
    raise _Unkeyable


def _names_read(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names_read(constant)
    return names


#: Packages whose functions do not change between checks: keyed by identity, not read.
_LIBRARIES = frozenset({"torch", "sympy", "numpy", "math", "functools", "builtins", "mpmath", "operator"})


def _from_library(f: Any) -> bool:
    """A library's own function: found under its name in its module (a ``functools.wraps``
    wrapper of torch.sin claims torch's module and name, but torch.sin is not it)."""
    module = getattr(f, "__module__", None)
    if not (isinstance(module, str) and module.partition(".")[0] in _LIBRARIES
            and isinstance(f, (types.FunctionType, types.BuiltinFunctionType))):
        return False
    if isinstance(f, types.FunctionType) and f.__closure__:
        return False
    owner = sys.modules.get(module)
    return owner is not None and getattr(owner, getattr(f, "__name__", ""), None) is f


def _function_key(f: Any, depth: int = 0) -> Any:
    """What determines ``f``'s trace, hashable; raises :class:`_Unkeyable` where unsure."""
    if _from_library(f):
        return ("library", id(f))  # torch.nn.functional.softsign, sympy.sqrt: fixed code
    if isinstance(f, functools.partial):
        return ("partial", _function_key(f.func, depth + 1), _value_key(f.args, depth + 1),
                _value_key(tuple(sorted(f.keywords.items())), depth + 1))
    code = getattr(f, "__code__", None)
    if isinstance(code, types.CodeType):
        cells = []
        for cell in f.__closure__ or ():
            try:
                cells.append(_value_key(cell.cell_contents, depth + 1))
            except ValueError:  # an empty cell
                cells.append(None)
        scope = getattr(f, "__globals__", {})
        read = tuple((name, _value_key(scope[name], depth + 1)) for name in sorted(_names_read(code)) if name in scope)
        return ("function", code, tuple(cells), _value_key(f.__defaults__, depth + 1),
                _value_key(tuple(sorted((f.__kwdefaults__ or {}).items())), depth + 1), read)
    owner = getattr(f, "__self__", None)
    if isinstance(owner, type) or isinstance(owner, types.ModuleType):  # MyFunction.apply, torch.sigmoid
        return ("method", id(owner), getattr(f, "__name__", None))
    if isinstance(f, (types.BuiltinFunctionType, type)):
        return ("builtin", id(f))
    raise _Unkeyable  # a module, an object with __call__: its state may change between checks


def function_key(f: Any) -> Any:
    """What determines ``f``'s trace, hashable, for caches of what follows from its code
    (the same key, the same mathematics); None where a key cannot stand for it (a module or
    another object whose state may change between checks)."""
    try:
        key = _function_key(f)
        hash(key)
    except (_Unkeyable, TypeError):
        return None
    return key


def derivatives_for(
    f: Callable[..., Any],
    reference: Any,
    names: Sequence[str] | None,
    shapes: Sequence[tuple[int, ...]] | None,
    dtype: torch.dtype,
    order: int,
) -> Derivatives:
    """Trace the mathematics (``reference`` if given, else ``f``) and differentiate it.

    The error model follows the code as written: it takes ``f``'s own trace with its
    operations kept as op atoms, where ``f`` can be traced. Tracing and differentiating
    (user code and SymPy both) stop after :data:`SYMBOLIC_BUDGET` seconds.
    """
    f_key = function_key(f)
    reference_key = reference if reference is None or isinstance(reference, sympy.Expr) else function_key(reference)
    if f_key is None or (reference is not None and reference_key is None):
        return _derivatives_for(f, reference, names, shapes, dtype, order)
    key = (f_key, reference_key, tuple(names) if names is not None else None,
           tuple(map(tuple, shapes)) if shapes else shapes, dtype, order, _trace.rule_registrations)
    return _cache.get(key, lambda: _derivatives_for(f, reference, names, shapes, dtype, order))


def _derivatives_for(f: Callable[..., Any], reference: Any, names: Sequence[str] | None,
                     shapes: Sequence[tuple[int, ...]] | None, dtype: torch.dtype, order: int) -> Derivatives:
    what = f"tracing and differentiating {function_name(reference if callable(reference) else f)} (order {order})"
    fix = "Lower order=, simplify the function, or pass reference= with simpler mathematics."
    with interrupt_after(SYMBOLIC_BUDGET, what, fix):
        if isinstance(reference, sympy.Expr):
            math_trace = _expression_trace(reference, names, shapes)
        else:
            math_trace = trace(reference if reference is not None else f, shapes, dtype=dtype, names=names)
        marked = None
        if not any(shapes or ()):  # functions of tensors: the formula's rounding stands in (too many nodes)
            try:
                marked = trace(f, shapes, dtype=dtype, names=math_trace.names, mark=True)
            except (TraceError, TypeError):
                pass  # f cannot be traced (a reference was given): the formula's rounding stands in
        if marked is not None and marked.output.shape != math_trace.output.shape:
            marked = None
        derivatives = derivatives_of(math_trace, order, marked)
        own = marked if marked is not None else (math_trace if reference is None else None)
        narrowest = own.narrowest if own is not None else None
        return dataclasses.replace(derivatives, narrowest=narrowest) if narrowest is not None else derivatives


def _expression_trace(expr: sympy.Expr, names: Sequence[str] | None, shapes: Any) -> Trace:
    """A SymPy expression in symbols named after the parameters, as the trace of an elementwise function."""
    free = sorted(expr.free_symbols, key=lambda s: s.name)
    names = tuple(names) if names else tuple(s.name for s in free)
    unknown = [s.name for s in free if s.name not in names]
    if unknown:
        raise ValueError(
            f"reference mentions {unknown[0]!r}, which is not a parameter of f (parameters: {', '.join(names)}); "
            "name the symbols after f's parameters"
        )
    if shapes is not None and any(shapes):
        raise ValueError("a SymPy reference describes an elementwise function; pass tensors of any shape it broadcasts over")
    real = {s: sympy.Symbol(s.name, real=True) for s in free}
    symbols = tuple(np.array(sympy.Symbol(n, real=True), dtype=object) for n in names)
    out = np.empty((), dtype=object)
    out[()] = expr.xreplace(real)
    return Trace(names=tuple(names), symbols=symbols, output=out, shapes=tuple(() for _ in names))


def names_of(f: Callable[..., Any], reference: Any, n_inputs: int | None) -> tuple[str, ...] | None:
    """The parameter names of a check: ``f``'s, else the reference's, which must take as many."""
    names = parameter_names(f)
    if reference is not None and callable(reference) and not isinstance(reference, sympy.Expr):
        ref_names = parameter_names(reference)
        arity = len(names) if names is not None else n_inputs
        if ref_names is not None and arity is not None and len(ref_names) != arity:
            raise ValueError(
                f"reference takes {len(ref_names)} inputs ({', '.join(ref_names)}) but f takes {arity}; "
                "give a reference with the same parameters as f"
            )
        return names or ref_names
    return names


# --------------------------------------------------------------------------------------
# Public: autocheck.derivative
# --------------------------------------------------------------------------------------


def derivative(f: Callable[..., Any], *inputs: Any, order: int = 1) -> Any:
    """The exact derivative of a torch function, as SymPy.

    The function is traced once, in ordinary torch code, and differentiated with SymPy.

    Args:
        f: a function of tensors (a lambda, a ``def``, a torch builtin such as
            ``torch.atan2``, or a custom ``torch.autograd.Function.apply``).
        *inputs: optional tensors. Without them ``f`` is traced with one real scalar symbol
            per required parameter, named after the parameter (``x, y, z, ...`` for torch's own
            functions and builtins).
            With them, each input becomes an array of symbols shaped like it
            (``w[0, 0]``, ``b[0]``, ...), at most 100 elements in all.
        order: 1 for first derivatives, 2 for second derivatives, and so on.

    Returns:
        One input, scalar: a SymPy expression (``order`` times differentiated).
        Several inputs, scalar: a tuple of partials (order 1), a tuple of tuples (the
        Hessian, order 2), nested one level deeper per order.
        Tensor inputs: in place of each expression, a ``sympy.Array`` shaped like the
        input (order 1), or like both inputs (order 2); for a non-scalar output, the
        output's shape comes first (a Jacobian).

    Examples:
        >>> import torch, autocheck
        >>> autocheck.derivative(lambda x: x * x * torch.exp(x))
        x**2*exp(x) + 2*x*exp(x)
        >>> autocheck.derivative(lambda y, x: torch.atan2(y, x))
        (x/(x**2 + y**2), -y/(x**2 + y**2))
    """
    order = check_order(order)
    if not inputs:
        tr = trace(f)
        if tr.output.ndim:
            raise TraceError(
                f"f returned a tensor of shape {tuple(tr.output.shape)} for scalar inputs; derivative() "
                "without inputs needs a scalar output. Pass example tensors: autocheck.derivative(f, x)."
            )
        return _nest(tr, partials(tr, order), order, scalar=True)
    shapes = [tuple(_shape_of(value, i)) for i, value in enumerate(inputs)]
    total = sum(int(np.prod(s)) for s in shapes)
    if total > MAX_SYMBOLIC_ELEMENTS:
        raise ValueError(
            f"inputs have {total} elements in all; symbolic derivatives are limited to "
            f"{MAX_SYMBOLIC_ELEMENTS} (the Jacobian grows quadratically). Pass smaller tensors, or use "
            "autocheck.derivative(f) without inputs for an elementwise function."
        )
    dtype = next((v.dtype for v in inputs if isinstance(v, torch.Tensor) and v.dtype.is_floating_point), torch.float64)
    tr = trace(f, shapes, dtype=dtype)
    return _tensor_derivative(tr, order)


def check_order(order: Any) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive integer (1 for gradients, 2 for Hessians), got order={order!r}")
    return order


def _shape_of(value: Any, index: int) -> tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"input {index} is a complex tensor ({value.dtype}): derivative() takes real inputs; the "
                            "exact derivative of a complex function, by its real and imaginary parts, is in "
                            "check_grad's report (report.formula)")
        return tuple(value.shape)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ()
    raise TypeError(f"input {index} must be a tensor or a Python number, got {type(value).__name__}: {value!r}")


def _nest(tr: Trace, table: dict, order: int, scalar: bool) -> Any:
    n = len(tr.names)

    def build(prefix: tuple[int, ...]) -> Any:
        if len(prefix) == order:
            return symmetric(table, prefix)
        return tuple(build(prefix + (i,)) for i in range(n))

    result = build(())
    if n == 1:
        for _ in range(order):
            result = result[0]
    return result


def _tensor_derivative(tr: Trace, order: int) -> Any:
    n = len(tr.names)
    outputs = tr.output

    def block(indices: tuple[int, ...]) -> sympy.Array:
        arrays = [tr.symbols[i] for i in indices]
        shape = outputs.shape + tuple(d for a in arrays for d in a.shape)
        values = np.empty(shape, dtype=object)
        for out_index in np.ndindex(*outputs.shape):
            expr = outputs[out_index]
            for in_indices in itertools.product(*[list(np.ndindex(*a.shape)) for a in arrays]):
                syms = [a[idx] for a, idx in zip(arrays, in_indices)]
                values[out_index + tuple(d for idx in in_indices for d in idx)] = diff(expr, *syms)
        if values.ndim == 0:
            return values.item()
        return sympy.Array(values.tolist(), shape)

    def build(prefix: tuple[int, ...]) -> Any:
        if len(prefix) == order:
            return block(prefix)
        return tuple(build(prefix + (i,)) for i in range(n))

    result = build(())
    if n == 1:
        for _ in range(order):
            result = result[0]
    return result
