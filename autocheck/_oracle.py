"""Exact reference values: derivatives rounded to float64 from high precision.

Most points are evaluated in float64 with torch (the printed derivative, fast),
and only the points float64 cannot be trusted with are re-evaluated at high
precision by :func:`autocheck._precise.exact_values` (arb ball arithmetic,
mpmath where arb has no translation):

* the float64 value is not finite (``exp(x)/(1 + exp(x))`` at 800 is inf/inf,
  yet exactly 1.0);
* the estimated rounding error of the float64 evaluation (a running error
  analysis printed next to the derivative) exceeds ``TRUSTED_ERROR`` units of
  roundoff relative to the result: cancellation in a sum (``2x·eˣ + x²eˣ``
  near -2), or an ill-conditioned function of a rounded argument
  (``exp(x²/3)`` at large x, ``log(1 + x)`` near 0);
* an intermediate that would turn a finite result wrong by overflowing (the
  divisor of ``2x/(x² + 1)`` at 1e300) is infinite;
* an intermediate inside a divisor, a root or a logarithm is below the smallest
  normal number (``x/sqrt(x² + y²)`` at x = -3.75e-162, y = -2.3e-280, where x² keeps
  two bits), the result is not, and the error model's bound is not good enough;
* the expression calls a special function whose torch kernel is not accurate to
  float64 (polygamma, gamma, loggamma, zeta, erfinv, Bessel, Lambert W): every
  point, deduplicated (trigamma: ~30 µs a point in arb, ~1 ms in mpmath).

Before high precision, two cheaper tiers settle many of those points at once: values far
beyond float64's range are bounded in magnitude (:mod:`autocheck._magnitude`: they round to
0 or to an infinity), and, for a check's accuracy, a cancelling sum is evaluated in its
factored form (``x²eˣ + 2xeˣ = x(x + 2)eˣ``) wherever that form's own error bound is good
enough.

So re-evaluated points are correctly rounded (certified by arb's ball, or
settled by mpmath), and trusted points are within ``TRUSTED_ERROR · 2**-53``
relative of the truth (measured: at most 9 ULP, typically 0 to 2).

Where the exact expression has no value (0/0, a pole) the limit is taken from
several directions at two step sizes: if they agree it is the value
(``sinc'(0) = 0.0``); if the magnitude grows on every side with one sign it is
that infinity (``gamma'(0) = -inf``); otherwise the IEEE float64 value stays
(``1/x`` at 0 is inf). ``DiracDelta`` at 0 is nan. See :mod:`autocheck._precise`.

>>> import sympy, torch
>>> x = sympy.Symbol("x", real=True)
>>> softplus_grad = sympy.diff(sympy.log(1 + sympy.exp(x)), x)
>>> evaluate([softplus_grad], [x], [torch.tensor([0.0, 800.0])])
(tensor([0.5000, 1.0000], dtype=torch.float64),)
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy
import torch

from autocheck import _magnitude, _precise, _printer
from autocheck._budget import OutOfTime
from autocheck._errors import TranslationError
from autocheck._error_model import KERNEL_ERROR, UNDERFLOW, kernel_error, relative_bound

__all__ = ["TRUSTED_ERROR", "evaluate", "fast", "fast_values"]

#: Largest estimated float64 error (in units of roundoff, 2**-53, relative to
#: the result) that a correctly rounded reference trusts without re-evaluating.
TRUSTED_ERROR = 16.0

#: How an exact value was found (:func:`settled_values`): float64 within its error bound;
#: float64 in an equivalent form, or long double, within theirs; proven (an arb ball whose
#: ends round alike, or a magnitude certainly beyond float64's range); mpmath or a limit.
FLOAT64, REWRITTEN, CERTIFIED, UNCERTIFIED = 0, 1, 2, 3
#: Their names in a report (float64's count is what is left of the elements checked).
SOURCE_NAMES = {REWRITTEN: "rewritten", CERTIFIED: "certified", UNCERTIFIED: "uncertified"}

_ROUNDOFF = 2.0**-53
_SMALLEST_NORMAL = 2.2250738585072014e-308
_LARGEST_RECIPROCAL = 1 / _SMALLEST_NORMAL  # 2**1022, exact


@dataclass
class _Plan:
    """Everything the float64 tier needs for one list of expressions, compiled once."""

    exprs: tuple[sympy.Expr, ...]
    symbols: tuple[sympy.Symbol, ...]
    values: Callable[..., tuple[torch.Tensor, ...]]  # the values, then the probes that are not constant
    kernel_error: tuple[float, ...]  # per expression: its worst kernel's error, relative, in roundoffs
    probed: tuple[bool, ...] = ()  # per expression: whether its overflow probe is among ``values``
    low_probed: tuple[bool, ...] = ()  # per expression: whether its underflow probe is, after them

    def run(self, *values: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """The float64 values, and per expression its overflow probe (None: it cannot overflow)."""
        outputs, probes, _ = self.run_probed(*values)
        return outputs, probes

    def run_probed(self, *values: torch.Tensor
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[torch.Tensor | None]]:
        """:meth:`run`, and per expression its underflow probe (None: nothing to watch)."""
        results = self.values(*values)
        n = len(self.exprs)
        probes = iter(results[n:])
        overflow = [next(probes) if p else None for p in self.probed]
        underflow = [next(probes) if p else None for p in self.low_probed] or [None] * n
        return [r.to(torch.float64) for r in results[:n]], overflow, underflow

    @functools.cached_property
    def forms(self) -> tuple[tuple["_Plan", ...], ...]:
        """Per expression: plans of equivalent forms that float64 may evaluate better where
        this one is not trusted (its factored form; its erfc scaled to erfcx)."""
        return tuple(tuple(p for p in (_factored_plan(e, self.symbols), _scaled_plan(e, self.symbols))
                           if p is not None) for e in self.exprs)

    @functools.cached_property
    def extended(self) -> tuple[Callable[..., tuple[np.ndarray, ...]] | None, ...]:
        """Per expression: its value, overflow probe and relative error bound in long double,
        where it has only elementary functions and long double is wider than float64."""
        return tuple(_extended_plan(e, self.symbols) for e in self.exprs)

    @functools.cached_property
    def may_cancel(self) -> tuple[bool, ...]:
        """Per expression: whether it sums rounded terms that may have opposite signs."""
        return tuple(_may_cancel(e) for e in self.exprs)

    @functools.cached_property
    def preferred(self) -> "_Plan":
        """The plan :func:`fast` evaluates: each sum in its factored form where factoring
        needs no condition (``x(x + 2)e**x`` for ``x**2 e**x + 2x e**x``, which cancels near -2):
        fewer elements of a check then need more than the cheap test."""
        forms = []
        for e in self.exprs:
            found = _factored(e)
            forms.append(found[0] if found is not None and not found[1] else e)
        if forms == list(self.exprs):
            return self
        return _plan(tuple(forms), self.symbols, _printer.registrations())

    @functools.cached_property
    def bounds(self) -> Callable[..., tuple[torch.Tensor, ...]]:
        """Relative error bounds of the float64 values (kernel errors included), in roundoffs."""
        exprs = [relative_bound(e) if not e.is_number else sympy.Integer(0) for e in self.exprs]
        return _printer.to_torch(exprs, [*self.symbols, UNDERFLOW])


def _may_cancel(expr: sympy.Expr) -> bool:
    """A sum with a rounded term (not a symbol or a number) and terms of signs SymPy cannot
    show to agree: ``x**2 e**x + 2x e**x`` may cancel; ``1 + e**-x`` and ``x + 2`` (exact terms,
    one rounding) cannot lose more than that rounding.

    An expression with steps (Heaviside, Min, Max, Piecewise, floor) is not looked at: its
    exact zeros (a step that is 0) have no relative bound, and would all be refined."""
    if expr.has(sympy.Heaviside, sympy.Min, sympy.Max, sympy.Piecewise, sympy.floor, sympy.ceiling, sympy.sign):
        return False
    for node in sympy.preorder_traversal(expr):
        if not isinstance(node, sympy.Add):
            continue
        terms = node.args
        if all(t.is_Symbol or t.is_Number for t in terms):
            continue
        if all(t.is_nonnegative for t in terms) or all(t.is_nonpositive for t in terms):
            continue
        return True
    return False


#: Largest sum (in SymPy operations) the oracle tries to factor: factoring is cheap there.
MAX_FACTORED_OPS = 40


@functools.lru_cache(maxsize=256)
def _factored(expr: sympy.Expr) -> tuple[sympy.Expr, tuple[sympy.Expr, ...]] | None:
    """A sum's factored form, and the arguments of sign that must not be 0 for it to hold."""
    if (not isinstance(expr, sympy.Add) or expr.has(sympy.Piecewise) or expr.atoms(*KERNEL_ERROR)
            or sympy.count_ops(expr) > MAX_FACTORED_OPS or not expr.free_symbols):
        return None  # an inaccurate kernel inside: high precision decides
    # x*sign(x) is |x| wherever sign's argument is not 0 (softsign's derivative cancels to
    # 1/(|x| + 1)**2 only so): the factored value is used only where those arguments are not 0.
    guards = tuple(sorted({f.args[0] for f in expr.atoms(sympy.sign)}, key=sympy.default_sort_key))
    try:
        factored = sympy.factor(expr.replace(sympy.sign, lambda u: sympy.Abs(u) / u))
    except (sympy.PolynomialError, ValueError, TypeError, NotImplementedError):
        return None
    # As printed: rebuilding a node evaluates it (SymPy distributes a number over a sum, so
    # factor's (x - 10)/10 is computed as x/10 - 1); the bound must be of what is computed.
    factored = _rebuilt(factored)
    if factored == expr or isinstance(factored, sympy.Add):
        return None
    return factored, guards


