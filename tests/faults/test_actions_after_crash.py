"""After any crash, the `actions` table equals the cx.actions topic, and every cause has exactly one action id.

The table is the audit of what was sent: dashboards count it and a follow-up team reconciles against it.
A crash between two inserts of one flush used to leave sent actions without a row for good: the answer
was already in `survey_responses` (written before `actions`), so after the restart the survey core knew
it, published no fact, and the action was never produced again. Tables are now made durable in the
reverse of the cores' run order (a consumer's before its producer's), so a restored upstream core only
ever hides input whose downstream rows are stored.

Topic messages are at least once: after a crash an action may be sent twice, always with the same id;
the test counts those duplicates and asserts no cause got two ids.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import time
from collections import Counter

import fastavro
import pytest
from kafka import KafkaConsumer, TopicPartition

from runtime.local.metrics import total
from schemas import SCHEMA_DIR
from tests.faults.harness import (
    DAY,
    kill_hard,
    now_ms,
    produce,
    record_fault,
    simulated,
    valid_workload,
    wait_until,
    with_sentinels,
)

pytestmark = pytest.mark.integration
ACTION_SCHEMA = fastavro.parse_schema(json.loads((SCHEMA_DIR / "FollowUpAction.avsc").read_text()))


def read_actions(bootstrap: str, prefix: str, idle_ms: int = 4000) -> list[dict]:
    """Every FollowUpAction on <prefix>actions, from the beginning until idle, by a plain fastavro reader."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=idle_ms)
    try:
        name = f"{prefix}actions"
        consumer.assign([TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()])
        return [fastavro.schemaless_reader(io.BytesIO(message.value[5:]), ACTION_SCHEMA, None) for message in consumer]
    finally:
        consumer.close()


def sha1(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()


def check_actions(stage, work) -> dict:
    """The invariants: topic ids = table ids, one row per id, one id per cause. Returns the figures."""
    sent = read_actions(stage.bootstrap, stage.prefix)
    on_topic = Counter(action["action_id"] for action in sent)
    rows = stage.tables.query("SELECT action_id, kind FROM {db}.actions FINAL")
    assert len(rows) == stage.tables.scalar("SELECT uniqExact(action_id) FROM {db}.actions")
    stored = dict(rows)
    assert set(on_topic) == set(stored), (f"{len(set(on_topic) - set(stored))} ids on the topic without a row, "
                                          f"{len(set(stored) - set(on_topic))} rows never sent")
    # every cause, one id: each detractor answer of a known customer, each breached complaint stage, each
    # change to high churn risk, recomputed from the input and the tables the cores keep
    detractors = {sha1("detractor_followup", e["event_id"]) for _, e in work.valid
                  if e.get("survey") and e["survey"]["kind"] == "NPS" and e["survey"]["score"] <= 6 and e["customer_id"]}
    breaches = {sha1("complaint_sla_breach", complaint, stage_name) for complaint, stage_name in stage.tables.query(
        "SELECT complaint_id, arrayJoin(arrayFilter((s, f) -> f = 1, ['first_response', 'resolution'], "
        "[sla_first_response_breached, sla_resolution_breached])) FROM {db}.complaints FINAL")}
    high = {sha1("churn_risk_high", tenant, customer, ms) for tenant, customer, ms in stage.tables.query(
        "SELECT tenant, customer_id, reached_ms FROM {db}.churn_signals FINAL "
        "WHERE level = 'high' AND previous_level != 'high'")}
    by_kind = {kind: {i for i, k in stored.items() if k == kind}
               for kind in ("detractor_followup", "complaint_sla_breach", "churn_risk_high")}
    assert by_kind["detractor_followup"] == detractors and detractors
    assert by_kind["complaint_sla_breach"] == breaches
    assert by_kind["churn_risk_high"] == high
    return {"ids": len(stored), "messages": len(sent), "sent_twice": sum(n - 1 for n in on_topic.values()),
            "kinds": {kind: len(ids) for kind, ids in by_kind.items()}}


def input_with_actions(seed: int) -> object:
    """Two days of traffic: detractor answers, complaints that breach their SLA, churn-risk changes."""
    return with_sentinels(valid_workload(simulated(seed=seed, count=9000, end_ms=now_ms(), span_ms=2 * DAY,
                                                   customers=400), batched=True, batch_size=100), "end")


@pytest.mark.parametrize("torn_after", ["actions", "churn_signals", "complaints", "survey_responses"])
def test_a_flush_torn_after_any_table_leaves_every_sent_action_with_its_row(stage, torn_after):
    work = input_with_actions(seed=17)
    crashing = stage.worker(CXP_FAULT_EXIT_AFTER_INSERT=torn_after).start()
    produce(stage.bootstrap, stage.prefix, work.messages)
    code = wait_until(crashing.process.poll, lambda c: c is not None, 120, "the hooked worker to exit")
    assert code == 86, crashing.log_tail()
    restarted = time.monotonic()
    worker = stage.worker().start()
    stage.wait_drained(["end"])
    worker.wait_for(lambda s: total(s, "cxp_oldest_unacked_seconds") == 0, 60, "everything durable")
    figures = check_actions(stage, work)
    record_fault("11", f"crash between two inserts of one flush, after `{torn_after}`",
                 f"exit 86 after the {torn_after} insert; restart without the hook", len(work.valid), None,
                 time.monotonic() - restarted, "from the restart until the sentinels are stored",
                 note=f"{figures['ids']:,} action ids, each with one row; {figures['sent_twice']} sent twice")


def test_workers_killed_at_random_moments_leave_the_actions_table_equal_to_the_topic(stage):
    work = input_with_actions(seed=29)
    rng = random.Random(5)
    chunks = [work.messages[i:i + 5] for i in range(0, len(work.messages), 5)]
    kill_after = {len(chunks) * k // 4 for k in (1, 2, 3)}
    worker = stage.worker().start()
    kills = 0
    for number, chunk in enumerate(chunks):
        produce(stage.bootstrap, stage.prefix, chunk)
        if number in kill_after:
            time.sleep(rng.uniform(0.0, 1.5))  # somewhere in processing or a flush
            kill_hard(worker.process)
            kills += 1
            worker.start()
    assert kills == 3
    stage.wait_drained(["end"])
    worker.wait_for(lambda s: total(s, "cxp_oldest_unacked_seconds") == 0, 60, "everything durable")
    figures = check_actions(stage, work)
    record_fault("12", "worker killed at random moments, actions audited",
                 "SIGKILL 3 times mid-stream, restart each time", len(work.valid), None, None,
                 "not measured: the test checks the actions table against the topic",
                 note=f"{figures['ids']:,} action ids ({figures['kinds']}), each with one row and one id per cause; "
                      f"{figures['messages']:,} messages, {figures['sent_twice']} sent twice")
