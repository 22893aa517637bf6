"""Stage 1, tracing: symbol names, exact constants, registering rules, and every way a trace
can fail, each with the message a user sees."""

from __future__ import annotations

import math
import re
import threading
import traceback

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F

import autocheck
from autocheck import TraceError
from autocheck._trace import TORCH_TO_SYMPY, Detached, OpNode, OpPartial, parameter_names, trace

x, y, z = sympy.symbols("x y z", real=True)


def sym(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)


V2 = torch.zeros(2, dtype=torch.float64)
V3 = torch.zeros(3, dtype=torch.float64)


@pytest.fixture
def restore_rules():
    """register_torch_op changes a process-wide table; put it back after the test."""
    saved = dict(TORCH_TO_SYMPY.maps[0])
    yield
    TORCH_TO_SYMPY.maps[0].clear()
    TORCH_TO_SYMPY.maps[0].update(saved)


# ---- symbol names ----------------------------------------------------------------------


def test_symbols_are_named_after_the_parameters():
    tr = trace(lambda alpha, beta: alpha * beta)
    assert tr.names == ("alpha", "beta")
    assert tr.output.item() == sym("alpha") * sym("beta")


def test_parameters_with_defaults_are_not_inputs():
    def f(x, scale=2.0, *, shift=1.0):
        return scale * x + shift

    assert trace(f).names == ("x",)
    assert autocheck.derivative(f) == 2


def test_symbols_are_real():
    # Complex symbols would turn d|x|/dx into an re/im expression.
    assert autocheck.derivative(torch.abs) == sympy.sign(x)
    assert trace(lambda t: t).output.item().is_real


@pytest.mark.parametrize(
    ("f", "names"),
    [
        pytest.param(torch.exp, ("x",), id="exp"),
        pytest.param(torch.atan2, ("x", "y"), id="atan2"),
        pytest.param(torch.hypot, ("x", "y"), id="hypot"),
        pytest.param(torch.addcmul, ("x", "y", "z"), id="addcmul"),
        pytest.param(torch.special.xlogy, ("x", "y"), id="special.xlogy"),
    ],
)
def test_builtins_get_x_y_z_with_their_arity_found_by_trying(f, names):
    assert trace(f).names == names


def test_torch_python_functions_get_x_not_input():
    # F.mish and nn.Linear.forward call their parameter `input`; torch.exp's is `input` too.
    assert trace(F.mish).names == ("x",)
    assert autocheck.derivative(torch.nn.Tanh()) == 1 - sympy.tanh(x) ** 2


def test_autograd_function_apply_gets_x():
    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v):
            return 2 * v

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    assert trace(Double.apply).names == ("x",)


def test_autograd_function_apply_takes_the_inputs_of_its_forward():
    class Ctx(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b, scale=2.0):
            return a * b * scale

    class SetupContext(torch.autograd.Function):
        @staticmethod
        def forward(a, b):
            return a * b

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

    assert parameter_names(Ctx.apply) == parameter_names(SetupContext.apply) == ("x", "y")


def test_a_module_takes_the_inputs_of_its_forward():
    class Scaled(torch.nn.Module):
        def forward(self, value, weight, eps=1e-6):
            return value * weight + eps

    assert parameter_names(Scaled()) == ("value", "weight")
    assert trace(Scaled()).output.item() == sym("value") * sym("weight") + sympy.Rational(1, 10**6)


def test_varargs_function_traces_with_explicit_shapes():
    tr = trace(lambda *a: a[0] * a[1], [(), ()])
    assert tr.names == ("x", "y")
    assert tr.output.item() == x * y
    dot = trace(lambda *a: (a[0] * a[1]).sum(), [(2,), (2,)]).output.item()
    assert dot == sym("x[0]") * sym("y[0]") + sym("x[1]") * sym("y[1]")


def test_varargs_function_derivative_with_example_inputs():
    assert autocheck.derivative(lambda *a: a[0] * a[1], torch.tensor(1.0), torch.tensor(2.0)) == (y, x)


def _scaled_sum(x, *rest):
    return x + sum(rest)


