"""The delivery path against a real ClickHouse server: write order, retries, deadlines, acks after durability.

Output-topic messages are handed to a list here: these tests check what reaches ClickHouse and when
records are acked; the Kafka side is covered end to end in tests/faults.
"""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from pipeline.dedup import id_hash
from pipeline.metrics.base import Output
from pipeline.messages import DeadLetter
from pipeline.registry import BundledRegistry
from pipeline.tables import ROWS
from pipeline.wire import Codec
from sinks.clickhouse.backend import NativeBackend
from sinks.clickhouse.sink import ClickHouseSink
from sinks.delivery import Delivery, Retrier, RetryPolicy
from sinks.prometheus import PipelineMetrics

pytestmark = pytest.mark.integration
T0 = 1_700_000_000_000


def batch(n: int, start: int = 0) -> Output:
    """n events, every one a survey answer, as the processor would produce them."""
    out = Output()
    for i in range(start, start + n):
        event_id, ms = f"e{i}", T0 + i
        out.rows["survey_responses"].append(ROWS["survey_responses"](
            event_id, ms // 1000, ms, "acme", f"c{i}", "web", "NPS", i % 11, None, None, 0, id_hash(event_id), [], []))
        out.rows["events"].append(ROWS["events"](
            event_id, "web", "survey_response", ms // 1000, ms, "acme", f"c{i}", None, None, [], [], 0, i, id_hash(event_id)))
    out.send("deadletter", b"k", DeadLetter("invalid_value", "bad", "cx.events.web", 0, start, None, b"k", b"letter",
                                            T0, False, 6))
    out.count("cxp_events_processed", ("web",), n)
    return out


class Harness:
    def __init__(self, url: str, **timeouts: float):
        self.backend = NativeBackend(url, **timeouts)
        self.backend.create_tables()
        self.registry = CollectorRegistry()
        self.metrics = PipelineMetrics(self.registry)
        self.sent: list = []
        self.acked: list = []
        executor = ThreadPoolExecutor(1)

        async def publish(topic, key, value):
            self.sent.append((topic, key, value))
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

        def acknowledge(records):
            self.acked.extend(records)

        self.delivery = Delivery(
            ClickHouseSink(self.backend), lambda f, *a: asyncio.get_running_loop().run_in_executor(executor, f, *a),
            publish, {"deadletter": "cx.deadletter"}, Codec(BundledRegistry()), ["survey_responses"], self.metrics,
            Retrier(RetryPolicy(0.05, 0.2), self.metrics.sink_errors), flush_rows=10_000, flush_interval=60)
        self.delivery.acknowledge = acknowledge

    def count(self, table: str) -> int:
        return self.backend.query(f"SELECT count() FROM {self.backend.database}.{table} FINAL")[0][0]

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def when(condition, action) -> threading.Thread:
    """Run action in a thread once condition() holds (bounded wait), so a failure surely happened first."""

    def run() -> None:
        deadline = time.monotonic() + 20
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_events_are_written_last_and_nothing_is_acked_before_everything_is_durable(clickhouse_url):
    h = Harness(clickhouse_url)
    h.backend.execute(f"DROP TABLE {h.backend.database}.survey_responses")
    h.delivery.add(batch(50), ["r1", "r2"])

    async def run() -> bool:
        return await h.delivery.flush_until(1.0)

    assert asyncio.run(run()) is False
    assert h.count("events") == 0  # the commit marker waits for every derived table
    assert h.acked == [] and h.sample("cxp_events_processed_total", source="web") == 0
    assert h.sample("cxp_sink_errors_total", table="survey_responses") >= 1
    assert len(h.sent) == 1  # topic messages go first and are not sent again on the retry below

    h.backend.create_tables()
    assert asyncio.run(h.delivery.flush()) is True
    assert (h.count("survey_responses"), h.count("events")) == (50, 50)
    assert h.acked == ["r1", "r2"] and len(h.sent) == 1
    assert h.sample("cxp_events_processed_total", source="web") == 50
    assert h.sample("cxp_sink_rows_total", table="events") == 50


def test_a_failed_insert_is_retried_until_the_table_exists(clickhouse_url):
    h = Harness(clickhouse_url)
    h.backend.execute(f"DROP TABLE {h.backend.database}.events")
    h.delivery.add(batch(100), ["r"])
    creator = NativeBackend(clickhouse_url)
    recovery = when(lambda: h.sample("cxp_sink_errors_total", table="events") > 0, creator.create_tables)
    try:
        assert asyncio.run(h.delivery.flush()) is True
    finally:
        recovery.join()
    assert h.count("events") == 100 and h.acked == ["r"]
    assert h.sample("cxp_sink_flush_seconds_count", table="events") == 1
    assert h.delivery.pending_rows() == 0 and h.delivery.oldest_unacked_seconds() == 0


def test_a_frozen_server_is_a_counted_timeout_not_a_hang(clickhouse_server, clickhouse_url):
    """SIGSTOP for longer than the socket timeout: attempts time out, are counted, and the flush finishes
    once the server is resumed. An attempt that timed out may still have been stored: FINAL does not double it."""
    h = Harness(clickhouse_url, connect_timeout=0.5, timeout=0.5)
    h.delivery.add(batch(100), ["r"])
    os.kill(clickhouse_server.pid, signal.SIGSTOP)
    try:
        resume = when(lambda: h.sample("cxp_sink_errors_total", table="survey_responses") >= 2,
                      lambda: os.kill(clickhouse_server.pid, signal.SIGCONT))
        assert asyncio.run(h.delivery.flush()) is True
    finally:
        os.kill(clickhouse_server.pid, signal.SIGCONT)
        resume.join()
    assert h.sample("cxp_sink_errors_total", table="survey_responses") >= 2
    assert (h.count("survey_responses"), h.count("events")) == (100, 100)
    assert h.backend.query(f"SELECT uniqExact(event_id) FROM {h.backend.database}.events")[0][0] == 100


def test_a_flush_that_gives_up_keeps_its_rows_and_merges_with_newer_ones(clickhouse_url):
    h = Harness(clickhouse_url)
    h.backend.execute(f"DROP TABLE {h.backend.database}.events")
    h.delivery.add(batch(10), ["a"])

    async def give_up_then_add() -> None:
        assert await h.delivery.flush_until(0.5) is False
        h.delivery.add(batch(5, start=10), ["b"])

    asyncio.run(give_up_then_add())
    assert h.delivery.pending_rows() == 15 + 15 - 10  # survey rows of the first batch are durable already
    assert h.delivery.oldest_unacked_seconds() > 0
    h.backend.create_tables()
    assert asyncio.run(h.delivery.flush()) is True
    assert h.count("events") == 15 and h.count("survey_responses") == 15 and h.acked == ["a", "b"]
    assert h.sample("cxp_events_processed_total", source="web") == 15


def test_a_caught_up_consumer_is_flushed_at_once_and_a_backlog_waits_for_a_fuller_batch(clickhouse_url):
    """Adaptive batching: with records waiting behind a batch, a batch below the flush size waits (here the
    interval is a minute); once the consumer has caught up it is flushed without waiting for any timer."""
    h = Harness(clickhouse_url)

    async def run() -> None:
        h.delivery.add(batch(10), ["r1"])
        await h.delivery.maybe_flush(caught_up=False)
        assert not h.delivery.due() and h.delivery.pending_rows() == 20
        h.delivery.add(batch(10, start=10), ["r2"])
        await h.delivery.maybe_flush(caught_up=True)
        await asyncio.sleep(0)  # the flush starts: it takes the buffer
        assert h.delivery.pending_rows() == 0
        await asyncio.shield(h.delivery._flushing)

    asyncio.run(run())
    assert h.count("events") == 20 and h.acked == ["r1", "r2"]


def test_what_comes_in_during_a_flush_of_a_caught_up_worker_is_the_next_flush_without_a_timer(clickhouse_url):
    """One flush at a time: the batch that arrives while one runs is flushed as soon as it ends, if the
    consumer is still caught up; if records wait again by then, it stays buffered for a fuller batch."""
    h = Harness(clickhouse_url)

    async def run(still_caught_up: bool) -> None:
        h.delivery.add(batch(10, start=len(h.acked) * 10), [f"r{len(h.acked)}"])
        await h.delivery.maybe_flush(caught_up=True)
        await asyncio.sleep(0)  # the flush starts: it takes the buffer
        running = h.delivery._flushing
        h.delivery.add(batch(10, start=1000 + len(h.acked) * 10), ["next"])
        await h.delivery.maybe_flush(caught_up=still_caught_up)
        assert h.delivery._flushing is running and not running.done()  # no second flush alongside
        await asyncio.shield(running)

    asyncio.run(run(still_caught_up=True))
    assert h.acked == ["r0", "next"] and h.count("events") == 20 and h.delivery.pending_rows() == 0
    h.acked.clear()
    asyncio.run(run(still_caught_up=False))
    assert h.acked == ["r0"] and h.delivery.pending_rows() == 20  # the second batch waits for more


def test_flushes_of_a_caught_up_worker_start_at_least_the_minimum_interval_apart(clickhouse_url):
    """CXP_SINK_MIN_FLUSH_INTERVAL: a worker that keeps up does not insert as often as its flushes end; what
    arrives within the interval joins the next flush."""
    h = Harness(clickhouse_url)
    h.delivery.min_flush_interval = 0.5
    starts: list[float] = []
    flush = h.delivery.flush

    async def timed_flush() -> bool:
        starts.append(time.monotonic())
        return await flush()

    h.delivery.flush = timed_flush

    async def run() -> None:
        for n in range(3):
            h.delivery.add(batch(10, start=n * 10), [f"r{n}"])
            await h.delivery.maybe_flush(caught_up=True)
            await asyncio.sleep(0.05)
        await asyncio.shield(h.delivery._flushing)

    asyncio.run(run())
    assert h.acked == ["r0", "r1", "r2"] and h.count("events") == 30
    assert len(starts) == 2  # r0 at once; r1 and r2 arrived within the interval and went together
    assert starts[1] - starts[0] >= 0.5
