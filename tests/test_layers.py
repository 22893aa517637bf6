"""Layers at real sizes: functions of more than 100 coupled elements are checked by
directional derivatives (forward mode over the operations they run), and a wrong element
is located by bisection and named."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import autocheck

F64 = torch.float64


def randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class LayerNormNoAffine(torch.autograd.Function):
    """A hand-written layer norm over the last dimension; ``wrong`` multiplies one gradient
    element by 1.001."""

    wrong: tuple[int, int] | None = None

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = x.std(-1, unbiased=False, keepdim=True)
        y = (x - x.mean(-1, keepdim=True)) / s
        gx = (g - g.mean(-1, keepdim=True) - y * (g * y).mean(-1, keepdim=True)) / s
        if LayerNormNoAffine.wrong is not None:
            gx[LayerNormNoAffine.wrong] *= 1.001
        return gx


@pytest.fixture
def wrong_element():
    LayerNormNoAffine.wrong = (3, 1000)
    yield
    LayerNormNoAffine.wrong = None


def test_layer_norm_over_4096_features_matches():
    x, w, b = randn(8, 4096), randn(4096, seed=1), randn(4096, seed=2)
    report = autocheck.assert_grad_matches(lambda x, w, b: F.layer_norm(x, (4096,), w, b), x, w, b, seed=0)
    assert report.checked == 8 * 4096 + 2 * 4096
    assert "forward mode" in report.formula


def test_a_wrong_element_of_a_large_gradient_is_located(wrong_element):
    report = autocheck.check_grad(LayerNormNoAffine.apply, randn(8, 4096), seed=0)
    assert not report.ok
    worst = report.worst[0]
    assert worst.failed and worst.where == "d/dx" and worst.index == (3, 1000)
    assert worst.rel_error == pytest.approx(1e-3, rel=1e-6)
    assert "d/dx[3, 1000]" in str(report)
    assert report.failed == 1 and report.failed_at_least
    assert "Mismatched elements: at least 1 / 32768 (0.0%)" in str(report)
    assert ("located by bisection from a failing direction (the worst, up to 5 of them); 1 of 64 blocks of the "
            "inputs (up to 512 elements each) hold a wrong element: the count of mismatched elements is a lower "
            "bound") in str(report)


def test_a_gradient_wrong_everywhere_is_counted_by_blocks():
    class MeanMissingOneOverN(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.mean(-1)

        @staticmethod
        def backward(ctx, grad):
            return grad.unsqueeze(-1).expand(8, 512).clone()  # the 1/N is missing

    report = autocheck.check_grad(MeanMissingOneOverN.apply, randn(8, 512), seed=0)
    assert report.failed == 64 and report.failed_at_least and len(report.worst) == 5
    assert "Mismatched elements: at least 64 / 4096" in str(report)
    assert "64 of 64 blocks of the inputs (up to 64 elements each) hold a wrong element" in str(report)
    assert report.to_dict()["failed_at_least"] is True


def test_a_small_function_of_directions_counts_every_wrong_element():
    class DoubledAtTwo(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return (x * x).sum()

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            g = 2 * x * grad
            g[2] *= 2
            g[40] *= 2
            return g

    def f(x):  # torch.sort has no symbolic form: 60 elements are checked along directions
        return DoubledAtTwo.apply(x) + torch.sort(x).values.sum()

    report = autocheck.check_grad(f, randn(60), seed=0)
    assert report.formula.startswith("<v, J u> along random directions")
    assert report.failed == 2 and not report.failed_at_least
    assert "Mismatched elements: 2 / 60" in str(report)
    assert "2 of 60 blocks of the inputs (one element each) hold a wrong element" in str(report)
    assert {row.index for row in report.worst if row.failed} == {(2,), (40,)}


def layer_norm_cubed(x):
    return F.layer_norm(x, (300,)).pow(3).sum()


NEAR_A_MILLION = 1e6 + torch.rand(300, dtype=F64, generator=torch.Generator().manual_seed(0))


def test_rounding_in_the_values_is_not_called_a_mismatch(monkeypatch):
    # x - mean(x) near 1e6 keeps about 6 digits fewer: a correct autograd is off by ~5e-10
    # relative (mpmath at 60 digits: <x.grad, u> -207.519581532, exact -207.519581418)
    assert autocheck.check_grad(layer_norm_cubed, NEAR_A_MILLION, seed=0).ok
    from autocheck import _judge

    monkeypatch.setattr(_judge, "JITTERED", 0)  # without the jittered runs it would be a false alarm
    assert not autocheck.check_grad(layer_norm_cubed, NEAR_A_MILLION, seed=0).ok


def test_a_small_bug_is_found_where_values_lose_digits():
    class Off(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * (1 + 1e-6)

    report = autocheck.check_grad(lambda x: layer_norm_cubed(Off.apply(x)), NEAR_A_MILLION, seed=0)
    assert not report.ok and report.worst[0].rel_error == pytest.approx(1e-6, rel=1e-2)


def test_a_correct_hand_written_layer_norm_matches():
    report = autocheck.check_grad(LayerNormNoAffine.apply, randn(8, 4096), seed=0)
    assert report.ok and report.checked == 8 * 4096


def test_attention_matches():
    q, k, v = (randn(2, 8, 64, 32, seed=s) for s in range(3))
    report = autocheck.assert_grad_matches(F.scaled_dot_product_attention, q, k, v, seed=0)
    assert report.checked == 3 * 2 * 8 * 64 * 32


class CausalAttention(torch.autograd.Function):
    """Causal attention with a hand-written backward whose mask leaves out the diagonal when ``wrong``."""

    wrong = False

    @staticmethod
    def forward(ctx, q, k, v):
        t = q.shape[-2]
        keep = torch.ones(t, t, dtype=torch.bool).tril()
        w = torch.softmax((q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).masked_fill(~keep, float("-inf")), -1)
        ctx.save_for_backward(q, k, v, w)
        return w @ v

    @staticmethod
    def backward(ctx, g):
        q, k, v, w = ctx.saved_tensors
        t = q.shape[-2]
        keep = torch.ones(t, t, dtype=torch.bool).tril(-1 if CausalAttention.wrong else 0)
        gv = w.transpose(-2, -1) @ g
        gw = g @ v.transpose(-2, -1)
        gs = (w * (gw - (gw * w).sum(-1, keepdim=True))).masked_fill(~keep, 0.0) / q.shape[-1] ** 0.5
        return gs @ k, gs.transpose(-2, -1) @ q, gv


def test_a_wrong_attention_mask_in_backward_is_found():
    q, k, v = (randn(2, 2, 16, 8, seed=s) for s in range(3))
    assert autocheck.check_grad(CausalAttention.apply, q, k, v, seed=0).ok
    CausalAttention.wrong = True
    try:
        report = autocheck.check_grad(CausalAttention.apply, q, k, v, seed=0)
    finally:
        CausalAttention.wrong = False
    assert not report.ok and report.worst[0].failed and report.worst[0].where in ("d/dx", "d/dy")  # apply takes *args: x, y, z


def test_conv2d_matches():
    x, w, b = randn(2, 3, 32, 32), randn(8, 3, 3, 3, seed=1), randn(8, seed=2)
    report = autocheck.assert_grad_matches(lambda x, w, b: F.conv2d(x, w, b, padding=1), x, w, b, seed=0)
    assert report.checked == 2 * 3 * 32 * 32 + 8 * 3 * 3 * 3 + 8


TARGETS = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6] * 4)


class MeanCrossEntropy(torch.autograd.Function):
    """Cross-entropy averaged over the batch; ``forget_mean`` drops the 1/N in backward."""

    forget_mean = False

    @staticmethod
    def forward(ctx, logits):
        p = torch.softmax(logits, -1)
        ctx.save_for_backward(p)
        return -torch.log(p.gather(1, TARGETS[:, None])).mean()

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved_tensors
        grad = p - F.one_hot(TARGETS, p.shape[1]).to(p.dtype)
        return g * (grad if MeanCrossEntropy.forget_mean else grad / p.shape[0])


def test_cross_entropy_matches_with_label_smoothing():
    report = autocheck.assert_grad_matches(
        lambda x: F.cross_entropy(x, TARGETS, label_smoothing=0.1), randn(32, 10), seed=0
    )
    assert report.checked == 320


def test_a_missing_mean_in_backward_is_found():
    assert autocheck.check_grad(MeanCrossEntropy.apply, randn(32, 10), seed=0).ok
    MeanCrossEntropy.forget_mean = True
    try:
        report = autocheck.check_grad(MeanCrossEntropy.apply, randn(32, 10), seed=0)
    finally:
        MeanCrossEntropy.forget_mean = False
    worst = report.worst[0]
    assert not report.ok and worst.failed and worst.autograd == pytest.approx(32 * worst.expected)


@pytest.mark.parametrize("make, inputs", [
    (lambda: nn.Linear(20, 8), lambda: (randn(4, 20),)),
    (lambda: nn.Conv2d(3, 8, 3, padding=1), lambda: (randn(2, 3, 16, 16),)),
    (lambda: nn.LayerNorm(64), lambda: (randn(4, 64),)),
    (lambda: nn.MultiheadAttention(16, 4, batch_first=True), lambda: (randn(2, 5, 16),) * 3),
    (lambda: nn.GRUCell(10, 12), lambda: (randn(3, 10),)),
    (lambda: nn.Embedding(30, 8), lambda: (torch.tensor([[1, 2, 29], [4, 4, 0]]),)),
], ids=["Linear", "Conv2d", "LayerNorm", "MultiheadAttention", "GRUCell", "Embedding"])
def test_modules_match_for_inputs_and_every_parameter(make, inputs):
    torch.manual_seed(0)
    module = make().double()
    args = inputs()
    report = autocheck.assert_module_grads(module, *args, seed=0)
    floating = sum(a.numel() for a in args if a.is_floating_point())
    assert report.checked == floating + sum(p.numel() for p in module.parameters())


class TransposedWeightGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w, x.t() @ g  # the weight's gradient is (g.t() @ x): this one is its transpose


class MyLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(randn(6, 6, seed=5))

    def forward(self, x):
        return TransposedWeightGrad.apply(x, self.weight)


def test_a_transposed_weight_gradient_is_named_by_parameter():
    report = autocheck.check_module(MyLinear(), randn(5, 6), seed=0)
    assert not report.ok
    assert all(row.where == "d/dweight" for row in report.worst if row.failed)
    assert "d/dweight[" in str(report)
    assert report.reproduce.startswith("autocheck.assert_module_grads(module, torch.tensor([[")
    assert report.reproduce.endswith("], dtype=torch.float64), dtype=torch.float64, device='cpu', seed=0)")
    with pytest.raises(autocheck.GradientMismatch, match=r"d/dweight\["):
        autocheck.assert_module_grads(MyLinear(), randn(5, 6), seed=0)


class MlpLoss(nn.Module):
    """cross_entropy of a 784-64-10 MLP (float64, seeded) on a batch of 8, parameters included."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)).double()

    def forward(self, x):
        return F.cross_entropy(self.model(x), TARGETS[:8])


