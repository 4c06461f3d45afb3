"""ComplaintSpike on a real Prometheus, with the shipped rule files, scraping a real worker, and sending
to a real Alertmanager routed by the production profile's alertmanager.yml.

Three days of steady complaint openings (six an hour, event times compressed into seconds of wall
time) give the detector its baseline; the alert must stay silent on them, then fire once a burst of
openings lands in the current hour, and reach the CX team's receiver, not the pager. Input is written
with plain kafka-python and fastavro. Alertmanager's Slack and PagerDuty receivers are swapped for
webhooks to a local recorder, keeping the routing tree, grouping and inhibition as shipped.
"""
from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from kafka import KafkaProducer

from runtime.local.alertmanager import AlertmanagerServer, WebhookReceiver
from pipeline.partitioner import event_key
from tests.integration.test_pipeline import avro
from tests.services.prometheus import PrometheusServer
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
ALERTMANAGER = Path(__file__).resolve().parents[2] / "deploy" / "production" / "alertmanager.yml"


def opening(n: int, at: int) -> dict:
    return {"event_id": f"open-{n}", "event_type": "opened", "event_time": at, "tenant": "acme",
            "customer_id": f"cust-{n % 97:03d}", "session_id": None, "attributes": {}, "complaint_id": f"cmp-{n}",
            "priority": "normal", "category": "billing", "origin_channel": "web", "agent_id": None}


def send(bootstrap: str, topic: str, events: list[dict]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for e in events:
        producer.send(topic, avro("ComplaintEvent", e), key=event_key("complaints", e))
    producer.close()


def firing(prometheus: PrometheusServer, name: str) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{prometheus.port}/api/v1/alerts", timeout=5) as response:
        alerts = json.load(response)["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]


def routed_to(receiver: WebhookReceiver) -> dict:
    """The shipped Alertmanager config with every receiver a webhook named after it, and short group waits."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    config["global"] = {"resolve_timeout": config["global"]["resolve_timeout"]}  # no Slack URL file here
    config["route"].update(group_wait="1s", group_interval="2s")
    config["receivers"] = [{"name": r["name"], "webhook_configs": [{"url": receiver.url(r["name"])}]}
                           for r in config["receivers"]]
    return config


def test_complaint_spike_fires_on_a_burst_and_not_on_healthy_traffic(broker, clickhouse_url, tmp_path):
    now = int(time.time() * 1000)
    start = now - 3 * DAY
    healthy = [opening(n, start + n * 10 * MIN) for n in range(3 * 24 * 6) if start + n * 10 * MIN < now - MIN]
    burst = [opening(10_000 + n, now - 30_000 + n) for n in range(40)]
    prefix = f"a{uuid.uuid4().hex[:6]}."
    env = worker_env(broker.url, tmp_path, clickhouse_url, CXP_TOPIC_PREFIX=prefix, CXP_APP_ID=f"cxp-alert-{prefix}",
                     CXP_PARTITIONS="4")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    (tmp_path / "prom").mkdir()
    (tmp_path / "am").mkdir()
    webhooks = WebhookReceiver()
    alertmanager = AlertmanagerServer(tmp_path / "am", routed_to(webhooks))
    # 2 s, not 1 s: a scrape must finish within the interval, and on a loaded machine /metrics can take longer
    prometheus = PrometheusServer(tmp_path / "prom", [f"127.0.0.1:{worker.web_port}"], scrape_interval="2s",
                                  rule_files=(RULES / "recording_rules.yml", RULES / "alert_rules.yml"),
                                  alertmanagers=(alertmanager.address,))
    try:
        send(broker.bootstrap_servers, f"{prefix}events.complaints", healthy)
        worker.wait_for(lambda s: sum(v for _, v in s.get("cx_complaints_opened_total", [])) >= len(healthy),
                        what="the healthy history counted")
        # a rule evaluation has seen the healthy state: the recording rule over the flag reads 0
        prometheus.wait_for('tenant:cx_complaint_spike:max{tenant="acme"} == 0', timeout_s=120)
        prometheus.wait_for('cx_complaints_opened_expected{tenant="acme"} > 5', timeout_s=120)
        assert not firing(prometheus, "ComplaintSpike")
        burst_sent = time.time()
        send(broker.bootstrap_servers, f"{prefix}events.complaints", burst)
        deadline = time.monotonic() + 120
        alerts = []
        while not alerts and time.monotonic() < deadline:
            alerts = firing(prometheus, "ComplaintSpike")
            time.sleep(0.5)
        assert [a["labels"]["tenant"] for a in alerts] == ["acme"], worker.log_tail()
        # never fired, nor was pending, while only healthy traffic had been sent
        assert not prometheus.query(f'count_over_time(ALERTS{{alertname="ComplaintSpike"}}[1h] @ {burst_sent:.3f})')
        assert prometheus.query(f'count_over_time(cx_complaint_spike{{tenant="acme"}}[1h] @ {burst_sent:.3f})')
        assert prometheus.query(f'max_over_time(cx_complaint_spike{{tenant="acme"}}[1h] @ {burst_sent:.3f}) == 0')
        # Alertmanager groups it and notifies the CX team's receiver with the summary and runbook link
        deadline = time.monotonic() + 60
        while not webhooks.alerts("cx-alerts") and time.monotonic() < deadline:
            time.sleep(0.5)
        notified = webhooks.alerts("cx-alerts")
        assert [(a["labels"]["alertname"], a["labels"]["tenant"], a["status"]) for a in notified] == \
            [("ComplaintSpike", "acme", "firing")], alertmanager.log_tail()
        assert "acme" in notified[0]["annotations"]["summary"]
        assert notified[0]["annotations"]["runbook_url"].endswith("RUNBOOK.md#complaintspike")
        assert not webhooks.alerts("pager") and not webhooks.alerts("pipeline-ops")  # a warning for the CX team
    finally:
        prometheus.stop()
        alertmanager.stop()
        webhooks.stop()
        worker.stop()
