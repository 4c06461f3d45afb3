"""Cluster mode on a real replicated ClickHouse 18.16: ZooKeeper plus one shard of two replicas, and one
of three (the production profile's shape).

A `cxp worker` writes through replica 1 (CXP_CLICKHOUSE_CLUSTER set); it is stopped and a second worker
in the same consumer group, connected to replica 2 only, rebuilds the partitions from ClickHouse
through the Distributed tables and gets the whole input again. The input is written by a foreign
client (kafka-python + plain fastavro). Oracles: a plain recomputation of the input (the event ids,
NPS per tenant), each replica's own `_local` tables, and the first worker's gauges.

Replica outages (the quorum is a majority of the replicas, docs/configuration.md "ClickHouse cluster"):
with two replicas one down refuses inserts until it returns; with three a worker that knows every
server (CXP_CLICKHOUSE_ALT_HOSTS) keeps writing and even starts with the replica its URL names down, and
a replica that lacks an acknowledged write refuses reads rather than answer short. Grafana's balancer
(deploy/production/clickhouse/haproxy.cfg, the real HAProxy) keeps answering with a replica stopped.
"""
from __future__ import annotations

import random
import re
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from clickhouse_driver.errors import ServerException
from kafka import KafkaProducer

from pipeline.partitioner import event_key
from pipeline.simulate import Simulator
from runtime.local.processes import free_port
from sinks.clickhouse.backend import NativeBackend
from tests.faults.harness import wait_until
from tests.foreign import RECORD, avro
from tests.services.clickhouse_cluster import Balancer
from tests.services.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.integration

N_EVENTS = 2000
HOUR = 3_600_000
# The documented queries (pipeline/tables.py), unchanged in cluster mode.
NPS_PER_TENANT = ("SELECT tenant, 100 * (countIf(score >= 9) - countIf(score <= 6)) / count() "
                  "FROM {db}.survey_responses FINAL WHERE kind = 'NPS' GROUP BY tenant")
EVENTS_FINAL = "SELECT count() FROM {db}.events FINAL"


class Input:
    """A seeded simulator run over the last three hours plus resent duplicates, and its recomputation."""

    def __init__(self, now_ms: int):
        sim = Simulator(seed=23, customers=300, start_ms=now_ms - 3 * HOUR)
        self.valid = [(s, e) for s, e in sim.events(count=N_EVENTS, rate=N_EVENTS / (3 * 3600))
                      if e["event_time"] <= now_ms]
        self.duplicates = random.Random(23).sample(self.valid, 150)

    def sent(self) -> int:
        return len(self.valid) + len(self.duplicates)

    def event_ids(self) -> set[str]:
        return {e["event_id"] for _, e in self.valid}

    def answers(self) -> int:
        return sum(1 for _, e in self.valid if e.get("survey"))

    def nps_per_tenant(self) -> dict[str, float]:
        scores: dict[str, list[int]] = defaultdict(list)
        for _, e in self.valid:
            if e.get("survey") and e["survey"]["kind"] == "NPS":
                scores[e["tenant"]].append(e["survey"]["score"])
        return {t: 100.0 * (sum(s >= 9 for s in v) - sum(s <= 6 for s in v)) / len(v) for t, v in scores.items()}

    def produce(self, bootstrap: str, prefix: str) -> None:
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        for source, event in self.valid + self.duplicates:
            producer.send(f"{prefix}events.{source}", avro(RECORD[source], event), key=event_key(source, event))
        producer.flush()
        producer.close()


def total(samples: dict, name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == m for k, m in match.items()))


def drained(worker: WorkerProcess, consumed: int) -> dict:
    """Until ``consumed`` records are in and every one of them is durable (nothing left unacked)."""
    return worker.wait_for(
        lambda s: total(s, "cxp_events_consumed_total") >= consumed
        and total(s, "cxp_sink_rows_total", table="events") >= total(s, "cxp_events_processed_total")
        and s.get("cxp_oldest_unacked_seconds", [({}, 1)])[0][1] == 0,
        timeout_s=120, what=f"{consumed} records consumed and durable")


