"""verify_grads: the .grad a training step's backward left, against the exact gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import autocheck

F32 = torch.float32


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)


def squared_error(w, b, x, y):
    return ((x @ w + b - y) ** 2).mean()


def parameters():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, generator=g).requires_grad_(), torch.zeros(1).requires_grad_()


def test_gradients_from_backward_pass_and_nothing_is_changed():
    w, b = parameters()
    x, y = data()
    squared_error(w, b, x, y).backward()
    before = [t.clone() for t in (w, b, w.grad, b.grad, x, y)]
    report = autocheck.verify_grads(squared_error, [w, b], x, y, seed=0)
    assert report.ok and report.checked == 4 and report.dtype == "float32"
    assert all(torch.equal(a, t) for a, t in zip(before, (w, b, w.grad, b.grad, x, y)))
    assert "Verified: the .grad a backward left (loss.backward(), upstream gradient 1)" in str(report)


def test_a_wrong_grad_is_named_with_both_values():
    w, b = parameters()
    x, y = data()
    squared_error(w, b, x, y).backward()
    exact = float(b.grad)
    b.grad.mul_(2)  # what a backward that counts the bias twice would leave
    with pytest.raises(autocheck.GradientMismatch) as caught:
        autocheck.verify_grads(squared_error, {"w": w, "b": b}, x, y, seed=0)
    report = caught.value.report
    assert report.failed == 1 and not report.failed_at_least
    row = report.worst[0]
    assert (row.where, row.index) == ("d/db", (0,))
    assert row.autograd == pytest.approx(2 * exact, rel=1e-6) and row.expected == pytest.approx(exact, rel=1e-6)
    assert "d/db[0]" in str(caught.value)


def test_a_module_names_its_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x, y = data()

    def loss_fn(model, x, y):
        return ((model(x) - y) ** 2).mean()

    loss_fn(model, x, y).backward()
    assert autocheck.verify_grads(loss_fn, model, x, y, seed=0).checked == 4 * 3 + 4 + 4 + 1
    model[0].weight.grad[1, 2] += 0.1
    with pytest.raises(autocheck.GradientMismatch, match=r"d/d0\.weight\[1, 2\]"):
        autocheck.verify_grads(loss_fn, model, x, y, seed=0)


def test_a_modules_buffers_are_left_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))  # training mode
    x, y = data()

    def loss_fn(model, x, y):
        return ((model(x) - y) ** 2).mean()

    loss_fn(model, x, y).backward()
    stats = [t.clone() for t in model.buffers()]
    assert autocheck.verify_grads(loss_fn, model, x, y, seed=0).ok
    assert all(torch.equal(a, t) for a, t in zip(stats, model.buffers()))


def test_a_loss_with_dropout_is_refused_as_nondeterministic():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    x, y = data()

    def loss_fn(model, x, y):
        return ((model(x) - y) ** 2).mean()

    loss_fn(model, x, y).backward()
    with pytest.raises(autocheck.NondeterministicFunction):
        autocheck.verify_grads(loss_fn, model, x, y, seed=0)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda w, b, x, y: autocheck.verify_grads(squared_error, [w, b], x, y),
         ValueError, r"w\.grad is None: call loss\.backward\(\) before verify_grads"),
        (lambda w, b, x, y: autocheck.verify_grads(squared_error, w, x, y),
         TypeError, r"params must be a list or tuple of tensors, a dict of them by name, or an nn\.Module"),
        (lambda w, b, x, y: autocheck.verify_grads(squared_error, [w, b], x, y, dtype=torch.float64),
         TypeError, r"verify_grads does not take dtype="),
    ],
)
def test_bad_calls_are_refused_with_the_fix(call, error, message):
    w, b = parameters()
    x, y = data()
    with pytest.raises(error, match=message):
        call(w, b, x, y)


def test_the_loss_must_be_a_scalar():
    w, b = parameters()
    x, y = data()
    squared_error(w, b, x, y).backward()
    with pytest.raises(ValueError, match=r"loss_fn must return a tensor of one element"):
        autocheck.verify_grads(lambda w, b, x, y: (x @ w + b - y) ** 2, [w, b], x, y)


def test_a_loss_of_one_element_sparse_grads_and_unused_parameters():
    w = torch.randn(3, 1, generator=torch.Generator().manual_seed(0)).requires_grad_()
    x, y = data()

    def mean_over_rows(w, x, y):  # shape (1,): loss.backward() takes it
        return ((x @ w - y) ** 2).mean(0)

    mean_over_rows(w, x, y).backward()
    assert autocheck.verify_grads(mean_over_rows, [w], x, y, seed=0).ok

    embedding = nn.Embedding(10, 3, sparse=True)
    idx = torch.tensor([1, 2, 2, 5])

    def squares(model, idx):
        return model(idx).pow(2).sum()

    squares(embedding, idx).backward()
    assert embedding.weight.grad.is_sparse
    assert autocheck.verify_grads(squares, embedding, idx, seed=0).ok

    class WithUnusedHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.aux = nn.Linear(3, 4), nn.Linear(4, 1)

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    model = WithUnusedHead()

    def loss_fn(model, x):
        return model(x).pow(2).mean()

    loss_fn(model, x).backward()
    assert model.aux.weight.grad is None
    assert autocheck.verify_grads(loss_fn, model, x, seed=0).ok  # its gradient is zero, and so is .grad's absence
