"""Deduper against a plain dict recomputation of its rule: after ``expire(clock)`` an id is a duplicate iff
an earlier accepted (or restored) sighting has hour >= (clock - horizon) // BUCKET_MS, and a repeat within
one call is a duplicate of its first occurrence. Calls of every size go through both probing paths."""
import uuid

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import dedup as dedup_module
from pipeline.dedup import BUCKET_MS, MAX_SPAN, SCALAR_CALL, Deduper, id_before, id_hash, id_key, id_text

DAY = 86_400_000
HOUR = BUCKET_MS
# Ordinary hashes, extremes, and a crowd sharing both blocks (top bits all ones, small bottom bits), so blocks
# fill up and ids go to the stash.
POOL = ([id_hash(f"event-{i}") for i in range(40)] + [1, 2**63, 2**64 - 1]
        + [(0xFFFFFFFF << 32) | i for i in range(1, 60)])


class Oracle:
    """The rule, recomputed with a dict of each id's latest remembered hour."""

    def __init__(self, horizon_ms: int):
        self.horizon_ms, self.oldest_hour, self.hours = horizon_ms, None, {}

    def remembered(self, key: int) -> bool:
        return key in self.hours and (self.oldest_hour is None or self.hours[key] >= self.oldest_hour)

    def remember(self, key: int, event_ms: int) -> None:
        hour = event_ms // BUCKET_MS
        if (self.oldest_hour is None or hour >= self.oldest_hour) and not self.remembered(key):
            self.hours[key] = hour
        elif self.remembered(key):
            self.hours[key] = max(self.hours[key], hour)

    def check(self, hashes, times):
        new, this_call = [], set()
        for key, event_ms in zip(hashes, times):
            is_new = key not in this_call and not self.remembered(key)
            this_call.add(key)
            if is_new:
                self.remember(key, event_ms)
            new.append(is_new)
        return new

    def expire(self, clock_ms: int) -> None:
        oldest = (clock_ms - self.horizon_ms) // BUCKET_MS
        self.oldest_hour = oldest if self.oldest_hour is None else max(self.oldest_hour, oldest)

    def __len__(self):
        return sum(self.remembered(key) for key in self.hours)


sightings = st.lists(st.tuples(st.sampled_from(POOL), st.integers(0, 10 * DAY)), max_size=3 * SCALAR_CALL)
operations = st.lists(st.one_of(
    st.tuples(st.just("check"), sightings),
    st.tuples(st.just("restore"), sightings),
    st.tuples(st.just("expire"), st.integers(0, 12 * DAY)),
), max_size=25)


@settings(max_examples=300, deadline=None)
@given(operations, st.sampled_from([HOUR // 2, DAY, 3 * DAY]))
def test_matches_plain_recomputation(ops, horizon_ms):
    d, oracle = Deduper(horizon_ms), Oracle(horizon_ms)
    for op, arg in ops:
        if op == "expire":
            d.expire(arg)
            oracle.expire(arg)
        elif op == "restore":
            hashes = np.array([key for key, _ in arg], dtype=np.uint64)
            d.restore(hashes, np.array([t for _, t in arg], dtype=np.int64))
            for key, t in arg:
                oracle.remember(key, t)
        else:
            hashes, times = [key for key, _ in arg], [t for _, t in arg]
            assert d.seen(hashes) == [oracle.remembered(key) for key in hashes]  # read only: check decides below
            assert [d.keeps(t) for t in times] == [oracle.oldest_hour is None or t // BUCKET_MS >= oracle.oldest_hour
                                                   for t in times]
            assert d.check(hashes, times) == oracle.check(hashes, times)
        assert len(d) == len(oracle)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(POOL[:40]), st.integers(0, 3 * DAY)), max_size=200),
       st.integers(1, 2 * SCALAR_CALL))
def test_never_forgets_within_the_horizon_and_forgets_after_one_more_bucket(sightings_, call_size):
    """Time-ordered input in calls of call_size, expiring after each call like the processor does."""
    d = Deduper(DAY)
    clock, accepted = 0, {}
    ordered = sorted(sightings_, key=lambda s: s[1])
    for start in range(0, len(ordered), call_size):
        call = ordered[start:start + call_size]
        new = d.check([key for key, _ in call], [t for _, t in call])
        for (key, t), is_new in zip(call, new):
            first_in_call = next(i for i, (k, _) in enumerate(call) if k == key) == call.index((key, t))
            if key in accepted and clock - accepted[key] <= DAY:
                assert not is_new  # never forgets within the horizon
            if key in accepted and clock - accepted[key] >= DAY + BUCKET_MS and first_in_call:
                assert is_new  # remembered at most one bucket longer
            if is_new:
                accepted[key] = t
        clock = max(clock, call[-1][1])
        d.expire(clock)


