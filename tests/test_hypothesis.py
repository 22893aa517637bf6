"""A search follows Hypothesis's settings: given with settings=, or the loaded profile
(max_examples, deadline, database, derandomize, verbosity); failing examples are saved to
the configured database and replayed first; checks run inside a user's @given."""

from __future__ import annotations

import datetime
import struct

import pytest
import torch
from hypothesis import Verbosity, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

import autocheck


def x2exp(x):
    return x * x * torch.exp(x)


class ExpWrongAbove(torch.autograd.Function):
    """exp with a backward twice too large above 3.7."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.where(x > 3.7, 2 * torch.exp(x), torch.exp(x))


@pytest.fixture
def profile():
    """Load a Hypothesis profile for one test, then the one that was active."""
    before = settings.get_current_profile_name()
    loaded = []

    def load(**options):
        name = f"autocheck-test-{len(loaded)}"
        settings.register_profile(name, **options)
        settings.load_profile(name)
        loaded.append(name)

    yield load
    settings.load_profile(before)


def test_a_loaded_profile_sets_the_number_of_batches(profile):
    five = autocheck.check_grad(x2exp, seed=0, examples=5).checked
    default = autocheck.check_grad(x2exp, seed=0).checked
    profile(max_examples=5, deadline=None)
    assert autocheck.check_grad(x2exp, seed=0).checked == five < default


def test_settings_given_win_over_the_profile(profile):
    profile(max_examples=5, deadline=None)
    three = autocheck.check_grad(x2exp, seed=0, examples=3).checked
    assert autocheck.check_grad(x2exp, seed=0, settings=settings(max_examples=3, deadline=None)).checked == three


def test_examples_given_win_over_settings():
    two = autocheck.check_grad(x2exp, seed=0, examples=2).checked
    assert autocheck.check_grad(x2exp, seed=0, examples=2, settings=settings(max_examples=9, deadline=None)).checked == two


def test_a_failing_unseeded_check_is_saved_and_replayed_first(tmp_path):
    database = DirectoryBasedExampleDatabase(str(tmp_path / "examples"))
    with_database = settings(database=database)
    first = autocheck.check_grad(ExpWrongAbove.apply, settings=with_database)
    assert not first.ok and first.counterexample == (4.0,)
    saved = [value.read_bytes() for key in (tmp_path / "examples").iterdir() for value in key.iterdir()]
    assert struct.pack("<d", 4.0) in saved  # the counterexample, as float64 bytes
    again = autocheck.check_grad(ExpWrongAbove.apply, settings=with_database)
    assert not again.ok and again.counterexample == (4.0,)
    assert "Found first among the failing examples an earlier run saved in Hypothesis's database" in str(again)
    assert "saved in Hypothesis's database" not in str(first)


def test_a_seeded_check_neither_reads_nor_writes_the_database(tmp_path):
    database = DirectoryBasedExampleDatabase(str(tmp_path / "examples"))
    report = autocheck.check_grad(ExpWrongAbove.apply, seed=0, settings=settings(database=database))
    assert not report.ok
    assert not (tmp_path / "examples").exists() or not any((tmp_path / "examples").iterdir())


def test_derandomize_draws_the_same_points_every_run(tmp_path):
    fixed = settings(derandomize=True, database=None)
    a = autocheck.check_grad(x2exp, settings=fixed, examples=3)
    b = autocheck.check_grad(x2exp, settings=fixed, examples=3)
    assert a.seed == b.seed and a.checked == b.checked and a.worst == b.worst


def test_verbosity_verbose_reports_each_batch(capsys):
    autocheck.check_grad(x2exp, seed=0, settings=settings(max_examples=2, verbosity=Verbosity.verbose))
    err = capsys.readouterr().err
    assert "autocheck: batch 1 of 2:" in err and "autocheck: batch 2 of 2:" in err


def test_after_the_first_batch_four_are_judged_at_a_time(capsys):
    autocheck.check_grad(x2exp, seed=0, settings=settings(max_examples=6, deadline=None, verbosity=Verbosity.verbose))
    err = capsys.readouterr().err
    assert "autocheck: batch 1 of 6: 4096 points" in err
    assert "autocheck: batches 2-5 of 6: 16384 points" in err
    assert "autocheck: batch 6 of 6: 4096 points" in err


def test_judging_batches_together_judges_the_same_points(monkeypatch):
    together = autocheck.check_grad(x2exp, seed=3, examples=9)
    monkeypatch.setattr(autocheck._search, "JUDGED_TOGETHER", 1)
    alone = autocheck.check_grad(x2exp, seed=3, examples=9)
    assert together.checked == alone.checked and together.skipped == alone.skipped
    # with the same upstream gradients: the same worst elements, to the last digit
    assert (together.worst, together.max_ulp, together.max_rel) == (alone.worst, alone.max_ulp, alone.max_rel)


def test_how_batches_are_grouped_does_not_change_the_verdict(monkeypatch):
    # How many batches are judged together depends on the time left; the upstream gradient of
    # a point must not. For z*exp(z) near z = -1.8e308(1 + i), some upstream gradients make
    # torch's backward overflow (nan where the exact derivative is 0) and others do not.
    reports = []
    for size in (1, 2):
        monkeypatch.setattr(autocheck._search, "_group_size", lambda left, pace, deadline, size=size: min(size, left))
        reports.append(autocheck.check_grad(lambda z: z * torch.exp(z), dtype=torch.complex128, seed=0, examples=3))
    alone, paired = reports
    assert (paired.ok, paired.checked, paired.worst) == (alone.ok, alone.checked, alone.worst)


def test_the_deadline_is_per_batch():
    tiny = settings(max_examples=10_000, deadline=datetime.timedelta(microseconds=1))
    report = autocheck.check_grad(x2exp, seed=0, settings=tiny)
    assert report.timed_out and report.ok  # 10,000 batches of 1 microsecond each: 10 ms in all
    assert report.checked < autocheck.check_grad(x2exp, seed=0).checked


def test_a_check_runs_inside_a_users_given():
    scales = []

    @settings(max_examples=4, deadline=None)
    @given(st.floats(0.5, 2.0))
    def check(scale):
        assert autocheck.check_grad(lambda x: scale * torch.sin(x), seed=0, examples=2).ok
        scales.append(scale)

    check()
    assert len(scales) == 4


def test_a_failing_check_inside_given_fails_the_property():
    @settings(max_examples=3, deadline=None, database=None)
    @given(st.integers(0, 5))
    def check(k):
        autocheck.assert_grad_matches(ExpWrongAbove.apply, seed=k, examples=3)

    with pytest.raises(autocheck.GradientMismatch, match="ExpWrongAbove.apply"):
        check()


def test_strategies_compose_with_a_users_given():
    @settings(max_examples=10, deadline=None)
    @given(autocheck.strategies.points(torch.log1p, shape=(5,)))
    def check(point):
        (x,) = point
        assert bool((x >= -1).all())
        if bool((x > -1).all()):  # log1p(-1) is -inf: no gradient there
            assert autocheck.check_grad(torch.log1p, x, seed=0).ok

    check()


def test_settings_must_be_hypothesis_settings():
    with pytest.raises(TypeError, match=r"settings must be a hypothesis.settings object, got settings=\{'max_examples': 5\}"):
        autocheck.check_grad(x2exp, settings={"max_examples": 5})


def test_a_check_inside_given_keeps_its_own_batches():
    # Inside @given, Hypothesis's defaults are that test's settings: a check does not take
    # them as its own (four examples of the property are not four batches of the check).
    default = autocheck.check_grad(x2exp, seed=0).checked
    seen = []

    @settings(max_examples=2, deadline=None, database=None)
    @given(st.just(1.0))
    def check(scale):
        seen.append(autocheck.check_grad(lambda x: scale * x2exp(x), seed=0).checked)

    check()
    assert seen and set(seen) == {default}


def test_a_deadline_given_to_the_check_wins_over_the_settings():
    endless = settings(max_examples=100_000, deadline=None)
    report = autocheck.check_grad(x2exp, seed=0, settings=endless, deadline=0.3)
    assert report.timed_out and "Stopped at the deadline" in str(report)


def test_drawn_tensors_are_drawn_max_examples_times():
    import torch.nn.functional as F

    report = autocheck.check_grad(F.cross_entropy, autocheck.Drawn((4, 3)), autocheck.Drawn((4,), integers=(0, 3)),
                                  seed=0, settings=settings(max_examples=3, deadline=None))
    assert report.ok and "Inputs drawn 3 times" in str(report)


def test_hypothesis_own_ci_profile_is_not_followed(profile):
    default = autocheck.check_grad(x2exp, seed=0).checked
    settings.load_profile("ci")  # what Hypothesis does by itself where CI is set
    assert autocheck.check_grad(x2exp, seed=0).checked == default


@pytest.mark.parametrize("f", [torch.sigmoid, lambda x, y: x * torch.sin(y)], ids=["sigmoid", "x*sin(y)"])
def test_the_worst_rows_do_not_depend_on_how_batches_are_grouped(monkeypatch, f):
    # Each batch's worst elements are chosen as if it were judged alone, and ties are broken
    # by the rows' content: the same seed shows the same rows however the batches were grouped
    from autocheck import _search

    reports = []
    for size in (1, 3):
        monkeypatch.setattr(_search, "_group_size", lambda left, pace, deadline, size=size: min(size, left))
        reports.append(autocheck.check_grad(f, seed=1, examples=7))
    alone, grouped = reports
    assert alone.ok and alone.worst
    assert (grouped.worst, grouped.max_ulp, grouped.max_rel, grouped.checked) == \
        (alone.worst, alone.max_ulp, alone.max_rel, alone.checked)
