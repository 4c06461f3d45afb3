"""Benchmark harness: cx-pipeline against the limit set by its own tools, on one machine, in one run.

    python -m benchmarks.harness [--events N] [--runs K] [--rate R] [--profile] [--smoke]

Every figure is the median of --runs runs. Throughput ratios compare figures measured in the same
run on the same broker, because absolute numbers on a shared 2-core machine are noisy. The harness
also checks that the worker's NPS equals a plain recomputation from its input: a fast wrong answer
fails the run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

from kafka import KafkaProducer
from rich.console import Console
from rich.table import Table

from pipeline.demo import scrape, total
from pipeline.localbroker import LocalBroker, free_port, stop_process
from pipeline.partitioner import event_key, partition_for
from pipeline.processor import Processor, Record
from pipeline.producer import EventProducer
from pipeline.registry import EVENT_SCHEMAS, SOURCES, BundledRegistry
from pipeline.settings import Settings
from pipeline.simulate import Simulator
from pipeline.topics import ensure_topics
from pipeline.validate import Rules
from pipeline.wire import Codec
from sinks.clickhouse.backend import NativeBackend
from sinks.clickhouse.ddl import COLUMNS
from sinks.clickhouse.sink import ClickHouseSink
from tests.services.clickhouse import ClickHouseServer

console = Console()
ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
WINDOWS = {"1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000}


# -- input -------------------------------------------------------------------------------------------
def make_events(n: int, seed: int = 1) -> list[tuple[str, dict]]:
    """n simulator events spanning a few hours of event time, shifted to end a minute before now."""
    span_ms = 4 * 3_600_000
    events = list(Simulator(seed=seed, customers=50_000, start_ms=0).events(count=n, rate=n / (span_ms / 1000)))
    shift = int(time.time() * 1000) - 60_000 - events[-1][1]["event_time"]
    for _, event in events:
        event["event_time"] += shift
    return events


def preload(bootstrap: str, prefix: str, events, batched: bool, codec: Codec) -> float:
    """Write the events to fresh topics; return the seconds it took."""
    ensure_topics(Settings(kafka_url=f"kafka://{bootstrap}", topic_prefix=prefix, partitions=PARTITIONS))
    started = time.perf_counter()
    if batched:
        with EventProducer(bootstrap, codec, topic_prefix=prefix, linger_ms=1000) as producer:
            for source, event in events:
                producer.send(source, event)
    else:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1_048_576)
        for source, event in events:
            producer.send(f"{prefix}events.{source}", codec.encode_event(source, event), key=event_key(source, event))
        producer.flush()
        producer.close()
    return time.perf_counter() - started


def nps_oracle(events) -> dict[tuple[str, str], float]:
    """(tenant, window) -> NPS, recomputed plainly from the input (SPEC §5, minute-rounded windows)."""
    seen, surveys = set(), []
    clock = 0
    for _, e in events:
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        clock = max(clock, e["event_time"])
        if e.get("survey") and e["survey"]["kind"] == "NPS":
            surveys.append((e["tenant"], e["survey"]["score"], e["event_time"]))
    out = {}
    for label, w in WINDOWS.items():
        per: dict[str, list[int]] = defaultdict(list)
        for tenant, score, t in surveys:
            if t // 60_000 > (clock - w) // 60_000:
                per[tenant].append(score)
        for tenant, scores in per.items():
            out[(tenant, label)] = 100.0 * (sum(s >= 9 for s in scores) - sum(s <= 6 for s in scores)) / len(scores)
    return out


# -- processes -----------------------------------------------------------------------------------------
class Worker:
    def __init__(self, kafka_url: str, clickhouse_url: str, prefix: str, group: str, workdir: Path):
        self.port = free_port()
        env = dict(os.environ, CXP_KAFKA_URL=kafka_url, CXP_CLICKHOUSE_URL=clickhouse_url, CXP_TOPIC_PREFIX=prefix,
                   CXP_APP_ID=group, CXP_WEB_PORT=str(self.port), CXP_SESSION_TIMEOUT="6",
                   CXP_DATA_DIR=str(workdir), CXP_LOG_LEVEL="warning")
        self.started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env,
                                        stdout=open(workdir / f"worker-{self.port}.log", "ab"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/metrics"

    def metrics(self) -> dict:
        try:
            return scrape(self.url, timeout=5)
        except OSError:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}") from None
            return {}

    def peak_rss_bytes(self) -> int:
        for line in open(f"/proc/{self.process.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        stop_process(self.process, 60)


def wait_done(workers: list[Worker], n: int, timeout_s: float = 1800) -> tuple[float, float, dict]:
    """Seconds from the first consumed event, and from process start, until n events are consumed and
    every processed event's row is in ClickHouse; plus the last samples of the first worker."""
    first: Optional[float] = None
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        samples = [w.metrics() for w in workers]
        consumed = sum(total(s, "cxp_events_consumed_total") for s in samples)
        if consumed and first is None:
            first = time.perf_counter()
        rows = sum(total(s, "cxp_sink_rows_total", table="events") for s in samples)
        processed = sum(total(s, "cxp_events_processed_total") for s in samples)
        if consumed >= n and rows >= processed:
            end = time.perf_counter()
            return end - first, end - min(w.started for w in workers), samples[0]
        time.sleep(0.05)
    raise RuntimeError(f"workers did not finish {n} events within {timeout_s} s")


