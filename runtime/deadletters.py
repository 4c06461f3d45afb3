"""``cxp deadletters``: what was rejected and why, from the ``dead_letters`` table, and re-driving chosen
dead letters to their source topic once the cause is fixed.

The table, not the ``cx.deadletter`` topic: it answers "how many, by reason" with one GROUP BY and
selects by reason, topic and offset range without reading the whole topic. A row keeps the original
key and bytes (the whole message, or the bad event re-encoded alone); re-driving sends them unchanged
to the partition they came from, so event ids stay the same and a second re-drive is absorbed by the
worker's dedup. The table has no ``truncated`` column: the worker marks a truncated dead letter in its
``error`` text (``[original N bytes, ... truncated to L]``), and such a dead letter is refused, since
its bytes are not the whole original.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from kafka.errors import KafkaError

from pipeline.producer import open_producer
from sinks.clickhouse.backend import Backend

_TRUNCATED = re.compile(r"\[original (\d+) bytes, key \d+ bytes: truncated to (\d+)\]$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")  # reason codes and topic names: safe inside a SQL literal


@dataclass(frozen=True)
class Selection:
    """Which dead letters: every given condition must hold."""

    reason: Optional[str] = None
    topic: Optional[str] = None
    partition: Optional[int] = None
    from_offset: Optional[int] = None
    to_offset: Optional[int] = None  # inclusive

    def __post_init__(self) -> None:
        for column, value in (("reason", self.reason), ("topic", self.topic)):
            if value is not None and not _NAME.match(value):
                raise ValueError(f"not a {column}: {value!r}")

    def where(self) -> str:
        conditions = ["1"]
        for column, value in (("reason", self.reason), ("topic", self.topic)):
            if value is not None:
                conditions.append(f"{column} = '{value}'")
        if self.partition is not None:
            conditions.append(f"partition = {int(self.partition)}")
        if self.from_offset is not None:
            conditions.append(f"offset >= {int(self.from_offset)}")
        if self.to_offset is not None:
            conditions.append(f"offset <= {int(self.to_offset)}")
        return " AND ".join(conditions)


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    batch_index: int  # -1: the whole message
    reason: str
    error: str
    received_ms: int
    key: Optional[bytes]
    payload: bytes

    @property
    def truncated(self) -> Optional[str]:
        """Why it can't be re-driven if its bytes were cut, else None."""
        match = _TRUNCATED.search(self.error)
        if match is None:
            return None
        return f"truncated to {match.group(2)} of its {match.group(1)} bytes: the original is not in the dead letter"

    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}" + ("" if self.batch_index < 0 else f"#{self.batch_index}")


def counts(backend: Backend, selection: Selection) -> list[tuple[str, str, int]]:
    """(reason, topic, dead letters) for the selection."""
    return [tuple(row) for row in backend.query(
        f"SELECT reason, topic, count() FROM {backend.database}.dead_letters FINAL WHERE {selection.where()} "
        "GROUP BY reason, topic ORDER BY reason, topic")]


def fetch(backend: Backend, selection: Selection, limit: Optional[int] = None, newest_first: bool = False
          ) -> list[DeadLetter]:
    """The selected dead letters, in source order (topic, partition, offset, batch index) unless newest_first."""
    order = "received_ms DESC" if newest_first else "topic, partition, offset, batch_index"
    rows = backend.query(
        f"SELECT topic, partition, offset, batch_index, reason, error, received_ms, hex(key), hex(payload) "
        f"FROM {backend.database}.dead_letters FINAL WHERE {selection.where()} ORDER BY {order}"
        + (f" LIMIT {int(limit)}" if limit is not None else ""))
    return [DeadLetter(topic, partition, offset, batch_index, reason, error, received_ms,
                       None if key is None else bytes.fromhex(key), bytes.fromhex(payload))
            for topic, partition, offset, batch_index, reason, error, received_ms, key, payload in rows]


def redrive(letters: list[DeadLetter], bootstrap_servers: str, timeout_s: float = 60.0) -> int:
    """Send each dead letter's original key and bytes to the partition of the topic it came from, in
    source order; return how many the broker acknowledged. Truncated ones must be filtered out first."""
    if any(letter.truncated for letter in letters):
        raise ValueError("truncated dead letters cannot be re-driven")
    try:
        producer = open_producer(bootstrap_servers, client_id="cxp-redrive")
    except KafkaError as exc:
        raise RuntimeError(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc
    try:
        futures = [producer.send(letter.topic, key=letter.key, value=letter.payload, partition=letter.partition)
                   for letter in letters]
        producer.flush(timeout=timeout_s)
        for letter, future in zip(letters, futures):
            try:
                future.get(timeout=0)
            except KafkaError as exc:
                raise RuntimeError(f"re-driving {letter.where()} failed: {exc}") from exc
    finally:
        producer.close(timeout=timeout_s)
    return len(letters)
