"""Fit y = 2x + 3 by hand-written gradient descent, and prove every gradient exact.

The training loop is the classic one from PyTorch tutorials: fresh noisy points each epoch,
``y_pred = x.mm(w) + b.expand_as(y)``, a summed squared error, ``loss.backward()``, and
updates through ``.data``. At every checked step the gradients that autograd just put in
``w.grad`` and ``b.grad`` are compared with the exact gradient of the loss.

The exact gradient comes from autocheck, which traces the very same loss code once, with
``w``, ``b`` and the whole batch as symbols, and differentiates it with SymPy. Each step only
evaluates that formula at the step's values (in 50-digit arithmetic), so checking every step
costs well under a millisecond. A gradient passes when it is as close to the exact value as
autocheck itself requires (``docs/tolerances.md``); the first one that is not stops training,
and ``autocheck.check_grad`` explains the failure.

Run::

    python examples/linear_regression.py                  # checks all 200 steps, writes linear_regression.png
    python examples/linear_regression.py --bug mean-bias  # a broken backward for the bias: exits 1

Exit status: 0 when every checked gradient is exact, 1 when one is not, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import mpmath  # noqa: E402
import numpy as np  # noqa: E402
import sympy  # noqa: E402
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
# Checking w.grad and b.grad against the exact gradient
# --------------------------------------------------------------------------------------


def term_size(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with every number, symbol and term taken in absolute value.

    Floating point rounds each term of a sum relative to that term, so the error of a
    computed gradient scales with the sizes of its terms, not with the result: near the
    optimum dL/db is a sum of residuals that cancel. autocheck judges errors against a
    bound of this kind (docs/tolerances.md), with the same rtol and atol as this script.
    """
    if expr.is_Add or expr.is_Mul:
        return expr.func(*(term_size(a) for a in expr.args))
    if expr.is_Pow and expr.exp.is_Integer:
        return term_size(expr.base) ** expr.exp
    return sympy.Abs(expr)


@dataclass
class Verdict:
    ok: bool
    max_ulp: float  # worst error of w.grad and b.grad, in units in the last place of their dtype
    max_share: float  # worst error as a share of the error allowed (above 1 fails)
    lines: list[str]  # one line per parameter: autograd, exact, error


class ExactGradient:
    """dL/dw and dL/db of ``loss(w, b, x, y)``, derived once by autocheck.

    Tracing the loss with the batch as symbols (``x[0, 0]``, ..., ``y[31, 0]``) gives a
    formula that holds for every batch, so it is traced and differentiated once and each
    step only evaluates it.
    """

    def __init__(self, loss, batch_size: int, dtype: torch.dtype) -> None:
        like = [torch.zeros(1, 1, dtype=dtype), torch.zeros(1, 1, dtype=dtype)]
        like += [torch.zeros(batch_size, 1, dtype=dtype), torch.zeros(batch_size, 1, dtype=dtype)]
        d_w, d_b, _, _ = autocheck.derivative(loss, *like)
        self.exprs = [d_w[0, 0], d_b[0, 0]]
        by_name = {s.name: s for e in self.exprs for s in e.free_symbols}
        names = ["w[0, 0]", "b[0, 0]"]
        names += [f"x[{i}, 0]" for i in range(batch_size)] + [f"y[{i}, 0]" for i in range(batch_size)]
        # A symbol that a formula does not use is still an argument: make one with that name.
        symbols = [by_name.get(n, sympy.Symbol(n, real=True)) for n in names]
        outputs = self.exprs + [term_size(e) for e in self.exprs]
        self._evaluate = sympy.lambdify(symbols, outputs, modules="mpmath")
        self.dtype = dtype
        self.rtol, self.atol = autocheck.DEFAULT_TOLERANCES[dtype]

    def check(self, w, b, x, y, w_grad, b_grad) -> Verdict:
        values = [float(v) for t in (w, b, x, y) for v in t.detach().double().cpu().reshape(-1)]
        with mpmath.workdps(50):
            exact_w, exact_b, size_w, size_b = (float(v) for v in self._evaluate(*values))
        lines, ok, worst, share = [], True, 0.0, 0.0
        for name, got, exact, size in (("w", w_grad, exact_w, size_w), ("b", b_grad, exact_b, size_b)):
            got = float(got)
            error = abs(got - exact)
            ulps = error / ulp(exact, self.dtype)
            allowed = self.atol + self.rtol * max(abs(exact), size)
            ok &= error <= allowed
            worst = max(worst, ulps)
            share = max(share, error / allowed)
            lines.append(
                f"d/d{name}: autograd {got:.9g}, exact {exact:.9g}, error {ulps:.3g} ULP (up to {allowed:.3g} allowed)"
            )
        return Verdict(ok, worst, share, lines)


