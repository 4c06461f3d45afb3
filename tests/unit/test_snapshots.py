"""metric_snapshots rows of several workers combine, as docs/metrics.md says, into the value of one
worker that owns every partition."""
from collections import defaultdict

from agents.snapshots import snapshot_rows
from pipeline.metrics.registry import build_cores
from pipeline.processor import Processor
from pipeline.settings import Settings
from tests.unit.test_processor import CODEC, NOW, events, processor, records  # noqa: F401 - events: fixture

COUNTS = {"active_customers"}
NOT_COMBINED = {"nps_margin_of_error"}  # per worker only; the fleet's comes from Prometheus


def worker(partitions) -> Processor:
    """A worker's processor with every core, owning ``partitions``."""
    return processor(cores=build_cores(Settings()), partitions=partitions)


def combined(rows) -> dict:
    """The documented rule: ratios and means Σ value·n / Σ n, counts Σ value."""
    parts = defaultdict(list)
    for row in rows:
        parts[(row.tenant, row.metric, row.window)].append(row)
    return {key: sum(r.value for r in rs) if key[1] in COUNTS else sum(r.value * r.n for r in rs) / sum(r.n for r in rs)
            for key, rs in parts.items() if key[1] not in NOT_COMBINED}


def test_two_workers_combine_into_the_value_of_one(events):
    batches = records(events, batched=False)
    whole, low, high = worker(range(4)), worker([0, 1]), worker([2, 3])
    whole.process(batches, NOW)
    low.process([r for r in batches if r.partition < 2], NOW)
    high.process([r for r in batches if r.partition >= 2], NOW)
    # Stream time is per partition: each partition has the same clock in the whole and in the split worker.

    one = snapshot_rows(whole, 1_700_000_000)
    two = snapshot_rows(low, 1_700_000_000) + snapshot_rows(high, 1_700_000_000)
    assert {r.partitions for r in one} == {"0,1,2,3"} and {r.partitions for r in two} == {"0,1", "2,3"}
    assert {r.metric.split(":")[0] for r in one} >= {"nps", "csat_ratio", "ces", "funnel_conversion", "active_customers",
                                                    "stickiness"}
    expected, actual = combined(one), combined(two)
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(actual[key] - value) < 1e-9, key
    # Without the weights the same rows would be wrong: a plain mean of the two workers' NPS differs.
    nps = [key for key in expected if key[1] == "nps"]
    plain = {key: sum(r.value for r in two if (r.tenant, r.metric, r.window) == key) / 2 for key in nps}
    assert any(abs(plain[key] - expected[key]) > 1e-6 for key in nps)