@pytest.mark.parametrize("f", [lambda *a: a[0] * a[1], _scaled_sum], ids=["only-varargs", "x-then-varargs"])
def test_varargs_function_without_inputs_says_how_to_give_its_arity(f):
    assert parameter_names(f) is None
    message = rf"{re.escape(f.__qualname__)} takes \*args.*example tensors.*lambda x, y: f\(x, y\)"
    with pytest.raises(TraceError, match=message):
        autocheck.derivative(f)


def test_builtin_with_no_working_arity_says_to_wrap_it():
    with pytest.raises(TraceError, match=r"could not find how many inputs 'cat' takes.*lambda x, y: f\(x, y\)"):
        autocheck.derivative(torch.cat)


def test_array_symbols_are_named_with_their_index():
    tr = trace(lambda w, b: (w.sum() + b.sum()), [(2, 2), (3,)])
    assert tr.symbols[0][0, 1] == sym("w[0, 1]")
    assert tr.symbols[1][2] == sym("b[2]")
    assert tr.output.item() == sum(tr.flat_symbols)


def test_array_symbols_of_a_builtin_use_x_y():
    dx, dy = autocheck.derivative(lambda x, y: torch.atan2(x, y).sum(), V2, V2)
    assert dx[1] == sym("y[1]") / (sym("x[1]") ** 2 + sym("y[1]") ** 2)
    assert dy[0] == -sym("x[0]") / (sym("x[0]") ** 2 + sym("y[0]") ** 2)


# ---- exact numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        pytest.param(lambda x: 0.1 * x, x / 10, id="0.1"),
        pytest.param(lambda x: x * 1e-3 + 2.5, x / 1000 + sympy.Rational(5, 2), id="1e-3"),
        pytest.param(lambda x: x / 3, x / 3, id="int-division"),
        pytest.param(lambda x: x**0.5, sympy.sqrt(x), id="power-0.5"),
        pytest.param(lambda x: (torch.tensor([0.1, 0.7], dtype=torch.float64) * x).sum(), 4 * x / 5, id="closure"),
        pytest.param(lambda x: math.pi * x, sympy.pi * x, id="math.pi"),
        pytest.param(lambda x: x * math.sqrt(2), sympy.sqrt(2) * x, id="math.sqrt(2)"),
    ],
)
def test_floats_become_the_exact_numbers_written(f, expected):
    assert trace(f).output.item() == expected


def test_float32_constant_created_inside_is_its_exact_binary_value():
    # torch.tensor(0.1) is float32 at run time, in float64 code too: 13421773 / 2**27.
    assert trace(lambda x: x * torch.tensor(0.1)).output.item() == x * 13421773 / 134217728


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        pytest.param(torch.float32, sympy.Rational(13421773, 2**27), id="float32"),
        pytest.param(torch.float16, sympy.Rational(819, 2**13), id="float16"),
        pytest.param(torch.bfloat16, sympy.Rational(205, 2**11), id="bfloat16"),
        pytest.param(torch.float64, sympy.Rational(1, 10), id="float64-shortest-repr"),
    ],
)
def test_tensor_constants_are_exact_for_their_dtype(dtype, expected):
    c = torch.tensor(0.1, dtype=dtype)
    assert trace(lambda x: x * c).output.item() == x * expected
    assert float(expected) == float(c)  # the value the code multiplies by


def test_float32_constant_derivative_is_what_autograd_gives_bit_for_bit():
    f = lambda x: x * torch.tensor(0.1)  # noqa: E731
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(f(t), t)
    assert float(autocheck.derivative(f)) == grad.item() == 0.10000000149011612


def test_float32_rounding_of_a_known_constant_is_not_the_constant():
    # Only doubles stand for pi; float32(pi) is 13176795 / 2**22, and autograd uses that.
    assert trace(lambda x: x * torch.tensor(math.pi)).output.item() == x * sympy.Rational(13176795, 2**22)


def test_constants_created_inside_get_torchs_default_dtype_as_at_run_time():
    seen = []

    def f(x):
        seen.append(torch.tensor(0.5).dtype)
        return x

    trace(f, dtype=torch.float64)
    assert seen == [torch.get_default_dtype()] == [torch.float32]