def ulp(value: float, dtype: torch.dtype) -> float:
    """The spacing of ``dtype`` numbers at ``value``."""
    info = torch.finfo(dtype)
    _, exponent = math.frexp(max(abs(value), info.tiny))  # value = m * 2**exponent, 0.5 <= m < 1
    return math.ldexp(info.eps, exponent - 1)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class Fit:
    w: float
    b: float
    losses: list[float]
    checked: int
    max_ulp: float
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
    exact = ExactGradient(loss_fn, BATCH_SIZE, w.dtype) if check_every else None

    losses: list[float] = []
    checked, max_ulp, recent = 0, 0.0, []
    for epoch in range(epochs):
        x, y = get_fake_data(BATCH_SIZE, device)

        loss = loss_fn(w, b, x, y)
        losses.append(loss.item())
        loss.backward()

        if check_every and epoch % check_every == 0:
            verdict = exact.check(w, b, x, y, w.grad, b.grad)
            if not verdict.ok:
                return Fit(w.item(), b.item(), losses, checked, max(max_ulp, verdict.max_ulp),
                           explain(loss_fn, w, b, x, y, epoch, verdict), time.perf_counter() - start)  # fmt: skip
            checked += 1
            max_ulp = max(max_ulp, verdict.max_ulp)
            recent.append(verdict)

        # Update the parameters outside the graph, then clear the gradients, which otherwise add up.
        w.data.sub_(LEARNING_RATE * w.grad.data)
        b.data.sub_(LEARNING_RATE * b.grad.data)
        w.grad.data.zero_()
        b.grad.data.zero_()

        if epoch % 10 == 0:
            print(f"Epoch: {epoch} / {epochs}, Parameters: w is {w.item():.6f}, b is {b.item():.6f}, "
                  f"Loss: {losses[-1]:.4f} | {summarize(recent)}")  # fmt: skip
            recent = []
    print(f"Epoch: {epochs} / {epochs}, Parameters: w is {w.item():.6f}, b is {b.item():.6f}, Loss: {losses[-1]:.4f}")
    return Fit(w.item(), b.item(), losses, checked, max_ulp, None, time.perf_counter() - start)


def summarize(verdicts: list[Verdict]) -> str:
    if not verdicts:
        return "gradients not checked"
    worst_ulp = max(v.max_ulp for v in verdicts)
    worst_share = max(v.max_share for v in verdicts)
    steps = f"{len(verdicts)} step" + ("s" if len(verdicts) > 1 else "")
    return f"gradients of {steps} verified: max error {worst_ulp:.3g} ULP, {worst_share:.1%} of the tolerance"


def explain(loss_fn, w, b, x, y, epoch: int, verdict: Verdict) -> str:
    """The failure, as this script saw it and as autocheck's full check reports it."""
    lines = [f"Gradient check failed at epoch {epoch}:", *(f"  {line}" for line in verdict.lines), ""]

    def loss_of_w_b(w, b):
        return loss_fn(w, b, x, y)

    report = autocheck.check_grad(loss_of_w_b, w, b, seed=epoch)
    lines.append(
        "autocheck.check_grad(loss_of_w_b, w, b) on this batch; it runs backward on copies of w and b "
        "with a random upstream gradient of size 0.5 to 0.9, so its values are scaled by it:"
    )
    lines.append(str(report))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------


def plot(fit: Fit, device: torch.device, path: str) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, generator=generator) * 5
    y = x * TRUE_W + TRUE_B + torch.randn(200, 1, generator=generator)
    line_x = np.array([0.0, 5.0])

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    left.scatter(x.numpy(), y.numpy(), s=12, alpha=0.45, color="tab:blue", label="data: y = 2x + 3 + noise")
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
        verified = f"gradients verified at {fit.checked} of {len(fit.losses)} steps\nmax error {fit.max_ulp:.3g} ULP"
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
        print(f"{fit.checked} gradients verified, max error {fit.max_ulp:.3g} ULP")
    print(f"Fitted w = {fit.w:.4f} (true {TRUE_W}), b = {fit.b:.4f} (true {TRUE_B}) in {fit.seconds:.1f} s")
    print(f"Figure saved to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
