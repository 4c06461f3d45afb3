"""Producer SDK: events in, batch messages out (SPEC §3), on kafka-python.

Events bound for one partition are packed into one ``<Source>Batch`` message, sent when it holds
``max_batch_events`` events, reaches ``max_batch_bytes``, or its first event has waited
``linger_ms``. Faust pays ~95 µs per Kafka message whatever the message holds, so events per
message is the main throughput lever of the whole pipeline.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

from kafka import KafkaProducer
from kafka.errors import KafkaError

from pipeline.partitioner import event_key, partition_for
from pipeline.wire import Codec

# Rough encoded size of one event, used to close a batch before it outgrows max_batch_bytes.
_EST_EVENT_BYTES = 160


class _Buffer:
    __slots__ = ("events", "started", "est_bytes")

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.started = time.monotonic()
        self.est_bytes = 0


class EventProducer:
    def __init__(self, bootstrap_servers: str, codec: Codec, topic_prefix: str = "cx.", max_batch_events: int = 500,
                 max_batch_bytes: int = 900_000, linger_ms: float = 50, **producer_config: Any):
        self.codec = codec
        self.topic_prefix = topic_prefix
        self.max_batch_events, self.max_batch_bytes, self.linger_s = max_batch_events, max_batch_bytes, linger_ms / 1000
        config = {"acks": 1, "linger_ms": 5, "batch_size": 1_048_576, "max_request_size": 4_194_304,
                  "client_id": "cxp-producer"}
        config.update(producer_config)
        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **config)
        self._partitions: dict[str, int] = {}
        self._buffers: dict[tuple[str, str, int], _Buffer] = {}
        self._lock = threading.Lock()
        self._futures: list = []
        self.events_sent = 0
        self.messages_sent = 0
        self._closed = threading.Event()
        self._lingerer = threading.Thread(target=self._linger_loop, name="cxp-producer-linger", daemon=True)
        self._lingerer.start()

    def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            try:
                partitions = self._producer.partitions_for(topic)
            except KafkaError as exc:
                raise RuntimeError(f"no metadata for topic {topic} ({exc}): is the broker reachable, "
                                   "and does the topic exist (`cxp topics`)?") from exc
            if not partitions:
                raise RuntimeError(f"topic {topic} does not exist: create it with `cxp topics`")
            count = self._partitions[topic] = len(partitions)
        return count

    def send(self, source: str, event: dict) -> None:
        topic = f"{self.topic_prefix}events.{source}"
        partition = partition_for(event_key(source, event), self._partition_count(topic))
        with self._lock:
            buffer = self._buffers.get((source, topic, partition))
            if buffer is None:
                buffer = self._buffers[(source, topic, partition)] = _Buffer()
            buffer.events.append(event)
            buffer.est_bytes += _EST_EVENT_BYTES
            if len(buffer.events) >= self.max_batch_events or buffer.est_bytes >= self.max_batch_bytes:
                self._send_buffer((source, topic, partition))

    def _send_buffer(self, slot: tuple[str, str, int]) -> None:
        """Encode and hand one buffer to kafka-python. Caller holds the lock."""
        source, topic, partition = slot
        events = self._buffers.pop(slot).events
        value = self.codec.encode_batch(source, events)
        future = self._producer.send(topic, value=value, key=event_key(source, events[0]), partition=partition)
        self._futures.append(future)
        if len(self._futures) > 1000:
            self._futures = [f for f in self._futures if not f.is_done or f.failed()]
        self.events_sent += len(events)
        self.messages_sent += 1

    def _linger_loop(self) -> None:
        while not self._closed.wait(min(self.linger_s / 2, 0.05)):
            now = time.monotonic()
            with self._lock:
                for slot in [s for s, b in self._buffers.items() if now - b.started >= self.linger_s]:
                    self._send_buffer(slot)

    def flush(self, timeout_s: Optional[float] = 60) -> None:
        """Send every buffered event and wait until the broker acknowledged all messages sent so far."""
        with self._lock:
            for slot in list(self._buffers):
                self._send_buffer(slot)
            futures, self._futures = self._futures, []
        self._producer.flush(timeout=timeout_s)
        for future in futures:
            try:
                future.get(timeout=timeout_s)
            except KafkaError as exc:
                raise RuntimeError(f"Kafka did not accept a batch: {exc}") from exc

    def close(self) -> None:
        if not self._closed.is_set():
            self.flush()
            self._closed.set()
            self._lingerer.join()
            self._producer.close()

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
