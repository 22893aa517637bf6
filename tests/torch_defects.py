"""Defects of torch's own gradients that autocheck's whole-domain search finds.

Each entry is a region of inputs where torch's backward is wrong for the code as written,
a witness point in it whose exact derivative is computed here by hand with mpmath, and the
reason. ``tests/test_opdb.py`` searches every covered elementwise operator over its whole
real domain in four dtypes and requires every failing point to lie in a region listed
here; it also replays each witness. ``docs/operators.md`` shows the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import mpmath
import torch
import torch.nn.functional as F

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
ALL = (F64, F32, F16, BF16)
REDUCED = (F32, F16, BF16)
#: Significand bits per dtype (the implicit one included).
BITS = {F64: 53, F32: 24, F16: 11, BF16: 8}
#: The root of digamma on the positive axis.
DIGAMMA_ROOT = 1.4616321449683623


def _max(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).max


def _tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny


@dataclass(frozen=True)
class Witness:
    """One point of a defect: autograd there, against the exact value computed by hand."""

    f: Callable[..., torch.Tensor]
    dtype: torch.dtype
    point: tuple[float, ...]
    wrt: int  # which input's gradient is wrong
    exact: Callable[..., Any]  # the derivative in mpmath, of the point's values

    def exact_value(self) -> float:
        with mpmath.workprec(200):
            value = self.exact(*[mpmath.mpf(torch.tensor(p, dtype=self.dtype).item()) for p in self.point])
            return float(value)

    def autograd(self, upstream: float = 0.75) -> float:
        """x.grad / upstream after one backward with a non-unit upstream gradient."""
        inputs = [torch.tensor(p, dtype=self.dtype, requires_grad=True) for p in self.point]
        self.f(*inputs).backward(torch.tensor(upstream, dtype=self.dtype))
        grad = inputs[self.wrt].grad
        return math.nan if grad is None else float(grad) / upstream


@dataclass(frozen=True)
class Defect:
    ops: tuple[str, ...]  # names in torch's operator database
    dtypes: tuple[torch.dtype, ...]
    region: Callable[[tuple[float, ...], torch.dtype], bool]  # (point, dtype) -> inside
    where: str  # the region, for people
    why: str
    witness: Witness


def _pow_overflows(base: float, exponent: float, dtype: torch.dtype) -> bool:
    """base ** (exponent - 1) overflows, or exponent - 1 is not representable (negative base)."""
    if base > 0:
        return (exponent - 1) * math.log(base) > math.log(_max(dtype))
    return base < 0 and abs(exponent) >= 2 ** BITS[dtype]


def _exponent_rounded(base: float, exponent: float, dtype: torch.dtype) -> bool:
    """exponent - 1, rounded to the dtype, moves base ** (exponent - 1) by more than 0.1%."""
    if base == 0 or not math.isfinite(base) or dtype == F64:
        return False
    rounded = float(torch.tensor(exponent, dtype=dtype) - 1)
    return abs(math.log(abs(base))) * abs(rounded - (exponent - 1)) > 1e-3


DEFECTS: list[Defect] = [
    Defect(
        ("acosh",), ALL, lambda p, d: abs(p[0]) >= math.sqrt(_max(d)) / 2,
        "x above the square root of the largest number",
        "the backward computes 1/sqrt(x*x - 1) and x*x overflows: the gradient is 0",
        Witness(torch.acosh, F64, (3.498829208341818e234,), 0, lambda x: 1 / mpmath.sqrt(x * x - 1)),
    ),
    Defect(
        ("asinh",), ALL, lambda p, d: abs(p[0]) >= math.sqrt(_max(d)) / 2,
        "|x| above the square root of the largest number",
        "the backward computes 1/sqrt(x*x + 1) and x*x overflows: the gradient is 0",
        Witness(torch.asinh, F64, (-2.16746712536242e242,), 0, lambda x: 1 / mpmath.sqrt(x * x + 1)),
    ),
    Defect(
        ("nn.functional.hardsigmoid",), (F64,), lambda p, d: abs(p[0]) < 3,
        "-3 < x < 3",
        "the float64 backward multiplies by 1/6 rounded to float32 (0.16666667163...)",
        Witness(F.hardsigmoid, F64, (0.5,), 0, lambda x: mpmath.mpf(1) / 6),
    ),
    Defect(
        ("sinc",), ALL, lambda p, d: abs(p[0]) < 1 or abs(p[0]) >= 2 ** (BITS[d] / 2),
        "|x| < 1 (cancellation); |x| >= 2**(p/2) for p significand bits (pi*x rounded)",
        "the backward computes (pi*x*cos(pi*x) - sin(pi*x)) / (pi*x*x): the difference cancels for small x, "
        "pi*x is rounded before sin and cos for large x, and x*x overflows",
        Witness(torch.sinc, F64, (1e-5,), 0,
                lambda x: (mpmath.cospi(x) * mpmath.pi * x - mpmath.sinpi(x)) / (mpmath.pi * x * x)),
    ),
    Defect(
        ("rsqrt",), ALL,
        lambda p, d: (0.5 / _max(d)) ** (2 / 3) * 0.99 <= p[0] <= (1 / _max(d)) ** (2 / 3) * 1.01,
        "x just above the largest number to the power -2/3",
        "the backward computes -0.5 * y**3 from y = rsqrt(x), and y**3 overflows where 0.5 * y**3 does not",
        Witness(torch.rsqrt, F64, (2.3986171228764743e-206,), 0, lambda x: -x ** mpmath.mpf(-1.5) / 2),
    ),
    Defect(
        ("polygamma.polygamma_n_0", "polygamma.polygamma_n_1", "polygamma.polygamma_n_2",
         "polygamma.polygamma_n_3", "polygamma.polygamma_n_4", "special.polygamma.special_polygamma_n_0"),
        ALL, lambda p, d: abs(p[0]) >= _max(d) ** (1 / 3) or abs(p[0]) <= _max(d) ** (-1 / 3),
        "x above the cube root of the largest number (or below its inverse)",
        "polygamma(2, x), the derivative of polygamma(1, x), is computed through x**-3, which underflows "
        "to 0 (overflows near 0) where the result is finite",
        Witness(lambda x: torch.polygamma(1, x), F64, (1.4285379802335307e127,), 0, lambda x: mpmath.polygamma(2, x)),
    ),
    Defect(
        ("digamma",), (F64,), lambda p, d: True,
        "everywhere",
        "the backward evaluates trigamma, whose float64 kernel is off by up to 4.8e-10 relative",
        Witness(torch.digamma, F64, (1.0,), 0, lambda x: mpmath.polygamma(1, x)),
    ),
    Defect(
        ("digamma",), REDUCED, lambda p, d: p[0] < -(2 ** (BITS[d] / 2)),
        "x < -2**(p/2) for p significand bits",
        "trigamma at negative x uses the reflection pi**2 / sin(pi*x)**2 with pi*x rounded",
        Witness(torch.digamma, F32, (-379127.5,), 0, lambda x: mpmath.polygamma(1, x)),
    ),
    Defect(
        ("atan2",), ALL,
        lambda p, d: math.hypot(p[0], p[1]) < math.sqrt(_tiny(d)) or math.hypot(p[0], p[1]) > math.sqrt(_max(d)) / 2,
        "|(y, x)| below the square root of the smallest normal number, or above that of the largest",
        "the backward divides by x*x + y*y, which underflows (inf gradients) or overflows (0 gradients)",
        Witness(torch.atan2, F64, (3e-160, 4e-160), 0, lambda y, x: x / (x * x + y * y)),
    ),
    Defect(
        ("pow", "float_power"), ALL,
        lambda p, d: _pow_overflows(p[0], p[1], d) or _pow_overflows(p[0], p[1], F64),
        "x ** (y - 1) overflows (tiny x, y near 0), or x < 0 with |y| >= 2**p",
        "the backward computes y * x ** (y - 1): the power overflows where the product is finite, and for "
        "a negative base y - 1 is rounded to an integer of the wrong parity",
        Witness(torch.pow, F64, (3.21365636e-313, 2.5670993768160277e-302), 0, lambda x, y: y * x ** (y - 1)),
    ),
    Defect(
        ("pow",), (F16, BF16), lambda p, d: _exponent_rounded(p[0], p[1], d),
        "y - 1 not representable, and |log x| large",
        "the half-precision backward rounds y - 1 to the dtype before computing x ** (y - 1), an error that "
        "log x amplifies",
        Witness(torch.pow, BF16, (1.5008983106702236e33, -0.01953125), 0, lambda x, y: y * x ** (y - 1)),
    ),
    Defect(
        ("__rpow__",), ALL,
        lambda p, d: _pow_overflows(p[1], p[0], d) or _exponent_rounded(p[1], p[0], d),
        "y ** (x - 1) overflows (tiny y, x near 0); in half precision also x - 1 rounded",
        "the backward of y ** x computes x * y ** (x - 1), and the power overflows where the product is finite",
        Witness(lambda x, y: x.__rpow__(y), F64, (8.300079154554385e-90, 5.09819612153e-313), 1,
                lambda x, y: x * y ** (x - 1)),
    ),
    Defect(
        ("__rdiv__",), ALL, lambda p, d: abs(p[0]) < 2 / math.sqrt(_max(d)),
        "|x| below the inverse square root of the largest number",
        "y / x is computed as reciprocal(x) * y, whose backward squares the reciprocal, which overflows",
        Witness(lambda x, y: x.__rdiv__(y), F64, (-4.288005658888532e-156, 2.5968703198743188e-34), 0,
                lambda x, y: -y / (x * x)),
    ),
    Defect(
        ("xlogy",), ALL, lambda p, d: p[0] == 0,
        "x = 0",
        "xlogy(0, y) is 0 for every y, so d/dy is 0; the backward computes x / y, which is nan at y = 0",
        Witness(torch.xlogy, F64, (0.0, 0.0), 1, lambda x, y: mpmath.mpf(0)),
    ),
    Defect(
        ("special.xlog1py",), ALL, lambda p, d: p[0] == 0,
        "x = 0",
        "xlog1py(0, y) is 0 for every y, so d/dy is 0; the backward computes x / (1 + y), which is nan at y = -1",
        Witness(torch.special.xlog1py, F64, (0.0, -1.0), 1, lambda x, y: mpmath.mpf(0)),
    ),
    Defect(
        ("nn.functional.silu",), (F64, F32, BF16), lambda p, d: p[0] < (-709 if d == F64 else -87),
        "x < -87 (float64: x < -709)",
        "the backward computes sigmoid(x) as 1 / (1 + exp(-x)), and exp(-x) overflows: the gradient is 0",
        Witness(F.silu, F32, (-89.0,), 0,
                lambda x: (1 + x * (1 - 1 / (1 + mpmath.exp(-x)))) / (1 + mpmath.exp(-x))),
    ),
    Defect(
        ("hypot",), REDUCED, lambda p, d: any(0 < abs(v) < _tiny(d) for v in p),
        "a subnormal input",
        "the backward multiplies the upstream gradient by y before dividing by hypot(x, y); the product of "
        "a subnormal y rounds (shows only with an upstream gradient other than 1)",
        Witness(torch.hypot, F32, (-0.0, 1.401298464324817e-45), 1, lambda x, y: y / mpmath.sqrt(x * x + y * y)),
    ),
]


def defects_of(op: str, dtype: torch.dtype) -> list[Defect]:
    return [d for d in DEFECTS if op in d.ops and dtype in d.dtypes]


def explained(op: str, dtype: torch.dtype, point: tuple[float, ...]) -> bool:
    """Whether a failing point of ``op`` lies in a listed defect's region."""
    return any(d.region(point, dtype) for d in defects_of(op, dtype))