def _rebuilt(expr: sympy.Basic) -> sympy.Basic:
    if not expr.args or isinstance(expr, sympy.Symbol):
        return expr
    return expr.func(*[_rebuilt(a) for a in expr.args])


def _factored_plan(expr: sympy.Expr, symbols: tuple[sympy.Symbol, ...]) -> "_Plan | None":
    found = _factored(expr)
    if found is None:
        return None
    factored, guards = found
    return _Plan((factored,), symbols, _printer.to_torch([factored, _overflow_probe(factored), *guards], symbols),
                 (0.0,))


def _extended_plan(expr: sympy.Expr, symbols: tuple[sympy.Symbol, ...]
                   ) -> Callable[..., tuple[np.ndarray, ...]] | None:
    if _printer.LONGDOUBLE_BITS < 64 or expr.is_number:
        return None
    try:
        return _printer.to_longdouble([expr, _overflow_probe(expr), relative_bound(expr)], [*symbols, UNDERFLOW])
    except TranslationError:
        return None  # a special function: no long double kernel


def _accurate_form(expr: sympy.Expr) -> sympy.Expr:
    """The same function written so that float64 evaluates it well, by identities:

    * a Bessel function of integer order two or more by the recurrence from orders 0 and 1
      (torch has kernels for those);
    * ``erfinv(2x - 1)`` as ``-erfcinv(2x)``, whose argument is not rounded near -1, and
      ``exp(erfcinv(y)**2)`` as ``erfcx(erfcinv(y))/y``;
    * ``1 - erfc(u)/2`` as ``erfc(-u)/2``, ``1 - erf(u)`` as ``erfc(u)``: no cancellation.
    """
    expr = expr.replace(
        lambda e: isinstance(e, (sympy.besseli, sympy.besselj)) and e.args[0].is_Integer and abs(int(e.args[0])) >= 2,
        lambda e: sympy.expand_func(e))
    expr = expr.replace(lambda e: isinstance(e, sympy.erfinv), _erfinv_form)
    expr = expr.replace(_exp_of_erfcinv_squared, _erfcx_form)
    return expr.replace(lambda e: isinstance(e, sympy.Add) and e.has(sympy.erf, sympy.erfc), _complement_form)


