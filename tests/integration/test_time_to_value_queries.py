"""Time to first purchase: the core's histogram and exact quantiles against ClickHouse's quantileExact over the
raw events (the query in docs/metrics.md, "Time to value"), on the ClickHouse 18.16 server and on chdb.

Seeded simulator traffic (customers signing up, browsing and buying over five days), in time order, goes
through the time-to-value core partition by partition as the processor hands it over, and its events into
``events``; for input in time order the worker measures exactly what the query computes from the raw events.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from pipeline.dedup import id_hash
from pipeline.metrics.base import Batch, Output
from pipeline.metrics.time_to_value import BUCKETS, HISTOGRAM, TimeToValueCore, exact_quantile, percentile_label
from pipeline.partitioner import event_key, partition_for
from pipeline.simulate import Simulator
from pipeline.tables import COLUMNS, ROWS

pytestmark = pytest.mark.integration

DAY = 86_400_000
END = 1_780_000_000_000
METRICS_DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def raw_events_query() -> str:
    """The indented query after "The same times straight from the raw events" in docs/metrics.md."""
    text = METRICS_DOC.read_text()
    block = re.search(r"The same times straight from the raw events.*?\n\n((?:    [^\n]*\n)+)", text, re.S).group(1)
    return "\n".join(line[4:] for line in block.splitlines())


def event_row(source: str, e: dict, partition: int) -> tuple:
    attributes = e.get("attributes") or {}
    return ROWS["events"](
        event_id=e["event_id"], source=source, event_type=e["event_type"], event_time=e["event_time"] // 1000,
        event_ms=e["event_time"], tenant=e["tenant"], customer_id=e.get("customer_id"),
        anonymous_id=e.get("anonymous_id"), session_id=e.get("session_id"), attr_keys=list(attributes),
        attr_values=list(attributes.values()), kafka_partition=partition, kafka_offset=0, id_hash=id_hash(e["event_id"]))


def test_histogram_and_exact_quantiles_equal_quantile_exact_over_the_raw_events(any_backend):
    sim = Simulator(seed=12, customers=1500, start_ms=END - 5 * DAY)
    events = list(sim.events(until_ms=END, rate=30_000 / (5 * 86_400)))
    core = TimeToValueCore({"7d": 7 * DAY}, 90 * DAY)
    states = {p: core.new_state(p) for p in range(4)}
    observed: dict[str, list[float]] = defaultdict(list)
    rows = []
    for start in range(0, len(events), 250):  # batches in time order, each partition's events as one add
        by_partition: dict[int, list] = defaultdict(list)
        for source, e in events[start:start + 250]:
            by_partition[partition_for(event_key(source, e), 4)].append((source, e))
        for partition, items in by_partition.items():
            out = Output()
            core.add(states[partition], Batch.of(partition, items), out)
            core.tick(states[partition], items[-1][1]["event_time"], out)
            for name, (tenant,), seconds in out.observations:
                assert name == HISTOGRAM
                observed[tenant].append(seconds)
            rows += [event_row(source, e, partition) for source, e in items]
    any_backend.insert("events", COLUMNS["events"], list(zip(*rows)))
    assert all(len(times) > 100 for times in observed.values()) and set(observed) == {"acme", "globex"}

    sql = raw_events_query().replace("cx.", f"{any_backend.database}.")
    answers = {tenant: list(quantiles) for tenant, quantiles in any_backend.query(sql)}
    assert set(answers) == set(observed)
    for tenant, times in observed.items():
        assert answers[tenant] == [exact_quantile(times, 0.5), exact_quantile(times, 0.9)], tenant
    # the exact quantile gauge says the same for the window that holds everything
    gauge = {(s.labels["tenant"], s.labels["percentile"]): s.value
             for family in core.collect(list(states.values()), [s.clock_ms for s in states.values()])
             if family.name == "cx_time_to_first_purchase_exact_seconds" for s in family.samples}
    assert gauge == {(tenant, percentile_label(q)): value for tenant, quantiles in answers.items()
                     for q, value in zip((0.5, 0.9), quantiles)}
    # every time, not only two quantiles: the histogram's buckets count what the raw events put below each bound
    times_sql = sql.replace("quantilesExact(0.5, 0.9)(", "groupArray(", 1)
    from_events = {tenant: sorted(times) for tenant, times in any_backend.query(times_sql)}
    for tenant, times in observed.items():
        assert sorted(times) == from_events[tenant], tenant
        assert [sum(t <= bound for t in from_events[tenant]) for bound in BUCKETS] == \
            [sum(t <= bound for t in times) for bound in BUCKETS]
