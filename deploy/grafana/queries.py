"""Every query of a dashboard JSON, and the query text Grafana would send once variables and macros are filled in.

Used by the integration test (every query must return data from a real Prometheus and ClickHouse) and by
render.py. ClickHouse macros are expanded the way grafana-clickhouse-datasource v4 documents them
(README "Macros", https://clickhouse.com/docs/integrations/grafana/query-builder#macros):

    $__timeFilter(c)   ->  c >= toDateTime(<from s>) AND c <= toDateTime(<to s>)
    $__fromTime        ->  toDateTime(<from s>)          $__toTime  ->  toDateTime(<to s>)
    $__interval_s      ->  <interval in whole seconds>

and Grafana's own variable formats: ``$var`` / ``${var}`` for PromQL (a regex alternation for a multi-value
selection, used with ``=~``), ``${var:singlequote}`` for SQL ('a','b').
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence


@dataclass(frozen=True)
class Query:
    dashboard: str  # uid
    panel: str  # title
    panel_type: str
    ref_id: str
    language: str  # "promql" or "sql"
    text: str
    legend: str = ""
    instant: bool = False

    @property
    def name(self) -> str:
        return f"{self.dashboard}/{self.panel}/{self.ref_id}"


def queries(dashboard: dict) -> Iterator[Query]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if "expr" in target:
                yield Query(dashboard["uid"], panel["title"], panel["type"], target["refId"], "promql", target["expr"],
                            target.get("legendFormat", ""), bool(target.get("instant")))
            else:
                yield Query(dashboard["uid"], panel["title"], panel["type"], target["refId"], "sql", target["rawSql"])


def rows(dashboard: dict) -> list[tuple[str, list[dict]]]:
    """(row title, its panels) in layout order; panels before the first row under ""."""
    found: list[tuple[str, list[dict]]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.append((panel["title"], []))
        elif found:
            found[-1][1].append(panel)
        else:
            found.append(("", [panel]))
    return [(title, panels) for title, panels in found if panels]


def row_picture(dashboard_file: str, row_title: str) -> str:
    """The file name render.py gives a row's picture: cx-overview.json, "Churn risk" -> cx-overview-churn-risk.png"""
    stem = dashboard_file.removesuffix(".json")
    return f"{stem}-{re.sub(r'[^a-z0-9]+', '-', row_title.lower()).strip('-')}.png"


def promql(expr: str, variables: Mapping[str, Sequence[str]], rate_interval: str = "1m") -> str:
    """Variables as Grafana formats them for Prometheus: several values as a regex alternation."""
    expr = expr.replace("$__rate_interval", rate_interval)
    return _variables(expr, variables, lambda values: "|".join(re.escape(v) for v in values))


def clickhouse_sql(sql: str, variables: Mapping[str, Sequence[str]], from_s: int, to_s: int, interval_s: int) -> str:
    def time_filter(match: re.Match) -> str:
        column = match.group(1).strip()
        return f"{column} >= toDateTime({from_s}) AND {column} <= toDateTime({to_s})"

    sql = re.sub(r"\$__timeFilter\(([^()]+)\)", time_filter, sql)
    sql = sql.replace("$__fromTime", f"toDateTime({from_s})").replace("$__toTime", f"toDateTime({to_s})")
    sql = sql.replace("$__interval_s", str(interval_s))
    for name, values in variables.items():
        sql = sql.replace(f"${{{name}:singlequote}}", ",".join("'" + v.replace("'", "\\'") + "'" for v in values))
    return _variables(sql, variables, ",".join)


def _variables(text: str, variables: Mapping[str, Sequence[str]], join) -> str:
    for name, values in variables.items():
        text = text.replace(f"${{{name}}}", join(values)).replace(f"${name}", join(values))
    if "$" in text:
        raise ValueError(f"a variable or macro is left in {text!r}")
    return text
