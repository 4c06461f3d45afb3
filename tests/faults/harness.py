"""The fault suite's own tools: input and its recomputed truth, a Kafka writer and dead-letter reader that
are not the project's code, ClickHouse and /metrics probes, and servers we can stop, freeze and restart.

The worker is a black box: these helpers talk to it only through Kafka, ClickHouse, /metrics and signals.
Input is encoded here with plain fastavro over the .avsc files and sent with kafka-python.
"""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar

import fastavro
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from runtime.local.metrics import total
from pipeline.partitioner import event_key, partition_for
from pipeline.simulate import Simulator
from schemas import SCHEMA_DIR
from sinks.clickhouse.backend import NativeBackend
from tests.services.worker import WorkerProcess, worker_env

PARTITIONS = 4
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
SOURCES = ("web", "chatbot", "crm", "complaints")
RECORD = {"web": "WebEvent", "chatbot": "ChatbotEvent", "crm": "CrmEvent", "complaints": "ComplaintEvent"}
SCHEMA_IDS = {"WebEvent": 1, "ChatbotEvent": 2, "CrmEvent": 3, "ComplaintEvent": 4,
              "WebEventBatch": 11, "ChatbotEventBatch": 12, "CrmEventBatch": 13, "ComplaintEventBatch": 14}
WINDOWS = {"1h": HOUR, "24h": DAY, "7d": 7 * DAY}  # the worker's default windows
CLASSES = {"NPS": ("promoter", "passive", "detractor"), "CSAT": ("satisfied", "neutral", "dissatisfied"),
           "CES": ("all",)}
# Worker settings for the tests that stop or freeze ClickHouse: a failed attempt shows within seconds.
CLICKHOUSE_TIMEOUTS = {"CXP_CLICKHOUSE_CONNECT_TIMEOUT": "1", "CXP_CLICKHOUSE_TIMEOUT": "2"}
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the oversized test sends 1.2 MB messages; kafka-python's default cap is 1 MB


# -- an independent Avro writer and reader ------------------------------------------------------------
def _load_schemas() -> dict:
    named: dict = {}
    for name in ["Survey", *RECORD.values(), *(f"{r}Batch" for r in RECORD.values()), "DeadLetter"]:
        named[name] = fastavro.parse_schema(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()), named_schemas=named)
    return named


SCHEMAS = _load_schemas()
_SOURCE_OF_ID = {SCHEMA_IDS[name]: source for source, record in RECORD.items() for name in (record, f"{record}Batch")}
_NAME_OF_ID = {schema_id: name for name, schema_id in SCHEMA_IDS.items()}


def encode(name: str, record: dict) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, SCHEMA_IDS[name]))
    fastavro.schemaless_writer(out, SCHEMAS[name], record)
    return out.getvalue()


def decodes_on(source: str, value: Optional[bytes]) -> bool:
    """Whether value is exactly one complete record of a schema of this source (the oracle for junk)."""
    if not value or len(value) < 5 or value[0] != 0:
        return False
    schema_id = struct.unpack_from(">I", value, 1)[0]
    if _SOURCE_OF_ID.get(schema_id) != source:
        return False
    body = io.BytesIO(value[5:])
    try:
        fastavro.schemaless_reader(body, SCHEMAS[_NAME_OF_ID[schema_id]], None)
    except Exception:  # noqa: BLE001 - any failure means undecodable
        return False
    return body.tell() == len(value) - 5


# -- input and its truth ----------------------------------------------------------------------------
@dataclass
class Message:
    source: str
    key: Optional[bytes]
    value: Optional[bytes]
    partition: Optional[int] = None  # None: kafka-python's default partitioner (murmur2 of the key)


