"""The NPS / CSAT / CES core and its rolling windows against a plain recomputation from the responses."""
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedup import id_hash
from pipeline.metrics.base import Batch, Output
from pipeline.metrics.facts import SurveyAnswered
from pipeline.metrics.surveys import SurveyCore
from pipeline.scores import Totals, ces, classify, counts_of, csat_ratio, nps, nps_margin_of_error
from pipeline.metrics.windows import RollingCounts
from tests.unit.cores import restore

WINDOWS = {"1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000}


class SurveyWindows:
    """The survey core's windows, read as Totals the way the core reads them."""

    def __init__(self, windows):
        self.counts = RollingCounts(windows, 5)

    def add(self, tenant, kind, score, t):
        self.counts.add((tenant, kind), t, counts_of(kind, score))

    def add_bucket(self, tenant, kind, minute, counts):
        self.counts.add_bucket((tenant, kind), minute, counts)

    def prune(self, clock):
        self.counts.prune(clock)

    def totals(self, clock):
        return {(tenant, kind, label): Totals.of(c) for ((tenant, kind), label), c in self.counts.totals(clock).items()}


def test_nps_buckets():
    assert [classify("NPS", s) for s in range(11)] == [2] * 7 + [1, 1] + [0, 0]
    assert [classify("CSAT", s) for s in range(1, 6)] == [2, 2, 1, 0, 0]
    assert {classify("CES", s) for s in range(1, 8)} == {0}


def test_nps_and_margin_by_hand():
    t = Totals(n=100, classes=(50, 30, 20), score_sum=0)
    assert nps(t) == 30.0
    # p=.5 d=.2: 1.96*100*sqrt((.7-.09)/100) = 15.308...
    assert math.isclose(nps_margin_of_error(t), 196 * math.sqrt(0.61 / 100))
    assert nps(Totals()) is None and nps_margin_of_error(Totals()) is None


def test_csat_ces():
    assert csat_ratio(Totals(n=4, classes=(3, 1, 0))) == 0.75
    assert ces(Totals(n=4, classes=(4, 0, 0), score_sum=10)) == 2.5


def oracle(responses, clock_ms, window_ms):
    """Plain recomputation: the responses inside (clock - W, clock] with the boundary rounded to the minute."""
    out = {}
    for tenant, kind, score, t in responses:
        if t // 60_000 > (clock_ms - window_ms) // 60_000 and t <= clock_ms:
            n, classes, total = out.get((tenant, kind), (0, [0, 0, 0], 0))
            classes = list(classes)
            classes[classify(kind, score)] += 1
            out[(tenant, kind)] = (n + 1, classes, total + score)
    return out


def assert_matches(totals, responses, clock):
    for label, w in WINDOWS.items():
        expected = oracle(responses, clock, w)
        for tenant in ("acme", "globex"):
            got = totals.get((tenant, "NPS", label), Totals())
            n, classes, total = expected.get((tenant, "NPS"), (0, [0, 0, 0], 0))
            assert (got.n, list(got.classes), got.score_sum) == (n, classes, total)


responses = st.lists(
    st.tuples(st.sampled_from(["acme", "globex"]), st.just("NPS"), st.integers(0, 10),
              st.integers(0, 10 * 86_400_000)),
    min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(responses)
def test_windows_match_recomputation(responses):
    windows = SurveyWindows(WINDOWS)
    for tenant, kind, score, t in responses:
        windows.add(tenant, kind, score, t)
    clock = max(t for *_, t in responses)
    windows.prune(clock)  # pruning must not change any window's result
    assert_matches(windows.totals(clock), responses, clock)


def test_late_event_updates_its_bucket():
    windows = SurveyWindows(WINDOWS)
    now = 10 * 86_400_000
    windows.add("acme", "NPS", 10, now)
    windows.add("acme", "NPS", 0, now - 2 * 3_600_000)  # late: outside 1h, inside 24h
    totals = windows.totals(now)
    assert totals[("acme", "NPS", "1h")].n == 1
    assert totals[("acme", "NPS", "24h")].classes == (1, 0, 1)


def test_add_bucket_equals_adds():
    a, b = SurveyWindows(WINDOWS), SurveyWindows(WINDOWS)
    for score in (10, 9, 3, 7):
        a.add("acme", "NPS", score, 120_000)
    b.add_bucket("acme", "NPS", 2, [4, 2, 1, 1, 29])
    assert a.totals(200_000) == b.totals(200_000)


@settings(max_examples=200, deadline=None)
@given(responses)
def test_running_sums_match_recomputation_at_every_step(responses):
    """Reading between additions, with the clock moving, late events and pruning, never drifts; and the
    windows' ``version`` (what a scrape keeps its sums by) moves whenever a total changed."""
    windows = SurveyWindows(WINDOWS)
    clock = 0
    seen = []
    read = (None, None)  # (version, totals) at the last read
    for tenant, kind, score, t in responses:
        clock = max(clock, t)
        if clock - t > 7 * 86_400_000:
            continue  # too late: the worker rejects it before it reaches the windows
        if read[0] == windows.counts.version:  # nothing added since: moving the clock alone
            windows.counts.advance(clock)
            assert windows.counts.version != read[0] or windows.counts.current_totals() == read[1]
        windows.add(tenant, kind, score, t)
        seen.append((tenant, kind, score, t))
        windows.prune(clock)
        assert_matches(windows.totals(clock), seen, clock)
        read = (windows.counts.version, windows.counts.current_totals())


def survey_event(event_id, score, t, tenant="acme", kind="NPS"):
    return {"event_id": event_id, "event_type": "survey_response", "event_time": t, "tenant": tenant,
            "customer_id": "c1", "survey": {"kind": kind, "score": score}}


def accepted(events, partition=0):
    return Batch(partition, ["web"] * len(events), events, [id_hash(e["event_id"]) for e in events])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 10), st.integers(0, 3 * 86_400_000)), min_size=1, max_size=80))
