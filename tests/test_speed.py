"""What makes a default check cheap, as behaviour: traces are reused only while the
function is the same, a check leaves torch's thread count as it found it, and a seed fixes
the work as well as the verdict."""

from __future__ import annotations

import math
import subprocess
import sys

import torch

import autocheck
from autocheck import _check, _symbolic

F64 = torch.float64
SCALE = 2.0


def derivatives(f, order=1):
    return _symbolic.derivatives_for(f, None, None, None, F64, order)


def test_the_same_function_is_traced_once():
    f = lambda x: x * torch.exp(x)  # noqa: E731
    assert derivatives(f) is derivatives(f)
    assert derivatives(f) is not derivatives(f, order=2)


def test_a_changed_closure_is_traced_again():
    def make(k):
        return lambda x: x * k

    first, second = derivatives(make(2.0)), derivatives(make(3.0))
    assert (float(first.entries[0].expr), float(second.entries[0].expr)) == (2.0, 3.0)


def test_a_changed_global_is_traced_again():
    global SCALE
    f = lambda x: SCALE * x  # noqa: E731
    before = derivatives(f).entries[0].expr
    SCALE = 5.0
    try:
        after = derivatives(f).entries[0].expr
    finally:
        SCALE = 2.0
    assert (float(before), float(after)) == (2.0, 5.0)


def test_a_tensor_changed_in_place_is_traced_again():
    weight = torch.tensor(2.0, dtype=F64)
    f = lambda x: weight * x  # noqa: E731
    before = float(derivatives(f).entries[0].expr)
    weight.mul_(3)
    assert (before, float(derivatives(f).entries[0].expr)) == (2.0, 6.0)


def test_a_module_with_state_is_not_cached():
    layer = torch.nn.Linear(1, 1).double()
    f = lambda x: layer(x.reshape(1, 1)).reshape(())  # noqa: E731
    first = derivatives(f)
    with torch.no_grad():
        layer.weight.fill_(4.0)
    assert first is not derivatives(f)
    assert float(derivatives(f).entries[0].expr) == 4.0


def test_whether_a_function_is_elementwise_is_probed_once(monkeypatch):
    probes = []
    probe = _check.is_elementwise
    monkeypatch.setattr(_check, "is_elementwise", lambda *args: probes.append(args) or probe(*args))
    f = lambda x: x * torch.exp(x)  # noqa: E731
    x = torch.linspace(-1.0, 1.0, 5, dtype=F64)
    autocheck.check_grad(f, x, seed=0)
    autocheck.check_grad(f, x + 1, seed=0)
    assert len(probes) == 1
    autocheck.check_grad(f, x.float(), seed=0)  # another dtype: probed again
    assert len(probes) == 2


def test_a_changed_closure_is_probed_again():
    def make(centred):
        return lambda x: x - x.mean() if centred else 2 * x

    assert (_check._elementwise(make(False), 1, F64), _check._elementwise(make(True), 1, F64)) == (True, False)


def test_a_module_with_state_is_probed_every_time(monkeypatch):
    probes = []
    probe = _check.is_elementwise
    monkeypatch.setattr(_check, "is_elementwise", lambda *args: probes.append(args) or probe(*args))
    layer = torch.nn.Tanh()
    _check._elementwise(layer, 1, F64)
    _check._elementwise(layer, 1, F64)
    assert len(probes) == 2


