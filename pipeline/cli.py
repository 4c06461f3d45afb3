"""``cxp``: the one console command. Every subcommand has --help; settings come from CXP_* variables
and an optional YAML file (--config or CXP_CONFIG_FILE); the flags below override both."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.settings import Settings

console = Console(stderr=True)


def load_settings(args: argparse.Namespace, **overrides) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "config", None):
        values["config_file"] = args.config
    try:
        return Settings(**values)
    except ValidationError as exc:  # named by variable, without the values given: they may be secrets
        problems = "; ".join(f"CXP_{'_'.join(map(str, error['loc'])).upper()}: {error['msg']}"
                             for error in exc.errors(include_input=False, include_url=False))
        console.print(f"[red]invalid configuration:[/red] {escape(problems)}")
        raise SystemExit(2) from None
    except FileNotFoundError as exc:
        console.print(f"[red]invalid configuration:[/red] {exc}")
        raise SystemExit(2) from None


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.app import build_app
    from pipeline.logs import logging_config
    from pipeline.web_security import log_start_up

    BoundedWorker = _bounded_worker_class()

    settings = load_settings(args, kafka_url=args.kafka_url, clickhouse_url=args.clickhouse_url, web_port=args.web_port)
    if not settings.kafka_url:
        console.print("[red]no Kafka configured:[/red] set CXP_KAFKA_URL=kafka://host:9092 or pass --kafka-url "
                      "(`cxp demo` starts a local broker for you)")
        return 2
    if args.uvloop:
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = build_app(settings)
    worker = BoundedWorker(app, loglevel=settings.log_level, shutdown_timeout=settings.shutdown_timeout,
                           logging_config=logging_config(settings.log_level, settings.log_format),
                           on_logging_ready=lambda: log_start_up(settings))
    worker.execute_from_commandline()
    return 0


def _bounded_worker_class():
    import os
    import threading

    import faust

    class BoundedWorker(faust.Worker):
        """A Faust worker that exits within ``shutdown_timeout`` seconds of SIGTERM/SIGINT, even when the
        broker or ClickHouse is unreachable and Faust's own shutdown would wait on them. What is not
        durable by then is not acked, so it is consumed again after the restart."""

        def __init__(self, *args, shutdown_timeout: float, on_logging_ready, **kwargs):
            super().__init__(*args, **kwargs)
            self._shutdown_timeout = shutdown_timeout
            self._on_logging_ready = on_logging_ready

        async def on_execute(self) -> None:  # runs once logging is configured, before the app starts
            self._on_logging_ready()
            await super().on_execute()

        def _start_watchdog(self) -> None:
            timer = threading.Timer(self._shutdown_timeout, lambda: os._exit(75))
            timer.daemon = True
            timer.start()

        def _on_sigterm(self) -> None:
            self._start_watchdog()
            super()._on_sigterm()

        def _on_sigint(self) -> None:
            self._start_watchdog()
            super()._on_sigint()

    return BoundedWorker


def cmd_topics(args: argparse.Namespace) -> int:
    from pipeline.topics import ensure_topics

    settings = load_settings(args, kafka_url=args.kafka_url, partitions=args.partitions)
    for topic, count in sorted(ensure_topics(settings).items()):
        console.print(f"{topic}: {count} partitions")
    return 0


def _producer(settings: Settings):
    from pipeline.kafka_security import kafka_python_config
    from pipeline.producer import EventProducer
    from pipeline.registry import make_registry
    from pipeline.topics import ensure_topics
    from pipeline.wire import Codec

    ensure_topics(settings)
    return EventProducer(settings.bootstrap_servers, Codec(make_registry(settings.schema_registry_url)),
                         topic_prefix=settings.topic_prefix, **kafka_python_config(settings))


def cmd_simulate(args: argparse.Namespace) -> int:
    from pipeline.simulate import JsonlWriter, Simulator, run_simulation

    start_ms = int(time.time() * 1000)
    spike_at = start_ms + int(args.spike_at * 1000) if args.spike_at is not None else None
    simulator = Simulator(seed=args.seed, customers=args.customers, start_ms=start_ms, spike_at_ms=spike_at,
                          bad_rate=args.bad_rate)
    events = simulator.events(count=args.count, rate=args.rate)
    if args.jsonl:
        with JsonlWriter(args.jsonl) as sink:
            run_simulation(sink, events, None, duration_s=args.duration)
    else:
        settings = load_settings(args, kafka_url=args.kafka_url)
        with _producer(settings) as sink:
            run_simulation(sink, events, args.rate, duration_s=args.duration)
    console.print(f"simulated: {dict(simulator.stats)}")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from pipeline.simulate import read_jsonl

    settings = load_settings(args, kafka_url=args.kafka_url)
    total = sum(1 for _ in open(args.file, "rb"))
    with _producer(settings) as producer, Progress(console=console) as progress:
        task = progress.add_task(f"producing {args.file}", total=total)
        for i, (source, event) in enumerate(read_jsonl(args.file), 1):
            producer.send(source, event)
            if i % 1000 == 0:
                progress.update(task, completed=i)
        producer.flush()
        progress.update(task, completed=total)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    settings = load_settings(args, kafka_url=args.kafka_url, clickhouse_url=args.clickhouse_url)
    return run_demo(settings, duration_s=args.duration, rate=args.rate, seed=args.seed, bad_rate=args.bad_rate,
                    web_port=args.web_port)


def cmd_config(args: argparse.Namespace) -> int:
    from pipeline.secret_values import display_settings

    settings = load_settings(args)
    table = Table("variable", "value", "meaning")
    shown = display_settings(settings)  # secrets masked
    for name, field in Settings.model_fields.items():
        table.add_row(f"CXP_{name.upper()}", shown[name], field.description)
    Console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxp", description=__doc__)
    parser.add_argument("--config", type=Path, help="YAML settings file (same keys as the CXP_* variables, lower case)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def kafka(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kafka-url", help="kafka://host:port (default: CXP_KAFKA_URL)")

    p = sub.add_parser("worker", help="run a pipeline worker (Faust): consume, compute, write to ClickHouse, serve /metrics",
                       description="Run one worker. Start N of them with distinct --web-port values to scale by partitions.")
    kafka(p)
    p.add_argument("--clickhouse-url", help="clickhouse://user:pass@host:9000/cx (default: embedded chdb)")
    p.add_argument("--web-port", type=int, help="port for /metrics and the HTTP collector")
    p.add_argument("--no-uvloop", dest="uvloop", action="store_false", help="use the standard asyncio loop")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("demo", help="run broker, worker and simulator together and show the numbers live",
                       description="With nothing configured, starts a local Tansu broker and embedded ClickHouse "
                       "under the data folder; pointed at Kafka/ClickHouse URLs, uses those.")
    kafka(p)
    p.add_argument("--clickhouse-url", help="use this ClickHouse server instead of embedded chdb")
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60; Ctrl-C stops early)")
    p.add_argument("--rate", type=float, default=2000.0, help="simulated events per second (default 2000)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    p.add_argument("--bad-rate", type=float, default=0.01, help="fraction of deliberately bad or duplicate events")
    p.add_argument("--web-port", type=int, help="worker web port (default: a free port)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="generate a realistic, seeded event mix into Kafka or a JSONL file",
                       description="Customers through the purchase funnel, surveys, chatbot, CRM and complaints, "
                       "with an optional complaint spike and deliberately bad records.")
    kafka(p)
    p.add_argument("--rate", type=float, default=1000.0, help="events per second (default 1000)")
    p.add_argument("--duration", type=float, help="seconds to run (default: until --count or Ctrl-C)")
    p.add_argument("--count", type=int, help="number of events")
    p.add_argument("--seed", type=int, default=1, help="random seed: same seed, same events")
    p.add_argument("--customers", type=int, default=2000, help="simulated customers (default 2000)")
    p.add_argument("--spike-at", type=float, help="seconds from start at which a complaint spike begins")
    p.add_argument("--bad-rate", type=float, default=0.0, help="fraction of bad or duplicate events (default 0)")
    p.add_argument("--jsonl", type=Path, help="write JSON lines to this file instead of producing")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("produce", help="replay a JSONL file (from `cxp simulate --jsonl`) into Kafka, with progress")
    kafka(p)
    p.add_argument("file", type=Path, help="JSON lines: {\"source\": ..., \"event\": {...}}")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("topics", help="create the cx topics (idempotent) and show their partition counts")
    kafka(p)
    p.add_argument("--partitions", type=int, help="partitions per topic when creating (default: CXP_PARTITIONS)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("config", help="show every setting, its variable, current value and meaning")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
