"""The stages benchmarks/insert_costs.py inserts at once keep the delivery order's invariant: a core's tables
before those of every core whose facts it consumes, directly or through cores without tables; events last."""
from benchmarks.insert_costs import stages
from pipeline.metrics.registry import build_cores, durable_order
from pipeline.settings import Settings


def _feeds(cores: list) -> dict[int, set[int]]:
    """Per core, every core that consumes its facts, directly or through others."""
    direct = {i: {j for j, other in enumerate(cores) if set(core.publishes) & set(other.consumes)}
              for i, core in enumerate(cores)}
    closure = {i: set(direct[i]) for i in direct}
    changed = True
    while changed:
        changed = False
        for i in closure:
            more = set().union(*(closure[j] for j in closure[i])) - closure[i]
            if more:
                closure[i] |= more
                changed = True
    return closure


def test_every_consumer_is_durable_in_an_earlier_stage_than_its_producers():
    cores = build_cores(Settings())
    tables = durable_order(cores) + ["dead_letters", "metric_snapshots", "events"]
    groups = stages(cores, tables)
    stage = {table: k for k, group in enumerate(groups) for table in group}
    assert sorted(stage) == sorted(tables) and sum(map(len, groups)) == len(tables)
    assert groups[-1] == ["events"]
    pairs = 0
    for producer, consumers in _feeds(cores).items():
        for consumer in consumers:
            for later in cores[producer].tables:
                for earlier in cores[consumer].tables:
                    assert stage[earlier] < stage[later], (earlier, later)
                    pairs += 1
    assert pairs >= 5  # actions before churn, complaints and surveys; churn before complaints and surveys
    assert len(groups) < len(tables)  # some tables do go at once
