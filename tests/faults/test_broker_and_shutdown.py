"""The broker restarting under a worker, and processes ending: `cxp demo` on a signal, a worker whose
broker is gone on SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from runtime.local.metrics import scrape, total
from runtime.local.processes import free_port
from tests.faults.harness import (
    Stage,
    Workload,
    create_topics,
    descendants,
    identity_holds,
    now_ms,
    outcome_totals,
    produce,
    record_fault,
    simulated,
    still_running,
    valid_workload,
    wait_until,
    with_sentinels,
)

pytestmark = pytest.mark.integration


def test_worker_rejoins_a_restarted_memory_mode_broker(own_broker, clickhouse_url, tmp_path):
    """Tansu in memory mode keeps everything in the process: a restart loses every topic with its
    partitions and messages, the consumer groups with their members and generations, and all committed
    offsets. The new broker on the same port is empty; here the topics are recreated (as an operator
    would) and new input is produced. The worker must notice on its own: rejoin the group, read the new
    partitions from offset 0 (its old positions point past their end), and show the outage in /metrics
    while it lasts (failed or stalled commits, or a growing unacknowledged age). What the old broker held but the worker had not yet consumed is gone with it."""
    stage = Stage(own_broker.url, clickhouse_url, tmp_path)
    try:
        create_topics(stage.bootstrap, stage.prefix)
        lost_with_broker = valid_workload(simulated(seed=601, count=15_000, end_ms=now_ms() - 10 * 60_000,
                                                    span_ms=10 * 60_000))
        produce(stage.bootstrap, stage.prefix, lost_with_broker.messages)
        worker = stage.worker().start()
        wait_until(lambda: stage.tables.scalar("SELECT count() FROM {db}.events"), lambda n: n >= 1000, 120,
                   "the worker mid-stream")
        own_broker.stop()
        # The outage must show in /metrics while it lasts: as failed (or stalled) offset commits, or, when
        # the worker holds records it cannot make durable (their output-topic messages wait for the broker)
        # and so has nothing to commit, as the age of the oldest unacknowledged record. A worker that had
        # already stored and committed all it consumed (lag 0, nothing unacked) has nothing left to try
        # and nothing to show: that happened in one run, the worker being fast enough for the input.
        at_stop = worker.metrics()
        if total(at_stop, "cxp_consumer_lag_records") > 0 or total(at_stop, "cxp_oldest_unacked_seconds") > 0:
            wait_until(worker.metrics, lambda s: total(s, "cxp_commit_errors_total") > 0
                       or total(s, "cxp_oldest_unacked_seconds") >= 10, 60, "the stall visible while the broker is down")

        own_broker.start()  # same port, empty
        back = time.monotonic()
        create_topics(stage.bootstrap, stage.prefix)
        after = with_sentinels(valid_workload(simulated(seed=602, count=3000, end_ms=now_ms())), "after")
        produce(stage.bootstrap, stage.prefix, after.messages)
        stage.wait_drained(["after"], timeout_s=180)

        stored = {row[0] for row in stage.tables.query("SELECT DISTINCT event_id FROM {db}.events")}
        assert stored <= lost_with_broker.event_ids | after.event_ids
        assert after.event_ids <= stored
        survived = Workload([(s, e) for s, e in lost_with_broker.valid if e["event_id"] in stored] + after.valid)
        counted = stage.wait_exact(survived, lambda: [worker.metrics()])
        recovery_s = time.monotonic() - back
        samples = worker.metrics()
        assert identity_holds(samples), outcome_totals(samples)
        gone = len(lost_with_broker.valid) - (len(survived.valid) - len(after.valid))
        record_fault("6", "broker restart (memory mode)",
                     "Tansu stopped mid-stream, an empty one started on the same port, topics recreated, new input",
                     len(lost_with_broker.valid) + len(after.valid), counted, recovery_s,
                     "from the new broker accepting connections (topics then recreated and the new input sent) "
                     "until its sentinels are stored and the rows and series equal the recomputation of what was stored",
                     note=f"{gone:,} of the {len(lost_with_broker.valid):,} events sent before the restart were "
                          f"still unconsumed and went with the broker (memory mode); lost counts what the worker "
                          f"could still read; failed commits counted {total(samples, 'cxp_commit_errors_total'):.0f}")
    finally:
        stage.stop_all()


def test_worker_ends_within_the_shutdown_timeout_when_its_broker_is_gone(own_broker, clickhouse_url, tmp_path):
    shutdown_timeout_s, margin_s = 5, 10  # the margin covers interpreter exit, not waiting on the broker
    stage = Stage(own_broker.url, clickhouse_url, tmp_path)
    try:
        worker = stage.worker(CXP_SHUTDOWN_TIMEOUT=str(shutdown_timeout_s)).start()
        up = stage.produce(valid_workload(simulated(seed=701, count=500, end_ms=now_ms())), "up")
        stage.wait_drained(["up"])
        own_broker.stop()
        os.kill(worker.process.pid, signal.SIGTERM)
        signalled = time.monotonic()
        try:
            worker.process.wait(shutdown_timeout_s + margin_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker still running {shutdown_timeout_s + margin_s} s after SIGTERM:\n{worker.log_tail()}")
        record_fault("7b", "SIGTERM, broker gone", f"broker stopped, then SIGTERM (shutdown timeout {shutdown_timeout_s} s)",
                     len(up.valid), None, time.monotonic() - signalled, "from SIGTERM until the worker exited",
                     note=f"exit code {worker.process.returncode}")
    finally:
        stage.stop_all()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_demo_stops_every_process_it_started(signum, tmp_path):
    """Run `cxp demo` with the local embedded setup (Tansu + chdb), signal it mid-run, and check by PID in
    /proc that every process it started (broker, worker, and theirs) is gone once it has exited."""
    web_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("CXP_KAFKA_URL", "CXP_CLICKHOUSE_URL")}
    env["CXP_DATA_DIR"] = str(tmp_path / "data")
    with open(tmp_path / "demo.log", "wb") as log:
        demo = subprocess.Popen([sys.executable, "-m", "runtime.cli", "demo", "--duration", "60", "--rate", "200",
                                 "--web-port", str(web_port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    started: dict[int, int] = {}
    try:
        wait_until(lambda: scrape(f"http://127.0.0.1:{web_port}/metrics", timeout=1.0), bool, 120,
                   "the demo's worker serving /metrics")
        started = descendants(demo.pid)
        assert len(started) >= 2, f"expected a broker and a worker under the demo, found {started}"
        os.kill(demo.pid, signum)
        signalled = time.monotonic()
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"cxp demo still running 60 s after {signum.name}:\n{(tmp_path / 'demo.log').read_text()[-3000:]}")
        exit_s = time.monotonic() - signalled
        assert still_running(started) == [], f"left behind after {signum.name}: {still_running(started)}"
        record_fault("7a", f"`cxp demo` signalled ({signum.name})", f"{signum.name} mid-run (embedded Tansu + chdb)",
                     None, None, exit_s, f"from {signum.name} until the demo exited",
                     note=f"{len(started)} processes started by the demo, none alive after it exited")
    finally:
        for pid in still_running(started) + ([demo.pid] if demo.poll() is None else []):
            os.kill(pid, signal.SIGKILL)
        demo.wait()
