"""HTTP collector: JSON events in, batch messages out (docs/contract.md, Wire format).

``POST /v1/events/{source}`` takes one JSON event or ``{"events": [...]}``. A request is all or
nothing: any bad event rejects the whole request with a 4xx naming each bad event, so a client can
fix and resend it. Time checks (future_timestamp, too_late) are the worker's, against its clocks.

Parsing, checking and splitting into messages (:func:`parse_request`, :func:`split_messages`) are
pure; :func:`register` puts them behind the worker's web server. Every answer on the collector's
paths, the web server's own included, is a JSON body counted by source and status code.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Any, NamedTuple, Optional

import faust
from aiohttp import web
from aiokafka.errors import KafkaError
from fastavro.validation import ValidationError, validate
from prometheus_client import Counter

from pipeline.partitioner import event_key, partition_for
from pipeline.registry import EVENT_SCHEMAS, SOURCES, SchemaRegistry
from pipeline.settings import Settings
from pipeline.validate import INVALID_VALUE, Rules, check_fields
from agents.web_security import Guard, middleware as guard_middleware
from pipeline.wire import Codec, batch_size

log = logging.getLogger("cxp.collector")

PATH_PREFIX = "/v1/events/"
# An event nests at most four levels deep ({"events": [{"survey": {...}}]}). Deeper JSON cannot be an
# event, and refusing it up front keeps the schema check and its error messages from recursing.
MAX_DEPTH = 16
MAX_ERROR_CHARS = 500  # fastavro's messages quote the value, which may be most of a 1 MiB body
TOO_LARGE = "too_large"  # the collector's own reason code: an event that alone exceeds CXP_MAX_MESSAGE_BYTES


class CollectorError(Exception):
    def __init__(self, status: int, error: str, details: Any = None):
        super().__init__(error)
        self.status, self.error, self.details = status, error, details

    def body(self) -> dict:
        """The answer as JSON-ready data. Errors quote the client's values, which may hold lone
        surrogates that no UTF-8 JSON encoder writes; those are escaped as ``\\udXXX`` text."""
        body = {"error": self.error}
        if self.details is not None:
            body["details"] = self.details
        return _utf8_safe(body)


def _utf8_safe(node: Any) -> Any:
    if isinstance(node, str):
        return node.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(node, dict):
        return {_utf8_safe(key): _utf8_safe(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_utf8_safe(value) for value in node]
    return node


class Encoded(NamedTuple):
    """A valid event, ready to send: its Kafka key and unframed Avro body."""

    event: dict
    key: bytes
    body: bytes


class Message(NamedTuple):
    """One ``<Source>Batch`` message: its partition, key (its first event's), value and event count."""

    partition: int
    key: bytes
    value: bytes
    events: int


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


def _too_deep(payload: Any, limit: int) -> bool:
    """Whether objects and arrays nest deeper than ``limit`` (iterative: the input is untrusted)."""
    stack = [(payload, 1)] if isinstance(payload, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node)
                     if isinstance(child, (dict, list)))
    return False


def _unwritable(node: Any, path: str = "") -> Optional[tuple[str, str]]:
    """(path, why) of the first value JSON and the schema check let through but Avro cannot write: a
    string with a lone surrogate (``"\\udc80"`` is a valid JSON escape, but not UTF-8), or an integer
    beyond a double's range in a double field. Depth is bounded by :data:`MAX_DEPTH`, so recursion is safe."""
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            return path, "is not valid Unicode text (a lone surrogate such as \\udc80)"
    elif isinstance(node, int):
        try:
            float(node)
        except OverflowError:
            return path, "is too large a number for a double"
    elif isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            found = _unwritable(key, f"{child} (the key)") or _unwritable(value, child)
            if found:
                return found
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found = _unwritable(value, f"{path}[{index}]")
            if found:
                return found
    return None


def _load_events(body: bytes) -> list:
    try:
        payload = json.loads(body)
    except RecursionError:
        raise CollectorError(400, f"body nests JSON too deeply; events nest at most {MAX_DEPTH} levels") from None
    except ValueError as exc:  # bad JSON, bad UTF-8, an integer of more digits than Python converts
        raise CollectorError(400, f"body is not valid JSON: {exc}") from None
    if _too_deep(payload, MAX_DEPTH):
        raise CollectorError(400, f"body nests JSON too deeply; events nest at most {MAX_DEPTH} levels")
    if isinstance(payload, dict) and isinstance(payload.get("events"), list):
        events = payload["events"]
    elif isinstance(payload, dict):
        events = [payload]
    else:
        raise CollectorError(400, 'body must be one event object or {"events": [...]}')
    if not events:
        raise CollectorError(400, "no events in the request")
    return events


