"""Stage 5: judge autograd's values against the exact ones.

The tolerance is decided here, and only here.

An element passes when::

    |autograd - exact| <= atol + rtol * max(|exact|, scale)

where ``scale`` is the size of the computation rather than of its result: the sum of the
magnitudes of the derivative's terms (so that 2x·eˣ + x²eˣ near x = -2, where the terms
cancel, is judged against the terms), plus how much the derivative moves when each input
moves by its own size (so that sin(1e5·x), whose argument carries a rounding error of
1e5·|x|·eps, is judged against what its own rounding allows). Without an explicit
``rtol``/``atol`` they come from :data:`DEFAULT_TOLERANCES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch



class Tolerance(NamedTuple):
    rtol: float
    atol: float


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


#: Default (rtol, atol) per dtype. rtol is a small multiple of the dtype's machine epsilon
#: and applies to the size of the computation (see the module docstring), so it can be far
#: tighter than finite-difference checkers can afford: a 1e-4 relative error in float64, or
#: a float32 gradient computed through float16, fails. atol is the smallest normal number:
#: below it, gradients legitimately underflow.
#:
#: ========  ==================  ===========
#: dtype     rtol                atol
#: ========  ==================  ===========
#: float64   256 eps = 5.7e-14   2.2e-308
#: float32   128 eps = 1.5e-5    1.2e-38
#: float16   8 eps = 7.8e-3      6.1e-5
#: bfloat16  8 eps = 6.3e-2      1.2e-38
#: ========  ==================  ===========
DEFAULT_TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(256 * _eps(torch.float64), torch.finfo(torch.float64).tiny),
    torch.float32: Tolerance(128 * _eps(torch.float32), torch.finfo(torch.float32).tiny),
    torch.float16: Tolerance(8 * _eps(torch.float16), torch.finfo(torch.float16).tiny),
    torch.bfloat16: Tolerance(8 * _eps(torch.bfloat16), torch.finfo(torch.bfloat16).tiny),
}


def tolerance_for(dtype: torch.dtype, rtol: float | None, atol: float | None) -> Tolerance:
    """The tolerance to use: both given, or both from the table."""
    if (rtol is None) != (atol is None):
        given, missing = ("rtol", "atol") if atol is None else ("atol", "rtol")
        value = rtol if atol is None else atol
        raise ValueError(
            f"{given}={value!r} was given without {missing}; give both (e.g. rtol=1e-6, atol=1e-9), "
            f"or neither to use the defaults for {dtype}"
        )
    if rtol is None:
        return DEFAULT_TOLERANCES[dtype]
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a non-negative number, got {name}={value!r}")
    return Tolerance(float(rtol), float(atol))


@dataclass
class Judgement:
    """Per-element verdict. All tensors are flat float64 (or bool) of one length."""

    passed: torch.Tensor  # bool: within tolerance, or accepted at a kink
    kink: torch.Tensor  # bool: outside tolerance but accepted as a one-sided derivative at a kink
    skipped: torch.Tensor  # bool: not judged (forward or exact value not finite)
    abs_error: torch.Tensor
    rel_error: torch.Tensor
    ulp_error: torch.Tensor
    allowed: torch.Tensor


_DIGITS = {torch.float64: 53, torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` floats at each of ``values`` (float64 in, float64 out)."""
    info = torch.finfo(dtype)
    _, exponent = torch.frexp(values.abs().clamp_min(info.tiny).nan_to_num(posinf=info.max))
    return torch.ldexp(torch.ones_like(values, dtype=torch.float64), exponent - _DIGITS[dtype])


def judge(
    autograd: torch.Tensor,
    exact: torch.Tensor,
    scale: torch.Tensor,
    skip: torch.Tensor,
    dtype: torch.dtype,
    tol: Tolerance,
) -> Judgement:
    """Compare flat autograd values (any dtype) with exact float64 values.

    ``scale`` is the size of the computation (see the module docstring); ``skip`` marks
    elements not to judge (forward value not finite).
    """
    a = autograd.to(torch.float64)
    e = exact
    info = torch.finfo(dtype)
    exact_finite = torch.isfinite(e)
    skipped = skip | ~exact_finite
    # An exact value beyond the dtype's range rounds to inf: then inf is the right answer.
    overflows = e.abs() > info.max
    diff = (a - e).abs()
    # A bound that overflows float64 means the computation is that ill-conditioned
    # (sin(1e5 * x) at x = 1e300): then any finite value is as good as another.
    allowed = tol.atol + tol.rtol * torch.maximum(e.abs(), scale.nan_to_num(nan=0.0, posinf=info.max))
    within = (diff <= allowed) & torch.isfinite(a)
    within |= overflows & (a == torch.sign(e) * torch.inf)
    passed = within | skipped
    rel = torch.where(e != 0, diff / e.abs(), torch.where(diff == 0, 0.0, torch.inf)).nan_to_num(nan=torch.inf, posinf=torch.inf)
    return Judgement(
        passed=passed,
        kink=torch.zeros_like(passed),
        skipped=skipped,
        abs_error=torch.where(skipped, 0.0, diff.nan_to_num(nan=torch.inf, posinf=torch.inf)),
        rel_error=torch.where(skipped, 0.0, rel),
        ulp_error=torch.where(skipped, 0.0, (diff / ulp(e, dtype)).nan_to_num(nan=torch.inf, posinf=torch.inf)),
        allowed=allowed,
    )


