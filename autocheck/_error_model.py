"""Stage 3: how far a floating-point value may legitimately be from the exact one.

One model of rounding error, in SymPy, used twice: the judgement asks how much error a
*correct* autograd may make (:func:`autograd_allowance`), and the oracle asks whether a
float64 evaluation of the exact derivative can be trusted (:func:`relative_bound`).

The model is a first-order running error analysis: inputs are exact, every operation
rounds its result once (one unit of roundoff of its magnitude, and at least the
:data:`UNDERFLOW` unit for results below the normal range), and passes on its operands'
errors weighted by its partial derivatives. A sum therefore carries the errors of its
terms, so cancellation (2x·eˣ + x²eˣ near x = -2) is judged against the terms; and
cos(1e5·x) carries the rounding of 1e5·x times |sin|.

What autograd computes is modelled on the traced graph, not on SymPy's simplified
derivative: the tracer can mark every operation's output as an opaque :class:`OpNode`,
so that differentiating gives the chain rule exactly as reverse mode evaluates it (local
derivatives as :class:`OpPartial` atoms, multiplied along paths and summed where paths
meet). SymPy would otherwise simplify ``1 - (1 - tanh(x)**2)`` to ``tanh(x)**2`` and hide
the cancellation that autograd really performs.

Backward formulas that reuse the forward's rounded output (torch computes sigmoid' as
y(1 - y) from y = sigmoid(x)) are modelled from :data:`OUTPUT_REUSE`: the local derivative
is that formula of the input and of the rounded output. Near y = 1 it loses every digit,
and any implementation that stores its output must: such results pass by default and are
reported with ``strict=True``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import sympy
from sympy.codegen import cfunctions

from . import _printer
from ._symbolic import finish
from ._trace import Detached, OpNode, OpPartial

__all__ = [
    "Allowance",
    "KERNEL_ERROR",
    "OUTPUT_REUSE",
    "PERTURBATION",
    "UNDERFLOW",
    "UNIT",
    "autograd_allowance",
    "formula_allowance",
    "inaccurate_kernels",
    "kernel_error",
    "relative_bound",
    "rounding",
]

#: The size, relative, of one unit of a bound: the unit roundoff for the oracle, the
#: tolerance's rtol for the judgement. Only where one error feeds a nonlinear function does
#: it appear: ``exp(z)`` with ``z`` off by ``d`` is off by up to ``|exp(z)| d e**d``, which the
#: first-order ``|exp(z)| d`` underestimates once ``d`` nears 1 (log_ndtr's backward at -1e9
#: computes ``exp(-(y + x**2/2))`` from a rounded y ~ -5e17: any value is possible).
UNIT = sympy.Symbol("unit_", positive=True)

#: Stands for the absolute error of one operation whose result underflows (a gradient
#: computed through subnormal or flushed-to-zero intermediates); the judgement substitutes
#: the dtype's smallest normal number, scaled to its tolerance.
UNDERFLOW = sympy.Symbol("underflow_", positive=True)
#: Weighs the terms that perturb a value rather than round it (an operation held to backward
#: stability: its operands, and a user Function's saved output, moved by a few units in the
#: last place) against the rounding terms; the judgement substitutes a few roundoffs over
#: its rtol, so that rtol's slack does not multiply them.
PERTURBATION = sympy.Symbol("perturbation_", positive=True)

#: torch's float64 special-function kernels that are less accurate than float64: the
#: measured worst error in units of roundoff, relative to max(1, |f|), times about ten
#: (torch 2.13, CPU). The oracle never trusts a float64 value through a kernel whose error
#: is larger than it needs; autograd is *not* given this slack, so a gradient that goes
#: through trigamma's kernel (digamma's backward, ~5e-10 relative) is reported.
KERNEL_ERROR: dict[type, float] = {
    sympy.polygamma: 5e7,
    sympy.gamma: 1e4,
    sympy.loggamma: 20,
    sympy.zeta: 100,
    sympy.erfinv: 10,
    sympy.erfcinv: 16,  # printed through ndtri: measured within 5.2 units of roundoff, relative
    sympy.besselj: 1e11,
    sympy.bessely: 1e11,
    sympy.besseli: 100,
    sympy.besselk: 100,
    sympy.LambertW: 100,
    _printer.Erfcx: 18,  # measured within 6 units of roundoff, relative
    _printer.ScaledBesselI: 52,  # i0e and i1e: measured within 5 and 13, relative (4x here)
}


#: Kernels whose error is relative to their own value, not to max(1, |value|): torch's
#: Bessel I0 and I1 (Chebyshev series times x or exp(x); measured at most 6 and 12 units of
#: roundoff relative, from 1e-18 to 700 in magnitude), erfcx, i0e and i1e, and erfcinv through
#: ndtri. Each was measured against arb at 7,000-10,000 points spread over the whole exponent
#: range; the weights below are about three times the worst error seen.
_RELATIVE_KERNELS = (sympy.besseli, _printer.Erfcx, _printer.ScaledBesselI, sympy.erfcinv)

#: Bessel functions torch has kernels for only at orders 0 and 1; the printer reaches the
#: others by recurrence, which is inaccurate upward for J and I.
_RECURRED = (sympy.besselj, sympy.besseli)


def kernel_error(f: sympy.Function) -> float:
    """The error of the torch kernel of one function call (see :data:`KERNEL_ERROR`)."""
    if isinstance(f, _RECURRED) and f.args[0] not in (0, 1):
        return math.inf
    return KERNEL_ERROR.get(type(f), 0.0)


def inaccurate_kernels(expr: sympy.Expr, accuracy: float) -> bool:
    """Whether ``expr`` calls a kernel whose error (relative, see :data:`KERNEL_ERROR`) exceeds ``accuracy``."""
    roundoff = 2.0**-53
    return any(kernel_error(f) * roundoff > accuracy for f in expr.atoms(*KERNEL_ERROR))


def _y(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)


_A, _Y = _y("a_"), _y("y_")

#: The local derivative torch's backward computes from an operation's input ``a`` and its
#: rounded output ``y`` (tools/autograd/derivatives.yaml, where it uses ``result``). Only
#: these formulas are given the output's rounding; every other operation's local
#: derivative is taken to be as accurate as its kernel.
OUTPUT_REUSE: dict[str, sympy.Expr] = {
    "exp": _Y,
    "exp2": _Y * sympy.log(2),
    "expm1": _Y + 1,
    "sigmoid": _Y * (1 - _Y),
    "tanh": 1 - _Y**2,
    "sqrt": 1 / (2 * _Y),
    "rsqrt": -(_Y**3) / 2,
    "reciprocal": -(_Y**2),
    "tan": 1 + _Y**2,
    "erfinv": sympy.sqrt(sympy.pi) / 2 * sympy.exp(_Y**2),
    "special_ndtri": sympy.sqrt(2 * sympy.pi) * sympy.exp(_Y**2 / 2),
    "special_log_ndtr": sympy.exp(-(_Y + _A**2 / 2)) / sympy.sqrt(2 * sympy.pi),
    "special_erfcx": 2 * _A * _Y - 2 / sympy.sqrt(sympy.pi),
    "special_i0e": sympy.besseli(1, _A) * sympy.exp(-sympy.Abs(_A)) - sympy.sign(_A) * _Y,
    "special_i1e": sympy.besseli(0, _A) * sympy.exp(-sympy.Abs(_A)) - _Y * (sympy.sign(_A) + 1 / _A),
    "special_i1": sympy.besseli(0, _A) - _Y / _A,
}


@functools.lru_cache(maxsize=None)
def _reuse_formula(op: str, order: int) -> sympy.Expr | None:
    """The ``order``-th local derivative as torch's backward computes it from (a, y).

    Higher orders differentiate the first along the curve y = f(a), as autograd's double
    backward differentiates the backward formula: d/da P(a, y) = ∂P/∂a + ∂P/∂y · y'.
    """
    first = OUTPUT_REUSE.get(op)
    if first is None or order < 1:
        return None
    formula = first
    for _ in range(order - 1):
        formula = sympy.diff(formula, _A) + sympy.diff(formula, _Y) * first
    return formula


# --------------------------------------------------------------------------------------
# The running error bound
# --------------------------------------------------------------------------------------


#: Functions that grow exponentially in their argument: an argument off by d moves them by up
#: to e**(rate d) - 1 <= rate d e**(rate d) relative, which the first order underestimates.
_GROWTH: dict[type, Any] = {sympy.exp: 1, sympy.sinh: 1, sympy.cosh: 1, cfunctions.exp2: sympy.log(2)}


def _abs(e: Any) -> Any:
    """|e| for real values: SymPy writes |exp(erfinv(x)**2)| with re() and im() when it
    cannot prove the argument real; here re(a) is a and im(a) is 0."""
    value = sympy.Abs(e)
    if value.has(sympy.re, sympy.im):
        value = value.replace(lambda a: isinstance(a, sympy.re), lambda a: a.args[0])
        value = value.replace(lambda a: isinstance(a, sympy.im), lambda a: sympy.Integer(0))
    return value


def _exact_number(e: sympy.Expr) -> bool:
    """A number that floating point holds exactly: an integer, or p/2**k with |p| <= 2**24
    (exact in every dtype checked, float16's range aside)."""
    return bool(e.is_Rational and (e.q & (e.q - 1)) == 0 and abs(e.p) <= 2**24)


def _is_condition(e: Any) -> bool:
    return isinstance(e, sympy.logic.boolalg.Boolean) and not isinstance(e, sympy.Expr)


def _partial(e: sympy.Basic, k: int) -> sympy.Expr:
    """∂e/∂(argument k), with the conventions of the derivatives (no DiracDelta)."""
    try:
        slope = e.fdiff(k + 1)
    except Exception:  # noqa: BLE001 - no derivative known: count the argument's error as is
        return sympy.Integer(1)
    if slope.has(sympy.Derivative, sympy.Subs):
        return sympy.Integer(1)
    return slope.replace(lambda d: isinstance(d, sympy.DiracDelta), lambda d: sympy.Integer(0))


class _Rounding:
    """One evaluation of the bound, with a cache of the subexpressions seen."""

    def __init__(self, kernels: bool, reuse: bool) -> None:
        self.kernels = kernels
        self.reuse = reuse
        self.cache: dict[Any, Any] = {}

    def __call__(self, e: Any) -> Any:
        if e not in self.cache:
            self.cache[e] = self._error(e)
        return self.cache[e]

    def _error(self, e: Any) -> Any:
        error = self
        if _is_condition(e) or isinstance(e, sympy.Symbol):
            return sympy.Integer(0)
        if e.is_Number or e.is_NumberSymbol:
            return sympy.Integer(0) if _exact_number(e) else _abs(e)
        if isinstance(e, Detached):
            return error(e.args[0])
        if isinstance(e, sympy.Piecewise):
            return sympy.Piecewise(*[(error(value), condition) for value, condition in e.args])
        if isinstance(e, (sympy.Max, sympy.Min)):
            # The selection is exact, and moves the result by at most the largest error of an
            # argument; where two arguments are apart by more than their errors, by the chosen
            # one's only (Min(6, x + 3) at x = 1e160 is 6, whatever x + 3's rounding).
            errors = [error(a) for a in e.args]
            if len(e.args) != 2:
                return sympy.Max(*errors) if len(errors) > 1 else errors[0]
            (a, b), (ea, eb) = e.args, errors
            gap = (b - a) if isinstance(e, sympy.Min) else (a - b)  # > 0 where a is chosen
            margin = UNIT * (ea + eb)
            first, second = sympy.Heaviside(gap - margin, 0), sympy.Heaviside(-gap - margin, 0)
            return ea * first + eb * second + sympy.Max(ea, eb) * (1 - first - second)
        if e.is_Add:
            # Each partial sum rounds: the last is the result; an earlier one may be larger than
            # the result (log(x) + 1 - x near 1), and is at most the sum of the terms' sizes.
            partial = max(len(e.args) - 2, 0) * sympy.Add(*map(_abs, e.args))
            return sympy.Add(*map(error, e.args)) + _abs(e) + partial + UNDERFLOW
        if e.is_Mul:
            factors = e.args
            terms = []
            for i, a in enumerate(factors):
                rest = sympy.Mul(*[_abs(b) for j, b in enumerate(factors) if j != i])
                # A factor (or a partial product holding it) that underflows loses up to one
                # underflow unit, which the remaining factors then scale up.
                terms.append((error(a) + UNDERFLOW) * rest)
            rounded = sum(1 for a in factors if not _exact_number(a))
            return sympy.Add(*terms) + max(rounded - 1, 0) * _abs(e)
        if e.is_Pow:
            base, exponent = e.args
            result = _abs(e) + UNDERFLOW
            if base.free_symbols or not _exact_number(base):
                result += _abs(exponent * base ** (exponent - 1)) * error(base)
            if exponent.free_symbols:
                rate = _abs(sympy.log(_abs(base)))  # b**y with y off by d: off by b**y (e**(d |log b|) - 1)
                spread = error(exponent)
                result += rate * spread * sympy.exp(exponent * sympy.log(_abs(base)) + rate * UNIT * spread)
            return result
        if isinstance(e, OpPartial) and self.reuse and not e.node.custom:
            formula = _reuse_formula(e.node.op, len(e.wrt))
            if formula is not None and len(e.args) == 1:
                # torch's backward formula, evaluated from the (rounded) saved output.
                output = e.node(*e.args)
                return error(formula.xreplace({_A: e.args[0], _Y: output}))
        if isinstance(e, (OpNode, OpPartial)):
            return self._op(e)
        if isinstance(e, sympy.Function) and e.args:
            result = _abs(e) + UNDERFLOW
            if self.kernels and type(e) in KERNEL_ERROR:
                weight = kernel_error(e)
                scale = _abs(e) if isinstance(e, _RELATIVE_KERNELS) else _abs(e) + 1
                if isinstance(e, _printer.Erfcx):
                    # torch's erfcx below 0 is 2 exp(z**2) - erfcx(-z): the rounded z**2 costs z**2 units.
                    scale = scale * (1 + sympy.Max(0, -e.args[0]) ** 2)
                result += weight * scale if math.isfinite(weight) else sympy.oo
            for k, argument in enumerate(e.args):
                if argument.free_symbols and not _is_condition(argument):
                    spread = error(argument)
                    rate = _GROWTH.get(type(e))
                    if rate is None:
                        result += _abs(_partial(e, k)) * spread
                    else:
                        # |f'(z)| e**(rate d) <= rate e**(rate (z + d)) (|z| for sinh, cosh): one
                        # exponential, so that a value that underflows (exp(-1e44)) gives 0, not 0 * inf.
                        z = _abs(argument) if isinstance(e, (sympy.sinh, sympy.cosh)) else argument
                        if argument.has(OpNode, OpPartial):
                            # Apart, so that exp(z) can be evaluated as an atom of its own (log_ndtr's
                            # exp(-(y + x**2/2)) from the rounded y: see _cancels_inside).
                            result += rate * spread * sympy.exp(rate * z) * sympy.exp(rate * UNIT * spread)
                        else:
                            result += rate * spread * sympy.exp(rate * (z + UNIT * spread))
            return result
        return _abs(e)

    def _op(self, e: Any) -> Any:
        """One operation's value or local derivative, computed by its kernel (or, for a user's
        ``autograd.Function``, by formulas autocheck does not see).

        It rounds once and carries its operands' errors. By default (not ``strict``) it is
        also held only to backward stability: its value at operands perturbed by a few units
        in the last place (the derivative of silu has a root near -1.28, where torch's kernel
        for it cancels as any must); and a user's Function, whose backward may compute from
        its saved output by any formula, at that output perturbed (the derivative of the
        local derivative along the output, whatever the formula).
        """
        node = e.node if isinstance(e, OpPartial) else type(e)
        perturbed = self.reuse
        result = _abs(e) + UNDERFLOW
        for k, argument in enumerate(e.args):
            if argument.free_symbols:
                # The kernel may underflow in an intermediate of its operand (grad * x / y with
                # grad * x subnormal): an absolute error of one underflow unit there.
                own = PERTURBATION * _abs(argument) + UNDERFLOW if perturbed else 0
                result += _abs(_partial(e, k)) * (self(argument) + own)
        if node.custom and isinstance(e, OpPartial) and perturbed and len(e.args) == 1:
            value = node(*e.args)
            result += PERTURBATION * _abs(value * e.fdiff(1) / value.fdiff(1))
        return result


@functools.lru_cache(maxsize=512)
def rounding(expr: sympy.Expr, *, kernels: bool = False, reuse: bool = True) -> sympy.Expr:
    """A bound on the rounding error of evaluating ``expr`` in floating point.

    The result is a SymPy expression in the same units as ``expr`` (multiply by the unit
    roundoff for an absolute error), in the input symbols and :data:`UNDERFLOW`.
    ``kernels`` adds the errors of torch's inaccurate special-function kernels
    (:data:`KERNEL_ERROR`); ``reuse`` evaluates local derivatives that torch computes
    from the saved output with that formula (:data:`OUTPUT_REUSE`).

    >>> x = sympy.Symbol("x", real=True)
    >>> rounding(x * x + 1).subs(UNDERFLOW, 0)
    2*x**2 + 1
    """
    return _Rounding(kernels, reuse)(sympy.sympify(expr))


def expand_ops(expr: sympy.Expr) -> sympy.Expr:
    """Replace every :class:`OpNode` and :class:`OpPartial` by its explicit formula, with
    the derivatives' conventions (a step's derivative and DiracDelta are 0)."""
    while expr.has(OpNode, OpPartial):
        expr = expr.replace(lambda e: isinstance(e, (OpNode, OpPartial)), lambda e: e.expansion())
    return finish(expr)


@dataclass(frozen=True)
class Allowance:
    """The error model's bound for one derivative, ready to evaluate.

    ``bound`` is in the input symbols, :data:`UNDERFLOW` and one placeholder per op atom;
    ``atoms`` gives each placeholder's explicit formula (an operation's value or a local
    derivative). The atoms are evaluated accurately first (the oracle's job: sinc's local
    derivative ``cos(πx)/x - sin(πx)/(πx²)`` cancels to nothing in float64 at tiny x, and
    would inflate the bound there), then ``bound`` in float64: it only adds magnitudes.
    """

    bound: sympy.Expr
    atoms: tuple[tuple[sympy.Symbol, sympy.Expr], ...] = ()


#: The upstream gradient, a rounded factor of every contribution autograd sums.
_UPSTREAM = sympy.Symbol("upstream_", positive=True)


def autograd_allowance(marked: sympy.Expr, *, strict: bool = False) -> Allowance:
    """How much rounding error a correct autograd may put into ``marked``, a derivative
    taken of a trace whose operations are :class:`OpNode` atoms.

    By default a local derivative that torch computes from the saved output carries that
    output's rounding (:data:`OUTPUT_REUSE`); ``strict`` holds every local derivative to
    its kernel's accuracy. The units are those of :func:`rounding`.
    """
    if sympy.count_ops(marked, visual=False) > MAX_MODELLED_OPS:
        return magnitude_allowance(expand_ops(marked))
    # Autograd sums the contributions of an input's uses, each the upstream gradient times
    # local derivatives: each is rounded once more (3*v + 2*x*v for x*3 + x**2 near x = -1.5).
    terms = marked.args if isinstance(marked, sympy.Add) else (marked,)
    bound = rounding(sympy.Add(*[_UPSTREAM * t for t in terms]), reuse=not strict).subs(_UPSTREAM, 1)
    placeholders: dict[sympy.Basic, sympy.Symbol] = {}

    def separate(e: sympy.Basic) -> sympy.Basic:
        if isinstance(e, (OpNode, OpPartial)) or _cancels_inside(e):
            if e not in placeholders:
                placeholders[e] = sympy.Dummy(f"atom{len(placeholders)}", real=True)
            return placeholders[e]
        if not e.args:
            return e
        args = [separate(a) for a in e.args]
        return e.func(*args) if any(new is not old for new, old in zip(args, e.args)) else e

    combined = separate(bound)
    return Allowance(combined, tuple((symbol, expand_ops(atom)) for atom, symbol in placeholders.items()))


def _cancels_inside(e: sympy.Basic) -> bool:
    """A function of a sum that holds an operation's value: ``exp(-(y + x**2/2))`` in
    log_ndtr's backward, where y = log_ndtr(x) ~ -x**2/2. Evaluated from the rounded y the sum
    cancels to nothing; it is an atom of its own, which the oracle evaluates accurately.
    (A magnitude ``|y + x**2/2|`` stays: the bound only adds it, and float64's error in it is
    of the order of the terms the bound adds anyway.)"""
    return (isinstance(e, sympy.Function) and not isinstance(e, (OpNode, OpPartial, sympy.Abs))
            and any(isinstance(a, sympy.Add) and a.has(OpNode) for a in e.args)
            and not e.has(UNIT, UNDERFLOW, PERTURBATION))  # a growth factor of the bound itself


def formula_allowance(expr: sympy.Expr) -> Allowance:
    """The rounding of the exact formula itself, where autograd's structure is unknown (a
    reference given for a function autocheck cannot trace)."""
    if sympy.count_ops(expr, visual=False) > MAX_MODELLED_OPS:
        return magnitude_allowance(expr)
    return Allowance(rounding(expr))


#: Derivatives with more operations than this get the cruder :func:`magnitude_allowance`:
#: the running bound of one grows about quadratically with its size (a product of 40
#: factors at order 2 gives a bound too deep for Python to compile).
MAX_MODELLED_OPS = 2000


def magnitude_allowance(expr: sympy.Expr) -> Allowance:
    """A bound for a large derivative: its operation count times its value with every sum
    replaced by the sum of its terms' magnitudes (each operation's rounding and every
    cancellation accounted for, first-order, without following them one by one)."""
    ops = sympy.count_ops(expr, visual=False)

    def magnitudes(e: sympy.Basic) -> sympy.Basic:
        if not e.args or _is_condition(e):
            return e
        args = [magnitudes(a) for a in e.args]
        if e.is_Add:
            return sympy.Add(*[_abs(a) for a in args])
        return e.func(*args)

    return Allowance((ops + 1) * (_abs(magnitudes(expr)) + UNDERFLOW))


_ROUNDOFF = sympy.Float(2.0**-53)


@functools.lru_cache(maxsize=512)
def relative_bound(expr: sympy.Expr) -> sympy.Expr:
    """The error bound of a float64 evaluation of ``expr``, kernels included, relative to |expr|.

    The oracle trusts a float64 value where this, times the unit roundoff, is within the
    accuracy it needs.
    """
    return expand_ops(rounding(expr, kernels=True)).subs(UNIT, _ROUNDOFF) / _abs(expr)
