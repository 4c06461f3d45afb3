"""The reproducing queries of docs/metrics.md, run against ClickHouse and compared with a worker's gauges.

Each gauge family of a metric core has a block introduced by "Reproduces `<family>`:" in docs/metrics.md:
SQL with ``{W}`` (window in ms), ``{window}`` (its label) and ``{C}`` (the newest partition's clock)
placeholders and ``cx.`` as the database, whose result columns are the family's labels and ``value``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import pytest

from pipeline.config import Duration
from pipeline.metrics.base import MetricCore

METRICS_DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
_BLOCK = re.compile(r"Reproduces `([a-z_]+)`:\n\n```sql\n(.*?)```", re.DOTALL)
_DATABASE = re.compile(r"\bcx\.")


def reproducing_queries(text: Optional[str] = None) -> dict[str, str]:
    """family -> SQL, from docs/metrics.md (a family documented twice is an error)."""
    found: dict[str, str] = {}
    for family, sql in _BLOCK.findall(text if text is not None else METRICS_DOC.read_text()):
        assert family not in found, f"{family} has two reproducing queries"
        found[family] = sql
    return found


def families_of(cores: list[MetricCore]) -> dict[str, MetricCore]:
    """Every gauge family a core exports -> that core."""
    return {family.name: core for core in cores for family in core.describe()}


def run_query(client, sql: str, database: str, window: Optional[tuple[str, int]] = None) -> dict[tuple, float]:
    """Rows of one reproducing query as {sorted (label, value) pairs: value}, zeros dropped."""
    sql = _DATABASE.sub(f"{database}.", sql)
    if "{C}" in sql:
        (clock,), = client.execute(f"SELECT max(event_ms) FROM {database}.events")
        sql = sql.replace("{C}", str(clock))
    if window is not None:
        sql = sql.replace("{window}", window[0]).replace("{W}", str(window[1]))
    rows, columns = client.execute(sql, with_column_types=True)
    names = [name for name, _ in columns]
    assert names[-1] == "value", f"the last column of a reproducing query is `value`: {names}"
    return {tuple(sorted(zip(names[:-1], map(str, row[:-1])))): float(row[-1]) for row in rows if row[-1]}


def exported(samples: dict, family: str) -> dict[tuple, float]:
    """One family of a /metrics scrape as {sorted label pairs: value}, zeros dropped."""
    return {tuple(sorted(labels.items())): value for labels, value in samples.get(family, []) if value}


def windows_of(core: MetricCore, sql: str) -> list[Optional[tuple[str, int]]]:
    """The windows a query runs for: each of the core's windows when it has the {W} placeholder."""
    if "{W}" not in sql:
        return [None]
    return [(label, Duration(label).ms) for label in core.windows_ms]


def assert_gauges_match(samples: dict, cores: list[MetricCore], client, database: str) -> int:
    """Every gauge family of ``cores`` in ``samples`` equals its reproducing query; returns the families
    compared. A family without a query fails."""
    queries = reproducing_queries()
    families = families_of(cores)
    missing = sorted(set(families) - set(queries))
    assert not missing, f"gauge families without a reproducing query in docs/metrics.md: {missing}"
    wrong = {}
    for family, core in families.items():
        want: dict[tuple, float] = {}
        for window in windows_of(core, queries[family]):
            want.update(run_query(client, queries[family], database, window))
        got = exported(samples, family)
        differing = {key: (got.get(key), want.get(key)) for key in set(got) | set(want)
                     if key not in got or key not in want or got[key] != pytest.approx(want[key], rel=1e-9, abs=1e-9)}
        if differing:
            wrong[family] = sorted(differing.items())[:5]
    assert not wrong, "(exported, query) per label set: " + "\n".join(f"{f}: {d}" for f, d in wrong.items())
    return len(families)
