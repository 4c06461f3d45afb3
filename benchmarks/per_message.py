"""One event per Kafka message against batch messages, in process: the processor's CPU time per event.

    python -m benchmarks.per_message                       # 60,000 events, 3 rounds of each input
    python -m benchmarks.per_message --profile single      # a cProfile of the one-per-message input

The harness's input (``benchmarks.harness.make_events``) twice: one event per message under the event
schema (as ``preload_single`` sends it) and batch messages of 500 events (as the SDK sends them). The
records are handed over as the worker's fetches hand them to the processor: each topic-partition's records
together in offset order, in ``process`` calls bounded as ``agents.ingest.Ingest`` bounds them (2,000
messages, 256 KiB). A fresh ``Processor`` with every core per round, the worker's garbage-collector
thresholds. Printed: events per CPU second of each input per round, and one per message ÷ batched
(issue 17's target is >= 0.8 end to end). Rounds alternate the inputs; the machine is shared, so read
the ratio within one run.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import sys
import time
from collections import defaultdict

from benchmarks.harness import PARTITIONS, batch_records, make_events, processor_for
from pipeline.partitioner import event_key, partition_for
from pipeline.processor import Record
from pipeline.registry import BundledRegistry
from pipeline.settings import Settings
from pipeline.wire import Codec
from runtime.gc_policy import WORKER_GC_THRESHOLDS


def single_records(events, codec: Codec) -> list[Record]:
    """One record per event, under the event schema, on its ``partition_for`` partition."""
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    records = []
    for source, event in events:
        key = event_key(source, event)
        tp = (f"cx.events.{source}", partition_for(key, PARTITIONS))
        records.append(Record(tp[0], tp[1], offsets[tp], key, codec.encode_event(source, event)))
        offsets[tp] += 1
    return records


def as_fetched(records: list[Record], max_messages: int, max_bytes: int) -> list[list[Record]]:
    """The records by topic-partition in offset order, in process calls of at most ``max_messages`` and
    ``max_bytes`` of values."""
    calls, part, size = [], [], 0
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        if part and (len(part) + 1 > max_messages or size + len(record.value) > max_bytes):
            calls.append(part)
            part, size = [], 0
        part.append(record)
        size += len(record.value)
    if part:
        calls.append(part)
    return calls


def cpu_seconds(codec: Codec, calls: list[list[Record]], now: int, profile: cProfile.Profile | None = None) -> float:
    processor_for(codec).process(calls[0][:50], now)  # first-use allocations outside the measurement
    processor = processor_for(codec)
    gc.collect()
    started = time.process_time()
    if profile:
        profile.enable()
    for records in calls:
        processor.process(records, now)
    if profile:
        profile.disable()
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.per_message", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=("single", "batched"), help="one cProfiled round of this input instead")
    args = parser.parse_args(argv)
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    settings = Settings()
    codec = Codec(BundledRegistry())
    events = make_events(args.events)
    now = int(time.time() * 1000)
    bounds = (settings.kafka.batch_max_messages, settings.kafka.batch_max_bytes)
    inputs = {"single": as_fetched(single_records(events, codec), *bounds),
              "batched": as_fetched(batch_records(events, codec, per_message=500), *bounds)}
    del events
    print(f"{args.events:,} events; process calls: single {len(inputs['single'])}, batched {len(inputs['batched'])}; "
          f"load {os.getloadavg()[0]:.2f}")
    if args.profile:
        profile = cProfile.Profile()
        seconds = cpu_seconds(codec, inputs[args.profile], now, profile)
        print(f"{args.profile}: {args.events / seconds:,.0f} events per CPU second (profiled)")
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return 0
    rates = defaultdict(list)
    for _ in range(args.rounds):
        for name, calls in inputs.items():
            rates[name].append(args.events / cpu_seconds(codec, calls, now))
    for name, values in rates.items():
        print(f"{name}: median {statistics.median(values):,.0f} events per CPU second "
              f"({', '.join(f'{v:,.0f}' for v in values)})")
    print(f"one per message / batched: {statistics.median(rates['single']) / statistics.median(rates['batched']):.2f} "
          f"(medians); load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
