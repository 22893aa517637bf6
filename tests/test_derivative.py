"""autocheck.derivative against derivatives worked out by hand.

Each row of ``TABLE`` is ``(id, f, inputs, expected, points, exact)``: a torch function, the
example tensors it is traced with (none for a scalar trace), its derivative derived by hand
as SymPy (a tuple per input, a ``sympy.Array`` per tensor input), the points to compare at,
and whether ``derivative(f)`` must equal ``expected`` symbol for symbol. Every row is also
compared numerically: both sides are evaluated with mpmath at 50 digits and must agree to
1e-30 relative, or both be zero.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F
from sympy import Abs, Array, Heaviside, Max, Piecewise, Rational, besseli, besselj, cos, erf, erfc, erfinv, exp, floor
from sympy import log, pi, polygamma, sign, sin, sqrt, tan, tanh

import autocheck

x, y, z, w, b = sympy.symbols("x y z w b", real=True)
DIGITS = 50
RTOL = sympy.Float("1e-30", DIGITS)
TINY = sympy.Float("1e-40", DIGITS)  # both sides below this count as zero


def q(value: str | float) -> sympy.Rational:
    """A point coordinate as the exact rational it spells."""
    return Rational(str(value))


def sig(v):
    return 1 / (1 + exp(-v))


def entries(name: str, values) -> dict[sympy.Symbol, sympy.Expr]:
    """Symbols of one input, as autocheck names them (``x`` or ``x[0, 1]``), bound to values."""
    arr = np.array(values, dtype=object)
    if arr.ndim == 0:
        return {sympy.Symbol(name, real=True): q(arr.item())}
    return {
        sympy.Symbol(f"{name}[{', '.join(map(str, index))}]", real=True): q(arr[index]) for index in np.ndindex(arr.shape)
    }


def leaves(value) -> list[sympy.Expr]:
    if isinstance(value, tuple):
        return [e for v in value for e in leaves(v)]
    if isinstance(value, sympy.NDimArray):
        return list(np.array(value.tolist(), dtype=object).reshape(-1)) if value.rank() else [value[()]]
    return [sympy.sympify(value)]


def structure(value):
    if isinstance(value, tuple):
        return tuple(structure(v) for v in value)
    if isinstance(value, sympy.NDimArray):
        return ("array", tuple(value.shape))
    return "expr"


def assert_agree(got, want, point: dict) -> None:
    subs = {}
    for name, values in point.items():
        subs.update(entries(name, values))
    assert len(leaves(got)) == len(leaves(want))
    for k, (g, e) in enumerate(zip(leaves(got), leaves(want))):
        gv, ev = sympy.N(g.subs(subs), DIGITS), sympy.N(e.subs(subs), DIGITS)
        assert gv.is_number and gv.is_finite and gv.is_real, f"leaf {k}: derivative gives {gv} at {point}: {g}"
        assert ev.is_number and ev.is_finite and ev.is_real, f"leaf {k}: the hand derivative gives {ev} at {point}"
        if abs(gv) < TINY and abs(ev) < TINY:
            continue
        assert abs(gv - ev) <= RTOL * max(abs(gv), abs(ev)), f"leaf {k} at {point}: got {gv}, want {ev}\n{g}"


# ---- closures the table uses ----------------------------------------------------------

W23 = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -3.0]], dtype=torch.float64)
A22 = torch.tensor([[2.0, -1.0], [0.5, 3.0]], dtype=torch.float64)
M23 = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 0.5, 6.0]], dtype=torch.float64)
C = torch.tensor(2.5, dtype=torch.float64)

linear = torch.nn.Linear(2, 1).double()
with torch.no_grad():
    linear.weight.copy_(torch.tensor([[0.5, -1.5]]))
    linear.bias.fill_(0.25)

# The autograd tutorial's linear regression: data, and the parameters' shapes.
X_DATA = torch.tensor([[0.5], [1.5], [2.0]], dtype=torch.float64)
Y_DATA = torch.tensor([[2.0], [4.5], [5.0]], dtype=torch.float64)
W0 = torch.tensor([[0.25]], dtype=torch.float64)
B0 = torch.tensor([[0.0]], dtype=torch.float64)


def regression_loss(w, b):
    return 0.5 * ((X_DATA.mm(w) + b.expand_as(Y_DATA) - Y_DATA) ** 2).sum()


class Cube(torch.autograd.Function):
    """ctx style: forward takes ctx."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return v**3

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return 3 * v**2 * grad


