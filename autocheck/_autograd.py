"""Stage 4: what autograd says.

Every call of the user's function happens here, on fresh leaf tensors (the caller's
tensors and their ``.grad`` are never touched): the gradients after ``backward`` with
random upstream gradients, the probes that decide how a function may be evaluated, and
gradcheck's structural checks, done exactly:

* the function is deterministic (two runs on one input agree bit for bit);
* backward is reentrant (a second backward with the same upstream gradient agrees);
* backward leaves the tensors saved for it unchanged;
* backward handles an undefined output gradient (``materialize_grads``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ._errors import NondeterministicFunction

#: The ways torch computes a derivative that a check can judge (JAX's words): reverse mode
#: (backward, x.grad) and forward mode (dual tensors, the JVP).
REVERSE, FORWARD, VMAP = "rev", "fwd", "vmap"

#: Upstream gradients are drawn for this many elements and tiled over larger outputs:
#: drawing costs about as much as a backward, and a period this long cannot line up with
#: any structure of a bug.
COTANGENT_PERIOD = 4093  # prime


@dataclass(frozen=True)
class Concatenated:
    """The generator of points judged together that were drawn as separate batches (their
    points concatenated in order): each batch's share of a draw comes from its own
    generator, so every point gets the upstream gradients it gets judged alone."""

    parts: tuple[tuple[torch.Generator, int], ...]  # per batch: its generator and its number of points


def cotangent(shape: Sequence[int], dtype: torch.dtype, device: Any,
              generator: torch.Generator | Concatenated) -> torch.Tensor:
    """Upstream gradients with |v| in [0.5, 0.9], exactly representable in every dtype.

    Not 1: a backward that ignores grad_output must fail. Below 1: v * (huge) must not
    overflow where the exact product is finite.
    """
    shape = tuple(shape)
    if isinstance(generator, Concatenated):
        if len(shape) != 1 or shape[0] != sum(n for _, n in generator.parts):
            raise ValueError(f"batches of {[n for _, n in generator.parts]} points judged together, "
                             f"but upstream gradients of shape {shape} were asked for")
        return torch.cat([cotangent((n,), dtype, device, g) for g, n in generator.parts])
    count = 1
    for n in shape:
        count *= n
    period = min(max(count, 1), COTANGENT_PERIOD)
    steps = torch.randint(32, 58, (period,), generator=generator)
    signs = torch.randint(0, 2, (period,), generator=generator) * 2 - 1
    block = (signs * steps / 64.0).to(dtype=dtype, device=device)
    if count <= period:
        return block[:count].reshape(shape)
    # Tiled by one copy into the rows of a fresh tensor (Tensor.repeat takes 3x as long)
    tiled = torch.empty(-(-count // period), period, dtype=dtype, device=device).copy_(block)
    return tiled.reshape(-1)[:count].reshape(shape)


# --------------------------------------------------------------------------------------
# Running the function
# --------------------------------------------------------------------------------------


def _output(f: Callable[..., Any], leaves: Sequence[torch.Tensor]) -> torch.Tensor:
    out = f(*leaves)
    if isinstance(out, (tuple, list)):
        raise TypeError(
            f"f returned a {type(out).__name__} of {len(out)} values; return a single tensor "
            "(check each output with its own function, or sum them with weights)"
        )
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"f returned {type(out).__name__}, not a tensor; return a tensor computed from the inputs")
    if not out.requires_grad:
        why = "an integer or boolean tensor" if not (out.dtype.is_floating_point or out.is_complex()) else "a tensor"
        raise TypeError(
            f"f returned {why} that does not require grad (dtype {out.dtype}): autograd has no gradient to check. "
            "It does not depend on its inputs through differentiable torch operations (a constant, an integer "
            "cast, .detach() or torch.no_grad() around all of it); return a value computed from the inputs"
        )
    return out


class _Upstream(torch.autograd.Function):
    """``out``'s backward from a scalar root, with upstream gradient ``v``: ``out.backward(v)``
    computes the same, but torch validates ``v`` there with its symbolic-shape machinery,
    whose import costs a process's first check 0.15 s."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ctx.v = v
        return out.new_zeros(())

    @staticmethod
    def backward(ctx: Any, _: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.v, None


def vjp(
    f: Callable[..., Any],
    values: Sequence[torch.Tensor],
    order: int,
    v: torch.Tensor,
    u: Sequence[Sequence[torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``x.grad`` for each input after ``backward(v)``; order n: the gradients ``g`` of
    ``<f, v>`` are taken again through their graph, level by level, as gradients of
    ``sum_i <g_i, u_l[i]>`` for the levels ``u`` (``order - 1`` of them, one tensor per
    input each), the last level by ``backward``.

    Returns the forward value (detached) and one gradient per input, zeros where autograd
    leaves ``.grad`` unset (the output does not depend on that input).
    """
    leaves = [x.detach().clone().requires_grad_(True) for x in values]
    out = _output(f, leaves)
    v = v.expand(out.shape) if v.shape != out.shape else v
    if order == 1:
        _Upstream.apply(out, v).backward()
    else:
        levels = list(u or ())
        grads = torch.autograd.grad(out, leaves, v, create_graph=True, allow_unused=True)
        for level in levels[:-1]:
            connected = [(g * w.expand(g.shape)).sum() for g, w in zip(grads, level) if g is not None and g.requires_grad]
            if not connected:
                grads = (None,) * len(leaves)
                break
            grads = torch.autograd.grad(sum(connected), leaves, create_graph=True, allow_unused=True)
        connected = [(g, w) for g, w in zip(grads, levels[-1]) if g is not None and g.requires_grad]
        if connected:
            torch.autograd.backward([g for g, _ in connected], [w.expand(g.shape) for g, w in connected])
    return out.detach(), [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]


def batched_vjp(f: Callable[..., Any], values: Sequence[torch.Tensor], vs: torch.Tensor,
                name: str = "f") -> list[torch.Tensor]:
    """Batched gradients, as gradcheck's ``check_batched_grad`` asks for them: one
    ``torch.func.vjp`` of ``f``, its pullback vmapped over a batch of upstream gradients ``vs``
    (``[B, *out.shape]``). Returns per input ``[B, *shape]``, zeros where it has no gradient."""
    from torch.func import vjp as func_vjp, vmap

    primals = [x.detach().clone() for x in values]
    try:
        out, pullback = func_vjp(f, *primals)
        grads = vmap(pullback)(vs.to(device=out.device, dtype=out.dtype))
    except (NotImplementedError, RuntimeError) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TypeError(
            f"modes includes 'vmap', but torch.func cannot batch the backward of {name} ({text}); a custom "
            "autograd.Function needs setup_context and vmap support (generate_vmap_rule = True, or a vmap "
            "staticmethod): see torch's 'Extending torch.func with autograd.Function'; or leave 'vmap' out of modes"
        ) from None
    return [g.detach() if g is not None else torch.zeros((vs.shape[0], *x.shape), dtype=x.dtype, device=x.device)
            for g, x in zip(grads, primals)]


def forward_over_reverse(
    f: Callable[..., Any],
    values: Sequence[torch.Tensor],
    order: int,
    v: torch.Tensor,
    u: Sequence[Sequence[torch.Tensor]],
    name: str = "f",
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What :func:`vjp` gives at ``order`` >= 2, with the last level taken by forward mode:
    the inputs are dual tensors carrying the last level's ``u`` as tangents, the gradients of
    the earlier levels are taken by reverse mode through their graph, and the tangent of the
    last of them is the answer (a Hessian-vector product at order 2: each level's gradient is
    the gradient of a scalar, so its Jacobian is symmetric and ``J w`` is ``J^T w``)."""
    import torch.autograd.forward_ad as fwAD

    levels = list(u)
    last = levels[-1]
    with fwAD.dual_level():
        leaves = [x.detach().clone().requires_grad_(True) for x in values]
        duals = [fwAD.make_dual(p, w.to(device=p.device, dtype=p.dtype).expand(p.shape)) for p, w in zip(leaves, last)]
        try:
            out = _output(f, duals)
            v = v.expand(out.shape) if v.shape != out.shape else v
            grads = torch.autograd.grad(out, leaves, v, create_graph=True, allow_unused=True)
            for level in levels[:-1]:
                connected = [(g * w.expand(g.shape)).sum() for g, w in zip(grads, level)
                             if g is not None and g.requires_grad]
                if not connected:
                    grads = (None,) * len(leaves)
                    break
                grads = torch.autograd.grad(sum(connected), leaves, create_graph=True, allow_unused=True)
        except (NotImplementedError, RuntimeError) as error:
            _forward_mode_error(error, name)
            raise
        tangents = [fwAD.unpack_dual(g).tangent if g is not None else None for g in grads]
    return out.detach(), [t.detach() if t is not None else torch.zeros_like(x) for t, x in zip(tangents, leaves)]


def _forward_mode_error(error: Exception, name: str) -> None:
    """Raise a clear TypeError where forward mode cannot run what ``name`` calls."""
    text = str(error)
    if "jvp" in text and "autograd.Function" in text:
        raise TypeError(
            f"modes includes 'fwd', but {name} calls a custom autograd.Function without a jvp staticmethod, "
            "so forward mode cannot run it: add jvp(ctx, *tangents) to the Function, or check "
            "modes=('rev',)"
        ) from None
    if "forward AD" in text or "forward-mode" in text or "forward mode" in text:
        raise TypeError(f"modes includes 'fwd', but torch has no forward-mode derivative for an operation "
                        f"{name} runs ({text.splitlines()[0]}); check modes=('rev',)") from None


def jvp(f: Callable[..., Any], values: Sequence[torch.Tensor], tangents: Sequence[torch.Tensor],
        name: str = "f") -> tuple[torch.Tensor, torch.Tensor]:
    """Forward mode: ``f``'s value and the tangent of its output when each input carries the
    tangent given (dual tensors of ``torch.autograd.forward_ad``)."""
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        duals = [fwAD.make_dual(x.detach().clone(), t.to(device=x.device, dtype=x.dtype).expand(x.shape))
                 for x, t in zip(values, tangents)]
        try:
            out = f(*duals)
        except (NotImplementedError, RuntimeError) as error:
            _forward_mode_error(error, name)
            raise
        if isinstance(out, (tuple, list)) or not isinstance(out, torch.Tensor):
            raise TypeError(f"f returned {type(out).__name__}; return a single tensor")
        primal, tangent = fwAD.unpack_dual(out)
        tangent = torch.zeros_like(primal) if tangent is None else tangent
        return primal.detach(), tangent.detach()


def func_jvp(f: Callable[..., Any], values: Sequence[torch.Tensor], tangents: Sequence[torch.Tensor]
             ) -> torch.Tensor | None:
    """The JVP by ``torch.func.jvp`` (functorch's forward mode), or None where torch.func cannot
    run ``f`` (a custom autograd.Function without setup_context): forward mode is then judged
    from ``torch.autograd.forward_ad`` alone."""
    from torch.func import jvp as jvp_of

    primals = tuple(x.detach().clone() for x in values)
    directions = tuple(t.to(device=x.device, dtype=x.dtype).expand(x.shape) for x, t in zip(primals, tangents))
    try:
        _, tangent = jvp_of(f, primals, directions)
    except (NotImplementedError, RuntimeError) as error:
        if "setup_context" in str(error) or "functorch" in str(error):
            return None
        raise
    return tangent.detach()


def pointwise_jvp(f: Callable[..., Any], values: Sequence[torch.Tensor], shape: Sequence[int],
                  tangents: Sequence[torch.Tensor], name: str = "f") -> torch.Tensor:
    """:func:`jvp` one point at a time, for a function of scalars that is not elementwise over a batch."""
    flat = [p.expand(shape).reshape(-1) for p in values]
    ts = [t.expand(shape).reshape(-1) for t in tangents]
    outs = [jvp(f, [p[k] for p in flat], [t[k] for t in ts], name)[1].reshape(()) for k in range(flat[0].numel())]
    return torch.stack(outs).reshape(shape)


def pointwise(
    f: Callable[..., Any],
    values: Sequence[torch.Tensor],
    shape: Sequence[int],
    order: int,
    v: torch.Tensor,
    u: Sequence[torch.Tensor] | None = None,
    gradients: Callable[..., tuple[torch.Tensor, list[torch.Tensor]]] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`vjp` (or ``gradients``, with its arguments) one point at a time, for a function of
    scalars that is not elementwise over a batch."""
    gradients = gradients or vjp
    flat = [p.expand(shape).reshape(-1) for p in values]
    forwards, grads = [], [[] for _ in values]
    for k in range(flat[0].numel()):
        uk = [[w.reshape(-1)[k] for w in level] for level in u] if u is not None else None
        forward, g = gradients(f, [p[k] for p in flat], order, v.reshape(-1)[k], uk)
        forwards.append(forward.reshape(()))
        for i, gi in enumerate(g):
            grads[i].append(gi.reshape(()))
    return torch.stack(forwards).reshape(shape), [torch.stack(g).reshape(shape) for g in grads]


def is_elementwise(f: Callable[..., Any], n_inputs: int, dtype: torch.dtype) -> bool:
    """Whether ``f`` on a batch computes ``f`` of each element (compared bitwise at a few points)."""
    probe = [torch.tensor([0.5, -1.25, 2.0, 3.5], dtype=dtype) * (k + 1) for k in range(n_inputs)]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a probe, not the user's inputs: std of one element warns
            batch = f(*probe)
            single = [f(*[p[k] for p in probe]) for k in range(4)]
    except Exception:  # noqa: BLE001 - any failure on a batch means: evaluate point by point
        return False
    if not isinstance(batch, torch.Tensor) or tuple(batch.shape) != (4,):
        return False
    # A complex function's batch may run a vectorised complex kernel that rounds differently
    # from the one-element call: there, agreement to a few units in the last place
    close = _close if getattr(f, "__autocheck_complex__", None) is not None else _same
    return all(
        isinstance(s, torch.Tensor) and s.numel() == 1 and close(batch[k], s.reshape(())) for k, s in enumerate(single)
    )


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if _same(a, b):
        return True
    eps = torch.finfo(a.dtype).eps if a.is_floating_point() else 0.0
    return bool(torch.isfinite(a) and torch.isfinite(b) and (a - b).abs() <= 4 * eps * max(a.abs(), b.abs()))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise agreement, nan included (log(-1) is nan both ways)."""
    if torch.equal(a, b):  # one operation where nothing is nan, the common case
        return True
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def check_deterministic(f: Callable[..., Any], values: Sequence[torch.Tensor], name: str) -> None:
    """Run ``f`` twice on ``values``; raise :class:`NondeterministicFunction` if the results differ.

    autocheck traces ``f`` once: a random draw or a counter inside it would be frozen into
    the exact derivative and then reported as a wrong gradient.
    """
    with torch.no_grad():
        first, second = f(*values), f(*values)
    if not (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)):
        return  # reported by the run itself
    if first.shape != second.shape or not _same(first, second):
        raise NondeterministicFunction(
            f"{name} is not deterministic: two runs on the same input gave different values. autocheck traces "
            "f once, so a random draw or a changing state inside it would be frozen into the exact derivative. "
            "Draw random values from a torch.Generator seeded inside f (torch.rand(..., generator=g)), pass them "
            "in as inputs, or give reference= with the mathematics f should compute"
        )


# --------------------------------------------------------------------------------------
# gradcheck's structural checks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A defect of autograd's machinery (not of a value): what, and the evidence."""

    headline: str
    detail: str


def structural_faults(
    f: Callable[..., Any], values: Sequence[torch.Tensor], v: torch.Tensor, same: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> list[Fault]:
    """gradcheck's checks of the backward itself, on one batch.

    ``same(a, b)`` says, per element, whether two runs' gradients agree (exactly on the
    CPU; within the check's tolerance where atomics make backward nondeterministic).
    """
    faults = []
    leaves = [x.detach().clone().requires_grad_(True) for x in values]
    packed: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(t)
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = _output(f, leaves)
    except RuntimeError as error:
        if "saved tensor hooks" not in str(error):
            raise
        # torch.func's grad, vjp, jacrev and hessian refuse saved-tensor hooks: what their
        # backward saves is not looked at, the rest of the checks run
        packed.clear()
        out = _output(f, leaves)
    # Copied once the forward is over: it may update what it saved itself (batch norm's
    # running statistics in training mode); only what backward changes is a fault.
    saved = [(t, t.detach().clone()) for t in packed]
    root = _Upstream.apply(out, v.expand(out.shape) if v.shape != out.shape else v)
    first = torch.autograd.grad(root, leaves, retain_graph=True, allow_unused=True)
    changed = [t for t, copy in saved if t.shape == copy.shape and not _same(t.detach(), copy)]
    if changed:
        shapes = ", ".join(str(tuple(t.shape)) for t in changed[:3])
        faults.append(Fault(
            "backward changes a tensor saved for it in place",
            f"{len(changed)} saved tensor(s) of shape {shapes} differ after one backward; a second backward "
            "(or the double backward) would read the changed values. Clone before modifying a saved tensor",
        ))
    second = torch.autograd.grad(root, leaves, retain_graph=True, allow_unused=True)
    for k, (a, b) in enumerate(zip(first, second)):
        if a is None or b is None:
            continue
        agree = same(a.detach(), b.detach())
        if not bool(agree.all()):
            index = int((~agree).reshape(-1).nonzero()[0])
            faults.append(Fault(
                "backward is not reentrant",
                f"a second backward with the same upstream gradient gave a different gradient for input {k}: "
                f"{float(a.reshape(-1)[index])!r} then {float(b.reshape(-1)[index])!r} at element {index} "
                "(gradcheck fails this too). A backward must not depend on state it changes",
            ))
            break
    fault = _undefined_gradient_fault(out, leaves)
    if fault is not None:
        faults.append(fault)
    return faults


def _undefined_gradient_fault(out: torch.Tensor, leaves: Sequence[torch.Tensor]) -> Fault | None:
    """Backward with an undefined output gradient must work and give zero (or no) gradients,
    as gradcheck's ``check_undefined_grad`` demands of custom Functions."""
    undefined_grad = getattr(getattr(torch._C, "_functions", None), "UndefinedGrad", None)
    if undefined_grad is None:  # pragma: no cover - present in every torch this supports
        return None
    try:
        marked = undefined_grad()(out)
        grads = torch.autograd.grad(_Upstream.apply(marked, torch.zeros_like(marked)), leaves, allow_unused=True)
    except Exception as error:  # noqa: BLE001 - whatever the user's backward raises on None
        return Fault(
            "backward fails when its output gradient is undefined",
            f"{type(error).__name__}: {str(error).splitlines()[0]}. autograd passes None for an output whose "
            "gradient is undefined when ctx.set_materialize_grads(False) is used: treat None as zeros",
        )
    # Zero times an infinite partial (3 * v**2 * grad with v**2 = inf) is nan, not a defect.
    nonzero = [k for k, g in enumerate(grads) if g is not None and bool(((g != 0) & torch.isfinite(g)).any())]
    if nonzero:
        return Fault(
            "backward gives a nonzero gradient for an undefined output gradient",
            f"input {nonzero[0]} got a nonzero gradient although the output's gradient was undefined (all zero)",
        )
    return None
