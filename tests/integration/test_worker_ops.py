"""The worker as operators meet it, on embedded chdb: the HTTP collector, /metrics checked by promtool
and scraped by a real Prometheus, and a restart with replayed input that must not double any count."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from pipeline.simulate import Simulator
from sinks.clickhouse.backend import ChdbBackend
from tests.services.prometheus import PrometheusServer
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def consumed(samples: dict) -> float:
    return sum(v for _, v in samples.get("cxp_events_consumed_total", []))


def by_label(samples: dict, name: str, key: str) -> dict:
    return {labels[key]: v for labels, v in samples.get(name, [])}


@pytest.fixture(scope="module")
def chdb_worker(broker, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("chdb-worker")
    prefix = f"o{uuid.uuid4().hex[:6]}."
    env = worker_env(broker.url, data_dir, None, CXP_TOPIC_PREFIX=prefix, CXP_APP_ID=f"cxp-ops-{prefix}")
    worker = WorkerProcess(env, data_dir / "worker.log").start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def events():
    now = int(time.time() * 1000)
    sim = Simulator(seed=9, customers=100, start_ms=now - 3_600_000)
    return [(s, e) for s, e in sim.events(count=600, rate=600 / 3600) if e["event_time"] <= now]


def send_all(worker: WorkerProcess, events) -> None:
    for source in ("web", "chatbot", "crm", "complaints"):
        batch = [e for s, e in events if s == source]
        status, body = post(f"http://127.0.0.1:{worker.web_port}/v1/events/{source}", json.dumps({"events": batch}).encode())
        assert status == 202, body
        assert body["accepted"] == len(batch)


def test_collector_accepts_json_and_rejects_bad_input_with_4xx(chdb_worker, events):
    base = f"http://127.0.0.1:{chdb_worker.web_port}/v1/events"
    send_all(chdb_worker, events)
    samples = chdb_worker.wait_for(lambda s: consumed(s) >= len(events), what="collector events consumed")
    assert consumed(samples) == len(events)
    assert sum(by_label(samples, "cxp_events_processed_total", "source").values()) == len(events)

    status, body = post(f"{base}/web", b"{not json")
    assert status == 400 and "JSON" in body["error"]
    status, body = post(f"{base}/fax", b"{}")
    assert status == 404 and "unknown source" in body["error"]
    status, body = post(f"{base}/web", json.dumps({"events": [{"event_id": "x", "event_type": "teleport"}]}).encode())
    assert status == 422 and body["details"][0]["index"] == 0
    survey = {"event_id": "s1", "event_type": "survey_response", "event_time": int(time.time() * 1000),
              "customer_id": "c1", "survey": {"kind": "NPS", "score": 12}}
    status, body = post(f"{base}/crm", json.dumps(survey).encode())
    assert status == 422 and body["details"][0]["reason"] == "invalid_value"
    status, body = post(f"{base}/web", b"[" + b" " * 2_000_000 + b"]")
    assert status == 413
    # rejected requests produced nothing
    time.sleep(1.0)
    assert consumed(chdb_worker.metrics()) == len(events)


def test_metrics_pass_promtool(chdb_worker, events, tmp_path):
    chdb_worker.wait_for(lambda s: "cx_nps" in s, what="cx_nps exported")
    assert shutil.which("promtool"), "promtool is not installed: apt-get install prometheus"
    text = urllib.request.urlopen(chdb_worker.metrics_url, timeout=5).read()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"cx_nps{" in text and b"cx_nps_margin_of_error{" in text and b"cxp_events_consumed_total{" in text


def test_real_prometheus_scrapes_the_worker(chdb_worker, events, tmp_path):
    rules = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "recording_rules.yml"
    server = PrometheusServer(tmp_path, [f"127.0.0.1:{chdb_worker.web_port}"], rule_files=(rules,))
    try:
        nps = server.wait_for('cx_nps{window="24h"}')
        assert {r["metric"]["tenant"] for r in nps} and all("customer_id" not in r["metric"] for r in nps)
        worker_values = {(l["tenant"], l["window"]): v for l, v in chdb_worker.metrics()["cx_nps"]}
        for r in nps:
            assert float(r["value"][1]) == pytest.approx(worker_values[(r["metric"]["tenant"], "24h")])
        total = server.wait_for("sum(cxp_events_consumed_total)")
        assert float(total[0]["value"][1]) == len(events)
        # the shipped recording rule, computed from summed counts, agrees with the worker's own NPS
        fleet = server.wait_for('tenant_window:cx_nps:score{window="24h"}')
        for r in fleet:
            assert float(r["value"][1]) == pytest.approx(worker_values[(r["metric"]["tenant"], "24h")])
    finally:
        server.stop()


def test_restart_and_replay_do_not_double_counts(chdb_worker, events):
    before = {(l["tenant"], l["window"]): v for l, v in chdb_worker.metrics()["cx_nps"]}
    chdb_worker.stop()
    chdb_worker.start()  # same group, same data folder: state is rebuilt from ClickHouse
    restored = chdb_worker.wait_for(lambda s: "cx_nps" in s, what="NPS restored after restart")
    assert {(l["tenant"], l["window"]): v for l, v in restored["cx_nps"]} == before

    send_all(chdb_worker, events)  # the same events again
    samples = chdb_worker.wait_for(lambda s: consumed(s) >= len(events), what="replayed events consumed")
    assert sum(by_label(samples, "cxp_events_duplicate_total", "source").values()) == len(events)
    assert sum(by_label(samples, "cxp_events_processed_total", "source").values()) == 0
    assert {(l["tenant"], l["window"]): v for l, v in samples["cx_nps"]} == before

    chdb_worker.stop()  # chdb allows one process per folder: read it once the worker is gone
    backend = ChdbBackend(chdb_worker.env["CXP_DATA_DIR"] + "/clickhouse")
    try:
        assert backend.query("SELECT count() FROM cx.events FINAL")[0][0] == len(events)
        assert backend.query("SELECT uniqExact(event_id) FROM cx.events")[0][0] == len(events)
        n_surveys = sum(1 for _, e in events if e.get("survey"))
        assert backend.query("SELECT count() FROM cx.survey_responses FINAL")[0][0] == n_surveys
    finally:
        backend.close()