class Square(torch.autograd.Function):
    """setup_context style: forward without ctx."""

    @staticmethod
    def forward(v):
        return v * v

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return 2 * v * grad


def in_place_scalar(x):
    y = x.clone()
    y.mul_(3)
    y.add_(x**2)
    return y


def in_place_vector(x):
    y = x.clone()
    y.mul_(2)
    y[0] = x[1] ** 2
    y[1:] *= x[0]
    return y.sum()


def x3(*values):
    return torch.tensor(values, dtype=torch.float64)


V3 = x3(0.0, 0.0, 0.0)
M = torch.zeros(2, 3, dtype=torch.float64)
P3 = [{"x": [0.1, -0.4, 1.3]}, {"x": [2.0, 0.5, -1.75]}]


def xs(*values):
    return [{"x": v} for v in values]


def xys(*pairs):
    return [{"x": a, "y": c} for a, c in pairs]


def softmax_row(i, vals):
    s = [exp(v) / sum(exp(u) for u in vals) for v in vals]
    return Array([(s[i] if j == i else 0) - s[i] * s[j] for j in range(len(vals))])


S3 = [sympy.Symbol(f"x[{i}]", real=True) for i in range(3)]
S23 = [[sympy.Symbol(f"x[{i}, {j}]", real=True) for j in range(3)] for i in range(2)]
Y3 = [sympy.Symbol(f"y[{i}]", real=True) for i in range(3)]
X2 = [sympy.Symbol(f"x[{i}]", real=True) for i in range(2)]
SELU_ALPHA, SELU_SCALE = q("1.6732632423543772"), q("1.0507009873554805")
GELU_K = sqrt(2 / pi)
GELU_U = GELU_K * (x + Rational(44715, 10**6) * x**3)


def inside(lo, hi):
    """1 strictly between lo and hi, else 0: the derivative of a clamp."""
    return Piecewise((1, (x > lo) & (x < hi)), (0, True))


SUM_EXP = sum(exp(u) for u in S3)
MEAN3 = sum(S3) / 3
V2 = torch.zeros(2, dtype=torch.float64)
V12 = torch.zeros(1, 2, dtype=torch.float64)
P23 = [{"x": [[1, 2, 3], [4, 5, 6]]}]
P2 = [{"x": [1, -2]}]
W23_EXACT = [[q(v) for v in row] for row in W23.tolist()]


def matmul_square_grad():
    """d/dx_i of sum_j (x @ W)_j**2 = sum_j 2 (x @ W)_j W_ij."""
    out = [X2[0] * W23_EXACT[0][j] + X2[1] * W23_EXACT[1][j] for j in range(3)]
    return Array([sum(2 * out[j] * W23_EXACT[i][j] for j in range(3)) for i in range(2)])


def norm3_grad(vals):
    total = sum(Abs(v) ** 3 for v in vals)
    return Array([v * Abs(v) / total ** Rational(2, 3) for v in vals])


def cumsum_square_grad(vals):
    partial = [sum(vals[: k + 1]) for k in range(len(vals))]
    return Array([2 * sum(partial[i:]) for i in range(len(vals))])


# ---- the table ------------------------------------------------------------------------