def test_a_check_leaves_the_thread_count_alone():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        autocheck.check_grad(torch.exp, seed=0, examples=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


SCRIPT = (
    "import torch, autocheck\n"
    "r = autocheck.check_grad(lambda x: x * x * torch.exp(x), seed=11)\n"
    "print(r.checked, r.skipped, r.max_ulp, r.max_rel, [(w.inputs, w.autograd, w.expected) for w in r.worst])\n"
)


def test_the_same_seed_gives_the_same_work_and_report_in_two_processes():
    runs = [subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert int(runs[0].split()[0]) > 50_000


def test_library_functions_are_traced_once():
    # torch.nn.functional.softsign reads globals (handle_torch_function, itself) that a key
    # could not stand for: library code is keyed by identity.
    assert derivatives(torch.nn.functional.softsign) is derivatives(torch.nn.functional.softsign)
    assert derivatives(torch.nn.functional.mish) is not derivatives(torch.nn.functional.softsign)


def test_the_real_domain_is_inferred_once_per_function(monkeypatch):
    import sympy.calculus.util as util

    calls = []
    real = util.continuous_domain
    monkeypatch.setattr(util, "continuous_domain", lambda *a: calls.append(a) or real(*a))
    f = lambda x: torch.logit(x, eps=0.125)  # noqa: E731
    first = autocheck.check_grad(f, seed=0, examples=1, deadline=None)
    second = autocheck.check_grad(f, seed=0, examples=1, deadline=None)
    assert len(calls) <= 1 and first.checked == second.checked


def test_a_wide_allowance_is_settled_without_high_precision(monkeypatch):
    # i0e's backward is i1e(x) - sign(x) i0e(x), which cancels as |x| grows, and so does the
    # float64 reference: no cheap value is within rtol. But the code's own rounding allows
    # more than rtol there, and the reference with its error bound is well inside that.
    from autocheck import _precise

    points = []
    real = _precise.exact_values
    monkeypatch.setattr(_precise, "exact_values", lambda exprs, symbols, p, **k: points.append(len(p)) or real(exprs, symbols, p, **k))
    x = torch.linspace(2.0, 60.0, 4001, dtype=F64)
    report = autocheck.check_grad(torch.special.i0e, x, seed=0)
    assert report.ok and report.checked == 4001
    assert sum(points) == 0


def test_rounding_that_cancels_is_settled_against_the_trusted_value(monkeypatch):
    # Near x = -2, autograd sums x**2 e**x and 2x e**x, which cancel: its relative error grows
    # past rtol, within what its own rounding allows. The oracle's factored value x(x + 2)e**x
    # is trusted there, so those elements pass without refined exact values.
    from autocheck import _compare

    refined = []
    real = _compare._judge_rest
    monkeypatch.setattr(_compare, "_judge_rest", lambda elements, refine, rest, *a: refined.append(rest.numel())
                        or real(elements, refine, rest, *a))
    x = torch.linspace(-2.01, -1.99, 4001, dtype=F64)
    report = autocheck.check_grad(lambda x: x * x * torch.exp(x), x, seed=0)
    assert report.ok and report.checked == 4001 and report.max_rel > report.rtol
    assert sum(refined) == 0


def test_a_slightly_wrong_backward_where_rounding_cancels_is_still_reported():
    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x * torch.exp(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * (x * x * torch.exp(x) + 2 * x * torch.exp(x) + 1e-9)

    x = torch.linspace(-2.01, -1.99, 4001, dtype=F64)
    report = autocheck.check_grad(Wrong.apply, x, seed=0)
    assert not report.ok and report.failed > 3000


def test_a_slightly_wrong_i0e_backward_is_still_reported():
    class I0e(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.special.i0e(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * (torch.special.i1e(x) - torch.sign(x) * torch.special.i0e(x)) * (1 + 1e-9)

    x = torch.linspace(2.0, 60.0, 4001, dtype=F64)
    report = autocheck.check_grad(I0e.apply, x, seed=0)
    assert not report.ok and report.failed > 3000


def test_a_first_check_loads_none_of_torchs_heavy_machinery():
    # torch imports these (0.1-1.5 s each) on first use of a tensor subclass's dispatch, of a
    # dispatch mode's, and of backward(v); a check gets by without any of them
    code = ("import sys, torch, autocheck; autocheck.check_grad(lambda x: x * x * torch.exp(x), seed=0); "
            "print(sorted(m for m in ('torch.distributed.tensor', 'torch._dynamo', "
            "'torch.fx.experimental.symbolic_shapes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_loading_the_checker_leaves_the_collector_as_it_found_it():
    # The collector is paused while SymPy loads (no full collection over torch's objects);
    # afterwards it is on, nothing is frozen, and the objects loaded sit in the oldest generation
    code = ("import gc, torch, autocheck; full = gc.get_stats()[2]['collections']; autocheck.check_grad; "
            "import sympy; print(gc.get_stats()[2]['collections'] - full, gc.isenabled(), gc.get_freeze_count(), "
            "any(o is sympy.Symbol for o in gc.get_objects(generation=2)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["0", "True", "0", "True"]


def test_a_paused_collector_leaves_a_disabled_one_off_and_frozen_objects_frozen():
    import gc
    import weakref

    from autocheck._loading import collector_paused

    class Node:
        pass

    enabled = gc.isenabled()
    try:
        gc.disable()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
        gc.enable()
        with collector_paused():
            assert not gc.isenabled()
            cycle = Node()
            cycle.itself = cycle
            dead = weakref.ref(cycle)
        assert gc.isenabled() and gc.get_freeze_count() == 0
        del cycle
        gc.collect()  # garbage made while paused is still collected
        assert dead() is None
        gc.freeze()  # a process's own frozen objects stay frozen
        frozen = gc.get_freeze_count()
        with collector_paused():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        gc.enable() if enabled else gc.disable()


def test_the_largest_ulp_error_beyond_rtol_is_reported_exactly(monkeypatch):
    # Near x = -2 the elements beyond rtol (settled by the error model's slack) have the
    # largest ULP errors, though not the largest relative ones (those are where the result
    # underflows, x < -730): the report's max_ulp is theirs, to the unit
    import mpmath

    from autocheck import _judge

    v = 0.75
    monkeypatch.setattr(_judge, "cotangent", lambda shape, dtype, device, generator: torch.full(shape, v, dtype=dtype))
    x = torch.cat([torch.linspace(-2.001, -1.999, 401, dtype=F64), torch.linspace(-740.0, -735.0, 101, dtype=F64)])
    report = autocheck.check_grad(lambda x: x * x * torch.exp(x), x, seed=0)
    leaf = x.clone().requires_grad_(True)
    (leaf * leaf * torch.exp(leaf)).backward(torch.full_like(x, v))
    with mpmath.workdps(40):
        exact = [float(v * (mpmath.mpf(p) ** 2 + 2 * mpmath.mpf(p)) * mpmath.exp(p)) for p in x.tolist()]
    ulps = [abs(g - e) / math.ulp(e) for g, e in zip(leaf.grad.tolist(), exact)]
    assert report.ok and max(ulps) > 512  # beyond rtol = 256 eps
    assert report.max_ulp == max(ulps) and report.max_rel > 1e-6


def test_within_rtol_the_largest_ulp_error_is_reported_within_a_factor_of_two(monkeypatch):
    # Where every element is within rtol, max_ulp is the ULP error of the element with the
    # largest relative error: at least half the largest ULP error, and no more than it
    import mpmath

    from autocheck import _judge

    v = 0.75
    monkeypatch.setattr(_judge, "cotangent", lambda shape, dtype, device, generator: torch.full(shape, v, dtype=dtype))
    x = torch.linspace(-3.0, 3.0, 2001, dtype=F64)
    report = autocheck.check_grad(lambda x: x * torch.exp(x), x, seed=0)
    leaf = x.clone().requires_grad_(True)
    (leaf * torch.exp(leaf)).backward(torch.full_like(x, v))
    with mpmath.workdps(40):
        exact = [float(v * (1 + mpmath.mpf(p)) * mpmath.exp(p)) for p in x.tolist()]
    ulps = [abs(g - e) / math.ulp(e) for g, e in zip(leaf.grad.tolist(), exact) if e != 0]
    assert report.ok and max(ulps) < 512
    assert max(ulps) / 2 <= report.max_ulp <= max(ulps)
