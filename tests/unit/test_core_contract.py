"""The contract between the metric cores: declared facts, the derived run order, one add per partition per
batch, every fact reaching every consumer, and cores that hold no SQL and encode nothing."""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest

from pipeline.metrics.base import ADD, TICK, Batch, Facts, MetricCore, Output
from pipeline.metrics.facts import ComplaintOpened, SurveyAnswered
from pipeline.metrics.registry import CORE_CLASSES, CoreConfigError, build_cores, durable_order, enabled_classes
from pipeline.metrics.rounds import Rounds
from pipeline.settings import Settings
from pipeline.partitioner import event_key, partition_for
from pipeline.simulate import Simulator
from tests.unit.test_processor import NOW, processor, records

ROOT = Path(__file__).resolve().parents[2]


class Ping(NamedTuple):
    n: int


class Pong(NamedTuple):
    n: int


class Core(MetricCore[list]):
    """A core that records its calls into its state, and publishes what it is told to."""

    def __init__(self, name: str, publishes=None, consumes=(), emit=()):
        self.name, self.publishes, self.consumes, self.emit = name, publishes or {}, tuple(consumes), emit

    def new_state(self, partition: int) -> list:
        return []

    def add(self, state, batch, out):
        state.append(("add", len(batch.events)))
        for phase, fact in self.emit:
            if phase == ADD:
                out.publish(fact)

    def take(self, state, facts, out):
        state.append(("take", sorted(type(f).__name__ for kind in (Ping, Pong) for f in facts.of(kind))))

    def tick(self, state, clock_ms, out):
        state.append(("tick", clock_ms))
        for phase, fact in self.emit:
            if phase == TICK:
                out.publish(fact)


def test_a_fact_made_in_tick_reaches_a_consumer_before_its_tick_and_one_made_in_add_before_its_add():
    producer = Core("producer", {Ping: ADD, Pong: TICK}, emit=[(ADD, Ping(1)), (TICK, Pong(2))])
    consumer = Core("consumer", consumes=(Ping, Pong))
    rounds, states, out = Rounds([producer, consumer]), [[], []], Output()
    rounds.add(states, Batch.of(0, [("web", {"event_id": "a"})]), out)
    rounds.tick(states, 5, out)
    assert states[1] == [("take", ["Ping"]), ("add", 1), ("take", ["Pong"]), ("tick", 5)]
    assert out.facts == []  # no fact outlives its round


def test_publishing_an_undeclared_fact_or_in_another_phase_fails_loudly():
    with pytest.raises(TypeError, match="'liar' published Pong in add"):
        Rounds([Core("liar", {Pong: TICK}, emit=[(ADD, Pong(1))])]).add([[]], Batch.of(0, []), Output())


def test_run_order_follows_the_declarations_not_the_list():
    producer = Core("producer", {Ping: TICK})
    consumer = Core("consumer", consumes=(Ping,))
    assert enabled_order([consumer, producer]) == ["producer", "consumer"]
    a, b = Core("a", {Ping: ADD}, consumes=(Pong,)), Core("b", {Pong: ADD}, consumes=(Ping,))
    with pytest.raises(CoreConfigError, match="cycle"):
        enabled_order([a, b])


def enabled_order(cores):
    from pipeline.metrics.registry import run_order
    return [core.name for core in run_order(cores)]


def test_a_consumer_without_its_producer_is_refused_naming_both():
    with pytest.raises(CoreConfigError, match=r"'segments' consumes SurveyAnswered, which only surveys publishes; "
                                              r"add surveys to CXP_METRICS"):
        enabled_classes(["segments"])
    with pytest.raises(CoreConfigError, match=r"'churn' consumes ComplaintOpened, which only complaints publishes"):
        enabled_classes(["surveys", "churn"])
    assert [core.name for core in enabled_classes(["segments", "surveys"])] == ["surveys", "segments"]


