"""HTTP collector: JSON events in, batch messages out (SPEC §3). The parsing and checks here are pure.

``POST /v1/events/{source}`` takes one JSON event or ``{"events": [...]}``. A request is all or
nothing: any bad event rejects the whole request with a 4xx naming each bad event, so a client can
fix and resend it. Time checks (future_timestamp, too_late) are the worker's, against its clocks.
"""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any

from fastavro.validation import ValidationError, validate

from pipeline.partitioner import event_key, partition_for
from pipeline.registry import EVENT_SCHEMAS, SOURCES, SchemaRegistry
from pipeline.validate import Rules, check_fields


class CollectorError(Exception):
    def __init__(self, status: int, error: str, details: Any = None):
        super().__init__(error)
        self.status, self.error, self.details = status, error, details

    def body(self) -> dict:
        body = {"error": self.error}
        if self.details is not None:
            body["details"] = self.details
        return body


def _event_time_ms(value: Any) -> Any:
    """Accept epoch millis or an ISO-8601 string with a zone; anything else is left for the schema check."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if parsed.tzinfo is not None:
            return int(parsed.timestamp() * 1000)
    return value


def parse_request(source: str, body: bytes, registry: SchemaRegistry, rules: Rules, max_body: int) -> list[dict]:
    """The request's events, checked against the source's schema and the non-time rules of SPEC §4."""
    if source not in SOURCES:
        raise CollectorError(404, f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    if len(body) > max_body:
        raise CollectorError(413, f"body is {len(body)} bytes, at most {max_body} allowed; split the batch")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CollectorError(400, f"body is not valid JSON: {exc}") from None
    if isinstance(payload, dict) and isinstance(payload.get("events"), list):
        events = payload["events"]
    elif isinstance(payload, dict):
        events = [payload]
    else:
        raise CollectorError(400, 'body must be one event object or {"events": [...]}')
    if not events:
        raise CollectorError(400, "no events in the request")

    registered = registry.by_name(EVENT_SCHEMAS[source])
    defaults = {f["name"]: f["default"] for f in registered.schema["fields"] if "default" in f}
    problems = []
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            problems.append({"index": index, "reason": "invalid_value", "error": "an event must be a JSON object"})
            continue
        for name, default in defaults.items():
            event.setdefault(name, default)
        event["event_time"] = _event_time_ms(event.get("event_time"))
        try:
            validate(event, registered.parsed, raise_errors=True)
        except ValidationError as exc:
            problems.append({"index": index, "reason": "schema", "error": "; ".join(map(str, exc.args))})
            continue
        rejection = check_fields(source, event, rules)
        if rejection is not None:
            problems.append({"index": index, "reason": rejection.reason, "error": rejection.error})
    if problems:
        raise CollectorError(422, f"{len(problems)} of {len(events)} events are invalid; nothing was accepted", problems)
    return events


def group_by_partition(source: str, events: list[dict], num_partitions: int) -> dict[int, list[dict]]:
    """Events bound for each partition under Kafka's default partitioner of their key."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for event in events:
        groups[partition_for(event_key(source, event), num_partitions)].append(event)
    return groups