def final_counts(backend: NativeBackend, db: str) -> tuple[int, int]:
    return (backend.query(EVENTS_FINAL.format(db=db))[0][0],
            backend.query(f"SELECT count() FROM {db}.survey_responses FINAL")[0][0])


@pytest.fixture(scope="module")
def cluster_run(broker, clickhouse_cluster, tmp_path_factory):
    inp = Input(int(time.time() * 1000))
    first_replica, second_replica = clickhouse_cluster.servers
    prefix, db = f"cl{uuid.uuid4().hex[:6]}.", f"cx_cluster_{uuid.uuid4().hex[:8]}"
    common = dict(CXP_CLICKHOUSE_CLUSTER=clickhouse_cluster.name, CXP_TOPIC_PREFIX=prefix, CXP_PARTITIONS="4",
                  CXP_APP_ID=f"cxp-cluster-{prefix}")

    def worker_on(server, name: str) -> WorkerProcess:
        data_dir = tmp_path_factory.mktemp(name)
        return WorkerProcess(worker_env(broker.url, data_dir, server.url(db), **common), data_dir / "worker.log")

    readers = [NativeBackend(server.url(db)) for server in clickhouse_cluster.servers]
    writer = worker_on(first_replica, "worker-r1").start()
    try:
        inp.produce(broker.bootstrap_servers, prefix)
        first = drained(writer, inp.sent())
    finally:
        writer.stop()
    before_replay = final_counts(readers[0], db)
    resumer = worker_on(second_replica, "worker-r2").start()
    try:
        restored = resumer.wait_for(lambda s: "cx_nps" in s, what="partitions rebuilt from replica 2")
        inp.produce(broker.bootstrap_servers, prefix)  # the whole input again
        replayed = drained(resumer, inp.sent())
    finally:
        resumer.stop()
    yield {"input": inp, "db": db, "readers": readers, "first": first, "restored": restored, "replayed": replayed,
           "before_replay": before_replay}
    for reader in readers:
        reader.close()


def test_both_replicas_hold_every_row(cluster_run):
    inp, db = cluster_run["input"], cluster_run["db"]
    for reader in cluster_run["readers"]:
        assert {i for i, in reader.query(f"SELECT event_id FROM {db}.events_local FINAL")} == inp.event_ids()
        assert reader.query(f"SELECT count() FROM {db}.survey_responses_local FINAL")[0][0] == inp.answers()


def test_documented_queries_through_either_replica_equal_the_recomputation(cluster_run):
    inp, db = cluster_run["input"], cluster_run["db"]
    expected = inp.nps_per_tenant()
    assert len(expected) == 2, "the input must hold NPS answers of both tenants"
    for reader in cluster_run["readers"]:
        assert reader.query(EVENTS_FINAL.format(db=db))[0][0] == len(inp.valid)
        assert {t: pytest.approx(v) for t, v in reader.query(NPS_PER_TENANT.format(db=db))} == expected


def test_replay_after_restore_from_the_other_replica_changes_nothing(cluster_run):
    """The second worker's dedup ids and survey state come from replica 2 through the Distributed
    tables (FINAL included): every replayed record is a duplicate and every gauge is as before."""
    inp, first, restored, replayed = (cluster_run[k] for k in ("input", "first", "restored", "replayed"))
    assert total(first, "cxp_events_processed_total") == len(inp.valid)
    assert total(first, "cxp_events_duplicate_total") == len(inp.duplicates)
    assert total(replayed, "cxp_events_duplicate_total") == inp.sent()
    assert total(replayed, "cxp_events_processed_total") == 0
    gauges = {(labels["tenant"], labels["window"]): v for labels, v in first["cx_nps"]}
    for samples in (restored, replayed):
        assert {(labels["tenant"], labels["window"]): v for labels, v in samples["cx_nps"]} == gauges
    expected = (len(inp.valid), inp.answers())
    assert cluster_run["before_replay"] == expected
    for reader in cluster_run["readers"]:
        assert final_counts(reader, cluster_run["db"]) == expected