def between(value: torch.Tensor, bounds: list[torch.Tensor], allowed: torch.Tensor) -> torch.Tensor:
    """Elements of ``value`` that lie between the smallest and largest of ``bounds``.

    At a kink (relu, abs, clamp at its bound, max at a tie) the derivative jumps, and any
    value between the one-sided derivatives is a valid choice: torch documents its own.
    """
    stacked = torch.stack(bounds)
    low = stacked.nan_to_num(nan=torch.inf).amin(0) - allowed
    high = stacked.nan_to_num(nan=-torch.inf).amax(0) + allowed
    v = value.to(torch.float64)
    return (v >= low) & (v <= high)


#: :func:`underflow_symbol` stands for the absolute error of one operation whose result underflows (a gradient
#: computed through subnormal or flushed-to-zero intermediates), in units of rtol; the
#: check substitutes ``smallest normal / rtol`` of the dtype.
def underflow_symbol() -> Any:
    import sympy

    return sympy.Symbol("underflow_", positive=True)


def rounding_abs(e: Any) -> Any:
    """|e| for real values: SymPy writes |exp(erfinv(x)**2)| with re() and im() when it
    cannot prove the argument real; here re(a) is a and im(a) is 0."""
    import sympy

    value = sympy.Abs(e)
    if value.has(sympy.re, sympy.im):
        value = value.replace(lambda a: isinstance(a, sympy.re), lambda a: a.args[0])
        value = value.replace(lambda a: isinstance(a, sympy.im), lambda a: sympy.Integer(0))
    return value


def torch_printable_orders(expr: Any) -> bool:
    """Whether the Bessel functions in ``expr`` have the orders torch has (0 and 1)."""
    import sympy

    return all(b.args[0] in (0, 1) for b in expr.atoms(sympy.besseli, sympy.besselj, sympy.bessely, sympy.besselk))


def rounding_scale(expr: Any) -> Any:
    """A SymPy expression for the rounding error of evaluating ``expr`` in floating point,
    in units of the unit roundoff (a first-order running error bound).

    Inputs are exact; every operation rounds its result (one unit of its magnitude, and at
    least the :func:`underflow_symbol`, for results below the normal range) and
    passes on its operands' errors weighted by its partial derivatives: a sum carries the
    errors of its terms (so cancellation near a root is judged against the terms, not the
    tiny result), and cos(1e5·x) carries the rounding of 1e5·x times |sin|.
    """
    import sympy

    floor = underflow_symbol()

    abs_ = rounding_abs
    cache: dict[Any, Any] = {}

    def error(e: Any) -> Any:
        if e in cache:
            return cache[e]
        if e.is_Symbol or e.is_Integer or isinstance(e, (sympy.logic.boolalg.Boolean,)) and not isinstance(e, sympy.Expr):
            result = sympy.Integer(0)
        elif e.is_Number or e.is_NumberSymbol:
            result = abs_(e)
        elif isinstance(e, sympy.Piecewise):
            result = sympy.Piecewise(*[(error(value), condition) for value, condition in e.args])
        elif e.is_Add:
            result = sympy.Add(*[error(a) for a in e.args]) + abs_(e) + floor
        elif e.is_Mul:
            factors = e.args
            terms = []
            for i, a in enumerate(factors):
                rest = sympy.Mul(*[abs_(b) for j, b in enumerate(factors) if j != i])
                # A factor (or a partial product holding it) that underflows loses up to one
                # floor unit, which the remaining factors then scale up.
                terms.append((error(a) + floor) * rest)
            result = sympy.Add(*terms) + (len(factors) - 1) * abs_(e)
        elif e.is_Pow:
            base, exponent = e.args
            result = abs_(e) + floor
            if base.free_symbols:
                result += abs_(exponent * base ** (exponent - 1)) * error(base)
            if exponent.free_symbols:
                result += abs_(e * sympy.log(abs_(base))) * error(exponent)
        elif isinstance(e, sympy.Function) and e.args:
            result = abs_(e) + floor
            for k, argument in enumerate(e.args, start=1):
                if not argument.free_symbols:
                    continue
                try:
                    partial = e.fdiff(k)
                except Exception:  # noqa: BLE001 - no derivative known: count the argument's error as is
                    partial = sympy.Integer(1)
                if partial.has(sympy.Derivative, sympy.Subs) or not torch_printable_orders(partial):
                    partial = sympy.Integer(1)
                partial = partial.replace(lambda d: isinstance(d, sympy.DiracDelta), lambda d: sympy.Integer(0))
                result += abs_(partial) * error(argument)
        else:
            result = abs_(e)
        cache[e] = result
        return result

    return error(sympy.sympify(expr))