def test_mlp_loss_with_parameters_matches():
    report = autocheck.assert_module_grads(MlpLoss(), randn(8, 784), seed=0)
    assert report.checked == 8 * 784 + 784 * 64 + 64 + 64 * 10 + 10


@pytest.mark.parametrize("f, inputs", [
    (torch.linalg.det, (randn(11, 11) + 4 * torch.eye(11, dtype=F64),)),
    (torch.linalg.inv, (randn(11, 11) + 4 * torch.eye(11, dtype=F64),)),
    (torch.linalg.solve, (randn(11, 11) + 4 * torch.eye(11, dtype=F64), randn(11, 3, seed=1))),
    (lambda x: x.topk(5, dim=1).values, (randn(20, 30),)),
    (lambda x: torch.sort(x, dim=-1).values.cumsum(-1), (randn(20, 30),)),
    (lambda x: x.cumprod(1), (randn(20, 30),)),
    (lambda x: F.max_pool2d(x, 2), (randn(2, 3, 10, 10),)),
    (lambda x: F.adaptive_avg_pool2d(x, 3), (randn(2, 3, 10, 10),)),
    (lambda x: F.group_norm(x, 2), (randn(2, 4, 5, 5),)),
    (lambda w: F.embedding(torch.tensor([1, 3, 3, 7]), w), (randn(30, 4),)),
    (lambda x: torch.zeros(300, dtype=F64).index_put((torch.arange(200) + 50,), x), (randn(200),)),
    (lambda x: x.masked_fill(x > 0, 0.5).logsumexp(0), (randn(200),)),
    (lambda a, b: torch.einsum("ij,jk->ik", a, b), (randn(15, 8), randn(8, 14, seed=1))),
    (lambda x: torch.linalg.norm(x, dim=1), (randn(20, 30),)),
], ids=["det", "inv", "solve", "topk", "sort", "cumprod", "max_pool2d", "adaptive_avg_pool2d", "group_norm",
        "embedding", "index_put", "masked_fill", "einsum", "linalg.norm"])
