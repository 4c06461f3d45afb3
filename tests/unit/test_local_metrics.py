"""runtime.local.metrics.histogram_quantile against values worked out by hand with Prometheus' rules."""
from __future__ import annotations

import pytest

from runtime.local.metrics import histogram_quantile


def buckets(name: str, tenant: str, priority: str, counts: dict[str, float]) -> list[tuple[dict, float]]:
    return [({"tenant": tenant, "priority": priority, "le": le}, n) for le, n in counts.items()]


SAMPLES = {"h_bucket": [
    *buckets("h", "acme", "low", {"60.0": 2, "300.0": 4, "+Inf": 4}),
    *buckets("h", "acme", "high", {"60.0": 0, "300.0": 4, "+Inf": 8}),
    *buckets("h", "globex", "low", {"60.0": 0, "300.0": 0, "+Inf": 0}),
]}


def test_buckets_of_a_group_are_summed_and_interpolated():
    # acme summed over priorities: le 60 -> 2, le 300 -> 8, +Inf -> 12
    # p50: rank 6 falls in (60, 300] holding 6 observations, 4 of them up to the rank: 60 + 240 * 4/6 = 220
    assert histogram_quantile(0.5, SAMPLES, "h", "tenant") == pytest.approx({"acme": 220.0})
    # p10: rank 1.2 in (0, 60] holding 2: 60 * 1.2/2 = 36
    assert histogram_quantile(0.1, SAMPLES, "h", "tenant") == pytest.approx({"acme": 36.0})


def test_a_rank_in_the_inf_bucket_gives_the_highest_finite_bound_and_empty_groups_are_left_out():
    # p90: rank 10.8 > 8 observations up to 300: the +Inf bucket, so 300 (Prometheus does the same)
    assert histogram_quantile(0.9, SAMPLES, "h", "tenant") == {"acme": 300.0}
    assert "globex" not in histogram_quantile(0.5, SAMPLES, "h", "tenant")
    assert histogram_quantile(0.5, {}, "h", "tenant") == {}
