"""Topic names: the one place that says which topics exist. All input topics get the same partition
count (co-partitioning; docs/contract.md); :mod:`runtime.topics` creates them."""
from __future__ import annotations

from pipeline.registry import SOURCES
from pipeline.settings import KafkaSettings

# Logical names of the topics the worker writes; the full name is settings.topic(name).
OUTPUT_TOPICS = ("deadletter", "signals.churn", "actions")


def input_topics(kafka: KafkaSettings) -> dict[str, str]:
    """topic name -> source."""
    return {kafka.topic(f"events.{source}"): source for source in SOURCES}


def output_topics(kafka: KafkaSettings) -> dict[str, str]:
    """logical name -> full topic name."""
    return {name: kafka.topic(name) for name in OUTPUT_TOPICS}
