from collections import Counter

from pipeline.registry import EVENT_SCHEMAS, BundledRegistry
from pipeline.simulate import SPIKE_MS, JsonlWriter, Simulator, read_jsonl
from pipeline.validate import Rules, check_fields

START = 1_700_000_000_000
REGISTRY = BundledRegistry()
RULES = Rules.from_schemas({s: REGISTRY.by_name(n).schema for s, n in EVENT_SCHEMAS.items()}, 300_000, 7 * 86_400_000)


def run(count=20_000, seed=11, **kw):
    sim = Simulator(seed=seed, start_ms=START, **kw)
    return sim, list(sim.events(count=count, rate=1.0))


def test_same_seed_same_events():
    assert run()[1] == run()[1]
    assert run()[1] != run(seed=12)[1]


def test_time_order_and_coverage():
    _, events = run()
    times = [e["event_time"] for _, e in events]
    assert times == sorted(times)
    types = {(s, e["event_type"]) for s, e in events}
    for source, name in EVENT_SCHEMAS.items():
        symbols = next(f for f in REGISTRY.by_name(name).schema["fields"] if f["name"] == "event_type")["type"]["symbols"]
        missing = {t for t in symbols if (source, t) not in types} - {"remove_from_cart", "reopened", "closed"}
        assert not missing, (source, missing)


def test_valid_without_bad_rate_and_funnel_drops_off():
    _, events = run()
    assert all(check_fields(s, e, RULES) is None for s, e in events)
    reached = Counter(e["event_type"] for s, e in events if s == "web")
    steps = [reached[t] for t in ("product_view", "add_to_cart", "checkout_started", "purchase")]
    assert steps == sorted(steps, reverse=True) and steps[-1] > 0


def test_bad_records_are_what_stats_say():
    sim, events = run(bad_rate=0.05)
    invalid = sum(1 for s, e in events if check_fields(s, e, RULES) is not None)
    assert invalid == sim.stats["bad_score"] + sim.stats["missing_survey"] + sim.stats["empty_event_id"] + sim.stats["missing_customer"]
    ids = Counter(e["event_id"] for _, e in events if e["event_id"])
    assert sum(n - 1 for n in ids.values()) == sim.stats["duplicate"]


def test_complaint_spike_shows():
    spike = START + 30 * 60_000
    _, events = run(spike_at_ms=spike, count=40_000)
    opened = [e["event_time"] for s, e in events if s == "complaints" and e["event_type"] == "opened"]
    during = sum(spike <= t < spike + SPIKE_MS for t in opened) / (SPIKE_MS / 60_000)
    before = sum(START + 5 * 60_000 <= t < spike for t in opened) / 25
    assert during > 3 * before


def test_jsonl_round_trip(tmp_path):
    _, events = run(count=100)
    with JsonlWriter(tmp_path / "e.jsonl") as out:
        for source, event in events:
            out.send(source, event)
    assert list(read_jsonl(tmp_path / "e.jsonl")) == events