# -- the measurements -----------------------------------------------------------------------------------
def ceiling(bootstrap: str, prefix: str, n: int, codec: Codec) -> float:
    """Plain aiokafka consume + fastavro decode + count per tenant over the same topics: events/s."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> float:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8_388_608)
        await consumer.start()
        try:
            tps = [TopicPartition(f"{prefix}events.{s}", p) for s in SOURCES for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            counts: dict[str, int] = defaultdict(int)
            seen = 0
            started = time.perf_counter()
            while seen < n:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                for records in batches.values():
                    for record in records:
                        for event in codec.decode(record.value).events:
                            counts[event["tenant"]] += 1
                            seen += 1
            return n / (time.perf_counter() - started)
        finally:
            await consumer.stop()

    return asyncio.run(run())


def faust_noop(bootstrap: str, prefix: str, n_messages: int, workdir: Path) -> float:
    """Faust's own ceiling: an agent that takes and acks messages and does nothing else: messages/s."""
    port = free_port()
    count_file = workdir / f"noop-{port}.count"
    env = dict(os.environ, BENCH_BROKER=bootstrap, BENCH_PREFIX=prefix, BENCH_COUNT_FILE=str(count_file),
               BENCH_GROUP=f"noop-{uuid.uuid4().hex[:6]}")
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.noop_agent", "worker", "-l", "warn", "--without-web"],
                               env=env, cwd=ROOT, stdout=open(workdir / "noop.log", "ab"), stderr=subprocess.STDOUT)
    try:
        log = count_file
        deadline = time.perf_counter() + 600
        first = None
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the no-op Faust agent exited with {process.returncode}; see {workdir / 'noop.log'}")
            count = int(log.read_text() or 0) if log.exists() else 0
            if count and first is None:
                first = time.perf_counter()
            if count >= n_messages:
                return n_messages / (time.perf_counter() - first)
            time.sleep(0.05)
        raise RuntimeError("the no-op Faust agent did not finish")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def latency(bootstrap: str, worker: Worker, prefix: str, rate: float, seconds: float, codec: Codec) -> tuple[float, float]:
    """p50 and p99 seconds from an event's send to its count showing in /metrics, at an offered rate."""
    n = int(rate * seconds)
    events = list(Simulator(seed=99, customers=50_000, start_ms=int(time.time() * 1000)).events(count=n, rate=rate))
    sent_at: list[float] = []
    seen: list[tuple[float, float]] = []
    base = total(worker.metrics(), "cxp_events_processed_total")
    done = threading.Event()

    def scraper() -> None:
        while not done.is_set():
            seen.append((time.perf_counter(), total(worker.metrics(), "cxp_events_processed_total") - base))
            time.sleep(0.02)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    with EventProducer(bootstrap, codec, topic_prefix=prefix, linger_ms=50) as producer:
        started = time.perf_counter()
        for i, (source, event) in enumerate(events):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0.001:
                time.sleep(delay)
            event["event_time"] = int(time.time() * 1000)
            sent_at.append(time.perf_counter())
            producer.send(source, event)
    deadline = time.perf_counter() + 60
    while (not seen or seen[-1][1] < n) and time.perf_counter() < deadline:
        time.sleep(0.1)
    done.set()
    thread.join()
    latencies, j = [], 0
    for i, t_sent in enumerate(sent_at, 1):
        while j < len(seen) and seen[j][1] < i:
            j += 1
        if j == len(seen):
            break
        latencies.append(max(seen[j][0] - t_sent, 0.0))
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