def test_repeats_within_one_call_are_duplicates_of_the_first_in_both_paths():
    for size in (3, 3 * SCALAR_CALL):
        ids = [id_hash(f"x{i % (size // 3)}") for i in range(size)]
        assert Deduper(DAY).check(ids, [0] * size) == [True] * (size // 3) + [False] * (size - size // 3)


def test_hash_zero_is_remembered():
    d = Deduper(DAY)
    assert d.check([0], [0]) == [True]
    assert d.check([0] * SCALAR_CALL, [0] * SCALAR_CALL) == [False] * SCALAR_CALL


def test_late_events_older_than_the_horizon_are_new_and_not_remembered_in_both_paths():
    for size in (1, 2 * SCALAR_CALL):
        d = Deduper(DAY)
        d.expire(10 * DAY)
        ids = list(range(5, 5 + size))
        assert d.check(ids, [8 * DAY] * size) == [True] * size
        assert d.check(ids, [8 * DAY] * size) == [True] * size
        assert len(d) == 0


def test_restore_then_check_matches_checking_the_same_history():
    rng = np.random.default_rng(7)
    hashes = rng.integers(1, 2**64 - 1, 20_000, dtype=np.uint64, endpoint=True)
    times = rng.integers(0, 2 * DAY, len(hashes))
    lived, restored = Deduper(DAY), Deduper(DAY)
    lived.check(hashes.tolist(), times.tolist())
    restored.restore(hashes, times)
    lived.expire(2 * DAY)
    restored.expire(2 * DAY)
    probe = np.concatenate([hashes[::3], rng.integers(1, 2**63, 5_000, dtype=np.uint64)])
    probe_times = [2 * DAY] * len(probe)
    assert restored.check(probe, probe_times) == lived.check(probe.tolist(), probe_times)
    assert len(restored) == len(lived)


def test_restore_laid_out_in_many_chunks_remembers_every_id(monkeypatch):
    monkeypatch.setattr(dedup_module, "BUILD_CHUNK", 97)  # runs of one block split across chunks
    rng = np.random.default_rng(11)
    hashes = rng.integers(1, 2**64 - 1, 5_000, dtype=np.uint64, endpoint=True)
    d = Deduper(DAY)
    d.restore(hashes, np.zeros(len(hashes), dtype=np.int64))
    assert len(d) == 5_000
    assert not any(d.check(hashes, [0] * len(hashes)))
    assert not any(d.check([key], [0])[0] for key in hashes[:200].tolist())


def test_restore_keeps_the_latest_hour_of_a_repeated_id():
    d = Deduper(DAY)
    d.restore([9, 9], [0, 5 * HOUR])
    d.expire(DAY + 3 * HOUR)  # hour 0 is past the horizon, hour 5 is not
    assert d.check([9], [DAY + 3 * HOUR]) == [False]


def test_ids_far_older_than_the_newest_are_forgotten_by_the_tag_range():
    d = Deduper(DAY)
    d.check([1], [0])
    d.check([2], [(MAX_SPAN + 10) * HOUR])  # 3.7 years later, without an expire in between
    assert d.check([1, 2], [(MAX_SPAN + 10) * HOUR] * 2) == [True, False]


def test_memory_is_bounded_when_the_clock_moves():
    """A steady 2,000 new ids an hour for 10 days: remembered ids plateau at about a horizon's worth
    and the table stays under 16 bytes per remembered id."""
    d, rng = Deduper(DAY), np.random.default_rng(3)
    for hour in range(240):
        hashes = rng.integers(1, 2**64 - 1, 2_000, dtype=np.uint64, endpoint=True)
        for call in range(0, 2_000, 500):
            assert all(d.check(hashes[call:call + 500], [hour * HOUR] * 500))
        d.expire(hour * HOUR)
        assert len(d) == 2_000 * min(hour + 1, 25)
        assert d.nbytes() <= 16 * len(d)


def test_expired_ids_still_in_their_slots_are_new_again():
    """Expiry only moves the bound, so expired hashes stay in the table until reused or rebuilt."""
    d, rng = Deduper(DAY), np.random.default_rng(5)
    by_hour = [rng.integers(1, 2**64 - 1, 1_000, dtype=np.uint64, endpoint=True) for _ in range(30)]
    for hour, hashes in enumerate(by_hour):
        d.check(hashes, [hour * HOUR] * len(hashes))
        d.expire(hour * HOUR)
    clock = 29 * HOUR
    expired, kept = by_hour[4], by_hour[5]  # oldest kept hour: (29h - 24h) // 1h = 5
    assert [d.check([key], [clock])[0] for key in expired[:100].tolist()] == [True] * 100
    assert d.check(expired[100:], [clock] * 900) == [True] * 900
    assert [d.check([key], [clock])[0] for key in kept[:100].tolist()] == [False] * 100
    assert d.check(kept[100:], [clock] * 900) == [False] * 900


# Event ids as producers send them: canonical UUIDs, their near misses (capitals, "0x", "+", "_", spaces, a dash
# moved), and any other text.
_HEX = "0123456789abcdefABCDEF"
_UUIDS = st.builds(lambda v: str(uuid.UUID(int=v)), st.integers(0, 2**128 - 1))
_NEAR = st.builds(lambda s, i, c: s[:i] + c + s[i + 1:], _UUIDS, st.integers(0, 35),
                  st.sampled_from(list(_HEX) + ["-", "_", "+", " ", "x", "é"]))
_IDS = st.one_of(_UUIDS, _NEAR, _UUIDS.map(str.upper), st.text(max_size=40), st.text(alphabet=_HEX + "-", max_size=40))


@settings(max_examples=400, deadline=None)
@given(_IDS, _IDS)
def test_id_keys_are_exact_and_ordered_as_the_ids(a, b):
    """id_key is undone by id_text, equal exactly when the ids are, and id_before orders keys as str orders ids."""
    ka, kb = id_key(a), id_key(b)
    assert id_text(ka) == a and id_text(kb) == b
    assert (ka == kb) == (a == b)
    assert id_before(ka, kb) == (a < b) and id_before(kb, ka) == (b < a)


def test_a_canonical_uuid_is_kept_as_its_int():
    event_id = str(uuid.uuid4())
    assert id_key(event_id) == uuid.UUID(event_id).int
    assert id_key(event_id.upper()) == event_id.upper()
    assert id_key("0x" + event_id[2:]) == "0x" + event_id[2:]
