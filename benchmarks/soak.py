"""Soak: a worker's resident memory over a long stream, and what each event in the horizon costs.

Starts a Tansu broker, a ClickHouse server and one `cxp worker` on loopback, feeds it simulator events at
a steady rate with the project's producer SDK, and samples the worker's RSS (/proc/PID/status) as the
events go through. The slope of RSS over processed events, after a warm-up, is the memory each event
adds while it is inside the dedup horizon and the metric cores' windows; the worker's own dedup figure
(bytes per remembered id) is measured separately by benchmarks/dedup_memory.py.

    python -m benchmarks.soak --events 600000 --rate 5000
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

from rich.console import Console

from runtime.local.broker import LocalBroker
from runtime.local.clickhouse import ClickHouseServer
from runtime.local.worker import WorkerProcess, worker_env
from pipeline.producer import EventProducer
from pipeline.registry import BundledRegistry
from pipeline.simulate import Simulator, run_simulation
from pipeline.wire import Codec

console = Console(stderr=True)


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def processed(worker: WorkerProcess) -> float:
    return sum(v for _, v in worker.metrics().get("cxp_events_processed_total", []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=600_000, help="events to send (default 600k)")
    parser.add_argument("--rate", type=float, default=5000, help="events per second (default 5000)")
    parser.add_argument("--customers", type=int, default=50_000, help="simulated customers (default 50k)")
    parser.add_argument("--warmup", type=float, default=0.2, help="share of the events before the first sample")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cxp-soak-") as tmp:
        work = Path(tmp)
        (work / "clickhouse").mkdir()
        clickhouse = ClickHouseServer(work / "clickhouse")
        broker = LocalBroker(work / "broker").start()
        prefix = f"soak{uuid.uuid4().hex[:6]}."
        env = worker_env(broker.url, work / "worker", clickhouse.url("cx_soak"), CXP_TOPIC_PREFIX=prefix,
                         CXP_APP_ID=f"soak-{uuid.uuid4().hex[:6]}", CXP_SINK_FLUSH_INTERVAL="1.0")
        (work / "worker").mkdir()
        worker = WorkerProcess(env, work / "worker.log").start()
        try:
            start_ms = int(time.time() * 1000) - int(args.events / args.rate * 1000)
            simulator = Simulator(seed=5, customers=args.customers, start_ms=start_ms)
            producer = EventProducer(broker.bootstrap_servers, Codec(BundledRegistry()), topic_prefix=prefix)
            sender = threading.Thread(target=run_simulation, daemon=True,
                                      args=(producer, simulator.events(count=args.events, rate=args.rate), args.rate))
            sender.start()
            samples: list[tuple[float, int]] = []  # (events processed, RSS bytes)
            while True:
                done = processed(worker)
                samples.append((done, rss_bytes(worker.process.pid)))
                if not sender.is_alive() and done >= args.events * 0.999:
                    break
                console.print(f"processed {done:,.0f} of {args.events:,}, RSS {samples[-1][1] / 2**20:,.0f} MiB", end="\r")
                time.sleep(2.0)
            producer.close()
        finally:
            worker.stop()
            broker.stop()
            clickhouse.stop()

    warm = [s for s in samples if s[0] >= args.warmup * args.events]
    (n0, r0), (n1, r1) = warm[0], warm[-1]
    figures = {
        "events": args.events, "rate": args.rate, "customers": args.customers,
        "rss_start_mib": round(r0 / 2**20, 1), "rss_end_mib": round(r1 / 2**20, 1),
        "events_between": n1 - n0, "bytes_per_event": round((r1 - r0) / max(n1 - n0, 1), 1),
        "peak_rss_mib": round(max(r for _, r in samples) / 2**20, 1),
    }
    console.print()
    console.print(figures)
    if args.out:
        args.out.write_text(json.dumps({"figures": figures, "samples": samples}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
