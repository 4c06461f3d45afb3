"""ClickHouse stopped or frozen under a running worker, on a server of this module's own (the session's
shared server is never touched): consumption stalls, errors and the unacked age show on /metrics, which
keeps answering, and once ClickHouse is back every event arrives exactly once."""
from __future__ import annotations

import time
from typing import Callable

import pytest

from runtime.local.metrics import total
from tests.faults.harness import (
    CLICKHOUSE_TIMEOUTS,
    MINUTE,
    Stage,
    Tally,
    Workload,
    identity_holds,
    now_ms,
    outcome_totals,
    record_fault,
    simulated,
    valid_workload,
    wait_until,
)
from tests.services.worker import WorkerProcess

pytestmark = pytest.mark.integration


def sink_errors(samples: dict) -> float:
    return total(samples, "cxp_sink_errors_total")


def oldest_unacked(samples: dict) -> float:
    return total(samples, "cxp_oldest_unacked_seconds")


def outage(stage: Stage, break_clickhouse: Callable[[], None], mend_clickhouse: Callable[[], None],
           seed: int) -> tuple[WorkerProcess, Workload, list[dict], Tally, float]:
    """Input before the fault (drained), input during it, then the fault repaired. Returns the worker,
    all input, the /metrics scrapes taken during the fault (each one proves /metrics answered), the
    final tally, and the seconds from ClickHouse answering again until rows and series were exact."""
    worker = stage.worker(**CLICKHOUSE_TIMEOUTS).start()
    end = now_ms()
    before = stage.produce(valid_workload(simulated(seed=seed, count=3000, end_ms=end - 15 * MINUTE, span_ms=10 * MINUTE)),
                           "before")
    stage.wait_drained(["before"])
    assert sink_errors(worker.metrics()) == 0

    break_clickhouse()
    scrapes: list[dict] = []
    try:
        during = stage.produce(valid_workload(simulated(seed=seed + 1, count=3000, end_ms=end, span_ms=10 * MINUTE)),
                               "during")

        def scrape() -> dict:
            scrapes.append(worker.metrics())
            return scrapes[-1]

        first = wait_until(scrape, lambda s: oldest_unacked(s) > 0, 60, "records waiting for ClickHouse")
        wait_until(scrape, lambda s: sink_errors(s) > 0 and oldest_unacked(s) >= oldest_unacked(first) + 3, 120,
                   "failed inserts counted while the unacked age grows past the insert timeout")
    finally:
        mend_clickhouse()
    mended = time.monotonic()
    work = Workload()
    work.extend(before)
    work.extend(during)
    stage.wait_drained(["during"])
    counted = stage.wait_exact(work, lambda: [worker.metrics()])
    recovery_s = time.monotonic() - mended
    wait_until(worker.metrics, lambda s: oldest_unacked(s) == 0, 60, "nothing left unacked")
    return worker, work, scrapes, counted, recovery_s


def record_outage(number: str, fault: str, injected: str, work: Workload, scrapes: list[dict], counted: Tally,
                  recovery_s: float, mended: str) -> None:
    record_fault(number, fault, injected, len(work.valid), counted, recovery_s,
                 f"from {mended} until the sentinels are stored and the rows and series equal the recomputation",
                 note=f"during the fault: failed inserts counted {max(sink_errors(s) for s in scrapes):.0f}, "
                      f"oldest unacked record {max(oldest_unacked(s) for s in scrapes):.1f} s, "
                      f"/metrics scrapes answered {len(scrapes)}")


def test_clickhouse_stopped_longer_than_the_insert_timeout_then_restarted(own_stage, own_clickhouse):
    worker, work, scrapes, counted, recovery_s = outage(own_stage, own_clickhouse.stop, own_clickhouse.restart,
                                                        seed=401)
    samples = worker.metrics()
    assert identity_holds(samples), outcome_totals(samples)
    assert outcome_totals(samples) == {"consumed": len(work.valid), "processed": len(work.valid), "duplicate": 0,
                                       "rejected": 0}
    assert max(sink_errors(s) for s in scrapes) > 0
    assert max(oldest_unacked(s) for s in scrapes) > 2  # older than CXP_CLICKHOUSE_TIMEOUT
    record_outage("4", "ClickHouse down", "SIGTERM to the server under input; restarted on the same data folder "
                  "and ports", work, scrapes, counted, recovery_s, "the restarted server accepting connections")


def test_clickhouse_frozen_longer_than_the_insert_timeout_then_thawed(own_stage, own_clickhouse):
    """SIGSTOP keeps the connections open but silent: only the send/receive timeout can end an insert."""
    worker, work, scrapes, counted, recovery_s = outage(own_stage, own_clickhouse.freeze, own_clickhouse.thaw,
                                                        seed=501)
    samples = worker.metrics()
    assert identity_holds(samples), outcome_totals(samples)
    assert outcome_totals(samples)["processed"] == len(work.valid)
    assert max(sink_errors(s) for s in scrapes) > 0
    record_outage("5", "ClickHouse frozen", "SIGSTOP to the server under input (insert timeout 2 s), then SIGCONT",
                  work, scrapes, counted, recovery_s, "SIGCONT")
