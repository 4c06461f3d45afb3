"""docs/contract.md, Bad input rules, one per reason code."""
import pytest

from pipeline.registry import EVENT_SCHEMAS, BundledRegistry
from pipeline.validate import (
    FUTURE_TIMESTAMP,
    INVALID_VALUE,
    MISSING_FIELD,
    TOO_LATE,
    UNKNOWN_TENANT,
    Rules,
    check_fields,
    check_time,
)

NOW = 1_700_000_000_000
MIN = 60_000
DAY = 86_400_000


@pytest.fixture(scope="module")
def rules():
    registry = BundledRegistry()
    return Rules.from_schemas({s: registry.by_name(n).schema for s, n in EVENT_SCHEMAS.items()}, 5 * MIN, 7 * DAY)


def web(**over):
    event = {"event_id": "e1", "event_type": "page_view", "event_time": NOW, "tenant": "acme",
             "customer_id": "c1", "attributes": {}}
    event.update(over)
    return event


def reason(rules, source, event, clock=NOW):
    rejection = check_fields(source, event, rules) or check_time(event["event_time"], rules, NOW, clock)
    return rejection and rejection.reason


def test_valid_events_pass(rules):
    assert reason(rules, "web", web()) is None
    assert reason(rules, "web", web(customer_id=None, anonymous_id="anon-1")) is None
    survey = {"kind": "NPS", "score": 10, "comment": None, "touchpoint": None}
    assert reason(rules, "crm", web(event_type="survey_response", survey=survey)) is None
    assert reason(rules, "crm", web(event_type="subscription_started", plan="pro", mrr=0.0)) is None
    assert check_fields("crm", web(event_type="subscription_started", mrr=-5.0), rules).error.startswith("mrr ")


@pytest.mark.parametrize("source,over", [
    ("web", {"event_id": ""}),
    ("web", {"event_id": None}),
    ("web", {"customer_id": None}),
    ("crm", {"customer_id": None, "anonymous_id": "a", "event_type": "order_placed"}),  # anonymous only on web
    ("web", {"tenant": ""}),
    ("chatbot", {"event_type": "user_message", "conversation_id": ""}),
    ("complaints", {"event_type": "opened", "complaint_id": None, "priority": "high"}),
])
def test_missing_field(rules, source, over):
    assert reason(rules, source, web(**over)) == MISSING_FIELD


@pytest.mark.parametrize("source,over", [
    ("web", {"event_id": "x" * 129}),
    ("web", {"event_type": "teleport"}),
    ("web", {"event_type": "survey_response", "survey": None}),
    ("web", {"event_type": "survey_response", "survey": {"kind": "NPS", "score": 11}}),
    ("web", {"event_type": "survey_response", "survey": {"kind": "CSAT", "score": 0}}),
    ("web", {"event_type": "survey_response", "survey": {"kind": "CES", "score": 8}}),
    ("complaints", {"event_type": "opened", "complaint_id": "k1", "priority": "whenever"}),
    ("crm", {"event_type": "subscription_started", "mrr": -0.01}),
    ("crm", {"event_type": "subscription_renewed", "mrr": float("nan")}),
    ("crm", {"event_type": "subscription_upgraded", "mrr": float("inf")}),
])
def test_invalid_value(rules, source, over):
    assert reason(rules, source, web(**over)) == INVALID_VALUE


@pytest.mark.parametrize("kind,low,high", [("NPS", 0, 10), ("CSAT", 1, 5), ("CES", 1, 7)])
def test_score_range_edges(rules, kind, low, high):
    for score, ok in ((low, True), (high, True), (low - 1, False), (high + 1, False)):
        event = web(event_type="survey_response", survey={"kind": kind, "score": score})
        assert (reason(rules, "web", event) is None) is ok


def test_time_limits(rules):
    assert reason(rules, "web", web(event_time=NOW + 5 * MIN)) is None
    assert reason(rules, "web", web(event_time=NOW + 5 * MIN + 1)) == FUTURE_TIMESTAMP
    assert reason(rules, "web", web(event_time=NOW - 7 * DAY)) is None
    assert reason(rules, "web", web(event_time=NOW - 7 * DAY - 1)) == TOO_LATE
    assert reason(rules, "web", web(event_time=NOW - 30 * DAY), clock=0) is None  # no clock yet


def test_unknown_tenant_against_the_allow_list():
    registry = BundledRegistry()
    allowed = Rules.from_schemas({s: registry.by_name(n).schema for s, n in EVENT_SCHEMAS.items()}, 5 * MIN, 7 * DAY,
                                 tenants=["acme", "globex"])
    assert reason(allowed, "web", web(tenant="acme")) is None and reason(allowed, "web", web(tenant="globex")) is None
    rejection = check_fields("web", web(tenant="acme "), allowed)
    assert rejection.reason == UNKNOWN_TENANT
    assert rejection.error == "tenant 'acme ' is not in CXP_TENANTS (acme, globex)"
    assert len(check_fields("web", web(tenant="x" * 10_000), allowed).error) < 200  # a huge tenant is cut
    # Checked last: an unknown_tenant dead letter is otherwise valid, so it can be re-driven once allowed.
    assert reason(allowed, "web", web(tenant="nobody", customer_id=None)) == MISSING_FIELD
    assert reason(allowed, "web", web(tenant="nobody", event_type="teleport")) == INVALID_VALUE


def test_without_an_allow_list_every_tenant_is_accepted(rules):
    assert not rules.tenants and reason(rules, "web", web(tenant="anything-at-all")) is None


def purchase(**over):
    return web(**{"event_type": "purchase", "order_id": "o-1", "revenue": 59.9, "currency": "EUR", **over})


@pytest.mark.parametrize("over,field", [
    ({"order_id": None}, "order_id"),
    ({"order_id": ""}, "order_id"),
    ({"revenue": None}, "revenue"),
    ({"revenue": -0.01}, "revenue"),
    ({"revenue": float("nan")}, "revenue"),
    ({"revenue": float("inf")}, "revenue"),
    ({"revenue": 1e300}, "revenue"),
    ({"currency": None}, "currency"),
    ({"currency": "EURO"}, "currency"),
    ({"currency": "eur"}, "currency"),
    ({"currency": "XAU"}, "currency"),  # gold: ISO 4217, but no minor unit
    ({"currency": "ZZZ"}, "currency"),
])
def test_a_purchase_is_a_valid_order_or_invalid_value_naming_the_field(rules, over, field):
    rejection = check_fields("web", purchase(**over), rules)
    assert rejection.reason == INVALID_VALUE
    assert rejection.error.startswith(field) and "purchase" in rejection.error


def test_valid_purchases_and_orders_only_on_purchases(rules):
    for over in ({}, {"revenue": 0.0}, {"revenue": 1500.0, "currency": "JPY"}, {"revenue": 1.234, "currency": "KWD"},
                 {"customer_id": None, "anonymous_id": "anon-1"}):
        assert reason(rules, "web", purchase(**over)) is None
    assert reason(rules, "web", web(event_type="checkout_started", revenue=-5.0, currency="??")) is None  # not an order