def test_ndtr_constant_is_exact():
    # torch.special.ndtr multiplies by M_SQRT1_2 as a double before erf.
    assert trace(torch.special.ndtr).output.item() == (1 + sympy.erf(sympy.sqrt(2) * x / 2)) / 2


# ---- register_torch_op -----------------------------------------------------------------


def test_op_without_rule_names_the_op_and_register_torch_op():
    with pytest.raises(TraceError, match=r"aten::special_airy_ai.*autocheck\.register_torch_op\('aten::special_airy_ai'"):
        autocheck.derivative(torch.special.airy_ai)


@pytest.mark.parametrize(
    "op",
    [torch.ops.aten.special_airy_ai, torch.ops.aten.special_airy_ai.default, "aten::special_airy_ai", "special_airy_ai"],
    ids=["packet", "overload", "qualified-name", "name"],
)
def test_register_torch_op_adds_a_rule_in_one_call(restore_rules, op):
    autocheck.register_torch_op(op, np.vectorize(sympy.airyai, otypes=[object]))
    assert autocheck.derivative(torch.special.airy_ai) == sympy.airyaiprime(x)
    assert autocheck.derivative(lambda x: torch.special.airy_ai(x).sum(), V2)[1] == sympy.airyaiprime(sym("x[1]"))


def test_register_torch_op_overrides_a_builtin_rule(restore_rules):
    autocheck.register_torch_op("aten::exp", np.vectorize(lambda v: 2**v, otypes=[object]), override=True)
    assert trace(torch.exp).output.item() == 2**x


@pytest.mark.parametrize("op", ["prims::sum", torch.ops.prims.sum.default], ids=["name", "overload"])
def test_register_torch_op_for_a_prims_operator_is_used_by_the_trace(restore_rules, op):
    # layer_norm's decomposition sums with prims.sum; a registered rule must take its place.
    def rule(a, dims, output_dtype=None):
        raise TraceError("the registered prims.sum rule ran")

    autocheck.register_torch_op(op, rule, override=True)
    with pytest.raises(TraceError, match="the registered prims.sum rule ran"):
        autocheck.derivative(lambda x: F.layer_norm(x, (3,))[0], V3)


def test_register_torch_op_rejects_a_rule_that_is_not_callable():
    with pytest.raises(TypeError, match=r"rule must be callable.*got rule='exp'"):
        autocheck.register_torch_op("aten::exp", "exp")


@pytest.mark.parametrize("op", [3, None, ""], ids=["int", "None", "empty"])
def test_register_torch_op_rejects_an_op_of_the_wrong_type(op):
    with pytest.raises(TypeError, match=r"op must be an ATen operator such as torch\.ops\.aten\.sinc"):
        autocheck.register_torch_op(op, lambda v: v)


def test_register_torch_op_rejects_an_unknown_operator():
    with pytest.raises(ValueError, match=r"torch has no operator 'aten::no_such_op' \(got op='no_such_op'\)"):
        autocheck.register_torch_op("no_such_op", lambda v: v)


def test_register_torch_op_rejects_an_unknown_overload():
    with pytest.raises(ValueError, match=r"aten::add has no overload 'Nope'.*'Tensor'"):
        autocheck.register_torch_op("aten::add.Nope", lambda a, b: a)


# ---- what cannot be traced, and what the message says -------------------------------


def _if(x):
    if x > 0:
        return x
    return -x


def _while(x):
    while x > 0:
        x = x - 1
    return x


def _and(x):
    return x if (x > 0 and x < 1) else 2 * x


def _write_into_constant(x):
    out = torch.zeros(3)
    out[0] = x
    return out.sum()


