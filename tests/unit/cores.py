"""Driving one metric core in a unit test, as the processor and the sink would."""
from __future__ import annotations

import uuid
from typing import Any, Iterable, Sequence

from pipeline.metrics.base import Batch, MetricCore


def batch(source: str, partition: int, events: Sequence[dict]) -> Batch:
    """One source's events as the batch of a partition."""
    return Batch.of(partition, [(source, event) for event in events])


def restore(core: MetricCore, state: Any, name: str, rows: Iterable[tuple], clock_ms: int) -> None:
    """Hand plain tuples to ``core.restore`` as the named rows its restore ``name`` declares."""
    spec = next(spec for spec in core.restores() if spec.name == name)
    core.restore(state, name, [spec.row_type()(*row) for row in rows], clock_ms)


def mixed_event_id(i: int) -> str:
    """Event id number ``i``: plain ids and canonical UUIDs (which cores keep as ints, ``pipeline.dedup.id_key``)
    mixed, in an order of their own, so that a test's ties of one millisecond are ordered across both kinds."""
    return str(uuid.UUID(int=i * 0x9E3779B97F4A7C15F39CC0605CEDC835 % 2**128)) if i % 2 else f"e{i:04d}"
