"""Follow-up actions published for the actions core, and the detractor recovery rate against a recount."""
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics.base import Facts, Output
from pipeline.metrics.facts import ActionRequested, ChurnLevelChanged, SurveyAnswered
from pipeline.metrics.followups import FollowupCore

HOUR, DAY = 3_600_000, 86_400_000
T0 = 1_780_000_000_000
CORE = FollowupCore(due_ms=48 * HOUR, recovery_window_ms=30 * DAY)


def answer(event_id, score, t, customer="c1", kind="NPS", comment=None, touchpoint="relationship", source="crm"):
    return SurveyAnswered(event_id, source, "acme", customer, kind, score, t, {}, touchpoint, comment)


def publish(state, answers, churn_changes=()) -> Output:
    out = Output()
    CORE.take(state, Facts([*answers, *churn_changes]), out)
    return out


def test_a_detractor_gets_one_followup_with_its_context():
    state = CORE.new_state(2)
    out = publish(state, [answer("e1", 3, T0, comment="Too slow."), answer("e2", 8, T0), answer("e3", 5, T0, kind="CSAT"),
                          answer("e4", 0, T0, customer=None)])
    (action,) = out.facts  # passive, CSAT and anonymous answers get none
    assert action == ActionRequested(
        action_id=hashlib.sha1(b"detractor_followup|e1").hexdigest(), kind="detractor_followup", tenant="acme",
        customer_id="c1", reason="NPS 3 (detractor) at touchpoint relationship via crm",
        context={"score": "3", "source": "crm", "event_id": "e1", "comment": "Too slow.", "touchpoint": "relationship"},
        due_ms=T0 + 48 * HOUR, created_ms=T0)
    again = publish(state, [answer("e1", 3, T0, comment="Too slow.")])  # replayed: same id, same content
    assert again.facts == [action]


def test_entering_high_risk_is_an_action_other_levels_are_not():
    reasons = ("inactivity (0.25): no activity for 20 days (last on 2026-05-01)", "detractor (0.2): NPS 2 on 2026-05-03",
               "activity_drop (0.1): …")
    high = ChurnLevelChanged("acme", "c9", "high", "medium", 0.55, reasons, T0 + 5, 3, T0)
    out = publish(CORE.new_state(2), [], churn_changes=[high, high._replace(level="medium")])
    (action,) = out.facts
    assert action.kind == "churn_risk_high" and action.due_ms == action.created_ms == T0 + 5
    assert action.action_id == hashlib.sha1(f"churn_risk_high|acme|c9|{T0}".encode()).hexdigest()
    assert tuple(action.context["reasons"].split("\n")) == reasons
    assert action.reason == "churn risk high (score 0.55, was medium)"


def recount(answers, clock):
    """(outcome -> n) of detractor answers in the window, judged by the customer's next NPS answer."""
    by_customer = {}
    for event_id, customer, score, t in {(a[0], a[1], a[2], a[3]) for a in answers}:
        by_customer.setdefault(customer, []).append((t, score, event_id))
    counts = {}
    for history in by_customer.values():
        history.sort()
        for i, (t, score, _) in enumerate(history):
            if score <= 6 and clock - 30 * DAY < t <= clock:
                nxt = history[i + 1][1] if i + 1 < len(history) else None
                outcome = "pending" if nxt is None else "recovered" if nxt >= 7 else "not_recovered"
                counts[outcome] = counts.get(outcome, 0) + 1
    return counts


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["c1", "c2", "c3"]), st.integers(0, 10), st.integers(0, 60 * DAY)),
                max_size=40), st.booleans())
def test_recovery_counts_equal_a_recount(raw, replay):
    answers = [(f"e{i}", customer, score, T0 + t) for i, (customer, score, t) in enumerate(raw)]
    state, clock = CORE.new_state(2), T0
    for event_id, customer, score, t in answers + (answers if replay else []):
        publish(state, [answer(event_id, score, t, customer=customer)])
        clock = max(clock, t)
        CORE.tick(state, clock, Output())
        assert CORE.totals([state], [clock]) == CORE.count_answers([state], [clock])  # the kept gauge
    for later in (clock + DAY, clock + 20 * DAY, clock + 40 * DAY):  # the window moves on without answers
        assert CORE.totals([state], [later]) == CORE.count_answers([state], [later])
    assert CORE.totals([state], [T0]) == CORE.count_answers([state], [T0])  # an earlier clock: counted afresh
    got = {outcome: n for (_, outcome), n in CORE.totals([state], [clock]).items()}
    assert got == recount(answers, clock)
    families = {f.name: f for f in CORE.collect([state], [clock])}
    judged = got.get("recovered", 0) + got.get("not_recovered", 0)
    ratios = [s.value for s in families["cx_detractor_recovery_ratio"].samples]
    assert ratios == ([got.get("recovered", 0) / judged] if judged else [])


def test_restore_from_survey_rows():
    live, restored = CORE.new_state(2), CORE.new_state(2)
    rows = [("acme", "c1", T0, 2, "e1"), ("acme", "c1", T0 + DAY, 9, "e2"), ("acme", "c2", T0, 4, "e3")]
    for tenant, customer, t, score, event_id in rows:
        publish(live, [answer(event_id, score, t, customer=customer)])
    (spec,) = CORE.restores()
    CORE.restore(restored, "answers", [spec.row_type()(*row) for row in rows], T0 + DAY)
    assert CORE.totals([restored], [T0 + DAY]) == CORE.totals([live], [T0 + DAY]) == {
        ("acme", "recovered"): 1, ("acme", "pending"): 1}
