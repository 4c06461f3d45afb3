"""The batch consumer: when it tells the ingest that it has caught up (no record known to wait behind a fetch),
the offsets it commits for records acked as runs, and the records as aiokafka reads them."""
import asyncio
import inspect
from collections import defaultdict, namedtuple
from types import SimpleNamespace

from aiokafka.consumer.fetcher import READ_UNCOMMITTED, Fetcher, FetchResult, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord, TopicPartition
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from hypothesis import given, settings
from hypothesis import strategies as st
from intervaltree import IntervalTree

from runtime.batches import batch_consumer_class, record_as_read


class Owned:
    """The two calls of Faust's consumer the check reads: the assignment and each partition's highwater
    (the offset after the last record, as of the partition's latest fetch response; None before one)."""

    def __init__(self, highwaters: dict):
        self.highwaters = highwaters
        self._read_offset = defaultdict(lambda: None)

    def assignment(self) -> set:
        return set(self.highwaters)

    def highwater(self, tp):
        return self.highwaters[tp]


def consumer(highwaters: dict, read: dict):
    instance = batch_consumer_class(Owned, {"in"}, handle=None)(highwaters)
    instance._read_offset.update(read)
    return instance


def fetch(tp, first: int, last: int):
    return tp, [SimpleNamespace(offset=offset) for offset in range(first, last + 1)]


TP = namedtuple("TP", "topic partition")
A, B, OTHER = TP("in", 0), TP("in", 1), TP("internal", 0)


def test_a_fetch_that_reaches_every_highwater_is_caught_up():
    assert consumer({A: 10, B: 5}, {B: 4})._caught_up([fetch(A, 3, 9)])


def test_records_past_the_fetch_or_past_what_was_read_elsewhere_are_waiting():
    assert not consumer({A: 11, B: 5}, {B: 4})._caught_up([fetch(A, 3, 9)])  # offset 10 of A is not here
    assert not consumer({A: 10, B: 7}, {B: 4})._caught_up([fetch(A, 3, 9)])  # B has 5 and 6 fetched or to fetch


def test_partitions_without_a_known_highwater_or_read_offset_and_other_topics_do_not_hold_a_flush():
    assert consumer({A: 10, B: None, OTHER: 100}, {OTHER: 3})._caught_up([fetch(A, 0, 9)])
    assert consumer({A: 10, B: 8}, {})._caught_up([fetch(A, 0, 9)])  # B never read: nothing known to wait


# -- acks per run: the committed offsets are those of Faust's own bookkeeping of every acked offset ------------
class Bookkeeping:
    """The state of Faust's consumer that acks and commits read and write, with Faust's own methods for the
    gaps and for the committable offset of a partition (``Consumer._new_offset``), the oracle below."""

    _add_gap = FaustConsumer._add_gap
    _new_offset = FaustConsumer._new_offset
    _filter_tps_with_pending_acks = FaustConsumer._filter_tps_with_pending_acks

    def __init__(self):
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
        self._committed_offset = defaultdict(lambda: None)
        self._gap = defaultdict(IntervalTree)
        self._acked = defaultdict(list)
        self._acked_index = defaultdict(set)
        self._n_acked = 0
        self._waiting_for_ack = None
        self._read_offset = defaultdict(lambda: None)

    def commit(self, tp):
        """One commit of the partition as Faust's ``_commit_tps`` makes it (the broker always accepts)."""
        if tp in set(self._filter_tps_with_pending_acks()):
            offset = self._new_offset(tp)
            committed = self._committed_offset[tp]
            if offset is not None and (committed is None or offset and offset > committed):
                self._committed_offset[tp] = offset


class FaustAcks(Bookkeeping):
    """Faust's ack of every offset, as the consumer acked records before runs."""

    def ack_run(self, tp, first, last):
        for offset in range(first, last + 1):
            if offset in self.delivered and offset not in self._acked_index[tp] and (
                    self._committed_offset[tp] is None or offset >= self._committed_offset[tp]):
                self._acked_index[tp].add(offset)
                self._acked[tp].append(offset)


