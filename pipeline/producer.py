"""Producer SDK: events in, batch messages out (docs/contract.md, Wire format), on kafka-python.

Events bound for one partition (Kafka's default murmur2 partitioner of their key) are packed into one
``<Source>Batch`` message, sent when it holds ``max_batch_events`` events, when its estimated encoded size
reaches ``max_batch_bytes``, or ``linger_ms`` after its first event, whichever comes first. A worker pays
per Kafka message whatever the message holds, so events per message is the pipeline's main throughput
lever; linger bounds what batching adds to end-to-end latency.

Durability: ``acks=all`` (a batch counts as sent once every in-sync replica has it, at least the topic's
``min.insync.replicas``) and, where the broker hands out producer ids, idempotence (a batch retried after
a lost acknowledgement is not written twice): :func:`open_producer`.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator, Optional

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from pipeline.partitioner import event_key, partition_for
from pipeline.registry import SOURCES
from pipeline.wire import Codec

log = logging.getLogger("cxp.producer")

KAFKA_DEFAULTS = {
    "client_id": "cxp-producer",
    "acks": "all",  # sent = on every in-sync replica: an acknowledged batch survives the loss of its leader
    "enable_idempotence": True,  # unless the broker refuses producer ids (open_producer)
    "linger_ms": 5,  # messages are batches already: only gather what is ready into one request
    "batch_size": 512 * 1024,  # several batch messages per record batch, within the broker's 1 MiB default
    "compression_type": None,
    "allow_auto_create_topics": False,  # an auto-created topic may get another partition count: not co-partitioned
    "bootstrap_timeout_ms": 10_000,
    "max_block_ms": 10_000,  # also how long a missing topic takes to be reported
}


class ProducerError(RuntimeError):
    """Kafka cannot be reached, a topic is missing, or events were not delivered."""


def open_producer(bootstrap_servers: str, **config: Any) -> KafkaProducer:
    """A kafka-python producer with :data:`KAFKA_DEFAULTS` under ``config``: ``acks=all``, idempotent if the
    broker allows it.

    An idempotent producer first asks the broker for a producer id (InitProducerId), and a broker that
    refuses fails every later send: Tansu 0.6 answers the request's versions 0-2 with UnknownError (it
    answers 3 and later, which kafka-python sends to a broker that announces them), a Kafka cluster with
    ACLs refuses a client without IdempotentWrite. So the id is awaited here; on a refusal the producer is
    opened again without idempotence, with a warning: ``acks=all`` still holds, but a batch retried after
    a lost acknowledgement may be written twice (the worker's dedup drops the repeated events). Passing
    ``enable_idempotence=True`` explicitly makes a refusal an error instead.
    """
    settings = dict(KAFKA_DEFAULTS, **config)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **settings)
    refusal = _producer_id_refusal(producer, settings["max_block_ms"] / 1000)
    if refusal is None:
        return producer
    producer.close(timeout=0)
    if config.get("enable_idempotence"):
        raise ProducerError(f"Kafka at {bootstrap_servers} refuses producer ids ({refusal}), and idempotence was "
                            "asked for explicitly")
    log.warning("Kafka at %s refuses producer ids (%s): sending with acks=all but without idempotence, so a "
                "retried batch may be written twice (the workers' dedup drops repeated events)",
                bootstrap_servers, refusal)
    return KafkaProducer(bootstrap_servers=bootstrap_servers, **dict(settings, enable_idempotence=False))


def _producer_id_refusal(producer: KafkaProducer, timeout_s: float) -> Optional[str]:
    """Why the broker refused the producer an id, or None: it has one, it is not idempotent, or no answer
    came within timeout_s (then sends wait or time out as usual). Reads kafka-python's transaction manager,
    which exists only for an idempotent producer and asks for the id as soon as the producer starts."""
    manager = getattr(producer, "_transaction_manager", None)
    deadline = time.monotonic() + timeout_s
    while manager is not None and time.monotonic() < deadline:
        if manager.has_producer_id():
            return None
        if manager.has_fatal_error():
            return str(manager.last_error)
        time.sleep(0.005)
    return None


class _Buffer:
    __slots__ = ("source", "events", "deadline")

    def __init__(self, source: str, deadline: float):
        self.source, self.events, self.deadline = source, [], deadline


class EventProducer:
    """Thread-safe. ``events_sent`` / ``messages_sent`` count what the broker acknowledged."""

    def __init__(self, bootstrap_servers: str, codec: Codec, topic_prefix: str = "cx.", max_batch_events: int = 500,
                 max_batch_bytes: int = 900_000, linger_ms: float = 50, **producer_config: Any):
        self.bootstrap_servers, self.codec = bootstrap_servers, codec
        self.max_batch_events, self.max_batch_bytes, self.linger_s = max_batch_events, max_batch_bytes, linger_ms / 1000
        self._topics = {source: f"{topic_prefix}events.{source}" for source in SOURCES}
        try:
            self._producer = open_producer(bootstrap_servers, **dict(
                {"max_request_size": max(1_048_576, max_batch_bytes + 4096)}, **producer_config))
        except KafkaError as exc:
            raise ProducerError(f"cannot reach Kafka at {bootstrap_servers} ({exc}): is the broker running, and is "
                                "the address (CXP_KAFKA_URL / --kafka-url) right?") from exc
        self._partitions: dict[str, int] = {}
        self._event_bytes = dict.fromkeys(SOURCES, 256.0)  # encoded bytes per event, learnt from sent batches
        self._buffers: dict[tuple[str, int], _Buffer] = {}  # oldest first: its deadline is the next one
        self._cond = threading.Condition()
        self._closing = False
        # Updated from kafka-python's sender thread: a lock of their own, never held while calling kafka-python.
        self._stats_lock = threading.Lock()
        self.events_sent = self.messages_sent = self.events_failed = 0
        self._error: Optional[str] = None
        self._lingerer = threading.Thread(target=self._linger_loop, name="cxp-producer-linger", daemon=True)
        self._lingerer.start()

    def send(self, source: str, event: dict) -> None:
        """Buffer one event; raises ProducerError if events sent earlier were not delivered."""
        self._raise_failures()
        topic = self._topics.get(source)
        if topic is None:
            raise ValueError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
        partition = partition_for(event_key(source, event), self._partition_count(topic))
        with self._cond:
            if self._closing:
                raise ProducerError("send() after close()")
            buffer = self._buffers.get((topic, partition))
            if buffer is None:
                buffer = self._buffers[(topic, partition)] = _Buffer(source, time.monotonic() + self.linger_s)
                self._cond.notify()
            buffer.events.append(event)
            if (len(buffer.events) >= self.max_batch_events
                    or len(buffer.events) * self._event_bytes[source] >= self.max_batch_bytes):
                self._send((topic, partition))

    def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            try:
                partitions = self._producer.partitions_for(topic)
            except KafkaTimeoutError as exc:
                raise ProducerError(
                    f"no metadata for topic {topic} from {self.bootstrap_servers} within "
                    f"{self._producer.config['max_block_ms'] / 1000:.0f} s ({exc}): the topic probably does not "
                    "exist (this producer never auto-creates one); create the topics with `cxp topics`") from exc
            except KafkaError as exc:
                raise ProducerError(f"cannot look up topic {topic} on {self.bootstrap_servers}: {exc}") from exc
            count = self._partitions[topic] = len(partitions)
        return count

    def _send(self, slot: tuple[str, int]) -> None:
        """Encode one buffer and hand it to kafka-python. Caller holds the lock, which keeps partition order."""
        buffer = self._buffers.pop(slot)
        topic, partition = slot
        for events, value in self._encode(buffer.source, buffer.events):
            key = event_key(buffer.source, events[0])
            future = self._producer.send(topic, value=value, key=key, partition=partition)
            future.add_callback(self._delivered, len(events))
            future.add_errback(self._failed, len(events), f"a batch of {len(events)} events to {topic}[{partition}]")

    def _encode(self, source: str, events: list[dict]) -> Iterator[tuple[list[dict], bytes]]:
        """Batch messages of ``events``: halved while over ``max_batch_bytes`` and around events that do not
        encode, which are reported instead of taking the rest of their batch down with them."""
        try:
            value = self.codec.encode_batch(source, events)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many kinds of error for a bad record
            if len(events) == 1:
                self._failed(1, f"{source} event {events[0].get('event_id')!r}", f"it does not encode: {exc}")
                return
        else:
            self._event_bytes[source] = 0.8 * self._event_bytes[source] + 0.2 * len(value) / len(events)
            if len(value) <= self.max_batch_bytes or len(events) == 1:
                yield events, value
                return
        half = len(events) // 2
        yield from self._encode(source, events[:half])
        yield from self._encode(source, events[half:])

    def _delivered(self, events: int, _metadata: object) -> None:
        with self._stats_lock:
            self.events_sent += events
            self.messages_sent += 1

    def _failed(self, events: int, what: str, error: object) -> None:
        with self._stats_lock:
            self.events_failed += events
            self._error = self._error or f"{what} was not delivered to Kafka at {self.bootstrap_servers}: {error}"

    def _raise_failures(self) -> None:
        with self._stats_lock:
            error, self._error = self._error, None
        if error:
            raise ProducerError(f"{error} ({self.events_failed} events failed so far)")

    def _linger_loop(self) -> None:
        with self._cond:
            while not self._closing:
                oldest = next(iter(self._buffers.items()), None)
                wait = oldest[1].deadline - time.monotonic() if oldest else None
                if wait is None or wait > 0:
                    self._cond.wait(wait)
                    continue
                try:
                    self._send(oldest[0])
                except Exception as exc:  # noqa: BLE001 - e.g. kafka-python's buffer stayed full: report it, go on
                    self._failed(len(oldest[1].events), f"a batch to {oldest[0][0]}[{oldest[0][1]}]", exc)

    def flush(self, timeout_s: Optional[float] = 60) -> None:
        """Send every buffered event and wait for the broker's acknowledgements; raise if any failed."""
        with self._cond:
            for slot in list(self._buffers):
                self._send(slot)
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaTimeoutError as exc:
            raise ProducerError(f"Kafka at {self.bootstrap_servers} did not acknowledge within {timeout_s} s") from exc
        self._raise_failures()

    def close(self, timeout_s: Optional[float] = 60) -> None:
        if self._closing:
            return
        try:
            self.flush(timeout_s)
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify()
            self._lingerer.join()
            self._producer.close(timeout=timeout_s)

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
