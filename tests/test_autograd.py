"""The autograd side: upstream gradients, runs on fresh leaves, and gradcheck's structural
checks of the backward itself, each with its own headline."""

from __future__ import annotations

import pytest
import torch

import autocheck
from autocheck._autograd import COTANGENT_PERIOD, check_deterministic, cotangent, is_elementwise, structural_faults, vjp

F64 = torch.float64


def exact_same(a, b):
    return (a == b) | (torch.isnan(a) & torch.isnan(b))


def custom(forward, backward, *, materialize=True):
    class Custom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.set_materialize_grads(materialize)
            ctx.save_for_backward(x)
            return forward(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return backward(ctx, grad, x)

    return Custom.apply


def test_cotangent_magnitudes_are_in_half_to_nine_tenths_and_exact():
    v = cotangent((10_000,), F64, "cpu", torch.Generator().manual_seed(0))
    assert 0.5 <= float(v.abs().min()) and float(v.abs().max()) <= 0.9
    assert torch.equal(v * 64, (v * 64).round())  # k/64: exact in every dtype checked
    assert bool((v > 0).any()) and bool((v < 0).any())


def test_cotangent_is_the_same_for_the_same_seed_and_tiles_beyond_its_period():
    first = cotangent((2 * COTANGENT_PERIOD,), F64, "cpu", torch.Generator().manual_seed(3))
    second = cotangent((2 * COTANGENT_PERIOD,), F64, "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert torch.equal(first[:COTANGENT_PERIOD], first[COTANGENT_PERIOD:])


def test_vjp_leaves_the_callers_tensor_alone():
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    forward, (grad,) = vjp(lambda x: x * x, [x], 1, torch.tensor([0.5, 0.5], dtype=F64))
    assert torch.equal(grad, torch.tensor([1.0, 2.0], dtype=F64)) and x.grad is None


def test_vjp_of_an_unused_input_is_zero():
    _, (gx, gy) = vjp(lambda x, y: x * 2, [torch.ones(2, dtype=F64), torch.ones(2, dtype=F64)], 1, torch.ones(2, dtype=F64))
    assert torch.equal(gy, torch.zeros(2, dtype=F64))


def test_output_that_does_not_require_grad_is_refused():
    with pytest.raises(TypeError, match=r"does not require grad.*a constant, an integer cast"):
        vjp(lambda x: torch.ones(()), [torch.ones((), dtype=F64)], 1, torch.ones((), dtype=F64))


def test_integer_output_is_refused():
    with pytest.raises(TypeError, match=r"integer or boolean tensor that does not require grad"):
        vjp(lambda x: x.long(), [torch.ones((), dtype=F64)], 1, torch.ones((), dtype=F64))


def test_tuple_output_is_refused():
    with pytest.raises(TypeError, match=r"returned a tuple of 2 values; return a single tensor"):
        vjp(lambda x: (x, x), [torch.ones((), dtype=F64)], 1, torch.ones((), dtype=F64))


def test_elementwise_detection():
    assert is_elementwise(torch.sin, 1, F64)
    assert not is_elementwise(lambda x: x - x.mean(), 1, F64)


def test_a_random_function_is_not_deterministic():
    with pytest.raises(autocheck.NondeterministicFunction, match=r"f is not deterministic.*torch.Generator"):
        check_deterministic(lambda x: x * torch.rand(()), [torch.ones(3, dtype=F64)], "f")


def test_a_counter_is_not_deterministic():
    calls = []

    def counting(x):
        calls.append(1)
        return x * len(calls)

    with pytest.raises(autocheck.NondeterministicFunction, match="two runs on the same input gave different values"):
        check_deterministic(counting, [torch.ones(3, dtype=F64)], "counting")


def test_a_correct_custom_function_has_no_faults():
    square = custom(lambda x: x * x, lambda ctx, g, x: 2 * g * x)
    assert structural_faults(square, [torch.linspace(-1, 1, 5, dtype=F64)], torch.full((5,), 0.75, dtype=F64), exact_same) == []


def test_a_backward_that_changes_its_saved_input_is_caught_twice():
    def changes_x(ctx, g, x):
        x.mul_(2)  # in place, on the saved tensor
        return 2 * g * x

    faults = structural_faults(custom(lambda x: x * x, changes_x), [torch.linspace(-1, 1, 5, dtype=F64)],
                               torch.full((5,), 0.75, dtype=F64), exact_same)
    headlines = [f.headline for f in faults]
    assert headlines == ["backward changes a tensor saved for it in place", "backward is not reentrant"]


def test_a_backward_with_hidden_state_is_not_reentrant():
    state = {"calls": 0}

    def counting(ctx, g, x):
        state["calls"] += 1
        return g * 2 * x * state["calls"]

    (fault,) = structural_faults(custom(lambda x: x * x, counting), [torch.linspace(-1, 1, 5, dtype=F64)],
                                 torch.full((5,), 0.75, dtype=F64), exact_same)
    assert fault.headline == "backward is not reentrant" and "different gradient for input 0" in fault.detail


def test_zero_times_an_infinite_partial_is_not_a_nonzero_gradient():
    # 3 * x**2 * 0 is nan where x**2 overflows: the backward is still right.
    cube = custom(lambda x: x**3, lambda ctx, g, x: 3 * x**2 * g)
    x = torch.tensor([1e200, -2.0, 0.5], dtype=F64)
    assert structural_faults(cube, [x], torch.full((3,), 0.75, dtype=F64), exact_same) == []


def test_a_backward_that_cannot_take_an_undefined_gradient_is_caught():
    strict_backward = custom(lambda x: x * x, lambda ctx, g, x: g * 2 * x, materialize=False)
    (fault,) = structural_faults(strict_backward, [torch.linspace(-1, 1, 5, dtype=F64)],
                                 torch.full((5,), 0.75, dtype=F64), exact_same)
    assert fault.headline == "backward fails when its output gradient is undefined"
    assert "set_materialize_grads(False)" in fault.detail


def test_non_reentrant_backward_fails_the_check_with_its_own_headline():
    def changes_x(ctx, g, x):
        x.mul_(2)
        return g * torch.cos(x / 2)

    with pytest.raises(autocheck.GradientMismatch, match="Backward is not reentrant"):
        autocheck.assert_grad_matches(custom(torch.sin, changes_x), torch.linspace(-1, 1, 5, dtype=F64),
                                      reference=torch.sin, seed=0)


def test_nondeterministic_function_is_refused_before_it_is_judged():
    with pytest.raises(autocheck.NondeterministicFunction, match="is not deterministic"):
        autocheck.assert_grad_matches(lambda x: x * torch.rand(()), seed=0)
