"""Faust's consumer, fetching as before, but handing the records of the input topics over as batches.

Faust delivers a fetched record through a chain of per-message steps (a ``Message`` and an ``Event`` per
record, the conductor's lock, a stream queue, the stream iterator, an ack per record): at one event per
Kafka message that chain, not the work on the event, bounded the worker. Here Faust still owns the group
membership, the fetching (its Fetcher service runs :meth:`BatchConsumer._drain_messages`), the offsets
and their commits, the rebalance callbacks and the web server; only the last step changes: each fetch
(``getmany``: many records per partition) goes to one ``handle(generation, batches, caught_up)`` call, and
its records are acked per partition, as one run of offsets, once their output is durable
(:meth:`BatchConsumer.ack_run`; the commit reads the runs, not one offset each).
``caught_up`` says that no record is known to wait behind the fetch (:meth:`BatchConsumer._caught_up`):
the delivery path then flushes at once instead of waiting for a fuller batch.

What Faust's drain loop does per message is kept, per batch: records at or past the partition's read
offset only, gaps in the offsets registered so that commits can pass them, the read offset moved on, a
commit after ``broker_commit_every`` acks. Records of other topics (Faust's internal ones) still take
Faust's per-message path.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Collection, Iterator, Optional

from faust.transport.consumer import CONSUMER_FETCHING
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

# How long a fetch may wait at the broker for records. Faust asks for 1.5 s; Kafka answers as soon as a record
# arrives, so this only paces an idle consumer's fetches, but Tansu holds the fetch (records waited 0.4 s at
# the median, 0.75 s at most, on a partition written every 100 ms; 9 and 59 ms with 100 ms).
FETCH_MAX_WAIT_MS = 100

# handle(generation, [(tp, records)], caught_up): the consumer generation of the fetch, each partition's records
# (aiokafka ConsumerRecords, in offset order), and whether no record is known to wait behind them.
BatchHandler = Callable[[int, list[tuple[Any, list[Any]]], bool], Awaitable[None]]


def batch_consumer_class(base: type, topics: Collection[str], handle: BatchHandler) -> type:
    """A subclass of Faust's consumer class ``base`` that hands fetched records of ``topics`` to ``handle``."""
    batch_topics = frozenset(topics)

    class BatchConsumer(base):  # type: ignore[misc, valid-type]
        def _new_consumer_thread(self) -> Any:
            thread = super()._new_consumer_thread()
            create, fetch_records = thread._create_worker_consumer, thread._fetch_records

            def with_short_fetch_wait(transport: Any) -> Any:
                consumer = create(transport)
                consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
                return consumer

            async def records_as_read(consumer: Any, *args: Any, **kwargs: Any) -> Any:
                """Faust's fetch (in its consumer thread), with the records of the batched topics as aiokafka
                read them from the fetch response: aiokafka makes a ``ConsumerRecord`` of 11 fields of each
                record (``PartitionRecords._consumer_record``), which at one event per message cost about as
                much as the rest of the consumer thread's work. The ingest and the processor read a record's
                offset, key and value, which both kinds of record have, and take the topic and partition
                from the fetch. (A fetch response that arrives while this call waits still gives
                ConsumerRecords, until the next call.)"""
                for tp, fetched in consumer._fetcher._records.items():
                    records = getattr(fetched, "_partition_records", None)  # a FetchError has none
                    if records is not None and tp.topic in batch_topics:
                        records._consumer_record = record_as_read
                return await fetch_records(consumer, *args, **kwargs)

            thread._create_worker_consumer = with_short_fetch_wait
            thread._fetch_records = records_as_read
            return thread

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._acked_runs: dict[Any, list[tuple[int, int]]] = {}  # tp -> acked (first, last) offsets, batch topics

        def ack_run(self, tp: Any, first: int, last: int) -> None:
            """Faust's ``Consumer.ack`` for the records ``first``..``last`` of one partition, handed over in one
            fetch: kept as one run, not one offset each. The offsets between them that hold no record are gaps
            (:meth:`_unread` registered them), which the commit passes anyway. As Faust's ack, offsets below the
            committed one are left out, and each acked offset counts towards ``broker_commit_every``."""
            if not self.app.topics.acks_enabled_for(tp.topic):
                return
            with ack_lock:
                committed = self._committed_offset[tp]
                if committed is not None:
                    if last < committed:
                        return
                    first = max(first, committed)
                self._acked_runs.setdefault(tp, []).append((first, last))
                self._n_acked += last - first + 1
                notify(self._waiting_for_ack)

        def _new_offset(self, tp: Any) -> Optional[int]:
            """Faust's ``_new_offset`` over acked runs instead of a sorted list of every acked offset: the offset
            after the first block of acked offsets and gaps, None while the committed offset is followed by a
            hole (Faust's rule, which tolerates one missing offset there). The runs it covers are dropped."""
            if tp.topic not in batch_topics:
                return super()._new_offset(tp)
            runs = self._acked_runs.get(tp)
            if not runs:
                return None
            gaps = self._gap[tp]
            if gaps:  # as Faust: the gaps up to the highest acked offset join the acked offsets
                highest = max(last for _, last in runs)
                filled = sorted(gaps.overlap(0, highest), key=lambda gap: gap.begin)
                if filled:
                    runs.extend((gap.begin, gap.end - 1) for gap in filled)
                    gaps.chop(0, max(filled[-1].end - 1, highest + 1))
            runs.sort()
            committed = self._committed_offset[tp]
            if committed and runs[0][0] - committed > 1:
                return None
            end, taken = runs[0][1], 1
            while taken < len(runs) and runs[taken][0] <= end + 1:
                end, taken = max(end, runs[taken][1]), taken + 1
            del runs[:taken]
            return end + 1

        def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[Any]:
            yield from super()._filter_tps_with_pending_acks(topics)
            for tp in self._acked_runs:
                if tp not in self._acked and (topics is None or tp in topics or tp.topic in topics):
                    yield tp

        async def on_partitions_revoked(self, revoked: set) -> None:
            for tp in revoked:  # as Faust drops its acked offsets of revoked partitions
                self._acked_runs.pop(tp, None)
            await super().on_partitions_revoked(revoked)

        async def _drain_messages(self, fetcher: Any) -> None:  # noqa: C901 - Faust's loop, per batch
            consumer_should_stop, fetcher_should_stop = self._stopped.is_set, fetcher._stopped.is_set
            try:
                while not (consumer_should_stop() or fetcher_should_stop()):
                    self.diag.set_flag(CONSUMER_FETCHING)
                    records, active = await self._wait_next_records(1.0)
                    generation = self.app.consumer_generation_id
                    await self.sleep(0)
                    if not records or self.should_stop:
                        continue
                    if not self.flow_active:  # as Faust's getmany: a fetch while the flow is stopped
                        await self.perform_seek()
                        continue
                    batches = []
                    for tp, fetched in records.items():
                        if active is not None and tp not in active and tp not in self._buffered_partitions:
                            continue
                        self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                        if tp.topic not in batch_topics:
                            await self._one_by_one(tp, fetched)
                            continue
                        fetched = await self._unread(tp, fetched)
                        if fetched:
                            batches.append((tp, fetched))
                    if batches:
                        caught_up = self._caught_up(batches)
                        await self.wait_first(handle(generation, batches, caught_up), self.suspend_flow.wait())
                        for tp, fetched in batches:
                            self._read_offset[tp] = fetched[-1].offset
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    self.diag.unset_flag(CONSUMER_FETCHING)
            except self.consumer_stopped_errors:
                if self.transport.app.should_stop:
                    self.log.info("Broker stopped consumer, shutting down...")
                    return
                raise
            except asyncio.CancelledError:
                if self.transport.app.should_stop:
                    self.log.info("Consumer shutting down for user cancel.")
                    return
                raise
            except Exception as exc:
                self.log.exception("Drain messages raised: %r", exc)
                raise
            finally:
                self.diag.unset_flag(CONSUMER_FETCHING)

        def _caught_up(self, batches: list[tuple[Any, list[Any]]]) -> bool:
            """Whether these records are the last known ones: for every owned partition of the batched topics,
            the highwater of its latest fetch response is just past the last record read or in this fetch.
            A partition not read yet, or whose highwater is not known yet, counts as caught up (no record is
            known to wait there); so does one whose fetch is still in flight: its records come next time."""
            last = {tp: fetched[-1].offset for tp, fetched in batches}
            try:
                owned = self.assignment()
            except Exception:  # noqa: BLE001 - stopping or rebalancing: no word on what waits
                return False
            for tp in owned:
                if tp.topic not in batch_topics:
                    continue
                read = last.get(tp, self._read_offset[tp])
                try:
                    highwater = self.highwater(tp)
                except Exception:  # noqa: BLE001 - revoked meanwhile
                    continue
                if read is not None and highwater is not None and highwater > read + 1:
                    return False
            return True

        async def _unread(self, tp: Any, fetched: list[Any]) -> list[Any]:
            """The records Faust's loop would deliver (offset at or past the read offset), with the gaps
            before and between them registered, as that loop does message by message."""
            read = self._read_offset[tp]
            if read is not None and fetched[0].offset < read:
                fetched = [record for record in fetched if record.offset >= read]
                if not fetched:
                    return fetched
            contiguous = fetched[-1].offset - fetched[0].offset == len(fetched) - 1
            if self.app.topics.acks_enabled_for(tp.topic) and not (
                    contiguous and not (read and fetched[0].offset - read > 1)):
                previous = read
                for record in fetched:
                    if previous and record.offset - previous > 1:
                        await self._add_gap(tp, previous + 1, record.offset)
                    previous = record.offset
            return fetched

        async def _one_by_one(self, tp: Any, fetched: list[Any]) -> None:
            """Faust's own path, message by message, for a topic that is not batched."""
            for record in fetched:
                read = self._read_offset[tp]
                if read is not None and record.offset < read:
                    continue
                if read and record.offset - read > 1 and self.app.topics.acks_enabled_for(tp.topic):
                    await self._add_gap(tp, read + 1, record.offset)
                await self.wait_first(self.callback(self._to_message(tp, record)), self.suspend_flow.wait())
                self._read_offset[tp] = record.offset

    return BatchConsumer


def record_as_read(tp: Any, record: Any) -> Any:
    """In place of aiokafka's ``PartitionRecords._consumer_record``: the record as read (offset, key, value,
    timestamp, headers), without a ``ConsumerRecord`` around it."""
    return record


def ack_all(consumer: Any, acks: list[tuple[Any, int, int]]) -> None:
    """Ack the records of one flush: ``acks`` is [(tp, first offset, last offset)] as
    :class:`agents.ingest.Ingest` made them, one per partition per processor batch."""
    for tp, first, last in acks:
        consumer.ack_run(tp, first, last)
