"""A worker killed mid-stream or between two inserts of one flush, and input replayed: after a restart
every event is in ClickHouse exactly once and every survey answer counted exactly once."""
from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.faults.harness import (
    DAY,
    MINUTE,
    Trickle,
    expected_counts,
    identity_holds,
    kill_hard,
    nps_gauges,
    now_ms,
    outcome_totals,
    produce,
    record_fault,
    simulated,
    survey_series,
    valid_workload,
    wait_until,
    with_sentinels,
)

pytestmark = pytest.mark.integration


def test_sigkill_mid_stream_then_restart_loses_and_doubles_nothing(stage):
    work = with_sentinels(valid_workload(simulated(seed=101, count=15_000, end_ms=now_ms())), "end")
    worker = stage.worker().start()
    # Spread over 20 s: a worker this fast would otherwise have stored all of it before the kill.
    flowing = Trickle(stage.bootstrap, stage.prefix, work, seconds=20).start()
    wait_until(lambda: stage.tables.scalar("SELECT count() FROM {db}.events"), lambda n: n >= 2000, 120,
               "the first rows in ClickHouse")
    kill_hard(worker.process)
    flowing.join()
    assert stage.tables.counts()["events_uniq"] < len(work.valid), "the kill must land mid-stream"

    restarted = time.monotonic()
    worker.start()  # same group, same data folder
    stage.wait_drained(["end"])
    counted = stage.wait_exact(work, lambda: [worker.metrics()])
    recovery_s = time.monotonic() - restarted
    samples = worker.metrics()
    assert identity_holds(samples), outcome_totals(samples)
    assert outcome_totals(samples)["rejected"] == 0
    assert nps_gauges(samples, "24h") == pytest.approx(work.nps("24h"))
    assert stage.tables.nps() == pytest.approx(work.nps("7d"))
    record_fault("1", "worker killed mid-stream",
                 "SIGKILL once ≥ 2,000 events are rows, input still arriving; restart", len(work.valid), counted,
                 recovery_s, "from the restart until the sentinels are stored and the rows and series equal the recomputation")


def test_crash_between_two_table_inserts_then_restart_counts_each_answer_once(stage):
    """survey_responses is written before events in a flush: a crash in between leaves answers stored
    whose events are not, and whose input offsets were never acked, so the restart reads them again."""
    work = with_sentinels(valid_workload(simulated(seed=202, count=6000, end_ms=now_ms()), batched=True), "end")
    crashing = stage.worker(CXP_FAULT_EXIT_AFTER_INSERT="survey_responses").start()
    produce(stage.bootstrap, stage.prefix, work.messages)
    code = wait_until(crashing.process.poll, lambda c: c is not None, 120, "the hooked worker to exit")
    assert code == 86, crashing.log_tail()
    torn = stage.tables.counts()
    assert torn["surveys_uniq"] > 0 and torn["events_uniq"] < len(work.valid), f"no torn flush: {torn}"

    restarted = time.monotonic()
    worker = stage.worker().start()
    stage.wait_drained(["end"])
    counted = stage.wait_exact(work, lambda: [worker.metrics()])
    recovery_s = time.monotonic() - restarted
    samples = worker.metrics()
    assert survey_series(samples) == work.survey_series()
    assert identity_holds(samples), outcome_totals(samples)
    assert stage.tables.nps() == pytest.approx(work.nps("7d"))
    record_fault("2", "crash between two inserts of one flush",
                 "exit 86 after the survey_responses insert, before events; restart without the hook",
                 len(work.valid), counted, recovery_s,
                 "from the restart until the sentinels are stored and the rows and series equal the recomputation",
                 note=f"the torn flush left {torn['surveys_uniq']:,} answers stored and "
                      f"{len(work.valid) - torn['events_uniq']:,} of {len(work.valid):,} events missing")


def test_replaying_the_whole_input_twice_changes_nothing(stage):
    """A third of the input is 1-3 days older than the rest: past the 24 h dedup horizon once the rest
    has moved the clock, inside the 7 d max_lateness. It is sent first, so by the replays the worker's
    in-memory dedup may have let go of those ids: such an event may be processed again (and stored again,
    collapsing under FINAL), but no metric may count it twice."""
    now = now_ms()
    recent = simulated(seed=901, count=3000, end_ms=now)
    old = simulated(seed=902, count=1500, end_ms=now - DAY - 10 * MINUTE, span_ms=2 * DAY - 20 * MINUTE)
    work = with_sentinels(valid_workload(old + recent), "end")
    in_window = Counter()
    for (_, _, window, _), n in work.survey_series().items():
        in_window[window] += n
    old_surveys = sum(1 for _, e in old if e.get("survey"))
    assert old_surveys and in_window["7d"] == len(work.surveys) == in_window["1h"] + old_surveys, in_window
    worker = stage.worker().start()
    catch_up_s: list[float] = []

    for sends in (1, 2, 3):
        produce(stage.bootstrap, stage.prefix, work.messages)
        sent = time.monotonic()
        worker.wait_for(lambda s: outcome_totals(s)["consumed"] >= sends * len(work.valid), timeout_s=120,
                        what=f"send {sends} consumed")
        counted = stage.wait_exact(work, lambda: [worker.metrics()])
        if sends > 1:
            catch_up_s.append(time.monotonic() - sent)
        samples = worker.metrics()
        totals = outcome_totals(samples)
        assert totals["consumed"] == sends * len(work.valid)
        again = totals["processed"] - len(work.valid)
        assert 0 <= again <= (sends - 1) * len(old), "only events older than the dedup horizon may be processed again"
        assert totals["duplicate"] == (sends - 1) * len(work.valid) - again
        assert identity_holds(samples), totals
        for window in ("1h", "24h", "7d"):
            assert nps_gauges(samples, window) == pytest.approx(work.nps(window)), window
    assert stage.tables.counts() == expected_counts(work)
    record_fault("9", "replay", f"the whole input sent 3 times, {len(old):,} events 1-3 days old",
                 3 * len(work.valid), counted, catch_up_s,
                 "per replay, from the broker acknowledging it until the worker consumed it all and rows and "
                 "series equal the recomputation",
                 note=f"{len(work.valid):,} distinct events; after the replays {totals['duplicate']:,.0f} counted as "
                      f"duplicates and {again:,.0f} old ones processed again, collapsing under FINAL")