def test_core_counts_each_answer_once_however_often_delivered(answers):
    """Idempotent on its own: redelivering answers (beyond any processor dedup) changes no total."""
    core = SurveyCore(WINDOWS)
    state, out = core.new_state(0), Output()
    events = {f"e{i}": survey_event(f"e{i}", score, t) for i, score, t in answers}
    for event in events.values():
        core.add(state, accepted([event]), out)
    core.add(state, accepted(list(events.values())), out)  # everything again, in one message
    clock = max(e["event_time"] for e in events.values())
    core.tick(state, clock, out)
    assert len(out.rows["survey_responses"]) == len(events)
    responses = [("acme", "NPS", e["survey"]["score"], e["event_time"]) for e in events.values()]
    assert_matches(SurveyCore.totals([state], [clock]), responses, clock)


def test_restore_from_rows_equals_live_state_and_stays_idempotent():
    core = SurveyCore(WINDOWS)
    live, out = core.new_state(0), Output()
    events = [survey_event(f"e{i}", i % 11, 1_000_000 + i * 60_000) for i in range(50)]
    core.add(live, accepted(events), out)
    rows = [(r.tenant, r.kind, r.score, r.event_ms, r.id_hash) for r in out.rows["survey_responses"]]
    restored = core.new_state(0)
    restore(core, restored, "answers", rows, events[-1]["event_time"])
    clock = events[-1]["event_time"]
    assert SurveyCore.totals([restored], [clock]) == SurveyCore.totals([live], [clock])
    again = Output()
    core.add(restored, accepted(events), again)  # e.g. events written to survey_responses but not yet to events
    assert not again.rows["survey_responses"] and SurveyCore.totals([restored], [clock]) == SurveyCore.totals([live], [clock])


def test_collect_sums_partitions_and_detractors_are_facts():
    core = SurveyCore(WINDOWS)
    a, b, out = core.new_state(0), core.new_state(0), Output()
    core.add(a, accepted([survey_event("x", 10, 60_000)]), out)
    core.add(b, accepted([survey_event("y", 2, 60_000)], partition=1), out)
    families = {f.name: f for f in core.collect([a, b], [60_000] * 2)}
    nps_1h = [s.value for s in families["cx_nps"].samples if s.labels == {"tenant": "acme", "window": "1h"}]
    assert nps_1h == [0.0]
    assert [(type(f), f.event_id, f.score) for f in out.facts] == [(SurveyAnswered, "x", 10), (SurveyAnswered, "y", 2)]
    assert {f.name for f in core.describe()} == set(families)
