"""Formula text -> SymPy and torch, and every way hostile text is refused without running."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
import sys
from pathlib import Path

import pytest
import sympy
import torch

import autocheck._parse as parse_module
from autocheck._parse import FUNCTIONS, MAX_SYMBOLS, ExpressionError, FunctionSpec, Parsed, parse_expression

x, y, z = sympy.symbols("x y z", real=True)


def numeric(parsed: Parsed, point: tuple[float, ...]) -> float:
    """The SymPy expression at a float point, evaluated exactly then rounded once."""
    exact = {s: sympy.Rational(v) for s, v in zip(parsed.symbols, point)}
    return float(parsed.expr.subs(exact).evalf(30))


# --- SymPy results --------------------------------------------------------------------


def test_expression_is_exact_sympy_with_real_symbols():
    assert parse_expression("x**2*exp(x)").expr == x**2 * sympy.exp(x)


def test_symbols_are_real():
    (symbol,) = parse_expression("x + 1").symbols
    assert symbol == sympy.Symbol("x", real=True)
    assert symbol.is_real


def test_text_is_kept_as_given():
    assert parse_expression(" x +  1 ").text == " x +  1 "


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.1", sympy.Rational(1, 10)), ("1e-3", sympy.Rational(1, 1000)), ("1_000.5", sympy.Rational(2001, 2)),
     (".5", sympy.Rational(1, 2)), ("2.50", sympy.Rational(5, 2)), ("-0.3", sympy.Rational(-3, 10))],
)
def test_floats_become_the_rational_they_spell(text, expected):
    result = parse_expression(text).expr
    assert result == expected
    assert isinstance(result, sympy.Rational)


@pytest.mark.parametrize(("text", "expected"), [("3", 3), ("0x1F", 31), ("1_000", 1000)])
def test_ints_become_integers(text, expected):
    result = parse_expression(text).expr
    assert result == sympy.Integer(expected)
    assert isinstance(result, sympy.Integer)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sigmoid(x)", 1 / (1 + sympy.exp(-x))),
        ("relu(x)", sympy.Max(x, 0)),
        ("softplus(x)", sympy.log(1 + sympy.exp(x))),
        ("log(x, 2)", sympy.log(x) / sympy.log(2)),
        ("log1p(x)", sympy.log(1 + x)),
        ("x // 2", sympy.floor(x / 2)),
        ("x % 3", sympy.Mod(x, 3)),
        ("e**x", sympy.exp(x)),
        ("pi*x", sympy.pi * x),
        ("hypot(x, y)", sympy.sqrt(x**2 + y**2)),
        ("clamp(x, 0, 1)", sympy.Min(sympy.Max(x, 0), 1)),
        ("max(x, y, z)", sympy.Max(x, y, z)),
        ("abs(x)", sympy.Abs(x)),
        ("lgamma(x)", sympy.loggamma(x)),
        ("sinc(x)", sympy.sinc(x)),
        ("x if x > 0 else -x", sympy.Piecewise((x, x > 0), (-x, True))),
        ("1 if 0 < x <= 1 else 0", sympy.Piecewise((1, (x > 0) & (x <= 1)), (0, True))),
        ("x if not (x < 0 or y == 1) else y", sympy.Piecewise((x, ~((x < 0) | sympy.Eq(y, 1))), (y, True))),
    ],
)
def test_sympy_result(text, expected):
    assert parse_expression(text).expr == expected


@pytest.mark.parametrize(
    ("torch_spelling", "sympy_spelling"),
    [
        ("torch.exp(x)", "exp(x)"),
        ("torch.special.expit(x)", "sigmoid(x)"),
        ("F.softplus(x)", "softplus(x)"),
        ("torch.nn.functional.softplus(x)", "log(1 + exp(x))"),
        ("torch.atan2(y, x)", "atan2(y, x)"),
        ("torch.arctan2(y, x)", "atan2(y, x)"),
        ("torch.special.gammaln(x)", "loggamma(x)"),
        ("torch.abs(x)", "Abs(x)"),
        ("torch.maximum(x, y)", "Max(x, y)"),
        ("torch.log1p(x)", "log(1 + x)"),
        ("torch.sinc(x)", "sinc(pi*x)"),
        ("torch.heaviside(x, 0.5)", "Heaviside(x)"),
        ("F.relu(x)", "Max(x, 0)"),
        ("math.pi * torch.e * x", "pi * E * x"),
    ],
)
def test_torch_spelling_equals_sympy_spelling(torch_spelling, sympy_spelling):
    assert parse_expression(torch_spelling).expr == parse_expression(sympy_spelling).expr


def test_infinite_constants_are_allowed_where_sympy_agrees():
    assert parse_expression("x + exp(-inf)").expr == x
    assert parse_expression("-inf").expr == -sympy.oo


def test_function_name_used_without_call_is_a_variable():
    assert parse_expression("gamma * x").expr == sympy.Symbol("gamma", real=True) * x


# --- symbol order ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "order"),
    [("atan2(y, x)", "y x"), ("x*y + y*z", "x y z"), ("b + a", "b a"), ("y if x > 0 else z", "y x z"),
     ("exp(b) * (a + b)", "b a")],
)
def test_symbols_in_order_of_first_appearance(text, order):
    assert [s.name for s in parse_expression(text).symbols] == order.split()


def test_at_most_max_symbols_variables():
    names = [f"v{i}" for i in range(MAX_SYMBOLS)]
    assert len(parse_expression(" + ".join(names)).symbols) == MAX_SYMBOLS
    with pytest.raises(ExpressionError, match=f"too many variables: `extra` would be number {MAX_SYMBOLS + 1}"):
        parse_expression(" + ".join([*names, "extra"]))


# --- the torch function ---------------------------------------------------------------

AGREEMENT = [
    "x**2*exp(x)",
    "0.1*x + pi*sin(y)",
    "softplus(x) * atan2(y, x)",
    "torch.special.expit(x) - F.softplus(y) / 3",
    "x if x > y else gamma(y)",
    "1 if 0 < x < 1 and not y > 1 else 0",
    "x // 0.35 + x % 0.7",
    "hypot(x, y) ** -2",
    "2 ** x + sqrt(2) * x",
    "max(x, y, 0.7) - min(x, 1)",
    "sinc(x) + torch.sinc(y)",
    "erf(x) * erfc(y) + erfinv(x - 0.5)",
    "log(x, 2) + log10(y) + log2(x)",
    "gelu(x) + silu(y) + logsigmoid(x)",
    "digamma(y) + lgamma(x)",
    "heaviside(x - 0.5) + heaviside(y - 1, 0.25) + sign(x - y)",
    "clamp(x, 0.2, 0.8) * relu(y - 1)",
    "exp(2) * x + 1/3",
]
POINTS = [(0.25, 1.5), (0.8, 0.4), (0.5, 1.0), (0.6, 2.5)]


@pytest.mark.parametrize("text", AGREEMENT)
def test_torch_function_agrees_with_sympy(text):
    parsed = parse_expression(text)
    f = parsed.as_torch_function()
    for point in POINTS:
        args = [torch.tensor(v, dtype=torch.float64) for v in point[: len(parsed.symbols)]]
        expected = numeric(parsed, point[: len(parsed.symbols)])
        torch.testing.assert_close(f(*args).item(), expected, rtol=1e-12, atol=1e-14)


def test_torch_function_gradient_matches_sympy_derivative():
    parsed = parse_expression("x**2*exp(x) + atan2(y, x)")
    xs = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64, requires_grad=True)
    ys = torch.tensor([1.0, 0.5, -0.7], dtype=torch.float64)
    gx, = torch.autograd.grad(parsed.as_torch_function()(xs, ys).sum(), xs)
    derivative = sympy.diff(parsed.expr, x)
    expected = [float(derivative.subs({x: sympy.Rational(a), y: sympy.Rational(b)}).evalf(30)) for a, b in
                zip(xs.tolist(), ys.tolist())]
    torch.testing.assert_close(gx, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_torch_function_signature_shows_symbol_names():
    f = parse_expression("atan2(y, x) + z").as_torch_function()
    assert list(inspect.signature(f).parameters) == ["y", "x", "z"]


def test_torch_function_takes_keywords_by_symbol_name():
    f = parse_expression("y - x").as_torch_function()
    assert f(x=torch.tensor(1.0), y=torch.tensor(5.0)).item() == 4.0


def test_torch_function_broadcasts_elementwise():
    f = parse_expression("x * y + 1").as_torch_function()
    out = f(torch.arange(3.0).reshape(3, 1), torch.arange(2.0))
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_function_constants_follow_input_dtype(dtype):
    f = parse_expression("exp(1) * x + 1/3").as_torch_function()
    assert f(torch.ones(2, dtype=dtype)).dtype == dtype


def test_constant_formula_gives_a_default_dtype_tensor():
    out = parse_expression("pi / 2").as_torch_function()()
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.get_default_dtype()
    assert out.item() == pytest.approx(math.pi / 2)


def test_torch_function_keeps_shape_when_sympy_cancels():
    parsed = parse_expression("x - x")
    assert parsed.expr == 0
    assert parsed.as_torch_function()(torch.ones(4)).shape == (4,)


def test_parsed_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_expression("x").text = "y"  # type: ignore[misc]


def test_parsed_built_by_hand_still_gives_a_torch_function():
    parsed = Parsed(expr=x + 1, symbols=(x,), text="x + 1")
    assert parsed.as_torch_function()(torch.tensor(2.0)).item() == 3.0


# --- the table ------------------------------------------------------------------------


def _torch_object(spelling: str):
    # The test resolves the table's own fixed strings; user text is never resolved this way.
    parts = spelling.split(".")
    obj = torch.nn.functional if parts[0] == "F" else torch
    for part in parts[1:]:
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("spelling", sorted(s for s in FUNCTIONS if "." in s))
def test_every_torch_spelling_names_a_real_torch_function(spelling):
    assert callable(_torch_object(spelling))


# acosh needs x > 1; everything else is defined at 0.6, 0.7, 0.8.
_ARGUMENTS = {"acosh": (1.6,), "torch.acosh": (1.6,), "torch.arccosh": (1.6,)}


@pytest.mark.parametrize("spelling", sorted(FUNCTIONS))
def test_every_table_row_agrees_numerically(spelling):
    fewest = FUNCTIONS[spelling].arity[0]
    point = _ARGUMENTS.get(spelling, (0.6, 0.7, 0.8)[:fewest])
    names = ["x", "y", "z"][: len(point)]
    parsed = parse_expression(f"{spelling}({', '.join(names)})")
    got = parsed.as_torch_function()(*[torch.tensor(v, dtype=torch.float64) for v in point])
    torch.testing.assert_close(got.item(), numeric(parsed, point), rtol=1e-12, atol=1e-14)


def test_the_table_can_be_extended_with_one_entry(monkeypatch):
    spec = FunctionSpec(lambda a: a**3, lambda a: a**3, (1, 1))
    monkeypatch.setitem(FUNCTIONS.maps[0], "cube", spec)
    parsed = parse_expression("cube(x)")
    assert parsed.expr == x**3
    assert parsed.as_torch_function()(torch.tensor(2.0)).item() == 8.0


# --- errors ---------------------------------------------------------------------------


def test_expression_error_is_a_value_error_shown_as_autocheck():
    assert issubclass(ExpressionError, ValueError)
    assert ExpressionError.__module__ == "autocheck"


def test_error_names_the_column_and_points_at_the_construct():
    with pytest.raises(ExpressionError) as info:
        parse_expression("x + y.__class__")
    message = str(info.value)
    assert "attribute access `y.__class__` is not allowed" in message
    assert "(at column 5)" in message
    assert "\n    x + y.__class__\n        ^^^^^^^^^^^\n" in message
    assert (info.value.lineno, info.value.column) == (1, 4)


def test_error_says_what_is_allowed():
    with pytest.raises(ExpressionError, match=r"A formula may use numbers, variable names"):
        parse_expression("x[0]")


def test_error_column_counts_characters_not_bytes():
    with pytest.raises(ExpressionError, match=r"at column 6") as info:
        parse_expression("αβ + x.__class__")
    assert info.value.column == 5


def test_error_on_a_later_line_names_the_line():
    with pytest.raises(ExpressionError, match=r"at line 2, column 2\)\n     y\[0\]\)\n     \^\^\^\^"):
        parse_expression("(x +\n y[0])")


def test_syntax_error_has_message_and_caret():
    with pytest.raises(ExpressionError, match=r"invalid syntax: '\(' was never closed \(at column 1\)\n    \(x \+ 1\n    \^\n"):
        parse_expression("(x + 1")


def test_unknown_function_suggests_a_close_spelling():
    with pytest.raises(ExpressionError, match=r"(?s)unknown function `expp`.*\nDid you mean exp or"):
        parse_expression("expp(x)")


def test_wrong_number_of_arguments_is_named():
    with pytest.raises(ExpressionError, match=r"atan2\(\) takes 2 arguments but 1 was given"):
        parse_expression("atan2(x)")


def test_max_depth_bounds_nesting():
    assert parse_expression("exp(exp(x))", max_depth=3).expr == sympy.exp(sympy.exp(x))
    with pytest.raises(ExpressionError, match=r"nested more than max_depth=2 levels deep"):
        parse_expression("exp(exp(x))", max_depth=2)


def test_max_length_is_checked_before_parsing():
    with pytest.raises(ExpressionError, match=r"the formula is 11 characters long \(up to max_length=10 allowed\)"):
        parse_expression("x + 1 +   (", max_length=10)


def test_text_must_be_a_string():
    with pytest.raises(TypeError, match=r"Expected the formula as str but got text=3"):
        parse_expression(3)  # type: ignore[arg-type]


HOSTILE = [
    ("__import__('os').system('touch X')", "calling `__import__('os').system` is not allowed"),
    ("__import__('os')", "unknown function `__import__`"),
    ("().__class__.__bases__", "attribute access `().__class__.__bases__`"),
    ("().__class__.__bases__[0].__subclasses__()", "calling"),
    ("x.__class__", "attribute access `x.__class__`"),
    ("x.exp()", "method calls such as x.exp"),
    ("torch.os.system('touch X')", "unknown function `torch.os.system`"),
    ("(lambda: __import__('os').system('touch X'))()", "calling `lambda: __import__('os').system('touc...` is not allowed"),
    ("lambda: 1", "lambda `lambda: 1` is not allowed"),
    ("[__import__('os').system('touch X') for _ in 'a']", "list comprehension"),
    ("{x for x in y}", "set comprehension"),
    ("{x: 1 for x in y}", "dict comprehension"),
    ("sum(__import__('os').system('touch X') for _ in 'a')", "unknown function `sum`"),
    ("(__import__('os').system('touch X') for _ in 'a')", "generator expression"),
    ("f\"{__import__('os').system('touch X')}\"", "f-string"),
    ("'touch X'", "string literal"),
    ("b'x'", "bytes literal"),
    ("x[0]", "subscript `x[0]`"),
    ("open('X', 'w')", "unknown function `open`"),
    ("eval(\"__import__('os').system('touch X')\")", "unknown function `eval`"),
    ("exec('1')", "unknown function `exec`"),
    ("(y := __import__('os').system('touch X'))", "assignment expression (:=)"),
    ("exp(x=1)", "keyword argument `x=1` in a call of exp"),
    ("F.softplus(x, beta=2)", "keyword argument `beta=2`"),
    ("exp(**d)", "keyword argument `**d`"),
    ("exp(*x)", "starred argument"),
    ("[x, y]", "list `"),
    ("(x, y)", "tuple `"),
    ("x ^ 2", "`^` (bitwise xor; write ** for a power)"),
    ("x @ y", "`@`"),
    ("~x", "`~`"),
    ("x < 1", "comparisons may only be the condition"),
    ("x and y", "and/or may only join comparisons"),
    ("x if x else y", "is not a condition"),
    ("x if x is y else y", "comparison `x is y` is not allowed"),
    ("True", "boolean literal"),
    ("None", "None literal"),
    ("1j", "complex number literal"),
    ("I * x", "name `I` is reserved"),
    ("torch", "name `torch` is reserved"),
    ("_x + 1", "names starting with '_' are reserved"),
    ("__builtins__", "names starting with '_' are reserved"),
    ("exp(x, y)", "exp() takes 1 argument but 2 were given"),
    ("1e400", "float literal `1e400` is outside float64's range"),
    ("1e-400", "float literal `1e-400` is outside float64's range"),
    ("1" + "0" * 400, "is outside float64's range"),
    ("9**9**9**9", "constant power `9**9**9` is too large: its exact value would have about 3.7e+08 digits"),
    ("10**10**10", "constant power `10**10**10` is too large"),
    ("2**2**2**2**2", "is too large"),
    ("sqrt(2)**100000", "is too large"),
    ("(3*x)**100000", "is too large"),
    ("x * 10**300 * 10**300", "is too large: about 600 digits"),
    ("gamma(10**6)", "`gamma(10**6)` would be evaluated exactly"),
    ("floor(10**300 / log(3))", "`floor(10**300 / log(3))` needs the integer part of a constant of about 9.1e+299"),
    ("x + (10**300 * pi) // 1", "needs the integer part"),
    ("(10**300 * log(3)) % 7", "needs the integer part"),
    ("digamma(10**9 / 7)", "would be evaluated exactly"),
    ("1/0", "`1/0` is undefined (SymPy gives zoo)"),
    ("exp(exp(exp(100)))", "`exp(exp(100))` overflows float64 (torch computes inf)"),
    ("2**1000 * 2**100", "`2**1000 * 2**100` overflows float64"),
    ("x * asin(2)", "`asin(2)` is not a real number: float64 gives nan"),
    ("inf - inf", "is undefined"),
    ("sqrt(-1) * x", "`sqrt(-1)` is not real"),
    ("x" + " + x" * 60, "nested more than max_depth=50"),
    ("(" * 10000 + "x" + ")" * 10000, "characters long"),
    ("-" * 100000 + "x", "characters long"),
    ("x + " * 5000 + "x", "characters long"),
    ("2x", "invalid syntax"),
    ("x = 1", "invalid syntax"),
    ("import os", "invalid syntax"),
    ("x\0", "null bytes"),
    ("", "the formula is empty"),
]


@pytest.mark.parametrize(("text", "fragment"), HOSTILE, ids=[t[:40] for t, _ in HOSTILE])
def test_hostile_text_is_refused_without_running(text, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExpressionError, match=re.escape(fragment)):
        parse_expression(text)
    assert not (tmp_path / "X").exists()


@pytest.mark.parametrize("text", ["torch.exp2(2**1000)", "pow(2, 10**300)", "torch.pow(x, 9**9**9)", "square(9**9**9)"])
def test_powers_inside_functions_are_bounded_too(text):
    with pytest.raises(ExpressionError, match="is too large"):
        parse_expression(text)


@pytest.mark.skip(
    reason="known gap: SymPy's sign test of 3**(1/10**300) - 1 can run in C code that the time budget cannot "
    "interrupt; it crashed a 2-core CI worker. Needs a parser-side guard on such constants."
)
def test_slow_sympy_evaluation_is_cut_off(monkeypatch):
    # SymPy decides the sign of 3**(1/10**300) - 1 from its minimal polynomial, of degree 10**300.
    monkeypatch.setattr(parse_module, "MAX_BUILD_SECONDS", 0.2)
    with pytest.raises(ExpressionError, match=r"building `Abs\(3\*\*1e-300 - 1\)` in SymPy took longer than 0.2 s \(MAX_BUILD_SECONDS\)"):
        parse_expression("x + Abs(3**1e-300 - 1)")


def test_time_budget_leaves_a_running_profiler_in_place():
    def profiler(frame, event, arg):
        return None

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        parse_expression("exp(x)")
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(previous)


def test_time_budget_removes_its_hook():
    if sys.getprofile() is not None:
        pytest.skip("a profiler is running")
    parse_expression("exp(x)")
    assert sys.getprofile() is None


@pytest.mark.parametrize(
    "text", ["(" * 10000 + "x" + ")" * 10000, "-" * 100000 + "x", "x+" * 100000 + "x", "x**" * 3000 + "x"]
)
def test_parser_limits_become_expression_errors(text):
    with pytest.raises(ExpressionError, match="nested"):
        parse_expression(text, max_length=10**6, max_depth=10**6)


def test_the_module_never_evaluates_text():
    source = Path(__import__("autocheck._parse", fromlist=["_"]).__file__).read_text()
    called = {
        node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
    }
    assert not called & {"eval", "exec", "compile", "sympify", "parse_expr", "__import__", "import_module", "S"}
    getattr_names = [
        node.args[1]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
    ]
    assert all(isinstance(name, ast.Constant) and isinstance(name.value, str) for name in getattr_names)
