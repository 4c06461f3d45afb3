"""``cxp``: the one console command. Every subcommand has --help; settings come from CXP_* variables
and an optional YAML file (--config or CXP_CONFIG_FILE); the flags below override both."""
from __future__ import annotations

import argparse
import heapq
import json
import os
import shlex
import shutil
import sys
import textwrap
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.config import ENV_PREFIX, duration_ms
from pipeline.settings import Settings, SettingsError
from pipeline.validate import REASONS
from runtime.gc_policy import WORKER_GC

console = Console(stderr=True)


def load_settings(args: argparse.Namespace, **overrides) -> Settings:
    """The settings, or exit 2 with one line naming each invalid variable (never its value: it may be a secret)."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "config", None):
        values["config_file"] = args.config
    try:
        return Settings(**values)
    except (SettingsError, FileNotFoundError) as exc:
        console.print(f"[red]invalid configuration:[/red] {escape(str(exc))}", soft_wrap=True)
        raise SystemExit(2) from None


def log_to_stderr(settings: Settings) -> None:
    """Structured logs (CXP_LOG_LEVEL, CXP_LOG_FORMAT) from here on, so waits and retries before a
    worker's own start-up are logged too."""
    import logging.config

    from runtime.logs import logging_config

    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))


def cmd_worker(args: argparse.Namespace) -> int:
    from runtime.app import build_app
    from runtime.logs import logging_config
    from sinks.clickhouse.backend import require_embedded
    from agents.web_security import log_start_up

    BoundedWorker = _bounded_worker_class()

    settings = load_settings(args, kafka_url=args.kafka_url, clickhouse_url=args.clickhouse_url, web_port=args.web_port)
    if not settings.kafka.url:
        console.print("[red]no Kafka configured:[/red] set CXP_KAFKA_URL=kafka://host:9092 or pass --kafka-url "
                      "(`cxp demo` starts a local broker for you)")
        return 2
    log_to_stderr(settings)
    if not settings.clickhouse.url:
        require_embedded()
    if args.uvloop:
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    WORKER_GC.start()
    app = build_app(settings)
    worker = BoundedWorker(app, loglevel=settings.log_level, shutdown_timeout=settings.shutdown_timeout.seconds,
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
    from runtime.topics import ensure_topics

    settings = load_settings(args, kafka_url=args.kafka_url, partitions=args.partitions)
    log_to_stderr(settings)
    for topic, count in sorted(ensure_topics(settings).items()):
        console.print(f"{topic}: {count} partitions")
    return 0


def _producer(settings: Settings):
    from pipeline.kafka_security import kafka_python_config
    from pipeline.producer import EventProducer
    from pipeline.registry import make_registry
    from runtime.topics import ensure_topics
    from pipeline.wire import Codec

    log_to_stderr(settings)
    ensure_topics(settings)
    kafka = settings.kafka
    return EventProducer(kafka.bootstrap_servers, Codec(make_registry(kafka.schema_registry_url)),
                         topic_prefix=kafka.topic_prefix, **kafka_python_config(kafka))


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


def cmd_replay(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.simulate import read_jsonl, run_simulation

    settings = load_settings(args, kafka_url=args.kafka_url)
    if args.rate < 0:
        console.print("[red]--rate must be 0 (as fast as possible) or positive[/red]")
        return 2
    total = 0
    for path in args.files:
        with open(path, "rb") as lines:
            total += sum(1 for line in lines if line.strip())
    # Each history is in event-time order; merged, several (e.g. one per source system) stay in that order.
    events = heapq.merge(*(read_jsonl(path) for path in args.files), key=lambda item: item[1]["event_time"])
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:,.0f} events/s"), TimeRemainingColumn())
    with _producer(settings) as producer, Progress(*columns, console=console) as progress:
        task = progress.add_task(f"replaying {len(args.files)} file(s)", total=total, rate=0.0)
        started = time.monotonic()

        def report(sent: int) -> None:
            progress.update(task, completed=sent, rate=sent / max(time.monotonic() - started, 1e-6))

        sent = run_simulation(producer, events, args.rate or None, progress=report)
    console.print(f"replayed {sent:,} events; Kafka acknowledged {producer.events_sent:,}")
    return 0


def cmd_deadletters(args: argparse.Namespace) -> int:
    from runtime import deadletters
    from sinks.clickhouse.backend import connect, require_embedded

    settings = load_settings(args, kafka_url=args.kafka_url, clickhouse_url=args.clickhouse_url)
    if not settings.clickhouse.url:
        require_embedded()
    try:
        selection = deadletters.Selection(args.reason, args.topic, args.partition, args.from_offset, args.to_offset)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    backend = connect(settings.clickhouse, settings.data_dir)
    try:
        if args.redrive:
            return _redrive(deadletters.fetch(backend, selection), settings)
        out = Console()
        table = Table("reason", "topic", "dead letters", title="dead letters (dead_letters FINAL)")
        for reason, topic, count in deadletters.counts(backend, selection):
            table.add_row(reason, topic, f"{count:,}")
        out.print(table)
        if args.examples:
            recent = Table("received", "where", "reason", "error", title=f"latest {args.examples}")
            for letter in deadletters.fetch(backend, selection, limit=args.examples, newest_first=True):
                received = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(letter.received_ms / 1000))
                recent.add_row(received, escape(letter.where()), escape(letter.reason), escape(letter.error))
            out.print(recent)
        return 0
    finally:
        backend.close()