def test_layer_operations_match(f, inputs):
    report = autocheck.assert_grad_matches(f, *inputs, seed=0)
    assert report.checked == sum(x.numel() for x in inputs)


def test_float32_layers_are_judged_against_a_float64_reference():
    report = autocheck.assert_grad_matches(lambda x: F.layer_norm(x, (300,)), randn(2, 300, dtype=torch.float32), seed=0)
    assert report.dtype == "float32" and report.checked == 600


def test_an_operator_without_a_rule_is_named():
    with pytest.raises(autocheck.TraceError, match=r"special_airy_ai.*autocheck.register_torch_op"):
        autocheck.check_grad(lambda x: torch.special.airy_ai(x).sum() * x.sum(), randn(200), seed=0)


def test_second_derivatives_of_large_tensor_functions_match():
    x, w = randn(4, 300), randn(300, seed=1)
    report = autocheck.assert_grad_matches(lambda x, w: F.layer_norm(x, (300,), w).tanh(), x, w, order=2, seed=0)
    assert report.order == 2 and report.checked == 4 * 300 + 300 and "Hessian" in report.formula


class SavedSoftmax(torch.autograd.Function):
    """softmax over the last dimension, saving its output for a hand-written backward."""

    @staticmethod
    def forward(ctx, x):
        y = torch.softmax(x, -1)
        ctx.save_for_backward(y)
        return y


