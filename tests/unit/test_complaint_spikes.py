"""The complaint spike detector: its Poisson tail, its evaluation figures, and the core's gauges."""
from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.spike_eval import evaluate
from pipeline.metrics.base import Facts, Output
from pipeline.metrics.complaint_spikes import ComplaintSpikeCore, SpikeTest, poisson_tail
from pipeline.metrics.facts import ComplaintOpened

HOUR, DAY, WEEK = 3_600_000, 86_400_000, 7 * 86_400_000
TEST = SpikeTest(HOUR, 1e-4, 5, 2.0, 4)


def exact_tail(x: int, lam: Fraction) -> float:
    """1 - P(X < x) in exact rational arithmetic, with e^-lam from math (the only rounding)."""
    below, term = Fraction(0), Fraction(1)
    for k in range(x):
        below += term
        term = term * lam / (k + 1)
    return 1.0 - math.exp(-float(lam)) * float(below) if x else 1.0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 60), st.fractions(Fraction(1, 10), Fraction(40)))
def test_poisson_tail_matches_exact_sum(x, lam):
    want = exact_tail(x, lam)
    got = poisson_tail(x, float(lam))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_poisson_tail_is_stable_far_in_the_tail():
    # e^-1000 underflows, but the tail must neither be 0/0 nor 1: log-space terms
    assert 0 < poisson_tail(1400, 1000.0) < 1e-30
    with localcontext() as ctx:  # the same tail in 60-digit decimals, where e^-1000 does not underflow
        ctx.prec = 60
        term, below = Decimal(-1000).exp(), Decimal(0)
        for k in range(1000):
            below += term
            term = term * 1000 / (k + 1)
        assert poisson_tail(1000, 1000.0) == pytest.approx(float(1 - below), rel=1e-9)
    assert poisson_tail(0, 5.0) == 1.0 and poisson_tail(3, 0.0) == 0.0


def test_small_evaluation_meets_the_bounds():
    figures = evaluate(TEST, seed=3, means=[10.0, 20.0, 40.0], weeks=8, surges=60)
    assert figures.false_alarms_per_tenant_week <= 1.0
    assert all(d is not None for d in figures.delays)
    assert figures.delay_quantile(0.9) <= 2


def opened(tenant: str, at: int) -> ComplaintOpened:
    return ComplaintOpened(tenant, "c1", f"{tenant}-{at}", at)


def feed(core, state, facts: list[ComplaintOpened], clock: int) -> None:
    out = Output()
    core.take(state, Facts(facts), out)
    core.tick(state, clock, out)


def samples(core, states, clock):
    return {(m.name, s.labels["tenant"]): s.value for m in core.collect(states, [clock] * len(states)) for s in m.samples}


def test_core_flags_a_surge_against_its_same_hour_of_week_baseline():
    core = ComplaintSpikeCore(TEST)
    state = core.new_state(0)
    start = 1_700_006_400_000 // WEEK * WEEK  # a week boundary
    history = [opened("acme", start + h * HOUR + i * 60_000) for h in range(4 * 7 * 24) for i in range(10)]
    feed(core, state, history, start + 4 * WEEK - 1)
    now = start + 4 * WEEK + 30 * 60_000
    feed(core, state, [opened("acme", start + 4 * WEEK + i * 1000) for i in range(9)], now)
    got = samples(core, [state], now)
    assert got[("cx_complaint_spike", "acme")] == 0.0
    assert got[("cx_complaints_opened_baseline", "acme")] == 10.0
    assert got[("cx_complaints_opened_rate", "acme")] == 9.0
    feed(core, state, [opened("acme", start + 4 * WEEK + 10_000 + i) for i in range(25)], now)
    assert samples(core, [state], now)[("cx_complaint_spike", "acme")] == 1.0
    # the flag holds through the next bucket, then drops
    assert samples(core, [state], now + HOUR)[("cx_complaint_spike", "acme")] == 1.0
    assert samples(core, [state], now + 2 * HOUR)[("cx_complaint_spike", "acme")] == 0.0


def test_no_flag_without_a_day_of_history_and_ewma_while_short():
    core = ComplaintSpikeCore(TEST)
    state = core.new_state(0)
    base = 1_700_000_000_000 // DAY * DAY
    feed(core, state, [opened("acme", base + i) for i in range(50)], base + 1000)
    assert samples(core, [state], base + 1000)[("cx_complaint_spike", "acme")] == 0.0
    # two days of 4 per hour, then 4 again at the same hour: EWMA baseline 4, no flag
    facts = [opened("globex", base + h * HOUR + i) for h in range(48) for i in range(4)]
    feed(core, state, facts, base + 48 * HOUR - 1)
    feed(core, state, [opened("globex", base + 48 * HOUR + i) for i in range(4)], base + 48 * HOUR + 10)
    got = samples(core, [state], base + 48 * HOUR + 10)
    assert got[("cx_complaints_opened_baseline", "globex")] == pytest.approx(4.0)
    assert got[("cx_complaint_spike", "globex")] == 0.0


def test_a_partial_first_bucket_does_not_lower_the_baseline():
    """History that starts 50 minutes into an hour has one opening in that hour instead of six; counting
    that hour would drag the EWMA baseline to 4.04 and under-flag (found by the alert test late in an hour)."""
    core = ComplaintSpikeCore(TEST)
    state = core.new_state(0)
    base = 1_700_000_000_000 // DAY * DAY
    start = base + 50 * 60_000
    facts = [opened("acme", start + n * 10 * 60_000) for n in range(3 * 24 * 6)]
    feed(core, state, facts, start + 3 * DAY - 1)
    got = samples(core, [state], start + 3 * DAY - 1)
    assert got[("cx_complaints_opened_baseline", "acme")] == pytest.approx(6.0)


def test_partitions_are_summed_and_restore_equals_live_counting():
    core = ComplaintSpikeCore(TEST)
    live, a, b = core.new_state(0), core.new_state(0), core.new_state(0)
    base = 1_700_000_000_000 // DAY * DAY
    times = [base + i * 7 * 60_000 for i in range(3 * 24 * 9)]
    feed(core, live, [opened("acme", t) for t in times], times[-1])
    (spec,) = core.restores()
    core.restore(a, "opened", [spec.row_type()("acme", t) for t in times[::2]], times[-1])
    core.restore(b, "opened", [spec.row_type()("acme", t) for t in times[1::2]], times[-1])
    assert samples(core, [a, b], times[-1]) == samples(core, [live], times[-1])
