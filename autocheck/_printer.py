"""SymPy expressions to torch, arb and mpmath callables.

SymPy 1.14 ships a torch printer, but it crashes or answers wrongly on several
shapes that symbolic derivatives produce all the time (``torch.sqrt(2)``,
``Heaviside``, ``Max(x, 0.4)``, ``gamma``, Piecewise without a default, ...).
:class:`_TorchPrinter` closes those gaps. Every function translation lives in
:data:`SYMPY_TO_TORCH` (and :data:`SYMPY_TO_ARB`, :data:`SYMPY_TO_MPMATH` for
the exact reference: arb balls first, mpmath where arb has no translation), so
adding one is a single :func:`register_sympy_function` call.

>>> import sympy, torch
>>> x = sympy.Symbol("x", real=True)
>>> f = to_torch([sympy.sqrt(2) * sympy.exp(-x**2), sympy.Integer(3)], [x])
>>> f(torch.tensor([0.0, 1.0], dtype=torch.float64))
(tensor([1.4142, 0.5203], dtype=torch.float64), tensor([3., 3.], dtype=torch.float64))

Numbers: every pure-number subexpression (``sqrt(2)``, ``log(2)``, ``pi``) is
evaluated to 50 digits when the code is printed and written as the nearest
float64 literal, Rationals included; where a torch function needs a tensor the
number becomes a 0-d tensor of the working dtype on the inputs' device.

Conventions where SymPy has no real floating-point value:

* ``zoo`` (complex infinity) and non-real constants print as nan: no float has
  a sign-less infinity, and nan says "undefined" to the comparison stage.
* ``DiracDelta`` is 0 away from 0 and nan at 0 (and at nan): a distribution has
  no value at its support.
* ``gamma`` follows C's ``tgamma``: nan at negative integers, +inf at +0, -inf
  at -0. ``loggamma`` is ``log|gamma|`` like ``torch.lgamma`` (SymPy's is
  complex for negative gamma); the mpmath side uses the same real part.
* Real-valued semantics everywhere: ``x**(1/3)``, ``sqrt``, ``log`` of a
  negative number are nan, as in torch.
* float16 and bfloat16 inputs are evaluated in float32 and rounded back, both
  for accuracy and because several torch kernels have no half versions on CPU.
* Bessel ``besselj/bessely/besseli/besselk`` of any integer order (torch's kernels of
  orders 0 and 1, and the recurrence),
  ``LambertW`` on its principal branch (Halley's iteration, a few ULP);
  anything else raises :class:`TranslationError` with the registration that
  fixes it.

The arb printer (:func:`to_arb`, the exact reference) keeps the same values,
with its numbers exact or computed at the working precision, and all orders of
polygamma and the Bessel functions. Where a ball cannot decide (a Piecewise
condition, a domain edge, a divisor whose ball holds 0) it raises
:class:`Undecided` rather than pick a side; at an exact pole (``1/0``,
``gamma(0)``, ``log(0)``) it raises ZeroDivisionError as mpmath does, so that
the oracle can look for a limit and otherwise keep torch's IEEE value.
"""

from __future__ import annotations

import collections
import functools
import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import flint
import mpmath
import numpy as np
import sympy
import torch
from flint import acb, arb, fmpq
from sympy.codegen import cfunctions
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pycode import MpmathPrinter, PythonCodePrinter
from sympy.printing.pytorch import TorchPrinter

from autocheck._errors import TranslationError

__all__ = [
    "SYMPY_TO_ARB",
    "SYMPY_TO_MPMATH",
    "SYMPY_TO_TORCH",
    "Undecided",
    "Undefined",
    "register_sympy_function",
    "to_arb",
    "LONGDOUBLE_BITS",
    "to_longdouble",
    "to_mpmath",
    "to_torch",
]

Implementation = Union[str, Callable[..., Any]]

# Enough digits that rounding a folded constant to float64 rounds once, not twice.
_DIGITS = 50

# Printing these would emit torch.autograd.grad (or nonsense): the "exact"
# reference would then be autograd checking itself.
_REFUSED = (sympy.Derivative, sympy.Subs, sympy.Integral, sympy.Limit)


class Undefined(Exception):
    """An mpmath translation has no value at this point (DiracDelta at 0).

    Unlike a division by zero, this is not a removable singularity: the oracle
    reports nan and does not look for a limit.
    """


class Undecided(Exception):
    """An arb ball straddles a decision at this precision: evaluate again with more bits.

    A Piecewise condition, a domain edge (``sqrt`` of a ball around 0) or a
    divisor whose ball holds 0. No precision decides a point that sits exactly
    on the boundary but is computed inexactly; the caller then falls back to mpmath.
    """


# --- torch helpers for what torch lacks or spells differently -------------------------


def _nan_where(undefined: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.where(undefined, torch.full_like(value, math.nan), value)


def _gamma(x: torch.Tensor) -> torch.Tensor:
    # torch.special.gamma does not exist; |gamma| = exp(lgamma), and gamma < 0
    # exactly on (-1, 0), (-3, -2), ... where floor(x) is odd.
    magnitude = torch.exp(torch.lgamma(x))
    negative = ((x < 0) & (torch.remainder(torch.floor(x), 2) == 1)) | ((x == 0) & torch.signbit(x))
    value = torch.where(negative, -magnitude, magnitude)
    return _nan_where((x < 0) & (x == torch.floor(x)), value)


def _real_part(x: Any) -> Any:
    return x


def _imaginary_part(x: Any) -> Any:
    return 0 * x


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(x), x, torch.sign(x))  # torch.sign(nan) is 0


def _heaviside(x: torch.Tensor, at_zero: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(x), x, torch.heaviside(x, at_zero.expand_as(x)))


def _dirac_delta(x: torch.Tensor, *order: torch.Tensor) -> torch.Tensor:
    return _nan_where((x == 0) | torch.isnan(x), torch.zeros_like(x))


def _sinc(x: torch.Tensor) -> torch.Tensor:
    # SymPy's sinc is sin(x)/x; torch.sinc(x/pi) would round x/pi and lose
    # accuracy for large |x|, so divide directly and patch the one hole.
    return torch.where(x == 0, torch.ones_like(x), torch.sin(x) / x)


def _maximum(*args: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.maximum, args)


def _minimum(*args: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.minimum, args)


