"""Draw each dashboard as a PNG from its own queries over demo data, for the README.

    python -m deploy.grafana.render --out docs/img/

Starts its own Tansu broker, ClickHouse server, `cxp worker` and Prometheus (with the shipped recording
rules) on free loopback ports, replays two days of simulated traffic in about two minutes, then runs every
panel's queries (deploy/grafana/queries.py) and draws one PNG per dashboard row
(docs/img/<dashboard>-<row>.png), a subplot per panel placed by its gridPos and titled like it, with the
panel's unit on the value axis and event time on the time axis. It is a rendering of the queries' results, not
a Grafana screenshot. Everything it starts it stops.
"""
from __future__ import annotations

import argparse
import bisect
import json
import math
import re
import tempfile
import textwrap
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter  # noqa: E402

from deploy.grafana.generate import OUT as DASHBOARD_DIR  # noqa: E402
from deploy.grafana.queries import clickhouse_sql, promql, queries, row_picture, rows  # noqa: E402
from deploy.grafana.rules import RULES_FILE as RULES  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VARIABLES = {"tenant": ["acme"], "window": ["24h"]}
DAY_MS = 86_400_000
# Sized for the README's column (about 900 px): 1500 px wide, fonts that stay legible when scaled down.
WIDTH_IN, LINE_IN, TABLE_IN, DPI = 15, 5.0, 3.0, 100
FONT = {"suptitle": 18, "title": 15, "label": 13, "tick": 12, "legend": 11, "table": 12, "stat": 15}
STEP_S = 1.0  # range-query resolution in wall-clock seconds (the replay compresses days into minutes)
TABLE_ROWS = 8


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


class Clock:
    """Maps the wall-clock time of a sample to the event time the pipeline had reached then: the demo replays
    two days of event time in a few minutes, so a time axis in wall-clock seconds says nothing. Event time at
    wall time t = t - min over sources of cxp_event_time_lag_seconds (wall clock minus the newest event time)."""

    def __init__(self, stack: Stack, start_s: float, end_s: float, step_s: float):
        result = stack.prometheus.query_range("min(cxp_event_time_lag_seconds)", start_s, end_s, step_s)
        self.points = sorted((float(t), float(t) - float(v)) for series in result for t, v in series["values"])
        self.start_s, self.end_s = start_s, end_s

    def event_time(self, wall_s: float) -> datetime | None:
        """None before the first event."""
        if not self.points or wall_s < self.points[0][0]:
            return None
        index = bisect.bisect_right(self.points, (wall_s, math.inf)) - 1
        return datetime.fromtimestamp(self.points[index][1], timezone.utc)

    def of_row_time(self, when: datetime) -> datetime | None:
        """A ClickHouse time: one stamped by wall clock during the run (metric_snapshots) is moved to event time;
        others (event_time, order_time, ...) already are."""
        wall_s = when.replace(tzinfo=timezone.utc).timestamp()
        inside = self.start_s - 60 <= wall_s <= self.end_s + 60
        return self.event_time(wall_s) if inside else when.replace(tzinfo=timezone.utc)


class ScaledLocator(MaxNLocator):
    """Round ticks in a larger unit (every 2 hours, not every 7200 / 5 seconds)."""

    def __init__(self, size: float):
        super().__init__(nbins=5, steps=[1, 2, 2.5, 5, 10])
        self.size = size

    def tick_values(self, vmin, vmax):
        return super().tick_values(vmin / self.size, vmax / self.size) * self.size


def unit_axis(axis, unit: str, values: list[float]) -> None:
    """The panel's Grafana unit on a matplotlib axis: durations in the largest of s/min/h/d that keeps the
    values above 1, ratios in percent, per-second rates labelled so."""
    if unit == "s":
        largest = max((abs(v) for v in values), default=0)
        name, size = next(((n, s) for n, s in (("days", 86_400), ("hours", 3600), ("minutes", 60))
                           if largest >= 2 * s), ("seconds", 1))
        axis.set_major_locator(ScaledLocator(size))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / size:g}"))
        axis.set_label_text(name, fontsize=FONT["label"])
    elif unit == "percentunit":
        axis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        axis.set_label_text("percent", fontsize=FONT["label"])
    elif unit == "ops":
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.3g}"))
        axis.set_label_text("per second", fontsize=FONT["label"])
    else:
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))


