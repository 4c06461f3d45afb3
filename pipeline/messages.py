"""The records the worker sends on its output topics, typed. Each is the Avro record ``cx.<class name>`` of
``schemas/`` field for field (a unit test holds them together); the delivery path encodes them, nothing else.
"""
from __future__ import annotations

from typing import NamedTuple, Optional


class DeadLetter(NamedTuple):
    """A rejected record, on ``deadletter``: why, where it came from, and its bytes (up to the limit)."""

    reason: str
    error: str
    source_topic: str
    source_partition: int
    source_offset: int
    batch_index: Optional[int]
    original_key: Optional[bytes]
    original_value: bytes
    received_time: int
    truncated: bool
    original_size: int


class Contribution(NamedTuple):
    """One churn signal behind a score: its weight and the evidence, in words."""

    signal: str
    weight: float
    evidence: str


class ChurnSignal(NamedTuple):
    """A customer's churn-risk level changed, on ``signals.churn``."""

    customer_id: str
    tenant: str
    score: float
    level: str
    reasons: list[str]
    signal_time: int
    previous_level: Optional[str]
    contributions: list[Contribution]
    sequence: int


class FollowUpAction(NamedTuple):
    """Something a person should do for a customer, on ``actions``; ``action_id`` is derived from the cause."""

    kind: str
    customer_id: str
    tenant: str
    reason: str
    context: dict[str, str]
    due_time: int
    created_time: int
    action_id: str


def schema_name(message: NamedTuple) -> str:
    """The Avro schema of a message: ``cx.`` and its class name."""
    return f"cx.{type(message).__name__}"


def as_avro(value):
    """A message as the dicts and lists fastavro writes (nested records included)."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {name: as_avro(item) for name, item in zip(value._fields, value)}
    if isinstance(value, list):
        return [as_avro(item) for item in value]
    return value