def sink_ratio(clickhouse: ClickHouseServer, rows: list[tuple], batch: int = 10_000) -> tuple[float, float]:
    """Rows/s through ClickHouseSink vs a plain clickhouse-driver columnar insert of the same rows.

    Each writes into its own fresh table after a warm-up batch, so neither pays for connecting or
    for the other's merges.
    """
    from clickhouse_driver import Client

    names = ", ".join(f"`{c}`" for c in COLUMNS["events"])
    sink_backend = NativeBackend(clickhouse.url(f"bench_{uuid.uuid4().hex[:6]}"))
    sink_backend.create_tables()
    sink = ClickHouseSink(sink_backend)
    plain_backend = NativeBackend(clickhouse.url(f"bench_{uuid.uuid4().hex[:6]}"))
    plain_backend.create_tables()
    client = Client(host=clickhouse.host, port=clickhouse.tcp_port)

    def ours(chunk: list[tuple]) -> None:
        sink.add("events", chunk)
        sink.flush()

    def plain(chunk: list[tuple]) -> None:
        client.execute(f"INSERT INTO {plain_backend.database}.events ({names}) VALUES",
                       [list(c) for c in zip(*chunk)], columnar=True)

    rates = []
    for insert in (ours, plain):
        insert(rows[:batch])
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            insert(rows[i:i + batch])
        rates.append(len(rows) / (time.perf_counter() - started))
    return rates[0], rates[1]


def processor_for(codec: Codec, prefix: str = "cx.") -> Processor:
    registry = codec.registry
    rules = Rules.from_schemas({s: registry.by_name(n).schema for s, n in EVENT_SCHEMAS.items()}, 300_000, 7 * 86_400_000)
    return Processor(codec, rules, {f"{prefix}events.{s}": s for s in SOURCES}, WINDOWS, 86_400_000)


def batch_records(events, codec: Codec, per_message: int = 500) -> list[Record]:
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for source, event in events:
        groups[(source, partition_for(event_key(source, event), PARTITIONS))].append(event)
    out = []
    for (source, partition), items in groups.items():
        for i in range(0, len(items), per_message):
            out.append(Record(f"cx.events.{source}", partition, i, b"k", codec.encode_batch(source, items[i:i + per_message])))
    return out


def state_per_customer(events, codec: Codec) -> float:
    """Bytes the worker's state holds per active customer (or anonymous visitor) after the whole input."""
    records = batch_records(events, codec)
    processor = processor_for(codec)
    now = int(time.time() * 1000)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(0, len(records), 50):
        processor.process(records[i:i + 50], now)
    state_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    customers = len({e.get("customer_id") or e.get("anonymous_id") for _, e in events})
    return state_bytes / customers


def event_rows(events, codec: Codec) -> list[tuple]:
    """The events table rows the worker would write for these events."""
    processor = processor_for(codec)
    now = int(time.time() * 1000)
    return [row for r in batch_records(events, codec) for row in processor.process([r], now).rows["events"]]


