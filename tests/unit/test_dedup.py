from hypothesis import given
from hypothesis import strategies as st

from pipeline.dedup import BUCKET_MS, Deduper, id_hash


def seen(d: Deduper, event_id: str, t: int) -> bool:
    return not d.check([id_hash(event_id)], [t])[0]

DAY = 86_400_000


def test_second_sighting_is_duplicate():
    d = Deduper(DAY)
    assert seen(d, "a", 1_000) is False
    assert seen(d, "a", 1_000) is True
    assert seen(d, "b", 1_000) is False


def test_forgets_after_horizon_never_before():
    d = Deduper(DAY)
    seen(d, "a", 0)
    d.expire(DAY)  # exactly one horizon later: still remembered
    assert seen(d, "a", 5) is True
    d.expire(DAY + 2 * BUCKET_MS)
    assert len(d) == 0
    assert seen(d, "a", DAY + 2 * BUCKET_MS) is False


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 3 * DAY)), max_size=200))
def test_matches_plain_recomputation_within_horizon(sightings):
    """An id is a duplicate iff an earlier accepted sighting lies within the horizon of the clock."""
    d = Deduper(DAY)
    clock = 0
    accepted: dict[str, int] = {}
    for event_id, t in sorted(sightings, key=lambda s: s[1]):
        clock = max(clock, t)
        duplicate = seen(d, event_id, t)
        if event_id in accepted and clock - accepted[event_id] <= DAY:
            assert duplicate  # must never forget within the horizon
        if not duplicate:
            accepted[event_id] = t
        d.expire(clock)
