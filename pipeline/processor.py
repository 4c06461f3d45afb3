"""Decode → validate → dedup → aggregate one batch of Kafka records. CPU only: the agent does the I/O.

Every consumed event ends in exactly one outcome: processed, duplicate or rejected (dead-lettered),
and the batch result counts each (a batch message of n events counts n; an undecodable message 1).
State is kept per partition number: all input topics are co-partitioned, so partition p of every
source belongs to one worker, and its partial state moves with it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, NamedTuple, Optional

from pipeline.dedup import Deduper
from pipeline.surveys import SurveyWindows, Totals, classify
from pipeline.validate import UNDECODABLE, Rejection, Rules, check_fields, check_time
from pipeline.wire import Codec, UndecodableError

if TYPE_CHECKING:
    from sinks.clickhouse.state import RestoredState


class Record(NamedTuple):
    """One consumed Kafka message."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]


@dataclass
class BatchResult:
    rows: dict[str, list[tuple]] = field(default_factory=lambda: {"events": [], "survey_responses": [], "dead_letters": []})
    dead_letters: list[tuple[Optional[bytes], bytes]] = field(default_factory=list)  # (key, encoded DeadLetter)
    consumed: Counter = field(default_factory=Counter)  # source -> events
    processed: Counter = field(default_factory=Counter)  # source -> events
    duplicates: Counter = field(default_factory=Counter)  # source -> events
    rejected: Counter = field(default_factory=Counter)  # (source, reason) -> events


@dataclass
class PartitionState:
    dedup: Deduper
    surveys: SurveyWindows


