"""Directional derivatives of tensor functions, by forward mode over the operations the code runs.

A function of tensors with thousands of coupled elements has a Jacobian too large to write
down, but a check needs only directional derivatives: autograd's ``<x.grad, u>`` after one
backward with cotangent ``v`` must equal ``d/dt <v, f(x + t u)>`` at ``t = 0``. This module
computes the latter without autograd: it runs ``f`` once under a dispatch mode that sees
every ATen operation and carries, next to each tensor the code computes, its derivative
along ``K`` directions at once (a ``[K, *shape]`` tangent) and the size of that derivative's
computation (the same sum with every term taken in magnitude, which bounds what rounding
can do to it).

Each operation's local rule is exact mathematics, not torch's backward formula:

* elementwise operations: their partial derivatives from SymPy (the tracer's rule for the
  operation at scalar symbols, differentiated), evaluated in float64;
* operations linear in their floating arguments (views, sums, indexing, padding, pooling
  by averages): the operation itself applied to the tangents;
* products (``mm``, ``bmm``, convolution, ...): the product rule, one term per factor;
* selections (``max`` along a dimension, ``sort``, ``topk``, max pooling): the tangent at the
  selected elements (the selection at the point is a constant); ``amax``/``amin`` share it
  evenly between ties, as torch's backward does;
* everything else through torch's decompositions into the above.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import sympy
import torch
from torch._decomp import decomposition_table
from torch.utils._pytree import tree_flatten, tree_unflatten

from . import _printer, _trace
from ._compare import step
from ._errors import TraceError
from ._symbolic import diff
from ._trace import MAX_SYMBOLIC_ELEMENTS, UncompiledMode, _gradient_stopped, _tracing, trace

__all__ = ["Run", "Tangents", "directional_at", "second_order_at"]

aten = torch.ops.aten

_F64 = torch.float64

#: Operations whose output has no derivative (the code stops gradients there, or the
#: result is an index, a count or a comparison).
_CONSTANT = {
    "detach", "argmax", "argmin", "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and",
    "logical_or", "logical_xor", "isnan", "isinf", "isfinite", "sign", "any", "all", "zeros_like", "ones_like",
    "empty_like", "full_like", "new_zeros", "new_ones", "new_empty", "new_full", "scalar_tensor", "bitwise_not",
    "floor", "ceil", "round", "trunc", "randn_like", "rand_like", "bernoulli", "count_nonzero", "nonzero",
    "searchsorted", "bucketize", "lift_fresh", "lift_fresh_copy",
}  # fmt: skip

#: Operations linear in all their floating tensor arguments together: the tangent is the
#: operation applied to the tangents (zeros for an argument without one).
_LINEAR = {
    "view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "t", "squeeze", "unsqueeze",
    "select", "slice", "narrow", "cat", "stack", "split", "split_with_sizes", "unbind", "flip", "roll", "repeat",
    "diagonal", "diag_embed", "sum", "mean", "cumsum", "clone", "alias", "contiguous", "unfold",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d",
    "reflection_pad1d", "reflection_pad2d", "reflection_pad3d", "replication_pad1d", "replication_pad2d",
    "replication_pad3d", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
    "upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d", "upsample_bicubic2d", "im2col", "col2im",
    "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "tril", "triu", "trace", "movedim", "squeeze_copy",
    "view_copy", "expand_copy", "permute_copy", "select_copy", "slice_copy", "transpose_copy", "unsqueeze_copy",
    "diagonal_copy", "unfold_copy", "alias_copy", "index", "index_select", "gather", "take", "take_along_dim",
    "embedding", "scatter", "scatter_add", "index_put", "index_add", "index_copy", "masked_select",
    "select_scatter", "slice_scatter", "diagonal_scatter", "constant_pad_nd", "index_fill",
    "_to_copy", "to", "_reshape_alias", "neg", "broadcast_in_dim", "convert_element_type", "collapse_view",
    "split_dim", "squeeze", "expand_dims", "reshape", "rev", "slice_in_dim", "view_of", "xsum",
}  # fmt: skip

#: Linear operations that write a constant (a padding value, a fill value): its position.
_WRITES_VALUE = {"constant_pad_nd": 2, "scatter": 3, "index_fill": 3}

#: Of the linear operations, those linear in some of their tensor arguments only (by
#: position among the flattened arguments); the others are held at their values.
_LINEAR_IN = {"nll_loss_forward": (0,), "nll_loss2d_forward": (0,), "_to_copy": (0,)}

#: Products: the positions (among the flattened arguments) of the factors, and of terms
#: added to the product (a bias).
_MULTILINEAR = {
    "mm": ((0, 1), ()), "bmm": ((0, 1), ()), "dot": ((0, 1), ()), "vdot": ((0, 1), ()), "mv": ((0, 1), ()),
    "outer": ((0, 1), ()), "addmm": ((1, 2), (0,)), "addmv": ((1, 2), (0,)), "baddbmm": ((1, 2), (0,)),
    "addbmm": ((1, 2), (0,)), "addr": ((1, 2), (0,)), "convolution": ((0, 1), (2,)),
    "_convolution": ((0, 1), (2,)), "cudnn_convolution": ((0, 1), ()), "matmul": ((0, 1), ()),
    "linear": ((0, 1), (2,)), "bilinear": ((0, 1, 2), (3,)),
}  # fmt: skip

#: Selections returning (values, indices) along a dimension: the tangent is gathered there.
_INDEXED = {"max", "min", "sort", "topk", "kthvalue", "median", "nanmedian", "mode", "cummax", "cummin"}

#: Pooling by maximum, with the indices into the flattened window dimensions.
_POOLED = {"max_pool2d_with_indices": 2, "max_pool3d_with_indices": 3, "adaptive_max_pool2d": 2,
           "adaptive_max_pool3d": 3, "fractional_max_pool2d": 2}


_COMPLEX_INSIDE = (
    "the directional check does not follow complex values ({what}): a function with complex values is "
    f"checked element by element, at {MAX_SYMBOLIC_ELEMENTS} real input elements or fewer in all (a complex "
    "input counts twice) where its symbolic Jacobian is built within 5 s, in reverse mode; or where it is "
    "elementwise, at any size and in every mode. Check it at smaller tensors"
)


class Run(NamedTuple):
    """One forward-mode run: the output, its tangents ``[K, *out.shape]``, their magnitudes
    ``[2K, *out.shape]`` (see :meth:`Tangents.magnitude`), how many operations carried a
    tangent, and the largest unit roundoff among the values that carried one."""

    out: torch.Tensor
    tangents: torch.Tensor
    magnitudes: torch.Tensor
    operations: int
    roundoff: float


def _name(func: torch._ops.OpOverload) -> str:
    return func._schema.name.split("::")[1]


#: Units in the last place by which a jittered run moves every computed value (a correct
#: autograd rounds each by half a unit, and a library kernel by a few).
JITTER_ULPS = 4


class Tangents(UncompiledMode):
    """While active: for every tensor the code computes from the inputs given :meth:`seed`,
    its tangent along ``K`` directions and the magnitude of that tangent's computation."""

    def __init__(self, directions: int, jitter: torch.Generator | None = None) -> None:
        super().__init__()
        self.directions = directions
        # Where given: every value an operation computes from the inputs is moved by up to
        # JITTER_ULPS units in the last place (random signs), as rounding may move it
        self.jitter = jitter
        self._known: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.operations = 0  # operations that carried a tangent
        self.roundoff = 0.0  # the largest unit roundoff of a value that carried one (a float32 leg)
        self._depth = 0

    # -- bookkeeping ------------------------------------------------------------------------

    def seed(self, value: torch.Tensor, tangent: torch.Tensor) -> None:
        """Give an input its tangents ``[K, *value.shape]``."""
        tangent = tangent.to(_F64)
        self._set(value, tangent, torch.cat([tangent.abs(), torch.zeros_like(tangent)]))

    def _set(self, value: torch.Tensor, tangent: torch.Tensor, magnitude: torch.Tensor) -> None:
        self._known[id(value)] = (value, tangent, magnitude)
        if value.is_floating_point():
            self.roundoff = max(self.roundoff, torch.finfo(value.dtype).eps / 2)

    def _drop(self, value: torch.Tensor) -> None:
        self._known.pop(id(value), None)

    def carries(self, value: Any) -> bool:
        entry = self._known.get(id(value)) if isinstance(value, torch.Tensor) else None
        return entry is not None and entry[0] is value

    def tangent(self, value: torch.Tensor) -> torch.Tensor:
        """``[K, *shape]``: zeros for a tensor that does not depend on the inputs."""
        if self.carries(value):
            return self._known[id(value)][1]
        return torch.zeros((self.directions, *value.shape), dtype=_F64, device=value.device)

    def magnitude(self, value: torch.Tensor) -> torch.Tensor:
        """``[2K, *shape]``: per direction, the size of the tangent's computation (the same sums
        with every term in magnitude), then how far a kink on the way leaves the tangent open
        (where a local derivative jumps at the point itself: relu at 0, clamp at its bound)."""
        if self.carries(value):
            return self._known[id(value)][2]
        return torch.zeros((2 * self.directions, *value.shape), dtype=_F64, device=value.device)

    # -- dispatch ---------------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        leaves, _ = tree_flatten((args, kwargs))
        if not any(self.carries(a) for a in leaves) or _gradient_stopped():
            return func(*args, **kwargs)
        name = _name(func)
        in_place = name.endswith("_") and not name.endswith("__")
        base = name[:-1] if in_place else name
        if base in _CONSTANT:
            out = func(*args, **kwargs)
            if in_place:
                self._drop(args[0])
            return out
        if in_place and base in ("copy", "fill", "zero"):
            self.operations += 1
            return self._in_place(func, base, None, args, kwargs)
        if base in ("complex", "polar", "view_as_complex"):
            raise TraceError(_COMPLEX_INSIDE.format(what=f"{func} makes a complex value of the inputs"))
        rule = _rule(func, base)
        if rule is None:
            decomposition = _decomposition(func, base)
            if decomposition is None or self._depth > 32:
                raise TraceError(
                    f"the directional check has no rule for torch operator {func} on tensors that depend on the "
                    "inputs. Write the function with operators that decompose into supported ones, or check it at "
                    f"{MAX_SYMBOLIC_ELEMENTS} input elements or fewer, where autocheck traces it symbolically "
                    "(a rule for it: autocheck.register_torch_op)"
                )
            self._depth += 1
            try:
                with self:
                    return decomposition(*args, **kwargs)
            finally:
                self._depth -= 1
        self.operations += 1
        if in_place:
            return self._in_place(func, base, rule, args, kwargs)
        out = func(*args, **kwargs)
        if any(isinstance(t, torch.Tensor) and t.is_complex() for t in tree_flatten(out)[0]):
            raise TraceError(_COMPLEX_INSIDE.format(what=f"{func} gives a complex value from the inputs"))
        if self.jitter is not None:
            self._jitter(out, leaves)
        rule(self, func, args, kwargs, out)
        return out

    def _jitter(self, out: Any, leaves: Sequence[Any]) -> None:
        """Move the values ``out`` holds by a few units in the last place, before the rule reads
        them: the exact side then sees values rounded otherwise than the code's own were."""
        shared = {a.untyped_storage().data_ptr() for a in leaves if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if (isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()
                    and t.untyped_storage().data_ptr() not in shared):
                signs = torch.randint(0, 2, t.shape, generator=self.jitter).to(device=t.device, dtype=t.dtype)
                step = JITTER_ULPS * torch.finfo(t.dtype).eps
                t.mul_(signs.mul_(2 * step).add_(1 - step))

    def _in_place(self, func, base, rule, args, kwargs):
        target = args[0]
        if target._base is not None or any(entry[0]._base is target for entry in self._known.values()):
            raise TraceError(
                f"f writes in place into a tensor that shares memory with another ({func}: a write through a view "
                "such as y[:, 0] = ... or y[:, 0] *= 3, or into a tensor that has views): the directional check "
                "follows values, not memory. Build the result out of place (torch.cat, torch.where, index_put), "
                "or check the function at 100 input elements or fewer"
            )
        if base == "copy":
            source = args[1]
            shape = (self.directions, *target.shape)
            tangent = self.tangent(source).expand(shape).clone()
            magnitude = self.magnitude(source).expand((2 * self.directions, *target.shape)).clone()
            carried = self.carries(source)
            out = func(*args, **kwargs)
            if carried:
                self._set(target, tangent, magnitude)
            else:
                self._drop(target)
            return out
        if base in ("fill", "zero"):
            out = func(*args, **kwargs)
            self._drop(target)
            return out
        before = target.clone()
        if self.carries(target):
            self._set(before, self.tangent(target), self.magnitude(target))
        packet = getattr(aten, base, None)
        overload = getattr(packet, func._overloadname, None) or getattr(packet, "default", None)
        if overload is None:
            raise TraceError(f"the directional check has no out-of-place form of {func}")
        new_args = (before, *args[1:])
        result = overload(*new_args, **kwargs)
        rule(self, overload, new_args, kwargs, result)
        tangent, magnitude = self.tangent(result), self.magnitude(result)
        out = func(*args, **kwargs)
        self._set(target, tangent, magnitude)
        return out


def _attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, dropout_mask=None, *,
               scale=None, enable_gqa=False):
    """aten._scaled_dot_product_attention_math, written out: softmax(q k^T * scale + mask) v."""
    if dropout_p:
        raise TraceError("scaled_dot_product_attention with dropout_p > 0 is random; check it with dropout_p=0.0")
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, dim=-3), value.repeat_interleave(repeat, dim=-3)
    scale = 1.0 / float(query.shape[-1]) ** 0.5 if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, value), weights