def test_an_acknowledged_insert_is_already_on_the_other_replica(clickhouse_cluster):
    """Inserts wait for a majority of the replicas, of two both: the moment one returns, replica 2 has its
    rows (with asynchronous replication alone it usually would not yet)."""
    db = f"cx_quorum_{uuid.uuid4().hex[:8]}"
    first_replica, second_replica = clickhouse_cluster.servers
    writer = NativeBackend(first_replica.url(db), cluster=clickhouse_cluster.name)
    writer.create_tables()
    other = NativeBackend(second_replica.url(db))
    try:
        for batch in range(5):
            ids = [f"q{batch}-{i}" for i in range(100)]
            writer.insert("events", ("event_id", "tenant", "event_time", "event_ms"),
                          (ids, ["acme"] * 100, [1_700_000_000] * 100, [1_700_000_000_000] * 100))
            assert other.query(f"SELECT count() FROM {db}.events_local WHERE event_id LIKE 'q{batch}-%'")[0][0] == 100
    finally:
        writer.close()
        other.close()


# ------------------------------------------------------------------------------------- replica outages

TOO_FEW_LIVE_REPLICAS, REPLICA_IS_NOT_IN_QUORUM = 285, 289  # ClickHouse error codes
EVENT_COLUMNS = ("event_id", "tenant", "event_time", "event_ms")


def address(server) -> str:
    return f"{server.host}:{server.tcp_port}"


def event_rows(prefix: str, n: int = 100) -> tuple:
    return ([f"{prefix}-{i}" for i in range(n)], ["acme"] * n, [1_700_000_000] * n, [1_700_000_000_000] * n)


def stored_once(server, db: str, table: str = "events") -> tuple[int, int, int]:
    """A replica's own rows: count(), count() FINAL and uniqExact(event_id); all equal when none is doubled."""
    reader = NativeBackend(server.url(db))
    try:
        return reader.query(f"SELECT (SELECT count() FROM {db}.{table}_local), "
                            f"(SELECT count() FROM {db}.{table}_local FINAL), "
                            f"(SELECT uniqExact(event_id) FROM {db}.{table}_local)")[0]
    finally:
        reader.close()


