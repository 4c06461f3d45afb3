"""A second worker joins the group mid-stream and leaves again, ten times: partitions move both ways, and
each move rebuilds state from ClickHouse. The survey series summed over the live workers must equal the
recomputation after every move, and ClickHouse must hold every event once."""
from __future__ import annotations

import time

import pytest

from tests.faults.harness import (
    MINUTE,
    Tally,
    Workload,
    identity_holds,
    now_ms,
    outcome_totals,
    record_fault,
    simulated,
    survey_series,
    valid_workload,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CYCLES = 10


def test_second_worker_joins_and_leaves_ten_times(stage):
    first = stage.worker().start()
    sent = Workload()
    start = now_ms() - 30 * MINUTE  # every chunk falls in the last 30 min: inside every window on every worker

    def send(chunk: int, tag: str) -> None:
        events = simulated(seed=800 + chunk, count=400, end_ms=start + (chunk + 1) * MINUTE, span_ms=MINUTE)
        sent.extend(stage.produce(valid_workload(events), tag))

    recovery_s: list[float] = []
    tallies: list[Tally] = []
    for cycle in range(CYCLES):
        send(3 * cycle, f"c{cycle}-alone")
        joined = time.monotonic()
        second = stage.worker().start()
        send(3 * cycle + 1, f"c{cycle}-joined")
        stage.wait_drained([f"c{cycle}-joined"])
        wait_until(second.metrics, survey_series, 120, f"cycle {cycle}: the second worker owning partitions")
        tallies.append(stage.wait_exact(sent, lambda: [first.metrics(), second.metrics()],
                                        when=f"cycle {cycle}, two workers"))
        recovery_s.append(time.monotonic() - joined)
        for worker in (first, second):
            assert identity_holds(worker.metrics()), (cycle, outcome_totals(worker.metrics()))

        left = time.monotonic()
        second.stop()
        send(3 * cycle + 2, f"c{cycle}-left")
        stage.wait_drained([f"c{cycle}-left"])
        tallies.append(stage.wait_exact(sent, lambda: [first.metrics()], when=f"cycle {cycle}, the second one gone"))
        recovery_s.append(time.monotonic() - left)
        assert identity_holds(first.metrics()), (cycle, outcome_totals(first.metrics()))
    record_fault("8", "rebalances", f"a second worker joins mid-stream and leaves (SIGTERM), {CYCLES} times",
                 len(sent.valid), Tally(max(t.lost for t in tallies), max(t.double_counted for t in tallies)),
                 recovery_s,
                 "per join and per leave, from starting or signalling the second worker (input keeps arriving) "
                 "until the new input's sentinels are stored and the rows and series summed over live workers equal "
                 "the recomputation")
