"""Complex functions, checked as real functions of real and imaginary parts.

PyTorch's convention (its "Autograd for Complex Numbers" note): for a real loss ``L`` of a
complex ``z = x + iy``, ``z.grad`` is ``dL/dx + i dL/dy``, which is twice the conjugate
Wirtinger derivative ``dL/dz̄``. And ``backward(g)`` on a complex output ``w = f(z)``
differentiates the real loss ``L = Re(conj(g) w) = g_r Re(w) + g_i Im(w)``.

So a complex check is a real one. ``f`` becomes a function of the real and imaginary part of
each complex input (``z_re``, ``z_im``); a complex output becomes the real number
``0.6 Re(w) + 0.8 Im(w)``, which is ``Re(conj(g) w)`` for the upstream gradient ``g = 0.6 +
0.8i`` (times the check's own real upstream gradient): neither the real nor the imaginary
part of ``g`` is 0 or 1, so a backward that drops, swaps or conjugates a part of ``g``
shows. Autograd runs through ``torch.complex`` and ``f``'s complex backward formulas, and
``torch.complex``'s backward hands ``z.grad``'s real part to ``z_re`` and its imaginary part
to ``z_im``: the check's ``d/dz_re`` and ``d/dz_im`` are ``z.grad``'s two parts. The tracer
reads the mathematics off the same wrapper with real symbols for the parts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._trace import function_name, parameter_names

__all__ = ["REAL_DTYPE", "UPSTREAM", "as_real"]

#: The real dtype of each complex dtype's parts.
REAL_DTYPE = {torch.complex128: torch.float64, torch.complex64: torch.float32, torch.complex32: torch.float16}

#: The upstream gradient a complex output is differentiated with (times the real one the
#: check draws): Re(conj(g) w) = 0.6 Re(w) + 0.8 Im(w).
UPSTREAM = complex(0.6, 0.8)


def is_complex_check(inputs: Sequence[Any], dtype: Any) -> bool:
    """Whether a check is of a complex function: a complex input given, or a complex dtype."""
    return any(isinstance(x, torch.Tensor) and x.is_complex() for x in inputs) or (
        isinstance(dtype, torch.dtype) and dtype.is_complex)


def as_real(f: Callable[..., Any], inputs: Sequence[Any], dtype: Any
            ) -> tuple[Callable[..., Any], list[Any], torch.dtype | None]:
    """``f`` as a function of real tensors, the inputs split into real and imaginary parts,
    and the real dtype for ``dtype`` (None stays None).

    Without inputs every parameter of ``f`` is complex; with inputs, the complex ones.
    """
    real_dtype = dtype  # a real or a bad dtype goes on as it is (the usual argument check names a bad one)
    if isinstance(dtype, torch.dtype) and dtype.is_complex:
        if dtype not in REAL_DTYPE:
            raise TypeError(f"dtype={dtype} has no real dtype autocheck checks; use torch.complex128 or torch.complex64")
        real_dtype = REAL_DTYPE[dtype]
    declared = parameter_names(f) or ("z",)
    if inputs:
        complex_at = [isinstance(x, torch.Tensor) and x.is_complex() for x in inputs]
        names = list(declared) if len(declared) == len(inputs) else [f"z{k}" if len(inputs) > 1 else "z"
                                                                    for k in range(len(inputs))]
    else:
        complex_at = [True] * len(declared)
        names = list(declared)
    real_names: list[str] = []
    real_inputs: list[Any] = []
    for k, name in enumerate(names):
        if complex_at[k]:
            real_names += [f"{name}_re", f"{name}_im"]
            if inputs:
                z = inputs[k].detach().resolve_conj()
                real_inputs += [z.real.clone(), z.imag.clone()]
        else:
            real_names.append(name)
            if inputs:
                real_inputs.append(inputs[k])

    def of_parts(*parts: torch.Tensor) -> torch.Tensor:
        args, it = [], iter(parts)
        for is_complex in complex_at:
            args.append(torch.complex(next(it), next(it)) if is_complex else next(it))
        out = f(*args)
        if isinstance(out, torch.Tensor) and out.is_complex():
            return out.real * UPSTREAM.real + out.imag * UPSTREAM.imag
        return out

    of_parts.__qualname__ = of_parts.__name__ = function_name(f)
    of_parts.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in real_names])
    of_parts.__autocheck_names__ = tuple(real_names)  # type: ignore[attr-defined]
    of_parts.__autocheck_complex__ = tuple(complex_at)  # type: ignore[attr-defined]
    of_parts.__autocheck_original__ = f  # type: ignore[attr-defined]  # what a reproduce line imports
    return of_parts, real_inputs, real_dtype


def complex_dtype(real: str) -> str:
    """The complex dtype whose parts have the real dtype named ``real`` ("float64")."""
    for c, r in REAL_DTYPE.items():
        if str(r).removeprefix("torch.") == real.removeprefix("torch."):
            return str(c).removeprefix("torch.")
    return real
