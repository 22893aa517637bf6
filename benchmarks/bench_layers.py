"""What checking a layer costs: a default check of each, warm, on CPU in float64.

Prints a Markdown table for docs/benchmarks.md: for each layer of the size below, the best
of 3 warm runs of ``assert_grad_matches`` (``assert_module_grads`` for the MLP), next to one
forward and backward of the same function, and the time to find a planted bug in it.

Run: python benchmarks/bench_layers.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import autocheck
from _timing import best, machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_layers import (  # noqa: E402
    TARGETS, CausalAttention, LayerNormNoAffine, MeanCrossEntropy, MlpLoss, MyLinear, randn,
)


def forward_backward(f, *inputs):
    def run():
        leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        out = f(*leaves)
        out.backward(torch.ones_like(out))
    return run


def main() -> None:
    x, w, b = randn(8, 4096), randn(4096, seed=1), randn(4096, seed=2)
    q, k, v = (randn(2, 8, 64, 32, seed=s) for s in range(3))
    image, kernel, bias = randn(2, 3, 32, 32), randn(8, 3, 3, 3, seed=1), randn(8, seed=2)
    logits = randn(32, 10)
    loss = MlpLoss()
    batch = randn(8, 784)
    layer_norm = lambda x, w, b: F.layer_norm(x, (4096,), w, b)  # noqa: E731
    conv = lambda x, w, b: F.conv2d(x, w, b, padding=1)  # noqa: E731
    cross_entropy = lambda x: F.cross_entropy(x, TARGETS)  # noqa: E731
    rows = [
        ("layer_norm, 8 x 4096 features", lambda: autocheck.assert_grad_matches(layer_norm, x, w, b, seed=0),
         forward_backward(layer_norm, x, w, b)),
        ("attention, batch 2, 8 heads, 64 tokens, head size 32",
         lambda: autocheck.assert_grad_matches(F.scaled_dot_product_attention, q, k, v, seed=0),
         forward_backward(F.scaled_dot_product_attention, q, k, v)),
        ("conv2d, 8 x 3 x 3 x 3 kernel on 2 x 3 x 32 x 32", lambda: autocheck.assert_grad_matches(conv, image, kernel, bias, seed=0),
         forward_backward(conv, image, kernel, bias)),
        ("cross_entropy on 32 x 10 logits", lambda: autocheck.assert_grad_matches(cross_entropy, logits, seed=0),
         forward_backward(cross_entropy, logits)),
        ("MLP 784-64-10 loss, batch 8, parameters included", lambda: autocheck.assert_module_grads(loss, batch, seed=0),
         forward_backward(loss, batch)),
    ]
    print(machine())
    print()
    print("| layer | check, warm | forward + backward | ratio |")
    print("|---|---|---|---|")
    for name, check, floor in rows:
        t, f = best(check, repeat=3), best(floor, repeat=3)
        print(f"| {name} | {t:.3f} s | {f * 1e3:.2f} ms | {t / f:.0f}x |")
    print()
    LayerNormNoAffine.wrong = (3, 1000)
    CausalAttention.wrong = True
    MeanCrossEntropy.forget_mean = True
    bugs = [
        ("layer norm, one element off by 0.1%", lambda: autocheck.check_grad(LayerNormNoAffine.apply, x, seed=0)),
        ("causal attention, backward mask without its diagonal",
         lambda: autocheck.check_grad(CausalAttention.apply, *(randn(2, 8, 64, 32, seed=s) for s in range(3)), seed=0)),
        ("cross-entropy, backward without the 1/N", lambda: autocheck.check_grad(MeanCrossEntropy.apply, logits, seed=0)),
        ("linear layer, transposed weight gradient", lambda: autocheck.check_module(MyLinear(), randn(5, 6), seed=0)),
    ]
    print("| planted bug | time to the located failure | first row |")
    print("|---|---|---|")
    for name, run in bugs:
        t = best(run, repeat=3)
        report = run()
        row = report.worst[0]
        assert not report.ok and row.failed
        print(f"| {name} | {t:.3f} s | `{row.where}[{', '.join(map(str, row.index or ()))}]` |")


if __name__ == "__main__":
    main()