@dataclass
class Workload:
    """Valid events plus raw messages that must be dead-lettered, and what a recomputation says of them.

    ``rejected`` holds (message, reason) for one bad event or record each; ``messages`` is the send order.
    """

    valid: list[tuple[str, dict]] = field(default_factory=list)
    rejected: list[tuple[Message, str]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)

    def extend(self, other: "Workload") -> None:
        self.valid += other.valid
        self.rejected += other.rejected
        self.messages += other.messages

    @property
    def event_ids(self) -> set[str]:
        return {e["event_id"] for _, e in self.valid}

    @property
    def surveys(self) -> list[dict]:
        return [e for _, e in self.valid if e.get("survey")]

    def clock(self) -> int:
        return max(e["event_time"] for _, e in self.valid)

    def expected_rejected(self) -> Counter:
        return Counter(reason for _, reason in self.rejected)

    def survey_series(self) -> dict[tuple[str, str, str, str], int]:
        """(tenant, kind, window, class) -> responses, for every non-zero series of cx_survey_responses.

        A response at t is inside window W when minute(t) > minute(clock - W) (docs/contract.md, Time), the clock being
        the newest event time of the input.
        """
        clock_ms = self.clock()
        series: Counter = Counter()
        for event in self.surveys:
            kind, score, t = event["survey"]["kind"], event["survey"]["score"], event["event_time"]
            for window, width in WINDOWS.items():
                if t // MINUTE > (clock_ms - width) // MINUTE:
                    series[(event["tenant"], kind, window, CLASSES[kind][_class_index(kind, score)])] += 1
        return dict(series)

    def nps(self, window: str) -> dict[str, float]:
        """tenant -> NPS over the window, from the recomputed class counts."""
        series = self.survey_series()
        out = {}
        for tenant in {t for t, kind, w, _ in series if kind == "NPS" and w == window}:
            c = {cls: series.get((tenant, "NPS", window, cls), 0) for cls in CLASSES["NPS"]}
            out[tenant] = 100.0 * (c["promoter"] - c["detractor"]) / sum(c.values())
        return out


def _class_index(kind: str, score: int) -> int:
    if kind == "NPS":
        return 0 if score >= 9 else 1 if score >= 7 else 2
    if kind == "CSAT":
        return 0 if score >= 4 else 1 if score == 3 else 2
    return 0


def now_ms() -> int:
    return int(time.time() * 1000)


def simulated(seed: int, count: int, end_ms: int, span_ms: int = 30 * MINUTE, customers: int = 500) -> list[tuple[str, dict]]:
    """count valid simulator events with event times in (end - span, end]. The default span is under the
    smallest window, so every window holds all of them whatever each worker's event-time clock is."""
    sim = Simulator(seed=seed, customers=customers, start_ms=end_ms - span_ms)
    return [(s, e) for s, e in sim.events(count=count, rate=count * 1000 / span_ms) if e["event_time"] <= end_ms]


def valid_workload(events: list[tuple[str, dict]], batched: bool = False, batch_size: int = 200,
                   partitions: int = PARTITIONS) -> Workload:
    """Events as single-event messages keyed by customer, or as batch messages of one source and partition."""
    work = Workload(valid=list(events))
    if not batched:
        work.messages = [Message(s, event_key(s, e), encode(RECORD[s], e)) for s, e in events]
        return work
    groups: dict[tuple[str, int], list[dict]] = {}
    for source, event in events:
        groups.setdefault((source, partition_for(event_key(source, event), partitions)), []).append(event)
    for (source, partition), group in groups.items():
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            work.messages.append(Message(source, event_key(source, chunk[0]),
                                         encode(f"{RECORD[source]}Batch", {"events": chunk}), partition))
    return work