class DetachedBackward(SavedSoftmax):
    """A backward that is right but not differentiable: it detaches the saved output, so a
    second backward sees a constant."""

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        y = y.detach()
        return y * (g - (g * y).sum(-1, keepdim=True))


def test_a_backward_that_is_not_differentiable_fails_at_order_2():
    x = randn(6, 50)
    assert autocheck.check_grad(DetachedBackward.apply, x, seed=0).ok
    report = autocheck.check_grad(DetachedBackward.apply, x, order=2, seed=0)
    assert not report.ok and report.worst[0].failed and report.worst[0].where == "d²/dx·"


def test_the_callers_tensors_are_left_alone():
    x = randn(8, 64)
    before = x.clone()
    assert autocheck.check_grad(lambda x: (x * 1).mul_(2).softmax(-1), x, seed=0).ok
    assert torch.equal(x, before) and x.grad is None


def test_a_slow_symbolic_jacobian_gives_way_to_directional_derivatives(monkeypatch):
    from autocheck import _check

    monkeypatch.setattr(_check, "SYMBOLIC_SECONDS", 0.01)
    report = autocheck.assert_grad_matches(lambda x: x.std(), randn(5, 5), seed=0)
    assert report.checked == 25 and "forward mode" in report.formula


def test_small_tensors_are_still_checked_element_by_element():
    report = autocheck.assert_grad_matches(lambda x: x.std(), randn(5), seed=0)
    assert report.checked == 5 and report.formula.startswith("d/dx[0] = ")


class DominantSoftmax(SavedSoftmax):
    """A backward that drops the gradient wherever one entry holds more than 0.999."""

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return torch.where(y > 0.999, 0.0, y * (g - (g * y).sum(-1, keepdim=True)))


def test_drawn_logits_and_integer_targets_are_searched():
    report = autocheck.assert_grad_matches(
        F.cross_entropy, autocheck.Drawn((4, 3)), autocheck.Drawn((4,), integers=(0, 3)), seed=0
    )
    assert report.checked == 12 * 12
    assert "Inputs drawn 12 times (shapes (4, 3), (4,))" in str(report)


def test_a_bug_in_a_region_of_drawn_tensors_is_found_and_shrunk_whole():
    report = autocheck.check_grad(DominantSoftmax.apply, autocheck.Drawn((3, 40)), seed=0)
    assert not report.ok
    (x,) = report.counterexample
    assert x.shape == (3, 40)
    assert (x == 1.0).sum() == 3 * 40 - 1 and x.max() == 30.0  # every element simplified but the dominant one
    assert "  x = torch.tensor([[1.0, 1.0," in str(report)
    assert report.reproduce == "autocheck.assert_grad_matches(f, x, seed=0)"


