import json

import pytest

from pipeline.collector import CollectorError, group_by_partition, parse_request
from pipeline.partitioner import partition_for
from pipeline.registry import EVENT_SCHEMAS, BundledRegistry
from pipeline.validate import Rules

REGISTRY = BundledRegistry()
RULES = Rules.from_schemas({s: REGISTRY.by_name(n).schema for s, n in EVENT_SCHEMAS.items()}, 300_000, 7 * 86_400_000)


def parse(source, payload, max_body=100_000):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_request(source, body, REGISTRY, RULES, max_body)


def status(source, payload, **kw):
    with pytest.raises(CollectorError) as info:
        parse(source, payload, **kw)
    return info.value.status, info.value.body()


def test_single_and_batch_with_defaults_and_iso_time():
    events = parse("web", {"event_id": "e1", "event_type": "login", "event_time": "2026-11-23T10:00:00Z", "customer_id": "c"})
    assert events[0]["event_time"] == 1_795_428_000_000 and events[0]["tenant"] == "default"
    assert len(parse("crm", {"events": [{"event_id": f"e{i}", "event_type": "order_placed", "event_time": 1,
                                         "customer_id": "c"} for i in range(3)]})) == 3


def test_errors_are_4xx_with_json_bodies():
    assert status("web", b"{nope")[0] == 400
    assert status("web", [1, 2])[0] == 400
    assert status("web", {"events": []})[0] == 400
    assert status("fax", {})[0] == 404
    assert status("web", {"event_id": "x" * 200}, max_body=100)[0] == 413
    code, body = status("web", {"events": [{"event_id": "a", "event_type": "login", "event_time": 1, "customer_id": "c"},
                                           {"event_id": "b", "event_type": "teleport", "event_time": 1}]})
    assert code == 422 and [d["index"] for d in body["details"]] == [1]
    code, body = status("complaints", {"event_id": "k", "event_type": "opened", "event_time": 1, "customer_id": "c",
                                       "complaint_id": ""})
    assert code == 422 and body["details"][0]["reason"] == "missing_field"


def test_groups_follow_the_default_partitioner():
    events = [{"customer_id": f"c{i}", "event_id": str(i)} for i in range(100)]
    groups = group_by_partition("crm", events, 4)
    assert sum(len(g) for g in groups.values()) == 100
    for partition, group in groups.items():
        assert all(partition_for(e["customer_id"].encode(), 4) == partition for e in group)