def sentinels(tag: str, template: list[tuple[str, dict]], event_ms: int, partitions: Iterable[int] = range(PARTITIONS),
              count: int = PARTITIONS) -> Workload:
    """One valid, survey-less event at the end of every input topic-partition (of ``partitions``, out of
    ``count``), its conversation or complaint its own.

    Partitions are consumed in order, so once all sentinels are rows in ``events`` the worker has been
    through everything sent before them (Tansu's end offsets are wrong, so lag cannot tell us that).
    """
    work = Workload()
    for source in SOURCES:
        base = next(e for s, e in template if s == source and not e.get("survey"))
        for partition in partitions:
            customer = next(f"sentinel-{tag}-{i}" for i in range(10_000)
                            if partition_for(f"sentinel-{tag}-{i}".encode(), count) == partition)
            event = dict(base, event_id=f"sentinel-{tag}-{source}-{partition}", customer_id=customer, event_time=event_ms)
            for own in ("complaint_id", "conversation_id"):
                if own in event:
                    event[own] = f"sentinel-{tag}-{partition}"
            work.valid.append((source, event))
            work.messages.append(Message(source, customer.encode(), encode(RECORD[source], event), partition))
    return work


def sentinel_ids(tag: str, partitions: Iterable[int] = range(PARTITIONS)) -> set[str]:
    return {f"sentinel-{tag}-{source}-{p}" for source in SOURCES for p in partitions}


def with_sentinels(work: Workload, tag: str) -> Workload:
    """work followed by its sentinels (event time = its newest valid event, so no window moves)."""
    out = Workload(list(work.valid), list(work.rejected), list(work.messages))
    out.extend(sentinels(tag, work.valid, work.clock()))
    return out


# -- Kafka, from a client that is not the project's own --------------------------------------------
def topic(prefix: str, source: str) -> str:
    return f"{prefix}events.{source}"


def create_topics(bootstrap: str, prefix: str, partitions: int = PARTITIONS, timeout_s: float = 30.0) -> None:
    """The input and output topics, as an operator would create them (idempotent)."""
    names = [topic(prefix, s) for s in SOURCES] + [f"{prefix}{n}" for n in ("deadletter", "signals.churn", "actions")]

    def created() -> bool:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            missing = [NewTopic(n, partitions, 1) for n in names if n not in set(admin.list_topics())]
            try:
                if missing:
                    admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
            if not set(names) <= set(admin.list_topics()):
                return False
            counts = {meta.get("name") or meta.get("topic"): len(meta["partitions"]) for meta in admin.describe_topics(names)}
            assert set(counts.values()) == {partitions}, f"topics exist with other partition counts: {counts}"
            return True
        finally:
            admin.close()

    wait_until(created, bool, timeout_s, f"topics {names} on {bootstrap}")


def produce(bootstrap: str, prefix: str, messages: Iterable[Message]) -> None:
    """Send in order (one request in flight, so a retry cannot reorder a partition) and fail unless the
    broker acknowledged every message."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=MAX_MESSAGE_BYTES, acks=1,
                             max_in_flight_requests_per_connection=1)
    try:
        sent = [producer.send(topic(prefix, m.source), m.value, key=m.key, partition=m.partition) for m in messages]
        producer.flush(timeout=120)
        for future in sent:
            future.get(timeout=1)  # raises the send's error, if it failed
    finally:
        producer.close()


class Trickle:
    """Steady input: the messages of ``work`` sent in order, in small chunks spread over about ``seconds``,
    from a thread."""

    def __init__(self, bootstrap: str, prefix: str, work: Workload, seconds: float, chunk: int = 50):
        self.bootstrap, self.prefix, self.work, self.seconds = bootstrap, prefix, work, seconds
        self.chunks = [work.messages[i:i + chunk] for i in range(0, len(work.messages), chunk)]
        self.sent = 0
        self.finished_at: Optional[float] = None  # time.monotonic() once the broker acknowledged the last chunk
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="trickle", daemon=True)

    def start(self) -> "Trickle":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for chunk in self.chunks:
                produce(self.bootstrap, self.prefix, chunk)
                self.sent += len(chunk)
                time.sleep(self.seconds / len(self.chunks))
            self.finished_at = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - raised in the test by join()
            self.error = exc

    def wait_sent(self, count: int, timeout_s: float = 30.0) -> None:
        wait_until(lambda: self.sent, lambda n: n >= count or self.error is not None, timeout_s,
                   f"{count} messages of the trickle sent")

    def join(self, timeout_s: float = 120.0) -> None:
        """Until every message is sent; raises what stopped the sending."""
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        assert not self._thread.is_alive(), f"trickle still sending after {timeout_s:.0f} s"


def read_dead_letters(bootstrap: str, prefix: str, idle_ms: int = 4000) -> list[dict]:
    """Every DeadLetter record on <prefix>deadletter, read from the beginning until idle for idle_ms."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=idle_ms, fetch_max_bytes=MAX_MESSAGE_BYTES,
                             max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
    try:
        name = f"{prefix}deadletter"
        consumer.assign([TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()])
        letters = []
        for message in consumer:
            assert message.value[:1] == b"\x00", "dead letters are Confluent-framed Avro"
            letters.append(fastavro.schemaless_reader(io.BytesIO(message.value[5:]), SCHEMAS["DeadLetter"], None))
        return letters
    finally:
        consumer.close()


