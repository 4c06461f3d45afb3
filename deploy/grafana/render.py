"""Draw each dashboard as a PNG from its own queries over demo data, for the README.

    python -m deploy.grafana.render --out docs/img/

Starts its own Tansu broker, ClickHouse server, `cxp worker` and Prometheus (with the shipped recording
rules) on free loopback ports, replays two days of simulated traffic in about two minutes, then runs every
panel's queries (deploy/grafana/queries.py) and draws one matplotlib subplot per panel, titled like the
panel. It is a rendering of the queries' results, not a Grafana screenshot. Everything it starts it stops.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend

from deploy.grafana.generate import OUT as DASHBOARD_DIR  # noqa: E402
from deploy.grafana.queries import clickhouse_sql, promql, queries  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "recording_rules.yml"
VARIABLES = {"tenant": ["acme"], "window": ["24h"]}
DAY_MS = 86_400_000


def legend(template: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip() or "value"


class Stack:
    """Broker, ClickHouse, worker and Prometheus under one folder, fed with simulated events."""

    def __init__(self, home: Path):
        from runtime.local.broker import LocalBroker
        from runtime.local.clickhouse import ClickHouseServer
        from runtime.local.prometheus import PrometheusServer
        from runtime.local.worker import WorkerProcess, worker_env

        self.started = []
        self.broker = self._start(LocalBroker(home / "broker").start())
        (home / "clickhouse").mkdir()
        self.clickhouse = self._start(ClickHouseServer(home / "clickhouse"))
        # tight complaint SLAs, so the demo's complaints breach some (the simulator rarely misses the defaults)
        env = worker_env(self.broker.url, home, self.clickhouse.url("cx"), CXP_SNAPSHOT_INTERVAL="2",
                         CXP_COMPLAINT_SLA="urgent=5m/30m,high=10m/1h,normal=30m/3h,low=1h/6h")
        self.worker = self._start(WorkerProcess(env, home / "worker.log", cwd=home).start())
        (home / "prometheus").mkdir()
        self.prometheus = self._start(PrometheusServer(home / "prometheus", [f"127.0.0.1:{self.worker.web_port}"],
                                                       rule_files=(RULES,), job="cx-pipeline"))
        self.prometheus.wait_for('up{job="cx-pipeline"} == 1', timeout_s=60)

    def _start(self, service):
        self.started.append(service)
        return service

    def replay(self, events: int, seconds: float) -> None:
        """Two days of event time, sent at a pace that spreads them over ``seconds`` of wall-clock time."""
        from pipeline.producer import EventProducer
        from pipeline.registry import make_registry
        from pipeline.simulate import Simulator, run_simulation
        from pipeline.wire import Codec

        now_ms = int(time.time() * 1000)
        simulator = Simulator(seed=7, customers=600, start_ms=now_ms - 2 * DAY_MS, spike_at_ms=now_ms - DAY_MS // 4,
                              bad_rate=0.01)
        producer = EventProducer(self.broker.bootstrap_servers, Codec(make_registry(None)))
        sent = run_simulation(producer, simulator.events(count=events, rate=events / (2 * 86_400)), events / seconds)
        producer.close()
        self.worker.wait_for(lambda s: sum(v for _, v in s.get("cxp_events_consumed_total", [])) >= sent,
                             timeout_s=240, what=f"{sent} events consumed")
        time.sleep(5)  # a few more scrapes and rule evaluations after the last event

    def stop(self) -> None:
        for service in reversed(self.started):
            service.stop()


def draw_panel(ax, panel: dict, stack: Stack, start_s: float, end_s: float) -> None:
    ax.set_title(panel["title"], fontsize=8)
    ax.tick_params(labelsize=6)
    drawn = False
    for query in queries({"uid": "", "panels": [panel]}):
        if query.language == "promql":
            drawn |= draw_promql(ax, panel["type"], query, stack, start_s, end_s)
        else:
            drawn |= draw_sql(ax, panel["type"], query, stack, start_s, end_s)
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xticks([]), ax.set_yticks([])
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=5, loc="best")


def draw_promql(ax, panel_type: str, query, stack: Stack, start_s: float, end_s: float) -> bool:
    expr = promql(query.text, VARIABLES)
    if panel_type == "timeseries":
        result = stack.prometheus.query_range(expr, start_s, end_s, max(1.0, (end_s - start_s) / 200))
        for series in result:
            points = [(float(t) - start_s, float(v)) for t, v in series["values"] if math.isfinite(float(v))]
            if points:
                bound = query.legend.endswith(("upper", "lower"))  # the dashed margin-of-error band
                ax.plot(*zip(*points), linewidth=0.8, linestyle="--" if bound else "-",
                        label=legend(query.legend, series["metric"]))
                ax.set_xlabel("seconds of the demo run", fontsize=6)
        return any(series["values"] for series in result)
    result = [(legend(query.legend, s["metric"]), float(s["value"][1])) for s in stack.prometheus.query(expr)]
    result = sorted((name, value) for name, value in result if math.isfinite(value))
    if panel_type == "stat":
        ax.axis("off")
        ax.text(0.5, 0.5, "\n".join(f"{name}: {value:g}" for name, value in result), ha="center", va="center",
                fontsize=10, transform=ax.transAxes)
    elif result:
        ax.barh([name for name, _ in result], [value for _, value in result])
        ax.tick_params(axis="y", labelsize=5)
    return bool(result)


def draw_sql(ax, panel_type: str, query, stack: Stack, start_s: float, end_s: float) -> bool:
    from clickhouse_driver import Client

    now_s = int(time.time())
    text = clickhouse_sql(query.text, VARIABLES, from_s=now_s - 7 * 86_400, to_s=now_s + 3600,
                          interval_s=max(1, int(end_s - start_s) // 100))
    client = Client(stack.clickhouse.host, port=stack.clickhouse.tcp_port)
    rows, columns = client.execute(text, with_column_types=True)
    client.disconnect()
    if not rows:
        return False
    if panel_type == "timeseries":  # (time, label..., value): one series per label combination
        series = defaultdict(list)
        for when, *labels, value in rows:
            series[" ".join(map(str, labels))].append((when, value))
        for name, points in sorted(series.items()):
            ax.plot(*zip(*points), linewidth=0.8, label=str(name))
        ax.tick_params(axis="x", labelrotation=30)
        return True
    ax.axis("off")
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v)[:24] for v in row] for row in rows[:10]]
    table = ax.table(cellText=cells, colLabels=[name for name, _ in columns], loc="center", fontsize=5)
    table.auto_set_font_size(False)
    table.set_fontsize(5)
    return True


def render(dashboard: dict, stack: Stack, start_s: float, end_s: float, path: Path) -> None:
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    columns = 4
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(16, 2.8 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        draw_panel(ax, panel, stack, start_s, end_s)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.suptitle(f"{dashboard['title']} — a rendering of the dashboard's own queries over demo data "
                    "(matplotlib, not a Grafana screenshot)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    figure.savefig(path, dpi=72)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.grafana.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="folder for the PNG files")
    parser.add_argument("--events", type=int, default=8000, help="simulated events to replay (default 8000)")
    parser.add_argument("--seconds", type=float, default=120, help="wall-clock seconds to spread them over")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cxp-render-") as home:
        stack = Stack(Path(home))
        try:
            start_s = time.time()
            stack.replay(args.events, args.seconds)
            end_s = time.time()
            for path in sorted(DASHBOARD_DIR.glob("*.json")):
                out = args.out / f"{path.stem}.png"
                render(json.loads(path.read_text()), stack, start_s, end_s, out)
                print(f"{out} ({out.stat().st_size // 1024} KB)")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