def _exp_of_erfcinv_squared(e: sympy.Basic) -> bool:
    if not isinstance(e, sympy.exp):
        return False
    c, square = e.args[0].as_coeff_Mul()
    return c.is_Rational and c > 0 and isinstance(square, sympy.Pow) and square.exp == 2 \
        and isinstance(square.base, sympy.erfcinv)


def _erfcx_form(e: sympy.exp) -> sympy.Expr:
    """exp(a**2) with a = erfcinv(y) is erfcx(a)/y (erfc(a) = y): no longer the exponential of
    a rounded square (ndtri's derivative near 0, where a**2 is 700)."""
    c, square = e.args[0].as_coeff_Mul()
    a = square.base
    return (_printer.Erfcx(a) / a.args[0]) ** c


def _erfinv_form(e: sympy.erfinv) -> sympy.Expr:
    (u,) = e.args
    for shifted, form in ((1 + u, lambda v: -sympy.erfcinv(v)), (1 - u, sympy.erfcinv)):
        if sympy.count_ops(shifted) < sympy.count_ops(u):  # the constant cancels: 2x - 1 -> 2x
            return form(shifted)
    return e


def _complement_form(e: sympy.Add) -> sympy.Expr:
    constant, rest = e.as_independent(*e.free_symbols, as_Add=True)
    if not constant.is_Number or constant == 0:
        return e
    terms = sympy.Add.make_args(rest)
    for k, term in enumerate(terms):
        c, f = term.as_independent(*term.free_symbols, as_Add=False)
        others = sympy.Add(*terms[:k], *terms[k + 1:])
        if isinstance(f, sympy.erfc) and constant == -2 * c:  # c (erfc(u) - 2) = -c erfc(-u)
            return others - c * _printer.ReflectedErfc(f.args[0])
        if isinstance(f, sympy.erf) and constant == -c:  # c (erf(u) - 1) = -c erfc(u)
            return others - c * sympy.erfc(f.args[0])
        if isinstance(f, sympy.erf) and constant == c:  # c (erf(u) + 1) = c erfc(-u)
            return others + c * _printer.ReflectedErfc(f.args[0])
    return e


