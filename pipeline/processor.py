"""Decode → validate → dedup one batch of Kafka records, then run the metric cores. CPU only.

Every consumed event ends in exactly one outcome: processed, duplicate or rejected (dead-lettered),
and the batch's :class:`Output` counts each (a batch message of n events counts n; an undecodable
message 1). State is kept per partition number: all input topics are co-partitioned, so partition p
of every source belongs to one worker, and its state (dedup ids, one state per core) moves with it.
The agent only hands over records of partitions this worker owns (:meth:`Processor.owns`).

The cores see the batch once per partition: one ``add`` with every accepted event of that partition,
however many Kafka messages carried them, then one ``tick`` per partition; facts are routed between
them as :mod:`pipeline.metrics.base` describes.

Stream time is per partition, as in Kafka Streams: a partition's clock is the largest event_time it has
processed (any source; the sources are co-partitioned). The dedup horizon, every core's windows and timers
follow that clock. Lateness (``too_late``) is judged by the clock of the event's own topic-partition (its
source within the partition): topics and partitions are fetched at their own pace, and in a backfill one
can run days ahead of another, so a partition or a topic consumed behind the others never has its valid
events rejected because others are ahead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple, Optional, Sequence

from pipeline.dedup import Deduper, id_hash
from pipeline.messages import DeadLetter
from pipeline.metrics.base import Batch, MetricCore, Output, Restored
from pipeline.metrics.rounds import Rounds
from pipeline.tables import ROWS
from pipeline.validate import UNDECODABLE, Rejection, Rules, check_fields, check_time
from pipeline.wire import Codec, UndecodableError

if TYPE_CHECKING:
    from pipeline.pii import Pseudonymiser

EventRow, DeadLetterRow = ROWS["events"], ROWS["dead_letters"]
MAX_ERROR_CHARS = 2000


class Record(NamedTuple):
    """One consumed Kafka message. The worker hands over runs of aiokafka's records instead (:meth:`Processor.
    process_runs`), of which the processor reads ``offset``, ``key`` and ``value``."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]


@dataclass
class PartitionState:
    dedup: Deduper
    cores: list[Any]  # one state per core, in core order
    clock_ms: int = 0  # the partition's stream time: the largest event_time it has processed
    source_clocks: dict[str, int] = field(default_factory=dict)  # per source (topic-partition): its largest


class Processor:
    def __init__(self, codec: Codec, rules: Rules, topic_sources: dict[str, str], dedup_horizon_ms: int,
                 cores: list[MetricCore], deadletter_max_bytes: int = 65_536, pii: Optional["Pseudonymiser"] = None):
        self.codec = codec
        self.rules = rules
        self.topic_sources = topic_sources
        self.dedup_horizon_ms = dedup_horizon_ms
        self.cores = cores
        self.rounds = Rounds(cores)
        self.deadletter_max_bytes = deadletter_max_bytes
        self.pii = pii  # PII mode: ids pseudonymised right after validation, before dedup, rows and cores
        self.partitions: dict[int, PartitionState] = {}
        self.owned: set[int] = set()
        self.source_clock_ms: dict[str, int] = {}  # the newest event_time per source, for the lag gauge

    # -- ownership ------------------------------------------------------------------------------
    def owns(self, partition: int) -> bool:
        return partition in self.owned

    def state(self, partition: int) -> PartitionState:
        state = self.partitions.get(partition)
        if state is None:
            state = self.partitions[partition] = PartitionState(
                Deduper(self.dedup_horizon_ms), [core.new_state(partition) for core in self.cores])
        return state

    def assign(self, partitions: Iterable[int]) -> list[int]:
        """Own exactly these partitions; drop other state. Returns the ones that need a rebuild."""
        self.owned = set(partitions)
        for gone in set(self.partitions) - self.owned:
            del self.partitions[gone]
        return sorted(self.owned - set(self.partitions))

    def revoke(self, forget: bool) -> None:
        """Own nothing until the next assignment. ``forget``: also drop all state (it may be stale,
        e.g. when the revoke-time flush failed), so the next assignment rebuilds it from ClickHouse."""
        self.owned = set()
        if forget:
            self.partitions.clear()

    def restore(self, restored: Restored) -> None:
        """Load state read back from ClickHouse (:func:`sinks.clickhouse.state.read_partitions`)."""
        for source, clock in restored.source_clocks.items():
            self.source_clock_ms[source] = max(self.source_clock_ms.get(source, 0), clock)
        for partition in restored.partitions:
            state = self.state(partition)
            for source, clock in restored.clocks.get(partition, {}).items():
                state.source_clocks[source] = max(state.source_clocks.get(source, 0), clock)
            state.clock_ms = max(state.source_clocks.values(), default=state.clock_ms)
            hashes, times = restored.ids.get(partition, ([], []))
            state.dedup.restore(hashes, times)
            for core, core_state, by_name in zip(self.cores, state.cores, restored.core_rows):
                for name, by_partition in by_name.items():
                    core.restore(core_state, name, by_partition.get(partition, []), state.clock_ms)

    @property
    def clock_ms(self) -> int:
        """The newest event_time of any partition held (0 before the first)."""
        return max((state.clock_ms for state in self.partitions.values()), default=0)

    def clocks(self) -> dict[int, int]:
        """partition -> stream time, for the partitions held."""
        return {partition: state.clock_ms for partition, state in self.partitions.items()}

    def owned_partitions(self) -> list[int]:
        """The owned partitions whose state is built, in order."""
        return sorted(partition for partition in self.partitions if partition in self.owned)

    def owned_states(self) -> list[PartitionState]:
        return [self.partitions[partition] for partition in self.owned_partitions()]

    # -- processing -----------------------------------------------------------------------------
    def process(self, records: Iterable[Record], now_ms: int) -> Output:
        return self.process_runs(((run[0].topic, run[0].partition, run) for run in _runs(records)), now_ms)

    def process_runs(self, runs: Iterable[tuple[str, int, Sequence[Any]]], now_ms: int) -> Output:
        """:meth:`process` for records already in runs, as a fetch hands them over: (topic, partition, the
        records of that topic-partition in offset order). Of a record only ``offset``, ``key`` and ``value``
        are read."""
        out = Output()
        batches: dict[int, Batch] = {}
        for topic, partition, run in runs:
            self._process_run(topic, partition, run, now_ms, out, batches)
        for partition, batch in batches.items():
            if batch.events:
                self.rounds.add(self.partitions[partition].cores, batch, out)
        for state in self.partitions.values():
            state.dedup.expire(state.clock_ms)
            self.rounds.tick(state.cores, state.clock_ms, out)
        return out

    def _process_run(self, topic: str, partition: int, run: Sequence[Any], now_ms: int, out: Output,
                     batches: dict[int, Batch]) -> None:
        """Records of one topic-partition, in offset order: decode all of them, check the fields and hash
        the ids of all their events, ask the dedup table about every id at once, then take the events in
        turn, each record's as if the record came alone (:meth:`_accept_run`).

        Each step is one loop over the run's records or events, without calls per record: at one event per
        Kafka message, a record's calls cost as much as its event. Rejections come in the order of the
        steps: undecodable records, then events with bad fields, then events out of time."""
        source, state, where = self.topic_sources[topic], self.state(partition), (topic, partition)
        decoded = self._decode_run(run, where, source, now_ms, out)
        if not decoded:
            return
        rules, pii = self.rules, self.pii
        checked, hashes, consumed = [], [], 0  # per well-formed event: (its record's position in decoded, ...), id hash
        for position, (record, events, is_batch) in enumerate(decoded):
            consumed += len(events)
            for index, event in enumerate(events):
                rejection = check_fields(source, event, rules)
                if rejection is not None:
                    self._reject(where, record, source, event, index if is_batch else None, rejection, now_ms, out)
                    continue
                kept = event if pii is None else pii.apply(source, event)  # PII mode: pseudonymised, so its id too
                checked.append((position, index if is_batch else None, event, kept))
                hashes.append(id_hash(kept["event_id"]))
        out.count("cxp_events_consumed", (source,), consumed)
        if checked:
            self._accept_run(where, source, state, decoded, checked, hashes, now_ms, out, batches)

    def _decode_run(self, run: Sequence[Any], where: tuple[str, int], source: str, now_ms: int,
                    out: Output) -> list[tuple[Any, list[dict], bool]]:
        """(record, its events, whether it is a batch message) of each decodable record; the others are rejected."""
        decode, decoded = self.codec.decode, []
        for record in run:
            try:
                if record.key is not None:
                    record.key.decode("utf-8")
                schema, events, is_batch = decode(record.value)
                if schema.source != source:
                    raise UndecodableError(f"schema {schema.name} (id {schema.id}) does not belong on topic {where[0]}")
            except UnicodeDecodeError as exc:
                out.count("cxp_events_consumed", (source,))
                self._reject(where, record, source, None, None, Rejection(UNDECODABLE, f"key is not UTF-8: {exc}"),
                             now_ms, out)
                continue
            except UndecodableError as exc:
                out.count("cxp_events_consumed", (source,))
                self._reject(where, record, source, None, None, Rejection(UNDECODABLE, str(exc)), now_ms, out)
                continue
            decoded.append((record, events, is_batch))
        return decoded

    def _accept_run(self, where: tuple[str, int], source: str, state: PartitionState,
                    decoded: list[tuple[Any, list[dict], bool]],
                    checked: list[tuple[int, Optional[int], dict, dict]], hashes: list[int], now_ms: int,
                    out: Output, batches: dict[int, Batch]) -> None:
        """Judge the well-formed events by the clocks, decide dedup, write the new events' rows and add them
        to the partition's batch, record by record: a record's events are judged by the clocks as the records
        before it left them, and an id seen before, remembered earlier in the run or repeated within the
        record is a duplicate. Dedup remembers a new id at ``max(event_time, partition clock)``. Which ids
        are new follows from the table before the run (``seen``) and the ids this run remembers before
        them, so the run's :meth:`Deduper.check` calls are made as one, at its end."""
        rules, dedup = self.rules, state.dedup
        clock, own_clock, source_clock = state.clock_ms, state.source_clocks.get(source, 0), self.source_clock_ms.get(source, 0)
        partition, rows, new_row, batch = where[1], out.rows["events"], tuple.__new__, None
        remember: dict[int, int] = {}  # id -> time, of ids this run remembers
        current, in_record = -1, None  # the position of the record being taken, and the ids it has had so far
        valid = processed = 0
        for (position, index, event, kept), key, was_seen in zip(checked, hashes, dedup.seen(hashes)):
            if position != current:  # the next record: the clocks as the records before it left them
                current, record_clock, record_own_clock = position, clock, own_clock
                late_limit, future_limit = rules.time_bounds(now_ms, own_clock)
                in_record = set() if index is not None else None  # a single event cannot repeat within its record
            event_ms = event["event_time"]
            if event_ms > future_limit or (late_limit is not None and event_ms < late_limit):
                rejection = check_time(event_ms, rules, now_ms, record_own_clock)
                if rejection is not None:
                    self._reject(where, decoded[position][0], source, event, index, rejection, now_ms, out)
                    continue
            valid += 1
            if batch is None:
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = Batch(partition, [], [], [])
            if in_record is None:
                repeated = False
            else:
                repeated = key in in_record
                in_record.add(key)
            if was_seen or repeated or key in remember:
                continue
            # An id is remembered for the dedup horizon from when it was seen, on the partition's clock (as it
            # was before this record): an old (late) event is not forgotten at once.
            seen_ms = max(event_ms, record_clock)
            if dedup.keeps(seen_ms):
                remember[key] = seen_ms
            clock, own_clock, source_clock = max(clock, event_ms), max(own_clock, event_ms), max(source_clock, event_ms)
            processed += 1
            batch.sources.append(source)
            batch.events.append(kept)
            batch.hashes.append(key)
            attributes = kept.get("attributes") or {}
            # The events row, its fields in EventRow's order, made without keyword parsing (which tripled
            # the row's cost); attributes as tuples, so the garbage collector stops tracking the row the first
            # time it looks at it, instead of walking it in every collection until the sink has taken it.
            rows.append(new_row(EventRow, (
                kept["event_id"], source, kept["event_type"], event_ms // 1000, event_ms, kept["tenant"],
                kept.get("customer_id"), kept.get("anonymous_id"), kept.get("session_id"), tuple(attributes),
                tuple(attributes.values()), partition, decoded[position][0].offset, key)))
        if remember:
            dedup.check(list(remember), list(remember.values()))
        if valid:
            state.clock_ms, state.source_clocks[source] = clock, own_clock
            if source_clock:
                self.source_clock_ms[source] = source_clock
            out.count("cxp_events_processed", (source,), processed)
            if processed < valid:
                out.count("cxp_events_duplicate", (source,), valid - processed)

    def _reject(self, where: tuple[str, int], record: Any, source: str, event: Optional[dict],
                batch_index: Optional[int], rejection: Rejection, now_ms: int, out: Output) -> None:
        """Dead-letter one record (``event``: one bad event of it); ``where``: its (topic, partition)."""
        out.count("cxp_events_rejected", (source, rejection.reason))
        topic, partition = where
        key, original, error = record.key, record.value or b"", rejection.error
        if self.pii is not None:  # PII mode: no raw bytes; a decoded event is re-encoded pseudonymised below
            (key, event, error), original = self.pii.dead_letter(source, key, event, error), b""
        if event is not None and (batch_index is not None or self.pii is not None):
            # Re-encode the one bad event alone, so it can be fixed and replayed without its batch.
            try:
                original = self.codec.encode_event(source, event)
            except Exception:  # noqa: BLE001 - a writer schema we can't re-encode keeps the whole message (PII mode: none)
                pass
        limit = self.deadletter_max_bytes
        truncated = len(original) > limit or (key is not None and len(key) > limit)
        error = error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS] + "…"
        if truncated:
            error += f" [original {len(original)} bytes, key {len(key or b'')} bytes: truncated to {limit}]"
        key, value = (key[:limit] if key is not None else None), original[:limit]
        out.send("deadletter", key, DeadLetter(
            reason=rejection.reason, error=error, source_topic=topic, source_partition=partition,
            source_offset=record.offset, batch_index=batch_index, original_key=key, original_value=value,
            received_time=now_ms, truncated=truncated, original_size=len(original)))
        out.rows["dead_letters"].append(DeadLetterRow(
            received_at=now_ms // 1000, received_ms=now_ms, topic=topic, partition=partition,
            offset=record.offset, batch_index=-1 if batch_index is None else batch_index, reason=rejection.reason,
            error=error, key=key.decode("utf-8", "replace") if key is not None else None, payload=value))


def _runs(records: Iterable[Record]) -> Iterator[list[Record]]:
    """Consecutive records of one topic-partition, in order."""
    run: list[Record] = []
    for record in records:
        if run and (record.partition != run[0].partition or record.topic != run[0].topic):
            yield run
            run = []
        run.append(record)
    if run:
        yield run