TABLE = [
    # The autograd tutorial (chapter 2.3 and 3.1).
    ("tutorial_x2_exp", lambda x: x * x * torch.exp(x), (), x**2 * exp(x) + 2 * x * exp(x), xs(-2.5, -0.3, 0.7, 3.1), True),
    ("tutorial_w_x_plus_b", lambda w, x, b: w * x + b, (), (x, w, 1), [{"w": 0.3, "x": -1.2, "b": 4}], True),
    # Two-input functions and builtins called bare (symbols x, y in the builtin's order).
    ("atan2_lambda", lambda y, x: torch.atan2(y, x), (), (x / (x**2 + y**2), -y / (x**2 + y**2)), xys((1.5, -0.5), (-2, 0.25)), True),
    ("atan2_bare", torch.atan2, (), (y / (x**2 + y**2), -x / (x**2 + y**2)), xys((1.5, -0.5), (-2, 0.25)), True),
    ("hypot_bare", torch.hypot, (), (x / sqrt(x**2 + y**2), y / sqrt(x**2 + y**2)), xys((3, 4), (-0.5, 1.25)), True),
    # A tie gives 1/2 to each side, as torch's maximum does.
    ("maximum_bare", torch.maximum, (), (Heaviside(x - y), Heaviside(y - x)), xys((1, 2), (3, -1), (0.5, 0.5)), True),
    ("xlogy_bare", torch.special.xlogy, (), (log(y), x / y), xys((0.5, 2), (-3, 0.25)), False),
    ("xlog1py_bare", torch.special.xlog1py, (), (log(1 + y), x / (1 + y)), xys((0.5, 2), (-3, -0.25)), False),
    ("logaddexp_bare", torch.logaddexp, (), (exp(x) / (exp(x) + exp(y)), exp(y) / (exp(x) + exp(y))), xys((0.5, 2), (-30, 1)), True),
    ("addcmul_bare_3", torch.addcmul, (), (1, z, y), [{"x": 1, "y": 2, "z": 3}], True),
    ("lerp_weight", lambda x, y: torch.lerp(x, y, 0.3), (), (Rational(7, 10), Rational(3, 10)), xys((1, 2)), True),
    ("pow_tensor_tensor", lambda x, y: x**y, (), (y * x ** (y - 1), x**y * log(x)), xys((1.5, 2.5), (0.25, -1)), False),
    # Operators, torch functions and Tensor methods.
    ("methods_exp_pow", lambda x: x.exp() * x.pow(3), (), 3 * x**2 * exp(x) + x**3 * exp(x), xs(-1.5, 0.25, 2), True),
    ("quotient", lambda x: (x**3 - 2 * x) / (1 + x**2), (),
     ((3 * x**2 - 2) * (1 + x**2) - (x**3 - 2 * x) * 2 * x) / (1 + x**2) ** 2, xs(-2, 0.5, 3), False),
    ("sin_cos", lambda x: torch.sin(x) * torch.cos(2 * x), (), cos(x) * cos(2 * x) - 2 * sin(x) * sin(2 * x), xs(-1, 0.3, 2.2), False),
    ("tan_squared", lambda x: torch.tan(x) ** 2, (), 2 * tan(x) * (1 + tan(x) ** 2), xs(-1.2, 0.4), False),
    ("log_sqrt", lambda x: torch.log(1 + torch.sqrt(x)), (), 1 / (2 * sqrt(x) * (1 + sqrt(x))), xs(0.01, 0.5, 7), False),
    ("exp2_log2_log10", lambda x: torch.exp2(x) * torch.log2(x) + torch.log10(x), (),
     2**x * log(x) + 2**x / (x * log(2)) + 1 / (x * log(10)), xs(0.3, 2.5), False),
    ("log1p_expm1", lambda x: torch.log1p(x**2) + torch.expm1(-x), (), 2 * x / (1 + x**2) - exp(-x), xs(-1, 1e-8, 4), False),
    ("rsqrt_reciprocal_square", lambda x: torch.rsqrt(x) + torch.reciprocal(x) + torch.square(x), (),
     -1 / (2 * x * sqrt(x)) - 1 / x**2 + 2 * x, xs(0.2, 3), False),
    ("tanh_cosh_is_sinh", lambda x: torch.tanh(x) * torch.cosh(x), (), sympy.cosh(x), xs(-2, 0.1, 1.7), False),
    ("asin_acos_atan", lambda x: torch.asin(x) + torch.acos(x) + torch.atan(x), (), 1 / (1 + x**2), xs(-0.9, 0, 0.6), False),
    ("asinh_acosh_atanh", lambda x: torch.asinh(x) + torch.acosh(x + 2) + torch.atanh(x / 4), (),
     1 / sqrt(1 + x**2) + 1 / sqrt((x + 2) ** 2 - 1) + Rational(1, 4) / (1 - x**2 / 16), xs(-0.5, 1.5), False),
    ("sigmoid", torch.sigmoid, (), sig(x) * (1 - sig(x)), xs(-4, 0, 2.5), False),
    ("erf_minus_erfc", lambda x: torch.erf(x) - torch.erfc(x), (), 4 / sqrt(pi) * exp(-(x**2)), xs(-1, 0.5, 3), False),
    ("erfinv", torch.erfinv, (), sqrt(pi) / 2 * exp(erfinv(x) ** 2), xs(-0.9, 0.1, 0.99), False),
    ("lgamma_digamma", lambda x: torch.lgamma(x) + torch.digamma(x), (), polygamma(0, x) + polygamma(1, x), xs(0.37, 1.9, 12.5), False),
    ("polygamma_1", lambda x: torch.polygamma(1, x), (), polygamma(2, x), xs(0.5, 3), True),
    ("abs_cubed_plus_x_sign", lambda x: torch.abs(x) ** 3 + x * torch.sign(x), (), 3 * x**2 * sign(x) + sign(x), xs(-1.5, 0.75), False),
    ("relu_squared", lambda x: F.relu(x) ** 2, (), 2 * Max(x, 0), xs(-1, 0.5), False),
    ("floor_ceil_steps", lambda x: x * (torch.floor(x) + torch.ceil(x)), (), floor(x) + sympy.ceiling(x), xs(-1.5, 0.25, 2.75), False),
    ("round_decimals", lambda x: x * torch.round(x, decimals=1), (), floor(10 * x + Rational(1, 2)) / 10, xs(0.37, -0.61), False),
    ("frac_trunc", lambda x: x * torch.frac(x), (), 2 * x - sign(x) * floor(Abs(x)), xs(-2.5, 0.75, 3.25), False),
    ("remainder", lambda x: x * torch.remainder(x, 0.75), (), 2 * x - Rational(3, 4) * floor(4 * x / 3), xs(-1, 0.5, 2), False),
    ("div_floor", lambda x: x * torch.div(x, 0.5, rounding_mode="floor"), (), floor(2 * x), xs(-0.3, 1.2), True),
    ("copysign", lambda x: torch.copysign(x**2, torch.tensor(-1.0)), (), -2 * x, xs(-1, 2), True),
    ("deg2rad", lambda x: torch.sin(torch.deg2rad(x)), (), pi / 180 * cos(pi * x / 180), xs(30, -145), False),
    ("float_power", lambda x: torch.square(x) * torch.float_power(x, 1.5), (), Rational(7, 2) * x ** Rational(5, 2), xs(0.5, 4), False),
    ("pow_forms", lambda x: x**x + 2**x + x**0.5, (), x**x * (log(x) + 1) + 2**x * log(2) + 1 / (2 * sqrt(x)), xs(0.5, 3), True),
    # torch.special
    ("expit_times_x", lambda x: x * torch.special.expit(x), (), sig(x) + x * sig(x) * (1 - sig(x)), xs(-3, 1), False),
    ("erfcx", torch.special.erfcx, (), 2 * x * exp(x**2) * erfc(x) - 2 / sqrt(pi), xs(-1, 0.5, 6), False),
    ("ndtr", torch.special.ndtr, (), exp(-(x**2) / 2) / sqrt(2 * pi), xs(-3, 0.4, 2), True),
    ("log_ndtr", torch.special.log_ndtr, (), exp(-(x**2) / 2) / sqrt(2 * pi) / ((1 + erf(x / sqrt(2))) / 2), xs(-5, 0.4, 2), False),
    ("ndtri", torch.special.ndtri, (), sqrt(2 * pi) * exp(erfinv(2 * x - 1) ** 2), xs(0.025, 0.5, 0.9), False),
    ("sinc", torch.special.sinc, (), (pi * x * cos(pi * x) - sin(pi * x)) / (pi * x**2), xs(-1.25, 0.3, 2), False),
    ("i0", torch.special.i0, (), besseli(1, x), xs(-2, 0.5), True),
    ("i0e", torch.special.i0e, (), exp(-Abs(x)) * (besseli(1, x) - sign(x) * besseli(0, x)), xs(-2, 0.5), False),
    ("i1", torch.special.i1, (), besseli(0, x) - besseli(1, x) / x, xs(-2, 0.5), False),
    ("bessel_j0_j1", lambda x: torch.special.bessel_j0(x) + torch.special.bessel_j1(x), (),
     -besselj(1, x) + besselj(0, x) - besselj(1, x) / x, xs(0.5, 3), False),
    ("entr", torch.special.entr, (), -log(x) - 1, xs(0.1, 2), False),
    ("logit", torch.logit, (), 1 / (x * (1 - x)), xs(0.05, 0.5, 0.9), False),
    ("logit_eps", lambda x: torch.logit(x, eps=0.1), (), inside(q(0.1), q(0.9)) / (x * (1 - x)), xs(0.05, 0.5, 0.95), False),
    # torch.nn.functional
    ("softplus", F.softplus, (), Piecewise((1, x > 20), (sig(x), True)), xs(-3, 0.5, 19.5, 20.5), False),
    ("softplus_beta_threshold", lambda x: F.softplus(x, beta=2, threshold=5), (),
     Piecewise((1, x > Rational(5, 2)), (sig(2 * x), True)), xs(-1, 2.4, 2.6), False),
    ("gelu", F.gelu, (), (1 + erf(x / sqrt(2))) / 2 + x * exp(-(x**2) / 2) / sqrt(2 * pi), xs(-2, 0.3, 1.5), False),
    ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), (),
     (1 + tanh(GELU_U)) / 2 + x / 2 * (1 - tanh(GELU_U) ** 2) * GELU_K * (1 + 3 * Rational(44715, 10**6) * x**2),
     xs(-2, 0.3, 1.5), False),
    ("silu", lambda x: F.silu(x), (), sig(x) * (1 + x * (1 - sig(x))), xs(-2, 0.3, 4), False),
    ("elu", lambda x: F.elu(x, alpha=0.7), (), Piecewise((1, x > 0), (q(0.7) * exp(x), True)), xs(-1.5, 0.5), False),
    ("selu", lambda x: F.selu(x), (), Piecewise((SELU_SCALE, x > 0), (SELU_SCALE * SELU_ALPHA * exp(x), True)), xs(-1.5, 0.5), False),
    ("celu", lambda x: F.celu(x, alpha=0.5), (), Piecewise((1, x > 0), (exp(2 * x), True)), xs(-1.5, 0.5), False),
    ("logsigmoid", F.logsigmoid, (), 1 / (1 + exp(x)), xs(-3, 0, 2), False),
    ("mish", F.mish, (), tanh(log(1 + exp(x))) + x * (1 - tanh(log(1 + exp(x))) ** 2) * sig(x), xs(-2, 0.5, 3), False),
    ("hardswish", F.hardswish, (), Piecewise((0, x < -3), (1, x > 3), ((2 * x + 3) / 6, True)), xs(-4, -1, 1.5, 4), False),
    ("hardsigmoid", F.hardsigmoid, (), Piecewise((Rational(1, 6), (x > -3) & (x < 3)), (0, True)), xs(-4, 0.5, 3.5), False),
    ("leaky_relu", lambda x: F.leaky_relu(x, 0.2), (), Piecewise((1, x > 0), (Rational(1, 5), True)), xs(-1, 2), False),
    ("softsign", F.softsign, (), 1 / (1 + Abs(x)) ** 2, xs(-2, 0.5), False),
    ("clamp_hardtanh_relu6", lambda x: x.clamp(-1, 2) + F.hardtanh(x) + F.relu6(x), (),
     inside(-1, 2) + inside(-1, 1) + inside(0, 6), xs(-1.5, -0.5, 0.3, 1.5, 2.5), False),
    ("threshold", lambda x: F.threshold(x, 0.5, -2.0), (), Piecewise((1, x > q(0.5)), (0, True)), xs(0.25, 1), False),
    # torch.where, detach, closures, custom autograd.Function, in-place ops
    ("where", lambda x: torch.where(x > 0, x**2, -(x**3)), (), Piecewise((2 * x, x > 0), (-3 * x**2, True)), xs(-1, 2), True),
    ("detach_stop_gradient", lambda x: x * x.detach(), (), x, xs(-1, 2), True),
    ("detach_straight_through", lambda x: (x - x.detach()).exp() * 5, (), 5, xs(0.5), True),
    ("closure_constants", lambda x: C * x**2 + torch.tensor([0.1], dtype=torch.float64).sum() * x, (), 5 * x + Rational(1, 10), xs(1), True),
    ("autograd_function_ctx", lambda x: Cube.apply(x) * x, (), 4 * x**3, xs(-1, 0.5), True),
    ("autograd_function_setup_context", lambda x: Square.apply(torch.sin(x)), (), 2 * sin(x) * cos(x), xs(-1, 0.5), True),
    ("in_place_scalar", in_place_scalar, (), 3 + 2 * x, xs(0.5), True),
    # Tensor inputs: reductions, softmax, indexing and views, linear algebra, nn.Linear.
    ("sum_of_squares", lambda x: (x * x).sum(), (V3,), Array([2 * s for s in S3]), P3, True),
    ("mean", lambda x: (x**2).mean(), (V3,), Array([2 * s / 3 for s in S3]), P3, True),
    ("prod", lambda x: x.prod(), (V3,), Array([S3[1] * S3[2], S3[0] * S3[2], S3[0] * S3[1]]), P3, True),
    ("amax", lambda x: x.amax(), (V3,), Array([1 if k == 2 else 0 for k in range(3)]), [{"x": [0.1, -0.4, 1.3]}], False),
    ("amin_dim", lambda x: torch.amin(x, dim=1).sum(), (M,), Array([[1, 0, 0], [0, 0, 1]]), [{"x": [[-1, 0, 2], [3, 4, -5]]}], False),
    ("max_full_reduction", lambda x: x.max(), (V3,), Array([0, 1, 0]), [{"x": [0.1, 2.5, -1]}], False),
    ("logsumexp", lambda x: torch.logsumexp(x, 0), (V3,), Array([exp(s) / SUM_EXP for s in S3]), P3, True),
    ("softmax", lambda x: F.softmax(x, dim=0)[0], (V3,), softmax_row(0, S3), P3, False),
    ("log_softmax", lambda x: F.log_softmax(x, dim=-1)[1], (V3,),
     Array([-exp(S3[0]), SUM_EXP - exp(S3[1]), -exp(S3[2])]) / SUM_EXP, P3, False),
    ("cross_entropy", lambda x: F.cross_entropy(x.unsqueeze(0), torch.tensor([1])), (V3,),
     Array([exp(s) / SUM_EXP - (1 if k == 1 else 0) for k, s in enumerate(S3)]), P3, False),
    ("vector_norm", lambda x: torch.linalg.vector_norm(x), (V3,), Array([s / sqrt(sum(u**2 for u in S3)) for s in S3]), P3, True),
    ("vector_norm_1", lambda x: torch.linalg.vector_norm(x, 1), (V3,), Array([sign(s) for s in S3]), P3, True),
    ("vector_norm_3", lambda x: torch.linalg.vector_norm(x, ord=3), (V3,), norm3_grad(S3), P3, False),
    ("var", lambda x: x.var(), (V3,), Array([2 * (s - MEAN3) / (3 - 1) for s in S3]), P3, False),
    ("std_biased", lambda x: x.std(unbiased=False), (V3,),
     Array([(s - MEAN3) / 3 for s in S3]) / sqrt(sum((u - MEAN3) ** 2 for u in S3) / 3), P3, False),
    ("cumsum", lambda x: (x.cumsum(0) ** 2).sum(), (V3,), cumsum_square_grad(S3), P3, False),
    ("slices", lambda x: (x[1:] * x[:-1]).sum(), (V3,), Array([S3[1], S3[0] + S3[2], S3[1]]), P3, True),
    ("ellipsis_index", lambda x: (x[..., 0] ** 2).sum(), (M,), Array([[2 * S23[0][0], 0, 0], [2 * S23[1][0], 0, 0]]), P23, True),
    ("integer_tensor_index", lambda x: (x[torch.tensor([2, 0, 2])] * x[1]).sum(), (V3,), Array([S3[1], S3[0] + 2 * S3[2], 2 * S3[1]]), P3, True),
    ("view_reshape", lambda x: x.view(3, 2)[2, 1] * x.reshape(-1)[0], (M,), Array([[S23[1][2], 0, 0], [0, 0, S23[0][0]]]), P23, True),
    ("permute_transpose", lambda x: (x.permute(1, 0) * M23.T).sum() + x.transpose(0, 1)[2, 0], (M,),
     Array(M23.tolist()).applyfunc(q) + Array([[0, 0, 1], [0, 0, 0]]), P23, False),
    ("unsqueeze_expand_as", lambda x: (x.unsqueeze(0).expand_as(M23) * M23).sum(), (V3,), Array([-3, Rational(5, 2), 9]), P3, True),
    ("broadcast_outer", lambda x, y: (x[:, None] * y[None, :]).sum(), (V2, V3),
     (Array([sum(Y3)] * 2), Array([sum(X2)] * 3)), [{"x": [1, 2], "y": [3, 4, 5]}], True),
    ("mm_closure", lambda x: x.mm(W23).sum(), (V12,), Array([[Rational(3, 2), Rational(-5, 4)]]), [{"x": [[1, 2]]}], True),
    ("matmul_vector", lambda x: torch.matmul(x, W23).pow(2).sum(), (V2,), matmul_square_grad(), P2, False),
    ("quadratic_form_at", lambda x: x @ A22 @ x, (V2,), Array([4 * X2[0] - X2[1] / 2, -X2[0] / 2 + 6 * X2[1]]), P2, True),
    ("nn_linear", lambda x: torch.tanh(linear(x)).sum(), (V2,),
     Array([q(0.5), q(-1.5)]) * (1 - tanh(X2[0] / 2 - 3 * X2[1] / 2 + Rational(1, 4)) ** 2), P2, False),
    ("in_place_vector", in_place_vector, (V3,), Array([2 * S3[1] + 2 * S3[2], 2 * S3[1] + 2 * S3[0], 2 * S3[0]]), P3, False),
]

