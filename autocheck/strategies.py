"""Hypothesis strategies for property tests of your own: points in a function's real domain,
as tensors of a chosen dtype and device.

Built in layers, on public Hypothesis API only: :func:`floats` (elements) →
:func:`arrays` (numpy arrays of a shape) → :func:`tensors` (a dtype and a device) →
:func:`points` (one tensor per parameter of a function, inside its domain).

Example:
    >>> import torch
    >>> from hypothesis import given
    >>> from autocheck import strategies
    >>> @given(strategies.points(torch.log, shape=(3,)))
    ... def test_log_is_finite(point):
    ...     (x,) = point
    ...     assert torch.isfinite(torch.log(x)).all() or (x == 0).any()
    >>> test_log_is_finite()
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ._arguments import resolve_device, resolve_dtype
from ._search import floats_in, infer_domain, parse_domain
from ._trace import trace

__all__ = ["arrays", "floats", "points", "tensors"]


def floats(low: float = -math.inf, high: float = math.inf, *, dtype: Any = torch.float64) -> st.SearchStrategy[float]:
    """Finite floats representable in ``dtype`` within [low, high]: every magnitude, the
    special values Hypothesis favours (0, -0.0, ±1, subnormals, the bounds), shrinking to
    simple numbers."""
    return floats_in(low, high, _dtype(dtype))


def arrays(shape: tuple[int, ...], low: float = -math.inf, high: float = math.inf, *, dtype: Any = torch.float64) -> st.SearchStrategy[Any]:
    """float64 numpy arrays of ``shape`` whose elements are :func:`floats` of ``dtype``."""
    return hnp.arrays("float64", shape, elements=floats(low, high, dtype=dtype))


def tensors(
    shape: tuple[int, ...] = (),
    low: float = -math.inf,
    high: float = math.inf,
    *,
    dtype: Any = torch.float64,
    device: Any = "cpu",
) -> st.SearchStrategy[torch.Tensor]:
    """Tensors of ``shape``, ``dtype`` and ``device`` with elements in [low, high]."""
    dtype_, device_ = _dtype(dtype), resolve_device(device)
    return arrays(shape, low, high, dtype=dtype_).map(lambda a: torch.from_numpy(a.copy()).to(dtype=dtype_, device=device_))


def points(
    f: Callable[..., Any],
    *,
    shape: tuple[int, ...] = (),
    dtype: Any = torch.float64,
    device: Any = "cpu",
    domain: Any = None,
) -> st.SearchStrategy[tuple[torch.Tensor, ...]]:
    """Tuples with one tensor per parameter of ``f``, inside ``f``'s real domain.

    The domain is inferred from ``f``'s SymPy expression where SymPy can (log: x >= 0,
    atanh: ``|x| <= 1``) and narrowed by ``domain`` (``(low, high)``, a list, or a dict by
    parameter name), as in :func:`autocheck.assert_grad_matches`.
    """
    dtype_ = _dtype(dtype)
    traced = trace(f, dtype=dtype_)
    symbols = traced.flat_symbols
    dom = infer_domain(traced.output.item() if traced.output.ndim == 0 else None, symbols, parse_domain(domain, traced.names))
    return st.tuples(*[tensors(shape, low, high, dtype=dtype_, device=device) for low, high in dom.intervals])


def _dtype(dtype: Any) -> torch.dtype:
    resolved = resolve_dtype(dtype)
    if resolved is None:
        raise ValueError("dtype must be one of float64, float32, float16, bfloat16, got dtype=None")
    return resolved