def _zeta(s: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
    return torch.special.zeta(s, torch.ones_like(s) if a is None else a)


def _cbrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.abs(x).pow(1 / 3)


def _lambert_w(x: torch.Tensor, *branch: torch.Tensor) -> torch.Tensor:
    """Principal branch W0 on [-1/e, inf) by Halley's iteration; nan below -1/e."""
    if branch and bool((branch[0] != 0).any()):
        raise TranslationError(
            "LambertW(x, k) with k != 0 has no torch translation; register one with "
            "register_sympy_function(sympy.LambertW, my_lambert_w)"
        )
    # Starting points: the branch-point series near -1/e, log1p in the middle,
    # the asymptotic expansion for large x. Five Halley steps then converge.
    p = torch.sqrt(torch.clamp(2 * (math.e * x + 1), min=0))
    near_branch = -1 + p - p * p / 3 + (11 / 72) * p * p * p
    log_x = torch.log(torch.clamp(x, min=3))
    large = log_x - torch.log(log_x) + torch.log(log_x) / log_x
    w = torch.where(x < -0.25, near_branch, torch.where(x < 3, torch.log1p(torch.clamp(x, min=-0.25)) * 0.75, large))
    for _ in range(5):
        ew = torch.exp(w)
        f = w * ew - x
        step = f / (ew * (w + 1) - (w + 2) * f / (2 * w + 2))
        w = torch.where(torch.isfinite(step), w - step, w)
    w = torch.where((x == 0) | (x == math.inf), x, w)
    return _nan_where(x < -1 / math.e, w)


def _erfcinv(x: torch.Tensor) -> torch.Tensor:
    """erfcinv(x) = -ndtri(x/2)/sqrt(2): ndtri is accurate at both ends, where erfinv(1 - x)
    would lose x to the rounding of 1 - x. x/2 is exact for normal x and for a subnormal x
    with its last bit clear (erfcinv(2*y) at any subnormal y); elsewhere nan (a value nothing
    trusts: the oracle computes it exactly). ndtri is within 2 units in the last place down to
    5e-324 (checked against mpmath)."""
    half = x / 2
    return torch.where(half * 2 == x, torch.special.ndtri(half) * -math.sqrt(0.5), torch.nan)


def _sec(x: torch.Tensor) -> torch.Tensor:
    return torch.reciprocal(torch.cos(x))


def _csc(x: torch.Tensor) -> torch.Tensor:
    return torch.reciprocal(torch.sin(x))


def _cot(x: torch.Tensor) -> torch.Tensor:
    return torch.reciprocal(torch.tan(x))


def _inverse_of(function: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """acot(x) = atan(1/x), asech(x) = acosh(1/x), ..."""
    return lambda x: function(torch.reciprocal(x))


def _reciprocal_of(function: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.reciprocal(function(x))


#: torch's polygamma of order 2 and up steps x up to the positive axis one unit at a time:
#: at x = -1e7 it takes 0.15 s, at -1e10 minutes. Below this the value is left to the
#: high-precision tier (nan here, which the oracle re-evaluates).
POLYGAMMA_STEPS_LIMIT = 1e5


def _polygamma(order: int, x: torch.Tensor) -> torch.Tensor:
    if order < 2:
        return torch.special.polygamma(order, x)
    slow = x < -POLYGAMMA_STEPS_LIMIT
    if not bool(slow.any()):
        return torch.special.polygamma(order, x)
    return _nan_where(slow, torch.special.polygamma(order, torch.where(slow, torch.ones_like(x), x)))


class _EveryOrder(Mapping):
    """Order -> kernel for a torch function that takes the order as an int (polygamma)."""

    def __init__(self, function: Callable[..., torch.Tensor]) -> None:
        self._function = function

    def __getitem__(self, order: int) -> Callable[[torch.Tensor], torch.Tensor]:
        if isinstance(order, int) and order >= 0:
            return functools.partial(self._function, order)
        raise KeyError(order)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(3))  # shown in messages as "0, 1, 2, ..."

    def __len__(self) -> int:
        return 3


def _bessel_orders(zero: Callable[[torch.Tensor], torch.Tensor], one: Callable[[torch.Tensor], torch.Tensor],
                   sign: int, flip: int) -> _EveryOrder:
    """Bessel functions of every integer order from torch's kernels of orders 0 and 1 and
    the recurrence ``B(n+1) = flip * B(n-1) + sign * (2n/x) B(n)``. Upward recurrence is
    inaccurate for J and I where x < n: the oracle never trusts their float64 values
    (:func:`autocheck._error_model.kernel_error`)."""

    def order(n: int, x: torch.Tensor) -> torch.Tensor:
        previous, current = zero(x), one(x)
        if n == 0:
            return previous
        for k in range(1, n):
            previous, current = current, flip * previous + sign * (2 * k / x) * current
        return current

    return _EveryOrder(order)


class ReflectedErfc(sympy.Function):
    """``erfc(-u)``, kept as written: SymPy turns ``erfc(-u)`` into ``2 - erfc(u)``, which
    cancels in float64 where ``erfc(u)`` is near 2 (the oracle's accurate forms use it)."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        (u,) = self.args
        return 2 * sympy.exp(-(u**2)) / sympy.sqrt(sympy.pi)

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real


class Erfcx(sympy.Function):
    """The scaled complementary error function ``exp(z**2) erfc(z)`` (``torch.special.erfcx``),
    which stays in range where erfc underflows."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        (z,) = self.args
        return 2 * z * Erfcx(z) - 2 / sympy.sqrt(sympy.pi)

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real


class ScaledBesselI(sympy.Function):
    """``exp(-|x|) besseli(n, x)`` (torch's ``i0e`` and ``i1e``), which stays in range where
    besseli overflows."""

    nargs = 2

    def fdiff(self, argindex: int = 2) -> sympy.Expr:
        n, x = self.args
        if argindex != 2:
            raise sympy.ArgumentIndexError(self, argindex)
        return (ScaledBesselI(n - 1, x) + ScaledBesselI(n + 1, x)) / 2 - sympy.sign(x) * self

    def _eval_is_real(self) -> bool | None:
        return self.args[1].is_real


class ReciprocalMagnitude(sympy.Function):
    """``1/|u|``, left unevaluated: the oracle's underflow probe sums it over many intermediates,
    and SymPy's Abs would ask for the sign of each (seconds for a small tensor's Jacobian)."""

    nargs = 1


_BUILTIN_TORCH: dict[type, Implementation | Mapping[int, Implementation]] = {
    ReflectedErfc: lambda u: torch.special.erfc(-u),
    ReciprocalMagnitude: lambda u: torch.reciprocal(torch.abs(u)),
    ScaledBesselI: {0: "torch.special.i0e", 1: "torch.special.i1e"},
    Erfcx: "torch.special.erfcx",
    sympy.exp: "torch.exp",
    sympy.log: "torch.log",
    sympy.sin: "torch.sin",
    sympy.cos: "torch.cos",
    sympy.tan: "torch.tan",
    sympy.sec: _sec,
    sympy.csc: _csc,
    sympy.cot: _cot,
    sympy.asin: "torch.asin",
    sympy.acos: "torch.acos",
    sympy.atan: "torch.atan",
    sympy.acot: _inverse_of(torch.atan),
    sympy.asec: _inverse_of(torch.acos),
    sympy.acsc: _inverse_of(torch.asin),
    sympy.atan2: "torch.atan2",
    sympy.sinh: "torch.sinh",
    sympy.cosh: "torch.cosh",
    sympy.tanh: "torch.tanh",
    sympy.sech: _reciprocal_of(torch.cosh),
    sympy.csch: _reciprocal_of(torch.sinh),
    sympy.coth: _reciprocal_of(torch.tanh),
    sympy.asinh: "torch.asinh",
    sympy.acosh: "torch.acosh",
    sympy.atanh: "torch.atanh",
    sympy.asech: _inverse_of(torch.acosh),
    sympy.acsch: _inverse_of(torch.asinh),
    sympy.acoth: _inverse_of(torch.atanh),
    sympy.Abs: "torch.abs",
    # Every value autocheck evaluates is real: SymPy's re() and im() of an expression it
    # cannot prove real (|exp(erfinv(x)**2)|) are the value itself and zero.
    sympy.re: _real_part,
    sympy.im: _imaginary_part,
    sympy.sign: _sign,
    sympy.floor: "torch.floor",
    sympy.ceiling: "torch.ceil",
    sympy.Mod: "torch.remainder",
    sympy.Max: _maximum,
    sympy.Min: _minimum,
    sympy.Heaviside: _heaviside,
    sympy.DiracDelta: _dirac_delta,
    sympy.sinc: _sinc,
    sympy.erf: "torch.special.erf",
    sympy.erfc: "torch.special.erfc",
    sympy.erfinv: "torch.special.erfinv",
    sympy.erfcinv: _erfcinv,
    sympy.gamma: _gamma,
    sympy.loggamma: "torch.lgamma",
    sympy.zeta: _zeta,
    sympy.LambertW: _lambert_w,
    # The first argument is an order: it picks the kernel when the code is printed.
    sympy.polygamma: _EveryOrder(_polygamma),
    sympy.besselj: _bessel_orders(torch.special.bessel_j0, torch.special.bessel_j1, 1, -1),
    sympy.bessely: _bessel_orders(torch.special.bessel_y0, torch.special.bessel_y1, 1, -1),
    sympy.besseli: _bessel_orders(torch.special.i0, torch.special.i1, -1, 1),
    sympy.besselk: _bessel_orders(torch.special.modified_bessel_k0, torch.special.modified_bessel_k1, 1, 1),
    cfunctions.log1p: "torch.log1p",
    cfunctions.expm1: "torch.expm1",
    cfunctions.exp2: "torch.exp2",
    cfunctions.log2: "torch.log2",
    cfunctions.log10: "torch.log10",
    cfunctions.Sqrt: "torch.sqrt",
    cfunctions.Cbrt: _cbrt,
    cfunctions.hypot: "torch.hypot",
    sympy.And: lambda *a: functools.reduce(torch.logical_and, a),
    sympy.Or: lambda *a: functools.reduce(torch.logical_or, a),
    sympy.Xor: lambda *a: functools.reduce(torch.logical_xor, a),
    sympy.Not: "torch.logical_not",
}




# --- mpmath helpers ----------------------------------------------------------------


def _mp_heaviside(x: Any, at_zero: Any = 0.5) -> Any:
    if mpmath.isnan(x):
        return x
    return at_zero if x == 0 else mpmath.mpf(x > 0)


def _mp_dirac_delta(x: Any, *order: Any) -> Any:
    if x == 0 or mpmath.isnan(x):
        raise Undefined("DiracDelta has no value at 0")
    return mpmath.mpf(0)


def _mp_nan_aware(pick: Callable[..., Any]) -> Callable[..., Any]:
    # Python's max/min ignore nan depending on argument order; torch propagates it.
    return lambda *args: mpmath.nan if any(mpmath.isnan(a) for a in args) else pick(args)


_BUILTIN_MPMATH: dict[type, Implementation] = {
    **{
        f: f"mpmath.{f.__name__}"
        for f in (
            sympy.exp, sympy.sin, sympy.cos, sympy.tan, sympy.sec, sympy.csc, sympy.cot,
            sympy.asin, sympy.acos, sympy.atan, sympy.acot, sympy.asec, sympy.acsc, sympy.atan2,
            sympy.sinh, sympy.cosh, sympy.tanh, sympy.sech, sympy.csch, sympy.coth,
            sympy.asinh, sympy.acosh, sympy.atanh, sympy.asech, sympy.acsch, sympy.acoth,
            sympy.sign, sympy.floor, sympy.erf, sympy.erfc, sympy.erfinv, sympy.gamma,
            sympy.polygamma, sympy.zeta, sympy.besselj, sympy.bessely, sympy.besseli,
            sympy.besselk, sympy.sinc, cfunctions.log1p, cfunctions.expm1, cfunctions.log10,
            cfunctions.hypot,
        )
    },
    sympy.log: "mpmath.log",
    sympy.ceiling: "mpmath.ceil",
    sympy.Abs: abs,
    sympy.re: _real_part,
    sympy.im: _imaginary_part,
    sympy.Mod: lambda a, b: a % b,
    sympy.Max: _mp_nan_aware(max),
    sympy.Min: _mp_nan_aware(min),
    sympy.Heaviside: _mp_heaviside,
    sympy.DiracDelta: _mp_dirac_delta,
    sympy.erfcinv: lambda x: mpmath.erfinv(1 - x),
    ReflectedErfc: lambda u: mpmath.erfc(-u),
    ScaledBesselI: lambda n, x: mpmath.exp(-abs(x)) * mpmath.besseli(n, x),
    Erfcx: lambda z: mpmath.exp(z**2) * mpmath.erfc(z),
    sympy.loggamma: lambda x: mpmath.re(mpmath.loggamma(x)),  # log|gamma|, as torch.lgamma
    sympy.LambertW: "mpmath.lambertw",
    cfunctions.exp2: lambda x: mpmath.power(2, x),
    cfunctions.log2: lambda x: mpmath.log(x, 2),
    cfunctions.Sqrt: "mpmath.sqrt",
    cfunctions.Cbrt: lambda x: mpmath.sign(x) * mpmath.cbrt(abs(x)),
    sympy.And: lambda *a: all(a),
    sympy.Or: lambda *a: any(a),
    sympy.Xor: lambda *a: sum(map(bool, a)) % 2 == 1,
    sympy.Not: lambda a: not a,
}


# --- arb helpers -------------------------------------------------------------------
#
# Every value is a real ball (midpoint, radius) at the current flint.ctx.prec. A
# translation either returns a ball that certainly holds the true value, returns
# nan where the true value is certainly not real, raises ZeroDivisionError at an
# exact pole (like mpmath: the oracle then takes a limit), or raises Undecided
# when the ball straddles a decision (a domain edge, a zero divisor, a
# comparison) that more precision may settle.


def _ball(value: Any) -> arb:
    return value if isinstance(value, arb) else arb(value)


def _is_exact_integer(value: arb) -> bool:
    return bool(value.is_exact() and value.is_integer())


#: Above this argument arb's erfcx is the confluent hypergeometric U(1/2, 1/2, z**2)/sqrt(pi)
#: (and erfc that times exp(-z**2))
#: (DLMF 7.11.4 with 13.6.7), which needs no exp(z**2): at 1e200 exp(z**2) erfc(z) is a ball
#: of infinite width; below it the product is the faster of the two.
ERFCX_BY_U_ABOVE = 25


def _arb_erfcx(z: arb) -> arb:
    if z > ERFCX_BY_U_ABOVE:
        return (z * z).hypgeom_u(0.5, 0.5) / arb.pi().sqrt()
    return (z * z).exp() * z.erfc()


def _arb_erfc(z: arb) -> arb:
    """erfc; far right exp(-z**2) erfcx(z), a ball around a tiny value where arb's own erfc
    gives one around 0 (1e200: the value has an exponent of -2e400)."""
    if z > ERFCX_BY_U_ABOVE:
        return (-(z * z)).exp() * _arb_erfcx(z)
    return z.erfc()


class _Real:
    """One arb function with real-valued semantics and decided edges.

    ``domain(*args)`` says whether the arguments certainly lie in the closed
    domain (True), certainly outside it (False: the value is nan, not real), or
    straddle its edge (None: Undecided). A non-finite ball from ``compute`` is a
    pole where ``pole(*args)`` holds at exact arguments, else a ball too wide or
    a precision too low for arb (exp(1e300) needs ~1000 bits): Undecided.
    """

    def __init__(
        self,
        compute: Callable[..., arb],
        *,
        domain: Callable[..., bool | None] | None = None,
        pole: Callable[..., bool] | None = None,
        name: str = "",
    ) -> None:
        self.compute, self.domain, self.pole = compute, domain, pole
        self.name = name or getattr(compute, "__name__", "function")

    def __call__(self, *values: Any) -> arb:
        args = [_ball(v) for v in values]
        if any(a.is_nan() for a in args):
            return arb.nan()
        inside = True if self.domain is None else self.domain(*args)
        if inside is False:
            return arb.nan()
        if inside is None:
            raise Undecided(f"{self.name}: the argument straddles the edge of the domain")
        value = _ball(self.compute(*args))
        if value.is_finite():
            return value
        if self.pole is not None and all(a.is_exact() for a in args) and self.pole(*args):
            raise ZeroDivisionError(f"{self.name} has a pole here")
        raise Undecided(f"{self.name}: no finite ball at {flint.ctx.prec} bits")


def _interval(low: Any = None, high: Any = None) -> Callable[[arb], bool | None]:
    """Domain [low, high] (either end may be missing), decided on balls."""

    def domain(x: arb, *rest: arb) -> bool | None:
        lo = None if low is None else _ball(low() if callable(low) else low)
        hi = None if high is None else _ball(high() if callable(high) else high)
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            return False
        if (lo is None or x >= lo) and (hi is None or x <= hi):
            return True
        return None

    return domain


def _outside_interval(low: Any, high: Any) -> Callable[[arb], bool | None]:
    """Domain: everything but the open interval (low, high), as for asec or acoth."""

    def domain(x: arb) -> bool | None:
        if x <= low or x >= high:
            return True
        if x > low and x < high:
            return False
        return None

    return domain


def _at(*points: int) -> Callable[[arb], bool]:
    return lambda x, *rest: any(x == p for p in points)


def _nonpositive_integer(x: arb, *rest: arb) -> bool:
    return _is_exact_integer(x) and x <= 0


def _arb_reciprocal(value: Any) -> arb:
    value = _ball(value)
    if value.is_nan():
        return value
    if value.is_zero():
        raise ZeroDivisionError("division by zero")
    if value.contains(0):
        raise Undecided("the divisor's ball contains 0")
    return 1 / value


def _arb_integer_power(base: Any, n: int) -> arb:
    base = _ball(base)
    if base.is_nan():
        return base
    if n < 0:
        return _arb_reciprocal(_arb_integer_power(base, -n))
    # By squaring: python-flint's ** gives nan for a ball centred on 0 ([0 +/- 1e-350]**1).
    result = arb(1)
    while n:
        if n & 1:
            result *= base
        n >>= 1
        if n:
            base *= base
    return result


def _arb_rational_power(base: Any, p: int, q: int) -> arb:
    """base**(p/q) with q > 1: nan for a negative base (real-valued semantics, as torch)."""
    base = _ball(base)
    if base.is_nan() or base < 0:
        return arb.nan()
    if base.is_zero():
        if p < 0:
            raise ZeroDivisionError("0 to a negative power")
        return base
    if not base > 0:
        raise Undecided("power: the base's ball contains 0")
    root = base.sqrt() if q == 2 else base.root(q)
    return _arb_integer_power(root, p)


def _arb_power(base: Any, exponent: Any) -> arb:
    """base**exponent for a symbolic exponent, with torch's real-valued semantics."""
    base, exponent = _ball(base), _ball(exponent)
    if base.is_nan() or exponent.is_nan():
        return arb.nan()
    if _is_exact_integer(exponent):
        return _arb_integer_power(base, int(exponent.unique_fmpz()))
    if base > 0:
        value = base**exponent
        if value.is_finite():
            return value
        raise Undecided(f"power: no finite ball at {flint.ctx.prec} bits")
    if base.is_zero():
        if exponent > 0:
            return base
        if exponent < 0:
            raise ZeroDivisionError("0 to a negative power")
        raise Undecided("0 to a power whose ball contains 0")
    if base < 0 and not exponent.contains_integer():
        return arb.nan()  # a negative number to a non-integer power is not real
    raise Undecided("power: the base's ball contains 0, or the exponent's an integer")


def _arb_compare(left: Any, right: Any, operator: str) -> bool:
    """A comparison decided on balls: nan compares as in IEEE (only != holds)."""
    left, right = _ball(left), _ball(right)
    if left.is_nan() or right.is_nan():
        return operator == "!="
    if operator in ("<", ">="):
        if left < right:
            return operator == "<"
        if left >= right:
            return operator == ">="
    elif operator in (">", "<="):
        if left > right:
            return operator == ">"
        if left <= right:
            return operator == "<="
    elif left == right or left != right:  # == and != hold only when certain
        return (left == right) == (operator == "==")
    raise Undecided(f"cannot decide {left} {operator} {right} at {flint.ctx.prec} bits")


def _arb_heaviside(x: Any, at_zero: Any = fmpq(1, 2)) -> arb:
    x = _ball(x)
    if x.is_nan():
        return x
    if x.is_zero():
        return _ball(at_zero)
    if x > 0 or x < 0:
        return arb(int(x > 0))
    raise Undecided("Heaviside: the argument's ball contains 0")


def _arb_dirac_delta(x: Any, *order: Any) -> arb:
    x = _ball(x)
    if x.is_nan() or x.is_zero():
        raise Undefined("DiracDelta has no value at 0")
    if x != 0:
        return arb(0)
    raise Undecided("DiracDelta: the argument's ball contains 0")


def _arb_acot(x: arb) -> arb:
    if x.is_zero():
        return arb.pi() / 2  # SymPy's acot(0), as mpmath's
    if x.contains(0):
        raise Undecided("acot: the argument's ball contains 0")
    return (1 / x).atan()


def _arb_loggamma(x: arb) -> arb:
    # log|gamma|, as torch.lgamma: arb's real lgamma stops at 0, the complex one's
    # real part is log|gamma| everywhere.
    return x.lgamma() if x > 0 else acb(x).lgamma().real


@functools.lru_cache(maxsize=None)
def _cot_derivative(n: int) -> tuple[int, ...]:
    """Coefficients (in cot) of the n-th derivative of cot: P0 = c, P(k+1) = -(1 + c²)·P(k)'."""
    if n == 0:
        return (0, 1)
    previous = _cot_derivative(n - 1)
    slope = [k * c for k, c in enumerate(previous)][1:] or [0]
    result = [0] * (len(slope) + 2)
    for k, c in enumerate(slope):
        result[k] -= c
        result[k + 2] -= c
    return tuple(result)


def _arb_polygamma(order: arb, x: arb) -> arb:
    if not (_is_exact_integer(order) and order >= 0):
        raise ValueError("polygamma of a non-integer or negative order has no arb translation")  # -> mpmath
    n = int(order.unique_fmpz())
    if n == 0:
        return x.digamma()
    if x > 0:
        return acb(x).polygamma(acb(n)).real
    # Reflection: arb's complex polygamma does not converge far left of 0 (trigamma
    # at -1e10 - 0.5), but cot(pi·x) reduces x exactly:
    # psi_n(x) = (-1)**n · psi_n(1 - x) - pi**(n+1) · P_n(cot(pi·x)).
    cot = x.cot_pi()
    p = sum((c * cot**k for k, c in enumerate(_cot_derivative(n)) if c), arb(0))
    return (-1) ** n * acb(1 - x).polygamma(acb(n)).real - arb.pi() ** (n + 1) * p


def _arb_zeta(s: arb, a: arb | None = None) -> arb:
    return s.zeta() if a is None else s.zeta(a)


def _arb_lambert_w(x: arb, branch: arb | None = None) -> arb:
    return x.lambertw() if branch is None else x.lambertw(int(branch.unique_fmpz()))


def _negative_exp1() -> arb:
    return -arb(-1).exp()  # -1/e, the branch point of Lambert W


def _lambert_domain(x: arb, branch: arb | None = None) -> bool | None:
    if branch is None or branch.is_zero():
        return _interval(_negative_exp1)(x)
    if branch == -1:
        return _interval(_negative_exp1, 0)(x)
    return False  # the other branches are not real


def _bessel(method: str, real_at_negative: bool) -> _Real:
    """J, Y, I, K of any real order; J and I of integer order are real at negative x."""

    def domain(order: arb, x: arb) -> bool | None:
        if real_at_negative and _is_exact_integer(order):
            return True
        return _interval(0)(x)

    return _Real(
        lambda order, x: getattr(x, method)(order),
        domain=domain,
        pole=lambda order, x: x.is_zero(),
        name=method,
    )


def _arb_cbrt(x: arb) -> arb:
    return x.sgn() * abs(x).root(3)


def _arb_maximum(*args: arb) -> arb:
    return functools.reduce(lambda a, b: a.max(b), args)  # rigorous on balls: no branch is picked


def _arb_minimum(*args: arb) -> arb:
    return functools.reduce(lambda a, b: a.min(b), args)


def _arb_mod(a: arb, b: arb) -> arb:
    return a - b * (a / b).floor()  # the sign of b, as torch.remainder and SymPy's Mod


def _arb_method(name: str, **edges: Any) -> _Real:
    return _Real(getattr(arb, name), name=name, **edges)


_ZERO_POLE = {"pole": _at(0)}

_BUILTIN_ARB: dict[type, Implementation | _Real | None] = {
    sympy.exp: _arb_method("exp"),
    sympy.log: _arb_method("log", domain=_interval(0), pole=_at(0)),
    sympy.sin: _arb_method("sin"),
    sympy.cos: _arb_method("cos"),
    sympy.tan: _arb_method("tan"),
    sympy.sec: _arb_method("sec"),
    sympy.csc: _arb_method("csc", **_ZERO_POLE),
    sympy.cot: _arb_method("cot", **_ZERO_POLE),
    sympy.asin: _arb_method("asin", domain=_interval(-1, 1)),
    sympy.acos: _arb_method("acos", domain=_interval(-1, 1)),
    sympy.atan: _arb_method("atan"),
    sympy.acot: _Real(_arb_acot, name="acot"),
    sympy.asec: _Real(lambda x: (1 / x).acos(), domain=_outside_interval(-1, 1), name="asec"),
    sympy.acsc: _Real(lambda x: (1 / x).asin(), domain=_outside_interval(-1, 1), name="acsc"),
    sympy.atan2: _Real(arb.atan2, name="atan2"),
    sympy.sinh: _arb_method("sinh"),
    sympy.cosh: _arb_method("cosh"),
    sympy.tanh: _arb_method("tanh"),
    sympy.sech: _arb_method("sech"),
    sympy.csch: _arb_method("csch", **_ZERO_POLE),
    sympy.coth: _arb_method("coth", **_ZERO_POLE),
    sympy.asinh: _arb_method("asinh"),
    sympy.acosh: _arb_method("acosh", domain=_interval(1)),
    sympy.atanh: _arb_method("atanh", domain=_interval(-1, 1), pole=_at(-1, 1)),
    sympy.asech: _Real(lambda x: (1 / x).acosh(), domain=_interval(0, 1), pole=_at(0), name="asech"),
    sympy.acsch: _Real(lambda x: (1 / x).asinh(), pole=_at(0), name="acsch"),
    sympy.acoth: _Real(lambda x: (1 / x).atanh(), domain=_outside_interval(-1, 1), pole=_at(-1, 1), name="acoth"),
    sympy.Abs: _Real(abs, name="Abs"),
    sympy.re: _real_part,
    sympy.im: lambda x: 0 * _ball(x),
    sympy.sign: _arb_method("sgn"),
    sympy.floor: _arb_method("floor"),
    sympy.ceiling: _arb_method("ceil"),
    sympy.Mod: _Real(_arb_mod, pole=lambda a, b: b.is_zero(), name="Mod"),
    sympy.Max: _Real(_arb_maximum, name="Max"),
    sympy.Min: _Real(_arb_minimum, name="Min"),
    sympy.Heaviside: _arb_heaviside,
    sympy.DiracDelta: _arb_dirac_delta,
    sympy.sinc: _arb_method("sinc"),
    sympy.erf: _arb_method("erf"),
    sympy.erfc: _Real(lambda z: _arb_erfc(z), name="erfc"),
    ReflectedErfc: _Real(lambda u: _arb_erfc(-u), name="ReflectedErfc"),
    ScaledBesselI: _Real(lambda n, x: (-abs(x)).exp() * x.bessel_i(n), name="ScaledBesselI"),
    Erfcx: _Real(lambda z: _arb_erfcx(z), name="Erfcx"),
    sympy.erfinv: _arb_method("erfinv", domain=_interval(-1, 1), pole=_at(-1, 1)),
    sympy.erfcinv: _arb_method("erfcinv", domain=_interval(0, 2), pole=_at(0, 2)),
    sympy.gamma: _arb_method("gamma", pole=_nonpositive_integer),
    sympy.loggamma: _Real(_arb_loggamma, pole=_nonpositive_integer, name="loggamma"),
    sympy.zeta: _Real(_arb_zeta, pole=lambda s, *a: s == 1, name="zeta"),
    sympy.LambertW: _Real(_arb_lambert_w, domain=_lambert_domain, pole=lambda x, *k: x.is_zero(), name="LambertW"),
    sympy.polygamma: _Real(_arb_polygamma, pole=lambda n, x: _nonpositive_integer(x), name="polygamma"),
    sympy.besselj: _bessel("bessel_j", real_at_negative=True),
    sympy.bessely: _bessel("bessel_y", real_at_negative=False),
    sympy.besseli: _bessel("bessel_i", real_at_negative=True),
    sympy.besselk: _bessel("bessel_k", real_at_negative=False),
    cfunctions.log1p: _arb_method("log1p", domain=_interval(-1), pole=_at(-1)),
    cfunctions.expm1: _arb_method("expm1"),
    cfunctions.exp2: _Real(lambda x: arb(2) ** x, name="exp2"),
    cfunctions.log2: _Real(lambda x: x.log_base(2), domain=_interval(0), pole=_at(0), name="log2"),
    cfunctions.log10: _Real(lambda x: x.log_base(10), domain=_interval(0), pole=_at(0), name="log10"),
    cfunctions.Sqrt: _arb_method("sqrt", domain=_interval(0)),
    cfunctions.Cbrt: _Real(_arb_cbrt, name="Cbrt"),
    cfunctions.hypot: _Real(lambda a, b: (a**2 + b**2).sqrt(), name="hypot"),
    sympy.And: lambda *a: all(a),
    sympy.Or: lambda *a: any(a),
    sympy.Xor: lambda *a: sum(map(bool, a)) % 2 == 1,
    sympy.Not: lambda a: not a,
}


# --- numpy on long double ------------------------------------------------------------

#: Significand bits of numpy's long double here: 64 on x86 (80-bit extended), 113 where
#: it is IEEE quad, 53 where it is plain double (then the long double tier is skipped).
LONGDOUBLE_BITS = np.finfo(np.longdouble).nmant + 1


def _np_heaviside(x: np.ndarray, at_zero: Any = 0.5) -> np.ndarray:
    return np.where(x > 0, 1.0, np.where(x < 0, 0.0, np.where(x == 0, at_zero, np.nan)))


#: Elementary functions whose numpy ufuncs compute in long double (the C library's
#: ``expl``, ``logl``, ...). Special functions have no long double kernel: expressions
#: holding one skip the tier.
_LONGDOUBLE: dict[type, Implementation] = {
    sympy.exp: "numpy.exp",
    sympy.log: "numpy.log",
    sympy.sin: "numpy.sin",
    sympy.cos: "numpy.cos",
    sympy.tan: "numpy.tan",
    sympy.sec: lambda x: 1 / np.cos(x),
    sympy.csc: lambda x: 1 / np.sin(x),
    sympy.cot: lambda x: 1 / np.tan(x),
    sympy.asin: "numpy.arcsin",
    sympy.acos: "numpy.arccos",
    sympy.atan: "numpy.arctan",
    sympy.atan2: "numpy.arctan2",
    sympy.sinh: "numpy.sinh",
    sympy.cosh: "numpy.cosh",
    sympy.tanh: "numpy.tanh",
    sympy.sech: lambda x: 1 / np.cosh(x),
    sympy.csch: lambda x: 1 / np.sinh(x),
    sympy.coth: lambda x: 1 / np.tanh(x),
    sympy.asinh: "numpy.arcsinh",
    sympy.acosh: "numpy.arccosh",
    sympy.atanh: "numpy.arctanh",
    sympy.Abs: "numpy.abs",
    sympy.re: lambda x: x,
    sympy.im: lambda x: np.zeros_like(x),
    sympy.sign: "numpy.sign",
    sympy.floor: "numpy.floor",
    sympy.ceiling: "numpy.ceil",
    sympy.Max: lambda *a: functools.reduce(np.maximum, a),
    sympy.Min: lambda *a: functools.reduce(np.minimum, a),
    sympy.Heaviside: _np_heaviside,
    cfunctions.log1p: "numpy.log1p",
    cfunctions.expm1: "numpy.expm1",
    cfunctions.exp2: "numpy.exp2",
    cfunctions.log2: "numpy.log2",
    cfunctions.log10: "numpy.log10",
    cfunctions.Sqrt: "numpy.sqrt",
    cfunctions.Cbrt: "numpy.cbrt",
    cfunctions.hypot: "numpy.hypot",
    sympy.And: lambda *a: functools.reduce(np.logical_and, a),
    sympy.Or: lambda *a: functools.reduce(np.logical_or, a),
    sympy.Xor: lambda *a: functools.reduce(np.logical_xor, a),
    sympy.Not: "numpy.logical_not",
}


#: SymPy function class -> torch implementation: a callable taking tensors, a
#: dotted ``"torch...."`` name, or a mapping from an order (the first argument,
#: an integer) to either. The first map holds user registrations.
SYMPY_TO_TORCH: collections.ChainMap = collections.ChainMap({}, _BUILTIN_TORCH)
#: SymPy function class -> mpmath implementation (callable or ``"mpmath...."``).
SYMPY_TO_MPMATH: collections.ChainMap = collections.ChainMap({}, _BUILTIN_MPMATH)
#: SymPy function class -> arb implementation (a callable on ``flint.arb`` balls or
#: a ``"flint...."`` name); None means "none: the reference uses mpmath's".
SYMPY_TO_ARB: collections.ChainMap = collections.ChainMap({}, _BUILTIN_ARB)


def register_sympy_function(
    sympy_function: type,
    torch_implementation: Implementation | Mapping[int, Implementation],
    *,
    mpmath_implementation: Implementation | None = None,
    arb_implementation: Implementation | None = None,
) -> None:
    """Teach the printers one SymPy function.

    Args:
        sympy_function: the SymPy function class, e.g. ``sympy.zeta`` or
            ``sympy.Function("f")``.
        torch_implementation: a callable taking one tensor per argument (numbers
            arrive as 0-d tensors of the working dtype), a dotted name such as
            ``"torch.special.erfcx"``, or ``{order: implementation}`` when the
            first argument is an integer order that selects a kernel.
        mpmath_implementation: the same for the exact reference (mpmath numbers
            in, an mpmath number out); needed only when mpmath lacks it.
        arb_implementation: the same on ``flint.arb`` balls at the current
            ``flint.ctx.prec`` (a ball that certainly holds the value), e.g.
            ``"flint.arb.erfi"``. It is the reference's first choice; without
            it, a function registered with an mpmath implementation (or with
            no builtin arb translation) is referenced by mpmath alone.

    Example:
        >>> import sympy, torch
        >>> register_sympy_function(sympy.Function("softplus"), torch.nn.functional.softplus)
    """
    if not (isinstance(sympy_function, type) and issubclass(sympy_function, sympy.Basic)):
        hint = " (an expression: pass the class, type(expr))" if isinstance(sympy_function, sympy.Basic) else ""
        raise TypeError(
            f"Expected a SymPy function class such as sympy.gamma for sympy_function, "
            f"but got sympy_function={sympy_function!r}{hint}"
        )
    if issubclass(sympy_function, _REFUSED):
        raise ValueError(
            f"sympy_function={sympy_function.__name__} cannot be registered: an unevaluated "
            f"{sympy_function.__name__} must be evaluated (.doit()) before printing"
        )
    _check_implementation("torch_implementation", torch_implementation, "torch", orders=True)
    if mpmath_implementation is not None:
        _check_implementation("mpmath_implementation", mpmath_implementation, "mpmath", orders=False)
        SYMPY_TO_MPMATH[sympy_function] = mpmath_implementation
    if arb_implementation is not None:
        _check_implementation("arb_implementation", arb_implementation, "flint", orders=False)
        SYMPY_TO_ARB[sympy_function] = arb_implementation
    elif mpmath_implementation is not None or sympy_function not in _BUILTIN_ARB:
        SYMPY_TO_ARB[sympy_function] = None  # a stale or builtin arb translation would disagree with it
    else:
        SYMPY_TO_ARB.maps[0].pop(sympy_function, None)
    SYMPY_TO_TORCH[sympy_function] = torch_implementation
    global _registrations
    _registrations += 1


_registrations = 0


def registrations() -> int:
    """How many translations were registered so far: part of the oracle's cache key."""
    return _registrations


def _check_implementation(name: str, value: Any, module: str, *, orders: bool) -> None:
    if orders and isinstance(value, Mapping):
        for order, kernel in value.items():
            if not (isinstance(order, int) and order >= 0):
                raise TypeError(f"Expected non-negative int orders as the keys of {name}, but got {order!r}")
            _check_implementation(f"{name}[{order}]", kernel, module, orders=False)
    elif isinstance(value, str):
        if not value.startswith(module + "."):
            raise ValueError(f"Expected a dotted name starting with '{module}.' for {name}, but got {name}={value!r}")
        _resolve(value, name)
    elif not callable(value):
        raise TypeError(
            f"Expected a callable or a dotted '{module}.…' name for {name}, but got {name}={value!r}"
        )


@functools.lru_cache(maxsize=None)
def _resolve(dotted: str, argument: str = "implementation") -> Callable[..., Any]:
    # The longest importable prefix is the module; the rest are attributes
    # ("torch.special.erfcx", "flint.arb.erfi": arb is a class).
    parts = dotted.split(".")
    error: Exception = ImportError(f"No module named {parts[0]!r}")
    for split in range(len(parts) - 1, 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError as failure:
            error = failure
            continue
        try:
            for attribute in parts[split:]:
                found = getattr(found, attribute)
        except AttributeError as failure:
            raise ValueError(f"{argument}={dotted!r} names nothing: {failure}") from None
        break
    else:
        raise ValueError(f"{argument}={dotted!r} names nothing: {error}") from None
    if not callable(found):
        raise ValueError(f"{argument}={dotted!r} is not callable")
    return found


def _class_name(cls: type) -> str:
    if isinstance(cls, sympy.core.function.UndefinedFunction):
        return f"sympy.Function({cls.__name__!r})"
    if getattr(sympy, cls.__name__, None) is cls:
        return f"sympy.{cls.__name__}"
    return f"{cls.__module__}.{cls.__name__}"


def _missing(expr: sympy.Basic, target: str) -> TranslationError:
    cls = type(expr)
    call = (
        f"register_sympy_function({_class_name(cls)}, torch_implementation)"
        if target == "torch"
        else f"register_sympy_function({_class_name(cls)}, torch_implementation, {target}_implementation=...)"
    )
    return TranslationError(
        f"No {target} translation for the SymPy function {cls.__name__} (in {expr}). "
        f"Add one with:\n    autocheck.{call}"
    )


# --- preparing expressions ---------------------------------------------------------


def _prepare(exprs: Sequence[Any], symbols: Sequence[Any]) -> tuple[list[sympy.Expr], list[sympy.Symbol]]:
    if isinstance(exprs, (sympy.Basic, str)) or not isinstance(exprs, Sequence):
        raise TypeError(f"Expected a sequence of SymPy expressions for exprs, but got exprs={exprs!r}; wrap it: [expr]")
    if isinstance(symbols, sympy.Basic) or not isinstance(symbols, Sequence):
        raise TypeError(f"Expected a sequence of SymPy symbols for symbols, but got symbols={symbols!r}; wrap it: [x]")
    for symbol in symbols:
        if not isinstance(symbol, sympy.Symbol):
            raise TypeError(f"Expected SymPy Symbols in symbols, but got {symbol!r} of type {type(symbol).__name__}")
    exprs = [sympy.sympify(e) for e in exprs]
    for expr in exprs:
        node = next((n for n in sympy.preorder_traversal(expr) if isinstance(n, _REFUSED)), None)
        if node is not None:
            raise TranslationError(
                f"{node} is an unevaluated {type(node).__name__}: printing it would call "
                f"torch.autograd.grad, and the reference would check autograd against itself. "
                f"Evaluate it first (.doit()) or differentiate an expression SymPy can handle."
            )
        unknown = expr.free_symbols - set(symbols)
        if unknown:
            raise ValueError(
                f"The expression {expr} uses {sorted(map(str, unknown))}, which are not in "
                f"symbols={list(symbols)}; pass every free symbol"
            )
    return exprs, list(symbols)


def _fold_numbers(expr: sympy.Basic) -> sympy.Basic:
    """Replace each pure-number subexpression (sqrt(2), log(2), pi, ...) by a 50-digit Float.

    torch functions take tensors, not numbers, and the value is known now.
    Non-real constants become nan (real-valued semantics); Integers and
    Rationals stay exact so that exponents and orders keep their meaning.
    """
    if isinstance(expr, sympy.Expr) and expr.is_number and not expr.is_Number:
        value = expr.evalf(_DIGITS)
        if value.is_Number:
            return value
        real, imaginary = value.as_real_imag()
        if imaginary.is_Number and real.is_Number:
            return sympy.nan if imaginary != 0 else real
        if value is sympy.zoo:
            return sympy.nan
    if not expr.args or isinstance(expr, sympy.Symbol):
        return expr
    args = [_fold_numbers(a) for a in expr.args]
    return expr.func(*args) if args != list(expr.args) else expr


def _float_literal(number: sympy.Basic) -> str:
    if number is sympy.zoo or number is sympy.nan:
        return "float('nan')"
    if number.is_infinite:
        return "float('inf')" if number.is_extended_positive else "float('-inf')"
    if number.is_Integer and abs(int(number)) <= 2**53:
        return str(int(number))
    try:
        if number.is_Rational:
            return repr(int(number.p) / int(number.q))  # Python rounds p/q correctly
        return repr(float(number))
    except OverflowError:
        return "float('inf')" if number > 0 else "float('-inf')"


def _is_constant(expr: sympy.Basic) -> bool:
    return expr.is_Number or expr is sympy.zoo


# --- the printers ------------------------------------------------------------------


#: Sums and products with more terms than this are printed as balanced trees.
_FLAT_ARGS = 32


def _python_choice(condition: str, value: str, otherwise: str) -> str:
    return f"(({value}) if ({condition}) else ({otherwise}))"


class _TablePrinter:
    """Prints every function application through a translation table.

    Each implementation is placed in the lambdify namespace under a generated
    name, so callables and dotted names print the same way; a function with no
    entry raises :class:`TranslationError` instead of printing a name that fails
    at run time.
    """

    _target = ""

    def __init__(self, table: Mapping[type, Any], settings: dict[str, Any] | None = None) -> None:
        # The terms of a sum are printed as they are stored: sorting them (SymPy's default)
        # costs most of the time it takes to compile a large derivative, and changes nothing.
        super().__init__({"order": "none", **(settings or {})})  # type: ignore[call-arg]
        self._table = table
        self.namespace: dict[str, Any] = {}
        self._names: dict[type, str] = {}

    def _print_Add(self, expr: sympy.Add, order: Any = None) -> str:
        if len(expr.args) <= _FLAT_ARGS:
            return super()._print_Add(expr, order)  # type: ignore[misc]
        return self._balanced(list(expr.args), " + ")

    def _print_Mul(self, expr: sympy.Mul) -> str:
        if len(expr.args) <= _FLAT_ARGS:
            return super()._print_Mul(expr)  # type: ignore[misc]
        return self._balanced(list(expr.args), " * ")

    def _balanced(self, items: list[Any], operator: str) -> str:
        """A long sum or product as a balanced tree of parenthesized halves: printed flat,
        780 terms nest 780 deep in Python's parser, past what ``compile`` can take."""
        if len(items) == 1:
            return f"({self._print(items[0])})"
        half = len(items) // 2
        return f"({self._balanced(items[:half], operator)}{operator}{self._balanced(items[half:], operator)})"

    def _name(self, cls: type) -> str:
        if cls not in self._names:
            implementation = self._table[cls]
            name = "_{}_{}".format(re.sub(r"\W", "_", cls.__name__), len(self._names))
            if isinstance(implementation, Mapping) and not isinstance(implementation, _EveryOrder):
                implementation = {k: _resolve(v) if isinstance(v, str) else v for k, v in implementation.items()}
            elif isinstance(implementation, str):
                implementation = _resolve(implementation)
            self.namespace[name] = implementation
            self._names[cls] = name
        return self._names[cls]

    def _print(self, expr: Any, **kwargs: Any) -> str:
        if isinstance(expr, sympy.Basic):
            cls = type(expr)
            if cls in self._table:
                return self._print_call(expr, self._name(cls), self._table[cls])
            if isinstance(expr, sympy.core.function.Application) and not isinstance(expr, sympy.Piecewise):
                raise _missing(expr, self._target)
        return super()._print(expr, **kwargs)  # type: ignore[misc]

    def _print_call(self, expr: sympy.Basic, name: str, implementation: Any) -> str:
        args = list(expr.args)
        if isinstance(implementation, Mapping):
            order = args.pop(0)
            if not (order.is_Integer and int(order) in implementation):
                known = ", ".join(map(str, implementation)) + (", ..." if isinstance(implementation, _EveryOrder) else "")
                raise TranslationError(
                    f"{type(expr).__name__} of order {order} (in {expr}) has no {self._target} translation; "
                    f"orders {known} do. Add one with:\n    autocheck.register_sympy_function("
                    f"{_class_name(type(expr))}, {{{order}: implementation, ...}})"
                )
            name = f"{name}[{int(order)}]"
        return f"{name}({', '.join(self._print_argument(a) for a in args)})"

    def _print_argument(self, arg: sympy.Basic) -> str:
        return self._print(arg)

    def _branches(self, expr: sympy.Piecewise, undefined: str, choose: Callable[[str, str, str], str],
                  value_of: Callable[[sympy.Basic], str] | None = None) -> str:
        """A Piecewise as nested choices, the first branch whose condition holds; none: ``undefined``."""
        value_of = value_of or self._print
        code = undefined
        for value, condition in reversed(expr.args):
            if condition == sympy.true:
                code = value_of(value)
            elif condition != sympy.false:
                code = choose(self._print(condition), value_of(value), code)
        return code


class _TorchPrinter(_TablePrinter, TorchPrinter):
    """TorchPrinter that keeps dtype and device: numbers that must be tensors are
    made ``like`` a 0-d tensor of the working dtype on the inputs' device."""

    _target = "torch"
    like = "_like"

    def _tensor(self, expr: sympy.Basic) -> str:
        if _is_constant(expr):
            return f"torch.full_like({self.like}, {_float_literal(expr)})"
        return self._print(expr)

    _print_argument = _tensor

    def _print_Float(self, expr: sympy.Float) -> str:
        return _float_literal(expr)

    _print_Integer = _print_Rational = _print_Infinity = _print_NegativeInfinity = _print_Float
    _print_NaN = _print_ComplexInfinity = _print_Float

    def _print_Relational(self, expr: sympy.core.relational.Relational) -> str:
        # Python operators accept a number on either side; torch.gt does not.
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    def _print_Piecewise(self, expr: sympy.Piecewise) -> str:
        # No branch holds -> undefined, so nan rather than TorchPrinter's 0.
        return self._branches(expr, self._tensor(sympy.nan), lambda c, v, o: f"torch.where({c}, {v}, {o})",
                              self._tensor)

    def _print_Pow(self, expr: sympy.Pow) -> str:
        base, exponent = expr.args
        special = {sympy.S.Half: "torch.sqrt", -sympy.S.Half: "torch.rsqrt", sympy.S.NegativeOne: "torch.reciprocal"}
        if exponent in special and not _is_constant(base):
            return f"{special[exponent]}({self._print(base)})"
        return f"torch.pow({self._print(base)}, {self._print(exponent)})"

    def _print_Symbol(self, expr: sympy.Symbol) -> str:
        return expr.name


class _MpmathPrinter(_TablePrinter, MpmathPrinter):
    _target = "mpmath"

    def _print_ComplexInfinity(self, expr: sympy.Basic) -> str:
        return "mpmath.nan"

    def _print_Piecewise(self, expr: sympy.Piecewise) -> str:
        return self._branches(expr, "mpmath.nan", _python_choice)  # none holds -> undefined, not None

    def _print_Relational(self, expr: sympy.core.relational.Relational) -> str:
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"


class _ArbPrinter(_TablePrinter, PythonCodePrinter):
    """Python code over flint.arb balls, every number exact or computed at the working precision.

    Division, powers and comparisons go through the ``_arb_*`` helpers, which
    raise ZeroDivisionError at an exact zero divisor and Undecided where a ball
    straddles the decision. User registrations are wrapped in :class:`_Real`
    (nan in, nan out; a non-finite ball is Undecided).
    """

    _target = "arb"
    _helpers = {
        "_arb_rational": lambda p, q: arb(fmpq(p, q)),
        "_arb_integer_power": _arb_integer_power,
        "_arb_rational_power": _arb_rational_power,
        "_arb_power": _arb_power,
        "_arb_compare": _arb_compare,
        "_arb_nan": arb.nan,
        "_arb_pos_inf": arb.pos_inf,
        "_arb_neg_inf": arb.neg_inf,
        "_arb_pi": arb.pi,
        "_arb_e": arb.const_e,
        "_arb_euler": arb.const_euler,
        "_arb_catalan": arb.const_catalan,
    }
    _constants = {
        sympy.pi: "_arb_pi()",
        sympy.E: "_arb_e()",
        sympy.EulerGamma: "_arb_euler()",
        sympy.Catalan: "_arb_catalan()",
    }

    def __init__(self, table: Mapping[type, Any], settings: dict[str, Any] | None = None) -> None:
        super().__init__(table, settings)
        self.namespace.update(self._helpers)

    def _print(self, expr: Any, **kwargs: Any) -> str:
        if isinstance(expr, sympy.Basic) and type(expr) in self._table and self._table[type(expr)] is None:
            raise _missing(expr, self._target)  # registered with mpmath only: the reference is mpmath's
        return super()._print(expr, **kwargs)

    def _name(self, cls: type) -> str:
        fresh = cls not in self._names
        name = super()._name(cls)
        user = isinstance(self._table, collections.ChainMap) and cls in self._table.maps[0]
        if fresh and user and not isinstance(self.namespace[name], _Real):
            self.namespace[name] = _Real(self.namespace[name], name=cls.__name__)
        return name

    def _print_Integer(self, expr: sympy.Integer) -> str:
        return str(int(expr))  # Python ints: exact in every arb operation

    _print_Zero = _print_Integer

    def _print_Rational(self, expr: sympy.Rational) -> str:
        return f"_arb_rational({int(expr.p)}, {int(expr.q)})"

    _print_Half = _print_Rational

    def _print_Float(self, expr: sympy.Float) -> str:
        return self._print_Rational(sympy.Rational(expr))  # a Float is a binary fraction: exact

    def _print_NumberSymbol(self, expr: sympy.NumberSymbol) -> str:
        if expr in self._constants:
            return self._constants[expr]
        rewritten = expr.rewrite(sympy.sqrt)  # GoldenRatio, TribonacciConstant
        if isinstance(rewritten, sympy.NumberSymbol):
            raise TranslationError(f"No arb translation for the constant {expr}")
        return self._print(rewritten)

    _print_Pi = _print_Exp1 = _print_EulerGamma = _print_Catalan = _print_GoldenRatio = _print_NumberSymbol

    def _print_ImaginaryUnit(self, expr: sympy.Basic) -> str:
        raise TranslationError("No arb translation for I: arb balls are real; the mpmath reference handles it")

    def _print_Infinity(self, expr: sympy.Basic) -> str:
        return "_arb_pos_inf()"

    def _print_NegativeInfinity(self, expr: sympy.Basic) -> str:
        return "_arb_neg_inf()"

    def _print_NaN(self, expr: sympy.Basic) -> str:
        return "_arb_nan()"

    _print_ComplexInfinity = _print_NaN

    def _print_Mul(self, expr: sympy.Mul) -> str:
        # Each factor on its own: a Pow(b, -1) factor prints as a checked reciprocal,
        # never as Python's "/" (which gives arb's silent nan for a ball holding 0).
        return "*".join(f"({self._print(a)})" for a in expr.args)

    def _print_Pow(self, expr: sympy.Pow, rational: bool = False) -> str:
        base, exponent = expr.args
        if exponent.is_Integer:
            return f"_arb_integer_power({self._print(base)}, {int(exponent)})"
        if exponent.is_Rational:
            return f"_arb_rational_power({self._print(base)}, {int(exponent.p)}, {int(exponent.q)})"
        return f"_arb_power({self._print(base)}, {self._print(exponent)})"

    def _print_Relational(self, expr: sympy.core.relational.Relational) -> str:
        return f"_arb_compare({self._print(expr.lhs)}, {self._print(expr.rhs)}, {expr.rel_op!r})"

    def _print_Piecewise(self, expr: sympy.Piecewise) -> str:
        return self._branches(expr, "_arb_nan()", _python_choice)  # no branch holds -> undefined


class _LongDoublePrinter(_TablePrinter, NumPyPrinter):
    """numpy code on long double arrays: every number that is not a small integer is a
    long double parsed from 40 digits, so no constant is rounded to float64 first."""

    _target = "numpy long double"

    def __init__(self, table: Mapping[type, Any], settings: dict[str, Any] | None = None) -> None:
        super().__init__(table, settings)
        self.namespace["_ld"] = np.longdouble

    def _print(self, expr: Any, **kwargs: Any) -> str:
        if isinstance(expr, sympy.Basic) and type(expr) in SYMPY_TO_TORCH.maps[0]:
            raise _missing(expr, self._target)  # a user's translation: this tier does not second-guess it
        return super()._print(expr, **kwargs)

    def _print_Integer(self, expr: sympy.Integer) -> str:
        return str(int(expr)) if abs(int(expr)) <= 2**53 else f"_ld({str(int(expr))!r})"

    _print_Zero = _print_One = _print_NegativeOne = _print_Integer

    def _print_Rational(self, expr: sympy.Rational) -> str:
        return f"(_ld({str(int(expr.p))!r}) / _ld({str(int(expr.q))!r}))"

    _print_Half = _print_Rational

    def _print_Float(self, expr: sympy.Float) -> str:
        return f"_ld({mpmath.libmp.to_str(expr._mpf_, 40)!r})"

    def _print_Infinity(self, expr: sympy.Basic) -> str:
        return "_ld('inf')"

    def _print_NegativeInfinity(self, expr: sympy.Basic) -> str:
        return "_ld('-inf')"

    def _print_NaN(self, expr: sympy.Basic) -> str:
        return "_ld('nan')"

    _print_ComplexInfinity = _print_NaN

    def _print_Pow(self, expr: sympy.Pow, rational: bool = False) -> str:
        base, exponent = expr.args
        if exponent == sympy.S.Half:
            return f"numpy.sqrt({self._print(base)})"
        if exponent.is_Integer:
            return f"({self._print(base)})**({int(exponent)})"
        return f"numpy.power({self._print(base)}, {self._print(exponent)})"

    def _print_Relational(self, expr: sympy.core.relational.Relational) -> str:
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    def _print_Piecewise(self, expr: sympy.Piecewise) -> str:
        return self._branches(expr, "_ld('nan')", lambda c, v, o: f"numpy.where({c}, {v}, {o})")


# --- the callables -----------------------------------------------------------------


def _lambdify(
    printer: _TablePrinter, symbols: list[sympy.Symbol], exprs: list[sympy.Basic], module: str, *extra: sympy.Symbol
) -> Callable:
    # Print once up front, with the user's names: it raises TranslationError
    # with the expression as the user wrote it, and fills printer.namespace
    # (lambdify copies the namespace before it prints).
    for expr in exprs:
        printer.doprint(expr)
    # Our own argument names: no clash with ``extra`` and no dummification.
    args = [sympy.Symbol(f"_a{i}") for i in range(len(symbols))]
    renamed = [e.xreplace(dict(zip(symbols, args))) for e in exprs]
    namespace = {**printer.namespace, module: importlib.import_module(module)}
    # lambdify has no namespace of its own for flint: the arb printer names all it calls.
    modules = [namespace] if module == "flint" else [namespace, module]
    return sympy.lambdify([*args, *extra], renamed, modules=modules, printer=printer, cse=True)


def to_torch(exprs: Sequence[Any], symbols: Sequence[sympy.Symbol]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Compile SymPy expressions into one torch function.

    The result takes one argument per symbol (tensors of any floating dtype and
    device, or Python numbers) and returns one tensor per expression, broadcast
    to the arguments' common shape, with their promoted floating dtype and
    their device; constant expressions come back as full tensors too.

    Raises:
        TranslationError: a function has no translation, or the expression
            holds an unevaluated Derivative, Subs, Integral or Limit.

    Example:
        >>> import sympy, torch
        >>> x = sympy.Symbol("x", real=True)
        >>> to_torch([sympy.Heaviside(x)], [x])(torch.tensor([-1.0, 0.0, 2.0]))
        (tensor([0.0000, 0.5000, 1.0000]),)
    """
    exprs, symbols = _prepare(exprs, symbols)
    folded = [_fold_numbers(e) for e in exprs]
    compiled = _lambdify(_TorchPrinter(SYMPY_TO_TORCH), symbols, folded, "torch", sympy.Symbol(_TorchPrinter.like))
    n = len(symbols)

    def evaluate(*values: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        if len(values) != n:
            raise TypeError(f"Expected {n} arguments, one per symbol in {symbols}, but got {len(values)}")
        plain = _plain(values)
        if plain is not None:  # float64 tensors of one shape on the CPU, and numbers: the common small call
            shape = next(v.shape for v in values if isinstance(v, torch.Tensor))
            numbers = [t for t, v in zip(plain, values) if t is not v]
            return tuple(_plain_output(o, shape, numbers) for o in compiled(*plain, _ZERO64))
        tensors, dtype = _as_tensors(values)
        work_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        tensors = torch.broadcast_tensors(*[t.to(work_dtype) for t in tensors]) if tensors else []
        device = tensors[0].device if tensors else torch.device("cpu")
        shape = tensors[0].shape if tensors else torch.Size()
        like = torch.zeros((), dtype=work_dtype, device=device)
        outputs = compiled(*tensors, like)
        return tuple(_full(output, shape, dtype, like) for output in outputs)

    evaluate.__doc__ = f"Evaluate {len(exprs)} expressions in {len(symbols)} symbols with torch."
    return evaluate


#: The ``like`` of :func:`to_torch`'s plain calls (the compiled code only reads it).
_ZERO64 = torch.zeros((), dtype=torch.float64)


def _plain(values: Sequence[Any]) -> list[torch.Tensor] | None:
    """The values as they go in where at least one is a tensor and every tensor is a float64
    CPU tensor of one shape (none to promote, move or broadcast); numbers as 0-d float64
    tensors. None otherwise."""
    shape = None
    for v in values:
        if type(v) is torch.Tensor:
            if v.dtype is not torch.float64 or v.device.type != "cpu" or (shape is not None and v.shape != shape):
                return None
            shape = v.shape
        elif type(v) is not float and type(v) is not int:
            return None
    if shape is None:
        return None
    return [v if type(v) is torch.Tensor else _number(float(v).hex()) for v in values]


def _plain_output(output: Any, shape: torch.Size, numbers: Sequence[torch.Tensor]) -> torch.Tensor:
    """An output of a plain call, of the inputs' shape; a fresh tensor where it is one of
    the cached numbers (an expression that is a symbol given as a number)."""
    if isinstance(output, torch.Tensor) and any(output is t for t in numbers):
        return output.expand(shape).clone()
    if isinstance(output, torch.Tensor) and output.shape == shape and output.dtype is torch.float64:
        return output
    return _full(output, shape, torch.float64, _ZERO64)


@functools.lru_cache(maxsize=256)
def _number(text: str) -> torch.Tensor:
    """A number (by its exact hexadecimal text: -0.0 and nan kept) as a 0-d float64 tensor."""
    return torch.tensor(float.fromhex(text), dtype=torch.float64)


def _as_tensors(values: Sequence[Any]) -> tuple[list[torch.Tensor], torch.dtype]:
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    for position, value in enumerate(values):
        if not isinstance(value, (torch.Tensor, int, float)):
            raise TypeError(f"Expected a tensor or a real number for argument {position}, but got {value!r}")
        if isinstance(value, torch.Tensor) and value.is_complex():
            raise TypeError(f"Expected a real tensor for argument {position}, but got dtype {value.dtype}")
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors], torch.bool)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    device = next((t.device for t in tensors if t.device.type != "cpu"), torch.device("cpu"))
    # A Python number is exact in float64; torch's default dtype would round it (a 1e-300 to 0).
    return [v.to(device) if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float64, device=device)
            for v in values], dtype


def _full(output: Any, shape: torch.Size, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        return torch.full(shape, float(output), dtype=dtype, device=like.device)
    if output.shape != shape:
        output = output.expand(shape).contiguous()
    return output.to(dtype)


def to_mpmath(exprs: Sequence[Any], symbols: Sequence[sympy.Symbol]) -> Callable[..., tuple[Any, ...]]:
    """Compile SymPy expressions into one mpmath function (the exact reference).

    The result takes one mpmath number (or float) per symbol and returns a
    tuple of mpmath numbers computed at the current ``mpmath.mp.prec``.
    Division by zero raises ZeroDivisionError, and :class:`Undefined` marks
    points with no value at all (DiracDelta at 0).

    Example:
        >>> import sympy, mpmath
        >>> x = sympy.Symbol("x", real=True)
        >>> to_mpmath([sympy.sinc(x)], [x])(mpmath.mpf(0))
        (mpf('1.0'),)
    """
    exprs, symbols = _prepare(exprs, symbols)
    compiled = _lambdify(_MpmathPrinter(SYMPY_TO_MPMATH), symbols, exprs, "mpmath")
    return lambda *values: tuple(compiled(*values))


def to_arb(exprs: Sequence[Any], symbols: Sequence[sympy.Symbol]) -> Callable[..., tuple[arb, ...]]:
    """Compile SymPy expressions into one function of ``flint.arb`` balls.

    The result takes one arb (or float, int) per symbol and returns one arb
    per expression, computed at the current ``flint.ctx.prec``: a ball that
    certainly holds the true value, or nan where the value is certainly not
    real. Numbers are exact (Rationals, Floats) or computed at the working
    precision (pi, sqrt(2), log(2)), never folded to 53 bits.

    Raises, when called:
        Undecided: a ball straddles a comparison, a domain edge or a zero
            divisor at this precision; more bits may decide it.
        ZeroDivisionError: an exact pole (1/0, gamma(0), log(0)): no value
            here, though a limit may exist.
        Undefined: DiracDelta at 0.

    Raises:
        TranslationError: a function has no arb translation (including one
            registered with only an mpmath implementation), or the expression
            holds I or an unevaluated Derivative, Subs, Integral or Limit.

    Example:
        >>> import sympy, flint
        >>> x = sympy.Symbol("x", real=True)
        >>> flint.ctx.prec = 80
        >>> to_arb([sympy.exp(x) / (1 + sympy.exp(x))], [x])(800.0)
        ([1.0000000000000000000000 +/- 7.05e-24],)
        >>> flint.ctx.prec = 53
    """
    exprs, symbols = _prepare(exprs, symbols)
    compiled = _lambdify(_ArbPrinter(SYMPY_TO_ARB), symbols, exprs, "flint")
    n = len(symbols)

    def evaluate(*values: Any) -> tuple[arb, ...]:
        if len(values) != n:
            raise TypeError(f"Expected {n} arguments, one per symbol in {symbols}, but got {len(values)}")
        return tuple(_ball(v) for v in compiled(*[_ball(v) for v in values]))

    evaluate.__doc__ = f"Evaluate {len(exprs)} expressions in {len(symbols)} symbols on arb balls."
    return evaluate


def to_longdouble(exprs: Sequence[Any], symbols: Sequence[sympy.Symbol]) -> Callable[..., tuple[np.ndarray, ...]]:
    """Compile SymPy expressions of elementary functions into one numpy function on long
    double arrays (:data:`LONGDOUBLE_BITS` significand bits, exponents to about ±16384).

    The result takes one array per symbol and returns one long double array per
    expression, broadcast to the arguments' shape; floating point exceptions are quiet.

    Raises:
        TranslationError: a function has no long double kernel (erf, gamma, Bessel, a
            user registration), or the expression holds an unevaluated Derivative.

    Example:
        >>> import sympy, numpy
        >>> x = sympy.Symbol("x", real=True)
        >>> (value,) = to_longdouble([1 / x**2], [x])(numpy.array([1e300]))
        >>> float(value[0])
        0.0
        >>> bool(value[0] > 0)
        True
    """
    exprs, symbols = _prepare(exprs, symbols)
    folded = [_fold_numbers(e) for e in exprs]
    compiled = _lambdify(_LongDoublePrinter(_LONGDOUBLE), symbols, folded, "numpy")
    n = len(symbols)

    def evaluate(*values: Any) -> tuple[np.ndarray, ...]:
        if len(values) != n:
            raise TypeError(f"Expected {n} arguments, one per symbol in {symbols}, but got {len(values)}")
        arrays = np.broadcast_arrays(*[np.asarray(v, dtype=np.longdouble) for v in values]) if values else []
        shape = arrays[0].shape if arrays else ()
        with np.errstate(all="ignore"):
            outputs = compiled(*arrays)
        return tuple(np.broadcast_to(np.asarray(o, dtype=np.longdouble), shape) for o in outputs)

    evaluate.__doc__ = f"Evaluate {len(exprs)} expressions in {len(symbols)} symbols in long double."
    return evaluate