def _scaled_plan(expr: sympy.Expr, symbols: tuple[sympy.Symbol, ...]) -> "_Plan | None":
    """erfc(z) written exp(-z**2) erfcx(z), and besseli(n, x) (n = 0, 1) written
    exp(|x|) i{n}e(x): far out, where erfc underflows or besseli overflows and a ratio with an
    exponential is 0/0 or inf/inf in float64 (log_ndtr's derivative at -40, i0e's at 800), the
    exponentials cancel symbolically. Where the scaled form itself overflows (erfcx below -26)
    it is not finite and not used."""
    scalable = expr.atoms(sympy.erfc, _printer.ReflectedErfc) or any(f.args[0] in (0, 1) for f in expr.atoms(sympy.besseli))
    if not scalable or sympy.count_ops(expr) > MAX_FACTORED_OPS:
        return None
    scaled = expr.replace(lambda e: isinstance(e, sympy.erfc), lambda e: sympy.exp(-e.args[0] ** 2) * _printer.Erfcx(e.args[0]))
    scaled = scaled.replace(lambda e: isinstance(e, _printer.ReflectedErfc),
                            lambda e: sympy.exp(-e.args[0] ** 2) * _printer.Erfcx(-e.args[0]))
    scaled = scaled.replace(lambda e: isinstance(e, sympy.besseli) and e.args[0] in (0, 1),
                            lambda e: sympy.exp(sympy.Abs(e.args[1])) * _printer.ScaledBesselI(*e.args))
    scaled = sympy.expand_log(scaled, force=True)
    return _Plan((scaled,), symbols, _printer.to_torch([scaled, _overflow_probe(scaled)], symbols), (0.0,))


@functools.lru_cache(maxsize=256)
def _plan(exprs: tuple[sympy.Expr, ...], symbols: tuple[sympy.Symbol, ...], registrations: int) -> _Plan:
    exprs = tuple(_accurate_form(e) for e in exprs)
    probes = [_overflow_probe(e) for e in exprs]
    # A constant probe (0: nothing watched) is not computed: a pass over every point saved.
    probed = tuple(not (p.is_number and math.isfinite(float(p))) for p in probes)
    lows = [_underflow_probe(e) for e in exprs]
    low_probed = tuple(p is not None for p in lows)
    values = _printer.to_torch([*exprs, *[p for p, kept in zip(probes, probed) if kept],
                                *[p for p in lows if p is not None]], symbols)
    kernels = tuple(max([kernel_error(f) for f in e.atoms(*KERNEL_ERROR)], default=0.0) for e in exprs)
    return _Plan(exprs, symbols, values, kernels, probed, low_probed)


def _compiled(exprs: Sequence[sympy.Expr], symbols: Sequence[sympy.Symbol]) -> _Plan:
    return _plan(tuple(sympy.sympify(e) for e in exprs), tuple(symbols), _printer.registrations())


# Functions that turn an overflowed (infinite) argument into a finite, wrong value.
_SATURATING = (
    sympy.exp, sympy.tanh, sympy.atan, sympy.acot, sympy.erf, sympy.erfc, sympy.sinc,
    sympy.sign, sympy.Heaviside, sympy.sech, sympy.csch, sympy.coth, sympy.atan2,
)


def _overflow_probe(expr: sympy.Expr) -> sympy.Expr:
    """Sum of the magnitudes that, if they overflowed to inf, would leave a finite result.

    ``2x/(x² + 1)`` at ``x = 1e300`` is 0.0 in float64 (x² is inf), not 2e-300:
    nothing in the result shows it, so the divisor itself is watched.
    """
    watched: set[sympy.Expr] = set()
    _watch(expr, watched)
    return sympy.Add(*[sympy.Abs(w) for w in watched if not isinstance(w, sympy.Symbol)])


def _watch(node: sympy.Basic, watched: set[sympy.Expr]) -> None:
    if isinstance(node, sympy.Piecewise):
        # Only the branch taken counts: the others are evaluated too, and may overflow freely.
        watched.add(sympy.Piecewise(*[(_overflow_probe(value), condition) for value, condition in node.args]))
        return
    if isinstance(node, sympy.Pow) and node.exp.is_negative:
        watched.add(1 / node)  # the divisor, as computed: (1 + e^-x)**2 overflows before its base
    elif isinstance(node, _SATURATING):
        watched.update(a for a in node.args if not a.is_number)
    for argument in node.args:
        _watch(argument, watched)


