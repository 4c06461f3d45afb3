"""A second worker joins the group mid-stream and leaves again, ten times: partitions move both ways, and
each move rebuilds state from ClickHouse. The survey series summed over the live workers must equal the
recomputation after every move, and ClickHouse must hold every event once."""
from __future__ import annotations

import pytest

from tests.faults.harness import (
    MINUTE,
    Workload,
    identity_holds,
    now_ms,
    outcome_totals,
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

    for cycle in range(CYCLES):
        send(3 * cycle, f"c{cycle}-alone")
        second = stage.worker().start()
        send(3 * cycle + 1, f"c{cycle}-joined")
        stage.wait_drained([f"c{cycle}-joined"])
        wait_until(second.metrics, survey_series, 120, f"cycle {cycle}: the second worker owning partitions")
        stage.wait_exact(sent, lambda: [first.metrics(), second.metrics()], when=f"cycle {cycle}, two workers")
        for worker in (first, second):
            assert identity_holds(worker.metrics()), (cycle, outcome_totals(worker.metrics()))

        second.stop()
        send(3 * cycle + 2, f"c{cycle}-left")
        stage.wait_drained([f"c{cycle}-left"])
        stage.wait_exact(sent, lambda: [first.metrics()], when=f"cycle {cycle}, the second one gone")
        assert identity_holds(first.metrics()), (cycle, outcome_totals(first.metrics()))
