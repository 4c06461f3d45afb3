import threading
import time
from collections import Counter, defaultdict

import pytest

from pipeline.money import minor_unit
from pipeline.partitioner import event_key
from pipeline.registry import EVENT_SCHEMAS, BundledRegistry
from pipeline.simulate import BAD_KINDS, SPIKE_MS, JsonlWriter, Simulator, read_jsonl, run_simulation
from pipeline.validate import SCORE_RANGES, Rules, check_fields
from pipeline.wire import Codec

START = 1_700_000_000_000
MIN = 60_000
REGISTRY = BundledRegistry()
SCHEMAS = {source: REGISTRY.by_name(name).schema for source, name in EVENT_SCHEMAS.items()}
RULES = Rules.from_schemas(SCHEMAS, 300_000, 7 * 86_400_000)
FUNNEL = ("product_view", "add_to_cart", "checkout_started", "purchase")


def run(count=20_000, seed=11, rate=0.1, **kw):
    """By default 20k events at 0.1/s: 55 h of event time, long enough for complaints to be closed."""
    sim = Simulator(seed=seed, start_ms=START, **kw)
    return sim, list(sim.events(count=count, rate=rate))


@pytest.fixture(scope="module")
def clean():
    return run()[1]


@pytest.fixture(scope="module")
def spoiled():
    return run(bad_rate=0.05)


def test_same_seed_same_events(clean):
    assert run()[1] == clean
    assert run(count=500, bad_rate=0.1)[1] == run(count=500, bad_rate=0.1)[1]
    assert run(count=500, seed=12)[1] != clean[:500]


def test_time_order_and_rate(clean):
    times = [e["event_time"] for _, e in clean]
    assert times == sorted(times) and times[0] >= START
    # one event per 1/rate seconds: never ahead of that clock (due follow-ups may lag it a little), no drift
    assert all(t <= START + (i + 1) * 10_000 for i, t in enumerate(times))
    assert times[-1] >= START + len(times) * 10_000 * 0.99
    fast = [e["event_time"] for _, e in run(count=10_000, rate=1000.0)[1]]
    assert START + 9_900 <= fast[-1] <= START + 10_000


def test_every_source_and_event_type_appears(clean):
    seen = {(s, e["event_type"]) for s, e in clean}
    for source, schema in SCHEMAS.items():
        symbols = next(f for f in schema["fields"] if f["name"] == "event_type")["type"]["symbols"]
        assert {(source, t) for t in symbols} <= seen


def test_events_are_complete_records_that_round_trip(clean):
    codec = Codec(REGISTRY)
    for source, event in clean[:2000]:
        assert set(event) == {f["name"] for f in SCHEMAS[source]["fields"]}
        assert codec.decode(codec.encode_event(source, event)).events == [event]


def test_without_bad_rate_everything_is_valid_and_unique(clean):
    assert all(check_fields(s, e, RULES) is None for s, e in clean)
    assert len({e["event_id"] for _, e in clean}) == len(clean)
    assert any(s == "web" and e["customer_id"] is None for s, e in clean)  # anonymous visitors
    assert {k for _, e in clean for k in e["attributes"]} == {"region", "plan", "device", "language"}


def test_funnel_drops_off_step_by_step(clean):
    reached = defaultdict(set)
    for source, event in clean:
        if event["event_type"] in FUNNEL:
            reached[event["event_type"]].add(event_key(source, event))
    counts = [len(reached[step]) for step in FUNNEL]
    assert counts[0] > counts[1] > counts[2] > counts[3] > 0, counts
    for earlier, later in zip(FUNNEL, FUNNEL[1:]):
        assert reached[later] <= reached[earlier]


def test_survey_scores_and_tenant_profiles(clean):
    scores = defaultdict(list)
    for source, event in clean:
        if source == "complaints":
            continue
        assert (event["event_type"] == "survey_response") == (event["survey"] is not None)
        if event["survey"]:
            kind, score = event["survey"]["kind"], event["survey"]["score"]
            low, high = SCORE_RANGES[kind]
            assert low <= score <= high
            scores[(event["tenant"], kind, source)].append(score)
    assert {(kind, source) for _, kind, source in scores} == {
        ("NPS", "web"), ("NPS", "crm"), ("CSAT", "web"), ("CSAT", "chatbot"), ("CES", "web"), ("CES", "crm")}

    def nps(tenant):
        answers = scores[(tenant, "NPS", "web")] + scores[(tenant, "NPS", "crm")]
        return 100 * (sum(s >= 9 for s in answers) - sum(s <= 6 for s in answers)) / len(answers)

    assert nps("acme") > nps("globex") + 20


