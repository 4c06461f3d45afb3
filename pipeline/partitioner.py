"""Kafka's default partitioner (murmur2 of the key, as the Java client and kafka-python compute it).

Batch messages must land where each of their events would land alone (docs/contract.md, Wire format), so the SDK, the
collector and any test agree with every standard Kafka client by using this one function.
"""
from __future__ import annotations

from functools import lru_cache

from kafka.partitioner.default import murmur2


@lru_cache(maxsize=1 << 16)  # customer keys repeat, and murmur2 in pure Python costs a few µs per key
def partition_for(key: bytes, num_partitions: int) -> int:
    """Java's ``Utils.toPositive(Utils.murmur2(key)) % numPartitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


def event_key(source: str, event: dict) -> bytes:
    """customer_id, else (web only) anonymous_id, UTF-8; empty if neither (an invalid event, still routable)."""
    key = event.get("customer_id") or (event.get("anonymous_id") if source == "web" else None) or ""
    return key.encode("utf-8")
