"""The one interface every metric core implements, the facts between cores, and the :class:`Output` of a batch.

A metric core is a pure module: no I/O, no SQL, no encoding, no clock of its own. The processor owns one
state object per core per Kafka partition (all input topics are co-partitioned by customer, so partition
``p`` of every source belongs to one worker and its state moves with it) and, per batch and partition,
runs one **round** over the cores in their run order:

``add(state, batch, out)``
    once, with every event of the partition that passed validation and dedup in this batch;
``take(state, facts, out)``
    with the facts of the types the core ``consumes`` published since its last step (below);
``tick(state, clock_ms, out)``
    as the partition's event-time clock moves (expiry, timers such as SLA deadlines); every partition,
    every batch. Stream time is per partition: the largest event_time the partition has processed.

Then, outside the rounds: ``restores`` declares what to read back from ClickHouse when a partition is
assigned (:class:`Restore`: table, columns, filter, span; no SQL), ``restore`` loads those rows (named
tuples), and ``describe``/``collect``/``snapshot`` read the states of the owned partitions at scrape time,
each at its own partition's clock (a window ends at the clock of the partition whose data it holds).

**Facts** are typed records (:mod:`pipeline.metrics.facts`). A core declares ``publishes`` (fact type ->
the phase it publishes in) and ``consumes``; :mod:`pipeline.metrics.registry` runs producers before their
consumers and refuses an enabled consumer without an enabled producer. The rule that gets every fact to
every consumer, whatever the phase that made it: before each of its steps (``add`` in the add phase,
``tick`` in the tick phase) a core is handed, through one ``take`` call, every fact it consumes that was
published since its previous step in this round. Producers run first, so a fact made in ``add`` is taken
before the consumer's ``add``, one made in ``tick`` before the consumer's ``tick``; no fact outlives its
round.

Rows, topic messages and counter deltas go into one :class:`Output`; the delivery path makes it durable,
in the reverse of the run order (a core's tables before those of the cores it consumes from, so a
restored upstream core never hides input a downstream core has not stored yet), ``events`` last, then
acknowledges the input records, then applies the counter deltas.
"""
from __future__ import annotations

from collections import Counter, defaultdict, namedtuple
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from typing import Any, ClassVar, Generic, Iterable, Mapping, NamedTuple, Optional, Sequence, TypeVar, Union

import numpy as np
from prometheus_client.metrics_core import Metric

from pipeline.config import Section
from pipeline.dedup import id_hash
from pipeline.metrics.lastseen import MINUTE_MS, customer_key

State = TypeVar("State")
ADD, TAKE, TICK = "add", "take", "tick"  # the phases a fact can be published in


