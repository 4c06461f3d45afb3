"""The one delivery path: buffered Outputs made durable, in a fixed order, before their records are acked.

Order of one flush, and why (the crash-consistency invariant):

1. output-topic messages (dead letters, churn signals, actions), encoded here, acknowledged by Kafka;
2. every derived table, in ``table_order``: the metric cores' tables in the reverse of their run order
   (:func:`pipeline.metrics.registry.durable_order`: a core's rows before those of the cores whose facts
   it consumes), then the others (dead_letters, metric_snapshots);
3. ``events`` last: it is the commit marker. The dedup ids are rebuilt from it, so an event found in
   ``events`` had everything it produced durable before;
4. then the input records are acked (their offsets may be committed), then the counter deltas are
   applied to /metrics.

A crash anywhere before 3 leaves the event out of ``events``, so after a restart it is processed
again; each metric core is idempotent against its own table (survey answers by event id, ...), so the
second pass rewrites the same rows (collapsing under FINAL) and counts nothing twice. Because upstream
tables are written after downstream ones, a core that finds its own rows on the second pass (and so
publishes no fact) only hides input whose downstream rows are already durable. Output-topic messages
are at least once: after such a crash they may be sent again, with the same content.

Retries live in :class:`Retrier` and nowhere else (the partition rebuild uses it too): one attempt per
step, then backoff and the ingest held back (``wait_for_room``) until the step succeeds; the consumer's
fetch loop waits for it, so nothing more is fetched. (Pausing the partitions instead loses records: Faust
drops those it fetched before the pause, after the consumer position moved past them, and later counts
the hole as acked.) Every failed attempt counts in ``cxp_sink_errors_total{table}``; the first failure of an
incident is logged with the fix, and so is the recovery.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Sequence

from prometheus_client import Counter

from pipeline.metrics.base import Output
from pipeline.wire import Codec
from sinks.clickhouse.sink import ClickHouseSink
from sinks.prometheus import PipelineMetrics

log = logging.getLogger("cxp.delivery")
COMMIT_MARKER = "events"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``initial`` seconds, doubled per failure, at most ``maximum``."""

    initial: float = 0.2
    maximum: float = 10.0

    def next_delay(self, delay: Optional[float]) -> float:
        return self.initial if delay is None else min(delay * 2, self.maximum)


class DeliveryStopped(Exception):
    """A deadline passed before everything was durable; what is left stays buffered, unacked."""


