"""The exact derivative of a function as a torch callable: :func:`autocheck.reference`.

The same trace, derivatives and oracle as a check, with no autograd and no judgement.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from . import _oracle
from ._autograd import is_elementwise
from ._arguments import check_callable, check_input, check_order
from ._judge import Contraction
from ._symbolic import Derivatives, derivatives_of
from ._trace import MAX_SYMBOLIC_ELEMENTS, trace


def reference(f: Callable[..., torch.Tensor], *, order: int = 1, accuracy: float | None = None) -> Callable[..., Any]:
    """The exact derivative of ``f`` as a function of tensors.

    ``f`` is traced and differentiated once; the returned function evaluates the
    derivative in float64 on the inputs' device, in high precision wherever float64
    cannot be trusted (overflowing intermediates, removable singularities, cancellation,
    inaccurate special-function kernels). Autograd is never used.

    ``accuracy=None`` gives correctly rounded float64 values, which costs high-precision
    time wherever the formula cancels. A relative ``accuracy`` such as ``1e-15``, measured
    against the size of the formula's terms, trusts float64 there.

    For an elementwise function the result has the inputs' broadcast shape: one tensor
    for one input, a tuple of partials for several (order 2: a tuple of tuples). For a
    function of small tensors with a scalar output, it is the gradient, shaped like each
    input.

    Example:
        >>> import torch, autocheck
        >>> d = autocheck.reference(lambda x: torch.log1p(torch.exp(x)))
        >>> d(torch.tensor([0.0, 800.0], dtype=torch.float64))
        tensor([0.5000, 1.0000], dtype=torch.float64)
    """
    check_callable(f)
    order = check_order(order)
    scalar = trace(f)
    cache: dict[Any, Derivatives] = {}

    def evaluate(*inputs: Any) -> Any:
        names = scalar.names
        if len(inputs) != len(names):
            raise TypeError(f"the reference takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}")
        tensors = [check_input(x, k, names[k]) for k, x in enumerate(inputs)]
        values = [x.detach().to(torch.float64) for x in tensors]
        n = len(names)
        if scalar.output.ndim == 0 and is_elementwise(f, n, torch.float64):
            if "scalar" not in cache:
                cache["scalar"] = derivatives_of(scalar, order)
            d = cache["scalar"]
            shape = np.broadcast_shapes(*[v.shape for v in values])
            parts = [p.expand(shape) for p in _oracle.evaluate([e.expr for e in d.entries], d.symbols, values,
                                                                accuracy=accuracy)]
            if order == 1:
                return parts[0] if n == 1 else tuple(parts)
            table = tuple(tuple(parts[i * n + j] for j in range(n)) for i in range(n))
            return table[0][0] if n == 1 else table
        if order != 1:
            raise ValueError("order=2 references are available for elementwise functions only")
        shapes = tuple(tuple(v.shape) for v in values)
        if shapes not in cache:
            if sum(v.numel() for v in values) > MAX_SYMBOLIC_ELEMENTS:
                raise ValueError(
                    f"inputs have more than {MAX_SYMBOLIC_ELEMENTS} elements and f is not elementwise; "
                    "evaluate the reference at smaller tensors"
                )
            tr = trace(f, shapes, names=names)
            if tr.output.ndim:
                raise ValueError(
                    f"f returns shape {tuple(tr.output.shape)}; the reference of a tensor function needs a scalar output"
                )
            cache[shapes] = derivatives_of(tr, 1)
        d = cache[shapes]
        point = torch.cat([v.reshape(-1) for v in values])
        exact = _oracle.evaluate([e.expr for e in d.entries], d.symbols, list(point.cpu()), accuracy=accuracy)
        contract = Contraction(d, torch.ones(1, dtype=torch.float64), None)
        flat = contract(torch.stack([e.reshape(()) for e in exact]) if exact else torch.zeros(0)).to(point.device)
        grads = tuple(p.reshape(v.shape) for p, v in zip(torch.split(flat, [v.numel() for v in values]), values))
        return grads[0] if len(grads) == 1 else grads

    return evaluate