def parse_request(source: str, body: bytes, registry: SchemaRegistry, rules: Rules, codec: Codec,
                  max_body: int, max_message_bytes: int) -> list[Encoded]:
    """The request's events, checked against the source's schema and the non-time rules of docs/contract.md, Bad input,
    each encoded and small enough to travel in a message of at most ``max_message_bytes``."""
    if source not in SOURCES:
        raise CollectorError(404, f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    if len(body) > max_body:
        raise CollectorError(413, f"body is {len(body)} bytes, at most {max_body} allowed; split the batch")
    events = _load_events(body)

    registered = registry.by_name(EVENT_SCHEMAS[source])
    fields = registered.schema["fields"]
    problems, accepted = [], []
    for index, sent in enumerate(events):
        if not isinstance(sent, dict):
            problems.append({"index": index, "reason": INVALID_VALUE, "error": "an event must be a JSON object"})
            continue
        # The event as Avro writes it and the worker reads it back: defaults filled in, other keys dropped.
        event = {f["name"]: sent.get(f["name"], f.get("default")) for f in fields}
        event["event_time"] = _event_time_ms(event["event_time"])
        try:
            validate(event, registered.parsed, raise_errors=True)
        except ValidationError as exc:
            error = "; ".join(map(str, exc.args))
            problems.append({"index": index, "reason": "schema", "error": error[:MAX_ERROR_CHARS]})
            continue
        rejection = check_fields(source, event, rules)
        if rejection is not None:
            problems.append({"index": index, "reason": rejection.reason, "error": rejection.error[:MAX_ERROR_CHARS]})
            continue
        try:
            encoded = Encoded(event, event_key(source, event), codec.event_body(source, event))
        except (UnicodeEncodeError, OverflowError):
            unwritable = _unwritable(event)
            if unwritable is None:
                raise
            field, why = unwritable
            problems.append({"index": index, "reason": INVALID_VALUE, "field": field, "error": f"{field} {why}"})
            continue
        size = len(encoded.key) + batch_size(1, len(encoded.body))
        if size > max_message_bytes:
            problems.append({"index": index, "reason": TOO_LARGE,
                             "error": f"the event alone makes a {size}-byte Kafka message, over the "
                                      f"{max_message_bytes}-byte limit (CXP_MAX_MESSAGE_BYTES)"})
            continue
        accepted.append(encoded)
    if problems:
        raise CollectorError(422, f"{len(problems)} of {len(events)} events are invalid; nothing was accepted", problems)
    return accepted


def split_messages(source: str, events: list[Encoded], num_partitions: int, codec: Codec,
                   max_message_bytes: int) -> list[Message]:
    """Batch messages holding ``events``, each in the partition Kafka's default partitioner gives its key,
    in request order within a partition, each message (key + value) at most ``max_message_bytes``.
    Every event must fit alone (:func:`parse_request` checks that)."""
    by_partition: dict[int, list[Encoded]] = {}
    for encoded in events:
        by_partition.setdefault(partition_for(encoded.key, num_partitions), []).append(encoded)
    messages = []
    for partition, group in by_partition.items():
        batch: list[bytes] = []
        key, body_bytes = b"", 0
        for encoded in group:
            if batch and len(key) + batch_size(len(batch) + 1, body_bytes + len(encoded.body)) > max_message_bytes:
                messages.append(Message(partition, key, codec.batch_of_bodies(source, batch), len(batch)))
                batch, body_bytes = [], 0
            if not batch:
                key = encoded.key
            batch.append(encoded.body)
            body_bytes += len(encoded.body)
        messages.append(Message(partition, key, codec.batch_of_bodies(source, batch), len(batch)))
    return messages


def source_label(path: str) -> str:
    """The source a collector path names, or "unknown": label values must not be client-chosen."""
    source = path[len(PATH_PREFIX):]
    return source if source in SOURCES else "unknown"


def counting_middleware(requests: Counter) -> Any:
    """aiohttp middleware: every answer on the collector's paths as JSON, counted by source and code.

    It sees what the view never does: the web server's own answers (413 beyond its 1 MiB
    client_max_size, 405 for a wrong method) and unexpected exceptions, which become a logged 500.
    A request whose client disconnects before the answer is not counted: nothing was answered.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith(PATH_PREFIX):
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = web.json_response({"error": exc.text or exc.reason}, status=exc.status)
        except Exception:  # noqa: BLE001 - a bug, not the client's fault: log it, answer, count it
            log.exception("collector request failed", extra={"path": request.path})
            response = web.json_response({"error": "internal error in the collector; see the worker log"}, status=500)
        requests.labels(source_label(request.path), str(response.status)).inc()
        return response

    return middleware


def register(app: faust.App, settings: Settings, registry: SchemaRegistry, rules: Rules, codec: Codec,
             partition_counts: dict[str, int], requests: Counter, guard: Guard) -> None:
    """Serve the collector on ``app``'s web server; call before the app starts.

    partition_counts: topic name -> partitions, for every ``events.<source>`` topic;
    requests: a Counter labelled (source, code), on the caller's registry;
    guard: the tokens and rate limits of the collector's paths and /metrics (401 and 429 are counted too).
    """
    web_settings = settings.web
    app.web.web_app.middlewares.append(counting_middleware(requests))
    app.web.web_app.middlewares.append(guard_middleware(guard, PATH_PREFIX))

    async def send(messages: list[Message], topic: str) -> None:
        futures = [await app.producer.send(topic, m.key, m.value, m.partition, None, None) for m in messages]
        await asyncio.gather(*futures)

    @app.page(PATH_PREFIX + "{source}")
    class Collector(faust.web.View):
        async def post(self, request: Any, source: str) -> Any:
            try:
                if (request.content_length or 0) > web_settings.collector_max_body:
                    raise CollectorError(413, f"body is {request.content_length} bytes, at most "
                                              f"{web_settings.collector_max_body} allowed; split the batch")
                events = parse_request(source, await request.read(), registry, rules, codec,
                                       web_settings.collector_max_body, web_settings.max_message_bytes)
            except CollectorError as exc:
                return self.json(exc.body(), status=exc.status)
            refusal = guard.check_events(request, len(events))
            if refusal is not None:
                return refusal
            topic = settings.kafka.topic(f"events.{source}")
            messages = split_messages(source, events, partition_counts[topic], codec, web_settings.max_message_bytes)
            try:
                await asyncio.wait_for(send(messages, topic), web_settings.collector_send_timeout.seconds)
            except (KafkaError, asyncio.TimeoutError) as exc:  # the broker, not the client, failed
                # Some messages may have been written: a client's retry is caught by dedup on event_id.
                return self.json({"error": f"could not write to Kafka, retry later: {type(exc).__name__}: {exc}"},
                                 status=503)
            return self.json({"accepted": len(events), "messages": len(messages)}, status=202)