def draw_panel(ax, panel: dict, stack: Stack, clock: Clock) -> None:
    # wrapped to the panel's width (about 5 characters of the title font per grid column)
    ax.set_title(textwrap.fill(panel["title"], panel["gridPos"]["w"] * 5), fontsize=FONT["title"], loc="left")
    ax.tick_params(labelsize=FONT["tick"])
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    values: list[float] = []
    instant: list[tuple[str, float]] = []  # stat and bar-gauge values of all the panel's queries, drawn together
    for query in queries({"uid": "", "panels": [panel]}):
        if query.language == "sql":
            values += draw_sql(ax, panel["type"], query, stack, clock)
        elif panel["type"] == "timeseries":
            values += draw_series(ax, query, stack, clock)
        else:
            instant += instant_values(query, stack)
    if instant:
        draw_instant(ax, panel, instant)
        values += [value for _, value in instant]
    if not values and panel["type"] != "table":
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey",
                fontsize=FONT["title"])
        ax.set_xticks([]), ax.set_yticks([])
        return
    if panel["type"] == "timeseries":
        unit_axis(ax.yaxis, unit, values)
        locator = AutoDateLocator(minticks=3, maxticks=6, tz=timezone.utc)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=timezone.utc, show_offset=False))
        ax.set_xlabel("event time (UTC)", fontsize=FONT["label"])
        ax.grid(alpha=0.3)
    elif panel["type"] == "bargauge":
        unit_axis(ax.xaxis, unit, values)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=FONT["legend"], loc="best", framealpha=0.8)


def draw_series(ax, query, stack: Stack, clock: Clock) -> list[float]:
    drawn = []
    result = stack.prometheus.query_range(promql(query.text, VARIABLES), clock.start_s, clock.end_s, STEP_S)
    for series in result:
        points = [(clock.event_time(float(t)), float(v)) for t, v in series["values"]]
        points = [(when, v) for when, v in points if when is not None and math.isfinite(v)]
        if points:
            bound = query.legend.endswith(("upper", "lower"))  # the dashed margin-of-error band
            ax.plot(*zip(*points), linewidth=1.5, linestyle="--" if bound else "-",
                    label=legend(query.legend, series["metric"]))
            drawn += [v for _, v in points]
    return drawn


def instant_values(query, stack: Stack) -> list[tuple[str, float]]:
    result = [(legend(query.legend, s["metric"]), float(s["value"][1]))
              for s in stack.prometheus.query(promql(query.text, VARIABLES))]
    return [(name, value) for name, value in result if math.isfinite(value)]


