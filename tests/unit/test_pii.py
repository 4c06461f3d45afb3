"""PII mode: the pseudonym form, what apply() changes, dead letters, settings secrecy, and the processor
with the mode on against the same input with it off."""
import copy
import hashlib
import hmac
import io
import re
import subprocess
import sys
from collections import Counter

import pytest
from fastavro import schemaless_reader

from pipeline.metrics.surveys import SurveyCore
from pipeline.pii import ID_FIELDS, Pseudonymiser
from pipeline.processor import Processor, Record
from pipeline.registry import EVENT_SCHEMAS, BundledRegistry
from pipeline.settings import Settings
from pipeline.simulate import Simulator
from pipeline.validate import Rules
from tests.unit.test_processor import CODEC, NOW, TOPICS, WINDOWS, records, survey_totals

KEY = b"0123456789abcdef-test-key"
REGISTRY = BundledRegistry()
RAW_ID = re.compile(r"cust-\d{6}|anon-[0-9a-f]{12}|s-[0-9a-f]{12}")  # a pseudonym is plain hex, never matches


def oracle(identifier: str, key: bytes = KEY) -> str:
    """The documented form, computed independently of pipeline.pii."""
    return hmac.new(key, identifier.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def processor(pii=None) -> Processor:
    rules = Rules.from_schemas({s: REGISTRY.by_name(n).schema for s, n in EVENT_SCHEMAS.items()}, 300_000, 7 * 86_400_000)
    p = Processor(CODEC, rules, TOPICS, 86_400_000, [SurveyCore(WINDOWS)], pii=pii)
    p.assign(range(4))
    return p


@pytest.fixture(scope="module")
def events():
    sim = Simulator(seed=5, customers=150, start_ms=NOW - 3_600_000, bad_rate=0.05)
    return list(sim.events(count=3000, rate=1.0))


def stored_text(out) -> str:
    """Every string and byte string of an Output's rows and messages, joined (bytes as Latin-1)."""
    parts = []
    for value in [v for rows in out.rows.values() for row in rows for v in row] + \
            [part for messages in out.messages.values() for key, message in messages
             for part in (key, CODEC.encode_message(message))]:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bytes):
                parts.append(item.decode("latin-1"))
            elif isinstance(item, str):
                parts.append(item)
    return "\n".join(parts)


def raw_texts(events) -> set[str]:
    """The chatbot texts and survey comments of the input."""
    return {e.get("text") or (e.get("survey") or {}).get("comment") for _, e in events} - {None}


def raw_ids_in(text: str) -> list[str]:
    """Every id of the simulator's shapes (customer, anonymous, session, account ids) found in text."""
    return RAW_ID.findall(text)


def test_pseudonym_is_the_documented_hmac():
    pseudonymiser = Pseudonymiser(KEY)
    assert pseudonymiser.of("cust-000042") == oracle("cust-000042")
    assert pseudonymiser.of("Zoë") == oracle("Zoë")
    assert Pseudonymiser(KEY + b"x").of("cust-000042") != oracle("cust-000042")


def test_apply_pseudonymises_ids_and_drops_text_without_changing_the_input():
    event = {"event_id": "e1", "event_type": "user_message", "customer_id": "cust-1", "session_id": "s-1",
             "conversation_id": "conv-1", "text": "my email is a@b.c", "intent": "account", "attributes": {"plan": "pro"},
             "survey": {"kind": "CSAT", "score": 2, "comment": "call me", "touchpoint": "chatbot"}}
    before = copy.deepcopy(event)
    out = Pseudonymiser(KEY).apply("chatbot", event)
    assert event == before
    assert out == dict(before, customer_id=oracle("cust-1"), session_id=oracle("s-1"), text=None,
                       survey=dict(before["survey"], comment=None))
    kept = Pseudonymiser(KEY, drop_text=False).apply("chatbot", event)
    assert kept["text"] == event["text"] and kept["survey"] == event["survey"] and kept["customer_id"] == oracle("cust-1")


def test_every_id_field_of_every_source_and_blanks_stay_blank():
    pseudonymiser = Pseudonymiser(KEY)
    for source, fields in ID_FIELDS.items():
        event = {name: f"{name}-raw" for name in fields}
        assert pseudonymiser.apply(source, event) == {name: oracle(f"{name}-raw") for name in fields}
        blank = {name: value for name, value in zip(fields, ["", None, ""])}
        assert pseudonymiser.apply(source, blank) == blank  # validation already judged them; a hash is never blank
    crm = pseudonymiser.apply("crm", {"customer_id": "c", "account_id": "acc-c", "plan": "pro"})
    assert crm["account_id"] == oracle("acc-c") and crm["plan"] == "pro"


def test_cache_is_bounded_and_repeats_hit_it():
    pseudonymiser = Pseudonymiser(KEY, cache_size=100)
    ids = [f"cust-{i}" for i in range(500)]
    assert [pseudonymiser.of(i) for i in ids] == [oracle(i) for i in ids]
    assert pseudonymiser.of.cache_info().currsize == 100
    for _ in range(3):
        pseudonymiser.of("cust-499")
    assert pseudonymiser.of.cache_info().hits == 3


def test_short_key_refused():
    with pytest.raises(ValueError, match="16 bytes"):
        Pseudonymiser(b"short")