# -- ClickHouse, read with its own functions --------------------------------------------------------
class Tables:
    """Read-only probes of one database; a fresh connection per probe, so an outage does not poison it."""

    def __init__(self, url: str):
        self.url = url

    def query(self, sql: str) -> list[tuple]:
        backend = NativeBackend(self.url + "?connect_timeout=2&send_receive_timeout=10")
        try:
            return backend.query(sql.format(db=backend.database))
        finally:
            backend.close()

    def scalar(self, sql: str):
        return self.query(sql)[0][0]

    def counts(self) -> dict[str, int]:
        """The exact-truth figures every test compares with its input."""
        return {
            "events_final": self.scalar("SELECT count() FROM {db}.events FINAL"),
            "events_uniq": self.scalar("SELECT uniqExact(event_id) FROM {db}.events"),
            "surveys_final": self.scalar("SELECT count() FROM {db}.survey_responses FINAL"),
            "surveys_uniq": self.scalar("SELECT uniqExact(event_id) FROM {db}.survey_responses"),
        }

    def has_all(self, ids: set[str]) -> bool:
        quoted = ", ".join(f"'{i}'" for i in sorted(ids))
        return self.scalar(f"SELECT uniqExact(event_id) FROM {{db}}.events WHERE event_id IN ({quoted})") == len(ids)

    def nps(self) -> dict[str, float]:
        """tenant -> NPS over every NPS answer stored, by ClickHouse's own aggregation."""
        return dict(self.query("SELECT tenant, 100 * (countIf(score >= 9) - countIf(score <= 6)) / count() "
                               "FROM {db}.survey_responses FINAL WHERE kind = 'NPS' GROUP BY tenant"))

    def dead_letter_reasons(self) -> dict[str, int]:
        return dict(self.query("SELECT reason, count() FROM {db}.dead_letters FINAL GROUP BY reason"))


def expected_counts(work: Workload) -> dict[str, int]:
    n_surveys = len(work.surveys)
    return {"events_final": len(work.valid), "events_uniq": len(work.valid),
            "surveys_final": n_surveys, "surveys_uniq": n_surveys}


# -- /metrics --------------------------------------------------------------------------------------
def survey_series(samples: dict) -> dict[tuple[str, str, str, str], float]:
    """Non-zero cx_survey_responses series of one scrape."""
    return {(l["tenant"], l["kind"], l["window"], l["class"]): v
            for l, v in samples.get("cx_survey_responses", []) if v}


def summed_series(scrapes: Iterable[dict]) -> dict[tuple[str, str, str, str], float]:
    """cx_survey_responses summed over workers, as the fleet's recording rules do."""
    out: Counter = Counter()
    for samples in scrapes:
        out.update(survey_series(samples))
    return {k: v for k, v in out.items() if v}


def outcome_totals(samples: dict) -> dict[str, float]:
    return {name: total(samples, f"cxp_events_{name}_total") for name in ("consumed", "processed", "duplicate", "rejected")}