def _underflow_probe(expr: sympy.Expr) -> sympy.Expr | None:
    """Sum of the reciprocal magnitudes of the intermediates whose underflow a later operation
    would magnify: those inside a divisor, a root or another power that is not a whole one, or
    a logarithm. It reaches 1/(smallest normal number) where one of them is below that (or 0).
    None where nothing is watched.

    ``x/sqrt(x² + y²)`` at ``x = -3.75e-162, y = -2.3e-280`` is -0.9746 in float64, not -1.0:
    x² is subnormal (two significant bits), and the root and the quotient carry its error into a
    result of ordinary size. Underflow where a sum drowns it (``1 + e**-x`` at 800) costs nothing:
    where a watched intermediate is that small, the error model's bound decides (see :func:`fast`).
    """
    watched: set[sympy.Expr] = set()
    branches: list[sympy.Expr] = []
    _watch_low(expr, watched, branches, inside=False)
    terms = [_printer.ReciprocalMagnitude(w) for w in watched if not (w.is_Symbol or w.is_number)]
    return sympy.Add(*terms, *branches) if terms or branches else None


def _watch_low(node: sympy.Basic, watched: set[sympy.Expr], branches: list[sympy.Expr], inside: bool) -> None:
    if inside and isinstance(node, sympy.Expr):
        watched.add(node)
    if isinstance(node, sympy.Piecewise):
        # Only the branch taken counts: the others are evaluated too, and may underflow freely.
        probes = [(_underflow_probe(value), condition) for value, condition in node.args]
        if any(p is not None for p, _ in probes):
            branches.append(sympy.Piecewise(*[(0 if p is None else p, c) for p, c in probes]))
        return
    magnifies = (isinstance(node, sympy.Pow) and not (node.exp.is_Integer and node.exp >= 0)) or isinstance(node, sympy.log)
    for k, argument in enumerate(node.args):
        # A power's exponent is watched like any operand (it is not in the base's magnifier).
        _watch_low(argument, watched, branches, inside or (magnifies and k == 0))


def _finite(value: torch.Tensor, probe: torch.Tensor | None) -> torch.Tensor:
    finite = torch.isfinite(value)
    if probe is not None:
        finite &= torch.isfinite(probe)
    return finite


def _underflowed(low: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor | None:
    """Where a magnifiable intermediate may be below the smallest normal number (its underflow
    probe reaches the reciprocal of that: :func:`_underflow_probe`) and the value is not; None
    where that is nowhere. A value below the normal range is judged against atol and left as it
    is: there the error model's relative bound says nothing, and settling every such value in
    high precision would cost seconds per check (mish' at -1e5 is 0 in float64 and long double).
    That leaves a product that scales an underflowed intermediate up again, ``w·sqrt(x² + y²)``
    at x, y ~ 1e-170 and w = 1e150, untrusted by nothing."""
    if low is None:
        return None
    # nan where a watched intermediate is (inf - inf): no cue for that element, and no other's
    underflowed = low >= _LARGEST_RECIPROCAL
    if not bool(underflowed.any()):  # the common case: two passes
        return None
    underflowed &= value.abs() >= _SMALLEST_NORMAL
    return underflowed if bool(underflowed.any()) else None


def _in_range(probe: torch.Tensor | None, device: Any) -> torch.Tensor:
    """Where an overflow probe is finite; 0-d True where it is everywhere, which one sum
    shows (a sum is finite only where every term is) at a sixth of a mask's cost."""
    if probe is None or math.isfinite(float(probe.sum())):
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.isfinite(probe)


def _float64(values: Sequence[torch.Tensor | float]) -> list[torch.Tensor]:
    return [torch.as_tensor(v).detach().to(torch.float64) for v in values]


def fast(
    exprs: Sequence[sympy.Expr], symbols: Sequence[sympy.Symbol], values: Sequence[torch.Tensor], *, accuracy: float
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]]:
    """Float64 values of ``exprs`` and, per expression, where the oracle vouches for them as
    they are: no intermediate overflowed, and no kernel less accurate than ``accuracy``
    (relative). Cancellation is not looked at: a caller that needs it calls :func:`evaluate`.
    Nor is a value that is not finite: no comparison with a tolerance passes it.

    A sum that may cancel is trusted only where its error bound is within ``accuracy``.

    Third, per expression that calls a kernel less accurate than ``accuracy`` (Bessel I,
    erfinv) or may cancel: a bound on the absolute error of its value (the error model's,
    kernels included; inf where an intermediate overflowed), else None. A value can be judged
    against a tolerance wider than that error without a better one: ``|autograd - value| +
    error`` within it.
    """
    plan = _compiled(exprs, symbols).preferred
    x64 = _float64(values)
    outputs, probes, lows = plan.run_probed(*x64)
    trusted: list[torch.Tensor] = []
    errors: list[torch.Tensor | None] = []
    bounds = None
    for i, (value, probe, low) in enumerate(zip(outputs, probes, lows)):
        in_range = _in_range(probe, value.device)
        underflowed = _underflowed(low, value)
        if underflowed is not None:  # the error model's bound (underflow included) decides there
            bounds = plan.bounds(*x64, _SMALLEST_NORMAL) if bounds is None else bounds
            in_range = in_range & (~underflowed | (bounds[i] * _ROUNDOFF <= accuracy))
        if plan.may_cancel[i] and plan.kernel_error[i] * _ROUNDOFF <= accuracy:
            # A sum of rounded terms of both signs may have lost its digits, and autograd may have
            # lost the same ones evaluating the same formula (gelu's Phi(x) + x phi(x) far left):
            # the value is trusted only where its error bound says it kept them.
            bounds = plan.bounds(*x64, _SMALLEST_NORMAL) if bounds is None else bounds
            good = bounds[i] * _ROUNDOFF <= accuracy
            error = bounds[i] * _ROUNDOFF * value.abs()  # a value that cancelled to 0 has no bound: nan
            trusted.append(in_range & good)
            errors.append(torch.where(in_range, error, math.inf).nan_to_num(nan=math.inf))
            continue
        if plan.kernel_error[i] * _ROUNDOFF > accuracy:
            trusted.append(torch.zeros((), dtype=torch.bool, device=value.device))
            if math.isfinite(plan.kernel_error[i]):
                bounds = plan.bounds(*x64, _SMALLEST_NORMAL) if bounds is None else bounds
                error = bounds[i] * _ROUNDOFF * value.abs()
                errors.append(torch.where(in_range, error, math.inf).nan_to_num(nan=math.inf))
                continue
        else:
            trusted.append(in_range)
        errors.append(None)
    return outputs, trusted, errors


