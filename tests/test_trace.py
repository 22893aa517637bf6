"""Stage 1, tracing: symbol names, exact constants, registering rules, and every way a trace
can fail, each with the message a user sees."""

from __future__ import annotations

import math
import traceback

import numpy as np
import pytest
import sympy
import torch
import torch.nn.functional as F

import autocheck
from autocheck import TraceError
from autocheck._trace import TORCH_TO_SYMPY, trace

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
        pytest.param(lambda x: x * torch.tensor(0.1), x / 10, id="created-inside"),
        pytest.param(lambda x: math.pi * x, sympy.pi * x, id="math.pi"),
        pytest.param(lambda x: x * math.sqrt(2), sympy.sqrt(2) * x, id="math.sqrt(2)"),
    ],
)
def test_floats_become_the_exact_numbers_written(f, expected):
    assert trace(f).output.item() == expected


def test_float32_constant_keeps_its_float32_value():
    tr = trace(lambda x: x * torch.tensor(0.1, dtype=torch.float32))
    assert tr.output.item() == x * sympy.Rational(repr(float(np.float32(0.1))))


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
    autocheck.register_torch_op("aten::exp", np.vectorize(lambda v: 2**v, otypes=[object]))
    assert trace(torch.exp).output.item() == 2**x


@pytest.mark.parametrize("op", ["prims::sum", torch.ops.prims.sum.default], ids=["name", "overload"])
def test_register_torch_op_for_a_prims_operator_is_used_by_the_trace(restore_rules, op):
    # layer_norm's decomposition sums with prims.sum; a registered rule must take its place.
    def rule(a, dims, output_dtype=None):
        raise TraceError("the registered prims.sum rule ran")

    autocheck.register_torch_op(op, rule)
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
        pytest.param(lambda x: x * 1j, (), r"complex numbers are not supported yet", id="complex-scalar"),
        pytest.param(lambda x: (x @ torch.ones(2, 2, dtype=torch.complex128)).sum(), (V2,), r"complex tensors are not supported yet", id="complex-in-matmul"),
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