class Processor:
    def __init__(self, codec: Codec, rules: Rules, topic_sources: dict[str, str], windows_ms: dict[str, int], dedup_horizon_ms: int):
        self.codec = codec
        self.rules = rules
        self.topic_sources = topic_sources
        self.windows_ms = windows_ms
        self.dedup_horizon_ms = dedup_horizon_ms
        self.partitions: dict[int, PartitionState] = {}
        self.clock_ms = 0  # event-time clock: the largest event_time processed
        self.source_clock_ms: dict[str, int] = {}

    # -- ownership ------------------------------------------------------------------------
    def state(self, partition: int) -> PartitionState:
        state = self.partitions.get(partition)
        if state is None:
            state = self.partitions[partition] = PartitionState(Deduper(self.dedup_horizon_ms), SurveyWindows(self.windows_ms))
        return state

    def keep_only(self, partitions: Iterable[int]) -> list[int]:
        """Drop the state of partitions this worker no longer owns; return the newly owned ones."""
        owned = set(partitions)
        for gone in set(self.partitions) - owned:
            del self.partitions[gone]
        return sorted(owned - set(self.partitions))

    def restore(self, restored: "RestoredState") -> None:
        """Load state read back from ClickHouse for newly owned partitions."""
        self.clock_ms = max(self.clock_ms, restored.clock_ms)
        for source, clock in restored.source_clocks.items():
            self.source_clock_ms[source] = max(self.source_clock_ms.get(source, 0), clock)
        for partition, event_id, event_ms in restored.event_ids:
            self.state(partition).dedup.seen(event_id, event_ms)
        for partition, tenant, kind, minute, score, n in restored.survey_counts:
            counts = [n, 0, 0, 0, score * n]
            counts[1 + classify(kind, score)] = n
            self.state(partition).surveys.add_bucket(tenant, kind, minute, counts)

    # -- processing -----------------------------------------------------------------------
    def process(self, records: Iterable[Record], now_ms: int) -> BatchResult:
        result = BatchResult()
        for record in records:
            self._process_record(record, now_ms, result)
        for state in self.partitions.values():
            state.dedup.expire(self.clock_ms)
            state.surveys.prune(self.clock_ms)
        return result

    def _process_record(self, record: Record, now_ms: int, result: BatchResult) -> None:
        source = self.topic_sources[record.topic]
        try:
            if record.key is not None:
                record.key.decode("utf-8")
            decoded = self.codec.decode(record.value)
            if decoded.schema.source != source:
                raise UndecodableError(f"schema {decoded.schema.name} (id {decoded.schema.id}) does not belong on topic {record.topic}")
        except UnicodeDecodeError as exc:
            return self._reject(record, source, None, None, Rejection(UNDECODABLE, f"key is not UTF-8: {exc}"), now_ms, result)
        except UndecodableError as exc:
            return self._reject(record, source, None, None, Rejection(UNDECODABLE, str(exc)), now_ms, result)

        self._process_events(record, source, decoded.events, decoded.is_batch, now_ms, result)

    def _process_events(self, record: Record, source: str, events: list[dict], is_batch: bool, now_ms: int,
                        result: BatchResult) -> None:
        """The per-event hot path: written flat, with the lookups hoisted, because it runs for every event."""
        state = self.state(record.partition)
        seen, add_survey = state.dedup.seen, state.surveys.add
        event_rows, survey_rows = result.rows["events"].append, result.rows["survey_responses"].append
        rules, partition, offset = self.rules, record.partition, record.offset
        future_limit = now_ms + rules.max_future_skew_ms
        clock, source_clock = self.clock_ms, self.source_clock_ms.get(source, 0)
        processed = duplicates = 0
        for index, event in enumerate(events):
            rejection = check_fields(source, event, rules)
            event_ms = event.get("event_time")
            if rejection is None and (event_ms > future_limit or (clock and event_ms < clock - rules.max_lateness_ms)):
                rejection = check_time(event_ms, rules, now_ms, clock)
            if rejection is not None:
                self._reject(record, source, event, index if is_batch else None, rejection, now_ms, result, counted=True)
                continue
            event_id, tenant = event["event_id"], event["tenant"]
            if seen(event_id, event_ms):
                duplicates += 1
                continue
            processed += 1
            if event_ms > clock:
                clock = event_ms
            if event_ms > source_clock:
                source_clock = event_ms
            attributes = event.get("attributes") or {}
            event_rows((event_id, source, event["event_type"], event_ms // 1000, event_ms, tenant,
                        event.get("customer_id"), event.get("anonymous_id"), event.get("session_id"),
                        list(attributes), list(attributes.values()), partition, offset))
            survey = event.get("survey")
            if survey is not None:
                add_survey(tenant, survey["kind"], survey["score"], event_ms)
                survey_rows((event_id, event_ms // 1000, event_ms, tenant, event.get("customer_id"), source,
                             survey["kind"], survey["score"], survey.get("touchpoint"), survey.get("comment"), partition))
        self.clock_ms = clock
        if source_clock:
            self.source_clock_ms[source] = source_clock
        result.consumed[source] += len(events)
        result.processed[source] += processed
        result.duplicates[source] += duplicates

    def _reject(self, record: Record, source: str, event: Optional[dict], batch_index: Optional[int],
                rejection: Rejection, now_ms: int, result: BatchResult, counted: bool = False) -> None:
        if not counted:
            result.consumed[source] += 1
        result.rejected[(source, rejection.reason)] += 1
        original = record.value or b""
        if event is not None and batch_index is not None:
            # Re-encode the one bad event alone, so it can be fixed and replayed without its batch.
            try:
                original = self.codec.encode_event(source, event)
            except Exception:  # noqa: BLE001 - a writer schema we can't re-encode keeps the whole message
                pass
        result.dead_letters.append((record.key, self.codec.encode("cx.DeadLetter", {
            "reason": rejection.reason, "error": rejection.error, "source_topic": record.topic,
            "source_partition": record.partition, "source_offset": record.offset, "batch_index": batch_index,
            "original_key": record.key, "original_value": original, "received_time": now_ms,
        })))
        key_text = record.key.decode("utf-8", "replace") if record.key is not None else None
        result.rows["dead_letters"].append((
            now_ms // 1000, now_ms, record.topic, record.partition, record.offset,
            -1 if batch_index is None else batch_index, rejection.reason, rejection.error, key_text, original,
        ))

    # -- reading the state ----------------------------------------------------------------
    def survey_totals(self) -> dict[tuple[str, str, str], Totals]:
        """Sum of the partial survey totals of every owned partition, at the current clock."""
        out: dict[tuple[str, str, str], Totals] = {}
        for state in self.partitions.values():
            for key, totals in state.surveys.totals(self.clock_ms).items():
                out[key] = out[key] + totals if key in out else totals
        return out