def settled(consumer, tp):
    """The committed offset once commits have taken every acked offset they can: either bookkeeping can need
    more than one commit for a stretch of acked offsets (a stale gap ends a block early; so does, in Faust's
    list, a gap that holds the offset of the record after it, which the list then holds twice)."""
    for _ in range(100):
        if not (consumer._acked[tp] or getattr(consumer, "_acked_runs", {}).get(tp)):
            break
        consumer.commit(tp)
    return consumer._committed_offset[tp]


# a partition's records: each fetch is how many offsets it skips before each of its records
fetch_plans = st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=5), min_size=1, max_size=5)


@settings(max_examples=100, deadline=None)
@given(fetch_plans, st.integers(2, 5), st.data())
def test_acked_runs_commit_up_to_the_last_acked_record_as_acking_every_offset_does(plan, start, data):
    """``start``: the committed offset at assignment. After the records of some fetches are acked, commits
    reach the offset after the last of them (the offsets skipped in between hold no record), and so does
    Faust's own bookkeeping of every acked offset. (From offset 2 up: Faust's gap checks take a read offset
    of 0 for none, and neither bookkeeping passes a hole right after offset 0.)"""
    consumers = runs_consumer, each_consumer = batch_consumer_class(Bookkeeping, {"in"}, handle=None)(), FaustAcks()
    offset, fetches = start - 1, []
    for skips in plan:
        fetched = []
        for skip in skips:
            offset += 1 + skip
            fetched.append(SimpleNamespace(offset=offset))
        fetches.append(fetched)
    each_consumer.delivered = {record.offset for fetched in fetches for record in fetched}
    commits_after = data.draw(st.sets(st.integers(0, len(fetches) - 1))) | {len(fetches) - 1}
    for consumer in consumers:
        consumer._committed_offset[A], consumer._read_offset[A] = start, start - 1

    async def consume() -> None:
        for index, fetched in enumerate(fetches):
            for consumer in consumers:
                unread = await runs_consumer._unread.__func__(consumer, A, fetched)  # registers the gaps
                consumer._read_offset[A] = unread[-1].offset
                consumer.ack_run(A, unread[0].offset, unread[-1].offset)
            if index in commits_after:
                assert [settled(consumer, A) for consumer in consumers] == [fetched[-1].offset + 1] * 2

    asyncio.run(consume())


# -- records as aiokafka read them ------------------------------------------------------------------------------
def test_aiokafka_hands_out_the_records_as_read_and_still_moves_its_position():
    """The batch consumer sets ``_consumer_record`` on the ``PartitionRecords`` of each ``FetchResult`` that
    ``Fetcher._records`` holds, before Faust's ``_fetch_records`` drains them: the installed aiokafka must still
    look it up per record, and still move the fetch position past each record it hands out."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for offset in range(3):
        builder.append(offset, timestamp=1_700_000_000_000, key=b"k%d" % offset, value=b"v%d" % offset, headers=[])
    tp = TopicPartition("in", 0)
    records = PartitionRecords(tp, MemoryRecords(bytes(builder.build())), [], 1, None, None, True, READ_UNCOMMITTED)
    records._consumer_record = record_as_read
    first = next(records)
    assert not isinstance(first, ConsumerRecord) and (first.offset, first.key, first.value) == (1, b"k1", b"v1")
    assert records.next_fetch_offset == 2
    assert [(r.offset, r.value) for r in records] == [(2, b"v2")] and records.next_fetch_offset == 3
    assert "self._records" in inspect.getsource(Fetcher.fetched_records)
    assert "_partition_records" in inspect.getsource(FetchResult.getall)
    assert "self._fetch_records," in inspect.getsource(AIOKafkaConsumerThread.getmany)