class Retrier:
    """The one retry loop: run a step until it succeeds, backing off by ``policy`` between attempts, or until
    ``deadline`` (monotonic seconds, then :class:`DeliveryStopped`). Every failed attempt counts in
    ``errors{target}``; the first failure of an incident and the recovery are logged once."""

    def __init__(self, policy: RetryPolicy, errors: Counter):
        self.policy, self.errors = policy, errors
        self.deadline: Optional[float] = None
        self._failing: set[str] = set()

    async def run(self, target: str, step: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        delay = None
        while True:
            try:
                result = await self._bounded(step, *args)
                if target in self._failing:
                    self._failing.discard(target)
                    log.warning("delivery recovered", extra={"target": target})
                return result
            except DeliveryStopped:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure of a step is retried the same way
                self.errors.labels(target).inc()
                delay = self.policy.next_delay(delay)
                if target not in self._failing:
                    self._failing.add(target)
                    log.error("delivery failed; input held back, retrying until it succeeds. Check that the target "
                              "is up and reachable (CXP_CLICKHOUSE_URL / CXP_KAFKA_URL); nothing is acknowledged "
                              "meanwhile",
                              extra={"target": target, "error": f"{type(exc).__name__}: {exc}", "retry_in_s": delay})
                if self.deadline is not None and time.monotonic() + delay > self.deadline:
                    raise DeliveryStopped(target) from exc
                await asyncio.sleep(delay)

    async def _bounded(self, step: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if self.deadline is None:
            return await step(*args)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeliveryStopped("deadline passed")
        try:
            return await asyncio.wait_for(step(*args), remaining)
        except asyncio.TimeoutError:
            raise DeliveryStopped("deadline passed") from None


Publish = Callable[[str, Optional[bytes], bytes], Awaitable[Awaitable[Any]]]


class Delivery:
    """Outputs and the records they came from, waiting for one durable flush.

    Adaptive batching, as a Kafka producer's linger: a flush starts as soon as the consumer has caught up
    (no fetched record waits behind the ones just processed: ``maybe_flush(caught_up=True)``), or when
    ``flush_rows`` rows are buffered, or when the oldest has waited ``flush_interval`` seconds (the bound on
    waiting under a steady backlog). Flushes run one at a time, in the background, while processing goes
    on: what comes in meanwhile is the next flush, which starts when the running one ends if it is due by
    then. So a worker that keeps up flushes what each fetch brought, about one flush's time after it came
    in, and under load the batches grow by themselves, up to ``flush_rows``: large inserts for ClickHouse
    whatever the shape of the input messages, and never more than one insert per table at a time.
    Two flushes start at least ``min_flush_interval`` seconds apart: ClickHouse makes a part per insert and
    merges them in the background, so a fast worker that keeps up must not insert many times a second.
    """

    def __init__(self, sink: ClickHouseSink, run_blocking: Callable[..., Awaitable[Any]], publish: Publish,
                 topic_names: dict[str, str], codec: Codec, table_order: Sequence[str], metrics: PipelineMetrics,
                 retrier: Retrier, flush_rows: int, flush_interval: float, min_flush_interval: float = 0.0):
        self.sink, self.run_blocking, self.publish, self.codec = sink, run_blocking, publish, codec
        self.topic_names, self.metrics, self.retrier = topic_names, metrics, retrier
        self.flush_rows, self.flush_interval = flush_rows, flush_interval
        self.min_flush_interval = min_flush_interval
        self._last_flush_start = float("-inf")
        self._rank = {table: rank for rank, table in enumerate(table_order)}
        self.acknowledge: Callable[[list[Any]], None] = _no_ack  # set by the app: acks the input records of a flush
        self._buffer, self._acks, self._since = Output(), [], None
        self._inflight_since: Optional[float] = None
        self._lock = asyncio.Lock()
        self._flushing: Optional[asyncio.Future] = None
        self._caught_up = False  # the consumer's last word: no fetched record waits behind what it handed over

    # -- buffering ------------------------------------------------------------------------------
    def add(self, out: Output, acks: list[Any]) -> None:
        self._buffer.merge(out)
        self._acks.extend(acks)
        if self._since is None:
            self._since = time.monotonic()

    def pending_rows(self) -> int:
        return self._buffer.row_count()

    def oldest_unacked_seconds(self) -> float:
        starts = [t for t in (self._inflight_since, self._since) if t is not None]
        return time.monotonic() - min(starts) if starts else 0.0

    def _empty(self) -> bool:
        buffer = self._buffer
        return not (self._acks or buffer.rows or buffer.messages or buffer.counts or buffer.observations)

    def due(self) -> bool:
        return self._since is not None and (self._caught_up or self.pending_rows() >= self.flush_rows
                                            or time.monotonic() - self._since >= self.flush_interval)

    async def maybe_flush(self, caught_up: Optional[bool] = None) -> None:
        """Start a flush in the background when one is due, so processing goes on meanwhile. ``caught_up``:
        the consumer says whether fetched records wait behind those it just handed over (None: no news)."""
        if caught_up is not None:
            self._caught_up = caught_up
        if (self._flushing is None or self._flushing.done()) and self.due():
            self._flushing = asyncio.ensure_future(self._flush_while_due())
            self._flushing.add_done_callback(_log_failure)

    async def _flush_while_due(self) -> None:
        """One flush, and the next at once while one is due: what came in during a flush of a worker that
        has caught up waits for no timer, only for ``min_flush_interval`` since the previous flush began."""
        while True:
            rest = self._last_flush_start + self.min_flush_interval - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)  # what arrives meanwhile joins this flush
            self._last_flush_start = time.monotonic()
            if not (await self.flush() and self.due()):
                return

    async def wait_for_room(self) -> None:
        """Backpressure: past twice the flush size, wait for the running flush instead of buffering
        without bound. While ClickHouse is down that running flush is retrying, so the agent waits."""
        while self.pending_rows() >= 2 * self.flush_rows and self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)
            await self.maybe_flush()

    # -- flushing -------------------------------------------------------------------------------
    async def flush(self) -> bool:
        """Make everything buffered durable, ack its records, apply its counters. Flushes run one at
        a time. Returns False if ``deadline`` passed first; the rest then stays buffered and unacked."""
        async with self._lock:
            if self._empty():
                return True
            out, acks, since = self._buffer, self._acks, self._since
            self._buffer, self._acks, self._since = Output(), [], None
            self._inflight_since = since
            try:
                await self._deliver(out)
            except DeliveryStopped:
                out.merge(self._buffer)  # what is left of this flush, then what came in meanwhile
                self._buffer, self._acks = out, acks + self._acks
                self._since = since if self._since is None else min(since, self._since)
                return False
            finally:
                self._inflight_since = None
            self.acknowledge(acks)
            self.metrics.apply(out)
            return True

    async def flush_until(self, seconds: float) -> bool:
        """Flush, giving up after ``seconds`` (a running background flush gives up too)."""
        self.retrier.deadline = time.monotonic() + seconds
        try:
            if self._flushing is not None and not self._flushing.done():
                await asyncio.shield(self._flushing)
            return await self.flush()
        finally:
            self.retrier.deadline = None

    def discard(self) -> None:
        """Forget everything buffered and not yet durable: its records stay unacked and are consumed again."""
        self._buffer, self._acks, self._since = Output(), [], None

    async def _deliver(self, out: Output) -> None:
        """Steps in the documented order; each step's part is removed from ``out`` once durable."""
        for topic in list(out.messages):
            encoded = [(key, self.codec.encode_message(message)) for key, message in out.messages[topic]]
            await self.retrier.run(self.topic_names[topic], self._send, topic, encoded)
            del out.messages[topic]
        last = len(self._rank)
        for table in sorted(out.rows, key=lambda name: (name == COMMIT_MARKER, self._rank.get(name, last))):
            rows = out.rows[table]
            if rows:
                await self.retrier.run(table, self._insert, table, rows)
            del out.rows[table]

    async def _send(self, topic: str, messages: list[tuple[Optional[bytes], bytes]]) -> None:
        full_name = self.topic_names[topic]
        futures = [await self.publish(full_name, key, value) for key, value in messages]
        await asyncio.gather(*futures)

    async def _insert(self, table: str, rows: list) -> None:
        started = time.perf_counter()
        await self.run_blocking(self.sink.insert, table, rows)
        self.metrics.sink_flush_seconds.labels(table).observe(time.perf_counter() - started)
        self.metrics.sink_rows.labels(table).inc(len(rows))


def _no_ack(acks: list[Any]) -> None:
    raise RuntimeError("Delivery.acknowledge was not set by the app")


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        # Its records stay unacked, so their offsets are not committed and a restart replays them.
        log.error("flush failed", exc_info=task.exception())