def test_the_same_seed_draws_the_same_tensors():
    # No deadline: how far a search gets in 5 s depends on the machine's load, not on the seed
    first = autocheck.check_grad(DominantSoftmax.apply, autocheck.Drawn((3, 40)), seed=0, deadline=None)
    second = autocheck.check_grad(DominantSoftmax.apply, autocheck.Drawn((3, 40)), seed=0, deadline=None)
    assert str(first) == str(second)


def test_drawn_inputs_within_bounds_and_fixed_tensors():
    w = randn(5)
    seen = []

    def f(x, w):
        seen.append(x.detach().clone())
        return (x.log() * w).sum(-1)

    autocheck.assert_grad_matches(f, autocheck.Drawn((6, 5), low=0.5, high=2.0), w, seed=0, examples=3)
    assert all(bool(((s >= 0.5) & (s <= 2.0)).all()) for s in seen)


@pytest.mark.parametrize("kwargs, message", [
    ({"shape": (2, -1)}, "shape must be a tuple of non-negative ints"),
    ({"shape": (2,), "low": 1.0}, "give both low and high"),
    ({"shape": (2,), "low": 2.0, "high": 1.0}, "low < high"),
    ({"shape": (2,), "integers": (3, 3)}, "integers must be"),
])
def test_drawn_rejects_bad_arguments(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        autocheck.Drawn(**kwargs)


UNIQUE_ROWS = torch.randperm(30, generator=torch.Generator().manual_seed(1))[:20, None].expand(20, 2)


@pytest.mark.parametrize("f, inputs", [
    (lambda x, w: F.conv1d(x, w, stride=2, dilation=2, groups=2, padding=1), (randn(2, 4, 30), randn(6, 2, 3, seed=1))),
    (lambda x, w, b: F.conv3d(x, w, b, padding=1), (randn(1, 2, 6, 6, 6), randn(3, 2, 3, 3, 3, seed=1), randn(3, seed=2))),
    (lambda x, w: F.conv_transpose2d(x, w, stride=2), (randn(1, 3, 6, 6), randn(3, 2, 3, 3, seed=1))),
    (lambda x, w: F.rms_norm(x, (64,), w), (randn(4, 64), randn(64, seed=1))),
    (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), (randn(8, 4, 5), randn(4, seed=1), randn(4, seed=2))),
    (lambda x, s: x.scatter(0, UNIQUE_ROWS, s), (randn(30, 2), randn(20, 2, seed=1))),
    (lambda x: torch.zeros(5, 3, dtype=F64).scatter_add(0, torch.arange(120).reshape(40, 3) % 5, x), (randn(40, 3),)),
    (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), (randn(1, 2, 8, 8),)),
    (lambda x: F.pad(x, (2, 2), mode="reflect"), (randn(2, 3, 30),)),
    (lambda x: F.pad(x, (2, 2), value=1.5), (randn(2, 3, 30),)),
    (lambda x, t: F.binary_cross_entropy_with_logits(x, t), (randn(10, 12), randn(10, 12, seed=1).sigmoid())),
    (lambda x, t: F.huber_loss(x, t), (randn(10, 12), randn(10, 12, seed=1))),
    (lambda a, b: torch.cdist(a, b), (randn(10, 3), randn(12, 3, seed=1))),
    (lambda x: torch.linalg.cholesky(x @ x.T + 11 * torch.eye(11, dtype=F64)), (randn(11, 11),)),
    (lambda x: torch.linalg.slogdet(x).logabsdet, (randn(11, 11),)),
    (lambda x: torch.linalg.matrix_exp(x), (randn(11, 11) * 0.1,)),
    (lambda x: x.median(1).values + x.kthvalue(3, 1).values, (randn(10, 13),)),
], ids=["conv1d-stride-dilation-groups", "conv3d", "conv_transpose2d", "rms_norm", "batch_norm-train", "scatter",
        "scatter_add", "interpolate", "reflection_pad", "constant_pad", "bce_with_logits", "huber", "cdist",
        "cholesky", "slogdet", "matrix_exp", "median-kthvalue"])
def test_more_layer_operations_match(f, inputs):
    report = autocheck.assert_grad_matches(f, *inputs, seed=0)
    assert report.checked == sum(x.numel() for x in inputs)