def test_dead_letter_parts_hold_no_raw_id():
    pseudonymiser = Pseudonymiser(KEY)
    event = {"customer_id": "cust-7", "session_id": "s-77", "text": "hello", "survey": None}
    key, out, error = pseudonymiser.dead_letter("chatbot", b"cust-7", event, "customer cust-7 in session s-77 is odd")
    assert key == oracle("cust-7").encode()
    assert out == {"customer_id": oracle("cust-7"), "session_id": oracle("s-77"), "text": None, "survey": None}
    assert error == f"customer {oracle('cust-7')} in session {oracle('s-77')} is odd"
    key, out, error = pseudonymiser.dead_letter("web", b"\xff\xfe", None, "key is not UTF-8")
    assert key == hmac.new(KEY, b"\xff\xfe", hashlib.sha256).hexdigest()[:32].encode() and out is None
    assert pseudonymiser.dead_letter("web", None, None, "empty") == (None, None, "empty")


def test_processor_in_pii_mode_counts_the_same_and_stores_no_raw_value(events):
    """The same input with the mode off and on: identical counts, survey totals and dedup decisions;
    with it on, no raw id or text in any row or output message (dead letters included)."""
    plain, private = processor(), processor(Pseudonymiser(KEY))
    batches = records(events, batched=True) + records(events[:500], batched=False)  # a replay: duplicates
    out_plain, out_private = plain.process(batches, NOW), private.process(batches, NOW)
    assert out_plain.counts == out_private.counts
    assert survey_totals(plain) == survey_totals(private)
    assert Counter(r.event_id for r in out_plain.rows["events"]) == Counter(r.event_id for r in out_private.rows["events"])
    for a, b in zip(sorted(out_plain.rows["events"]), sorted(out_private.rows["events"])):
        assert (b.customer_id, b.anonymous_id, b.session_id) == tuple(
            None if v is None else oracle(v) for v in (a.customer_id, a.anonymous_id, a.session_id))

    private_text, plain_text, texts = stored_text(out_private), stored_text(out_plain), raw_texts(events)
    assert raw_ids_in(private_text) == [] and not [text for text in texts if text in private_text]
    assert len(set(raw_ids_in(plain_text))) > 500 and len([t for t in texts if t in plain_text]) >= 3  # the scan works
    raw = set(raw_ids_in(repr(events)))

    dead, by_id = out_private.messages["deadletter"], {e["event_id"]: (s, e) for s, e in events if e["event_id"]}
    assert dead and len(dead) == len(out_plain.messages["deadletter"])
    for key, message in dead:
        value = CODEC.encode_message(message)
        letter = schemaless_reader(io.BytesIO(value[5:]), REGISTRY.by_name("cx.DeadLetter").parsed, None)
        assert letter["original_key"] == key and (not key or key.decode() in {oracle(v) for v in raw})
        (original,) = CODEC.decode(letter["original_value"]).events  # one re-encoded, pseudonymised event
        if original["event_id"]:
            source, event = by_id[original["event_id"]]
            assert {n: original[n] for n in ID_FIELDS[source]} == {
                n: oracle(event[n]) if event[n] else event[n] for n in ID_FIELDS[source]}


def test_undecodable_message_keeps_no_bytes_in_pii_mode():
    raw = b"\x00\x00\x00\x00\x01" + "cust-000009 is in here".encode()
    record = Record("cx.events.web", 0, 5, b"cust-000009", raw)
    out = processor(Pseudonymiser(KEY)).process([record], NOW)
    (row,) = out.rows["dead_letters"]
    assert row.payload == b"" and row.key == oracle("cust-000009") and "cust-000009" not in row.error
    assert b"cust-000009" not in b"".join(CODEC.encode_message(m) for _, m in out.messages["deadletter"])


def test_settings_never_show_the_key(tmp_path):
    secret = "do-not-print-me-0123456789"
    env = {"COLUMNS": "250", "PATH": "", "CXP_PII_KEY": secret}
    shown = subprocess.run([sys.executable, "-m", "runtime.cli", "config"], capture_output=True, text=True, timeout=60,
                           env=env)
    assert shown.returncode == 0 and "CXP_PII_KEY" in shown.stdout and secret not in shown.stdout + shown.stderr
    assert secret not in repr(Settings(pii_key=secret))
    refused = subprocess.run([sys.executable, "-m", "runtime.cli", "config"], capture_output=True, text=True,
                             timeout=60, env=dict(env, CXP_PII_KEY="tooshort-secret"))
    assert refused.returncode == 2 and "16 bytes" in refused.stderr and "tooshort-secret" not in refused.stderr


def test_key_file_and_lookup_command(tmp_path):
    key_file = tmp_path / "pii.key"
    key_file.write_bytes(KEY + b"\n")
    assert Settings(pii_key_file=key_file).security.pii_secret() == KEY
    with pytest.raises(ValueError, match="not both"):
        Settings(pii_key_file=key_file, pii_key=KEY.decode())
    with pytest.raises(ValueError, match="not found"):
        Settings(pii_key_file=tmp_path / "missing")
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "pii-id", "cust-000042", "anon-1"],
                            capture_output=True, text=True, timeout=60, env={"PATH": "", "CXP_PII_KEY_FILE": str(key_file)})
    assert result.stdout.splitlines() == [f"cust-000042\t{oracle('cust-000042')}", f"anon-1\t{oracle('anon-1')}"]


@pytest.mark.parametrize("key", [KEY, b"k" * 64, b"a much longer key than one SHA-256 block of sixty-four bytes, hashed first"])
def test_precomputed_hmac_equals_the_standard_library(key):
    pseudonymiser = Pseudonymiser(key, cache_size=0)
    for identifier in ["", "cust-000042", "Zoë", "x" * 200]:
        assert pseudonymiser.of(identifier) == oracle(identifier, key) == hmac.digest(key, identifier.encode(), "sha256")[:16].hex()
