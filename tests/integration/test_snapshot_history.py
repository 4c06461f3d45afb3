"""The dashboard's NPS history query on the real ClickHouse server, over metric_snapshots rows of two
workers that split the partitions: per interval it must give the NPS of one worker owning them all."""
from __future__ import annotations

import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agents.snapshots import snapshot_rows
from deploy.grafana.queries import clickhouse_sql, queries
from sinks.clickhouse.backend import NativeBackend
from sinks.clickhouse.sink import ClickHouseSink
from tests.unit.test_processor import NOW, events, records  # noqa: F401 - events: fixture
from tests.unit.test_snapshots import worker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OVERVIEW = json.loads((REPO / "deploy/grafana/dashboards/cx-overview.json").read_text())
HISTORY = next(q for q in queries(OVERVIEW) if q.name.startswith("cx-overview/NPS history"))
T = 1_700_000_040  # the start of a minute: the rows below fall in two 60 s intervals


def test_nps_history_weights_each_workers_last_value_by_its_answers(clickhouse_url, events):
    batches = records(events, batched=False)
    whole, low, high = worker(range(4)), worker([0, 1]), worker([2, 3])
    whole.process(batches, NOW)
    low.process([r for r in batches[:len(batches) // 2] if r.partition < 2], NOW)
    earlier = snapshot_rows(low, T + 5)  # superseded within the interval by the same worker's later row
    low.process([r for r in batches[len(batches) // 2:] if r.partition < 2], NOW)
    high.process([r for r in batches if r.partition >= 2], NOW)
    stale = [row._replace(value=-100.0) for row in snapshot_rows(whole, T - 60)]  # the interval before
    rows = stale + earlier + snapshot_rows(low, T + 30) + snapshot_rows(high, T + 12)

    backend = NativeBackend(clickhouse_url)
    backend.create_tables()
    ClickHouseSink(backend).insert("metric_snapshots", rows)
    window = "24h"
    text = clickhouse_sql(HISTORY.text, {"tenant": ["acme", "globex"], "window": [window]},
                          from_s=T - 3600, to_s=T + 3600, interval_s=60)
    zone = ZoneInfo(backend.query("SELECT timezone()")[0][0])  # naive datetimes come in the server's zone
    got = [(int(time.replace(tzinfo=zone).timestamp()), tenant, nps)
           for time, tenant, _, nps in backend.query(re.sub(r"\bcx\.", f"{backend.database}.", text))]

    expected = {r.tenant: r.value for r in snapshot_rows(whole, T) if r.metric == "nps" and r.window == window}
    assert expected.keys() == {"acme", "globex"}
    last = {tenant: nps for time, tenant, nps in got if time == T}
    assert last.keys() == expected.keys()
    for tenant, value in expected.items():
        assert last[tenant] == pytest.approx(value, abs=1e-9), tenant
    assert {tenant: nps for time, tenant, nps in got if time == T - 60} == \
        {tenant: -100.0 for tenant in expected}