@pytest.mark.parametrize(
    ("f", "inputs", "message"),
    [
        pytest.param(_if, (), r"Python control flow \(`if`.*on a traced value: x > 0.*Use torch\.where\(condition, a, b\)", id="if"),
        pytest.param(_while, (), r"Python control flow.*torch\.where", id="while"),
        pytest.param(_and, (), r"`and`/`or`.*torch\.where", id="and"),
        pytest.param(lambda x: bool(x), (), r"torch\.where", id="bool"),
        pytest.param(lambda x: x.item() * 2, (), r"\.item\(\) on a traced value: x\. .*keep the value a tensor", id="item"),
        pytest.param(lambda x: float(x) * x, (), r"float\(\) or a math\.\* function on a traced value.*torch\.exp", id="float"),
        pytest.param(lambda x: int(x) * x, (), r"int\(\) on a traced value", id="int"),
        pytest.param(lambda x: math.exp(x), (), r"math\.\* function.*Use the torch function instead", id="math.exp"),
        pytest.param(lambda x: np.exp(x), (), r"numpy function was applied to a traced value.*torch\.exp, not np\.exp", id="np.exp"),
        pytest.param(lambda x: np.asarray(x), (), r"numpy is invisible to autograd", id="np.asarray"),
        pytest.param(lambda x: x.numpy(), (), r"\.numpy\(\) on a traced value", id=".numpy"),
        pytest.param(lambda x: torch.tensor(x.tolist()), (), r"\.tolist\(\) on a traced value", id=".tolist"),
        pytest.param(lambda x: (x, x * x), (), r"returned a tuple of 2 values; return a single tensor", id="tuple"),
        pytest.param(lambda x: [x], (), r"returned a list of 1 values", id="list"),
        pytest.param(lambda x: None, (), r"returned NoneType, not a tensor", id="None"),
        pytest.param(lambda x: torch.sort(x).values.sum(), (V3,), r"torch\.sort depends on the ordering of concrete values.*torch\.amax", id="sort"),
        pytest.param(lambda x: x[torch.argmax(x)], (V3,), r"torch\.argmax depends on the ordering", id="argmax"),
        pytest.param(lambda x: x.max(dim=0).values, (V3,), r"torch\.max\(x, dim\) depends on the ordering", id="max-dim"),
        pytest.param(lambda x: x.topk(2).values.sum(), (V3,), r"torch\.topk depends on the ordering", id="topk"),
        pytest.param(lambda x: x.median(), (V3,), r"torch\.median depends on the ordering", id="median"),
        pytest.param(lambda x: x[x > 0].sum(), (V3,), r"traced value used as an index.*torch\.where\(mask, x, 0\)", id="mask-index"),
        pytest.param(_write_into_constant, (), r"in-place operation \(copy_\) writes a traced value into a constant tensor.*x\.new_zeros", id="write-into-constant"),
        pytest.param(lambda x: torch.stack([x, x]), (), r"shape \(2,\) for scalar inputs.*autocheck\.derivative\(f, x\)", id="non-scalar-output"),
        pytest.param(lambda x: x * 1j, (), r"returns complex values \(torch.complex128\) of real inputs", id="complex-scalar"),
        pytest.param(lambda x: (x * torch.ones(2, dtype=torch.complex128)).sum(), (V2,), r"returns complex values \(torch.complex128\) of real inputs.*x.to\(torch.complex128\)", id="complex-constant"),
    ],
)
def test_untraceable_code_raises_trace_error_saying_what_to_do(f, inputs, message):
    with pytest.raises(TraceError, match=message):
        autocheck.derivative(f, *inputs)


def test_trace_error_inside_an_operator_is_not_swallowed_into_unsupported_operand():
    # torch's x * y turns a TypeError into NotImplemented; TraceError is a TypeError.
    with pytest.raises(TraceError) as excinfo:
        trace(lambda x: x * torch.tensor(1 + 1j))
    assert "unsupported operand" not in str(excinfo.value)


def test_trace_error_is_a_type_error_shown_as_autocheck_trace_error():
    assert issubclass(TraceError, TypeError)
    assert f"{TraceError.__module__}.{TraceError.__qualname__}" == "autocheck.TraceError"
    with pytest.raises(TypeError) as excinfo:
        autocheck.derivative(lambda x: x.item())
    assert traceback.format_exception_only(excinfo.value)[0].startswith("autocheck.TraceError: .item()")