def _distances(x1, x2, p=2.0, compute_mode=None):
    """aten._cdist_forward, written out: the p-norm of every pairwise difference."""
    difference = x1.unsqueeze(-2) - x2.unsqueeze(-3)
    if p == 0:
        raise TraceError("cdist with p=0 counts nonzero differences: it has no derivative to check")
    return torch.linalg.vector_norm(difference, ord=p, dim=-1)


#: Operations written out here where torch has no decomposition of them.
_WRITTEN_OUT = {"_scaled_dot_product_attention_math": _attention, "_cdist_forward": _distances}


def _rule(func: torch._ops.OpOverload, base: str) -> Callable[..., None] | None:
    if base in _MULTILINEAR:
        return _multilinear
    if base in _INDEXED and len(func._schema.returns) == 2:
        return _indexed
    if base in ("amax", "amin") or (base in ("max", "min") and not func._schema.arguments[1:]):
        return _ties_even
    if base in _POOLED:
        return _pooled
    if base == "var" and func.namespace == "prims":
        return _variance
    if base == "prod" and func.namespace == "prims":
        return _product
    if base in _LINALG:
        return _LINALG[base]
    if base == "nan_to_num":
        return _finite_only
    if base in _LINEAR:
        return _linear
    if base in _LINEAR_IN:
        return _linear
    if torch.Tag.pointwise in func.tags:
        return _pointwise
    if func.namespace == "prims":  # prims.div, prims.where: as the aten operator of the name
        packet = getattr(aten, base, None)
        if packet is not None and any(torch.Tag.pointwise in getattr(packet, o).tags for o in packet.overloads()):
            return _pointwise
    return None


