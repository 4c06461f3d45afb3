"""How the ingest cuts one fetch into processor batches: every record once, in order, within the limits, each
batch as full as they allow."""
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ingest import Ingest

fetches = st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=30), max_size=6)  # per partition: value sizes


@settings(max_examples=200, deadline=None)
@given(fetches, st.integers(1, 12), st.integers(1, 60))
def test_a_fetch_is_cut_into_bounded_parts_that_keep_every_record_in_order(sizes, max_messages, max_bytes):
    batches = [(f"tp{n}", [SimpleNamespace(offset=offset, value=b"x" * size) for offset, size in enumerate(partition)])
               for n, partition in enumerate(sizes)]
    parts = list(Ingest(None, None, None, None, max_messages=max_messages, max_bytes=max_bytes)._bounded(batches))
    flat = [(tp, record.offset) for part in parts for tp, records in part for record in records]
    assert flat == [(tp, record.offset) for tp, records in batches for record in records]
    for index, part in enumerate(parts):
        records = [record for _, records in part for record in records]
        assert records and all(records for _, records in part)
        size = sum(len(record.value) for record in records)
        assert len(records) <= max_messages and (size <= max_bytes or len(records) == 1)
        assert len({tp for tp, _ in part}) == len(part)  # a partition appears once per part
        if index + 1 < len(parts):  # cut only where the next record does not fit
            following = parts[index + 1][0][1][0]
            assert len(records) + 1 > max_messages or size + len(following.value) > max_bytes
