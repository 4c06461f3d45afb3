"""`cxp deadletters` on real parts: Tansu broker, `cxp worker` subprocess, ClickHouse 18.16 server.

Events dated a few seconds ahead of the wall clock are dead-lettered as future_timestamp by a worker
allowing 1 s of skew; once that time has come (the cause is gone), they are re-driven, twice. The
second re-drive must change nothing: the same rows in ``events`` (FINAL and unmerged), the same NPS.
A dead letter cut to deadletter_max_bytes is refused. Events of a tenant outside CXP_TENANTS are
dead-lettered as unknown_tenant and appear in no metric. Input comes from a non-project writer
(kafka-python + plain fastavro).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections import defaultdict

import pytest
from kafka import KafkaProducer

from runtime.local.metrics import total
from pipeline.partitioner import event_key, partition_for
from pipeline.simulate import Simulator
from sinks.clickhouse.backend import NativeBackend
from tests.foreign import avro
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration

PARTITIONS = 4
N_VALID, N_FUTURE, N_UNKNOWN_TENANT = 40, 12, 3
TENANTS = "acme,globex"  # the simulator's tenants
AHEAD_MS = 12_000  # how far ahead of the wall clock the future events are dated


def nps_surveys(count: int, now_ms: int) -> list[dict]:
    """CRM NPS answers from the simulator, re-dated to the last ten minutes, with fresh ids."""
    sim = Simulator(seed=3, customers=50, start_ms=now_ms - 3_600_000)
    found = [e for s, e in sim.events(count=20_000, rate=10.0)
             if s == "crm" and e["survey"] and e["survey"]["kind"] == "NPS"][:count]
    assert len(found) == count
    return [dict(e, event_id=str(uuid.uuid4()), event_time=now_ms - 600_000 + i * 1000) for i, e in enumerate(found)]


def nps(events: list[dict]) -> dict[str, float]:
    scores: dict[str, list[int]] = defaultdict(list)
    for e in events:
        scores[e["tenant"]].append(e["survey"]["score"])
    return {t: 100.0 * (sum(s >= 9 for s in v) - sum(s <= 6 for s in v)) / len(v) for t, v in scores.items()}


def cxp(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def wait_rows(backend: NativeBackend, sql: str, expected: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (count := backend.query(sql)[0][0]) != expected:
        assert time.monotonic() < deadline, f"{sql}: {count} rows, expected {expected}"
        time.sleep(0.3)


def test_list_and_redrive_twice_doubles_nothing(broker, clickhouse_url, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:6]}."
    crm_topic = f"{prefix}events.crm"
    env = worker_env(broker.url, tmp_path, clickhouse_url, CXP_TOPIC_PREFIX=prefix, CXP_PARTITIONS=str(PARTITIONS),
                     CXP_APP_ID=f"cxp-test-{prefix}", CXP_MAX_FUTURE_SKEW="1s", CXP_DEADLETTER_MAX_BYTES="1024",
                     CXP_TENANTS=TENANTS)
    worker = WorkerProcess(env, tmp_path / "worker.log", cwd=tmp_path).start()
    backend = NativeBackend(clickhouse_url)
    db = backend.database
    try:
        now_ms = int(time.time() * 1000)
        surveys = nps_surveys(N_VALID + N_FUTURE + 2, now_ms)
        valid, future = surveys[:N_VALID], surveys[N_VALID:N_VALID + N_FUTURE]
        ahead = now_ms + AHEAD_MS
        future = [dict(e, event_time=ahead) for e in future]
        oversized = dict(surveys[-2], event_time=ahead, survey=dict(surveys[-2]["survey"], comment="x" * 2000))
        bad_score = dict(surveys[-1], survey=dict(surveys[-1]["survey"], score=11))
        typos = [dict(e, event_id=str(uuid.uuid4()), tenant="acme-typo") for e in valid[:N_UNKNOWN_TENANT]]
        assert {e["tenant"] for e in valid} == set(TENANTS.split(","))

        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
        for e in valid + [oversized, bad_score] + typos:
            producer.send(crm_topic, avro("CrmEvent", e), key=event_key("crm", e))
        batch_key = event_key("crm", future[0])
        producer.send(crm_topic, avro("CrmEventBatch", {"events": future}), key=batch_key,
                      partition=partition_for(batch_key, PARTITIONS))
        producer.flush()
        consumed = N_VALID + N_FUTURE + 2 + N_UNKNOWN_TENANT
        worker.wait_for(lambda s: total(s, "cxp_events_consumed_total") == consumed, what="all consumed")
        wait_rows(backend, f"SELECT count() FROM {db}.dead_letters FINAL", N_FUTURE + 2 + N_UNKNOWN_TENANT)
        assert total(worker.metrics(), "cxp_events_rejected_total", reason="unknown_tenant") == N_UNKNOWN_TENANT

        cli_env = {k: v for k, v in os.environ.items() if not k.startswith("CXP_")}
        cli_env.update(CXP_KAFKA_URL=broker.url, CXP_CLICKHOUSE_URL=clickhouse_url, CXP_TOPIC_PREFIX=prefix,
                       CXP_DATA_DIR=str(tmp_path), COLUMNS="250")
        # every dead letter among the examples: letters of one fetch share their received second, so the
        # default latest 10 of these 17 is any 10 of them
        listing = cxp(cli_env, "deadletters", "--examples", str(N_FUTURE + 2 + N_UNKNOWN_TENANT))
        assert listing.returncode == 0, listing.stderr
        assert re.search(rf"future_timestamp\s*│\s*{re.escape(crm_topic)}\s*│\s*{N_FUTURE + 1}\s", listing.stdout)
        assert re.search(rf"invalid_value\s*│\s*{re.escape(crm_topic)}\s*│\s*1\s", listing.stdout)
        assert re.search(rf"unknown_tenant\s*│\s*{re.escape(crm_topic)}\s*│\s*{N_UNKNOWN_TENANT}\s", listing.stdout)
        assert "NPS score 11 outside 0..10" in listing.stdout and f"{crm_topic}[" in listing.stdout
        assert "truncated to 1024]" in listing.stdout  # the error text as the worker wrote it

        while time.time() * 1000 < ahead:  # the cause goes away: their time has come
            time.sleep(0.2)
        first = cxp(cli_env, "deadletters", "--reason", "future_timestamp", "--redrive")
        assert first.returncode == 1, first.stderr  # 1: one was refused
        assert f"re-drove {N_FUTURE} dead letters" in first.stderr
        assert "refused" in first.stderr and "truncated to 1024 of its" in first.stderr
        worker.wait_for(lambda s: total(s, "cxp_events_processed_total") == N_VALID + N_FUTURE, what="re-driven")
        wait_rows(backend, f"SELECT count() FROM {db}.events", N_VALID + N_FUTURE)
        once = worker.metrics()
        nps_once = {labels["tenant"]: v for labels, v in once["cx_nps"] if labels["window"] == "1h"}
        expected = nps(valid + future)
        assert nps_once.keys() == expected.keys()
        for tenant, value in expected.items():
            assert nps_once[tenant] == pytest.approx(value)

        second = cxp(cli_env, "deadletters", "--reason", "future_timestamp", "--redrive")
        assert second.returncode == 1 and f"re-drove {N_FUTURE} dead letters" in second.stderr
        # A marker behind the re-driven events in their partition: once it is in ClickHouse, they were handled.
        marker = dict(valid[0], event_id=str(uuid.uuid4()), event_type="contact_logged", survey=None,
                      event_time=int(time.time() * 1000))
        producer.send(crm_topic, avro("CrmEvent", marker), key=batch_key, partition=partition_for(batch_key, PARTITIONS))
        producer.close()
        wait_rows(backend, f"SELECT count() FROM {db}.events WHERE event_id = '{marker['event_id']}'", 1)
        twice = worker.metrics()

        assert total(twice, "cxp_events_processed_total") == N_VALID + N_FUTURE + 1
        assert total(twice, "cxp_events_duplicate_total") == N_FUTURE
        assert total(twice, "cxp_events_rejected_total") == N_FUTURE + 2 + N_UNKNOWN_TENANT
        assert all(labels["tenant"] != "acme-typo" for family, samples in twice.items() if family.startswith("cx_")
                   for labels, _ in samples)
        assert {labels["tenant"]: v for labels, v in twice["cx_nps"] if labels["window"] == "1h"} == nps_once
        for table in ("events", "survey_responses"):
            final, unmerged = backend.query(f"SELECT (SELECT count() FROM {db}.{table} FINAL), "
                                            f"(SELECT count() FROM {db}.{table})")[0]
            assert final == unmerged, table
        assert backend.query(f"SELECT count() FROM {db}.events")[0][0] == N_VALID + N_FUTURE + 1
        assert backend.query(f"SELECT count() FROM {db}.survey_responses")[0][0] == N_VALID + N_FUTURE
    finally:
        backend.close()
        worker.stop()
