"""Fingerprint every batch's output on a fixed input, to show that a change leaves the outputs as they were.

    python -m benchmarks.fingerprint --out after.jsonl            # on the changed code
    python -m benchmarks.fingerprint --compare before.jsonl after.jsonl
    python -m benchmarks.fingerprint --by-partition --batch-messages 2000 --out after.jsonl  # as fetches order them
    python -m benchmarks.fingerprint --one-per-message --by-partition --batch-messages 2000 --out after.jsonl

The input is seeded simulator traffic (10 days, duplicates and bad records) as Kafka records, one event per
message for some and batch messages for others (``--one-per-message``: every event its own message), processed in batches by the processor with every metric
core. Per batch, one line: a hash of each table's rows, each topic's encoded messages, the counter deltas,
the histogram observations, and every gauge family at the batch's end. Rows and messages are compared as
multisets. ``funnel_progress`` is compared by the newest row per attempt without its version: it is
written latest-wins, and the version depends on how often the attempt was written within a batch.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from pipeline.metrics.registry import build_cores
from pipeline.partitioner import event_key, partition_for
from pipeline.processor import Processor, Record
from pipeline.registry import BundledRegistry
from pipeline.settings import Settings
from pipeline.simulate import Simulator
from pipeline.topics import input_topics
from pipeline.validate import Rules
from pipeline.wire import Codec

NOW = 1_767_225_600_000  # 2026-01-01
PARTITIONS = 4
# Families that are meant to differ from the code before the core contract (they were silently 0 there).
CHANGED_ON_PURPOSE = ("cx_complaint_customers", "cx_complaint_customer_ratio")


def records(codec: Codec, seed: int, events: int, customers: int, one_per_message: bool = False) -> list[Record]:
    """Seeded events as records: per (topic, partition), runs of 1 to 20 events (of 1 with
    ``one_per_message``), a run of one as a single event and longer runs as batch messages, in the
    simulator's order."""
    rng = random.Random(seed)
    simulated = Simulator(seed=seed, customers=customers, start_ms=NOW - 10 * 86_400_000, bad_rate=0.03)
    items = list(simulated.events(count=events, rate=events / (10 * 86_400)))
    out: list[Record] = []
    offsets: dict[tuple[str, int], int] = {}
    pending: dict[tuple[str, int], list[tuple[str, dict]]] = {}
    for source, event in items:
        tp = (f"cx.events.{source}", partition_for(event_key(source, event), PARTITIONS))
        run = pending.setdefault(tp, [])
        run.append((source, event))
        if one_per_message or len(run) >= rng.randint(1, 20):
            out.append(_record(codec, tp, offsets, run))
            pending[tp] = []
    out.extend(_record(codec, tp, offsets, run) for tp, run in pending.items() if run)
    return out


def _record(codec: Codec, tp: tuple[str, int], offsets: dict, run: list[tuple[str, dict]]) -> Record:
    offsets[tp] = offsets.get(tp, -1) + 1
    source, first = run[0]
    value = codec.encode_event(source, first) if len(run) == 1 else codec.encode_batch(source, [e for _, e in run])
    return Record(tp[0], tp[1], offsets[tp], event_key(source, first), value)


def _canonical(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    if isinstance(value, dict):
        return sorted((str(key), _canonical(item)) for key, item in value.items())
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float):
        return round(value, 9)
    return value


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(_canonical(value), default=str).encode()).hexdigest()[:16]


def _rows(table: str, rows: list) -> list:
    if table != "funnel_progress":
        return sorted(map(_canonical, rows), key=repr)
    newest: dict[tuple, tuple] = {}
    for row in rows:
        key = (row[0], row[1], row[2], row[4])
        if key not in newest or row[7] > newest[key][7]:
            newest[key] = row
    return sorted((_canonical(row[:7]) + [row[8]] for row in newest.values()), key=repr)


def _message_bytes(codec: Codec, message: Any) -> bytes:
    return message if isinstance(message, bytes) else codec.encode_message(message)


def _gauges(processor: Processor) -> dict[str, str]:
    states = processor.owned_states()
    out = {}
    for index, core in enumerate(processor.cores):
        for family in core.collect([state.cores[index] for state in states], [state.clock_ms for state in states]):
            if family.name not in CHANGED_ON_PURPOSE:
                out[family.name] = _hash(sorted((s.name, sorted(s.labels.items()), s.value) for s in family.samples))
    return out


def fingerprints(processor: Processor, codec: Codec, batches: Iterable[list[Record]]) -> Iterator[dict]:
    for number, batch in enumerate(batches):
        out = processor.process(batch, NOW)
        yield {
            "batch": number,
            "rows": {table: _hash(_rows(table, rows)) for table, rows in sorted(out.rows.items()) if rows},
            "messages": {topic: _hash(sorted((key or b"", _message_bytes(codec, m)) for key, m in messages))
                         for topic, messages in sorted(out.messages.items()) if messages},
            "counts": _hash(sorted(out.counts.items(), key=repr)),
            "observations": _hash(sorted(out.observations, key=repr)),
            "gauges": _gauges(processor),
        }


def run(out_path: Path, seed: int, events: int, customers: int, batch_messages: int, by_partition: bool = False,
        one_per_message: bool = False) -> None:
    settings = Settings()
    registry = BundledRegistry()
    codec = Codec(registry)
    processor = Processor(codec, Rules.from_registry(registry, settings.stream), input_topics(settings.kafka),
                          settings.stream.dedup_horizon.ms, build_cores(settings))
    processor.assign(range(PARTITIONS))
    stream = records(codec, seed, events, customers, one_per_message)
    batches = [stream[i:i + batch_messages] for i in range(0, len(stream), batch_messages)]
    if by_partition:  # as the worker's fetches hand them over: each topic-partition's records together, in order
        batches = [sorted(batch, key=lambda record: (record.topic, record.partition)) for batch in batches]
    with open(out_path, "w") as lines:
        for line in fingerprints(processor, codec, batches):
            lines.write(json.dumps(line) + "\n")
    print(f"{len(batches)} batches of {len(stream)} messages ({events} events) -> {out_path}")


def compare(before: Path, after: Path) -> int:
    """Print every batch and part that differs; exit status 1 if any does."""
    old = [json.loads(line) for line in open(before)]
    new = [json.loads(line) for line in open(after)]
    differences = 0
    if len(old) != len(new):
        print(f"batch counts differ: {len(old)} vs {len(new)}")
        differences += 1
    for a, b in zip(old, new):
        for part in ("rows", "messages", "counts", "observations", "gauges"):
            if a[part] != b[part]:
                differences += 1
                if differences <= 20:
                    detail = ({k for k in set(a[part]) | set(b[part]) if a[part].get(k) != b[part].get(k)}
                              if isinstance(a[part], dict) else "")
                    print(f"batch {a['batch']}: {part} differ {detail}")
    print(f"{len(old)} batches compared, {differences} differences")
    return 1 if differences else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fingerprint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the fingerprints of this code here")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"), help="compare two runs")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=600)
    parser.add_argument("--batch-messages", type=int, default=100, help="messages per processor batch")
    parser.add_argument("--by-partition", action="store_true",
                        help="each batch's records grouped by topic-partition (offset order kept), as a fetch gives them")
    parser.add_argument("--one-per-message", action="store_true",
                        help="every event its own Kafka message, as producers other than the SDK send them")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        parser.error("give --out or --compare")
    run(args.out, args.seed, args.events, args.customers, args.batch_messages, args.by_partition, args.one_per_message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
