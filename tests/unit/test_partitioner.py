from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import DefaultPartitioner, murmur2

from pipeline.partitioner import event_key, partition_for

# Utils.murmur2 values asserted by the Java client's own test (org.apache.kafka.common.utils.UtilsTest#testMurmur2)
JAVA_MURMUR2 = {
    b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829, b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_matches_the_java_client():
    for key, java_hash in JAVA_MURMUR2.items():
        assert murmur2(key) == java_hash & 0xFFFFFFFF  # the same 32 bits, unsigned


def test_partition_is_the_java_default_partitioners():
    # Java: Utils.toPositive(Utils.murmur2(key)) % numPartitions, toPositive(n) = n & 0x7fffffff
    for key, java_hash in JAVA_MURMUR2.items():
        for n in (1, 3, 4, 7, 64, 1000):
            assert partition_for(key, n) == (java_hash & 0x7FFFFFFF) % n


class OneTopicCluster:
    """The slice of kafka-python's ClusterMetadata its partitioner reads."""

    def __init__(self, partitions: int):
        self.partitions = set(range(partitions))

    def topics(self):
        return {"t"}

    def partitions_for_topic(self, topic):
        return self.partitions

    available_partitions_for_topic = partitions_for_topic


@given(st.binary(max_size=200), st.integers(1, 1024))
def test_agrees_with_what_kafka_python_picks_for_a_keyed_message(key, n):
    picked = DefaultPartitioner().partition("t", None, key, None, None, OneTopicCluster(n))
    assert partition_for(key, n) == picked
    assert 0 <= picked < n


def test_event_key():
    assert event_key("web", {"customer_id": "c1", "anonymous_id": "a1"}) == b"c1"
    assert event_key("web", {"customer_id": None, "anonymous_id": "a1"}) == b"a1"
    assert event_key("crm", {"customer_id": None, "anonymous_id": "a1"}) == b""  # only web events may be anonymous
    assert event_key("complaints", {"customer_id": "ü"}) == "ü".encode()
