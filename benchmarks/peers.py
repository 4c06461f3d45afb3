"""Other consumers on the worker's one-event-per-message input, for the side-by-side figures.

Each runs in a fresh Python process (the harness's ``in_child``), joins its own consumer group on
the input topics from the earliest offset, decodes every value with the project's decoder
(``pipeline.wire.Codec``, fastavro underneath) and counts events per tenant, so the only difference
between them is the machinery around that work. Each returns messages/s from its first message to
its n-th (the group join is not counted, as for the worker) and the per-tenant counts, which the
harness checks against the input.

- ``quixstreams_count``: a quixstreams Application, one StreamingDataFrame per input topic.
  ``stateful="0"``: decode and count in a plain dict. ``stateful="1"``: the same plus a count per
  message key (customer) in quixstreams' RocksDB state, which it backs with a changelog topic.
- ``confluent_count``: a plain confluent-kafka ``Consumer.consume(5000)`` loop in a group.
  librdkafka talks to Tansu (subscribe, group join and fetch work), so the plain loop uses the
  client quixstreams is built on rather than aiokafka, which the harness's ceiling already uses.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from pipeline.registry import SOURCES, BundledRegistry
from pipeline.wire import Codec

SESSION_TIMEOUT_MS = 6000  # as the worker's (CXP_SESSION_TIMEOUT=6): Tansu's group join takes about half of it
# Tansu 0.6 answers DescribeConfigs with no entries; quixstreams derives its changelog topics' retention
# from the input topics' `retention.ms` and fails without it. -1 (keep forever) is Tansu's behaviour anyway.
TANSU_RETENTION_MS = "-1"


def topics(prefix: str) -> list[str]:
    return [f"{prefix}events.{source}" for source in SOURCES]


def quixstreams_count(bootstrap: str, prefix: str, n: str, stateful: str, state_dir: str) -> dict:
    """quixstreams decode + count per tenant over n messages; with stateful="1" also a count per key in
    RocksDB (changelogged). Times the first message to the n-th; `closing_s` is the n-th to app.run()
    returning (its last checkpoint: state flushed, changelog produced, offsets committed)."""
    from quixstreams import Application

    n_messages, codec, by_tenant = int(n), Codec(BundledRegistry()), Counter()
    app = Application(broker_address=bootstrap, consumer_group=f"quix-{Path(state_dir).name}",
                      auto_offset_reset="earliest", state_dir=state_dir, loglevel="WARNING",
                      consumer_extra_config={"session.timeout.ms": SESSION_TIMEOUT_MS,
                                             "heartbeat.interval.ms": SESSION_TIMEOUT_MS // 3})
    seen, times = 0, {}

    def count(value: bytes) -> None:
        nonlocal seen
        if not seen:
            times["first"] = time.perf_counter()
        for event in codec.decode(value).events:
            by_tenant[event["tenant"]] += 1
        seen += 1
        if seen == n_messages:
            times["last"] = time.perf_counter()
            app.stop()

    def count_with_state(value: bytes, state) -> None:
        count(value)
        state.set("messages", state.get("messages", 0) + 1)

    for name in topics(prefix):
        topic = app.topic(name, key_deserializer="bytes", value_deserializer="bytes")
        topic.broker_config.extra_config.setdefault("retention.ms", TANSU_RETENTION_MS)
        frame = app.dataframe(topic)
        if stateful == "1":
            frame.update(count_with_state, stateful=True)
        else:
            frame.update(count)
    app.run()
    if seen < n_messages:
        raise RuntimeError(f"quixstreams stopped after {seen:,} of {n_messages:,} messages")
    return {"msgs_per_s": n_messages / (times["last"] - times["first"]),
            "closing_s": time.perf_counter() - times["last"], "events_by_tenant": dict(by_tenant)}


def confluent_count(bootstrap: str, prefix: str, n: str, group: str) -> dict:
    """A plain confluent-kafka consumer in a group: consume(5000) batches, decode, count per tenant."""
    from confluent_kafka import Consumer

    n_messages, codec, by_tenant = int(n), Codec(BundledRegistry()), Counter()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": SESSION_TIMEOUT_MS // 3})
    consumer.subscribe(topics(prefix))
    try:
        seen, first = 0, None
        deadline = time.perf_counter() + max(120.0, n_messages / 1000)
        while seen < n_messages:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the confluent-kafka loop read only {seen:,} of {n_messages:,} messages")
            for message in consumer.consume(5000, timeout=0.2):
                if message.error():
                    raise RuntimeError(f"confluent-kafka: {message.error()}")
                if first is None:
                    first = time.perf_counter()
                for event in codec.decode(message.value()).events:
                    by_tenant[event["tenant"]] += 1
                seen += 1
        return {"msgs_per_s": n_messages / (time.perf_counter() - first), "events_by_tenant": dict(by_tenant)}
    finally:
        consumer.close()