# ---- what does trace ---------------------------------------------------------------------


def test_writing_into_a_traced_tensor_goes_through_to_it():
    def f(x):
        out = x.new_zeros(3)
        out[0] = x[1] * x[0]
        out[2] = x[0]
        return out.sum()

    assert trace(f, [(2,)]).output.item() == sym("x[0]") * sym("x[1]") + sym("x[0]")


def test_flip_copies_so_in_place_ops_do_not_write_back():
    def f(x):
        y = x.flip(0)
        y.mul_(2)
        return (x * y).sum()

    assert trace(f, [(2,)]).output.item() == 4 * sym("x[0]") * sym("x[1]")


def test_in_place_shape_change_updates_the_tensor():
    def f(x):
        y = x.unsqueeze(0)
        y.squeeze_(0)
        y.unsqueeze_(1)
        return y

    out = trace(f, [(2,)]).output
    assert out.shape == (2, 1)
    assert list(out.reshape(-1)) == [sym("x[0]"), sym("x[1]")]


def test_vector_matmul_has_the_vector_shape():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    out = trace(lambda x: torch.matmul(x, w), [(2,)]).output
    assert out.shape == (2,)
    assert out[1] == 2 * sym("x[0]") + 4 * sym("x[1]")


def test_reductions_take_dims_and_keepdim():
    out = trace(lambda x: x.sum(dim=1, keepdim=True) + x.mean(0), [(2, 3)]).output
    assert out.shape == (2, 3)


def test_integer_and_boolean_constant_index_tensors():
    out = trace(lambda x: x[torch.tensor([2, 0])] * x[torch.tensor([True, False, True])], [(3,)]).output
    assert list(out) == [sym("x[2]") * sym("x[0]"), sym("x[0]") * sym("x[2]")]


def test_layer_norm_traces_through_prims():
    v = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    got = autocheck.derivative(lambda x: F.layer_norm(x, (3,))[0], V3)
    at = {sym(f"x[{i}]"): sympy.Rational(repr(v[i].item())) for i in range(3)}
    expected = torch.autograd.functional.jacobian(lambda t: F.layer_norm(t, (3,))[0], v)
    assert [float(e.subs(at)) for e in got] == pytest.approx(expected.tolist(), rel=1e-12)


def test_constant_output_has_zero_derivative():
    assert autocheck.derivative(lambda x: torch.tensor(3.0)) == 0


def test_closure_tensors_are_constants_and_are_not_modified():
    c = torch.tensor([1.5, 2.0], dtype=torch.float64)
    before = c.clone()
    assert trace(lambda x: (c * x).sum(), [(2,)]).output.item() == sympy.Rational(3, 2) * sym("x[0]") + 2 * sym("x[1]")
    assert torch.equal(c, before)


