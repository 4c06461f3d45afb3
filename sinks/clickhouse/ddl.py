"""ClickHouse DDL of every SPEC §7 table: the one place for table and column names.

The DDL is the subset both ClickHouse 18.16 and current servers (and chdb) accept: DateTime in
seconds plus an Int64 milliseconds column, String instead of LowCardinality, arrays instead of Map,
and ReplacingMergeTree so a replayed row collapses. Documented queries read with ``FINAL`` (or
``uniqExact`` of the key), e.g. ``SELECT count() FROM cx.events FINAL``, and so never double count.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]
    engine: str

    def create(self, database: str) -> str:
        columns = ",\n  ".join(f"`{name}` {kind}" for name, kind in self.columns)
        return f"CREATE TABLE IF NOT EXISTS {database}.{self.name} (\n  {columns}\n) ENGINE = {self.engine}"


_TABLES = (
    Table("events", (
        ("event_id", "String"), ("source", "String"), ("event_type", "String"), ("event_time", "DateTime"),
        ("event_ms", "Int64"), ("tenant", "String"), ("customer_id", "Nullable(String)"),
        ("anonymous_id", "Nullable(String)"), ("session_id", "Nullable(String)"), ("attr_keys", "Array(String)"),
        ("attr_values", "Array(String)"), ("kafka_partition", "UInt16"), ("kafka_offset", "Int64"),
    ), "ReplacingMergeTree() PARTITION BY toYYYYMM(event_time) ORDER BY (tenant, toDate(event_time), event_id)"),
    Table("survey_responses", (
        ("event_id", "String"), ("event_time", "DateTime"), ("event_ms", "Int64"), ("tenant", "String"),
        ("customer_id", "Nullable(String)"), ("source", "String"), ("kind", "String"), ("score", "Int16"),
        ("touchpoint", "Nullable(String)"), ("comment", "Nullable(String)"), ("kafka_partition", "UInt16"),
    ), "ReplacingMergeTree() PARTITION BY toYYYYMM(event_time) ORDER BY (tenant, kind, event_id)"),
    Table("dead_letters", (
        ("received_at", "DateTime"), ("received_ms", "Int64"), ("topic", "String"), ("partition", "UInt16"),
        ("offset", "Int64"), ("batch_index", "Int32"), ("reason", "String"), ("error", "String"),
        ("key", "Nullable(String)"), ("payload", "String"),
    ), "ReplacingMergeTree() PARTITION BY toYYYYMM(received_at) ORDER BY (topic, partition, offset, batch_index)"),
    Table("metric_snapshots", (
        ("ts", "DateTime"), ("tenant", "String"), ("metric", "String"), ("window", "String"), ("value", "Float64"),
        ("n", "UInt64"),
    ), "ReplacingMergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (tenant, metric, `window`, ts)"),
    Table("complaints", (
        ("complaint_id", "String"), ("tenant", "String"), ("customer_id", "String"), ("priority", "String"),
        ("category", "Nullable(String)"), ("origin_channel", "Nullable(String)"), ("status", "String"),
        ("opened_at", "Nullable(DateTime)"), ("first_response_at", "Nullable(DateTime)"),
        ("resolved_at", "Nullable(DateTime)"), ("reopen_count", "UInt16"), ("updated_ms", "Int64"),
    ), "ReplacingMergeTree(updated_ms) ORDER BY (tenant, complaint_id)"),
    Table("funnel_progress", (
        ("funnel", "String"), ("tenant", "String"), ("customer_id", "String"), ("started_at", "DateTime"),
        ("level", "UInt8"), ("updated_ms", "Int64"),
    ), "ReplacingMergeTree(updated_ms) ORDER BY (tenant, funnel, customer_id, started_at)"),
    Table("churn_signals", (
        ("customer_id", "String"), ("tenant", "String"), ("score", "Float64"), ("level", "String"),
        ("reasons", "Array(String)"), ("signal_time", "DateTime"), ("signal_ms", "Int64"),
    ), "ReplacingMergeTree() PARTITION BY toYYYYMM(signal_time) ORDER BY (tenant, customer_id, signal_ms)"),
)

TABLES: dict[str, Table] = {table.name: table for table in _TABLES}
COLUMNS: dict[str, tuple[str, ...]] = {table.name: tuple(name for name, _ in table.columns) for table in _TABLES}


def create_statements(database: str = "cx") -> list[str]:
    return [f"CREATE DATABASE IF NOT EXISTS {database}"] + [table.create(database) for table in _TABLES]