def draw_instant(ax, panel: dict, result: list[tuple[str, float]]) -> None:
    """A stat panel as text, its values mapped (ok / missing) and coloured like Grafana's; a bar gauge as bars."""
    if panel["type"] != "stat":
        ax.barh([name for name, _ in result], [value for _, value in result])
        ax.tick_params(axis="y", labelsize=FONT["legend"])
        return
    ax.axis("off")
    texts = mappings(panel)
    columns = max(1, panel["gridPos"]["w"] // 12)
    per_column = math.ceil(len(result) / columns)
    for index, (name, value) in enumerate(result):
        text, color = texts.get(value, (f"{value:g}", "black"))
        column, line = divmod(index, per_column)
        ax.text(column / columns, 1 - (line + 0.5) / max(per_column, 3), f"{name}: {text}" if name else text,
                ha="left", va="center", fontsize=FONT["stat"] if per_column < 6 else FONT["legend"],
                color=color, fontweight="bold", transform=ax.transAxes)


def mappings(panel: dict) -> dict[float, tuple[str, str]]:
    """The panel's value mappings, value -> (text, colour): the recording-rule panel's ok / missing."""
    found = {}
    for mapping in panel.get("fieldConfig", {}).get("defaults", {}).get("mappings", []):
        for value, result in mapping.get("options", {}).items():
            found[float(value)] = (result["text"], {"green": "tab:green", "red": "tab:red"}.get(result.get("color"),
                                                                                              "black"))
    return found


def draw_sql(ax, panel_type: str, query, stack: Stack, clock: Clock) -> list[float]:
    from clickhouse_driver import Client

    now_s = int(time.time())
    text = clickhouse_sql(query.text, VARIABLES, from_s=now_s - 7 * 86_400, to_s=now_s + 3600,
                          interval_s=max(1, int(clock.end_s - clock.start_s) // 100))
    client = Client(stack.clickhouse.host, port=stack.clickhouse.tcp_port)
    rows, columns = client.execute(text, with_column_types=True)
    client.disconnect()
    if not rows:
        return []
    if panel_type == "timeseries":  # (time, label..., value): one series per label combination
        series = defaultdict(list)
        for when, *labels, value in rows:
            when = clock.of_row_time(when)
            if when is not None and value is not None:
                series[" ".join(map(str, labels))].append((when, float(value)))
        for name, points in sorted(series.items()):
            ax.plot(*zip(*points), linewidth=1.5, label=str(name))
        return [value for points in series.values() for _, value in points]
    ax.axis("off")
    cells = [[f"{v:,.4g}" if isinstance(v, float) else str(v)[:32] for v in row] for row in rows[:TABLE_ROWS]]
    table = ax.table(cellText=cells, colLabels=[name for name, _ in columns], loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(FONT["table"])
    table.auto_set_column_width(list(range(len(columns))))
    table.scale(1, 1.6)
    return [1.0]


def line_height(panel: dict) -> float:
    """Inches: a table needs room for its rows only, a chart for its axes and the legend below."""
    return TABLE_IN if panel["type"] == "table" else LINE_IN * panel["gridPos"]["h"] / 8


def render_row(dashboard: dict, title: str, panels: list[dict], stack: Stack, clock: Clock, path: Path) -> None:
    """One figure per dashboard row, panels placed on the row's own 24-column grid (gridPos)."""
    top = min(p["gridPos"]["y"] for p in panels)
    lines = sorted({p["gridPos"]["y"] - top for p in panels})
    heights = {y: max(line_height(p) for p in panels if p["gridPos"]["y"] - top == y) for y in lines}
    total_in = sum(heights.values()) + 1.4
    figure = plt.figure(figsize=(WIDTH_IN, total_in))
    # fixed margins in inches (1.0 above for the titles, 0.4 below): matplotlib's layout engines cannot size tables
    grid = figure.add_gridspec(len(lines), 24, height_ratios=[heights[y] for y in lines], left=0.06, right=0.985,
                               top=1 - 1.0 / total_in, bottom=0.4 / total_in, wspace=2.2, hspace=0.55)
    for panel in panels:
        x, w, line = panel["gridPos"]["x"], panel["gridPos"]["w"], lines.index(panel["gridPos"]["y"] - top)
        draw_panel(figure.add_subplot(grid[line, x:x + w]), panel, stack, clock)
    figure.suptitle(f"{dashboard['title']} · {title}", fontsize=FONT["suptitle"], x=0.01, y=1 - 0.15 / total_in,
                    ha="left", va="top")
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def render(dashboard: dict, stack: Stack, clock: Clock, out: Path, dashboard_file: str) -> list[Path]:
    written = []
    for title, panels in rows(dashboard):
        path = out / row_picture(dashboard_file, title)
        render_row(dashboard, title, panels, stack, clock, path)
        written.append(path)
    return written


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
            clock = Clock(stack, start_s, end_s, STEP_S)
            for path in sorted(DASHBOARD_DIR.glob("*.json")):
                for out in render(json.loads(path.read_text()), stack, clock, args.out, path.name):
                    print(f"{out} ({out.stat().st_size // 1024} KB)")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