class Customers:
    """A batch's events that have a customer, grouped by (tenant, customer id) once per batch, in the order each
    customer first appears: what the cores that keep state per customer walk instead of every event (a batch of
    the simulator's mix has about three events per customer)."""

    __slots__ = ("events", "keys", "times", "_hashes", "_sorted", "_tenants", "_firsts", "_lasts")

    def __init__(self, events: Sequence[dict]):
        self.events = events  # the batch's, in order
        groups: dict[tuple[str, str], list[int]] = {}
        for event in events:
            customer_id = event.get("customer_id")
            if customer_id is not None:
                key = (event["tenant"], customer_id)
                times = groups.get(key)
                if times is None:
                    groups[key] = [event["event_time"]]
                else:
                    times.append(event["event_time"])
        self.keys: list[tuple[str, str]] = list(groups)
        self.times: list[list[int]] = list(groups.values())  # each customer's event times, in batch order
        self._hashes: Optional[np.ndarray] = None
        self._sorted: Optional[tuple[np.ndarray, np.ndarray, bool]] = None
        self._tenants: Optional[tuple[list[str], np.ndarray]] = None
        self._firsts: Optional[np.ndarray] = None
        self._lasts: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.keys)

    def hashes(self) -> np.ndarray:
        """:func:`~pipeline.metrics.lastseen.customer_key` of each customer (uint64), hashed once per batch."""
        if self._hashes is None:
            self._hashes = np.fromiter((customer_key(tenant, customer_id) for tenant, customer_id in self.keys),
                                       np.uint64, len(self.keys))
        return self._hashes

    def sorted_hashes(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """(the order that sorts :meth:`hashes`, the sorted hashes, whether they are distinct): what the cores
        that keep customers in sorted arrays merge a batch by."""
        if self._sorted is None:
            hashes = self.hashes()
            order = np.argsort(hashes)
            ordered = hashes[order]
            self._sorted = (order, ordered, bool((ordered[1:] != ordered[:-1]).all()))
        return self._sorted

    def tenants(self) -> tuple[list[str], np.ndarray]:
        """(the batch's tenants in order of first appearance, each customer's tenant as an index into them)."""
        if self._tenants is None:
            tenants = list(map(itemgetter(0), self.keys))
            names = list(dict.fromkeys(tenants))
            index = {tenant: i for i, tenant in enumerate(names)}
            self._tenants = (names, np.fromiter(map(index.__getitem__, tenants), np.int64, len(tenants)))
        return self._tenants

    def firsts(self) -> np.ndarray:
        """Each customer's earliest event time in the batch (epoch ms, int64)."""
        if self._firsts is None:
            self._firsts = np.fromiter(map(min, self.times), np.int64, len(self.times))
        return self._firsts

    def lasts(self) -> np.ndarray:
        """Each customer's latest event time in the batch (epoch ms, int64)."""
        if self._lasts is None:
            self._lasts = np.fromiter(map(max, self.times), np.int64, len(self.times))
        return self._lasts

    def last_minutes(self) -> np.ndarray:
        """Each customer's latest event minute (epoch minutes, int64)."""
        return self.lasts() // MINUTE_MS


class Batch:
    """The valid, new events of one partition in one processor batch, in consumption order, and views of them
    that more than one core reads, computed once per batch (:meth:`customers`, :meth:`of_source`)."""

    __slots__ = ("partition", "sources", "events", "hashes", "_customers", "_by_source")

    def __init__(self, partition: int, sources: list[str], events: list[dict], hashes: list[int]):
        self.partition = partition
        self.sources = sources  # web, chatbot, crm, complaints: the source of each event
        self.events = events  # decoded Avro dicts; event_time is int epoch milliseconds
        self.hashes = hashes  # id_hash of each event's event_id
        self._customers: Optional[Customers] = None
        self._by_source: Optional[dict[str, tuple[list[dict], list[int]]]] = None

    @classmethod
    def of(cls, partition: int, items: Sequence[tuple[str, dict]]) -> "Batch":
        """From (source, event) pairs, hashing the ids here (the processor has them; tests and tools use this)."""
        return cls(partition, [source for source, _ in items], [event for _, event in items],
                   [id_hash(event["event_id"]) for _, event in items])

    def customers(self) -> Customers:
        """The events with a customer, grouped by customer (built on the first call; the batch is complete by then:
        the processor hands it to the cores only once it has every event)."""
        if self._customers is None:
            self._customers = Customers(self.events)
        return self._customers

    def of_source(self, source: str) -> tuple[list[dict], list[int]]:
        """The events of one source and their id hashes, in batch order (the batch split by source once)."""
        if self._by_source is None:
            self._by_source = {}
            for name, event, key in zip(self.sources, self.events, self.hashes):
                split = self._by_source.get(name)
                if split is None:
                    split = self._by_source[name] = ([], [])
                split[0].append(event)
                split[1].append(key)
        return self._by_source.get(source, ([], []))


class Facts:
    """The facts handed to one ``take`` call, by type."""

    __slots__ = ("_by_type",)

    def __init__(self, facts: Iterable[Any] = ()):
        self._by_type: dict[type, list] = defaultdict(list)
        for fact in facts:
            self._by_type[type(fact)].append(fact)

    def of(self, kind: type) -> list:
        return self._by_type.get(kind, [])

    def __bool__(self) -> bool:
        return bool(self._by_type)


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
    messages:  logical topic ("deadletter", "actions", "signals.churn") -> (key, typed message of
               :mod:`pipeline.messages`), encoded by the delivery path
    counts:    (instrument name, label values) -> increment
    observations: (instrument name, label values, value) for histograms
    facts:     published by the core that runs now; the processor routes them to consumers at once
    """

    rows: defaultdict = field(default_factory=lambda: defaultdict(list))
    messages: defaultdict = field(default_factory=lambda: defaultdict(list))
    counts: Counter = field(default_factory=Counter)
    observations: list = field(default_factory=list)
    facts: list = field(default_factory=list)

    def count(self, name: str, labels: tuple, n: int = 1) -> None:
        self.counts[(name, labels)] += n

    def observe(self, name: str, labels: tuple, value: float) -> None:
        self.observations.append((name, labels, value))

    def send(self, topic: str, key: Optional[bytes], message: NamedTuple) -> None:
        self.messages[topic].append((key, message))

    def publish(self, fact: NamedTuple) -> None:
        self.facts.append(fact)

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


# -- what a core needs read back -------------------------------------------------------------------
class Equals(NamedTuple):
    column: str
    value: Union[str, int]


class OneOf(NamedTuple):
    column: str
    values: tuple[Union[str, int], ...]


class NoneOf(NamedTuple):
    column: str
    values: tuple[Union[str, int], ...]


class NotNull(NamedTuple):
    column: str


Condition = Union[Equals, OneOf, NoneOf, NotNull]


class Newest(NamedTuple):
    """One row per value of ``keys`` (and per ``bucket_ms`` of ``by``, when given): the columns of the row
    with the largest ``by``, and that largest ``by``."""

    keys: tuple[str, ...]
    by: str
    bucket_ms: Optional[int] = None


class Restore(NamedTuple):
    """What one core reads back for newly assigned partitions: rows of ``table`` (with ``FINAL`` when
    ``final``) of those partitions, whose ``time`` column is after ``clock - span_ms`` (every row when
    ``time`` is None), meeting every condition of ``where``. ``clock`` is the partition's stream time, or
    with ``clock_source`` the newest event time of that source in the partition (the clock lateness is
    judged by). The core's ``restore`` gets them as named tuples of ``columns``. The sink turns this into
    SQL; the core never sees any."""

    name: str
    table: str
    columns: tuple[str, ...]
    time: Optional[str]
    span_ms: int = 0
    where: tuple[Condition, ...] = ()
    newest: Optional[Newest] = None
    final: bool = False
    clock_source: Optional[str] = None

    def row_type(self) -> type:
        """The named tuple of ``columns`` that rows of this restore come as."""
        return _row_type(self.name, self.columns)


@lru_cache(maxsize=None)
def _row_type(name: str, columns: tuple[str, ...]) -> type:
    return namedtuple(f"{name.title().replace('_', '')}Row", columns)


@dataclass
class Restored:
    """What ClickHouse holds for newly assigned partitions: the sink reads it, the processor rebuilds from it."""

    partitions: list[int]
    clocks: dict[int, dict[str, int]] = field(default_factory=dict)  # partition -> source -> newest event_time
    source_clocks: dict[str, int] = field(default_factory=dict)
    ids: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)  # partition -> (id hashes, event ms)
    core_rows: list[dict[str, dict[int, list[tuple]]]] = field(default_factory=list)  # per core: name -> partition -> rows

    def row_count(self) -> int:
        return sum(len(hashes) for hashes, _ in self.ids.values()) + sum(
            len(rows) for by_name in self.core_rows for by_partition in by_name.values() for rows in by_partition.values())


class MetricCore(Generic[State]):
    """Base class of a metric core. Subclasses override what they need; the defaults do nothing.

    Declarations (class attributes): ``name`` (also its settings section and its ``CXP_METRICS`` name),
    ``Settings`` (its :class:`~pipeline.config.Section`, or None), ``publishes`` (fact type -> phase),
    ``consumes`` (fact types), ``tables`` (the tables it writes) and ``instruments``.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[Optional[type[Section]]] = None
    publishes: ClassVar[Mapping[type, str]] = {}
    consumes: ClassVar[tuple[type, ...]] = ()
    tables: ClassVar[tuple[str, ...]] = ()
    instruments: Sequence[Instrument] = ()

    @classmethod
    def configure(cls, section: Optional[Section], stream: Any) -> "MetricCore":
        """The worker's core from its settings section and the stream settings (windows, lateness)."""
        raise NotImplementedError

    def new_state(self, partition: int) -> State:
        """Empty state for one Kafka partition."""
        raise NotImplementedError

    def add(self, state: State, batch: Batch, out: Output) -> None:
        """Once per batch and partition, with its accepted events."""

    def take(self, state: State, facts: Facts, out: Output) -> None:
        """The consumed facts published since this core's last step (see the module docstring)."""

    def tick(self, state: State, clock_ms: int, out: Output) -> None:
        """After a batch, as the event-time clock moved: expire state, fire timers."""

    def restores(self) -> Sequence[Restore]:
        return ()

    def restore(self, state: State, name: str, rows: list, clock_ms: int) -> None:
        """Load one partition's rows of the restore named ``name``."""

    def describe(self) -> Iterable[Metric]:
        """The gauge families ``collect`` returns, without samples."""
        return ()

    def collect(self, states: Sequence[State], clocks: Sequence[int]) -> Iterable[Metric]:
        """Gauge families summed over the given partition states (``clocks``: each one's stream time)."""
        return ()

    def snapshot(self, states: Sequence[State], clocks: Sequence[int]) -> Iterable[tuple[str, str, str, float, int]]:
        """(tenant, metric, window, value, n) for the metric_snapshots history table."""
        return ()