def fast_values(exprs: Sequence[sympy.Expr], symbols: Sequence[sympy.Symbol]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The compiled float64 values of ``exprs`` (no refinement): for the kink test's neighbours."""
    plan = _compiled(exprs, symbols)
    return lambda *values: tuple(plan.run(*_float64(values))[0])


def evaluate(exprs: Sequence[sympy.Expr], symbols: Sequence[sympy.Symbol], values: Sequence[torch.Tensor],
             **options: Any) -> tuple[torch.Tensor, ...]:
    """Exact values of ``exprs``: :func:`settled_values` (same keyword arguments) without its
    masks of where no value was found."""
    return settled_values(exprs, symbols, values, **options)[0]


def settled_values(
    exprs: Sequence[sympy.Expr],
    symbols: Sequence[sympy.Symbol],
    values: Sequence[torch.Tensor],
    *,
    accuracy: float | None = None,
    against: torch.Tensor | None = None,
    deadline: float | None = None,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Exact values of ``exprs`` at ``symbols = values``, rounded to float64.

    Each value is computed in float64 with an error bound (:mod:`autocheck._error_model`,
    torch's kernel errors included), and re-evaluated at high precision
    (:func:`autocheck._precise.exact_values`) wherever the bound is not good enough:

    * ``accuracy=None``: within ``TRUSTED_ERROR`` roundoffs of the value; the points
      re-evaluated are correctly rounded.
    * ``accuracy=a``: within ``a`` relative to the value, or with ``against`` (a tensor of
      magnitudes, broadcastable) within ``a * max(|value|, against)``: a judgement whose
      tolerance is measured against the size of the computation needs no more.

    A non-finite value or an overflowed intermediate is always re-evaluated. If the
    deadline (a ``time.monotonic()`` value) passes with points still to re-evaluate,
    :class:`~autocheck._budget.OutOfTime` is raised: no untrusted value is passed off as exact.

    Args:
        exprs: SymPy expressions (typically derivatives).
        symbols: one SymPy Symbol per entry of ``values``.
        values: tensors of any floating dtype on one device, broadcastable.

    Returns:
        One float64 tensor per expression, on the values' device, of the
        broadcast shape; nan or ±inf exactly where the true value is. Then, per
        expression, a mask of the points where no value was found (a pole without a
        limit, or no reference): there the IEEE float64 value stays. Then, per
        expression, how each value was found (:data:`FLOAT64`, :data:`REWRITTEN`,
        :data:`CERTIFIED` or :data:`UNCERTIFIED`, int8), or None where every value is float64's.

    >>> x = sympy.Symbol("x", real=True)
    >>> evaluate([sympy.diff(sympy.sinc(x), x)], [x], [torch.tensor([0.0])])
    (tensor([0.], dtype=torch.float64),)
    """
    if len(values) != len(symbols):
        raise ValueError(f"Expected one value per symbol in {list(symbols)}, but got {len(values)} values")
    plan = _compiled(exprs, symbols)
    values = _float64(values)
    outputs, probes = plan.run(*values)
    lost = [torch.zeros((), dtype=torch.bool) for _ in outputs]
    sources: list[torch.Tensor | None] = [None for _ in outputs]
    bounds = None
    for i, (output, probe) in enumerate(zip(outputs, probes)):
        beyond = ~_finite(output, probe)  # float64's range was left
        untrusted = beyond.clone()
        if plan.exprs[i].is_number:
            pass  # a constant (0 for floor's derivative) is exact
        else:
            if bounds is None:
                bounds = plan.bounds(*values, _SMALLEST_NORMAL)
            error = bounds[i] * _ROUNDOFF * output.abs()  # a nan bound is untrusted too
            if accuracy is None:
                allowed = TRUSTED_ERROR * _ROUNDOFF * output.abs()
            else:
                size = output.abs() if against is None else torch.maximum(output.abs(), against.to(output.device).abs())
                allowed = accuracy * size
            untrusted |= ~(error <= allowed)
        # Checks only: a correctly rounded reference (accuracy=None) needs more than the bound of
        # a factored product promises (a rounded power's kernel error is not in it).
        if not bool(untrusted.any()):
            continue
        before = untrusted
        for form in plan.forms[i] if accuracy is not None else ():
            if not bool(untrusted.any()):
                break
            output, untrusted = _try_form(form, output, untrusted, values, accuracy, against)
            outputs[i] = output
        if bool(untrusted.any()) and plan.extended[i] is not None:
            output, untrusted = _try_extended(plan, i, output, untrusted, values, accuracy, against)
            outputs[i] = output
        sources[i] = torch.where(before & ~untrusted, REWRITTEN, FLOAT64).to(torch.int8)
        if bool(untrusted.any()):
            outputs[i], lost[i], refined = _refine(plan, i, output, untrusted, beyond, values, deadline)
            sources[i] = torch.maximum(sources[i], refined.to(sources[i].device))
    return tuple(outputs), tuple(lost), tuple(sources)


def _try_form(form: _Plan, output: torch.Tensor, untrusted: torch.Tensor, values: list[torch.Tensor],
              accuracy: float, against: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a sum cancelled, the factored form (x**2 e**x + 2x e**x = x (x + 2) e**x) often
    does not, and where erfc underflowed its scaled form may not: take the form's float64
    value wherever its own error bound is good enough."""
    inputs = torch.broadcast_tensors(*values)
    cancelled = untrusted
    columns = [v[cancelled] for v in inputs]
    value, probe, *guards = form.values(*columns)
    (bound,) = form.bounds(*columns, _SMALLEST_NORMAL)
    value = value.to(torch.float64).expand(columns[0].shape)
    error = bound.expand(value.shape) * _ROUNDOFF * value.abs()
    size = value.abs() if against is None else torch.maximum(
        value.abs(), against.to(value.device).expand(inputs[0].shape)[cancelled].abs())
    allowed = accuracy * size
    # A quarter of the allowance: the bound of a product of rounded powers is looser than a sum's.
    good = torch.isfinite(value) & torch.isfinite(probe.expand(value.shape)) & (4 * error <= allowed)
    for guard in guards:  # sign(u) was written |u|/u
        good &= guard.expand(value.shape) != 0
    output, untrusted = output.clone(), untrusted.clone()
    where = cancelled.nonzero(as_tuple=True)
    output[tuple(w[good] for w in where)] = value[good].to(output.dtype)
    untrusted[tuple(w[good] for w in where)] = False
    return output, untrusted


#: The long double tier's error bound is this many times the float64 error model's (the C
#: library's long double kernels are documented within a few units in the last place, up to 4
#: for tanh, sinh, asinh and expm1 in glibc's tables, where the model counts half of one).
EXTENDED_SAFETY = 8.0


def _try_extended(plan: _Plan, i: int, output: torch.Tensor, untrusted: torch.Tensor, values: list[torch.Tensor],
                  accuracy: float | None, against: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-evaluate the untrusted points in long double (11 more bits, exponents to ±16384):
    ratios of giants (``x**4/(1 + x**2)**2`` at 1e200) and moderate cancellation, wherever
    the error bound, scaled to long double's roundoff, is good enough."""
    inputs = torch.broadcast_tensors(*values)
    columns = [v[untrusted].cpu().numpy() for v in inputs]
    tiny = np.finfo(np.longdouble).tiny
    value, probe, bound = plan.extended[i](*columns, tiny)
    with np.errstate(all="ignore"):
        magnitude = np.abs(value)
        error = (EXTENDED_SAFETY * bound + EXTENDED_SAFETY) * np.longdouble(2.0) ** -_printer.LONGDOUBLE_BITS * magnitude
        if accuracy is None:
            allowed = TRUSTED_ERROR * _ROUNDOFF * magnitude
        else:
            size = magnitude if against is None else np.maximum(
                magnitude, against.to(output.device).expand(untrusted.shape)[untrusted].abs().cpu().numpy())
            allowed = accuracy * size
        good = np.isfinite(value) & np.isfinite(probe) & (error <= allowed)
    if not good.any():
        return output, untrusted
    where = tuple(w[torch.from_numpy(good)] for w in untrusted.nonzero(as_tuple=True))
    output, untrusted = output.clone(), untrusted.clone()
    with np.errstate(over="ignore"):  # beyond float64's range: inf is the rounded value
        rounded = value[good].astype(np.float64)
    output[where] = torch.from_numpy(rounded).to(output.device, output.dtype)
    untrusted[where] = False
    return output, untrusted


#: Points beyond float64's range from which the proven-magnitude tier is tried first (it
#: costs about as much as this many points in high precision).
MAGNITUDE_POINTS = 32


def _refine(plan: _Plan, i: int, output: torch.Tensor, untrusted: torch.Tensor, beyond: torch.Tensor,
            values: list[torch.Tensor], deadline: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace the untrusted entries of ``output`` by high-precision values where there is one;
    and where there was none (a pole: the IEEE value stays); and how each was found
    (:data:`CERTIFIED` or :data:`UNCERTIFIED`; :data:`FLOAT64` where nothing was replaced)."""
    inputs = torch.broadcast_tensors(*values) if values else []
    for v in inputs:
        untrusted &= ~torch.isnan(v)  # nan in, nan out: nothing to refine
    if not bool(untrusted.any()):
        return output, torch.zeros_like(untrusted), torch.zeros(untrusted.shape, dtype=torch.int8)
    columns = [v[untrusted].cpu() for v in inputs]
    replaced = output[untrusted].cpu().numpy()
    points = torch.stack(columns, dim=-1).numpy() if columns else np.zeros((1, 0))
    # Points settled in high precision before (a search's special values come back in every batch).
    if columns:
        memo = _precise.remembered(plan.exprs[i], plan.symbols, points)
        known, proven = memo.found[:, 0].copy(), memo.certified[:, 0].copy()
        replaced[known] = memo.values[known, 0]
    else:
        known, proven = np.zeros(1, bool), np.zeros(1, bool)
    # Then, all at once: values far outside float64's range round to 0 or to an infinity. The
    # points beyond it in float64 are tried, and, where there are many, all the others too
    # (e**-x x at 1e69 is 0.0 in float64, trusted by no bound, and certainly rounds to 0).
    outside = ~known
    if int(outside.sum()) < 4 * MAGNITUDE_POINTS:
        outside &= beyond.expand(untrusted.shape)[untrusted].cpu().numpy()
    if columns and int(outside.sum()) >= MAGNITUDE_POINTS:
        settled, value = _magnitude.settle(plan.exprs[i], plan.symbols, [c[torch.from_numpy(outside)] for c in columns])
        settled, value = settled.numpy(), value.numpy()
        where = np.flatnonzero(outside)[settled]
        replaced[where] = value[settled]
        known[where] = True
        proven[where] = True  # certainly beyond float64's range
    rest = ~known
    if rest.any():
        exact = _precise.exact_values([plan.exprs[i]], plan.symbols, points[rest], deadline=deadline)
        found = exact.found[:, 0]
        replaced[np.flatnonzero(rest)[found]] = exact.values[found, 0]
        known[np.flatnonzero(rest)[found]] = True
        proven[np.flatnonzero(rest)] = exact.certified[:, 0] & found
    if deadline is not None and time.monotonic() >= deadline and not bool(known.all()):
        raise OutOfTime(f"{int((~known).sum())} exact values were not computed before the deadline")
    output = output.clone()
    output[untrusted] = torch.from_numpy(replaced).to(output.device)
    lost = torch.zeros_like(untrusted)
    lost[untrusted] = torch.from_numpy(~known).to(lost.device)
    source = torch.zeros(untrusted.shape, dtype=torch.int8)
    # Where no value was found the IEEE value stays: not one float64 vouched for.
    source[untrusted.cpu()] = torch.from_numpy(np.where(known & proven, CERTIFIED, UNCERTIFIED).astype(np.int8))
    return output, lost, source