def test_complaint_spike_shows():
    spike = START + 40 * MIN
    _, events = run(count=50_000, rate=10.0, spike_at_ms=spike)  # 83 minutes
    opened = [e["event_time"] for s, e in events if s == "complaints" and e["event_type"] == "opened"]

    def per_minute(since, until):
        return sum(since <= t < until for t in opened) / ((until - since) / MIN)

    during = per_minute(spike, spike + SPIKE_MS)
    assert during > 4 * per_minute(spike - 30 * MIN, spike) > 0
    assert during > 4 * per_minute(spike + SPIKE_MS + 5 * MIN, spike + SPIKE_MS + 30 * MIN) > 0


def test_bad_records_are_what_stats_say(spoiled):
    sim, events = spoiled
    stats = sim.stats
    assert abs(sum(stats.values()) - 0.05 * len(events)) < 4 * (0.05 * len(events)) ** 0.5
    assert all(stats[kind] > 0 for kind in BAD_KINDS)
    ids = Counter(e["event_id"] for _, e in events)
    assert sum(n - 1 for id_, n in ids.items() if id_) == stats["duplicate"]
    assert ids[""] == stats["empty_event_id"]
    assert sum(1 for s, e in events if s != "web" and e["customer_id"] is None) == stats["missing_customer"]
    no_survey = sum(1 for s, e in events if e["event_type"] == "survey_response" and e["survey"] is None)
    assert no_survey == stats["missing_survey"]
    reasons = Counter(r.reason for r in (check_fields(s, e, RULES) for s, e in events) if r)
    assert reasons == {"missing_field": stats["empty_event_id"] + stats["missing_customer"],
                       "invalid_value": stats["bad_score"] + stats["missing_survey"]}
    seen, times = set(), []
    for _, event in events:
        if event["event_id"] and event["event_id"] in seen:
            continue  # a duplicate repeats an earlier event as it was, time included
        seen.add(event["event_id"])
        times.append(event["event_time"])
    assert times == sorted(times)


def test_jsonl_round_trip(tmp_path):
    _, events = run(count=300, bad_rate=0.05)
    with JsonlWriter(tmp_path / "e.jsonl") as out:
        assert run_simulation(out, iter(events), rate=None) == 300
    assert list(read_jsonl(tmp_path / "e.jsonl")) == events


class ListSink:
    def __init__(self):
        self.sent, self.flushed = [], 0

    def send(self, source, event):
        self.sent.append((source, event))

    def flush(self):
        self.flushed += 1


def test_run_simulation_paces_at_rate_and_reports_progress():
    sink, reports = ListSink(), []
    started = time.monotonic()
    assert run_simulation(sink, iter(run(count=300, rate=200.0)[1]), rate=200.0, progress=reports.append) == 300
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 3.0, elapsed
    assert sink.flushed == 1 and reports[-1] == 300 and len(reports) >= 2


def test_run_simulation_stops_by_duration_and_on_request():
    sink = ListSink()
    events = run(count=1000, rate=100.0)[1]  # 10 s of event time
    assert run_simulation(sink, iter(events), rate=None, duration_s=2.0) in range(195, 206)
    assert all(e["event_time"] - events[0][1]["event_time"] <= 2000 for _, e in sink.sent)

    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    sent = run_simulation(ListSink(), iter(events), rate=100.0, stop=stop)
    assert time.monotonic() - started < 1.0 and 20 <= sent <= 45


def test_skip_to_jumps_event_time_and_keeps_order():
    """A backfill then live traffic: after skip_to, new events start at the new time, nothing goes back."""
    sim = Simulator(seed=5, start_ms=START)
    history = list(sim.events(until_ms=START + 3600_000, rate=1.0))
    live_at = START + 5 * 3600_000
    sim.skip_to(live_at)
    live = list(sim.events(count=2000, rate=100.0))
    times = [e["event_time"] for _, e in history + live]
    assert times == sorted(times)
    assert history[-1][1]["event_time"] <= START + 3600_000
    # follow-ups of the history that fell due in the gap come first; then everything is live
    assert all(e["event_time"] >= live_at for _, e in live[200:])
    assert live[-1][1]["event_time"] <= live_at + 2000 * 10 + 10


def test_silent_customers_start_nothing_after_their_time():
    silent_at = START + 20 * 3600_000
    quiet_sim, quiet = run(count=20_000, silent_share=0.2, silent_at_ms=silent_at)
    _, plain = run(count=20_000)
    silent = {c.id for c in quiet_sim.customers if c.silent_from_ms == silent_at}
    assert 0.15 * len(quiet_sim.customers) < len(silent) < 0.25 * len(quiet_sim.customers)
    # before that, the same events as without silence; after it, no new activity of theirs
    before = [item for item in quiet if item[1]["event_time"] < silent_at]
    assert before == plain[:len(before)]
    # a day later, only the handling of complaints they had opened before may still mention them
    late = [(s, e) for s, e in quiet if e["event_time"] >= silent_at + 24 * 3600_000 and e["customer_id"] in silent]
    assert all(s == "complaints" and e["event_type"] != "opened" for s, e in late)
    assert any(e["customer_id"] in silent for _, e in before)


