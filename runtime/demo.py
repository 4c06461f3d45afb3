"""``cxp demo``: broker, worker and simulator on one machine, key numbers live, a summary at the end.

First three weeks of simulated history are backfilled as fast as the worker takes them, so the 1h, 24h
and 7d windows differ, funnels, complaints and churn have a past, and weekly cohorts have ended weeks to
show retention for (the default 22 days hold at least two ended weeks after the first cohort's week);
then the same customers go live at the chosen rate while you watch. The numbers are meant to look like
a real shop's: 20,000 customers (some joining, most coming back less as the weeks pass), orders in the
customers' currencies, and complaints from about 2 % of the customers a month, whatever the event rate,
with a surge (30 times the usual pace, as an outage would bring: some 8 an hour per tenant, where the
spike test wants at least 5 in its hour) from 75 minutes before going live to the end.
Every process the demo starts it also stops. With no URLs configured, the broker is a local Tansu
and ClickHouse is embedded chdb, both under ``<data_dir>/demo`` which each run starts afresh.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from runtime.local.broker import LocalBroker
from runtime.local.metrics import histogram_quantile, scrape, total
from runtime.local.processes import die_with_parent, free_port, stop_process
from pipeline.settings import Settings

console = Console()
TABLES = ("events", "survey_responses", "funnel_progress", "orders", "carts", "dead_letters", "metric_snapshots")
DAY_MS = 86_400_000
MAX_HISTORY_MS = 60 * DAY_MS  # enough for the 30-day windows; more only makes the backfill longer
SILENT_SHARE = 0.1
CUSTOMERS = 20_000
COMPLAINT_RATE = 0.02  # complaints opened per customer and 30 days
SPIKE_LEAD_MS = 75 * 60_000  # the complaint surge starts this long before going live, and lasts to the end
SPIKE_FACTOR = 30


def _view(samples: dict, metrics_url: str, started: float, produced: int, spike_at_ms: int) -> Group:
    consumed = total(samples, "cxp_events_consumed_total")
    head = Table.grid(padding=(0, 2))
    head.add_row("metrics", metrics_url)
    head.add_row("live for", f"{time.monotonic() - started:.0f} s")
    spike_s = time.time() - spike_at_ms / 1000
    head.add_row("complaint surge", f"in {duration(-spike_s)}" if spike_s < 0 else
                 f"since {duration(spike_s)} ({SPIKE_FACTOR}x the usual pace)")
    head.add_row("produced / consumed", f"{produced:,} / {consumed:,.0f}")
    head.add_row("processed", f"{total(samples, 'cxp_events_processed_total'):,.0f}")
    head.add_row("duplicates", f"{total(samples, 'cxp_events_duplicate_total'):,.0f}")
    head.add_row("rejected", f"{total(samples, 'cxp_events_rejected_total'):,.0f}")
    head.add_row("rows written", ", ".join(f"{labels['table']}={v:,.0f}" for labels, v in samples.get("cxp_sink_rows_total", [])))
    return Group(Panel(head, title="cx-pipeline demo"), metrics_table(samples, "CX metrics, by event-time window"))


# What the live view and the summary show of each metric family: (name, series, labels shown, format, filter).
FAMILIES = (
    ("NPS", "cx_nps", ("tenant", "window"), "{:.1f}", {}),
    ("NPS ± (95 %)", "cx_nps_margin_of_error", ("tenant", "window"), "{:.1f}", {}),
    ("CSAT", "cx_csat_ratio", ("tenant", "window"), "{:.1%}", {}),
    ("CES", "cx_ces", ("tenant", "window"), "{:.2f}", {}),
    ("NPS by region", "cx_segment_nps", ("tenant", "segment", "window"), "{:.1f}", {"dimension": "region", "window": "7d"}),
    ("funnel conversion", "cx_funnel_conversion_ratio", ("tenant", "funnel", "window"), "{:.1%}", {}),
    ("active customers", "cx_active_customers", ("tenant", "window"), "{:,.0f}", {}),
    ("stickiness (DAU/MAU)", "cx_stickiness_ratio", ("tenant",), "{:.1%}", {}),
    ("churn risk", "cx_churn_risk_customers", ("tenant", "level"), "{:,.0f}", {}),
    ("complaints open", "cx_complaints_open", ("tenant", "priority"), "{:,.0f}", {}),
    ("complaints opened, last hour", "cx_complaints_opened_recent", ("tenant",), "{:,.0f}", {}),
    ("complaints expected, last hour", "cx_complaints_opened_expected", ("tenant",), "{:,.1f}", {}),
    ("complaint spike", "cx_complaint_spike", ("tenant",), "{:.0f}", {}),
    ("complaint SLA breaches", "cx_complaint_sla_breaches_total", ("tenant", "priority", "stage"), "{:,.0f}", {}),
    ("actions sent", "cx_actions_total", ("tenant", "kind"), "{:,.0f}", {}),
    ("orders", "cx_orders", ("tenant", "currency", "window"), "{:,.0f}", {"window": "24h"}),
    ("revenue", "cx_revenue", ("tenant", "currency", "window"), "{:,.2f}", {"window": "24h"}),
    ("average order value", "cx_average_order_value", ("tenant", "currency", "window"), "{:,.2f}", {"window": "24h"}),
    ("revenue per active customer", "cx_revenue_per_active_customer", ("tenant", "currency", "window"), "{:,.2f}",
     {"window": "24h"}),
    ("repeat-purchase rate", "cx_repeat_purchase_ratio", ("tenant", "window"), "{:.1%}", {}),
    ("cart abandonment", "cx_cart_abandonment_ratio", ("tenant", "window"), "{:.1%}", {}),
    ("carts open", "cx_carts_open", ("tenant",), "{:,.0f}", {}),
    ("first purchases", "cx_first_purchases", ("tenant", "window"), "{:,.0f}", {"window": "7d"}),
    ("retention, week +age", "cx_retention_ratio", ("tenant", "age"), "{:.1%}", {}),
    ("MRR", "cx_subscription_mrr", ("tenant", "plan"), "{:,.2f}", {}),
    ("paying customers", "cx_subscription_paying_customers", ("tenant", "plan"), "{:,.0f}", {}),
    ("MRR churned, 30d", "cx_subscription_mrr_movement", ("tenant",), "{:,.2f}",
     {"window": "30d", "movement": "churned"}),
    ("LTV", "cx_subscription_ltv", ("tenant",), "{:,.2f}", {}),
)


# Complaint handling percentiles, per tenant over every priority, from the worker's histograms.
PERCENTILES = (
    ("complaint first response p50 / p90", "cx_complaint_first_response_seconds"),
    ("complaint resolution p50 / p90", "cx_complaint_resolution_seconds"),
)


def duration(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def metrics_table(samples: dict, title: str) -> Table:
    table = Table("metric", "labels", "value", title=title)
    for name, series, shown, fmt, match in FAMILIES:
        rows = [(labels, value) for labels, value in samples.get(series, [])
                if all(labels.get(k) == v for k, v in match.items())]
        for labels, value in sorted(rows, key=lambda row: [row[0].get(k, "") for k in shown]):
            table.add_row(name, " ".join(labels.get(k, "") for k in shown), fmt.format(value))
    for name, histogram in PERCENTILES:
        p50, p90 = (histogram_quantile(q, samples, histogram, "tenant") for q in (0.5, 0.9))
        for tenant in sorted(p50):
            table.add_row(name, tenant, f"{duration(p50[tenant])} / {duration(p90[tenant])}")
    exact: dict[str, dict[str, float]] = defaultdict(dict)
    for labels, value in samples.get("cx_time_to_first_purchase_exact_seconds", []):
        if labels.get("window") == "7d":
            exact[labels["tenant"]][labels["percentile"]] = value
    for tenant, quantiles in sorted(exact.items()):
        if {"50", "90"} <= set(quantiles):
            table.add_row("time to first purchase p50 / p90", f"{tenant} 7d",
                          f"{duration(quantiles['50'])} / {duration(quantiles['90'])}")
    return table


def complaint_rates(samples: dict, history_ms: int) -> dict[str, tuple[int, int, float]]:
    """tenant -> (customers with a complaint opened in the last 30 days, customers active in them, that share
    as a monthly pace: scaled to 30 days when the history is shorter)."""
    def by_tenant(name: str) -> dict[str, float]:
        return {labels["tenant"]: value for labels, value in samples.get(name, []) if labels.get("window") == "30d"}

    complained, active = by_tenant("cx_complaint_customers"), by_tenant("cx_active_customers")
    days = max(min(history_ms / DAY_MS, 30.0), 1.0)
    return {tenant: (int(complained.get(tenant, 0)), int(n), complained.get(tenant, 0) / n * 30 / days)
            for tenant, n in sorted(active.items()) if n}


def _latest(samples: dict, url: str, token: Optional[str]) -> dict:
    """A new scrape for the live view, or the last one while the worker is too busy to answer in time."""
    try:
        return scrape(url, timeout=5.0, token=token)
    except OSError:  # timeouts and refused connections alike; the final scrape says if the worker is gone
        return samples


def _wait_for_metrics(url: str, worker: subprocess.Popen, log: Path, token: Optional[str],
                      timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}; see {log}")
        try:
            scrape(url, timeout=1.0, token=token)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the worker did not serve {url} within {timeout_s:.0f} s; see {log}")


def backfill(producer, events, expected: int, metrics_url: str, worker: subprocess.Popen, log: Path,
             token: Optional[str] = None, in_flight: int = 50_000) -> int:
    """Send the history as fast as the worker takes it: never more than ``in_flight`` events ahead of what
    it has consumed, so its partitions stay close together in event time (none runs days ahead, which
    would make the others' events late). Returns the events sent, once the worker has consumed them all."""
    columns = (TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    consumed, samples = 0.0, {}

    def poll() -> None:
        nonlocal consumed, samples
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode} during the backfill; see {log}")
        samples = _latest(samples, metrics_url, token)
        consumed = total(samples, "cxp_events_consumed_total")
        progress.update(taken, completed=consumed)

    with Progress(*columns, console=console) as progress:
        sent_task = progress.add_task("history sent", total=expected)
        taken = progress.add_task("history consumed", total=expected)
        sent, next_poll = 0, time.monotonic()
        for source, event in events:
            producer.send(source, event)
            sent += 1
            if sent % 1000 == 0 and time.monotonic() >= next_poll:  # a scrape costs the worker too: 2 a second
                progress.update(sent_task, completed=sent)
                poll()
                while sent - consumed > in_flight:
                    time.sleep(0.5)
                    poll()
                next_poll = time.monotonic() + 0.5
        producer.flush()
        progress.update(sent_task, total=sent, completed=sent)
        progress.update(taken, total=sent)
        poll()
        while consumed < producer.events_sent:
            time.sleep(0.3)
            poll()
    return sent


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP (as `timeout`, systemd or a CI runner send them) stop the demo like Ctrl-C does:
    the first one interrupts, later ones are ignored so the clean-up that stops every child can finish."""

    def interrupt(signum: int, frame: object) -> None:
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), interrupt)


def run_demo(settings: Settings, duration_s: float, rate: float, seed: int, bad_rate: float,
             web_port: Optional[int] = None, history_ms: int = 22 * DAY_MS, history_events: int = 150_000) -> int:
    from pipeline.kafka_security import kafka_python_config
    from pipeline.producer import EventProducer
    from pipeline.registry import make_registry
    from pipeline.simulate import Simulator, run_simulation
    from agents.web_security import metrics_token
    from runtime.topics import ensure_topics
    from pipeline.wire import Codec
    from sinks.clickhouse.backend import connect, require_embedded

    if history_ms > MAX_HISTORY_MS:
        raise RuntimeError(f"at most {MAX_HISTORY_MS // DAY_MS} days of history (--history)")
    if not settings.clickhouse.url:
        require_embedded()
    stop_on_signals()
    home = (settings.data_dir / "demo").resolve()  # absolute: the worker runs in it (Faust data folder)
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    broker: Optional[LocalBroker] = None
    worker: Optional[subprocess.Popen] = None
    try:
        if not settings.kafka.url:
            broker = LocalBroker(home).start()
            console.print(f"started a local Tansu broker at {broker.bootstrap_servers} (pid {broker.process.pid})")
        settings = settings.replace(kafka_url=settings.kafka.url or broker.url, data_dir=home,
                                    web_port=web_port or free_port(), session_timeout="6s")
        ensure_topics(settings)

        env = dict(os.environ, CXP_KAFKA_URL=settings.kafka.url, CXP_DATA_DIR=str(home),
                   CXP_WEB_PORT=str(settings.web.port), CXP_SESSION_TIMEOUT="6", CXP_SNAPSHOT_INTERVAL="5")
        if settings.clickhouse.url:
            env["CXP_CLICKHOUSE_URL"] = settings.clickhouse.url
        if history_ms:  # silent for half the history counts as inactive here (the default, 14 days, can't show)
            env.setdefault("CXP_CHURN_INACTIVITY", f"{history_ms // 3000}s")
        worker_log = home / "worker.log"
        worker = subprocess.Popen([sys.executable, "-m", "runtime.cli", "worker"], env=env, cwd=home,
                                  stdout=open(worker_log, "ab"), stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        metrics_url = f"http://{settings.web.host}:{settings.web.port}/metrics"
        token = metrics_token(settings.security)
        _wait_for_metrics(metrics_url, worker, worker_log, token)
        console.print(f"worker pid {worker.pid} serving {metrics_url}; logs in {worker_log}")

        now_ms = int(time.time() * 1000)
        # A tenth of the customers fall silent halfway through the history: churn's inactivity signal.
        # The complaint surge: from 75 minutes before going live (the detector needs a day of history to judge
        # it, so without history it starts with the live phase) to the end.
        spike_at_ms = now_ms - min(SPIKE_LEAD_MS, history_ms if history_ms >= DAY_MS else 0)
        simulator = Simulator(seed=seed, customers=CUSTOMERS, start_ms=now_ms - history_ms, bad_rate=bad_rate,
                              silent_share=SILENT_SHARE if history_ms else 0.0, silent_at_ms=now_ms - history_ms // 2,
                              complaint_rate=COMPLAINT_RATE, spike_at_ms=spike_at_ms, spike_factor=SPIKE_FACTOR,
                              spike_ms=now_ms - spike_at_ms + int(duration_s * 1000) + 60_000)
        producer = EventProducer(settings.kafka.bootstrap_servers, Codec(make_registry(settings.kafka.schema_registry_url)),
                                 topic_prefix=settings.kafka.topic_prefix, **kafka_python_config(settings.kafka))
        history = 0
        if history_ms and history_events:
            console.print(f"backfilling {history_ms / DAY_MS:g} days of history (~{history_events:,} events)")
            history = backfill(producer, simulator.events(until_ms=now_ms, rate=history_events * 1000 / history_ms),
                               history_events, metrics_url, worker, worker_log, token)
        live_ms = int(time.time() * 1000)
        simulator.skip_to(live_ms)
        stop = threading.Event()
        sim_thread = threading.Thread(
            target=run_simulation, args=(producer, simulator.events(until_ms=live_ms + int(duration_s * 1000),
                                                                    rate=rate), rate),
            kwargs={"stop": stop}, daemon=True)
        started = time.monotonic()
        sim_thread.start()
        samples: dict = {}
        try:
            with Live(console=console, refresh_per_second=2) as live:
                while sim_thread.is_alive():
                    samples = _latest(samples, metrics_url, token)
                    live.update(_view(samples, metrics_url, started, producer.events_sent, spike_at_ms))
                    time.sleep(1.0)
                producer.flush()
                deadline = time.monotonic() + 60
                while total(samples, "cxp_events_consumed_total") < producer.events_sent and time.monotonic() < deadline:
                    time.sleep(0.5)
                    samples = _latest(samples, metrics_url, token)
                    live.update(_view(samples, metrics_url, started, producer.events_sent, spike_at_ms))
        except KeyboardInterrupt:
            console.print("interrupted: stopping")
            stop.set()
        sim_thread.join()
        producer.close()
        time.sleep(settings.sink.flush_interval.seconds + 0.5)  # let the last rows reach ClickHouse
        samples = scrape(metrics_url, timeout=30.0, token=token)
        stop_process(worker)
        backend = connect(settings.clickhouse, home)
        rows = {t: backend.query(f"SELECT count() FROM {backend.database}.{t} FINAL")[0][0] for t in TABLES}
        backend.close()
        _summary(samples, rows, producer.events_sent, history, simulator.stats, history_ms)
        return 0
    finally:
        if worker is not None:
            stop_process(worker)
        if broker is not None:
            broker.stop()


def _summary(samples: dict, rows: dict[str, int], produced: int, history: int, sim_stats: dict,
             history_ms: int) -> None:
    table = Table("", "value", title="cx-pipeline demo summary")
    table.add_row("events produced", f"{produced:,}")
    table.add_row("of which history", f"{history:,}")
    table.add_row("events consumed", f"{total(samples, 'cxp_events_consumed_total'):,.0f}")
    table.add_row("processed", f"{total(samples, 'cxp_events_processed_total'):,.0f}")
    table.add_row("duplicates", f"{total(samples, 'cxp_events_duplicate_total'):,.0f}")
    reasons: dict[str, float] = defaultdict(float)
    for labels, value in samples.get("cxp_events_rejected_total", []):
        reasons[labels["reason"]] += value
    for reason, value in sorted(reasons.items()):
        table.add_row(f"rejected: {reason}", f"{value:,.0f}")
    for name, count in rows.items():
        table.add_row(f"ClickHouse rows: {name}", f"{count:,}")
    table.add_row("simulator injected", ", ".join(f"{k}={v}" for k, v in sorted(sim_stats.items())) or "-")
    for tenant, (complained, active, monthly) in complaint_rates(samples, history_ms).items():
        table.add_row(f"complaint rate {tenant}", f"{complained:,} of {active:,} active customers in 30d "
                                                  f"({monthly:.1%} a month at this pace)")
    console.print(table)
    console.print(metrics_table(samples, "CX metrics at the end, by event-time window"))
