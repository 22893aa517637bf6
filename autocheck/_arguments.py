"""Arguments every entry point shares (API, CLI, strategies, reference), checked with
messages that name the argument, the value and the fix."""

from __future__ import annotations

from typing import Any

import torch

FLOATING = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def check_callable(f: Any) -> None:
    if not callable(f):
        raise TypeError(
            f"f must be a function of tensors (a lambda, a def, torch.exp, MyFunction.apply), "
            f"got f={f!r} of type {type(f).__name__}"
        )


#: The highest order a check takes: each order multiplies the size of the exact derivatives.
MAX_ORDER = 6


def check_order(order: Any) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be 1 (gradients), 2 (second derivatives), ... up to {MAX_ORDER}, "
                         f"got order={order!r}")
    return order


def resolve_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        candidate = getattr(torch, name, None)
        if isinstance(candidate, torch.dtype):
            dtype = candidate
    if dtype in FLOATING:
        return dtype
    if isinstance(dtype, torch.dtype) and dtype.is_complex:
        raise TypeError(f"dtype={dtype} is complex: complex functions are checked by check_grad and "
                        "assert_grad_matches (by their real and imaginary parts); here, use a real dtype")
    raise ValueError(
        f"dtype must be one of float64, float32, float16, bfloat16 (a torch.dtype or its name), got dtype={dtype!r}"
    )


def resolve_device(device: Any) -> torch.device | None:
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got device={device!r}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available on this machine; use device='cpu'")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    return resolved


def check_input(value: Any, index: int, name: str) -> torch.Tensor:
    if isinstance(value, bool) or not isinstance(value, (torch.Tensor, int, float)):
        raise TypeError(
            f"input {index} ({name}) must be a floating-point tensor or a Python float, got "
            f"{type(value).__name__}: {value!r}"
        )
    if not isinstance(value, torch.Tensor):
        return torch.tensor(float(value), dtype=torch.float64)
    if value.is_complex():
        raise TypeError(
            f"input {index} ({name}) is a complex tensor ({value.dtype}): complex inputs are checked by check_grad "
            "and assert_grad_matches (by their real and imaginary parts); here, pass the parts as separate real inputs"
        )
    if not value.dtype.is_floating_point:
        raise TypeError(
            f"input {index} ({name}) is an integer tensor ({value.dtype}); gradients need floating point: "
            f"pass {name}.double() or {name}.float()"
        )
    if value.dtype not in FLOATING:
        raise TypeError(f"input {index} ({name}) has dtype {value.dtype}; use float64, float32, float16 or bfloat16")
    return value


def check_count(name: str, value: Any, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer ({what}), got {name}={value!r}")


def check_deadline(deadline: Any) -> float | None:
    if deadline is None:
        return None
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0:
        raise ValueError(
            f"deadline must be a positive number of seconds (or None for no limit), got deadline={deadline!r}"
        )
    return float(deadline)