assert len(TABLE) >= 60, len(TABLE)


@pytest.mark.parametrize(("f", "inputs", "expected", "points", "exact"), [pytest.param(*row[1:], id=row[0]) for row in TABLE])
def test_derivative_matches_hand_derivation(f, inputs, expected, points, exact):
    got = autocheck.derivative(f, *inputs)
    assert structure(got) == structure(expected)
    if exact:
        assert got == expected
    for point in points:
        assert_agree(got, expected, point)


# ---- the autograd tutorial's linear regression ----------------------------------------


def test_regression_loss_partials_are_exact():
    dw, db = autocheck.derivative(regression_loss, W0, B0)
    w00, b00 = sympy.Symbol("w[0, 0]", real=True), sympy.Symbol("b[0, 0]", real=True)
    # d/dw sum (x w + b - y)**2 / 2 = sum x (x w + b - y); d/db = sum (x w + b - y)
    assert dw == Array([[Rational(13, 2) * w00 + 4 * b00 - Rational(71, 4)]])
    assert db == Array([[4 * w00 + 3 * b00 - Rational(23, 2)]])


def test_regression_loss_partials_match_autograd_at_the_given_tensors():
    dw, db = autocheck.derivative(regression_loss, W0, B0)
    w_param, b_param = W0.clone().requires_grad_(), B0.clone().requires_grad_()
    regression_loss(w_param, b_param).backward()
    at = {sympy.Symbol("w[0, 0]", real=True): q(0.25), sympy.Symbol("b[0, 0]", real=True): 0}
    assert float(dw[0, 0].subs(at)) == pytest.approx(w_param.grad.item(), rel=1e-15)
    assert float(db[0, 0].subs(at)) == pytest.approx(b_param.grad.item(), rel=1e-15)