def test_an_operator_the_tracer_lacks_is_checked_by_directional_derivatives():
    # scatter has no symbolic rule; at 100 elements the check goes the directional way
    report = autocheck.assert_grad_matches(lambda x, s: x.scatter(0, UNIQUE_ROWS, s), randn(30, 2), randn(20, 2), seed=0)
    assert report.checked == 100 and "forward mode" in report.formula


def test_kinks_on_the_way_are_accepted_and_a_wrong_value_there_is_not():
    x = randn(20, 30)
    x[x.abs() < 0.5] = 0.0  # many elements exactly at relu's and clamp's kinks
    assert autocheck.check_grad(lambda x: F.relu(x).sum(1), x, seed=0).ok
    assert autocheck.check_grad(lambda x: x.clamp(min=0).sum(0), x, seed=0).ok
    assert autocheck.check_grad(lambda x: F.hardtanh(x, 0.0, 1.0).sum(0), x, seed=0).ok

    class TwoAtZero(torch.autograd.Function):  # relu whose derivative at 0 is 2: outside [0, 1]
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.where(x > 0, 1.0, torch.where(x == 0, 2.0, 0.0))

    assert not autocheck.check_grad(lambda x: TwoAtZero.apply(x).sum(1), x, seed=0).ok


def test_a_relu_network_with_zero_rows_matches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    model[0].bias.data.zero_()
    x = torch.zeros(8, 16, dtype=F64)
    x[:4] = randn(4, 16)
    assert autocheck.check_module(model, x, seed=0).ok


def test_constants_written_by_an_operation_have_no_derivative():
    x = randn(20, 30)
    assert autocheck.check_grad(lambda x: x.scatter(1, torch.zeros(20, 1, dtype=torch.long), 2.0), x, seed=0).ok
    weight = randn(50, 8)
    ids = torch.tensor([[0, 3, 0, 7]] * 5)
    assert autocheck.check_grad(lambda w: F.embedding(ids, w, padding_idx=0), weight, seed=0).ok


def test_a_forward_outside_torch_is_a_clear_error():
    import numpy as np

    class NumpySin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.from_numpy(np.sin(x.detach().numpy()))

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.cos(x)

    with pytest.raises(autocheck.TraceError, match=r"computes its forward outside torch \(numpy"):
        autocheck.check_grad(lambda x: NumpySin.apply(x).cumsum(1), randn(20, 30), seed=0)


def test_batch_norm_in_training_mode_matches_and_its_buffers_are_left_alone():
    module = nn.BatchNorm1d(30).double()
    before = module.running_mean.clone()
    assert autocheck.check_module(module, randn(20, 30), seed=0).ok
    assert torch.equal(module.running_mean, before)


def test_solve_broadcasts_its_right_hand_side():
    a = randn(10, 4, 4) + 3 * torch.eye(4, dtype=F64)
    assert autocheck.check_grad(torch.linalg.solve, a, randn(4, seed=1), seed=0).ok
    assert autocheck.check_grad(torch.linalg.solve, a, randn(4, 3, seed=1), seed=0).ok


def test_a_write_through_a_view_is_a_clear_error():
    def f(x):
        y = x * 2
        y[:, 0] *= 3
        return y

    with pytest.raises(autocheck.TraceError, match=r"write through a view .* out of place"):
        autocheck.check_grad(f, randn(20, 30), seed=0)


def test_one_wrong_element_among_many_float32_ones_is_found():
    class RunningSinSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.sin().cumsum(1)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            out = g.flip(1).cumsum(1).flip(1) * x.cos()
            out.view(-1)[17] *= 0
            return out

    report = autocheck.check_grad(RunningSinSum.apply, randn(100, 300, dtype=torch.float32), seed=0)
    assert not report.ok and report.worst[0].index == (0, 17)


def test_the_numbers_docs_layers_states():
    from autocheck import _check, _judge, _report

    assert (_judge.DIRECTIONS, _judge.LOCATED, _judge.KINK_BLOCKS) == (4, 5, 64)
    assert (_check.SYMBOLIC_SECONDS, _check.DRAWN_EXAMPLES, _report.LITERAL_ELEMENTS) == (5.0, 12, 64)
    from autocheck import _dual

    assert (_judge.PRECISE_ELEMENTS, _judge.PRECISE_SECONDS, _dual.PRECISION, _dual.RESOLUTION_BITS) == (4096, 30.0, 200, 64)


