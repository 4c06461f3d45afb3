"""The ingest agent: batches of input records through the processor, then durably to the sinks.

Offsets are committed only after the data is durable: the agent takes records without acking
(``noack_take``), and a record is acked only once its rows are in ClickHouse and its dead letters
are acknowledged by Kafka. A ClickHouse outage therefore stalls consumption instead of losing data.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Any, Optional

from pipeline.processor import BatchResult, Processor, Record
from sinks.clickhouse.sink import ClickHouseSink, SinkError
from sinks.prometheus import EVENTS_CONSUMED, EVENTS_DUPLICATE, EVENTS_PROCESSED, EVENTS_REJECTED

log = logging.getLogger("cxp.ingest")


def count(result: BatchResult) -> None:
    """One counter update per label set per batch, not per event."""
    for source, n in result.consumed.items():
        EVENTS_CONSUMED.labels(source).inc(n)
    for source, n in result.processed.items():
        EVENTS_PROCESSED.labels(source).inc(n)
    for source, n in result.duplicates.items():
        EVENTS_DUPLICATE.labels(source).inc(n)
    for (source, reason), n in result.rejected.items():
        EVENTS_REJECTED.labels(source, reason).inc(n)


class Delivery:
    """Rows, dead letters and Faust events waiting for one durable flush.

    Flushes when ``flush_rows`` rows are buffered or the oldest waited ``flush_interval`` seconds,
    so ClickHouse gets large inserts whatever the shape of the input messages.
    """

    def __init__(self, app: Any, sink: ClickHouseSink, executor: Executor, deadletter_topic: str,
                 flush_rows: int, flush_interval: float, retry_backoff: float):
        self.app, self.sink, self.executor = app, sink, executor
        self.deadletter_topic = deadletter_topic
        self.flush_rows, self.flush_interval, self.retry_backoff = flush_rows, flush_interval, retry_backoff
        self.stream: Optional[Any] = None  # the agent's stream, needed to ack its events
        self._events: list[Any] = []
        self._dead_letters: list[tuple[Optional[bytes], bytes]] = []
        self._oldest: Optional[float] = None
        self._lock = asyncio.Lock()
        self._flushing: Optional[asyncio.Future] = None

    def add(self, result: BatchResult, events: list[Any]) -> None:
        for table, rows in result.rows.items():
            if rows:
                self.sink.add(table, rows)
        self._dead_letters.extend(result.dead_letters)
        self._events.extend(events)
        if self._oldest is None:
            self._oldest = time.monotonic()

    def add_rows(self, table: str, rows: list[tuple]) -> None:
        """Rows that no input record waits for (e.g. metric snapshots)."""
        self.sink.add(table, rows)
        if self._oldest is None:
            self._oldest = time.monotonic()

    def due(self) -> bool:
        if self._oldest is None:
            return False
        return self.sink.pending() >= self.flush_rows or time.monotonic() - self._oldest >= self.flush_interval

    async def maybe_flush(self) -> None:
        """Start a flush in the background when one is due, so processing goes on meanwhile.

        While one flush runs, rows keep buffering; past twice the flush size the caller waits for
        the running flush (backpressure) instead of buffering without bound.
        """
        if self._flushing is not None and not self._flushing.done():
            if self.sink.pending() >= 2 * self.flush_rows:
                await asyncio.shield(self._flushing)
        elif self.due():
            self._flushing = asyncio.ensure_future(self.flush())
            self._flushing.add_done_callback(_log_failure)

    async def flush(self) -> None:
        """Make everything buffered so far durable, then ack its records. Flushes run one at a time."""
        async with self._lock:
            if self._oldest is None:
                return
            events, self._events = self._events, []
            dead_letters, self._dead_letters = self._dead_letters, []
            batch = self.sink.take()
            self._oldest = None
            futures = [await self.app.producer.send(self.deadletter_topic, key, value, None, None, None)
                       for key, value in dead_letters]
            await self._write(batch)
            await asyncio.gather(*futures)
            for event in events:
                await self.stream.ack(event)

    async def _write(self, batch: dict[str, list[tuple]]) -> None:
        """Retry until ClickHouse takes the rows; consumption stalls behind this if it never does."""
        loop = asyncio.get_running_loop()
        delay = self.retry_backoff
        while True:
            try:
                await loop.run_in_executor(self.executor, self.sink.write, batch)
                return
            except SinkError as exc:
                log.error("clickhouse flush failed, consumption paused until it recovers",
                          extra={"error": str(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        # Its records stay unacked, so their offsets are not committed and a restart replays them.
        log.error("flush failed", exc_info=task.exception())


def register(app: Any, topics: Any, processor: Processor, delivery: Delivery, batch_max: int, batch_within: float) -> None:
    """Attach the ingest agent and its flush timer to the Faust app."""

    @app.agent(topics, name="ingest")
    async def ingest(stream: Any) -> None:
        delivery.stream = stream
        async for events in stream.noack_take(batch_max, within=batch_within):
            records = [Record(m.topic, m.partition, m.offset, m.key, m.value) for m in (e.message for e in events)]
            result = processor.process(records, int(time.time() * 1000))
            count(result)
            delivery.add(result, events)
            await delivery.maybe_flush()

    @app.timer(interval=min(0.25, batch_within))
    async def flush_when_due() -> None:
        await delivery.maybe_flush()