def _redrive(letters: list, settings: Settings) -> int:
    """Re-drive what can be; exit code 1 if any selected dead letter was refused."""
    from runtime.deadletters import redrive

    refused = [letter for letter in letters if letter.truncated]
    for letter in refused:
        console.print(f"[yellow]refused[/yellow] {escape(letter.where())} ({letter.reason}): {letter.truncated}; "
                      "send it again from its source system")
    chosen = [letter for letter in letters if not letter.truncated]
    if chosen:
        if not settings.kafka.url:
            console.print("[red]no Kafka configured:[/red] set CXP_KAFKA_URL=kafka://host:9092 or pass --kafka-url")
            return 2
        sent = redrive(chosen, settings.kafka.bootstrap_servers)
        console.print(f"re-drove {sent:,} dead letters to their source topics")
    elif not refused:
        console.print("no dead letters match")
    return 1 if refused else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from runtime.demo import run_demo

    settings = load_settings(args, kafka_url=args.kafka_url, clickhouse_url=args.clickhouse_url)
    try:
        history_ms = duration_ms(args.history)
    except ValueError as exc:
        console.print(f"[red]--history:[/red] {exc}")
        return 2
    return run_demo(settings, duration_s=args.duration, rate=args.rate, seed=args.seed, bad_rate=args.bad_rate,
                    web_port=args.web_port, history_ms=history_ms, history_events=args.history_events)


def cmd_config(args: argparse.Namespace) -> int:
    from pipeline.secret_values import MASK, display_settings

    settings = load_settings(args)
    if args.check:
        for variable, suggestion in unknown_variables(os.environ):
            hint = f"; did you mean {suggestion}?" if suggestion else ""
            console.print(f"[yellow]warning:[/yellow] {variable} is not a cxp setting; the settings ignore it{hint}",
                          soft_wrap=True)
        console.print(f"configuration valid: {len(settings.flat())} settings", soft_wrap=True)
        return 0
    shown = display_settings(settings)  # secrets masked
    values = {variable: None if value is None else shown[variable] for variable, (value, _) in settings.flat().items()}
    if args.format == "json":
        print(json.dumps(values, indent=2))
    elif args.format == "env":
        for variable, value in values.items():
            if value is None:
                print(f"# {variable} is unset")
            elif MASK in value:  # sourcing a masked secret would set it to the mask
                print(f"# {variable}={value}  (secret, not shown)")
            else:
                print(f"{variable}={shlex.quote(value)}")
    else:
        print(config_text(settings, values, shutil.get_terminal_size((100, 24)).columns))
    return 0


def config_text(settings: Settings, values: dict[str, Optional[str]], width: int) -> str:
    """Every setting by section: ``CXP_NAME = value`` and its meaning wrapped below, within ``width`` columns."""
    index = settings.variable_index()
    sections = settings.sections()
    width = max(width, 40)
    groups: dict[str, list[str]] = {}
    for variable, (_, description) in settings.flat().items():
        field = index[variable[len(ENV_PREFIX):].lower()][0]
        value = "(unset)" if values[variable] is None else values[variable] or "(empty)"
        lines = textwrap.wrap(f"{variable} = {value}", width, initial_indent="  ", subsequent_indent="      ",
                              break_on_hyphens=False)
        lines += textwrap.wrap(description or "", width, initial_indent="      ", subsequent_indent="      ")
        groups.setdefault(field if field in sections else "general", []).extend(lines)
    return "\n\n".join(f"[{name}]\n" + "\n".join(lines) for name, lines in groups.items())


def unknown_variables(environment: dict[str, str]) -> list[tuple[str, Optional[str]]]:
    """CXP_ variables in the environment that are not settings (likely typos, which the settings ignore),
    each with the closest setting's name or None."""
    known = {ENV_PREFIX + name.upper() for name in Settings.variable_index()}
    return [(name, Settings.closest_variable(name))
            for name in sorted(environment) if name.startswith(ENV_PREFIX) and name not in known]