# ---- higher orders ---------------------------------------------------------------------


def test_second_derivative_of_x2_exp():
    got = autocheck.derivative(lambda x: x * x * torch.exp(x), order=2)
    assert got == x**2 * exp(x) + 4 * x * exp(x) + 2 * exp(x)


def test_hessian_of_two_inputs_is_a_tuple_of_tuples():
    got = autocheck.derivative(lambda x, y: x**2 * y**3 + torch.sin(x * y), order=2)
    s = sin(x * y)
    want = (
        (2 * y**3 - y**2 * s, 6 * x * y**2 + cos(x * y) - x * y * s),
        (6 * x * y**2 + cos(x * y) - x * y * s, 6 * x**2 * y - x**2 * s),
    )
    assert structure(got) == structure(want)
    assert got[0][1] == got[1][0]
    for point in xys((0.5, -1.5), (2, 0.25)):
        assert_agree(got, want, point)


def test_third_derivative():
    assert autocheck.derivative(torch.sin, order=3) == -cos(x)


def test_hessian_of_a_tensor_input_is_shaped_like_both_inputs():
    got = autocheck.derivative(lambda x: (x**3).sum(), torch.zeros(2, dtype=torch.float64), order=2)
    assert got == Array([[6 * X2[0], 0], [0, 6 * X2[1]]])


