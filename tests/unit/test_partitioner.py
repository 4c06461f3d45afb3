from hypothesis import given
from hypothesis import strategies as st

from pipeline.partitioner import event_key, partition_for

# murmur2 values from the Java client's own test (org.apache.kafka.common.utils.UtilsTest#testMurmur2)
JAVA_MURMUR2 = {
    b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829, b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_matches_java_default_partitioner():
    for key, java_hash in JAVA_MURMUR2.items():
        for n in (1, 4, 7, 64):
            assert partition_for(key, n) == (java_hash & 0x7FFFFFFF) % n


@given(st.binary(), st.integers(1, 512))
def test_partition_in_range(key, n):
    assert 0 <= partition_for(key, n) < n


def test_event_key():
    assert event_key("web", {"customer_id": "c1", "anonymous_id": "a1"}) == b"c1"
    assert event_key("web", {"customer_id": None, "anonymous_id": "a1"}) == b"a1"
    assert event_key("crm", {"customer_id": "ü"}) == "ü".encode()