# ---- empty tensors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("f", "shape", "expected"),
    [
        pytest.param(lambda x: torch.exp(x) * 2, (0,), np.empty((0,), dtype=object), id="elementwise-0"),
        pytest.param(lambda x: torch.exp(x) * 2, (0, 3), np.empty((0, 3), dtype=object), id="elementwise-0x3"),
        pytest.param(lambda x: x.sum(), (0,), np.array(0, dtype=object), id="sum"),
        pytest.param(lambda x: x.sum(0), (0, 3), np.array([0, 0, 0], dtype=object), id="sum-dim0"),
        pytest.param(lambda x: x.sum(1), (0, 3), np.empty((0,), dtype=object), id="sum-dim1"),
        pytest.param(lambda x: x.mean(), (0, 3), np.array(sympy.nan, dtype=object), id="mean-nan"),
        pytest.param(lambda x: x.prod(), (0,), np.array(1, dtype=object), id="prod"),
        pytest.param(lambda x: x.var(0, correction=0), (0, 2), np.array([sympy.nan] * 2, dtype=object), id="var-nan"),
        pytest.param(lambda x: torch.logsumexp(x, 1), (2, 0), np.array([-sympy.oo] * 2, dtype=object), id="logsumexp"),
        pytest.param(lambda x: x.T @ x, (0, 2), np.zeros((2, 2), dtype=int).astype(object), id="matmul-inner-0"),
        pytest.param(lambda x: x @ torch.ones(3, 2, dtype=torch.float64), (0, 3), np.empty((0, 2), dtype=object), id="matmul-0"),
        pytest.param(lambda x: torch.cat([x, x]), (0,), np.empty((0,), dtype=object), id="cat"),
        pytest.param(lambda x: F.softmax(x, 1), (0, 3), np.empty((0, 3), dtype=object), id="softmax"),
        pytest.param(lambda x: F.layer_norm(x, (3,)), (0, 3), np.empty((0, 3), dtype=object), id="layer-norm"),
    ],
)
@pytest.mark.filterwarnings(r"ignore:var\(\)")  # torch's "degrees of freedom is <= 0", for the empty variance
def test_empty_tensors_trace_like_torch(f, shape, expected):
    tr = trace(f, [shape])
    assert tr.symbols[0].shape == shape
    assert tr.output.shape == expected.shape
    assert [str(e) for e in tr.output.flat] == [str(e) for e in expected.flat]
    want = torch.tensor([float(e) for e in expected.flat], dtype=torch.float64).reshape(expected.shape)
    torch.testing.assert_close(f(torch.zeros(shape, dtype=torch.float64)), want, rtol=0, atol=0, equal_nan=True)


def test_max_of_an_empty_dim_is_an_error_as_in_torch():
    with pytest.raises(TraceError, match=r"amax\(\): Expected reduction dim to have non-zero size"):
        trace(lambda x: x.amax(1), [(2, 0)])


def test_reduction_over_a_dim_the_tensor_lacks_is_an_error_as_in_torch():
    with pytest.raises(TraceError, match=r"Dimension out of range.*got 1"):
        trace(lambda x: x.sum(1), [(3,)])


# ---- grad mode: what no_grad stops, and what a Function's forward computes ------------


def _autograd_derivative(f, at: float) -> float:
    t = torch.tensor(at, dtype=torch.float64, requires_grad=True)
    out = f(t)
    return torch.autograd.grad(out, t)[0].item() if out.requires_grad else 0.0


def _double_under_no_grad(x):
    with torch.no_grad():
        return 2 * x


@torch.no_grad()
def _quadruple_no_grad_decorator(x):
    return 4 * x


def _exp_grad_disabled(x):
    with torch.set_grad_enabled(False):
        e = torch.exp(x)
    return e * x


def _sin_inference_mode(x):
    with torch.inference_mode():
        s = torch.sin(x)
    return 3 * x + s  # autograd may not save an inference tensor, so add, not multiply


def _enable_grad_inside_no_grad(x):
    with torch.no_grad():
        stopped = x * 2
        with torch.enable_grad():
            kept = x * 3
    return stopped * x + kept * x


class CubeSavingInput(torch.autograd.Function):
    """ctx style, with a no_grad block inside forward: the forward's math all the same."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        with torch.no_grad():
            square = x * x
        return square * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x * x * grad


class SquareSetupContext(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        return 2 * ctx.saved_tensors[0] * grad


class FourthPowerNested(torch.autograd.Function):
    """A Function whose forward applies another Function."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return SquareSetupContext.apply(SquareSetupContext.apply(x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 4 * x**3 * grad


square = SquareSetupContext.apply  # bound before any trace, a common idiom


def _apply_inside_no_grad(x):
    with torch.no_grad():
        stopped = CubeSavingInput.apply(x)
    return stopped * x


def _bound_apply_inside_no_grad(x):
    with torch.no_grad():
        stopped = square(x)
    return stopped * x


LINEAR = torch.nn.Linear(1, 1).double()  # parameters require grad, as in a model
with torch.no_grad():
    LINEAR.weight.fill_(0.5)
    LINEAR.bias.fill_(0.25)


def _linear_then_function(x):
    return square(LINEAR(x.reshape(1, 1))).sum()


def _linear_under_no_grad(x):
    with torch.no_grad():
        stopped = LINEAR(x.reshape(1, 1)).sum()
    return stopped * x