def test_every_registered_core_declares_what_it_needs():
    """Names are unique, every consumed fact has a registered producer, every written table is a real table,
    and the tables are made durable consumers first (the reverse of the run order)."""
    from pipeline.tables import TABLES

    names = [core.name for core in CORE_CLASSES]
    assert len(names) == len(set(names)) and all(names)
    published = {fact for core in CORE_CLASSES for fact in core.publishes}
    assert {fact for core in CORE_CLASSES for fact in core.consumes} <= published
    assert {table for core in CORE_CLASSES for table in core.tables} <= set(TABLES)
    order = durable_order(build_cores(Settings()))
    assert order.index("actions") < order.index("churn_signals") < order.index("complaints")
    assert order.index("actions") < order.index("survey_responses")


def test_one_add_per_partition_per_batch_whatever_the_number_of_messages():
    """A stream of one event per Kafka message costs each core one add call per partition, not per message."""
    events = list(Simulator(seed=9, customers=100, start_ms=NOW - 3_600_000).events(count=800, rate=1.0))
    counting = Core("counting")
    p = processor(cores=[counting])
    single = records(events, batched=False)
    assert len(single) == len(events)
    p.process(single, NOW)
    adds = Counter(partition for partition, state in p.partitions.items() for call in state.cores[0] if call[0] == "add")
    assert adds == {partition: 1 for partition in p.partitions}
    assert sum(n for state in p.partitions.values() for call, n in state.cores[0] if call == "add") == len(events)


def test_the_complaint_rate_counts_complaints_opened_in_the_tick_phase():
    """cx_complaint_customers was 0 before the declared facts: complaints publishes ComplaintOpened in tick,
    engagement read facts only in add. Now it equals a recount of the input."""
    events = list(Simulator(seed=4, customers=300, start_ms=NOW - 3 * 86_400_000).events(count=20_000, rate=0.1))
    p = processor(cores=build_cores(Settings()))
    for start in range(0, len(events), 500):
        p.process(records(events[start:start + 500], batched=False), NOW)
    engagement = next(i for i, core in enumerate(p.cores) if core.name == "engagement")
    states = p.owned_states()
    got = p.cores[engagement].totals([s.cores[engagement] for s in states], [s.clock_ms for s in states])
    opened: dict[tuple[str, str], int] = {}
    partition_of: dict[tuple[str, str], int] = {}
    for source, event in events:
        if source == "complaints" and event["event_type"] == "opened" and event.get("complaint_id"):
            key = (event["tenant"], event["customer_id"])
            opened[key] = max(opened.get(key, 0), event["event_time"])
            partition_of[key] = partition_for(event_key(source, event), 4)
    for label, window in {"1d": 86_400_000, "7d": 7 * 86_400_000}.items():
        clock = {partition: p.partitions[partition].clock_ms for partition in p.owned}
        expected = Counter(t for (t, c), ms in opened.items()
                           if ms // 60_000 > (clock[partition_of[(t, c)]] - window) // 60_000)
        assert expected and {t: got.get((t, label), (0, 0))[1] for t in expected} == dict(expected)


def test_facts_are_typed_records():
    assert Facts([SurveyAnswered("e", "web", "t", None, "NPS", 9, 1, {}, None, None)]).of(ComplaintOpened) == []


# -- layers --------------------------------------------------------------------------------------------------
LAYERS = {"pipeline": 0, "sinks": 1, "agents": 2, "runtime": 3}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_package_imports_a_layer_above_it_or_the_tests(package):
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        for module in imports(path):
            top = module.split(".")[0]
            if top == "tests" or LAYERS.get(top, -1) > LAYERS[package]:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def test_metric_cores_hold_no_sql_and_encode_nothing():
    for path in (ROOT / "pipeline" / "metrics").glob("*.py"):
        text = path.read_text()
        modules = imports(path)
        assert not [m for m in modules if m in ("pipeline.wire", "fastavro") or m.split(".")[0] == "sinks"], path.name
        for keyword in ("SELECT ", " FROM ", "INSERT ", "GROUP BY", " FINAL"):
            assert keyword not in text, f"{path.name} holds SQL ({keyword.strip()})"