def test_a_backend_that_knows_fewer_servers_than_the_cluster_says_so(clickhouse_cluster, caplog):
    first_replica, second_replica = clickhouse_cluster.servers
    for alt_hosts, warned in (((), True), ((address(second_replica),), False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="cxp.clickhouse"):
            NativeBackend(first_replica.url(), cluster=clickhouse_cluster.name, alt_hosts=alt_hosts).close()
        messages = [r.getMessage() for r in caplog.records if r.name == "cxp.clickhouse"]
        assert bool(messages) == warned, messages
        assert all("knows 1 of the 2 servers" in m and "CXP_CLICKHOUSE_ALT_HOSTS" in m for m in messages)


def test_two_replicas_one_down_inserts_stop_until_it_returns(clickhouse_cluster):
    """Of two replicas the majority is both: with the second down an insert is refused before anything is
    written (code 285), also through the server that is up; once it is back the same insert, retried as
    the sink retries it, goes through, and each replica holds every row once."""
    db = f"cx_two_{uuid.uuid4().hex[:8]}"
    first_replica, second_replica = clickhouse_cluster.servers
    writer = NativeBackend(first_replica.url(db), cluster=clickhouse_cluster.name, alt_hosts=[address(second_replica)])
    writer.create_tables()
    try:
        assert writer.client.settings["insert_quorum"] == 2
        writer.insert("events", EVENT_COLUMNS, event_rows("before"))
        second_replica.stop()
        try:
            with pytest.raises(ServerException) as refused:
                writer.insert("events", EVENT_COLUMNS, event_rows("during"))
            assert refused.value.code == TOO_FEW_LIVE_REPLICAS, refused.value
            assert stored_once(first_replica, db) == (100, 100, 100), "a refused insert wrote rows"
        finally:
            second_replica.restart()
        wait_until(lambda: writer.insert("events", EVENT_COLUMNS, event_rows("during")), lambda _: True,
                   timeout_s=60, what="the insert to go through once the replica is back")
        for server in clickhouse_cluster.servers:
            assert stored_once(server, db) == (200, 200, 200)
    finally:
        writer.close()


def test_three_replicas_a_replica_without_an_acked_write_refuses_reads(clickhouse_cluster_of_three):
    """Replica 1 stops fetching; an insert acked by the quorum of two (replicas 2 and 3) is not on it. Read
    through replica 1 as a worker reads (a restore), the Distributed table refuses (code 289) instead of
    answering short, which a plain read does; once replica 1 has fetched, the worker's read is whole."""
    db = f"cx_seq_{uuid.uuid4().hex[:8]}"
    lagging, *others = clickhouse_cluster_of_three.servers
    writer = NativeBackend(others[0].url(db), cluster=clickhouse_cluster_of_three.name)
    writer.create_tables()
    reader = NativeBackend(lagging.url(db), cluster=clickhouse_cluster_of_three.name)  # the worker's settings
    plain = NativeBackend(lagging.url(db))
    try:
        assert writer.client.settings["insert_quorum"] == 2
        writer.insert("events", EVENT_COLUMNS, event_rows("first"))
        wait_until(lambda: plain.query(f"SELECT count() FROM {db}.events_local")[0][0], lambda n: n == 100,
                   timeout_s=30, what="replica 1 to have the first insert")
        plain.execute(f"SYSTEM STOP FETCHES {db}.events_local")
        try:
            writer.insert("events", EVENT_COLUMNS, event_rows("second"))
            assert plain.query(f"SELECT count() FROM {db}.events")[0][0] == 100  # short, and says nothing
            with pytest.raises(ServerException) as refused:
                reader.query(f"SELECT count() FROM {db}.events")
            assert refused.value.code == REPLICA_IS_NOT_IN_QUORUM, refused.value
        finally:
            plain.execute(f"SYSTEM START FETCHES {db}.events_local")
        assert wait_until(lambda: reader.query(f"SELECT count() FROM {db}.events")[0][0], lambda n: n == 200,
                          timeout_s=30, what="replica 1 to fetch the acked insert") == 200
    finally:
        for backend in (writer, reader, plain):
            backend.close()


def phase_input(seed: int, now_ms: int, count: int = 600) -> list[tuple[str, dict]]:
    sim = Simulator(seed=seed, customers=200, start_ms=now_ms - 2 * HOUR)
    return [(s, e) for s, e in sim.events(count=count, rate=count / (2 * 3600)) if e["event_time"] <= now_ms]


def produce(bootstrap: str, prefix: str, events: list[tuple[str, dict]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for source, event in events:
        producer.send(f"{prefix}events.{source}", avro(RECORD[source], event), key=event_key(source, event))
    producer.flush()
    producer.close()


def test_three_replicas_a_worker_keeps_writing_with_one_down(broker, clickhouse_cluster_of_three, tmp_path_factory):
    """The production profile's shape: three replicas, quorum two, workers that know every server. A worker
    pointed at replica 1 writes; replica 1 stops under it and it goes on through replica 2; a worker started
    while replica 1 is still down rebuilds its partitions from the others (every replayed record is a
    duplicate); replica 1 comes back and catches up. Every replica then holds each event exactly once."""
    servers = clickhouse_cluster_of_three.servers
    named, others = servers[0], servers[1:]
    now = int(time.time() * 1000)
    before, during, after = (phase_input(seed, now) for seed in (41, 42, 43))
    prefix, db = f"ft{uuid.uuid4().hex[:6]}.", f"cx_three_{uuid.uuid4().hex[:8]}"
    env = dict(CXP_CLICKHOUSE_CLUSTER=clickhouse_cluster_of_three.name, CXP_TOPIC_PREFIX=prefix, CXP_PARTITIONS="4",
               CXP_APP_ID=f"cxp-failover-{prefix}", CXP_CLICKHOUSE_ALT_HOSTS=",".join(address(s) for s in others))

    def worker(name: str) -> WorkerProcess:
        data_dir = tmp_path_factory.mktemp(name)
        return WorkerProcess(worker_env(broker.url, data_dir, named.url(db), **env), data_dir / "worker.log")

    writer = worker("failover-1").start()
    try:
        produce(broker.bootstrap_servers, prefix, before)
        drained(writer, len(before))
        named.stop()
        produce(broker.bootstrap_servers, prefix, during)
        first = drained(writer, len(before) + len(during))
    finally:
        writer.stop()
    try:
        resumer = worker("failover-2").start()  # replica 1, its URL's server, is still down
        try:
            produce(broker.bootstrap_servers, prefix, before + after)  # a replay of the first part, then new events
            second = drained(resumer, len(before) + len(after))
        finally:
            resumer.stop()
    finally:
        named.restart()
    assert total(first, "cxp_events_processed_total") == len(before) + len(during)
    assert total(second, "cxp_events_duplicate_total") == len(before)
    assert total(second, "cxp_events_processed_total") == len(after)
    valid = {e["event_id"] for _, e in before + during + after}
    answers = sum(1 for _, e in before + during + after if e.get("survey"))
    # Replica 1 fetches each table's parts on its own: wait for both before comparing.
    wait_until(lambda: (stored_once(named, db)[0], stored_once(named, db, "survey_responses")[0]),
               lambda counts: counts[0] >= len(valid) and counts[1] >= answers, timeout_s=60, what="replica 1 to catch up")
    for server in servers:
        reader = NativeBackend(server.url(db))
        try:
            assert {i for i, in reader.query(f"SELECT event_id FROM {db}.events_local")} == valid
        finally:
            reader.close()
        assert stored_once(server, db) == (len(valid),) * 3
        assert stored_once(server, db, "survey_responses") == (answers,) * 3


PRODUCTION_BALANCER = Path(__file__).resolve().parents[2] / "deploy" / "production" / "clickhouse" / "haproxy.cfg"


def balancer_config(servers) -> tuple[str, int]:
    """The production balancer's config with the replicas' loopback ports for ch-1, ch-2, ...; its port."""
    text, port = PRODUCTION_BALANCER.read_text(), free_port()
    text, bound = re.subn(r"^  bind :9000$", f"  bind 127.0.0.1:{port}", text, flags=re.M)
    assert bound == 1, "haproxy.cfg no longer binds :9000"
    for number, server in enumerate(servers, start=1):
        loopback = f"  server ch-{number} 127.0.0.1:{server.tcp_port} port {server.http_port}"
        text, found = re.subn(rf"^  server ch-{number} ch-{number}:9000$", loopback, text, flags=re.M)
        assert found == 1, f"haproxy.cfg does not list ch-{number}"
    return text, port


def test_grafanas_balancer_answers_with_a_replica_stopped(clickhouse_cluster_of_three, tmp_path):
    """Each query a new connection through the balancer, as Grafana's data source opens them: all answer,
    with every replica up and right after one stops (refused connections go to another replica)."""
    db = f"cx_lb_{uuid.uuid4().hex[:8]}"
    servers = clickhouse_cluster_of_three.servers
    writer = NativeBackend(servers[1].url(db), cluster=clickhouse_cluster_of_three.name)
    writer.create_tables()
    writer.insert("events", EVENT_COLUMNS, event_rows("lb"))
    config, port = balancer_config(servers)
    balancer = Balancer(tmp_path / "haproxy", config, port)

    def counts(queries: int = 9) -> list[int]:
        answers = []
        for _ in range(queries):
            through = NativeBackend(f"clickhouse://default@127.0.0.1:{port}/{db}")
            try:
                answers.append(through.query(f"SELECT count() FROM {db}.events")[0][0])
            finally:
                through.close()
        return answers

    try:
        assert counts() == [100] * 9
        servers[0].stop()
        try:
            assert counts() == [100] * 9, balancer.log_tail()
        finally:
            servers[0].restart()
    finally:
        balancer.stop()
        writer.close()
