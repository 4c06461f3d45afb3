"""cxp_consumer_lag_records on a real worker (Tansu, ClickHouse 18.16, `cxp worker` subprocess).

ClickHouse is frozen (SIGSTOP, the suite's own_clickhouse: the session's shared one is never touched)
while input arrives, so the worker consumes it but can neither store nor ack nor commit it: every record
sent must show as lag of its source. Once ClickHouse is thawed the records are stored, acked and
committed, and the lag of every source returns to 0.
"""
from __future__ import annotations

from collections import Counter

import pytest

from runtime.local.metrics import total
from pipeline.registry import SOURCES
from tests.faults.harness import CLICKHOUSE_TIMEOUTS, now_ms, produce, simulated, valid_workload, wait_until

pytestmark = pytest.mark.integration


def lag(samples: dict) -> dict[str, float]:
    return {labels["source"]: value for labels, value in samples.get("cxp_consumer_lag_records", [])}


def test_lag_counts_the_records_waiting_then_returns_to_zero(own_stage, own_clickhouse):
    """own_stage thaws own_clickhouse and stops the worker at the end, also when an assertion fails."""
    caught_up = {source: 0.0 for source in SOURCES}
    events = simulated(seed=11, count=440, end_ms=now_ms())
    warm_up, work = valid_workload(events[:40]), valid_workload(events[40:])
    worker = own_stage.worker(**CLICKHOUSE_TIMEOUTS).start()
    # The lag reads 0 as soon as partitions are assigned, while the worker may still be rebuilding their
    # state from ClickHouse; freezing ClickHouse then would stall the rebuild, not the delivery under
    # test. Records processed prove the rebuild is over: nothing is processed before it.
    produce(own_stage.bootstrap, own_stage.prefix, warm_up.messages)
    wait_until(worker.metrics,
               lambda s: lag(s) == caught_up and total(s, "cxp_events_processed_total") == len(warm_up.valid), 60,
               "the warm-up processed and committed on the four sources")

    sent = Counter(message.source for message in work.messages)
    own_clickhouse.freeze()
    try:
        produce(own_stage.bootstrap, own_stage.prefix, work.messages)
        # The high-water mark moves as soon as records are fetched, before they reach a batch, so wait
        # for both: every record counted as lag, and some of them consumed but not durable.
        wait_until(worker.metrics,
                   lambda s: lag(s) == dict(sent) and total(s, "cxp_oldest_unacked_seconds") > 0, 60,
                   f"the {len(work.messages)} records sent counted as lag {dict(sent)}, consumed, not acked")
    finally:
        own_clickhouse.thaw()

    done = wait_until(worker.metrics, lambda s: lag(s) == caught_up, 120, "lag back to 0 once stored")
    assert total(done, "cxp_events_processed_total") == len(events)
    assert own_stage.tables.scalar("SELECT count() FROM {db}.events FINAL") == len(events)