def cmd_pii_id(args: argparse.Namespace) -> int:
    from pipeline.pii import Pseudonymiser

    pseudonymiser = Pseudonymiser.from_settings(load_settings(args).security)
    if pseudonymiser is None:
        console.print("[red]PII mode is off:[/red] set CXP_PII_KEY_FILE (or CXP_PII_KEY) to the workers' key")
        return 2
    for identifier in args.ids:
        print(f"{identifier}\t{pseudonymiser.of(identifier)}")
    return 0


def package_version() -> str:
    try:
        return version("cx-pipeline")
    except PackageNotFoundError:
        return "unknown (cx-pipeline is not installed: pip install .)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxp", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cxp {package_version()}")
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
                       description="Backfills three weeks of simulated history, then goes live at --rate with a "
                       "complaint spike a little later. With nothing configured, starts a local Tansu broker and "
                       "embedded ClickHouse under the data folder; pointed at Kafka/ClickHouse URLs, uses those.")
    kafka(p)
    p.add_argument("--clickhouse-url", help="use this ClickHouse server instead of embedded chdb")
    p.add_argument("--history", default="22d", help="simulated history backfilled before going live (default 22d: "
                   "retention needs ended weeks; at most 60d; 0: none)")
    p.add_argument("--history-events", type=int, default=150_000, help="events in that history (default 150000)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run live (default 60; Ctrl-C stops early)")
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

    p = sub.add_parser("replay", aliases=["produce"],
                       help="push JSONL histories (from `cxp simulate --jsonl`) into Kafka, with progress and a rate limit",
                       description="Backfill: the events of one or more JSON-lines files, merged by event_time, "
                       "through the producer SDK (batched per partition). `produce` is an alias.")
    kafka(p)
    p.add_argument("files", type=Path, nargs="+", metavar="FILE", help="JSON lines: {\"source\": ..., \"event\": {...}}")
    p.add_argument("--rate", type=float, default=0.0, help="events per second (default 0: as fast as possible)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("deadletters", help="list dead letters by reason; re-drive chosen ones to their source topic",
                       description="Reads the dead_letters table (FINAL). Without --redrive: counts by reason and "
                       "topic, and the latest examples. With --redrive: sends the selected dead letters' original "
                       "bytes and key back to the partition they came from; event ids are kept, so re-driving "
                       "twice doubles nothing. Truncated dead letters are refused. With embedded ClickHouse, "
                       "run it while the worker is stopped (one process per chdb folder).")
    kafka(p)
    p.add_argument("--clickhouse-url", help="ClickHouse server (default: CXP_CLICKHOUSE_URL, else embedded chdb)")
    p.add_argument("--reason", help=f"only this reason code ({', '.join(REASONS)})")
    p.add_argument("--topic", help="only dead letters from this source topic")
    p.add_argument("--partition", type=int, help="only from this partition of the source topic")
    p.add_argument("--from-offset", type=int, help="only from this source offset on")
    p.add_argument("--to-offset", type=int, help="only up to this source offset (inclusive)")
    p.add_argument("--examples", type=int, default=10, help="latest dead letters shown with their error (default 10)")
    p.add_argument("--redrive", action="store_true", help="re-drive the selected dead letters instead of listing")
    p.set_defaults(func=cmd_deadletters)

    p = sub.add_parser("topics", help="create the cx topics (idempotent) and show their partition counts")
    kafka(p)
    p.add_argument("--partitions", type=int, help="partitions per topic when creating (default: CXP_PARTITIONS)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("pii-id", help="print the pseudonym that PII mode stores for each given id",
                       description="With the workers' PII key configured: the pseudonym of each customer, anonymous, "
                       "session or account id, to look that customer up in ClickHouse or the output topics.")
    p.add_argument("ids", nargs="+", help="raw ids, e.g. cust-000042")
    p.set_defaults(func=cmd_pii_id)

    p = sub.add_parser("config", help="show every setting, its variable, current value and meaning; --check validates",
                       description="Every setting with its current value (secrets masked) and meaning. Every command "
                       "validates the settings first and exits 2 naming the first invalid variable; --check does "
                       "only that, and also warns about CXP_ variables that are not settings (typos).")
    p.add_argument("--check", action="store_true",
                   help="validate the settings: exit 0 if valid, else 2 with the variable and the fix")
    p.add_argument("--format", choices=("table", "json", "env"), default="table",
                   help="table (default: by section, wrapped to the terminal), json (variable -> value, null when "
                   "unset) or env (VARIABLE=value lines; unset and secret ones commented out)")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)  # pastable: no markup, no wrapping
        return 1


if __name__ == "__main__":
    sys.exit(main())
