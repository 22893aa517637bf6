"""Gradient checks in a test suite, with autocheck's pytest plugin.

Installing autocheck registers the plugin; there is nothing to import or configure. The
``grad_check`` fixture is ``autocheck.assert_grad_matches`` bound to a device, a dtype and the
run's seed, and every test that uses it runs once per device (cpu, and cuda where a GPU is
present) and per dtype chosen on the command line.

Run::

    pytest examples/test_with_plugin.py
    pytest examples/test_with_plugin.py --autocheck-dtype float32 --autocheck-dtype float64
    pytest examples/test_with_plugin.py --autocheck-device cpu --autocheck-seed 1234

This file lives outside the project's ``testpaths``, so the project's own ``pytest`` run does
not collect it; ``tests/test_examples.py`` runs it in a subprocess instead.
"""

from __future__ import annotations

import torch


def test_x2_exp(grad_check):
    """An elementwise function: checked at points drawn across the real line."""
    grad_check(lambda x: x * x * torch.exp(x))


def test_two_inputs(grad_check):
    """Two inputs, drawn from a domain."""
    grad_check(lambda x, y: x * torch.sin(y), domain=(-10.0, 10.0))


def test_linear_regression_loss(grad_check):
    """A loss that mixes elements: checked at given tensors, traced as arrays of symbols.

    grad_check moves the inputs to the run's device and dtype, so the batch is passed as
    inputs too rather than captured from outside (x and y get their gradients checked as well).
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, generator=generator, dtype=torch.float64) * 5
    y = x * 2 + 3 + torch.randn(8, 1, generator=generator, dtype=torch.float64)
    w = torch.rand(1, 1, generator=generator, dtype=torch.float64)
    b = torch.zeros(1, 1, dtype=torch.float64)

    def loss(w, b, x, y):
        y_pred = x.mm(w) + b.expand_as(y)
        return (0.5 * (y_pred - y) ** 2).sum()

    grad_check(loss, w, b, x, y)


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x**2


def test_custom_function(grad_check):
    """A hand-written backward: autocheck traces the forward and checks the backward against it."""
    grad_check(Cube.apply, domain=(-100.0, 100.0))