def _view_under_no_grad(x):
    with torch.no_grad():
        view = x.reshape(1)
    return (view * x).sum()


def _in_place_under_no_grad(x):
    y = x * x
    with torch.no_grad():
        y.mul_(2)  # the value doubles; autograd keeps y's history, so the gradient stays 2v
    return y


def _clamped_in_place_under_no_grad(x):
    # F.gaussian_nll_loss's pattern: the value is clamped, the gradient passes as if it were not.
    var = x.clone()
    with torch.no_grad():
        var.clamp_(min=1.0)
    return torch.log(var) + 0.25 / var


def _write_through_view_under_no_grad(x):
    buffer = torch.zeros_like(x).repeat(2)
    with torch.no_grad():
        buffer[0] = x * 5  # written through a view made under no_grad: a constant
    buffer[1] = x * 7
    return (buffer * x).sum()


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        pytest.param(lambda x: x * _double_under_no_grad(x), 2 * x, id="no_grad"),
        pytest.param(lambda x: x * _quadruple_no_grad_decorator(x), 4 * x, id="no_grad-decorator"),
        pytest.param(_exp_grad_disabled, sympy.exp(x), id="set_grad_enabled-False"),
        pytest.param(_sin_inference_mode, sympy.Integer(3), id="inference_mode"),
        pytest.param(_enable_grad_inside_no_grad, 8 * x, id="enable_grad-inside-no_grad"),
        pytest.param(CubeSavingInput.apply, 3 * x**2, id="function-forward-uses-no_grad"),
        pytest.param(lambda x: SquareSetupContext.apply(torch.sin(x)), sympy.sin(2 * x), id="setup_context"),
        pytest.param(lambda x: square(x) * x, 3 * x**2, id="apply-bound-before-the-trace"),
        pytest.param(FourthPowerNested.apply, 4 * x**3, id="nested-functions"),
        pytest.param(_apply_inside_no_grad, x**3, id="apply-inside-no_grad"),
        pytest.param(_bound_apply_inside_no_grad, x**2, id="bound-apply-inside-no_grad"),
        pytest.param(_linear_then_function, x / 2 + sympy.Rational(1, 4), id="module-parameters-require-grad"),
        pytest.param(_linear_under_no_grad, x / 2 + sympy.Rational(1, 4), id="module-under-no_grad"),
        pytest.param(_view_under_no_grad, x, id="view-under-no_grad"),
        pytest.param(_in_place_under_no_grad, 2 * x, id="in-place-under-no_grad"),
        pytest.param(_write_through_view_under_no_grad, 19 * x, id="write-through-view-under-no_grad"),
        pytest.param(
            _clamped_in_place_under_no_grad,
            1 / sympy.Max(x, 1) - 1 / (4 * sympy.Max(x, 1) ** 2),
            id="clamp-in-place-under-no_grad-is-straight-through",
        ),
    ],
)
def test_derivative_is_autograds_for_the_code_as_written(f, expected):
    got = autocheck.derivative(f)
    assert sympy.simplify(got - expected) == 0
    for at in (-1.25, 0.7):
        assert float(got.subs(x, sympy.Rational(at))) == pytest.approx(_autograd_derivative(f, at), rel=1e-14)


def test_values_under_no_grad_keep_their_value():
    # Stopped, not dropped: the forward is unchanged, as detach() leaves it.
    assert trace(_in_place_under_no_grad).output.item().replace(
        lambda e: isinstance(e, Detached), lambda e: e.args[0]
    ) == 2 * x**2
    assert trace(lambda x: x * _double_under_no_grad(x)).output.item() == x * Detached(2 * x)


def test_trace_follows_the_math_whatever_the_callers_grad_mode():
    with torch.no_grad():
        assert autocheck.derivative(lambda x: x * x) == 2 * x
        assert autocheck.derivative(CubeSavingInput.apply) == 3 * x**2
    with torch.inference_mode():
        assert autocheck.derivative(lambda x: x * x) == 2 * x


