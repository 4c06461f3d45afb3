"""SQL that reproduces what the metric cores compute, from the raw tables: funnel levels by ClickHouse's own
``windowFunnel``. Funnel definitions come from the settings file, never from events, and their names are
checked identifiers; values are quoted here."""
from __future__ import annotations

from typing import Optional

from pipeline.metrics.funnel_defs import Funnel, Step


def sql_string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def step_condition(step: Step) -> str:
    """The step as a condition on the ``events`` table."""
    parts = [f"event_type = {sql_string(step.event_type)}"]
    if step.source:
        parts.append(f"source = {sql_string(step.source)}")
    for key, value in step.where:
        parts.append(f"has(attr_keys, {sql_string(key)}) AND attr_values[indexOf(attr_keys, {sql_string(key)})] = "
                     f"{sql_string(value)}")
    return " AND ".join(parts)


def window_funnel_sql(funnel: Funnel, db: str, since_ms: int, partition: Optional[int] = None) -> str:
    """Each customer's level from ClickHouse's own windowFunnel over the events from ``since_ms`` on (of one
    Kafka partition, if given). 18.16 takes only a DateTime or UInt32 time, so times are milliseconds after
    since_ms (below 2**31: about 24.8 days); the subquery's ORDER BY puts same-millisecond events in
    event_id order, the core's tie rule."""
    conditions = ", ".join(step_condition(step) for step in funnel.steps)
    only = "" if partition is None else f" AND kafka_partition = {int(partition)}"
    return (f"SELECT tenant, customer_id, windowFunnel({funnel.window_ms})(toUInt32(event_ms - {int(since_ms)}), "
            f"{conditions}) AS level FROM (SELECT * FROM {db}.events FINAL WHERE customer_id IS NOT NULL "
            f"AND event_ms >= {int(since_ms)}{only} ORDER BY event_ms, event_id) GROUP BY tenant, customer_id")