def _decomposition(func: torch._ops.OpOverload, base: str) -> Callable[..., Any] | None:
    """How an operation without a rule is run as simpler ones: written out here, torch's
    decomposition table, or its composite kernel (softmax.int, matmul below autograd)."""
    found = _WRITTEN_OUT.get(base) or decomposition_table.get(func)
    if found is None and torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
        found = func.decompose
    return found


# --------------------------------------------------------------------------------------
# Rules: each records the tangent and magnitude of ``out`` in the mode
# --------------------------------------------------------------------------------------


def _floating(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _record(mode: Tangents, out: Any, tangents: Any, magnitudes: Any) -> None:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    ts = tangents if isinstance(tangents, (tuple, list)) else (tangents,)
    ms = magnitudes if isinstance(magnitudes, (tuple, list)) else (magnitudes,)
    for o, t, m in zip(outs, ts, ms):
        if _floating(o) and t is not None:
            mode._set(o, t.to(_F64), m.to(_F64))


def _each(fn: Callable[..., Any], *batched: torch.Tensor) -> Any:
    """``fn`` applied to each direction of ``[K, ...]`` tensors, stacked (per output)."""
    results = [fn(*[t[k] for t in batched]) for k in range(batched[0].shape[0])]
    if isinstance(results[0], (tuple, list)):
        return type(results[0])(
            torch.stack(list(r)) if isinstance(r[0], torch.Tensor) else None for r in zip(*results)
        )
    return torch.stack(results)


_CASTS = ("_to_copy", "to", "convert_element_type", "_convert_element_type")


def _linear(mode: Tangents, func, args, kwargs, out) -> None:
    leaves, spec = tree_flatten((args, kwargs))
    name = _name(func)
    if name in _CASTS:  # tangents stay float64 whatever the value's dtype
        if _floating(out):
            mode._set(out, mode.tangent(args[0]), mode.magnitude(args[0]))
        return
    positions = _LINEAR_IN.get(name)
    moving = [i for i, a in enumerate(leaves) if _floating(a) and (positions is None or i in positions)]
    carried = [i for i in moving if mode.carries(leaves[i])]

    def apply(*ts: torch.Tensor, absolute: bool = False) -> Any:
        new = list(leaves)
        for i, a in enumerate(leaves):
            if i in moving:
                new[i] = torch.zeros_like(a, dtype=_F64)
            elif _floating(a):
                new[i] = a.to(_F64).abs() if absolute else a.to(_F64)
        for i, t in zip(carried, ts):
            new[i] = t
        a, k = tree_unflatten(new, spec)
        if name in _WRITES_VALUE:  # the value written is a constant: the tangent gets 0 there
            position = _WRITES_VALUE[name]
            if len(a) > position and not isinstance(a[position], torch.Tensor):
                a = (*a[:position], 0.0, *a[position + 1:])
            k = {**k, "value": 0.0} if "value" in k else k
        if name == "embedding" and len(a) > 2 and a[2] is not None and a[2] >= 0:
            t = a[0].clone()
            t[a[2]] = 0.0  # the padding row is a constant: torch documents no gradient for it
            a = (t, *a[1:])
        return func(*a, **k)

    tangent = _each(apply, *[mode.tangent(leaves[i]) for i in carried])
    magnitude = _each(functools.partial(apply, absolute=True), *[mode.magnitude(leaves[i]) for i in carried])
    _record(mode, out, tangent, _abs_tree(magnitude))


def _abs_tree(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return type(value)(_abs_tree(v) for v in value)
    return value.abs() if isinstance(value, torch.Tensor) else value


def _multilinear(mode: Tangents, func, args, kwargs, out) -> None:
    leaves, spec = tree_flatten((args, kwargs))
    factors, added = _MULTILINEAR[_name(func)]
    tangent = magnitude = None
    for k in [*factors, *added]:
        if k >= len(leaves) or not mode.carries(leaves[k]):
            continue

        def term(t: torch.Tensor, k: int = k, absolute: bool = False) -> torch.Tensor:
            new = list(leaves)
            for i, a in enumerate(leaves):
                if _floating(a):
                    new[i] = a.to(_F64).abs() if absolute else a.to(_F64)
            for i in added:
                if i < len(new) and isinstance(new[i], torch.Tensor):
                    new[i] = torch.zeros_like(new[i])
            if k in added:
                new[factors[0]] = torch.zeros_like(new[factors[0]])
            new[k] = t
            a, kw = tree_unflatten(new, spec)
            return func(*a, **kw)

        t = _each(term, mode.tangent(leaves[k]))
        m = _each(functools.partial(term, absolute=True), mode.magnitude(leaves[k]))
        tangent = t if tangent is None else tangent + t
        magnitude = m if magnitude is None else magnitude + m
    if tangent is not None:
        _record(mode, out, tangent, magnitude.abs())


def _indexed(mode: Tangents, func, args, kwargs, out) -> None:
    values, indices = out
    source = args[0]
    schema = func._schema.arguments
    bound = {a.name: (args[i] if i < len(args) else kwargs.get(a.name, a.default_value)) for i, a in enumerate(schema)}
    if "dim" not in bound:  # max()/min() over everything, median(): not (values, indices)
        return
    dim = bound["dim"] if bound["dim"] is not None else -1
    dim = dim % max(source.ndim, 1) if source.ndim else 0
    keep = bound.get("keepdim", True) if _name(func) not in ("sort", "topk", "cummax", "cummin") else True
    index = indices if keep or source.ndim == 0 else indices.unsqueeze(dim)

    def pick(t: torch.Tensor) -> torch.Tensor:
        if source.ndim == 0:
            return t
        picked = t.gather(dim, index)
        return picked if keep else picked.squeeze(dim)

    mode._set(values, _each(pick, mode.tangent(source)), _each(pick, mode.magnitude(source)))


def _ties_even(mode: Tangents, func, args, kwargs, out) -> None:
    source = args[0]
    schema = func._schema.arguments
    bound = {a.name: (args[i] if i < len(args) else kwargs.get(a.name, a.default_value)) for i, a in enumerate(schema)}
    dims = bound.get("dim", ())
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())  # the schema's default is [], a list
    dims = dims or tuple(range(source.ndim))  # none named: all of them
    dims = tuple(d % max(source.ndim, 1) for d in dims) if source.ndim else ()
    keep = bool(bound.get("keepdim", False))
    if source.ndim == 0:
        mode._set(out, mode.tangent(source), mode.magnitude(source))
        return
    full = out if keep else out.reshape([1 if d in dims else s for d, s in enumerate(source.shape)])
    ties = (source == full).to(_F64)
    count = ties.sum(dim=dims, keepdim=True)

    def share(t: torch.Tensor) -> torch.Tensor:
        return (t * ties / count).sum(dim=dims, keepdim=keep)

    mode._set(out, _each(share, mode.tangent(source)), _each(share, mode.magnitude(source)))


def _finite_only(mode: Tangents, func, args, kwargs, out) -> None:
    """nan_to_num: the input where it is finite, a constant elsewhere."""
    finite = torch.isfinite(args[0]).to(_F64)
    mode._set(out, mode.tangent(args[0]) * finite, mode.magnitude(args[0]) * finite)


def _variance(mode: Tangents, func, args, kwargs, out) -> None:
    """prims.var(x, dims, correction): d var = 2 / (n - correction) * sum((x - mean) * dx)."""
    source, dims = args[0], args[1]
    correction = kwargs.get("correction", args[2] if len(args) > 2 else 1)
    dims = tuple(range(source.ndim)) if dims is None else tuple(d % source.ndim for d in dims)
    n = 1
    for d in dims:
        n *= source.shape[d]
    factor = 2.0 / (n - correction) if n > correction else math.nan  # torch's value is inf or nan there
    centred = (source.to(_F64) - source.to(_F64).mean(dim=dims, keepdim=True)) * factor

    def along(t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (t * weights).sum(dim=dims)

    tangent = _each(functools.partial(along, weights=centred), mode.tangent(source))
    magnitude = _each(functools.partial(along, weights=centred.abs()), mode.magnitude(source))
    mode._set(out, tangent, magnitude)


def _product(mode: Tangents, func, args, kwargs, out) -> None:
    """prims.prod(x, dims): d prod = sum_i dx_i * prod_{j != i} x_j (exclusive products, exact at zeros)."""
    source, dims = args[0], args[1]
    dims = tuple(range(source.ndim)) if dims is None else tuple(d % source.ndim for d in dims)
    rest = [d for d in range(source.ndim) if d not in dims]
    order = [*rest, *dims]
    kept = [source.shape[d] for d in rest]

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.to(_F64).permute(order).reshape(*kept, -1)

    y = flat(source)
    ones = torch.ones((*kept, 1), dtype=_F64, device=y.device)
    before = torch.cat([ones, y[..., :-1]], -1).cumprod(-1)
    after = torch.cat([y[..., 1:], ones], -1).flip(-1).cumprod(-1).flip(-1)
    others = before * after

    def along(t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (flat(t) * weights).sum(-1).reshape(out.shape)

    tangent = _each(functools.partial(along, weights=others), mode.tangent(source))
    magnitude = _each(functools.partial(along, weights=others.abs()), mode.magnitude(source))
    mode._set(out, tangent, magnitude)


def _inverse(mode: Tangents, func, args, kwargs, out) -> None:
    """linalg_inv_ex(A) -> (inverse, info): d(A^-1) = -A^-1 dA A^-1."""
    inverse = out[0].to(_F64)
    tangent = _each(lambda t: -(inverse @ t @ inverse), mode.tangent(args[0]))
    magnitude = _each(lambda m: inverse.abs() @ m @ inverse.abs(), mode.magnitude(args[0]))
    mode._set(out[0], tangent, magnitude)


def _determinant(mode: Tangents, func, args, kwargs, out) -> None:
    """_linalg_det(A) -> (det, LU, pivots): d det = det * trace(A^-1 dA)."""
    a = args[0].to(_F64)
    det = out[0].to(_F64)
    cofactor = torch.linalg.inv(a).transpose(-2, -1) * det[..., None, None]  # det * A^-T
    tangent = _each(lambda t: (cofactor * t).sum((-2, -1)), mode.tangent(args[0]))
    magnitude = _each(lambda m: (cofactor.abs() * m).sum((-2, -1)), mode.magnitude(args[0]))
    mode._set(out[0], tangent, magnitude)


def _solution(mode: Tangents, func, args, kwargs, out) -> None:
    """_linalg_solve_ex(A, B, left) -> (X, ...): A X = B gives dX = A^-1 (dB - dA X); X A = B
    gives dX = (dB - X dA) A^-1. B may be a batch of vectors."""
    a, b = args[0].to(_F64), args[1].to(_F64)
    left = kwargs.get("left", args[2] if len(args) > 2 else True)
    x = out[0].to(_F64)
    inverse = torch.linalg.inv(a)
    vector = b.ndim == 1 or (b.ndim == a.ndim - 1 and b.shape == a.shape[:-1])  # torch's rule
    xm = x.unsqueeze(-1) if vector else x

    def change(ta: torch.Tensor, tb: torch.Tensor, absolute: bool) -> torch.Tensor:
        inv = inverse.abs() if absolute else inverse
        xs = xm.abs() if absolute else xm
        tb = tb.unsqueeze(-1) if vector else tb
        if left:
            inner = tb + ta @ xs if absolute else tb - ta @ xs
            result = inv @ inner
        else:
            inner = tb + xs @ ta if absolute else tb - xs @ ta
            result = inner @ inv
        return result.squeeze(-1) if vector else result

    tangent = _each(lambda ta, tb: change(ta, tb, False), mode.tangent(args[0]), mode.tangent(args[1]))
    magnitude = _each(lambda ta, tb: change(ta, tb, True), mode.magnitude(args[0]), mode.magnitude(args[1]))
    mode._set(out[0], tangent, magnitude)


def _log_determinant(mode: Tangents, func, args, kwargs, out) -> None:
    """_linalg_slogdet(A) -> (sign, logabsdet, LU, pivots): d log|det| = trace(A^-1 dA); the sign is constant."""
    inverse_t = torch.linalg.inv(args[0].to(_F64)).transpose(-2, -1)
    tangent = _each(lambda t: (inverse_t * t).sum((-2, -1)), mode.tangent(args[0]))
    magnitude = _each(lambda m: (inverse_t.abs() * m).sum((-2, -1)), mode.magnitude(args[0]))
    mode._set(out[1], tangent, magnitude)


def _cholesky(mode: Tangents, func, args, kwargs, out) -> None:
    """linalg_cholesky_ex(A, upper) -> (L, info): dL = L Phi(L^-1 dA L^-T), Phi the lower
    triangle with half the diagonal (A = L L^T, dA symmetric as the code reads it)."""
    upper = kwargs.get("upper", args[1] if len(args) > 1 else False)
    factor = out[0].to(_F64)
    lower = factor.transpose(-2, -1) if upper else factor
    inverse = torch.linalg.inv(lower)
    n = lower.shape[-1]
    half = torch.ones(n, n, dtype=_F64, device=lower.device).tril(-1) + 0.5 * torch.eye(n, dtype=_F64, device=lower.device)

    def change(t: torch.Tensor, absolute: bool) -> torch.Tensor:
        t = (t + t.transpose(-2, -1)) / 2 if not absolute else (t + t.transpose(-2, -1)) / 2
        left, right = (lower.abs(), inverse.abs()) if absolute else (lower, inverse)
        inner = right @ t @ right.transpose(-2, -1)
        result = left @ (inner * half)
        return result.transpose(-2, -1) if upper else result

    tangent = _each(lambda t: change(t, False), mode.tangent(args[0]))
    magnitude = _each(lambda m: change(m, True), mode.magnitude(args[0]))
    mode._set(out[0], tangent, magnitude)


def _matrix_exponential(mode: Tangents, func, args, kwargs, out) -> None:
    """linalg_matrix_exp(A): the derivative along dA is the upper right block of
    exp([[A, dA], [0, A]]) (exact, by the block structure)."""
    a = args[0].to(_F64)
    n = a.shape[-1]

    def change(t: torch.Tensor, absolute: bool) -> torch.Tensor:
        top = torch.cat([a.abs() if absolute else a, t], -1)
        bottom = torch.cat([torch.zeros_like(a), a.abs() if absolute else a], -1)
        return torch.linalg.matrix_exp(torch.cat([top, bottom], -2))[..., :n, n:]

    tangent = _each(lambda t: change(t, False), mode.tangent(args[0]))
    magnitude = _each(lambda m: change(m, True), mode.magnitude(args[0]))
    mode._set(out, tangent, magnitude)


_LINALG = {"linalg_inv_ex": _inverse, "_linalg_det": _determinant, "_linalg_solve_ex": _solution,
           "_linalg_slogdet": _log_determinant, "linalg_cholesky_ex": _cholesky, "linalg_matrix_exp": _matrix_exponential}


def _pooled(mode: Tangents, func, args, kwargs, out) -> None:
    values, indices = out
    source = args[0]
    window = _POOLED[_name(func)]

    def pick(t: torch.Tensor) -> torch.Tensor:
        flat = t.flatten(-window)
        return flat.gather(-1, indices.flatten(-window)).reshape(values.shape)

    mode._set(values, _each(pick, mode.tangent(source)), _each(pick, mode.magnitude(source)))


def _pointwise(mode: Tangents, func, args, kwargs, out) -> None:
    if not _floating(out):
        return
    leaves, spec = tree_flatten((args, kwargs))
    tensors = [i for i, a in enumerate(leaves) if isinstance(a, torch.Tensor)]
    carried = [j for j, i in enumerate(tensors) if mode.carries(leaves[i])]
    key = tuple(("tensor", leaves[i].is_floating_point() or leaves[i].dtype == torch.bool) if i in tensors
                else _hashable(a) for i, a in enumerate(leaves))
    partials, jumps = _partials(func, spec, key, tuple(carried), _trace.rule_registrations)
    values = [leaves[i].to(_F64) for i in tensors]
    locals_ = [p.to(_F64) for p in partials(*values)]
    open_ = [None] * len(locals_)
    if jumps:
        # A local derivative that jumps at the point itself (relu at 0, clamp at its bound,
        # abs at 0): any value between the one-sided ones is a valid choice (torch documents
        # its own). Take the middle, and keep the half-width: the judgement allows it.
        below, above = list(values), list(values)
        for j in carried:
            below[j], above[j] = step(values[j], -2.0, _F64), step(values[j], 2.0, _F64)
        lows = [p.to(_F64) for p in partials(*below)]
        highs = [p.to(_F64) for p in partials(*above)]
        for n, (low, high) in enumerate(zip(lows, highs)):
            kink = torch.isfinite(low) & torch.isfinite(high) & (low != high)
            if bool(kink.any()):
                locals_[n] = torch.where(kink, (low + high) / 2, locals_[n])
                open_[n] = torch.where(kink, (high - low).abs() / 2, 0.0)
    k = mode.directions
    tangent = magnitude = None
    for n, (j, p) in enumerate(zip(carried, locals_)):
        t_in = _align(mode.tangent(leaves[tensors[j]]), out.ndim)
        m_in = _align(mode.magnitude(leaves[tensors[j]]), out.ndim)
        t = t_in * p
        m = m_in * p.abs()
        if open_[n] is not None:  # the kink's half-width times the tangent, to the second half
            m = m + torch.cat([torch.zeros_like(t_in.abs() * open_[n]), t_in.abs() * open_[n]])
        tangent = t if tangent is None else tangent + t
        magnitude = m if magnitude is None else magnitude + m
    mode._set(out, tangent.expand((k, *out.shape)), magnitude.expand((2 * k, *out.shape)))


def _align(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[K, *shape]`` with ``shape`` padded on the left to ``ndim`` dimensions (broadcasting)."""
    missing = ndim - (t.ndim - 1)
    return t.reshape(t.shape[0], *([1] * missing), *t.shape[1:]) if missing > 0 else t


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return (type(value).__name__, value)


#: Functions in a local derivative that may jump at the point itself.
_JUMPS = (sympy.Heaviside, sympy.sign, sympy.Piecewise, sympy.Min, sympy.Max, sympy.floor, sympy.ceiling, sympy.frac)


@functools.lru_cache(maxsize=1024)
def _partials(func: torch._ops.OpOverload, spec: Any, key: tuple, carried: tuple[int, ...],
              registrations: int) -> tuple[Callable[..., Any], bool]:
    """The local partial derivatives of an elementwise operation with these constant
    arguments, by the tensor arguments at ``carried``, compiled to torch (again after a
    rule is registered: ``registrations`` counts them); and whether one may jump."""
    tensors = [i for i, k in enumerate(key) if isinstance(k, tuple) and k and k[0] == "tensor"]
    constants = {i: k[1] for i, k in enumerate(key) if i not in tensors}

    def operation(*scalars: torch.Tensor) -> Any:
        new = [None] * len(key)
        for i, v in constants.items():
            new[i] = v
        for i, s in zip(tensors, scalars):
            new[i] = s
        a, k = tree_unflatten(new, spec)
        return func(*a, **k)

    names = [f"a{j}" for j in range(len(tensors))]
    traced = trace(operation, shapes=[() for _ in tensors], names=names)
    expr = traced.output.reshape(-1)[0]
    symbols = [s.reshape(-1)[0] for s in traced.symbols]
    derivatives = [diff(sympy.sympify(expr), symbols[j]) for j in carried]
    jumps = any(d.has(*_JUMPS) for d in derivatives)
    return _printer.to_torch(derivatives, symbols), jumps


# --------------------------------------------------------------------------------------
# The directional derivative of a function
# --------------------------------------------------------------------------------------


def directional_at(
    f: Callable[..., Any], inputs: Sequence[Any], seeds: Sequence[tuple[torch.Tensor, torch.Tensor]], k: int,
    jitter: torch.Generator | None = None,
) -> Run:
    """Run ``f`` at ``inputs`` (integer targets included) with tangents for some of them:
    ``seeds`` pairs an input object with its ``[K, *shape]`` tangent. With ``jitter`` (a
    generator), every value computed from the inputs is moved by a few units in the last place."""
    mode = Tangents(k, jitter)
    for x, d in seeds:
        mode.seed(x, d)
    with _tracing(False), mode:  # grad mode as autograd runs f; a custom Function's forward counts
        try:
            out = f(*inputs)
        except RuntimeError as error:
            if "device meta" not in str(error):
                raise
            # torch.func.hessian (jacfwd over jacrev) runs its own meta-tensor passes, which
            # carry no tangents
            raise TraceError(
                "f nests torch.func transforms (hessian, jacfwd over jacrev) that the directional check cannot "
                "follow: check the function they transform (order=2 checks its second derivatives)"
            ) from None
    return Run(_followed(out, mode), mode.tangent(out), mode.magnitude(out), mode.operations, mode.roundoff)


def _followed(out: Any, mode: Tangents) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"f returned {type(out).__name__}, not a tensor; return a tensor computed from the inputs")
    if not mode.carries(out) and out.is_floating_point():
        raise TraceError(
            "f's output does not depend on its inputs through torch operations that the directional check can "
            "follow: it is a constant, or a custom autograd.Function computes its forward outside torch (numpy, "
            ".item(), .tolist()). Write the forward with torch operations, or check at 100 input elements or "
            "fewer with reference= giving the mathematics"
        )
    return out.detach()


def second_order_at(
    f: Callable[..., Any], inputs: Sequence[Any], seeds: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    k: int, jitter: torch.Generator | None = None,
) -> Run:
    """Mixed second directional derivatives ``d2/ds dt f(x + s u + t w)`` along ``K`` directions
    ``u`` and one ``w``: forward mode over forward mode. ``seeds`` holds ``(input, u [K, *shape],
    w [*shape])``. The inner mode carries the derivative along ``w``; every operation it runs
    to do so (the local derivatives, the sums of the chain rule) runs under the outer mode,
    which differentiates it along ``u``. ``jitter`` as for :func:`directional_at`.

    Returns the output, the mixed derivatives ``[K, *out.shape]``, their magnitudes, and how
    many operations carried a derivative in both modes (a :class:`Run`).
    """
    outer, inner = Tangents(k, jitter), Tangents(1)
    for x, u, _ in seeds:
        outer.seed(x, u)
    for x, _, w in seeds:
        inner.seed(x, w[None])  # along w; a constant for the outer mode
    with _tracing(False), outer, inner:
        out = f(*inputs)
    along_w = inner.tangent(out)  # [1, *out.shape]
    return Run(_followed(out, inner), outer.tangent(along_w)[:, 0], outer.magnitude(along_w)[:, 0],
               outer.operations + inner.operations, max(outer.roundoff, inner.roundoff))
