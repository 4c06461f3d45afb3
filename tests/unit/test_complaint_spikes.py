"""The complaint spike detector: its Poisson tail, the core's gauges against a plain recomputation of the
definition, the flag minute by minute through a sustained surge, restore and bounded state, its
settings, and its measured figures."""
from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import replace
from decimal import Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.spike_eval import HourlyBuckets, delays, false_alarms, quantile, sliding_window
from pipeline.metrics.base import Facts, Output
from pipeline.metrics.complaint_spikes import ComplaintSpikeCore, SpikeSettings, poisson_tail
from pipeline.metrics.facts import ComplaintOpened
from pipeline.settings import Settings, SettingsError
from tests.unit.cores import restore

MIN, HOUR, DAY, WEEK = 60_000, 3_600_000, 86_400_000, 7 * 86_400_000
TEST = SpikeSettings().test()  # the shipped defaults
MONDAY = 1_700_006_400_000 // WEEK * WEEK  # a week boundary (a Thursday 00:00 UTC, as epoch weeks go)


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


# -- the definition, recomputed plainly (docs/metrics.md, "Spike detection") -----------------------
def plain_gauges(openings: list[tuple[str, int]], clock_ms: int, test=TEST) -> dict[tuple[str, str], float]:
    """(family, tenant) -> value from the openings by the words of the definition: loops over minutes,
    the EWMA as a recursion, the tail in exact rationals."""
    now = clock_ms // MIN
    by_tenant: dict[str, Counter] = defaultdict(Counter)
    for tenant, opened_ms in openings:
        by_tenant[tenant][opened_ms // MIN] += 1

    def at(minutes: Counter, e: int) -> tuple[int, float | None, bool]:
        seen = [m for m in minutes if e - (test.weeks + 1) * 10080 < m <= e]
        count = lambda lo, hi: sum(n for m, n in minutes.items() if lo < m <= hi)  # noqa: E731
        recent = count(e - test.window, e)
        if not seen:
            return recent, None, False
        first = min(seen)

        def span(end: int) -> int | None:  # None: not all of it is history
            lo = end - test.window - test.spread
            return count(lo, end + test.spread) if lo + 1 >= first else None

        weeks = [c for c in (span(e - k * 10080) for k in range(1, test.weeks + 1)) if c is not None]
        days = [c for c in (span(e - d * 1440) for d in range(1, 8)) if c is not None]  # newest first
        if not days:
            return recent, None, False
        ewma = float(days[-1])
        for c in reversed(days[:-1]):
            ewma += 0.3 * (c - ewma)
        spans = test.weeks * (test.window + 2 * test.spread)  # minutes of baseline, scaled to one window
        lam = (sum(weeks) + (test.weeks - len(weeks)) * ewma) * test.window / spans
        flagged = recent >= test.min_count and recent >= test.min_ratio * lam and (
            lam == 0 or exact_tail(recent, Fraction(lam)) < test.alpha)
        return recent, lam, flagged

    gauges = {}
    for tenant, minutes in by_tenant.items():
        if not any(now - (test.weeks + 1) * 10080 < m <= now for m in minutes):
            continue
        recent, lam, _ = at(minutes, now)
        held = range(now - test.hold + 1, now + 1)
        gauges[("cx_complaint_spike", tenant)] = float(any(at(minutes, e)[2] for e in held))
        gauges[("cx_complaints_opened_recent", tenant)] = float(recent)
        if lam is not None:
            gauges[("cx_complaints_opened_expected", tenant)] = lam
    return gauges


def opened(tenant: str, at: int, n: int = 0) -> ComplaintOpened:
    return ComplaintOpened(tenant, "c1", f"{tenant}-{at}-{n}", at)


def feed(core, state, facts: list[ComplaintOpened], clock: int) -> None:
    out = Output()
    core.take(state, Facts(facts), out)
    core.tick(state, clock, out)


def samples(core, states, clock) -> dict[tuple[str, str], float]:
    return {(m.name, s.labels["tenant"]): s.value for m in core.collect(states, [clock] * len(states)) for s in m.samples}


def scenario(rng: random.Random, end: int) -> list[tuple[str, int]]:
    """acme: 6 weeks of seasonal traffic and bursts; globex: 3 days, hooli: 5 days (short history);
    initech: 10 hours (no baseline yet); umbrella: quiet for the last 6 weeks (no series)."""
    openings = []
    for t in range(end - 6 * WEEK, end, MIN):
        hour = (t // HOUR) % 24
        if rng.random() < (0.15 if 8 <= hour < 20 else 0.04):
            openings.append(("acme", t + rng.randrange(MIN)))
        if t >= end - 3 * DAY and rng.random() < 0.08:
            openings.append(("globex", t + rng.randrange(MIN)))
        if t >= end - 10 * HOUR and rng.random() < 0.1:
            openings.append(("initech", t + rng.randrange(MIN)))
        if t >= end - 5 * DAY and rng.random() < 0.05:
            openings.append(("hooli", t + rng.randrange(MIN)))
    for burst in (end - 3 * HOUR, end - 50 * MIN, end - 20 * MIN):
        openings += [("acme", burst + rng.randrange(15 * MIN)) for _ in range(25)]
    openings += [("globex", end - 30 * MIN + rng.randrange(30 * MIN)) for _ in range(30)]
    openings.append(("umbrella", end - 7 * WEEK))
    return sorted(openings, key=lambda o: o[1])


def test_gauges_equal_a_plain_recomputation_of_the_definition():
    rng = random.Random(16)
    end = MONDAY + 6 * WEEK + 13 * HOUR + 17 * MIN
    openings = scenario(rng, end)
    core = ComplaintSpikeCore(TEST)
    state = core.new_state(0)
    clocks = [end - 4 * HOUR, end - 2 * HOUR - 5 * MIN, end - 75 * MIN, end - 40 * MIN, end - 10 * MIN, end,
              end + 70 * MIN, end + 3 * HOUR]
    fed = 0
    seen = Counter()
    for clock in clocks:
        upto = fed
        while upto < len(openings) and openings[upto][1] <= clock:
            upto += 1
        # a few openings arrive late, after the clock has passed them: the gauges must not care
        late = [o for o in openings[fed:upto] if rng.random() < 0.02]
        feed(core, state, [opened(t, at, i) for i, (t, at) in enumerate(openings[fed:upto]) if (t, at) not in late],
             clock)
        samples(core, [state], clock)  # a scrape in between: the core keeps a tenant's gauges until its openings change
        feed(core, state, [opened(t, at, -1) for t, at in late], clock)
        fed = upto
        got = samples(core, [state], clock)
        want = plain_gauges(openings[:fed], clock)
        assert got.keys() == want.keys(), clock
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-12), (clock, key)
            seen[(key[0], value > 0)] += 1
    # the scenario exercises both states of the flag, and tenants with and without a baseline
    assert seen[("cx_complaint_spike", True)] and seen[("cx_complaint_spike", False)]
    assert not any(k[1] == "umbrella" for k in got)
    assert ("cx_complaints_opened_expected", "initech") not in got and ("cx_complaints_opened_recent", "initech") in got


# -- the flag minute by minute -----------------------------------------------------------------------
def step_through_surge(start_offset: int, seed=None, test=TEST) -> tuple[int, int, dict[int, float]]:
    """Five weeks of 6 openings an hour (one every 10 minutes), then 3 hours with 15 more an hour from
    ``start_offset`` minutes into an hour (3.5x in all), then the usual again. The extra openings come
    one every 4 minutes, or, with a ``seed``, at random minutes (probability 1/4 each), so the window's
    count wobbles around the threshold. The clock moves one minute at a time and the flag is read at
    every minute. Returns the surge's first minute, the minute after its last, and minute -> flag."""
    core = ComplaintSpikeCore(test)
    state = core.new_state(0)
    rng = random.Random(seed)
    surge_start = MONDAY + 5 * WEEK + 14 * HOUR + start_offset * MIN
    surge_end = surge_start + 3 * HOUR
    feed(core, state, [opened("acme", t) for t in range(MONDAY, surge_start, 10 * MIN)], surge_start - 1)
    flags = {}
    for minute in range(surge_start, surge_end + 3 * HOUR, MIN):
        facts = [opened("acme", minute)] if (minute - MONDAY) % (10 * MIN) == 0 else []
        extra = rng.random() < 0.25 if seed is not None else (minute - surge_start) % (4 * MIN) == 0
        if minute < surge_end and extra:
            facts.append(opened("acme", minute, 1))
        feed(core, state, facts, minute + MIN - 1)  # the clock at the end of the minute
        flags[minute] = samples(core, [state], minute + MIN - 1)[("cx_complaint_spike", "acme")]
    return surge_start, surge_end, flags


def drops_while_raised(flags: dict[int, float], surge_end: int) -> list[int]:
    raised = min(m for m, f in flags.items() if f == 1.0)
    return [m for m in flags if raised <= m < surge_end and flags[m] != 1.0]


@pytest.mark.parametrize("start_offset", [0, 37, 55])
def test_flag_stays_raised_minute_by_minute_through_a_sustained_surge(start_offset):
    surge_start, surge_end, flags = step_through_surge(start_offset)
    raised = min(m for m, f in flags.items() if f == 1.0)
    assert raised < surge_end - HOUR, "raised too late to show anything"
    assert drops_while_raised(flags, surge_end) == []
    assert any(m % HOUR == 0 for m in range(raised, surge_end, MIN))  # it crossed an hour boundary raised
    assert all(f == 0.0 for m, f in flags.items() if m < raised)


@pytest.mark.parametrize("seed", [1, 3, 6])
def test_flag_stays_raised_through_a_surge_with_random_arrivals(seed):
    """Where the test of a single minute goes 1, 0, 1 (as it does without the hold), the flag stays 1."""
    surge_start, surge_end, flags = step_through_surge(37, seed)
    assert drops_while_raised(flags, surge_end) == []
    _, _, unheld = step_through_surge(37, seed, replace(TEST, hold=1))
    assert drops_while_raised(unheld, surge_end), "this stream does not need the hold: pick another seed"


@pytest.mark.parametrize("start_offset", [0, 37])
def test_flag_clears_after_the_surge_ends_and_stays_clear(start_offset):
    surge_start, surge_end, flags = step_through_surge(start_offset)
    cleared = min(m for m, f in flags.items() if m >= surge_end and f == 0.0)
    # the window empties of the surge within an hour, then the hold runs out
    assert cleared <= surge_end + (TEST.window + TEST.hold) * MIN
    assert all(f == 0.0 for m, f in flags.items() if m >= cleared)


# -- baselines, restore, state --------------------------------------------------------------------
def test_no_baseline_without_a_day_of_history_and_ewma_while_short():
    core = ComplaintSpikeCore(TEST)
    state = core.new_state(0)
    base = 1_700_000_000_000 // DAY * DAY
    feed(core, state, [opened("acme", base + i) for i in range(50)], base + 1000)
    got = samples(core, [state], base + 1000)
    assert got[("cx_complaint_spike", "acme")] == 0.0 and ("cx_complaints_opened_expected", "acme") not in got
    # two days of 4 per hour, evenly: the same-time-of-day baseline is 4 per window
    facts = [opened("globex", base + h * HOUR + i * 15 * MIN) for h in range(48) for i in range(4)]
    feed(core, state, facts, base + 48 * HOUR - 1)
    got = samples(core, [state], base + 48 * HOUR - 1)
    assert got[("cx_complaints_opened_expected", "globex")] == pytest.approx(4.0)
    assert got[("cx_complaints_opened_recent", "globex")] == 4.0
    assert got[("cx_complaint_spike", "globex")] == 0.0


def test_partitions_are_summed_and_restore_equals_live_counting():
    core = ComplaintSpikeCore(TEST)
    live, a, b = core.new_state(0), core.new_state(1), core.new_state(2)
    rng = random.Random(3)
    end = MONDAY + 6 * WEEK
    openings = scenario(rng, end)
    feed(core, live, [opened(t, at, i) for i, (t, at) in enumerate(openings)], end)
    (spec,) = core.restores()
    restored = [(t, at) for t, at in openings if at > end - spec.span_ms]  # what the sink reads back
    restore(core, a, "opened", restored[::2], end)
    restore(core, b, "opened", restored[1::2], end)
    for clock in (end, end + 30 * MIN, end + 2 * HOUR):
        assert samples(core, [a, b], clock) == samples(core, [live], clock)


def test_state_is_bounded_by_the_history_the_flag_reads():
    core = ComplaintSpikeCore(TEST)
    state = core.new_state(0)
    for week in range(10):
        start = MONDAY + week * WEEK
        feed(core, state, [opened("acme", t) for t in range(start, start + WEEK, MIN)], start + WEEK - 1)
    assert len(state.counts["acme"]) <= TEST.history + 60  # forgotten once an hour


@pytest.mark.parametrize("variable, value, message", [
    ("CXP_SPIKE_WINDOW", "90s", "CXP_SPIKE_WINDOW=90s must be a positive whole number of minutes"),
    ("CXP_SPIKE_HOLD", "0s", "CXP_SPIKE_HOLD=0s must be a positive whole number of minutes"),
    ("CXP_SPIKE_SPREAD", "1410m", "must be at most 1d"),
])
def test_settings_refuse_what_the_detector_cannot_do(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=message):
        Settings()


# -- the measured figures (docs/metrics.md), small and seeded ---------------------------------------
def test_a_tripling_at_20_an_hour_is_flagged_within_45_minutes_and_false_alarms_stay_rare():
    detect = sliding_window(TEST)
    found = delays(detect, 20.0, 3.0, surges=30, seed=5, weeks=TEST.weeks)
    assert quantile(found, 0.5) <= 45
    assert false_alarms(detect, 5.0, months=2, seed=5, weeks=TEST.weeks, tenants=1).per_month <= 2


def test_the_sliding_window_sees_the_issue_surge_before_the_hourly_buckets_did():
    """2 an hour before, 10 an hour during (issue 16): flagged sooner than by the hourly buckets."""
    window = delays(sliding_window(TEST), 2.0, 5.0, surges=30, seed=7, weeks=TEST.weeks)
    hourly = delays(HourlyBuckets(TEST.alpha, TEST.min_count, TEST.min_ratio, TEST.weeks), 2.0, 5.0, surges=30,
                    seed=7, weeks=TEST.weeks)
    assert quantile(window, 0.5) < quantile(hourly, 0.5)
