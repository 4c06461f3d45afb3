"""The bad-input rules (docs/contract.md) for one decoded event. Pure: no I/O, no clock of its own."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from pipeline.money import MoneyError, to_minor
from pipeline.registry import EVENT_SCHEMAS, PRIORITIES
from pipeline.scores import SCORE_RANGES

# Reason codes (docs/contract.md, Bad input): each rejected event carries exactly one.
UNDECODABLE = "undecodable"
MISSING_FIELD = "missing_field"
INVALID_VALUE = "invalid_value"
FUTURE_TIMESTAMP = "future_timestamp"
TOO_LATE = "too_late"
UNKNOWN_TENANT = "unknown_tenant"
REASONS = (UNDECODABLE, MISSING_FIELD, INVALID_VALUE, FUTURE_TIMESTAMP, TOO_LATE, UNKNOWN_TENANT)

MAX_EVENT_ID = 128
MAX_TENANT_SHOWN = 100  # of an unknown tenant, in the dead letter's error text
# Fields that must be a non-empty string, per source, beyond the common ones.
REQUIRED_IDS = {"chatbot": ("conversation_id",), "complaints": ("complaint_id",)}


@dataclass(frozen=True)
class Rejection:
    reason: str
    error: str


@dataclass(frozen=True)
class Rules:
    """What a valid event is: the enum symbols come from the bundled schemas, the limits and the tenant
    allow-list (empty: any tenant) from settings."""

    event_types: dict[str, frozenset[str]]
    max_future_skew_ms: int
    max_lateness_ms: int
    priorities: frozenset[str] = frozenset(PRIORITIES)
    tenants: frozenset[str] = frozenset()

    @classmethod
    def from_schemas(cls, event_schemas: dict[str, dict], max_future_skew_ms: int, max_lateness_ms: int,
                     tenants: Iterable[str] = ()) -> "Rules":
        """event_schemas: source -> raw Avro schema of that source's event."""
        types = {}
        for source, schema in event_schemas.items():
            field = next(f for f in schema["fields"] if f["name"] == "event_type")
            types[source] = frozenset(field["type"]["symbols"])
        return cls(types, max_future_skew_ms, max_lateness_ms, tenants=frozenset(tenants))

    @classmethod
    def from_registry(cls, registry: Any, stream: Any) -> "Rules":
        """The rules of the registry's event schemas and the stream settings (lateness, future skew, tenants)."""
        return cls.from_schemas({source: registry.by_name(name).schema for source, name in EVENT_SCHEMAS.items()},
                                stream.max_future_skew.ms, stream.max_lateness.ms, stream.tenants)

    def time_bounds(self, now_ms: int, clock_ms: int) -> tuple[Optional[int], int]:
        """(earliest, latest) valid event_time: ``max_lateness`` behind the event-time clock (no bound before
        the first event) and ``max_future_skew`` ahead of the wall clock."""
        return (clock_ms - self.max_lateness_ms if clock_ms else None), now_ms + self.max_future_skew_ms


def check_fields(source: str, event: dict, rules: Rules) -> Optional[Rejection]:
    """Required fields, enum symbols, survey scores and the tenant allow-list: everything but the clocks.
    The tenant is checked last, so an ``unknown_tenant`` dead letter is otherwise valid and can be re-driven
    once its tenant is allowed."""
    # `not value` is the blank test: every field checked here is a string (or None).
    event_id = event.get("event_id")
    if not event_id:
        return Rejection(MISSING_FIELD, "event_id is missing or empty")
    if len(event_id) > MAX_EVENT_ID:
        return Rejection(INVALID_VALUE, f"event_id is {len(event_id)} characters, at most {MAX_EVENT_ID} allowed")
    event_type = event.get("event_type")
    if not event_type:
        return Rejection(MISSING_FIELD, "event_type is missing")
    if event.get("event_time") is None:
        return Rejection(MISSING_FIELD, "event_time is missing")
    if not event.get("tenant"):
        return Rejection(MISSING_FIELD, "tenant is empty")
    if not event.get("customer_id") and (source != "web" or not event.get("anonymous_id")):
        what = "customer_id (or anonymous_id for web events)" if source == "web" else "customer_id"
        return Rejection(MISSING_FIELD, f"{what} is missing")
    for name in REQUIRED_IDS.get(source, ()):
        if not event.get(name):
            return Rejection(MISSING_FIELD, f"{name} is missing or empty")

    if event_type not in rules.event_types[source]:
        return Rejection(INVALID_VALUE, f"unknown {source} event_type {event_type!r}")
    if source == "complaints" and event.get("priority") not in rules.priorities:
        return Rejection(INVALID_VALUE, f"unknown complaint priority {event.get('priority')!r}")
    if source == "web" and event_type == "purchase":
        rejection = check_order(event)
        if rejection is not None:
            return rejection
    mrr = event.get("mrr")
    if mrr is not None and not (math.isfinite(mrr) and mrr >= 0):
        return Rejection(INVALID_VALUE, f"mrr {mrr!r} is not a finite amount of 0 or more")
    survey = event.get("survey")
    if survey is not None:
        bounds = SCORE_RANGES.get(survey.get("kind"))
        if bounds is None:
            return Rejection(INVALID_VALUE, f"unknown survey kind {survey.get('kind')!r}")
        score = survey.get("score")
        if not isinstance(score, int) or not bounds[0] <= score <= bounds[1]:
            return Rejection(INVALID_VALUE, f"{survey['kind']} score {score!r} outside {bounds[0]}..{bounds[1]}")
    elif event_type == "survey_response":
        return Rejection(INVALID_VALUE, "survey_response without a survey")
    if rules.tenants and event["tenant"] not in rules.tenants:
        return Rejection(UNKNOWN_TENANT, f"tenant {event['tenant'][:MAX_TENANT_SHOWN]!r} is not in CXP_TENANTS "
                                         f"({', '.join(sorted(rules.tenants))})")
    return None


def check_order(event: dict) -> Optional[Rejection]:
    """A purchase is an order: an order_id, and a revenue that converts to minor units of its currency
    (:func:`pipeline.money.to_minor`: present, finite, not negative, an ISO 4217 currency code)."""
    if not event.get("order_id"):
        return Rejection(INVALID_VALUE, "order_id is missing or empty on a purchase")
    try:
        to_minor(event.get("revenue"), event.get("currency"))
    except MoneyError as exc:
        return Rejection(INVALID_VALUE, f"{exc} on a purchase")
    return None


def check_time(event_time: int, rules: Rules, now_ms: int, clock_ms: int) -> Optional[Rejection]:
    """future_timestamp against the wall clock, too_late against the event-time clock."""
    earliest, latest = rules.time_bounds(now_ms, clock_ms)
    if event_time > latest:
        ahead = (event_time - now_ms) / 1000
        return Rejection(FUTURE_TIMESTAMP, f"event_time is {ahead:.0f} s ahead of the worker's clock")
    if earliest is not None and event_time < earliest:
        behind = (clock_ms - event_time) / 1000
        return Rejection(TOO_LATE, f"event_time is {behind:.0f} s behind the event-time clock")
    return None
