"""Every ClickHouse table of the contract: the one place for table and column names, types and engines.

``ROWS[table]`` is the row layout every writer uses: a named tuple whose fields are the columns in
order (``ROWS["events"](event_id=..., ...)``), so no code re-types a layout by position. DateTime
columns take int epoch seconds (UTC), ``*_ms`` columns Int64 epoch milliseconds, Nullable columns
None, Array(String) columns lists, ``id_hash`` the event id's 64-bit hash (:func:`pipeline.dedup.id_hash`).

The DDL is the subset ClickHouse 18.16 (Debian's server), current servers and chdb all accept:
``PARTITION BY``/``ORDER BY`` MergeTree syntax (the pre-2018 ``MergeTree(date, key, 8192)`` form
needs a deprecated-syntax setting on current engines), DateTime in seconds next to an Int64
milliseconds column (no DateTime64), String (no LowCardinality), arrays (no Map), no TTL or CODEC.

Writes are at-least-once, so every table is a ReplacingMergeTree: a replayed row has the same sorting
key (and the same partition, which is derived from the row itself) as the original and collapses
with it. Until a background merge has run, both copies are on disk, so read with ``FINAL`` or count
distinct keys. The documented queries, which never double count after a replay:

    -- events and survey answers
    SELECT count() FROM cx.events FINAL WHERE tenant = 'acme'
    SELECT uniqExact(event_id) FROM cx.events WHERE tenant = 'acme'
    SELECT event_type, count() FROM cx.events FINAL GROUP BY event_type
    SELECT tenant, 100 * (countIf(score >= 9) - countIf(score <= 6)) / count() AS nps
      FROM cx.survey_responses FINAL WHERE kind = 'NPS' GROUP BY tenant
    -- latest state wins (the version column is updated_ms)
    SELECT status, count() FROM cx.complaints FINAL GROUP BY status
    SELECT funnel, level, count() FROM cx.funnel_progress FINAL GROUP BY funnel, level
    -- exact complaint handling percentiles in seconds, per tenant and priority
    SELECT tenant, priority, quantilesExact(0.5, 0.9, 0.99)((first_response_ms - opened_ms) / 1000)
      FROM cx.complaints FINAL WHERE first_response_ms IS NOT NULL GROUP BY tenant, priority
    SELECT tenant, priority, quantilesExact(0.5, 0.9, 0.99)((resolved_ms - opened_ms) / 1000)
      FROM cx.complaints FINAL WHERE resolved_ms IS NOT NULL GROUP BY tenant, priority
    SELECT kind, count() FROM cx.actions FINAL GROUP BY kind
    -- funnel gauges per window, from funnel_progress or windowFunnel over events: docs/metrics.md
    -- one row per emitted signal / snapshot / rejected record
    SELECT level, count() FROM cx.churn_signals FINAL GROUP BY level
    -- a row per worker and snapshot; fleet values from several workers: docs/metrics.md, "History"
    SELECT ts, partitions, value, n FROM cx.metric_snapshots FINAL WHERE metric = 'nps' AND `window` = '24h' ORDER BY ts
    SELECT reason, count() FROM cx.dead_letters FINAL GROUP BY reason

The CREATE statements are :mod:`sinks.clickhouse.ddl`. In cluster mode these names are Distributed tables over
replicated ``<name>_local`` ones, so the same queries work unchanged (docs/configuration.md, "ClickHouse cluster").
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass



@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, ClickHouse type)
    engine: str


_TABLES = (
    Table("events", (
        ("event_id", "String"), ("source", "String"), ("event_type", "String"), ("event_time", "DateTime"),
        ("event_ms", "Int64"), ("tenant", "String"), ("customer_id", "Nullable(String)"),
        ("anonymous_id", "Nullable(String)"), ("session_id", "Nullable(String)"), ("attr_keys", "Array(String)"),
        ("attr_values", "Array(String)"), ("kafka_partition", "UInt16"), ("kafka_offset", "Int64"),
        ("id_hash", "UInt64"),
    ), "ReplacingMergeTree() PARTITION BY toYYYYMM(event_time) ORDER BY (tenant, toDate(event_time), event_id)"),
    Table("survey_responses", (
        ("event_id", "String"), ("event_time", "DateTime"), ("event_ms", "Int64"), ("tenant", "String"),
        ("customer_id", "Nullable(String)"), ("source", "String"), ("kind", "String"), ("score", "Int16"),
        ("touchpoint", "Nullable(String)"), ("comment", "Nullable(String)"), ("kafka_partition", "UInt16"),
        ("id_hash", "UInt64"), ("attr_keys", "Array(String)"), ("attr_values", "Array(String)"),
    ), "ReplacingMergeTree() PARTITION BY toYYYYMM(event_time) ORDER BY (tenant, kind, event_id)"),
    Table("dead_letters", (
        ("received_at", "DateTime"), ("received_ms", "Int64"), ("topic", "String"), ("partition", "UInt16"),
        ("offset", "Int64"), ("batch_index", "Int32"), ("reason", "String"), ("error", "String"),
        ("key", "Nullable(String)"), ("payload", "String"),
    ), "ReplacingMergeTree() PARTITION BY toYYYYMM(received_at) ORDER BY (topic, partition, offset, batch_index)"),
    # One worker's value over the partitions it owns ("0,3,7"): several workers write at the same second.
    Table("metric_snapshots", (
        ("ts", "DateTime"), ("tenant", "String"), ("metric", "String"), ("window", "String"), ("value", "Float64"),
        ("n", "UInt64"), ("partitions", "String"),
    ), "ReplacingMergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (tenant, metric, `window`, ts, partitions)"),
    # Not partitioned by time: a later state of the same complaint or funnel attempt must land in the
    # same partition as the earlier one, or the two would never be merged.
    Table("complaints", (
        ("complaint_id", "String"), ("tenant", "String"), ("customer_id", "String"), ("priority", "String"),
        ("category", "Nullable(String)"), ("origin_channel", "Nullable(String)"), ("status", "String"),
        ("opened_at", "Nullable(DateTime)"), ("first_response_at", "Nullable(DateTime)"),
        ("resolved_at", "Nullable(DateTime)"), ("reopen_count", "UInt16"), ("updated_ms", "Int64"),
        ("opened_ms", "Nullable(Int64)"), ("first_response_ms", "Nullable(Int64)"), ("resolved_ms", "Nullable(Int64)"),
        ("sla_first_response_breached", "UInt8"), ("sla_resolution_breached", "UInt8"), ("last_event_ms", "Int64"),
        ("kafka_partition", "UInt16"), ("folded_reopens", "UInt16"),
        # the complaint's kept events, so a restored worker recomputes it exactly and knows what it saw
        ("event_hashes", "Array(UInt64)"), ("event_types", "Array(String)"), ("event_times_ms", "Array(Int64)"),
    ), "ReplacingMergeTree(updated_ms) ORDER BY (tenant, complaint_id)"),
    # Follow-up actions sent on cx.actions, one row per action id (deterministic per cause).
    Table("actions", (
        ("action_id", "String"), ("kind", "String"), ("tenant", "String"), ("customer_id", "String"),
        ("reason", "String"), ("context_keys", "Array(String)"), ("context_values", "Array(String)"),
        ("created_at", "DateTime"), ("created_ms", "Int64"), ("due_at", "DateTime"), ("due_ms", "Int64"),
        ("kafka_partition", "UInt16"),
    ), "ReplacingMergeTree() ORDER BY (tenant, action_id)"),
    # One row per funnel attempt (a step-1 event); step_ms[i] is when step i+1 was reached, 0 if not.
    Table("funnel_progress", (
        ("funnel", "String"), ("tenant", "String"), ("customer_id", "String"), ("started_at", "DateTime"),
        ("started_ms", "Int64"), ("level", "UInt8"), ("step_ms", "Array(Int64)"), ("updated_ms", "Int64"),
        ("kafka_partition", "UInt16"),
    ), "ReplacingMergeTree(updated_ms) ORDER BY (tenant, funnel, customer_id, started_ms)"),
    Table("churn_signals", (
        ("customer_id", "String"), ("tenant", "String"), ("score", "Float64"), ("level", "String"),
        ("reasons", "Array(String)"), ("signal_time", "DateTime"), ("signal_ms", "Int64"),
        ("previous_level", "String"), ("kafka_partition", "UInt16"), ("seq", "UInt64"), ("reached_ms", "Int64"),
        # seq: the customer's n-th level change. Two changes can share signal_ms (input from several
        # topics arrives out of order and is judged at one clock), so the change's number is the key.
        # Not partitioned by time, so a re-sent change always lands next to its first copy.
    ), "ReplacingMergeTree() ORDER BY (tenant, customer_id, seq)"),
    # One row per chatbot conversation, latest state wins (the chatbot core's state is rebuilt from it).
    Table("chatbot_conversations", (
        ("tenant", "String"), ("conversation_id", "String"), ("customer_id", "Nullable(String)"),
        ("handoff_ms", "Nullable(Int64)"), ("resolved_ms", "Nullable(Int64)"), ("abandoned_ms", "Nullable(Int64)"),
        ("ended_ms", "Nullable(Int64)"), ("outcome", "String"), ("last_event_ms", "Int64"), ("updated_ms", "Int64"),
        ("kafka_partition", "UInt16"),
    ), "ReplacingMergeTree(updated_ms) ORDER BY (tenant, conversation_id)"),
    # One row per order (a purchase's order_id, per buyer: the customer or anonymous visitor, the Kafka key),
    # latest version wins: the earliest purchase event of the order, its amount in integer minor units.
    # Not partitioned by time: a re-sent purchase with an earlier time must replace the row it moves.
    Table("orders", (
        ("tenant", "String"), ("buyer", "String"), ("order_id", "String"), ("customer_id", "Nullable(String)"),
        ("order_time", "DateTime"), ("order_ms", "Int64"), ("currency", "String"), ("amount_minor", "Int64"),
        ("minor_unit", "UInt8"), ("event_id", "String"), ("updated_ms", "Int64"), ("kafka_partition", "UInt16"),
    ), "ReplacingMergeTree(updated_ms) ORDER BY (tenant, buyer, order_id)"),
    # One row per cart (started by an add_to_cart of a buyer with no open cart), latest state wins:
    # open, then converted (ended_ms: the purchase) or abandoned (ended_ms: the deadline).
    Table("carts", (
        ("tenant", "String"), ("buyer", "String"), ("customer_id", "Nullable(String)"), ("started_ms", "Int64"),
        ("deadline_ms", "Int64"), ("outcome", "String"), ("ended_ms", "Nullable(Int64)"), ("updated_ms", "Int64"),
        ("kafka_partition", "UInt16"),
    ), "ReplacingMergeTree(updated_ms) ORDER BY (tenant, buyer, started_ms)"),
    # One row per customer, latest version wins: their first event, signup and first purchase as the
    # time-to-value core saw them, and the time to value it observed; rewritten when these change and on
    # the first event of each new day (last_event_ms: that day, the core's memory of the customer).
    Table("customer_firsts", (
        ("tenant", "String"), ("customer_id", "String"), ("first_event_ms", "Int64"), ("signup_ms", "Nullable(Int64)"),
        ("first_purchase_ms", "Nullable(Int64)"), ("time_to_value_ms", "Nullable(Int64)"), ("last_event_ms", "Int64"),
        ("updated_ms", "Int64"), ("kafka_partition", "UInt16"),
    ), "ReplacingMergeTree(updated_ms) ORDER BY (tenant, customer_id)"),
    # What the churn core learned from other cores' facts (complaints opened, SLA breaches), which no
    # other table keeps per customer and Kafka partition: its state is rebuilt from here.
    Table("churn_evidence", (
        ("tenant", "String"), ("customer_id", "String"), ("kind", "String"), ("evidence_id", "String"),
        ("evidence_ms", "Int64"), ("detail", "String"), ("kafka_partition", "UInt16"),
    ), "ReplacingMergeTree() ORDER BY (tenant, customer_id, kind, evidence_id)"),
    # One row per customer: the week of their first event and the weeks +0..+8 after it they were active in
    # (bit k of active_weeks). The cohort matrix is a GROUP BY away; the retention core is rebuilt from it.
    # version grows with every change of the row (pipeline/metrics/retention.py).
    Table("retention", (
        ("tenant", "String"), ("customer_id", "String"), ("cohort_week", "DateTime"), ("first_ms", "Int64"),
        ("active_weeks", "UInt16"), ("version", "UInt64"), ("kafka_partition", "UInt16"),
    ), "ReplacingMergeTree(version) ORDER BY (tenant, customer_id)"),
    # One row per CRM subscription event the subscriptions core took, mrr in hundredths (exact). mrr_before
    # and held are the core's bookkeeping for its restore (the MRR before the event, and whether it is the
    # customer's latest, held in memory); the reproducing queries recompute both from the event columns.
    Table("subscriptions", (
        ("tenant", "String"), ("customer_id", "String"), ("event_id", "String"), ("event_type", "String"),
        ("event_time", "DateTime"), ("event_ms", "Int64"), ("plan", "Nullable(String)"),
        ("mrr_minor", "Nullable(Int64)"), ("mrr_before_minor", "Int64"), ("held", "UInt8"), ("updated_ms", "Int64"),
        ("kafka_partition", "UInt16"),
    ), "ReplacingMergeTree(updated_ms) ORDER BY (tenant, customer_id, event_ms, event_id)"),
)

TABLES: dict[str, Table] = {table.name: table for table in _TABLES}
COLUMNS: dict[str, tuple[str, ...]] = {table.name: tuple(name for name, _ in table.columns) for table in _TABLES}
ROWS = {name: namedtuple(f"{name.title().replace('_', '')}Row", columns) for name, columns in COLUMNS.items()}
