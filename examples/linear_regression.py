"""Fit y = 2x + 3 by hand-written gradient descent, and prove every gradient exact.

The training loop is the classic one from PyTorch tutorials: fresh noisy points each epoch,
``y_pred = x.mm(w) + b.expand_as(y)``, a summed squared error, ``loss.backward()``, and
updates through ``.data``. After every backward, ``autocheck.verify_grads`` compares the
``w.grad`` and ``b.grad`` that autograd just computed with the exact gradient of the same
loss code at the same values; the first gradient that is wrong stops training with
autocheck's report.

Run::

    python examples/linear_regression.py                  # checks all 200 steps, writes linear_regression.png
    python examples/linear_regression.py --bug mean-bias  # a broken backward for the bias: exits 1

Exit status: 0 when every checked gradient is exact, 1 when one is not, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import autocheck  # noqa: E402

TRUE_W, TRUE_B = 2.0, 3.0
BATCH_SIZE = 32
LEARNING_RATE = 0.005


def get_fake_data(batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Points on y = 2x + 3 with x in [0, 5) and standard normal noise."""
    x = torch.rand(batch_size, 1, device=device) * 5
    y = x * TRUE_W + TRUE_B + torch.randn(batch_size, 1, device=device)
    return x, y


# --------------------------------------------------------------------------------------
# The model, with a correct and a broken way to broadcast the bias
# --------------------------------------------------------------------------------------


