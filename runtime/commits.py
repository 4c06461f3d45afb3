"""Offset commits seen from the worker: every failure counted, each incident logged twice, committed offsets
kept for the lag gauge."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable, Mapping, Optional

from aiokafka.errors import IllegalGenerationError
from aiokafka.protocol.commit import OffsetCommitRequest
from faust.transport.drivers import aiokafka as aiokafka_driver

from sinks.prometheus import PipelineMetrics

log = logging.getLogger("cxp.worker")

# aiokafka's logger for the group coordinator, and how its lines about a failed commit begin: one line per
# partition per failed attempt, and it retries a retriable error every retry_backoff_ms (100 ms) until the
# commit succeeds. tests/unit/test_commits.py checks that the installed aiokafka still writes them so.
COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"
FAILED_COMMIT_LINE = "OffsetCommit failed"
FAILED_SEND_LINE = "Error sending %s to node"  # its first argument names the request
COMMIT_REQUEST = "OffsetCommitRequest"


class CommitWatch:
    """Counts every failed offset commit in ``cxp_commit_errors_total`` and logs each incident (from the first
    failure to the next successful commit) twice: its first failure, with the fix, and its end, with how many
    commits failed over how long. Keeps the group's committed offset of each partition (``committed``), for
    the consumer lag gauge.

    A failed commit is an OffsetCommit request that fails (aiokafka retries it inside one commit of the
    worker, so one commit may fail hundreds of times), or a commit that waited ``stall_s`` without any attempt
    failing: with the broker gone, aiokafka waits for a coordinator instead of failing, and a stalled commit
    is what an operator must see. During an incident aiokafka's own lines about failed commits are held back
    by :attr:`log_filter` (the first one passes) and counted in the closing line.

    aiokafka runs in Faust's consumer thread, the worker's commits in the event loop: state changes under a lock.
    """

    def __init__(self, metrics: PipelineMetrics, stall_s: float, clock: Callable[[], float] = time.monotonic):
        self.metrics, self.stall_s, self.clock = metrics, stall_s, clock
        self.committed: dict[Any, int] = {}
        self.log_filter = CommitLogFilter()
        self._lock = threading.Lock()
        self._since: Optional[float] = None  # first failure of the running incident
        self._last_failure: Optional[float] = None
        self._failed = 0  # failed commits of the running incident

    def failed(self, error: str) -> None:
        """One failed commit: counted, and logged with the fix if it starts an incident."""
        with self._lock:
            now = self.clock()
            self.metrics.commit_errors.inc()
            self._failed += 1
            self._last_failure = now
            if self._since is not None:
                return
            self._since = now
        log.error("offset commit failed: records already durable may be consumed again after a restart (dedup absorbs "
                  "them). Usually the broker restarted or the group is rebalancing and it recovers by itself; if "
                  "cxp_commit_errors_total keeps growing, check the broker and CXP_KAFKA_URL. Further failures are "
                  "counted there and summed up when commits succeed again", extra={"error": error})

    def stalled(self) -> None:
        """A commit still running after ``stall_s``: a failure unless attempts failed meanwhile (they counted)."""
        with self._lock:
            quiet = self._last_failure is None or self.clock() - self._last_failure >= self.stall_s
        if quiet:
            self.failed(f"no answer within {self.stall_s:g} s (the session timeout)")

    def succeeded(self) -> None:
        """A commit went through: the running incident, if any, ends with one line."""
        with self._lock:
            held_back = self.log_filter.close_incident()
            if self._since is None:
                return
            failed, seconds = self._failed, self.clock() - self._since
            self._since, self._last_failure, self._failed = None, None, 0
        log.warning("offset commits succeed again", extra={
            "failed_commits": failed, "failing_seconds": round(seconds, 1), "aiokafka_lines_held_back": held_back})

    def watch_attempts(self, coordinator: Any) -> None:
        """Count each failed attempt of aiokafka's commit loop (GroupCoordinator._do_commit_offsets: one
        OffsetCommit request, which raises on an error answer or a lost connection).

        An attempt while the worker is no group member (the coordinator forgot it: aiokafka has reset its
        generation and rejoins) fails without being sent, as Kafka fails it for a group with other members.
        A broker that forgot everything (memory-mode Tansu restarted) would store it: offsets of the old
        partitions, past the end of the new ones, where the worker then waits for records that never come.
        The records are consumed again after the rejoin; dedup absorbs them.
        """
        attempt = getattr(coordinator, "_do_commit_offsets", None)
        if attempt is None:
            log.warning("this aiokafka has no GroupCoordinator._do_commit_offsets: failed commit attempts are not "
                        "counted, only stalled commits")
            return

        async def counted(assignment: Any, offsets: Mapping[Any, Any]) -> Any:
            try:
                if offsets and coordinator.generation == OffsetCommitRequest.DEFAULT_GENERATION_ID:
                    raise IllegalGenerationError("not a member of the group: rejoining")
                return await attempt(assignment, offsets)
            except Exception as exc:  # noqa: BLE001 - every failed attempt counts; aiokafka decides what follows
                self.failed(f"{type(exc).__name__}: {exc}")
                raise

        coordinator._do_commit_offsets = counted

    def consumer_class(self) -> type:
        watch = self

        class WatchedConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
            async def on_start(self) -> None:
                await super().on_start()
                watch.watch_attempts(self._consumer._coordinator)

        class CountingConsumer(aiokafka_driver.Consumer):
            def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
                return WatchedConsumerThread(self, loop=self.loop, beacon=self.beacon)

            async def _commit(self, offsets: Mapping[Any, int]) -> bool:
                commit = asyncio.ensure_future(super()._commit(offsets))
                while True:
                    done, _ = await asyncio.wait({commit}, timeout=watch.stall_s)
                    if done:
                        break
                    watch.stalled()
                ok = commit.result()
                if ok:
                    watch.committed.update(offsets)
                    if offsets:
                        watch.succeeded()
                return ok

            async def seek_to_committed(self) -> Mapping[Any, int]:
                # Faust calls this after every assignment: the broker's committed offsets of the owned partitions.
                offsets = await super().seek_to_committed()
                for tp, offset in offsets.items():
                    if offset is None:
                        watch.committed.pop(tp, None)
                    else:
                        watch.committed[tp] = offset
                return offsets

        return CountingConsumer


class CommitLogFilter(logging.Filter):
    """Install on aiokafka's coordinator logger (:data:`COORDINATOR_LOGGER`): of its lines about failed
    commits, the first of an incident passes and the rest are held back and counted, until
    :meth:`close_incident` (the next successful commit). Its other lines pass."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._open = False
        self._held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not _about_a_failed_commit(record):
            return True
        with self._lock:
            if not self._open:
                self._open = True
                return True
            self._held_back += 1
            return False

    def close_incident(self) -> int:
        """Let the next failure's line through again; returns how many lines were held back."""
        with self._lock:
            held_back, self._open, self._held_back = self._held_back, False, 0
            return held_back


def _about_a_failed_commit(record: logging.LogRecord) -> bool:
    template = str(record.msg)
    return template.startswith(FAILED_COMMIT_LINE) or (
        template.startswith(FAILED_SEND_LINE) and isinstance(record.args, tuple) and record.args[:1] == (COMMIT_REQUEST,))
