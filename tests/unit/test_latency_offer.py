"""The harness's latency offer: the SDK's messages for events offered at a paced rate, encoded beforehand."""
from benchmarks.harness import LATENCY_LINGER_S, PARTITIONS, Offer, make_events
from pipeline.partitioner import event_key, partition_for
from pipeline.registry import BundledRegistry
from pipeline.wire import Codec


def test_every_event_is_sent_once_in_a_message_of_its_partition_within_the_linger_of_its_offer():
    codec, rate = Codec(BundledRegistry()), 4000.0
    events = make_events(6000, 800)
    offer = Offer(events, rate, "x.", codec)
    sends = [message[0] for message in offer.messages]
    assert sends == sorted(sends)
    decoded = []
    for send_at, topic, partition, key, value, offered in offer.messages:
        batch = codec.decode(value).events
        assert 1 <= len(batch) <= 500 and len(batch) == len(offered)
        assert all(0 <= send_at - at <= LATENCY_LINGER_S + 1e-9 for at in offered)
        source = topic.removeprefix("x.events.")
        assert all(partition_for(event_key(source, event), PARTITIONS) == partition for event in batch)
        for event, at in zip(batch, offered):
            assert event["event_time"] == int((offer.start_wall + at) * 1000)
            decoded.append((round(at * rate), event["event_id"]))
    assert sorted(decoded) == [(i, event["event_id"]) for i, (_, event) in enumerate(events)]
