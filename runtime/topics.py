"""Creating the topics of :mod:`pipeline.topics` on the broker."""
from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.kafka_security import kafka_python_config
from pipeline.settings import Settings
from pipeline.topics import input_topics, output_topics

log = logging.getLogger("cxp.topics")
WAIT_LOG_INTERVAL_S = 3.0
ATTEMPT_MS = 4000  # how long one attempt may take to reach a broker, so waits are logged while they last


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics; return the partition count of every topic. Fails if inputs disagree.
    While the broker does not answer, retries for up to ``timeout_s``, logging a warning every
    :data:`WAIT_LOG_INTERVAL_S` with what it waits for."""
    kafka = settings.kafka
    names = list(input_topics(kafka)) + list(output_topics(kafka).values())
    started = time.monotonic()
    deadline, next_log = started + timeout_s, started
    counts: dict[str, int] = {}
    last_error: Exception | None = None
    security = kafka_python_config(kafka)
    while len(counts) < len(names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not create or describe the topics on {kafka.bootstrap_servers} within "
                               f"{timeout_s:.0f} s (last error: {last_error}); is the broker running, and is "
                               f"CXP_KAFKA_URL ({kafka.bootstrap_servers}) its address?")
        try:
            admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id="cxp-admin",
                                     request_timeout_ms=5000, bootstrap_timeout_ms=ATTEMPT_MS,
                                     reconnect_backoff_max_ms=1000, **security)
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
            now = time.monotonic()
            if now >= next_log:
                next_log = now + WAIT_LOG_INTERVAL_S
                log.warning("waiting for Kafka at %s (CXP_KAFKA_URL) to create and describe the topics: %s; "
                            "retrying for %.0f s more", kafka.bootstrap_servers, exc, max(deadline - now, 0),
                            extra={"kafka_url": kafka.bootstrap_servers, "error": repr(exc),
                                   "waited_s": round(now - started, 1), "gives_up_in_s": round(max(deadline - now, 0), 1)})
        if len(counts) < len(names):
            time.sleep(0.3)
    inputs = {counts[t] for t in input_topics(kafka)}
    if len(inputs) > 1:
        raise RuntimeError(
            f"input topics have different partition counts {sorted(inputs)}: they must be co-partitioned "
            "(docs/contract.md, Topics); recreate them with one count"
        )
    return counts
