"""Every gauge family of the complaint spike core equals its ClickHouse query of docs/metrics.md
("Spike detection, reproduced in SQL") over the same openings in ``complaints``, on the ClickHouse 18.16
server and on chdb.

The rows are written as the complaints core writes them (several versions of a complaint, the newest
wins under FINAL; complaints known without their ``opened``), the core is handed the openings of the
newest versions as ComplaintOpened facts over four partitions, and at each clock the three families
are compared with the queries' answers: the flag and the recent count exactly, the expected count to
floating-point rounding.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.metrics.base import Facts, Output
from pipeline.metrics.complaint_spikes import ComplaintSpikeCore, SpikeSettings
from pipeline.metrics.facts import ComplaintOpened

pytestmark = pytest.mark.integration

MIN, HOUR, DAY, WEEK = 60_000, 3_600_000, 86_400_000, 7 * 86_400_000
METRICS_DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
END = 1_700_006_400_000 // WEEK * WEEK + 6 * WEEK + 13 * HOUR + 17 * MIN + 23_456
# globex's burst builds up over the hour before END: the clocks every 3 minutes catch its window count
# crossing the threshold, where α decides
CLOCKS = sorted((END - 5 * HOUR, END - 2 * HOUR - 5 * MIN, END - 50 * MIN, *range(END - 45 * MIN, END, 3 * MIN),
                 END - 20 * MIN + 59_999, END, END + 40 * MIN, END + 3 * HOUR))
COLUMNS = ("complaint_id", "tenant", "customer_id", "priority", "status", "updated_ms", "opened_ms", "last_event_ms",
           "kafka_partition")


def documented_queries() -> dict[str, str]:
    """Family name -> the SQL in the fenced block after its ``Reproduces `name`:`` line."""
    return dict(re.findall(r"^Reproduces `(\w+)`:\n+```sql\n(.*?)\n```", METRICS_DOC.read_text(), re.M | re.S))


def complaints(rng: random.Random) -> tuple[list[tuple], dict[str, tuple[str, int]]]:
    """Row versions for ``complaints``, and complaint id -> (tenant, opened_ms) of the newest versions.

    acme: six weeks of traffic that follows the time of day, and bursts; globex: three days and a
    slower burst, hooli: five days (short history: the EWMA over days); initech: ten hours (no baseline
    yet); umbrella: nothing for seven weeks (no series). Some complaints are known without an
    ``opened``; some moved their ``opened`` earlier when an out-of-order event came (an older row version
    holds the later time, or none)."""
    opened: dict[str, tuple[str, int]] = {}

    def add(tenant: str, at: int) -> None:
        opened[f"{tenant}-{len(opened)}"] = (tenant, at)

    for t in range(END - 6 * WEEK, END + 3 * HOUR, MIN):
        busy = 8 <= (t // HOUR) % 24 < 20
        if rng.random() < (0.15 if busy else 0.04):
            add("acme", t + rng.randrange(MIN))
        if t >= END - 3 * DAY and rng.random() < 0.08:
            add("globex", t + rng.randrange(MIN))
        if t >= END - 10 * HOUR and rng.random() < 0.1:
            add("initech", t + rng.randrange(MIN))
        if t >= END - 5 * DAY and rng.random() < (0.1 if busy else 0.02):
            add("hooli", t + rng.randrange(MIN))
    for burst in (END - 3 * HOUR, END - 50 * MIN, END - 25 * MIN):
        for _ in range(25):
            add("acme", burst + rng.randrange(15 * MIN))
    for n in range(30):  # one every two minutes: the window count climbs through the threshold slowly
        add("globex", END - 60 * MIN + n * 2 * MIN + rng.randrange(2 * MIN))
    add("umbrella", END - 7 * WEEK)
    rows = []
    for number, (complaint, (tenant, at)) in enumerate(opened.items()):
        partition = number % 4
        if number % 17 == 0:  # an earlier version had a later opening, or none yet
            rows.append((complaint, tenant, "c", "normal", "opened", at + 5 * MIN,
                         None if number % 2 else at + rng.randrange(1, 3 * HOUR), at + 5 * MIN, partition))
        rows.append((complaint, tenant, "c", "normal", "opened", at + 10 * MIN, at, at + 10 * MIN, partition))
    for number in range(40):  # known only by later events: no opened_ms
        at = END - rng.randrange(2 * WEEK)
        rows.append((f"unopened-{number}", "acme", "c", "normal", "acknowledged", at, None, at, number % 4))
    return rows, opened


def gauges(core, states, clock: int) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = defaultdict(dict)
    for family in core.collect(states, [clock] * len(states)):
        for sample in family.samples:
            found[family.name][sample.labels["tenant"]] = sample.value
    return found


def answers(backend, sql: str, clock: int) -> dict[str, float]:
    return {tenant: float(value) for tenant, value in
            backend.query(sql.replace("{C}", str(clock)).replace("cx.", f"{backend.database}."))}


def test_every_gauge_family_equals_its_documented_query(any_backend):
    core = ComplaintSpikeCore(SpikeSettings().test())
    stricter = ComplaintSpikeCore(replace(core.test, alpha=core.test.alpha / 100))
    families = {family.name for family in core.describe()}
    queries = {family: sql for family, sql in documented_queries().items() if family in families}
    assert set(queries) == families, "one documented query per family"
    rows, opened = complaints(random.Random(16))
    any_backend.insert("complaints", COLUMNS, list(zip(*rows)))

    states = [core.new_state(partition) for partition in range(4)]
    by_time = sorted((at, tenant, complaint) for complaint, (tenant, at) in opened.items())
    fed, seen = 0, defaultdict(set)
    for clock in CLOCKS:
        arrived = defaultdict(list)
        while fed < len(by_time) and by_time[fed][0] <= clock:
            at, tenant, complaint = by_time[fed]
            arrived[int(complaint.rsplit("-", 1)[1]) % 4].append(ComplaintOpened(tenant, "c", complaint, at))
            fed += 1
        for partition, state in enumerate(states):
            out = Output()
            core.take(state, Facts(arrived[partition]), out)
            core.tick(state, clock, out)
        got = gauges(core, states, clock)
        if got["cx_complaint_spike"] != gauges(stricter, states, clock)["cx_complaint_spike"]:
            seen["alpha decided"].add(clock)
        for family, sql in queries.items():
            want = answers(any_backend, sql, clock)
            assert set(got[family]) == set(want), (family, clock)
            for tenant, value in want.items():
                assert got[family][tenant] == pytest.approx(value, rel=1e-9, abs=1e-12), (family, tenant, clock)
                seen[family].add(value > 0)
    # the comparison covered a raised and a lowered flag, and tenants with and without a baseline
    assert seen["cx_complaint_spike"] == {True, False}
    assert seen["alpha decided"], "no clock where a stricter CXP_SPIKE_ALPHA changes the flag: the test can't tell"
    assert "initech" not in got["cx_complaints_opened_expected"] and "initech" in got["cx_complaints_opened_recent"]
    assert "umbrella" not in got["cx_complaint_spike"]