def expand_bias(b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return b.expand_as(like)


class MeanBiasBroadcast(torch.autograd.Function):
    """``b.expand_as(like)`` with a hand-written backward that has a bug.

    Every row of the output is ``b``, so the gradient of ``b`` is the *sum* of the rows of
    the incoming gradient. This backward takes their *mean*: the bias learns 32 times too
    slowly, the fit still creeps along, and nothing crashes.
    """

    @staticmethod
    def forward(ctx, b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return b.expand_as(like).clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.mean(dim=0, keepdim=True), None  # the bug: should be grad.sum(dim=0, keepdim=True)


BROADCASTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "none": expand_bias,
    "mean-bias": MeanBiasBroadcast.apply,
}


def make_loss(broadcast: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    def loss(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y_pred = x.mm(w) + broadcast(b, y)
        return (0.5 * (y_pred - y) ** 2).sum()

    return loss


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class Fit:
    w: float
    b: float
    losses: list[float]
    data: tuple[np.ndarray, np.ndarray]  # every training point, x and y
    checked: int
    max_rel: float  # the largest relative error of a verified gradient
    failure: str | None  # the mismatch report, when a gradient was wrong
    seconds: float


def train(device: torch.device, epochs: int, check_every: int, bug: str) -> Fit:
    start = time.perf_counter()
    torch.manual_seed(1000)
    if device.type == "cuda":
        torch.cuda.manual_seed(1000)
    loss_fn = make_loss(BROADCASTS[bug])
    # As the tutorial does: one batch of 16 points drawn (to look at) before the parameters,
    # so that the same seed gives the tutorial's own numbers.
    get_fake_data(16, device)

    w = torch.rand(1, 1, requires_grad=True, device=device)
    b = torch.zeros(1, 1, requires_grad=True, device=device)

    losses: list[float] = []
    xs, ys = [], []
    checked, max_rel, recent = 0, 0.0, []
    for epoch in range(epochs):
        x, y = get_fake_data(BATCH_SIZE, device)
        xs.append(x.cpu().numpy().ravel())
        ys.append(y.cpu().numpy().ravel())

        loss = loss_fn(w, b, x, y)
        losses.append(loss.item())
        loss.backward()

        if check_every and epoch % check_every == 0:
            try:  # w.grad and b.grad against the exact gradient of loss_fn at w, b and this batch
                report = autocheck.verify_grads(loss_fn, {"w": w, "b": b}, x, y, seed=epoch)
            except autocheck.GradientMismatch as mismatch:
                failure = f"Gradient check failed at epoch {epoch}:\n{mismatch.report}"
                return Fit(w.item(), b.item(), losses, _points(xs, ys), checked, max_rel, failure,
                           time.perf_counter() - start)  # fmt: skip
            checked += 1
            max_rel = max(max_rel, report.max_rel)
            recent.append(report.max_rel)

        # Update the parameters outside the graph, then clear the gradients, which otherwise add up.
        w.data.sub_(LEARNING_RATE * w.grad.data)
        b.data.sub_(LEARNING_RATE * b.grad.data)
        w.grad.data.zero_()
        b.grad.data.zero_()

        if epoch % 10 == 0:
            verified = (f"gradients of {len(recent)} step{'s' if len(recent) > 1 else ''} verified, max relative "
                        f"error {max(recent):.2g}") if recent else "gradients not checked"
            print(f"Epoch: {epoch} / {epochs}, Parameters: w is {w.item():.6f}, b is {b.item():.6f}, "
                  f"Loss: {losses[-1]:.4f} | {verified}")  # fmt: skip
            recent = []
    print(f"Epoch: {epochs} / {epochs}, Parameters: w is {w.item():.6f}, b is {b.item():.6f}, Loss: {losses[-1]:.4f}")
    return Fit(w.item(), b.item(), losses, _points(xs, ys), checked, max_rel, None, time.perf_counter() - start)


def _points(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(xs), np.concatenate(ys)


# --------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------


def plot(fit: Fit, device: torch.device, path: str) -> None:
    x, y = fit.data
    line_x = np.array([0.0, 5.0])

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    left.scatter(x, y, s=4, alpha=0.15, color="tab:blue",
                 label=f"training data: {len(x)} points, y = 2x + 3 + noise")  # fmt: skip
    left.plot(line_x, TRUE_W * line_x + TRUE_B, "--", color="0.2", lw=1.5, zorder=3, label="true line: y = 2x + 3")
    left.plot(line_x, fit.w * line_x + fit.b, color="tab:red", lw=2.5,
              label=f"fitted: y = {fit.w:.3f}x + {fit.b:.3f}")  # fmt: skip
    left.set(xlabel="x", ylabel="y", title="Linear regression by gradient descent")
    left.legend(loc="upper left")
    left.grid(alpha=0.3)

    epochs = np.arange(len(fit.losses))
    right.plot(epochs, fit.losses, color="tab:purple", lw=1.5, label=f"loss per batch of {BATCH_SIZE}")
    right.set_yscale("log")
    right.set(xlabel="epoch", ylabel="loss: sum of ½(y_pred − y)² (log scale)", title="Training loss")
    right.legend(loc="upper right")
    right.grid(alpha=0.3, which="both")
    if fit.checked:
        verified = f"gradients verified at {fit.checked} of {len(fit.losses)} steps\nmax relative error {fit.max_rel:.2g}"
    else:
        verified = "gradients not checked"
    right.text(0.98, 0.80, verified, transform=right.transAxes, ha="right", va="top", fontsize=9,
               bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7"})  # fmt: skip

    fig.suptitle(f"{len(fit.losses)} epochs, learning rate {LEARNING_RATE}, device {device.type}")
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device,
                        help=f"where to train (default: {default_device})")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=200, help="training steps (default: 200)")
    parser.add_argument("--check-every", type=int, default=1, metavar="K",
                        help="check the gradients every K steps; 0 turns checking off (default: 1)")  # fmt: skip
    parser.add_argument("--output", default="linear_regression.png", metavar="PATH",
                        help="where to save the figure (default: linear_regression.png)")  # fmt: skip
    parser.add_argument("--bug", choices=[k for k in BROADCASTS if k != "none"], default="none",
                        help="swap in a broken backward: mean-bias averages the bias gradient instead of "
                             "summing it")  # fmt: skip
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.check_every < 0:
        parser.error(f"--check-every must be 0 (off) or a positive number of steps, got {args.check_every}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available on this machine; use --device cpu")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    print(f"Using device: {device}")
    fit = train(device, args.epochs, args.check_every, args.bug)
    if fit.failure is not None:
        print(fit.failure, file=sys.stderr)
        return 1
    plot(fit, device, args.output)
    if fit.checked:
        print(f"{fit.checked} gradients verified, max relative error {fit.max_rel:.2g}")
    print(f"Fitted w = {fit.w:.4f} (true {TRUE_W}), b = {fit.b:.4f} (true {TRUE_B}) in {fit.seconds:.1f} s")
    print(f"Figure saved to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
