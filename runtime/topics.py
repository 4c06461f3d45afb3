"""Creating the topics of :mod:`pipeline.topics` on the broker."""
from __future__ import annotations

import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.kafka_security import kafka_python_config
from pipeline.settings import Settings
from pipeline.topics import input_topics, output_topics


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics; return the partition count of every topic. Fails if inputs disagree."""
    kafka = settings.kafka
    names = list(input_topics(kafka)) + list(output_topics(kafka).values())
    deadline = time.monotonic() + timeout_s
    counts: dict[str, int] = {}
    last_error: Exception | None = None
    security = kafka_python_config(kafka)
    while len(counts) < len(names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not create or describe the topics on {kafka.bootstrap_servers} within "
                               f"{timeout_s:.0f} s (last error: {last_error}); is the broker running and CXP_KAFKA_URL right?")
        try:
            admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id="cxp-admin",
                                     request_timeout_ms=5000, **security)
            try:
                missing = [NewTopic(n, kafka.partitions, kafka.topic_replication_factor) for n in names if n not in set(admin.list_topics())]
                if missing:
                    try:
                        admin.create_topics(missing)
                    except TopicAlreadyExistsError:
                        pass
                for meta in admin.describe_topics(names):
                    if meta.get("partitions"):
                        counts[meta.get("name") or meta.get("topic")] = len(meta["partitions"])
            finally:
                admin.close()
        except KafkaError as exc:
            last_error = exc
        if len(counts) < len(names):
            time.sleep(0.3)
    inputs = {counts[t] for t in input_topics(kafka)}
    if len(inputs) > 1:
        raise RuntimeError(
            f"input topics have different partition counts {sorted(inputs)}: they must be co-partitioned "
            "(docs/contract.md, Topics); recreate them with one count"
        )
    return counts
