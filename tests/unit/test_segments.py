"""Segment breakdowns: every answer in exactly one segment per dimension, capped, summing to the whole."""
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedup import id_hash
from pipeline.metrics.base import Batch, Output
from pipeline.metrics.rounds import Rounds
from pipeline.metrics.segments import OTHER, UNKNOWN, SegmentCore
from pipeline.metrics.surveys import SurveyCore
from tests.unit.cores import restore

WINDOWS = {"1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000}
DAY = 86_400_000

answers = st.lists(st.tuples(
    st.sampled_from(["acme", "globex"]), st.sampled_from(["NPS", "CSAT", "CES"]), st.integers(0, 10),
    st.integers(0, 9 * DAY), st.sampled_from(["web", "crm", "chatbot"]),
    st.one_of(st.none(), st.sampled_from([f"r{i}" for i in range(12)])), st.one_of(st.none(), st.sampled_from(["pro", "free"])),
), min_size=1, max_size=150)


def run(items, max_values):
    """Survey and segment cores side by side, the way the processor runs them: answers are facts."""
    surveys, segments = SurveyCore(WINDOWS), SegmentCore(WINDOWS, ("region", "plan", "source"), max_values)
    s_state, g_state, clock = surveys.new_state(0), segments.new_state(0), 0
    for i, (tenant, kind, score, t, source, region, plan) in enumerate(items):
        score = {"NPS": score, "CSAT": 1 + score % 5, "CES": 1 + score % 7}[kind]
        attributes = {k: v for k, v in (("region", region), ("plan", plan)) if v is not None}
        event = {"event_id": f"e{i}", "event_time": t, "tenant": tenant, "attributes": attributes,
                 "survey": {"kind": kind, "score": score}}
        rounds, out = Rounds([surveys, segments]), Output()
        rounds.add([s_state, g_state], Batch(0, [source], [event], [id_hash(event["event_id"])]), out)
        clock = max(clock, t)
        rounds.tick([s_state, g_state], clock, out)
    return surveys, s_state, segments, g_state, clock


@settings(max_examples=100, deadline=None)
@given(answers, st.integers(1, 5))
def test_segments_sum_to_the_unsegmented_count_and_are_capped(items, max_values):
    surveys, s_state, segments, g_state, clock = run(items, max_values)
    whole = SurveyCore.totals([s_state], [clock])
    parts = segments.totals([g_state], [clock])
    sums = defaultdict(lambda: [0, 0])
    labels = defaultdict(set)
    for (tenant, kind, dimension, segment, window), t in parts.items():
        sums[(tenant, kind, window, dimension)][0] += t.n
        sums[(tenant, kind, window, dimension)][1] += t.score_sum
        labels[(tenant, dimension)].add(segment)
    for (tenant, kind, window), t in whole.items():
        for dimension in ("region", "plan", "source"):
            assert sums.get((tenant, kind, window, dimension), [0, 0]) == [t.n, t.score_sum]
    for segs in labels.values():
        assert len(segs - {OTHER}) <= max_values


def test_biggest_segments_keep_their_names_and_missing_attributes_are_unknown():
    items = [("acme", "NPS", 10, 1000, "web", region, None) for region in ["eu"] * 5 + ["us"] * 3 + ["apac"] * 2]
    _, _, segments, state, clock = run(items, 2)
    regions = {seg: t.n for (_, _, dim, seg, window), t in segments.totals([state], [clock]).items()
               if dim == "region" and window == "7d"}
    assert regions == {"eu": 5, "us": 3, OTHER: 2}
    plans = {seg for (_, _, dim, seg, _), _ in segments.totals([state], [clock]).items() if dim == "plan"}
    assert plans == {UNKNOWN}


def test_restore_from_survey_rows_equals_live_state():
    items = [("acme", "NPS", i % 11, i * 60_000, ("web", "crm")[i % 2], f"r{i % 3}", "pro") for i in range(40)]
    surveys, _, segments, live, clock = run(items, 5)
    out = Output()
    fresh_surveys = surveys.new_state(0)
    for i, (tenant, kind, score, t, source, region, plan) in enumerate(items):
        event = {"event_id": f"e{i}", "event_time": t, "tenant": tenant, "attributes": {"region": region, "plan": plan},
                 "survey": {"kind": kind, "score": score}}
        surveys.add(fresh_surveys, Batch(0, [source], [event], [id_hash(f"e{i}")]), out)
    rows = [(r.tenant, r.kind, r.score, r.event_ms, r.source, r.attr_keys, r.attr_values)
            for r in out.rows["survey_responses"]]
    restored = segments.new_state(0)
    restore(segments, restored, "answers", rows, clock)
    assert segments.totals([restored], [clock]) == segments.totals([live], [clock])


@settings(max_examples=60, deadline=None)
@given(answers, st.integers(1, 4), st.lists(st.sampled_from(["batch", "tick", "revoke", "assign"]), min_size=1, max_size=12))
def test_kept_sums_and_samples_equal_a_new_core_at_every_step(items, max_values, steps):
    """The core keeps the partitions' sums and the samples of unchanged series between scrapes; after any
    mix of batches, clocks moving, a partition revoked and a new one assigned, its families are what a new
    core (nothing kept) collects from the same states."""
    surveys, segments = SurveyCore(WINDOWS), SegmentCore(WINDOWS, ("region", "plan", "source"), max_values)
    owned = {p: (surveys.new_state(p), segments.new_state(p)) for p in (0, 1)}
    clocks, pending, next_partition = {0: 0, 1: 0}, list(enumerate(items)), 2

    def samples(core):
        partitions = sorted(owned)
        return [family.samples for family in core.collect([owned[p][1] for p in partitions],
                                                          [clocks[p] for p in partitions])]

    for step in steps:
        if step == "batch" and pending:
            taken, pending = pending[:len(items) // 4 + 1], pending[len(items) // 4 + 1:]
            for i, (tenant, kind, score, t, source, region, plan) in taken:
                p = sorted(owned)[i % len(owned)]
                score = {"NPS": score, "CSAT": 1 + score % 5, "CES": 1 + score % 7}[kind]
                event = {"event_id": f"e{i}", "event_time": t, "tenant": tenant, "survey": {"kind": kind, "score": score},
                         "attributes": {k: v for k, v in (("region", region), ("plan", plan)) if v is not None}}
                Rounds([surveys, segments]).add(list(owned[p]), Batch(p, [source], [event], [id_hash(f"e{i}")]), Output())
                clocks[p] = max(clocks[p], t)
        elif step == "tick":
            for p in owned:
                clocks[p] += DAY // 3
                Rounds([surveys, segments]).tick(list(owned[p]), clocks[p], Output())
        elif step == "revoke" and len(owned) > 1:
            del owned[min(owned)]
        elif step == "assign":
            owned[next_partition] = (surveys.new_state(next_partition), segments.new_state(next_partition))
            clocks[next_partition], next_partition = max(clocks.values()), next_partition + 1
        assert samples(segments) == samples(SegmentCore(WINDOWS, ("region", "plan", "source"), max_values))


def test_an_unchanged_count_keeps_its_sample_object_between_scrapes():
    """After a batch that adds a promoter to a segment, its passive count is unchanged: the core hands over last
    scrape's sample object (the text format skips it unread), and new samples for the promoter count and the
    score sum, which equal those of a new core."""
    surveys, segments = SurveyCore(WINDOWS), SegmentCore(WINDOWS, ("region",), 20)
    states = [surveys.new_state(0), segments.new_state(0)]

    def answer(i, score):
        event = {"event_id": f"e{i}", "event_time": 1_000 * i, "tenant": "acme", "attributes": {"region": "eu"},
                 "survey": {"kind": "NPS", "score": score}}
        Rounds([surveys, segments]).add(states, Batch(0, ["web"], [event], [id_hash(f"e{i}")]), Output())

    def by_labels(core):
        return {(s.name, tuple(sorted(s.labels.items()))): s
                for family in core.collect([states[1]], [3_000]) for s in family.samples}

    answer(0, 10)
    answer(1, 8)
    before = by_labels(segments)
    answer(2, 9)
    after = by_labels(segments)
    assert after == by_labels(SegmentCore(WINDOWS, ("region",), 20))
    for window in WINDOWS:
        series = (("dimension", "region"), ("kind", "NPS"), ("segment", "eu"), ("tenant", "acme"), ("window", window))
        responses = {c: ("cx_segment_responses", tuple(sorted(series + (("class", c),))))
                     for c in ("promoter", "passive")}
        assert after[responses["passive"]] is before[responses["passive"]]
        assert after[responses["promoter"]].value == 2 and before[responses["promoter"]].value == 1
        score = ("cx_segment_scores", series)
        assert (before[score].value, after[score].value) == (18, 27)