def test_detach_has_zero_second_derivative():
    assert autocheck.derivative(lambda x: x * x.detach(), order=2) == 0


# ---- conventions where the mathematics leaves a choice -------------------------------


def test_amax_tie_shares_the_gradient_like_torch():
    got = autocheck.derivative(lambda x: x.amax(), V3)
    assert_agree(got, Array([Rational(1, 2), Rational(1, 2), 0]), {"x": [1, 1, 0]})


def test_softplus_follows_torchs_threshold_branch():
    got = autocheck.derivative(F.softplus)
    assert got.subs(x, q(20.5)) == 1  # torch returns exactly 1 above the threshold
    assert_agree(got, sig(x), {"x": 20})


def test_step_functions_have_zero_derivative():
    for f in (torch.floor, torch.ceil, torch.round, torch.sign, torch.trunc):
        assert autocheck.derivative(f) == 0


def test_elementwise_function_of_a_tensor_has_a_diagonal_jacobian():
    got = autocheck.derivative(torch.exp, V3)
    assert got == Array([[exp(S3[0]), 0, 0], [0, exp(S3[1]), 0], [0, 0, exp(S3[2])]])


def test_float32_inputs_trace_like_float64():
    got = autocheck.derivative(lambda x: (x * 0.1).sum(), torch.zeros(2, dtype=torch.float32))
    assert got == Array([Rational(1, 10), Rational(1, 10)])


def test_math_constants_stay_exact():
    assert autocheck.derivative(lambda x: torch.sin(math.pi * x)) == pi * cos(pi * x)
