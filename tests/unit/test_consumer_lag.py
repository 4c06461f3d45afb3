"""cxp_consumer_lag_records: highwater minus committed offset over the owned input partitions, per source.

The Kafka consumer is a stand-in holding an assignment and highwaters (the real one is exercised by
tests/faults/test_consumer_lag.py); what is tested is the collector's arithmetic and exposition.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from prometheus_client import CollectorRegistry, generate_latest

from sinks.prometheus import ConsumerLagCollector

TOPICS = {"cx.events.web": "web", "cx.events.crm": "crm"}


class TP(NamedTuple):
    topic: str
    partition: int


class Consumer:
    def __init__(self, highwaters: dict[TP, Optional[int]], started: bool = True):
        self.highwaters, self.started = highwaters, started

    def assignment(self) -> set[TP]:
        if not self.started:
            raise RuntimeError("Consumer thread not yet started")
        return set(self.highwaters)

    def highwater(self, tp: TP) -> Optional[int]:
        if tp not in self.highwaters:
            raise AssertionError("Partition is not assigned")
        return self.highwaters[tp]


def exposed(consumer: Consumer, committed: dict) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ConsumerLagCollector(lambda: consumer, TOPICS, committed))
    text = generate_latest(registry).decode()
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("cxp_consumer_lag_records{")}


def test_lag_is_highwater_minus_committed_summed_per_source():
    consumer = Consumer({
        TP("cx.events.web", 0): 120, TP("cx.events.web", 2): 50,  # web: (120 - 100) + (50 - 0, never committed)
        TP("cx.events.crm", 1): 7,  # crm: caught up, 7 - 7
        TP("cx.deadletter", 0): 900,  # not an input topic
    })
    committed = {TP("cx.events.web", 0): 100, TP("cx.events.crm", 1): 7,
                 TP("cx.events.web", 3): 10}  # a partition no longer owned counts for nothing
    assert exposed(consumer, committed) == {"web": 70.0, "crm": 0.0}


def test_a_partition_not_fetched_yet_shows_its_source_at_zero():
    assert exposed(Consumer({TP("cx.events.crm", 0): None}), {}) == {"crm": 0.0}


def test_a_commit_ahead_of_a_stale_highwater_is_no_negative_lag():
    # the commit can land before the next fetch response raises the highwater
    assert exposed(Consumer({TP("cx.events.web", 0): 10}), {TP("cx.events.web", 0): 12}) == {"web": 0.0}


def test_no_series_while_nothing_is_owned_or_the_consumer_is_not_started():
    assert exposed(Consumer({}), {}) == {}
    assert exposed(Consumer({TP("cx.events.web", 0): 10}, started=False), {}) == {}


def test_the_committed_mapping_is_read_at_each_scrape():
    consumer, committed = Consumer({TP("cx.events.web", 1): 40}), {}
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ConsumerLagCollector(lambda: consumer, TOPICS, committed))
    assert registry.get_sample_value("cxp_consumer_lag_records", {"source": "web"}) == 40
    committed[TP("cx.events.web", 1)] = 40
    assert registry.get_sample_value("cxp_consumer_lag_records", {"source": "web"}) == 0