def identity_holds(samples: dict) -> bool:
    """consumed = processed + duplicate + rejected, summed over labels."""
    t = outcome_totals(samples)
    return t["consumed"] == t["processed"] + t["duplicate"] + t["rejected"]


def nps_gauges(samples: dict, window: str) -> dict[str, float]:
    return {l["tenant"]: v for l, v in samples.get("cx_nps", []) if l["window"] == window}


# -- waiting ---------------------------------------------------------------------------------------
T = TypeVar("T")


def wait_until(probe: Callable[[], T], done: Callable[[T], bool], timeout_s: float, what: str,
               interval_s: float = 0.3) -> T:
    """Poll probe() until done(value); return the value, or fail showing the last one. A probe that
    raises (a service down) counts as not done."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            last = probe()
            if done(last):
                return last
        except Exception as exc:  # noqa: BLE001 - keep polling; shown if it never recovers
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last value: {last!r}")
        time.sleep(interval_s)


# -- processes -------------------------------------------------------------------------------------
def kill_hard(process: subprocess.Popen) -> None:
    """SIGKILL by PID and reap it."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


# -- the reliability report ------------------------------------------------------------------------
REPORT_ENV = "CXP_FAULT_REPORT"


@dataclass(frozen=True)
class Tally:
    """What a final state lacks or has beyond the recomputation.

    lost: input events missing from ``events`` + survey answers missing from ``survey_responses`` +
    answers missing from the summed ``cx_survey_responses`` series. double_counted: rows beyond the input
    in ``events FINAL`` and ``survey_responses FINAL`` + counts beyond the recomputation in those series.
    """

    lost: int
    double_counted: int


def tally(want_rows: dict[str, int], want_series: dict, got_rows: dict[str, int], got_series: dict) -> Tally:
    missing = sum(max(0, want_rows[k] - got_rows[k]) for k in ("events_uniq", "surveys_uniq"))
    beyond = sum(max(0, got_rows[k] - want_rows[k]) for k in ("events_final", "surveys_final"))
    missing += sum(max(0, n - got_series.get(key, 0)) for key, n in want_series.items())
    beyond += sum(max(0, n - want_series.get(key, 0)) for key, n in got_series.items())
    return Tally(int(missing), int(beyond))


def record_fault(number: str, fault: str, injected: str, events_sent: Optional[int], counted: Optional[Tally],
                 recovery_s: float | list[float] | None, recovery_from: str, junk_sent: int = 0,
                 note: str = "") -> None:
    """Append one JSON line with a passed fault test's figures to the file named by $CXP_FAULT_REPORT
    (nothing when unset). recovery_s is one duration, or one per repetition of the fault, or None where
    the test measures none; recovery_from
    says in one sentence what it measures; counted is None where the test checks processes, not counts,
    and events_sent None where the input is not the test's own (the demo simulates its own).
    Durations come from time.monotonic(). `python -m tests.faults.report FILE` renders the lines."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    line = {"number": number, "fault": fault, "injected": injected, "events_sent": events_sent,
            "junk_sent": junk_sent, "lost": None if counted is None else counted.lost,
            "double_counted": None if counted is None else counted.double_counted,
            "recovery_s": recovery_s, "recovery_from": recovery_from, "note": note,
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0],
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(path, "a") as out:
        out.write(json.dumps(line) + "\n")


# -- /proc -----------------------------------------------------------------------------------------
def _stat(pid: int) -> Optional[tuple[str, int, int]]:
    """(state, parent pid, start time) of a live process, or None."""
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may contain spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """pid -> start time of every live descendant of pid, found by walking parent links in /proc."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) and stat[0] != "Z":
            parents[int(entry)] = (stat[1], stat[2])
    found: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, started) in parents.items():
            if ppid == parent and child not in found:
                found[child] = started
                frontier.append(child)
    return found


