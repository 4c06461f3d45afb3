"""Rolling windows: adding a run of minutes at once is adding each of them."""
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics.windows import BUCKET_MS, RollingCounts

WINDOWS = {"5m": 5 * BUCKET_MS, "30m": 30 * BUCKET_MS}
runs = st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 60), st.integers(-3, 3), st.integers(-3, 3)),
                max_size=12)  # (key, minute, counts): one call's buckets
steps = st.lists(st.one_of(runs, st.integers(0, 70).map(lambda minute: minute * BUCKET_MS)), max_size=20)  # or a clock


@settings(max_examples=200, deadline=None)
@given(steps)
def test_adding_ascending_minutes_at_once_equals_adding_each(program):
    each, at_once = RollingCounts(WINDOWS, 2), RollingCounts(WINDOWS, 2)
    clock = 0
    for step in program:
        if isinstance(step, int):
            clock = max(clock, step)
            for counts in (each, at_once):
                counts.prune(clock)
            continue
        for key in "ab":
            buckets = sorted({minute: (x, y) for k, minute, x, y in step if k == key}.items())
            for minute, vector in buckets:
                each.add_bucket(key, minute, vector)
            if buckets:
                at_once.add_buckets(key, [minute for minute, _ in buckets], [vector for _, vector in buckets])
        assert at_once.totals(clock) == each.totals(clock)
    assert {key: (list(series.minutes), series.values) for key, series in at_once._series.items()} == \
        {key: (list(series.minutes), series.values) for key, series in each._series.items()}
