"""Read back what the worker needs to resume partitions: ClickHouse is the durable copy of its state."""
from __future__ import annotations

from dataclasses import dataclass, field

from sinks.clickhouse.backend import Backend


@dataclass
class RestoredState:
    clock_ms: int = 0
    source_clocks: dict[str, int] = field(default_factory=dict)
    event_ids: list[tuple[int, str, int]] = field(default_factory=list)  # (partition, event_id, event_ms)
    survey_counts: list[tuple[int, str, str, int, int, int]] = field(default_factory=list)
    # (partition, tenant, kind, minute, score, responses)


def load_partition_state(backend: Backend, partitions: list[int], dedup_horizon_ms: int,
                         max_window_ms: int) -> RestoredState:
    """Event ids within the dedup horizon and survey counts within the largest window, per partition."""
    database = backend.database
    where = f"kafka_partition IN ({', '.join(str(int(p)) for p in partitions)})"
    state = RestoredState()
    clocks = backend.query(f"SELECT source, max(event_ms) FROM {database}.events WHERE {where} GROUP BY source")
    if not clocks:
        return state
    state.source_clocks = {source: int(ms) for source, ms in clocks}
    state.clock_ms = max(state.source_clocks.values())
    state.event_ids = [(int(p), eid, int(ms)) for p, eid, ms in backend.query(
        f"SELECT kafka_partition, event_id, event_ms FROM {database}.events "
        f"WHERE {where} AND event_ms > {state.clock_ms - dedup_horizon_ms}")]
    state.survey_counts = [(int(p), tenant, kind, int(minute), int(score), int(n)) for p, tenant, kind, minute, score, n in backend.query(
        f"SELECT kafka_partition, tenant, kind, intDiv(event_ms, 60000) AS minute, score, count() "
        f"FROM {database}.survey_responses FINAL WHERE {where} AND event_ms > {state.clock_ms - max_window_ms} "
        f"GROUP BY kafka_partition, tenant, kind, minute, score")]
    return state
