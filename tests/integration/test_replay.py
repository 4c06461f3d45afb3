"""`cxp replay` on real parts: two JSONL histories into a Tansu broker, a `cxp worker` subprocess
consuming them into ClickHouse 18.16; counts checked against the files."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

import pytest

from runtime.local.metrics import total
from pipeline.simulate import JsonlWriter, Simulator, read_jsonl
from sinks.clickhouse.backend import NativeBackend
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration

RATE = 500.0


def test_replay_two_histories_with_progress_and_rate_limit(broker, clickhouse_url, tmp_path):
    now_ms = int(time.time() * 1000)
    files = []
    for seed, count in ((1, 900), (2, 600)):  # two systems' histories over the same two hours
        path = tmp_path / f"history-{seed}.jsonl"
        with JsonlWriter(path) as sink:
            for source, event in Simulator(seed=seed, customers=200, start_ms=now_ms - 7_200_000).events(
                    count=count, rate=count / 7200):
                sink.send(source, event)
        files.append(path)
    events = [event for path in files for _, event in read_jsonl(path)]
    assert len({e["event_id"] for e in events}) == len(events) == 1500

    prefix = f"t{uuid.uuid4().hex[:6]}."
    env = worker_env(broker.url, tmp_path, clickhouse_url, CXP_TOPIC_PREFIX=prefix, CXP_PARTITIONS="4",
                     CXP_APP_ID=f"cxp-test-{prefix}")
    worker = WorkerProcess(env, tmp_path / "worker.log", cwd=tmp_path).start()
    backend = NativeBackend(clickhouse_url)
    try:
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith("CXP_")}
        cli_env.update(CXP_KAFKA_URL=broker.url, CXP_TOPIC_PREFIX=prefix, CXP_PARTITIONS="4", COLUMNS="200")
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "runtime.cli", "replay", *map(str, files),
                                 "--rate", str(RATE)], capture_output=True, text=True, timeout=120, env=cli_env)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert re.search(r"replaying 2 file\(s\).*1500/1500", result.stderr), result.stderr
        assert "replayed 1,500 events; Kafka acknowledged 1,500" in result.stderr
        # The limit is a ceiling: the last event may not leave before (n - 1) / rate seconds.
        assert elapsed >= 1499 / RATE

        worker.wait_for(lambda s: total(s, "cxp_events_consumed_total") == 1500, what="the replay consumed")
        samples = worker.metrics()
        assert total(samples, "cxp_events_processed_total") == 1500
        for source in ("web", "chatbot", "crm", "complaints"):
            sent = sum(1 for path in files for s, _ in read_jsonl(path) if s == source)
            assert total(samples, "cxp_events_consumed_total", source=source) == sent
        deadline = time.monotonic() + 60
        while backend.query(f"SELECT count() FROM {backend.database}.events FINAL")[0][0] < 1500:
            assert time.monotonic() < deadline, "events did not reach ClickHouse"
            time.sleep(0.3)
        stored = {row[0] for row in backend.query(f"SELECT event_id FROM {backend.database}.events FINAL")}
        assert stored == {e["event_id"] for e in events}
    finally:
        backend.close()
        worker.stop()