def profile(pid: int, seconds: float, out: Path) -> list[tuple[str, int]]:
    """py-spy samples of the worker; the top functions by own samples."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run([py_spy, "record", "--format", "raw", "-o", str(out), "-p", str(pid), "-d", str(int(seconds)),
                    "--nonblocking"], capture_output=True, timeout=seconds + 60)
    own: dict[str, int] = defaultdict(int)
    if out.exists():
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            own[stack.split(";")[-1]] += int(count)
    return sorted(own.items(), key=lambda kv: -kv[1])[:15]


# -- the run ----------------------------------------------------------------------------------------
def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    values = [measure() for _ in range(runs)]
    return statistics.median(values), values


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events preloaded, batched (default 1M)")
    parser.add_argument("--single-events", type=int, default=100_000, help="events preloaded one per message")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument("--rate", type=float, default=10_000, help="offered rate for the latency figure (events/s)")
    parser.add_argument("--latency-seconds", type=float, default=20, help="how long to offer that rate")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker during one end-to-end run")
    parser.add_argument("--smoke", action="store_true", help="20k events, one run, correctness only")
    parser.add_argument("--json", type=Path, help="where to write the results (default benchmarks/results/<time>.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.events, args.single_events, args.runs = 20_000, 5_000, 1

    codec = Codec(BundledRegistry())
    workdir = Path(tempfile.mkdtemp(prefix="cxp-bench-"))
    results: dict = {"machine": machine(), "events": args.events, "runs": args.runs, "figures": {}}
    figures = results["figures"]
    broker = LocalBroker(workdir).start()
    (workdir / "clickhouse").mkdir()
    clickhouse = ClickHouseServer(workdir / "clickhouse")
    try:
        console.print(f"generating {args.events:,} events")
        events = make_events(args.events)
        batched_prefix = f"b{uuid.uuid4().hex[:6]}."
        figures["preload_seconds"] = preload(broker.bootstrap_servers, batched_prefix, events, True, codec)
        expected_nps = nps_oracle(events)
        distinct = len({e["event_id"] for _, e in events})

        def end_to_end(profile_out: Optional[Path] = None) -> float:
            db = f"bench_{uuid.uuid4().hex[:6]}"
            worker = Worker(broker.url, clickhouse.url(db), batched_prefix, f"bench-{uuid.uuid4().hex[:6]}", workdir)
            try:
                spy = None
                if profile_out is not None:
                    spy = threading.Thread(target=lambda: figures.__setitem__(
                        "profile_top", profile(worker.process.pid, 20, profile_out)))
                    spy.start()
                seconds, with_join, samples = wait_done([worker], args.events)
                check_correctness(samples, expected_nps, distinct)
                figures.setdefault("end_to_end_with_group_join_runs", []).append(args.events / with_join)
                figures["worker_peak_rss_mb"] = worker.peak_rss_bytes() / 2**20
                if spy is not None:
                    spy.join()
                return args.events / seconds
            finally:
                worker.stop()

        figures["end_to_end_eps"], figures["end_to_end_runs"] = median_of(args.runs, end_to_end)
        figures["ceiling_eps"], figures["ceiling_runs"] = median_of(
            args.runs, lambda: ceiling(broker.bootstrap_servers, batched_prefix, args.events, codec))
        figures["ratio_to_ceiling"] = figures["end_to_end_eps"] / figures["ceiling_eps"]
        figures["end_to_end_with_group_join_eps"] = statistics.median(figures["end_to_end_with_group_join_runs"])

        console.print(f"single-event path: {args.single_events:,} events, one per message")
        single_events = events[:args.single_events]
        single_prefix = f"s{uuid.uuid4().hex[:6]}."
        preload(broker.bootstrap_servers, single_prefix, single_events, False, codec)

        def single() -> float:
            worker = Worker(broker.url, clickhouse.url(f"bench_{uuid.uuid4().hex[:6]}"), single_prefix,
                            f"bench-{uuid.uuid4().hex[:6]}", workdir)
            try:
                return len(single_events) / wait_done([worker], len(single_events))[0]
            finally:
                worker.stop()

        figures["single_event_eps"], _ = median_of(args.runs, single)
        figures["faust_noop_msgs_per_s"], _ = median_of(
            args.runs, lambda: faust_noop(broker.bootstrap_servers, single_prefix, len(single_events), workdir))
        figures["single_event_ratio_to_faust_noop"] = figures["single_event_eps"] / figures["faust_noop_msgs_per_s"]

        if not args.smoke:
            def two_workers() -> float:
                db, group = f"bench_{uuid.uuid4().hex[:6]}", f"bench-{uuid.uuid4().hex[:6]}"
                workers = [Worker(broker.url, clickhouse.url(db), batched_prefix, group, workdir) for _ in range(2)]
                try:
                    return args.events / wait_done(workers, args.events)[0]
                finally:
                    for w in workers:
                        w.stop()

            figures["two_workers_eps"], _ = median_of(args.runs, two_workers)

            def p99() -> float:
                prefix = f"l{uuid.uuid4().hex[:6]}."
                ensure_topics(Settings(kafka_url=broker.url, topic_prefix=prefix, partitions=PARTITIONS))
                worker = Worker(broker.url, clickhouse.url(f"bench_{uuid.uuid4().hex[:6]}"), prefix,
                                f"bench-{uuid.uuid4().hex[:6]}", workdir)
                try:
                    warm_up(broker.bootstrap_servers, worker, prefix, codec)
                    p50, p99_ = latency(broker.bootstrap_servers, worker, prefix, args.rate, args.latency_seconds, codec)
                    figures.setdefault("latency_p50_s_runs", []).append(p50)
                    return p99_
                finally:
                    worker.stop()

            figures["latency_p99_s"], figures["latency_p99_runs"] = median_of(args.runs, p99)
            figures["latency_p50_s"] = statistics.median(figures.pop("latency_p50_s_runs"))

        figures["state_bytes_per_customer"] = state_per_customer(events, codec)
        sample = event_rows(events[: 20_000 if args.smoke else 100_000], codec)
        sink_runs = [sink_ratio(clickhouse, sample) for _ in range(args.runs)]
        figures["sink_rows_per_s"] = statistics.median(r[0] for r in sink_runs)
        figures["plain_driver_rows_per_s"] = statistics.median(r[1] for r in sink_runs)
        figures["sink_ratio"] = statistics.median(r[0] / r[1] for r in sink_runs)

        if args.profile:
            end_to_end(workdir / "profile.txt")

        report(results, args)
        return 0
    finally:
        clickhouse.stop()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def warm_up(bootstrap: str, worker: Worker, prefix: str, codec: Codec) -> None:
    """One event through the worker, so the group join is not counted as latency."""
    source, event = next(Simulator(seed=7, start_ms=int(time.time() * 1000)).events(count=1))
    with EventProducer(bootstrap, codec, topic_prefix=prefix) as producer:
        producer.send(source, event)
    deadline = time.perf_counter() + 120
    while total(worker.metrics(), "cxp_events_processed_total") < 1:
        if time.perf_counter() > deadline:
            raise RuntimeError("the worker did not process the warm-up event")
        time.sleep(0.1)


def check_correctness(samples: dict, expected_nps: dict, distinct: int) -> None:
    processed = total(samples, "cxp_events_processed_total")
    if processed != distinct:
        raise SystemExit(f"WRONG: processed {processed} events, the input has {distinct} distinct event ids")
    got = {(labels["tenant"], labels["window"]): value for labels, value in samples.get("cx_nps", [])}
    if set(got) != set(expected_nps) or any(abs(got[k] - v) > 1e-9 for k, v in expected_nps.items()):
        raise SystemExit(f"WRONG: worker NPS {got} differs from the recomputation {expected_nps}")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "python": platform.python_version()}


def report(results: dict, args: argparse.Namespace) -> None:
    f = results["figures"]
    table = Table("figure", "value", title=f"cx-pipeline benchmark: {results['events']:,} events, median of {results['runs']}")
    rows = [
        ("end-to-end, batched input (events/s)", "end_to_end_eps", "{:,.0f}"),
        ("  same, counting the group join", "end_to_end_with_group_join_eps", "{:,.0f}"),
        ("ceiling: aiokafka + fastavro decode (events/s)", "ceiling_eps", "{:,.0f}"),
        ("ratio end-to-end / ceiling", "ratio_to_ceiling", "{:.2f}"),
        ("one event per message (events/s)", "single_event_eps", "{:,.0f}"),
        ("Faust no-op agent, same input (messages/s)", "faust_noop_msgs_per_s", "{:,.0f}"),
        ("ratio one-per-message / Faust no-op", "single_event_ratio_to_faust_noop", "{:.2f}"),
        ("two workers, total (events/s)", "two_workers_eps", "{:,.0f}"),
        (f"latency p50 at {args.rate:,.0f} events/s (s)", "latency_p50_s", "{:.3f}"),
        (f"latency p99 at {args.rate:,.0f} events/s (s)", "latency_p99_s", "{:.3f}"),
        ("ClickHouse sink (rows/s)", "sink_rows_per_s", "{:,.0f}"),
        ("plain clickhouse-driver insert (rows/s)", "plain_driver_rows_per_s", "{:,.0f}"),
        ("ratio sink / plain insert", "sink_ratio", "{:.2f}"),
        ("worker peak RSS (MiB)", "worker_peak_rss_mb", "{:,.0f}"),
        ("state per active customer (bytes)", "state_bytes_per_customer", "{:,.0f}"),
    ]
    for label, key, fmt in rows:
        if key in f:
            table.add_row(label, fmt.format(f[key]))
    m = results["machine"]
    console.print(table)
    console.print(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}; "
                  "broker (Tansu), ClickHouse 18.16 and the worker share the machine")
    if "profile_top" in f:
        console.print("profile, top functions by own samples:")
        for name, samples in f["profile_top"]:
            console.print(f"  {samples:6d}  {name}")
    out = args.json or ROOT / "benchmarks" / "results" / time.strftime("%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"results written to {out}")


if __name__ == "__main__":
    sys.exit(main())
