"""Stage 2: exact derivatives of a trace.

Differentiation follows autograd's conventions where the mathematics leaves a choice: the
derivative of a step (floor, round, sign) is 0, ``DiracDelta`` is 0 (torch never returns a
delta), and ``x.detach()`` is a constant that takes its value back once derivatives are taken.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch

from ._errors import TraceError
from ._trace import MAX_SYMBOLIC_ELEMENTS, Detached, Trace, trace

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
    order = _check_order(order)
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


def _check_order(order: Any) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive integer (1 for gradients, 2 for Hessians), got order={order!r}")
    return order


def _shape_of(value: Any, index: int) -> tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"input {index} is a complex tensor ({value.dtype}); complex inputs are not supported yet")
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