def test_orders_are_valid_in_several_currencies_of_one_tenant_and_some_are_sent_twice(clean):
    purchases = [e for s, e in clean if e["event_type"] == "purchase"]
    assert purchases and all(check_fields("web", e, RULES) is None for e in purchases)
    currencies = defaultdict(set)
    for e in purchases:
        currencies[e["tenant"]].add(e["currency"])
        digits = minor_unit(e["currency"])
        assert round(e["revenue"], digits) == e["revenue"] > 0  # to the currency's minor unit
    assert currencies["acme"] == {"EUR", "USD", "JPY", "BRL"} and currencies["globex"] == {"USD"}
    copies = Counter(e["order_id"] for e in purchases)
    resent = sum(n - 1 for n in copies.values())
    assert 0.01 * len(copies) < resent < 0.06 * len(copies)  # ~3 % under a new event id, same amount
    by_order = defaultdict(set)
    for e in purchases:
        by_order[e["order_id"]].add((e["revenue"], e["currency"], e["customer_id"], e["anonymous_id"]))
    assert all(len(v) == 1 for v in by_order.values())
    # repeat buyers: some customers order several times within the 55 hours
    per_customer = Counter(e["customer_id"] for e in purchases if e["customer_id"] and copies[e["order_id"]] == 1)
    assert sum(n >= 2 for n in per_customer.values()) > 0.2 * len(per_customer)


def test_joining_customers_sign_up_first_and_established_ones_never(clean):
    sim = run(count=1)[0]
    joining = {c.id for c in sim.customers if c.signs_up}
    assert 0.25 * len(sim.customers) < len(joining) < 0.35 * len(sim.customers)
    first: dict = {}
    for source, event in clean:
        if event["customer_id"]:
            first.setdefault(event["customer_id"], (source, event["event_type"]))
    signed = {e["customer_id"] for _, e in clean if e["event_type"] == "signup"}
    assert signed and signed <= joining
    assert all(first[c] == ("web", "signup") for c in signed)


def test_weekly_cohorts_come_back_less_week_by_week():
    """Customers grouped by the week of their first event: the share active again falls with the weeks."""
    week = 7 * 86_400_000
    sim = Simulator(seed=3, customers=1500, start_ms=START, join_span_ms=8 * week, joining_share=0.5)
    active, first = defaultdict(set), {}
    for _, e in sim.events(until_ms=START + 10 * week, rate=120_000 / (10 * 7 * 86_400)):
        if e["customer_id"]:
            w = (e["event_time"] - START) // week
            first.setdefault(e["customer_id"], w)
            active[e["customer_id"]].add(w)
    cohorts = defaultdict(list)
    for customer, w in first.items():
        if 1 <= w <= 4:  # joined in the run (week 0 holds the established customers too)
            cohorts[w].append(customer)

    def back(k):
        members = [c for w, cs in cohorts.items() for c in cs]
        return sum(first[c] + k in active[c] for c in members) / len(members)

    assert back(1) > back(2) > back(4) > 0.2 and back(1) - back(4) > 0.15


def test_complaints_at_a_realistic_pace_with_a_spike():
    """With complaint_rate, complaints come at a few percent of the customers a month whatever the event rate,
    and a spike multiplies that pace."""
    day = 86_400_000
    spike = START + 9 * day
    sim = Simulator(seed=8, customers=20_000, start_ms=START, complaint_rate=0.04, spike_at_ms=spike,
                    spike_ms=3_600_000, spike_factor=15)
    events = list(sim.events(until_ms=START + 10 * day, rate=0.05))  # one event every 20 s
    opened = [e["event_time"] for s, e in events if s == "complaints" and e["event_type"] == "opened"]
    normal = sum(t < spike or t >= spike + 3_600_000 for t in opened) / (10 * day - 3_600_000) * 30 * day
    assert 0.03 * 20_000 < normal < 0.05 * 20_000  # 4 % of the customers a month
    during = sum(spike <= t < spike + 3_600_000 for t in opened)
    assert during > 8 * normal / (30 * 24)  # 15 times the hour's usual (~1.1), with room for chance
    assert sum(e["event_type"] == "opened" for s, e in run(count=5000, rate=1000.0, complaint_rate=0.04)[1]
               if s == "complaints") <= 2  # 5 seconds of events: the pace does not follow the event rate
