"""The commit watch: every failed commit counted, one incident logged twice, aiokafka's repeats held back.
The worker under a real broker incident is tests/faults/test_broker_and_shutdown.py."""
from __future__ import annotations

import asyncio
import inspect
import logging

import pytest
from aiokafka.consumer import group_coordinator
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import IllegalGenerationError
from aiokafka.protocol.commit import OffsetCommitRequest
from prometheus_client import CollectorRegistry

from runtime.commits import (
    COMMIT_REQUEST,
    COORDINATOR_LOGGER,
    FAILED_COMMIT_LINE,
    FAILED_SEND_LINE,
    CommitLogFilter,
    CommitWatch,
)
from sinks.prometheus import PipelineMetrics

# aiokafka's own calls, as group_coordinator.py makes them (the first test checks they are still there)
PER_PARTITION = ("OffsetCommit failed for group %s on partition %s with offset %s: %s",
                 ("g", "TopicPartition(topic='t', partition=0)", 7, "UnknownTopicOrPartitionError"))
SEND = ("Error sending %s to node %s [%s] -- marking coordinator dead", ("OffsetCommitRequest", 1, "NodeNotReadyError"))
OTHER_SEND = ("Error sending %s to node %s [%s] -- marking coordinator dead", ("HeartbeatRequest", 1, "NodeNotReadyError"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watch_with_clock(stall_s: float = 6.0) -> tuple[CommitWatch, PipelineMetrics, Clock]:
    metrics, clock = PipelineMetrics(CollectorRegistry()), Clock()
    return CommitWatch(metrics, stall_s, clock), metrics, clock


def errors(metrics: PipelineMetrics) -> float:
    return metrics.registry.get_sample_value("cxp_commit_errors_total")


def worker_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cxp.worker"]


def test_aiokafka_still_logs_and_attempts_commits_as_the_watch_expects():
    """A canary for an aiokafka upgrade: the watch counts attempts by wrapping _do_commit_offsets and
    recognises the coordinator's lines about failed commits by how they begin."""
    source = inspect.getsource(group_coordinator)
    assert group_coordinator.log.name == COORDINATOR_LOGGER
    assert source.count(f'"{FAILED_COMMIT_LINE}') >= 5
    assert PER_PARTITION[0].split(" %s")[0] in source and SEND[0] in source
    assert FAILED_SEND_LINE in SEND[0] and OffsetCommitRequest.__name__ == COMMIT_REQUEST
    assert "request.__class__.__name__" in inspect.getsource(GroupCoordinator._send_req)
    assert inspect.iscoroutinefunction(GroupCoordinator._do_commit_offsets)
    assert "self._do_commit_offsets(" in inspect.getsource(GroupCoordinator.commit_offsets)


def test_the_filter_passes_the_first_failed_commit_line_of_an_incident_and_counts_the_rest():
    logger = logging.getLogger(f"{COORDINATOR_LOGGER}.test_filter")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.propagate = False
    log_filter = CommitLogFilter()
    logger.addFilter(log_filter)
    try:
        logger.error(PER_PARTITION[0], *PER_PARTITION[1])
        for _ in range(50):
            logger.error(PER_PARTITION[0], *PER_PARTITION[1])
            logger.error(SEND[0], *SEND[1])
        logger.error(OTHER_SEND[0], *OTHER_SEND[1])
        logger.warning("Marking the coordinator dead (node %s)for group %s.", 1, "g")
        assert len(seen) == 3 and seen[0].startswith("OffsetCommit failed") and "HeartbeatRequest" in seen[1]
        assert log_filter.close_incident() == 100
        logger.error(SEND[0], *SEND[1])  # a new incident: its first line passes again
        assert len(seen) == 4 and "OffsetCommitRequest" in seen[3]
    finally:
        logger.removeHandler(handler)


def test_every_failure_counts_and_an_incident_is_logged_at_its_start_and_end(caplog):
    watch, metrics, clock = watch_with_clock()
    watch.log_filter.filter(logging.makeLogRecord({"msg": PER_PARTITION[0], "args": PER_PARTITION[1]}))
    for _ in range(30):
        assert watch.log_filter.filter(logging.makeLogRecord({"msg": PER_PARTITION[0], "args": PER_PARTITION[1]})) \
            is False
    with caplog.at_level(logging.INFO, logger="cxp.worker"):
        for _ in range(40):
            watch.failed("UnknownTopicOrPartitionError")
            clock.now += 0.1
        clock.now += 1
        watch.succeeded()
        watch.succeeded()  # no incident running: nothing more to say
    assert errors(metrics) == 40
    first, closing = worker_lines(caplog)
    assert first.levelname == "ERROR" and "CXP_KAFKA_URL" in first.getMessage()
    assert first.error == "UnknownTopicOrPartitionError"
    assert closing.getMessage() == "offset commits succeed again"
    assert (closing.failed_commits, closing.failing_seconds, closing.aiokafka_lines_held_back) == (40, 5.0, 30)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cxp.worker"):
        watch.failed("KafkaConnectionError")  # the next incident starts with its own error line
    assert errors(metrics) == 41 and len(worker_lines(caplog)) == 1


def test_a_stalled_commit_counts_once_per_stall_unless_its_attempts_are_failing():
    watch, metrics, clock = watch_with_clock(stall_s=6.0)
    watch.stalled()  # no attempt at all (the broker is gone): a failure
    assert errors(metrics) == 1
    clock.now += 6
    watch.stalled()
    assert errors(metrics) == 2
    watch.failed("UnknownTopicOrPartitionError")  # attempts fail: they count themselves
    clock.now += 5
    watch.stalled()
    assert errors(metrics) == 3
    clock.now += 1
    watch.stalled()  # six seconds without a failed attempt
    assert errors(metrics) == 4


class Coordinator:
    """Stands in for aiokafka's GroupCoordinator: the attempt the watch wraps, and the member's generation."""

    def __init__(self, outcomes: list[Exception | None], generation: int = 3):
        self.outcomes, self.generation = outcomes, generation

    async def _do_commit_offsets(self, assignment, offsets):
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome


def test_each_failed_attempt_of_the_commit_loop_counts_and_still_raises():
    watch, metrics, _ = watch_with_clock()
    coordinator = Coordinator([RuntimeError("boom"), RuntimeError("boom"), None])
    watch.watch_attempts(coordinator)

    async def attempts() -> list[str]:
        outcomes = []
        for _ in range(3):
            try:
                await coordinator._do_commit_offsets(None, {"tp": 1})
                outcomes.append("ok")
            except RuntimeError:
                outcomes.append("failed")
        return outcomes

    assert asyncio.run(attempts()) == ["failed", "failed", "ok"]
    assert errors(metrics) == 2


def test_an_aiokafka_without_the_attempt_is_said_not_to_be_counted(caplog):
    watch, _, _ = watch_with_clock()
    with caplog.at_level(logging.WARNING, logger="cxp.worker"):
        watch.watch_attempts(object())
    assert "not counted" in worker_lines(caplog)[0].getMessage()


def test_no_commit_is_sent_while_the_worker_is_no_group_member():
    """aiokafka resets the generation to -1 when the coordinator forgot the member; a restarted memory-mode
    broker would store such a commit: offsets past the end of its new partitions."""
    watch, metrics, _ = watch_with_clock()
    coordinator = Coordinator([None], generation=OffsetCommitRequest.DEFAULT_GENERATION_ID)
    watch.watch_attempts(coordinator)
    with pytest.raises(IllegalGenerationError):
        asyncio.run(coordinator._do_commit_offsets(None, {"tp": 1}))
    assert coordinator.outcomes == [None] and errors(metrics) == 1  # not sent, counted
    coordinator.generation = 4  # rejoined
    asyncio.run(coordinator._do_commit_offsets(None, {"tp": 1}))
    assert coordinator.outcomes == [] and errors(metrics) == 1