def still_running(processes: dict[int, int]) -> list[int]:
    """The pids of processes (pid -> start time) that are still alive: same start time, not a zombie."""
    alive = []
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z" and stat[2] == started:
            alive.append(pid)
    return alive


# -- one test's world --------------------------------------------------------------------------------
@dataclass
class Stage:
    """A test's own topics (prefix), consumer group and ClickHouse database on given servers."""

    kafka_url: str
    clickhouse_url: str
    workdir: Path
    prefix: str = field(default_factory=lambda: f"f{uuid.uuid4().hex[:8]}.")
    workers: list[WorkerProcess] = field(default_factory=list)
    partitions: int = PARTITIONS

    @property
    def bootstrap(self) -> str:
        return self.kafka_url.split("://", 1)[1]

    @property
    def tables(self) -> Tables:
        return Tables(self.clickhouse_url)

    def worker(self, **extra: str) -> WorkerProcess:
        """A `cxp worker` of this stage's group, with its own data folder and web port, not yet started."""
        data_dir = self.workdir / f"worker-{len(self.workers)}"
        data_dir.mkdir(parents=True)
        env = worker_env(self.kafka_url, data_dir, self.clickhouse_url, CXP_TOPIC_PREFIX=self.prefix,
                         CXP_APP_ID=f"cxp-faults-{self.prefix}", CXP_PARTITIONS=str(self.partitions), **extra)
        worker = WorkerProcess(env, data_dir / "worker.log")
        self.workers.append(worker)
        return worker

    def produce(self, work: Workload, tag: str) -> Workload:
        """Send work and then its sentinels; returns the whole input, sentinels included."""
        full = with_sentinels(work, tag)
        produce(self.bootstrap, self.prefix, full.messages)
        return full

    def trickle(self, work: Workload, seconds: float) -> Trickle:
        """Start sending work as steady input (see Trickle)."""
        return Trickle(self.bootstrap, self.prefix, work, seconds).start()

    def finish_trickle(self, flowing: Trickle, tag: str, total: Workload, scrape: Callable[[], list[dict]]) -> "Tally":
        """Once the trickle has sent everything, its sentinels (tagged ``tag``); then until all of ``total``,
        extended by the trickle's input and sentinels, is stored and counted exactly (see wait_exact)."""
        flowing.join()
        total.extend(flowing.work)
        tail = sentinels(tag, flowing.work.valid, flowing.work.clock())
        produce(self.bootstrap, self.prefix, tail.messages)
        total.extend(tail)
        self.wait_drained([tag])
        return self.wait_exact(total, scrape)

    def wait_drained(self, tags: Iterable[str], timeout_s: float = 120.0) -> None:
        """Until the sentinels of every tag are rows in ClickHouse: all input before them was processed."""
        ids = set().union(*(sentinel_ids(tag) for tag in tags))
        wait_until(lambda: self.tables.has_all(ids), bool, timeout_s, f"sentinels {sorted(tags)} in ClickHouse")

    def wait_exact(self, work: Workload, scrape: Callable[[], list[dict]], timeout_s: float = 120.0,
                   when: str = "") -> "Tally":
        """Until ClickHouse and the workers' survey series (summed) equal the recomputation from work,
        at most timeout_s; then assert it, so a mismatch shows the difference. Returns the tally of the
        state it asserted on (all zero, since it passed), for the reliability report."""
        want_rows, want_series = expected_counts(work), work.survey_series()

        def state() -> tuple[dict, dict]:
            return self.tables.counts(), summed_series(scrape())

        try:
            wait_until(state, lambda s: s == (want_rows, want_series), timeout_s, "exact counts and series")
        except AssertionError:
            pass  # the asserts below say what differs
        got_rows, got_series = state()
        assert got_rows == want_rows, when
        assert got_series == want_series, when
        return tally(want_rows, want_series, got_rows, got_series)

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                os.kill(worker.process.pid, signal.SIGCONT)  # in case a test left it stopped
            worker.stop()
