"""The views of a batch that several cores share (grouped once per batch) against plain recomputations."""
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.metrics import lastseen
from pipeline.metrics.base import Batch
from pipeline.metrics.lastseen import LastSeen, customer_key

T0 = 1_780_000_000_000
event = st.tuples(st.sampled_from(["web", "crm", "chatbot"]), st.sampled_from(["acme", "globex"]),
                  st.one_of(st.none(), st.sampled_from(["c1", "c2", "c3", "c4"])), st.integers(T0, T0 + 10**7))


def batch_of(items):
    return Batch.of(0, [(source, {"event_id": f"e{i}", "tenant": tenant, "customer_id": customer, "event_time": t})
                        for i, (source, tenant, customer, t) in enumerate(items)])


@settings(max_examples=100, deadline=None)
@given(st.lists(event, max_size=30))
def test_customers_and_sources_are_the_events_grouped(items):
    batch = batch_of(items)
    expected: dict = {}
    for _, tenant, customer, t in items:
        if customer is not None:
            expected.setdefault((tenant, customer), []).append(t)
    customers = batch.customers()
    assert batch.customers() is customers  # built once
    assert dict(zip(customers.keys, customers.times)) == expected and customers.keys == list(expected)
    assert customers.hashes().tolist() == [customer_key(*key) for key in expected]
    assert customers.last_minutes().tolist() == [max(times) // 60_000 for times in expected.values()]
    for source in ("web", "crm", "chatbot", "complaints"):
        events, hashes = batch.of_source(source)
        assert [(e["event_id"], h) for e, h in zip(events, hashes)] == \
            [(e["event_id"], h) for s, e, h in zip(batch.sources, batch.events, batch.hashes) if s == source]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(event, max_size=12), max_size=6), st.booleans())
# acme's c1 is the batch's first customer, but globex's c2 (same key) reaches their last minute first
@example([[("web", "acme", "c1", T0), ("web", "globex", "c2", T0 + 180_000), ("web", "acme", "c1", T0 + 180_000)]], True)
def test_noting_a_batch_equals_noting_each_event(batches, collide):
    """Also when two customers share a 64-bit key (forced here), which note() keeps as one."""
    windows = {"1h": 3_600_000, "1d": 86_400_000}
    by_batch, by_event = LastSeen(windows), LastSeen(windows)
    real_key = lastseen.customer_key
    def colliding_key(tenant, customer):  # every c2 shares the key of acme's c1
        return real_key("acme", "c1" if customer == "c2" else customer)
    fake_key = colliding_key if collide else real_key
    try:
        lastseen.customer_key = fake_key
        for items in batches:
            batch = batch_of(items)
            customers = batch.customers()
            customers._hashes = np.array([fake_key(*key) for key in customers.keys], np.uint64)
            by_batch.note_customers(customers)
            for _, tenant, customer, t in items:
                if customer is not None:
                    by_event.note(tenant, customer, t)
            by_event.merge()
    finally:
        lastseen.customer_key = real_key
    assert by_batch.keys.tolist() == by_event.keys.tolist() and by_batch.minutes.tolist() == by_event.minutes.tolist()
    assert [by_batch.tenant_names[i] for i in by_batch.tenants] == [by_event.tenant_names[i] for i in by_event.tenants]
    clock = T0 + 10**7
    assert by_batch.windows.totals(clock) == by_event.windows.totals(clock)
