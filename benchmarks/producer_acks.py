"""What acks=all and idempotence cost the SDK producer (EventProducer), on a local Tansu broker.

    .venv/bin/python -m benchmarks.producer_acks [--events 200000] [--single-events 20000] [--rounds 5]

Sends the same simulated events through EventProducer with acks=1, acks=all, and acks=all with
idempotence (the default; only if the broker grants producer ids, which Tansu 0.6 does for
kafka-python), once as the SDK sends them (batch messages of up to 500 events) and once one event per
message, where the per-request cost weighs most. The modes alternate within each round, first one
rotating, so load from elsewhere on the machine biases none; each figure is events/s from the first
send until every acknowledgement is in (flush), and the ratios to acks=1 are taken per round and
summarised by their median. Also the producer process's CPU time per event (every thread: the SDK's,
kafka-python's sender), which other load on the machine disturbs less than wall time. One broker has
no followers, so acks=all waits for no replication here: this measures the client's and the broker's
own cost, not the replication round trip of a real cluster.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from kafka.admin import KafkaAdminClient, NewTopic

from pipeline.producer import EventProducer
from pipeline.registry import SOURCES, BundledRegistry
from pipeline.simulate import Simulator
from pipeline.wire import Codec
from runtime.local.broker import LocalBroker

MODES = {
    "acks=1": {"acks": 1, "enable_idempotence": False},
    "acks=all": {"acks": "all", "enable_idempotence": False},
    "acks=all, idempotent": {},  # the SDK's defaults
}
PARTITIONS = 4


def send_all(bootstrap: str, prefix: str, events: list, max_batch_events: int,
             config: dict) -> tuple[float, float, bool]:
    """Events/s and CPU µs per event of one producer sending ``events`` and flushing; whether it was idempotent."""
    producer = EventProducer(bootstrap, Codec(BundledRegistry()), topic_prefix=prefix,
                             max_batch_events=max_batch_events, **config)
    idempotent = bool(producer._producer.config["enable_idempotence"])
    started, cpu = time.perf_counter(), time.process_time()
    for source, event in events:
        producer.send(source, event)
    producer.flush()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    producer.close()
    if producer.events_sent != len(events):
        raise SystemExit(f"{producer.events_sent} of {len(events)} events acknowledged")
    return len(events) / elapsed, cpu / len(events) * 1e6, idempotent


def measure(bootstrap: str, events: list, max_batch_events: int,
            rounds: int) -> dict[str, list[tuple[float, float]]]:
    """mode -> (events/s, CPU µs per event) of each round."""
    rates: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    modes = list(MODES)
    for round_ in range(rounds):
        for mode in modes[round_ % len(modes):] + modes[:round_ % len(modes)]:
            prefix = f"b{uuid.uuid4().hex[:6]}."
            admin = KafkaAdminClient(bootstrap_servers=bootstrap)
            admin.create_topics([NewTopic(f"{prefix}events.{s}", PARTITIONS, 1) for s in SOURCES])
            admin.close()
            rate, cpu_us, idempotent = send_all(bootstrap, prefix, events, max_batch_events, MODES[mode])
            if mode.endswith("idempotent") and not idempotent:
                rates.pop(mode)
                modes.remove(mode)
                print("  the broker refused producer ids: no idempotent figure")
                continue
            rates[mode].append((rate, cpu_us))
    return rates


def report(title: str, rates: dict[str, list[tuple[float, float]]]) -> None:
    """Per mode: median events/s and its ratio to acks=1 (median of the rounds' ratios, and their range),
    then the same for CPU µs per event."""
    print(f"\n{title}")
    print(f"  {'mode':22} {'events/s':>9}  {'ratio to acks=1 (range)':>24}  {'CPU µs/event':>12}  "
          f"{'ratio to acks=1 (range)':>24}")
    base = rates["acks=1"]
    for mode, runs in rates.items():
        columns = []
        for index in (0, 1):
            values = [run[index] for run in runs]
            ratios = [run[index] / reference[index] for run, reference in zip(runs, base)]
            columns.append(f"{statistics.median(values):{9 if index == 0 else 12},.{0 if index == 0 else 1}f}  "
                           f"{statistics.median(ratios):13.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"  {mode:22} " + "  ".join(columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events sent as the SDK batches them")
    parser.add_argument("--single-events", type=int, default=20_000, help="events sent one per message")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # kafka-python's connection chatter

    now = int(time.time() * 1000)
    events = list(Simulator(seed=1, customers=50_000, start_ms=now - 4 * 3_600_000)
                  .events(count=args.events, rate=args.events / (4 * 3600)))
    with tempfile.TemporaryDirectory(prefix="cxp-acks-") as folder, LocalBroker(Path(folder)) as broker:
        print(f"Tansu at {broker.bootstrap_servers}, {args.rounds} rounds, modes alternating")
        batched = measure(broker.bootstrap_servers, events, 500, args.rounds)
        single = measure(broker.bootstrap_servers, events[:args.single_events], 1, args.rounds)
    report(f"{len(events):,} events, batch messages of up to 500 events (the SDK's default)", batched)
    report(f"{args.single_events:,} events, one event per message", single)


if __name__ == "__main__":
    main()
