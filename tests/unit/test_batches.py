"""When the batch consumer tells the ingest that it has caught up: no record known to wait behind a fetch."""
from collections import defaultdict, namedtuple
from types import SimpleNamespace

from runtime.batches import batch_consumer_class


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
