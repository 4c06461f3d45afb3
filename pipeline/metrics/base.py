"""The one interface every metric core implements, and the :class:`Output` of one batch.

A metric core is a pure module: no I/O, no clock of its own, no Prometheus registry. The processor
owns one state object per core per Kafka partition (all input topics are co-partitioned by customer,
so partition ``p`` of every source belongs to one worker and its state moves with it) and calls:

``add(state, accepted, out)``
    once per input message, with the events of that message that passed validation and dedup;
``tick(state, clock_ms, out)``
    after each batch, as the event-time clock moves (expiry, timers such as SLA deadlines);
``restore_queries`` / ``restore``
    when the worker is assigned a partition: the core names the ClickHouse queries that rebuild its
    state, the sink runs them, and ``restore`` loads the rows (the core itself never does I/O);
``collect(states, clock_ms)``
    at scrape time, with the states of every owned partition: the core sums its partials and returns
    gauge families. A revoked partition's state is gone, so its series disappear with it.

Cores run in a fixed order. A core may publish facts for the cores after it in ``out.facts``
(complaints -> churn -> actions); no core imports another. Facts live for one round: the cores'
``add`` calls for one message, or their ``tick`` calls for one partition; then they are cleared.

Rows, topic messages and counter deltas all go into one :class:`Output`; the delivery path
(:mod:`sinks.delivery`) makes it durable, then acknowledges the input records, then applies the
counter deltas to the process-owned Prometheus instruments.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Generic, Iterable, NamedTuple, Optional, Sequence, TypeVar

from prometheus_client.metrics_core import Metric

from pipeline.dedup import id_hash

State = TypeVar("State")


class Accepted(NamedTuple):
    """The valid, new events of one input message."""

    source: str  # web, chatbot, crm, complaints
    partition: int
    offset: int
    events: list[dict]  # decoded Avro dicts; event_time is int epoch milliseconds
    hashes: list[int]  # id_hash of each event's event_id, in the same order

    @classmethod
    def of(cls, source: str, partition: int, offset: int, events: list[dict]) -> "Accepted":
        """With the hashes computed here (the processor has them already; tests and tools use this)."""
        return cls(source, partition, offset, events, [id_hash(event["event_id"]) for event in events])


@dataclass(frozen=True)
class Instrument:
    """A process-owned counter or histogram a core feeds through ``Output.count`` / ``Output.observe``."""

    name: str  # without the _total suffix for counters, as prometheus_client wants it
    kind: str  # "counter" or "histogram"
    documentation: str
    labels: tuple[str, ...]
    buckets: Optional[tuple[float, ...]] = None


@dataclass
class Output:
    """Everything one batch produced, delivered as a unit before its records are acknowledged.

    rows:      table -> row tuples (layouts in :mod:`pipeline.tables`)
    messages:  logical topic ("deadletter", "actions", "signals.churn") -> (key, Avro value)
    counts:    (instrument name, label values) -> increment
    observations: (instrument name, label values, value) for histograms
    facts:     name -> values, read by later cores in the same round (one message, or one partition's
               tick); never delivered
    """

    rows: defaultdict = field(default_factory=lambda: defaultdict(list))
    messages: defaultdict = field(default_factory=lambda: defaultdict(list))
    counts: Counter = field(default_factory=Counter)
    observations: list = field(default_factory=list)
    facts: defaultdict = field(default_factory=lambda: defaultdict(list))

    def count(self, name: str, labels: tuple, n: int = 1) -> None:
        self.counts[(name, labels)] += n

    def observe(self, name: str, labels: tuple, value: float) -> None:
        self.observations.append((name, labels, value))

    def send(self, topic: str, key: Optional[bytes], value: bytes) -> None:
        self.messages[topic].append((key, value))

    def merge(self, other: "Output") -> None:
        """Fold ``other`` into this one (the delivery buffer is one Output for many batches)."""
        for table, rows in other.rows.items():
            self.rows[table].extend(rows)
        for topic, messages in other.messages.items():
            self.messages[topic].extend(messages)
        self.counts.update(other.counts)
        self.observations.extend(other.observations)

    def row_count(self) -> int:
        return sum(map(len, self.rows.values()))


class RestoreQuery(NamedTuple):
    """A query the sink runs for a core when partitions are assigned.

    ``sql`` is a template: ``{db}`` (database), ``{partitions}`` (comma-separated partition numbers)
    and ``{since_ms}`` (clock - span, epoch ms) are filled in by the sink, with identifiers and
    integers only, never event data. The first column of every row must be ``kafka_partition``: the
    sink groups rows by it and hands each partition's rows, without that column, to ``restore``.
    """

    name: str
    sql: str
    span_ms: int  # how far behind the clock rows still matter


@dataclass
class Restored:
    """What ClickHouse holds for newly assigned partitions: the sink reads it, the processor rebuilds from it."""

    partitions: list[int]
    source_clocks: dict[str, int] = field(default_factory=dict)
    ids: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)  # partition -> (id hashes, event ms)
    core_rows: list[dict[str, dict[int, list[tuple]]]] = field(default_factory=list)  # per core: query -> partition -> rows

    @property
    def clock_ms(self) -> int:
        return max(self.source_clocks.values(), default=0)

    def row_count(self) -> int:
        return sum(len(hashes) for hashes, _ in self.ids.values()) + sum(
            len(rows) for by_query in self.core_rows for by_partition in by_query.values() for rows in by_partition.values())


class MetricCore(Generic[State]):
    """Base class of a metric core. Subclasses override what they need; the defaults do nothing."""

    name: str = ""
    instruments: Sequence[Instrument] = ()

    def new_state(self, partition: int = 0) -> State:
        """Empty state for one Kafka partition (the number, for rows that record it)."""
        raise NotImplementedError

    def add(self, state: State, accepted: Accepted, out: Output) -> None:
        """Once per input message, with its accepted events."""

    def tick(self, state: State, clock_ms: int, out: Output) -> None:
        """After a batch, as the event-time clock moved: expire state, fire timers."""

    def restore_queries(self) -> Sequence[RestoreQuery]:
        return ()

    def restore(self, state: State, query: str, rows: list[tuple], clock_ms: int) -> None:
        """Load one partition's rows of the restore query named ``query``."""

    def describe(self) -> Iterable[Metric]:
        """The gauge families ``collect`` returns, without samples."""
        return ()

    def collect(self, states: Sequence[State], clock_ms: int) -> Iterable[Metric]:
        """Gauge families summed over the given partition states, at scrape time."""
        return ()

    def snapshot(self, states: Sequence[State], clock_ms: int) -> Iterable[tuple[str, str, str, float, int]]:
        """(tenant, metric, window, value, n) for the metric_snapshots history table."""
        return ()