def test_function_apply_is_left_as_it_was_after_a_trace():
    before = vars(torch.autograd.function._SingleLevelFunction).get("apply")
    trace(_bound_apply_inside_no_grad)
    with pytest.raises(TraceError):
        trace(lambda x: square(x).item())
    assert vars(torch.autograd.function._SingleLevelFunction).get("apply") is before is None


def test_traces_in_threads_each_follow_their_own_grad_mode():
    functions = [_apply_inside_no_grad, CubeSavingInput.apply, _bound_apply_inside_no_grad, FourthPowerNested.apply] * 4
    results: list = [None] * len(functions)

    def run(k):
        results[k] = autocheck.derivative(functions[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(functions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [x**3, 3 * x**2, x**2, 4 * x**3] * 4
    assert "apply" not in vars(torch.autograd.function._SingleLevelFunction)


# ---- operations kept opaque, for the error model ------------------------------------


class SigmoidByHand(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 1 / (1 + torch.exp(-x))

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError  # never called: a trace runs forward only


SIG = 1 / (1 + sympy.exp(-x))


def expand(e):
    from autocheck._error_model import expand_ops

    return expand_ops(e)


def test_a_marked_torch_operator_is_one_node_whose_value_is_its_rule():
    out = trace(torch.sigmoid, mark=True).output.item()
    assert isinstance(out, OpNode) and out.op == "sigmoid" and out.args == (x,)
    assert expand(out) == SIG


def test_arithmetic_stays_explicit_in_a_marked_trace():
    out = trace(lambda x: x * torch.sigmoid(x) + 1, mark=True).output.item()
    assert out.func is sympy.Add and any(isinstance(a, sympy.Mul) for a in out.args)


def test_the_derivative_of_a_marked_trace_has_local_derivatives():
    out = trace(lambda x: torch.exp(torch.sin(x)), mark=True).output.item()
    derivative = sympy.diff(out, x)
    assert all(isinstance(a, OpPartial) for a in derivative.args)
    assert sympy.simplify(expand(derivative) - sympy.cos(x) * sympy.exp(sympy.sin(x))) == 0


def test_a_custom_function_is_one_node():
    out = trace(SigmoidByHand.apply, mark=True).output.item()
    assert isinstance(out, OpNode) and out.custom and out.op == "SigmoidByHand.apply"
    assert expand(out) == SIG


def test_constants_and_stopped_values_are_not_nodes():
    out = trace(lambda x: torch.exp(x.detach()) * x + torch.exp(torch.tensor(1.0)), mark=True).output.item()
    assert not any(isinstance(a, OpNode) and a.args == (x,) for a in sympy.preorder_traversal(out))


def test_an_unmarked_trace_has_no_nodes():
    assert not trace(torch.sigmoid).output.item().has(OpNode)


def test_marking_does_not_leak_into_the_next_trace():
    trace(torch.exp, mark=True)
    assert trace(torch.exp).output.item() == sympy.exp(x)


def test_marked_traces_in_threads_are_their_own():
    functions = [torch.sigmoid, torch.exp, torch.sin, torch.tanh] * 4
    results: list = [None] * len(functions)

    def run(k):
        tr = trace(functions[k], mark=k % 2 == 0)
        results[k] = isinstance(tr.output.item(), OpNode)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(functions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [k % 2 == 0 for k in range(len(functions))]


def test_registering_over_a_builtin_rule_warns_and_can_be_undone():
    import warnings

    import autocheck

    before = str(autocheck.derivative(torch.sinc))
    with pytest.warns(UserWarning, match=r"'sinc' has a rule of autocheck's own.*override=True"):
        registration = autocheck.register_torch_op("aten::sinc", lambda x: x)
    assert str(autocheck.derivative(torch.sinc)) == "1"
    registration.undo()
    assert str(autocheck.derivative(torch.sinc)) == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # override=True: no warning
        with autocheck.register_torch_op("aten::sinc", lambda x: 2 * x, override=True):
            assert str(autocheck.derivative(torch.sinc)) == "2"
    assert str(autocheck.derivative(torch.sinc)) == before
