"""The broker restarting under a worker, and processes ending: `cxp demo` on a signal, a worker whose
broker is gone on SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.local.broker import LocalBroker
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
from tests.faults.relay import UNKNOWN_TOPIC_OR_PARTITION, KafkaRelay

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


RESTART_ERRORS_S = 8  # how long the relay answers commits with UNKNOWN_TOPIC_OR_PARTITION
COMMIT_FAILURE_LINES = ("OffsetCommit failed", "Error sending OffsetCommitRequest")  # aiokafka's, per partition


def test_a_broker_restart_under_load_is_one_logged_incident_with_every_failed_commit_counted(clickhouse_url,
                                                                                             tmp_path):
    """A broker restart as the worker sees it on the wire, with input flowing: every connection dropped, then
    commits answered UNKNOWN_TOPIC_OR_PARTITION for a while, as the restarted memory-mode broker answered
    until the topics were created again (aiokafka retries every 100 ms and logs a line per partition per
    retry: 5,616 lines in 37 s, while cxp_commit_errors_total said 1). A relay in front of the test's own
    Tansu does both and counts the worker's failed commits on the wire, independently of the worker.
    (A real restart of memory-mode Tansu is test_worker_rejoins_a_restarted_memory_mode_broker; what the
    worker does after it depends on when Tansu re-creates topics, so it cannot produce a failure of a
    chosen length.)"""
    relay_port = free_port()
    with LocalBroker(tmp_path / "broker", advertised_port=relay_port) as broker, \
            KafkaRelay(broker.port, relay_port) as relay:
        stage = Stage(broker.url, clickhouse_url, tmp_path)
        try:
            relay.group = f"cxp-faults-{stage.prefix}"  # the worker's consumer group (Stage.worker)
            create_topics(stage.bootstrap, stage.prefix)
            end = now_ms()
            work = stage.produce(valid_workload(simulated(seed=801, count=3000, end_ms=end - 20 * 60_000,
                                                          span_ms=10 * 60_000)), "backlog")
            worker = stage.worker().start()
            wait_until(lambda: relay.commits, lambda c: c[0] >= 1, 120, "an offset commit through the relay")
            flowing = stage.trickle(valid_workload(simulated(seed=802, count=6000, end_ms=end, span_ms=10 * 60_000)),
                                    seconds=RESTART_ERRORS_S + 8)
            flowing.wait_sent(1000)
            assert total(worker.metrics(), "cxp_commit_errors_total") == 0

            relay.commit_error = UNKNOWN_TOPIC_OR_PARTITION
            relay.drop_connections()
            time.sleep(RESTART_ERRORS_S)
            relay.commit_error = 0
            back = time.monotonic()

            counted = stage.finish_trickle(flowing, "after", work, lambda: [worker.metrics()])
            recovery_s = time.monotonic() - max(back, flowing.finished_at)
            closing = wait_until(lambda: log_records(worker.log_path, "offset commits succeed again"), bool, 60,
                                 "the worker logging that commits succeed again")
            samples = worker.metrics()
            _, failed_on_wire = relay.commits
        finally:
            stage.stop_all()

    errors = total(samples, "cxp_commit_errors_total")
    assert identity_holds(samples), outcome_totals(samples)
    assert failed_on_wire >= RESTART_ERRORS_S * 2, "expected a commit retried for the whole fault"
    assert errors == failed_on_wire
    incidents = log_records(worker.log_path, "offset commit failed")
    aiokafka_lines = [r for r in log_records(worker.log_path, *COMMIT_FAILURE_LINES)
                      if r["logger"].startswith("aiokafka")]
    assert 1 <= len(incidents) <= 2, incidents  # the drop may end one commit before the errors start
    assert len(aiokafka_lines) <= len(incidents), aiokafka_lines  # the first line of each incident
    assert len(closing) == len(incidents) and sum(r["failed_commits"] for r in closing) == errors, closing
    assert sum(r["aiokafka_lines_held_back"] for r in closing) >= errors - len(incidents)
    record_fault("6b", "broker restart seen on the wire, under input",
                 f"a relay in front of Tansu drops every connection, then answers commits UNKNOWN_TOPIC_OR_PARTITION "
                 f"for {RESTART_ERRORS_S} s", len(work.valid), counted, recovery_s,
                 "from the relay passing commits again or the last input sent, whichever came later, until the "
                 "sentinels are stored and the rows and series equal the recomputation",
                 note=f"failed commits: {failed_on_wire} on the wire, {errors:.0f} in cxp_commit_errors_total; "
                      f"commit-failure lines in the log: {len(aiokafka_lines)} from aiokafka and {len(incidents)} "
                      f"from the worker, {sum(r['aiokafka_lines_held_back'] for r in closing)} held back and "
                      f"counted in the closing line")


def log_records(path: Path, *starts: str) -> list[dict]:
    """The worker's JSON log records whose message starts with one of ``starts``."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if str(record.get("msg", "")).startswith(starts):
            records.append(record)
    return records


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
