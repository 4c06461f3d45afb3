"""What each metric core costs in process: per batch (add, take, tick), at scrape time (collect), in memory.

    python -m benchmarks.core_costs --events 300000 --customers 150000          # ~50k active customers
    python -m benchmarks.core_costs --events 3000000 --customers 1500000        # ~500k
    python -m benchmarks.core_costs --events 100000 --per-message 1 --profile   # one event per message

The input is the harness's (``benchmarks.harness.make_events``: the simulator's realistic mix, event times
over the 4 hours before now), encoded as Kafka records of ``--per-message`` events (500: batch messages as
the SDK sends them; 1: one event per message) and fed to a ``Processor`` with every core (configured as the
worker configures it), ``--records`` records per ``process`` call. Encoded records are cached in
``--cache`` (default the system's temporary folder), since simulating millions of events takes minutes.

Printed per core: seconds in ``add``, ``take`` and ``tick`` over the whole input (wall; CPU with
``--attribute``), the median wall and CPU time of its ``collect`` over the owned partitions at the end
(``--scrapes`` of them, nothing changed in between; a core may keep its families while its state is unchanged),
its collect in each page after one more record (what a /metrics scrape of a busy worker holds the event loop
for), and the bytes its state holds (tracemalloc, by the file that allocated them, with ``--memory``; the
strings and ints of the decoded events that the cores keep show as ``pipeline/avro_reader.py`` and
``<avro reader …>``).
``--profile`` adds a cProfile of the processing, top functions by own time.
Ratios within one run are what to compare: the machine is shared.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pickle
import pstats
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Callable

from benchmarks.harness import STATE_FILTERS, batch_records, make_events, processor_for
from pipeline.registry import BundledRegistry
from pipeline.wire import Codec
from prometheus_client import CollectorRegistry
from sinks.prometheus import CoreCollector, PipelineMetrics, instruments_of

ROOT = Path(__file__).resolve().parents[1]


def load_records(codec: Codec, events: int, customers: int, per_message: int, cache: Path) -> tuple[list, int]:
    """The encoded records and the number of distinct customers, from the cache when it has them."""
    path = cache / f"cxp-core-costs-{events}-{customers}-{per_message}.pickle"
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f)
    generated = make_events(events, customers)
    active = len({event["customer_id"] for _, event in generated if event.get("customer_id")})
    records = batch_records(generated, codec, per_message=per_message)
    del generated
    with open(path, "wb") as f:
        pickle.dump((records, active), f, protocol=pickle.HIGHEST_PROTOCOL)
    return records, active


def timed(seconds: dict, key: tuple, call: Callable, clock: Callable[[], float] = time.perf_counter) -> Callable:
    def wrapper(*args):
        started = clock()
        try:
            return call(*args)
        finally:
            seconds[key] += clock() - started
    return wrapper


def busy_timed(into: list, collect: Callable) -> Callable:
    """``collect``, appending the CPU milliseconds of each call (its families listed) to ``into``."""
    def wrapper(*args):
        started = time.process_time()
        families = list(collect(*args))
        into.append((time.process_time() - started) * 1000)
        return families
    return wrapper


def median_ms(call: Callable[[], object], times: int, before: Callable[[], object] = lambda: None) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``times`` calls (CPU time moves less with the machine's load), each
    after ``before`` (not timed)."""
    walls, cpus = [], []
    for _ in range(times):
        before()
        started, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append((time.perf_counter() - started) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.core_costs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--customers", type=int, default=150_000, help="simulated customers (about a third get events "
                        "in the default 300k events)")
    parser.add_argument("--per-message", type=int, default=500, help="events per Kafka message (1: one per message)")
    parser.add_argument("--records", type=int, default=50, help="records per process() call")
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="tracemalloc the state (slows processing down)")
    parser.add_argument("--profile", action="store_true", help="cProfile the processing")
    parser.add_argument("--attribute", action="store_true", help="CPU seconds per core, with the garbage collector "
                        "held off inside each process() call and run between them: each core's own cost (by default a "
                        "collection's pause counts for whichever core allocated when it was due)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args(argv)

    codec = Codec(BundledRegistry())
    records, active = load_records(codec, args.events, args.customers, args.per_message, args.cache)
    now = int(time.time() * 1000)
    processor_for(codec).process(records[:1], now)  # first-use allocations outside the measurement
    processor = processor_for(codec)
    seconds: dict = defaultdict(float)
    for core in processor.cores:
        for step in ("add", "take", "tick"):
            setattr(core, step, timed(seconds, (core.name, step), getattr(core, step),
                                      time.process_time if args.attribute else time.perf_counter))
    gc.collect()
    if args.memory:
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
    held_back = records[-args.scrapes:]  # one before each "after a batch" scrape at the end
    records = records[:-args.scrapes]
    metrics = PipelineMetrics(CollectorRegistry(), instruments_of(processor.cores))
    metrics.registry.register(CoreCollector(processor))
    profile = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profile:
        profile.enable()
    cpu = time.process_time()
    for i in range(0, len(records), args.records):
        if args.attribute:
            gc.disable()
        metrics.apply(processor.process(records[i:i + args.records], now))
        if args.attribute:
            gc.enable()
            gc.collect()
    cpu = time.process_time() - cpu
    if profile:
        profile.disable()
    elapsed = time.perf_counter() - started
    gc.collect()
    print(f"{args.events:,} events, {active:,} customers with events, {args.per_message} per message, "
          f"{len(records):,} records, {args.records} per call; load {os.getloadavg()[0]:.2f}")
    print(f"processing: {elapsed:.2f} s, {args.events / elapsed:,.0f} ev/s, {cpu:.2f} s CPU"
          f"{' (collections between calls included)' if args.attribute else ''}")
    if args.memory:
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        diffs = after.filter_traces(STATE_FILTERS).compare_to(before.filter_traces(STATE_FILTERS), "filename")
        state = sum(d.size_diff for d in diffs)
        print(f"state held by pipeline/ (and its compiled Avro readers): {state:,} B, {state / active:,.0f} B per customer")
        for d in sorted(diffs, key=lambda d: -d.size_diff)[:12]:
            if d.size_diff > 0:
                name = d.traceback[0].filename
                print(f"  {d.size_diff / active:8,.0f} B/customer  {name.replace(str(ROOT) + '/', '')}")

    states = processor.owned_states()
    clocks = [state.clock_ms for state in states]
    print(f"{'core':<18}{'add s':>8}{'take s':>8}{'tick s':>8}{'collect ms':>12}{'CPU ms':>8}{'samples':>9}")
    total_collect = total_cpu = 0.0
    for index, core in enumerate(processor.cores):
        samples = 0

        def scrape() -> None:
            nonlocal samples
            families = list(core.collect([state.cores[index] for state in states], clocks))
            samples = sum(len(family.samples) for family in families)

        collect_ms, cpu_ms = median_ms(scrape, args.scrapes)
        total_collect, total_cpu = total_collect + collect_ms, total_cpu + cpu_ms
        print(f"{core.name:<18}{seconds[(core.name, 'add')]:8.2f}{seconds[(core.name, 'take')]:8.2f}"
              f"{seconds[(core.name, 'tick')]:8.2f}{collect_ms:12.2f}{cpu_ms:8.2f}{samples:9}")
    print(f"{'all cores':<18}{sum(v for (_, s), v in seconds.items() if s == 'add'):8.2f}"
          f"{sum(v for (_, s), v in seconds.items() if s == 'take'):8.2f}"
          f"{sum(v for (_, s), v in seconds.items() if s == 'tick'):8.2f}{total_collect:12.2f}{total_cpu:8.2f}")
    page = metrics.render()
    page_ms, page_cpu_ms = median_ms(metrics.render, args.scrapes)
    print(f"whole /metrics page, nothing changed since the last: {page_ms:.2f} ms, {page_cpu_ms:.2f} ms CPU (medians of "
          f"{args.scrapes}), {len(page):,} bytes, {len(page.splitlines()):,} lines; load {os.getloadavg()[0]:.2f}")
    batches = iter(held_back)
    busy: dict = defaultdict(list)  # core -> CPU ms of its collect in each page below
    for core in processor.cores:
        core.collect = busy_timed(busy[core.name], core.collect)
    after_ms, after_cpu_ms = median_ms(lambda: metrics.render(), args.scrapes,
                                       before=lambda: metrics.apply(processor.process([next(batches)], now)))
    print(f"whole /metrics page after one more record ({args.per_message} events) was processed and applied: "
          f"{after_ms:.2f} ms, {after_cpu_ms:.2f} ms CPU (medians of {args.scrapes}); load {os.getloadavg()[0]:.2f}")
    print("  the cores' collect in those pages, CPU ms (medians): " + ", ".join(
        f"{name} {statistics.median(ms):.2f}" for name, ms in sorted(busy.items(), key=lambda kv: -statistics.median(kv[1]))
        if ms) + f"; all {sum(statistics.median(ms) for ms in busy.values() if ms):.2f}")
    if profile:
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