def test_a_float32_leg_inside_a_float64_function_gets_float32_rounding():
    report = autocheck.assert_grad_matches(lambda x: (x.float().sin().double() * x).cumsum(1), randn(20, 30), seed=0)
    assert report.checked == 600 and "forward mode" in report.formula


# Where float64 forward mode overflows on the way to a finite derivative: sqrt's derivative at
# 5e-324 is 2.2e161, times 1e150 is beyond float64, while 1e-200 later the derivative is about
# 1e111. Autograd, which multiplies from the output back, stays in range.
SUBNORMAL_HALF = torch.ones(200, dtype=F64)
SUBNORMAL_HALF[::2] = 5e-324


def scaled_sqrt_times_sum(x, sqrt=torch.sqrt):
    return sqrt(x) * 1e150 * 1e-200 * x.sum()


class QuarterSqrt(torch.autograd.Function):
    """sqrt, with a backward half the right size."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / (4 * torch.sqrt(x))


def test_a_derivative_float64_forward_mode_overflows_on_is_judged_in_arbitrary_precision():
    report = autocheck.assert_grad_matches(scaled_sqrt_times_sum, SUBNORMAL_HALF, seed=0)
    assert report.checked == 200
    assert "Exact values in arbitrary precision: float64 forward mode overflowed" in str(report)
    assert not any("arbitrary precision" in note for note in autocheck.check_grad(
        scaled_sqrt_times_sum, torch.rand(200, dtype=F64), seed=0).notes)
    from autocheck import _judge

    # Without the arbitrary-precision tier nothing could be judged here
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_judge, "PRECISE_ELEMENTS", 0)
        with pytest.raises(autocheck.NothingChecked):
            autocheck.assert_grad_matches(scaled_sqrt_times_sum, SUBNORMAL_HALF, seed=0)


def test_a_bug_where_float64_forward_mode_overflows_is_found_and_located():
    report = autocheck.check_grad(lambda x: scaled_sqrt_times_sum(x, QuarterSqrt.apply), SUBNORMAL_HALF, seed=0)
    assert not report.ok
    row = report.worst[0]
    assert row.inputs == (5e-324,) and row.rel_error == pytest.approx(0.5)
    assert row.index[0] % 2 == 0  # a subnormal element, where the backward is wrong by half


def test_arbitrary_precision_agrees_with_autograd_on_a_layer_norm():
    from autocheck import _dual

    x, weight = randn(256, seed=1), randn(256, seed=2)
    u, v = randn(3, 256, seed=3), randn(256, seed=4)

    def f(x):
        return F.layer_norm(x, (256,), weight) ** 3

    expected, size = _dual.Graph(f, [x], [0], [u]).contract(v)
    leaf = x.clone().requires_grad_(True)
    f(leaf).backward(v)
    assert expected == pytest.approx((u @ leaf.grad).tolist(), rel=1e-12)
    assert all(s >= abs(e) for s, e in zip(size, expected))  # the size bounds the value
    moved, _ = _dual.Graph(f, [x], [0], [u]).contract(v, jitter=0)
    assert moved != expected and moved == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "f, point",
    [
        (lambda x: torch.relu(x) * x.sum(), torch.zeros(3, dtype=F64)),  # relu at 0: a kink
        (lambda x: x.max() * x, torch.ones(3, dtype=F64)),  # a tie of max
        (lambda x: torch.sqrt(x) * x.sum(), torch.zeros(3, dtype=F64)),  # sqrt's pole at 0
    ],
)
def test_arbitrary_precision_gives_no_value_at_a_kink_or_pole(f, point):
    from autocheck import _dual

    with pytest.raises(_dual.Unavailable):
        _dual.Graph(f, [point], [0], [torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)]).contract(torch.ones(3, dtype=F64))


@pytest.mark.parametrize("reduce", [torch.amin, torch.amax])
def test_a_reduction_over_every_dimension_is_checked_along_directions(reduce):
    # amin(x) with no dim: the schema's default dim is [] (a list), meaning all of them
    report = autocheck.check_grad(lambda x: reduce(x), randn(3, 5, 1, 8), seed=0)
    assert report.ok and report.checked == 120 and report.formula.startswith("<v, J u>")
