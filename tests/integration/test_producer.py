"""EventProducer against a real broker (Tansu, from the session fixture `broker` in tests/services/kafka.py),
read back with a plain kafka-python consumer."""
from __future__ import annotations

import time
import uuid
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from runtime.local.processes import free_port
from pipeline.partitioner import event_key, partition_for
from pipeline.producer import EventProducer, ProducerError
from pipeline.registry import BATCH_SCHEMAS, SOURCES, BundledRegistry
from pipeline.simulate import Simulator
from pipeline.wire import Codec

pytestmark = pytest.mark.integration
PARTITIONS = 4
CODEC = Codec(BundledRegistry())


@pytest.fixture
def prefix(broker) -> str:
    """Fresh input topics of 4 partitions each, under a prefix of their own."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers, request_timeout_ms=5000)
    admin.create_topics([NewTopic(f"{prefix}events.{s}", PARTITIONS, 1) for s in SOURCES])
    admin.close()
    return prefix


def consumer_at_start(broker, prefix: str) -> KafkaConsumer:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=50)
    consumer.assign([TopicPartition(f"{prefix}events.{s}", p) for s in SOURCES for p in range(PARTITIONS)])
    consumer.seek_to_beginning()
    return consumer


def consume(consumer: KafkaConsumer, events: int, timeout_s: float = 30) -> list:
    """Messages until they hold ``events`` events, or the timeout."""
    messages, seen = [], 0
    deadline = time.monotonic() + timeout_s
    while seen < events and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            messages += batch
            seen += sum(len(CODEC.decode(m.value).events) for m in batch)
    return messages


def simulated(count: int) -> list[tuple[str, dict]]:
    start_ms = int(time.time() * 1000) - 3_600_000
    return list(Simulator(seed=5, customers=500, start_ms=start_ms).events(count=count, rate=count / 3600))


def produce(broker, prefix: str, events, **options) -> EventProducer:
    with EventProducer(broker.bootstrap_servers, CODEC, topic_prefix=prefix, **options) as producer:
        for source, event in events:
            producer.send(source, event)
    return producer


def test_batches_are_co_partitioned_complete_and_in_order(broker, prefix):
    sent = simulated(5000)
    producer = produce(broker, prefix, sent, max_batch_events=100)
    assert (producer.events_sent, producer.events_failed) == (5000, 0)
    consumer = consumer_at_start(broker, prefix)
    messages = consume(consumer, 5000)
    assert consume(consumer, 1, timeout_s=1) == []  # and nothing more
    consumer.close()

    assert len(messages) == producer.messages_sent
    received, sizes = defaultdict(list), []
    for message in sorted(messages, key=lambda m: m.offset):
        decoded = CODEC.decode(message.value)
        source = message.topic.rsplit(".", 1)[1]
        assert decoded.is_batch and decoded.schema.name == BATCH_SCHEMAS[source]
        assert message.key == event_key(source, decoded.events[0])
        for event in decoded.events:  # batching never breaks co-partitioning (docs/contract.md, Wire format)
            assert partition_for(event_key(source, event), PARTITIONS) == message.partition
        sizes.append(len(decoded.events))
        received[(source, message.partition)] += decoded.events
    assert max(sizes) == 100 and sum(sizes) == 5000

    expected = defaultdict(list)
    for source, event in sent:
        expected[(source, partition_for(event_key(source, event), PARTITIONS))].append(event)
    assert received == expected  # every event exactly once, as sent, in send order within its partition


def test_batches_stay_under_max_batch_bytes(broker, prefix):
    produce(broker, prefix, simulated(3000), max_batch_bytes=8_000)
    consumer = consumer_at_start(broker, prefix)
    messages = consume(consumer, 3000)
    consumer.close()
    assert sum(len(CODEC.decode(m.value).events) for m in messages) == 3000
    assert max(len(m.value) for m in messages) <= 8_000
    assert sum(len(m.value) for m in messages) / len(messages) > 4_000  # batches, not single events


def test_linger_delivers_a_lone_event_without_flush(broker, prefix):
    consumer = consumer_at_start(broker, prefix)
    assert consume(consumer, 1, timeout_s=0.5) == []  # positions fetched: the consumer is ready
    source, event = simulated(1)[0]
    with EventProducer(broker.bootstrap_servers, CODEC, topic_prefix=prefix, linger_ms=200) as producer:
        producer.send(source, event)  # the topic's partition count is looked up here, before the clock starts
        started = time.monotonic()
        messages = consume(consumer, 1, timeout_s=5)
        elapsed = time.monotonic() - started
        assert [CODEC.decode(m.value).events for m in messages] == [[event]]
        assert 0.15 <= elapsed < 0.2 + 0.8, elapsed  # waited for linger, then came right away
        assert producer.events_sent == 1
    consumer.close()


def test_an_event_that_does_not_encode_fails_alone(broker, prefix):
    sent = simulated(50)
    bad = (sent[10][0], dict(sent[10][1], event_id="not-encodable", event_time="yesterday"))
    with pytest.raises(ProducerError, match="not-encodable"):
        produce(broker, prefix, sent[:10] + [bad] + sent[11:])
    consumer = consumer_at_start(broker, prefix)
    assert sum(len(CODEC.decode(m.value).events) for m in consume(consumer, 49)) == 49
    consumer.close()


def test_unreachable_broker_is_named_in_the_error():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ProducerError, match=f"cannot reach Kafka at {address}.*broker running"):
        EventProducer(address, CODEC, bootstrap_timeout_ms=500)


# ------------------------------------------------------------------------ acks=all and idempotence

def sent_and_received(broker, prefix: str, producer: EventProducer, count: int = 300) -> tuple[int, int]:
    with producer:
        for source, event in simulated(count):
            producer.send(source, event)
    consumer = consumer_at_start(broker, prefix)
    received = sum(len(CODEC.decode(m.value).events) for m in consume(consumer, count))
    consumer.close()
    return producer.events_sent, received


def test_default_is_acks_all_and_idempotent_where_the_broker_gives_producer_ids(broker, prefix):
    """Tansu 0.6 answers InitProducerId in the versions kafka-python sends it: the producer holds an id."""
    producer = EventProducer(broker.bootstrap_servers, CODEC, topic_prefix=prefix)
    config = producer._producer.config
    assert (config["acks"], config["enable_idempotence"]) == (-1, True)
    assert producer._producer._transaction_manager.has_producer_id()
    assert sent_and_received(broker, prefix, producer) == (300, 300)


def test_a_broker_that_refuses_producer_ids_gets_acks_all_without_idempotence(broker, prefix, caplog):
    """Asked in an older version (api_version 2.4: InitProducerId v1), the same Tansu refuses the id with
    UnknownError, as it does aiokafka's v0 (the worker's client): the producer says so and goes on without."""
    with caplog.at_level("WARNING", logger="cxp.producer"):
        producer = EventProducer(broker.bootstrap_servers, CODEC, topic_prefix=prefix, api_version=(2, 4))
    config = producer._producer.config
    assert (config["acks"], config["enable_idempotence"]) == (-1, False)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "cxp.producer"]
    assert "refuses producer ids" in warning and broker.bootstrap_servers in warning and "UnknownError" in warning
    assert sent_and_received(broker, prefix, producer) == (300, 300)


def test_explicit_idempotence_on_a_refusing_broker_is_an_error(broker):
    with pytest.raises(ProducerError, match="refuses producer ids"):
        EventProducer(broker.bootstrap_servers, CODEC, api_version=(2, 4), enable_idempotence=True)
