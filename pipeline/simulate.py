"""A seeded, reproducible generator of a realistic CX event mix, and a runner that paces it.

The generator is pure: ``random.Random(seed)`` is its only source of randomness and it does no I/O, so
the same seed and arguments give the same events. Output comes in time slots of ``1/rate`` seconds, one
event per slot: a follow-up that is due (the next step of a shopping journey, a chatbot conversation, a
complaint's handling) if there is one, else the first event of a new activity of a customer. So event
time advances by exactly ``1/rate`` per event on average, without drift, and a runner pacing at ``rate``
keeps event time on the wall clock, while funnel drop-off and complaint handling delays come out as
they would from real systems.

Customers have a life: most joined in the past year, the rest (``joining_share``) join during the run
(spread over ``join_span_ms``) and sign up with their first activity; of those, 60 % only try it and leave
after two weeks on average, and how often a customer comes back falls with the weeks since they joined
(all of it the first week, 60 % the next, then a plateau of 30 %), so weekly cohorts give a retention curve. Some customers are repeat buyers; the first tenant sells in its
customers' regional currencies (EUR, USD, JPY, BRL), the others in USD; a few purchases are sent twice
under a new event id, as a checkout page reloaded or a webhook retried would. Refunds are not simulated:
the contract has no event for them.

Complaints are one activity of the mix by default, which gives every test plenty of them whatever its
span. With ``complaint_rate`` they come instead at a realistic pace per customer and month, independent
of the event rate (a few percent of the customers a month), and a spike multiplies that pace.
"""
from __future__ import annotations

import bisect
import copy
import heapq
import itertools
import json
import math
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import IO, Callable, Iterator, Optional, Sequence, Union

from pipeline.money import minor_unit

SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
WEEK = 7 * DAY
MONTH = 30 * DAY
SPIKE_MS = 10 * MIN  # how long a complaint spike lasts (default)
SPIKE_FACTOR = 6  # weight (or pace) of new complaints during a spike, relative to normal (default)
# Coming back: a customer starts an activity with this chance, by weeks since they joined (retention curve).
RETURN_PLATEAU, RETURN_DECAY = 0.3, 0.45
RETURN_TRIES = 30  # customers drawn (by activity weight) before one is taken regardless of the chance
TRYING_SHARE, TRYING_WEEKS = 0.6, 2.0  # joining customers who only try: they leave after ~2 weeks (exponential)
JOIN_SPAN_MS = 2 * WEEK  # default span over which the joining customers join
REGIONAL_CURRENCY = {"eu": "EUR", "us": "USD", "apac": "JPY", "latam": "BRL"}  # of the first tenant
OTHER_TENANTS_CURRENCY = "USD"
EUR_RATES = {"EUR": 1.0, "USD": 1.08, "JPY": 162.0, "BRL": 5.9}  # units of the currency per euro
RESENT_SHARE = 0.03  # purchases sent twice, under a new event id

# Fields beyond the common ones, per source: every event carries all of them, so it equals its decoded self.
EXTRA_FIELDS = {
    "web": ("anonymous_id", "url", "product_id", "order_id", "revenue", "currency", "survey"),
    "chatbot": ("conversation_id", "text", "intent", "survey"),
    "crm": ("account_id", "plan", "mrr", "survey"),
    "complaints": ("complaint_id", "priority", "category", "origin_channel", "agent_id"),
}
ACTIVITIES = {"shop": 40, "browse": 12, "survey": 12, "chat": 12, "crm": 10, "complaint": 2}  # weights
# Satisfaction profiles, given to tenants in turn: score weights for NPS 0..10, CSAT 1..5, CES 1..7.
PROFILES = (
    {"NPS": (1, 1, 1, 1, 1, 2, 3, 6, 9, 14, 12), "CSAT": (1, 1, 2, 6, 7), "CES": (8, 7, 4, 2, 1, 1, 1)},
    {"NPS": (3, 2, 2, 3, 4, 5, 6, 9, 9, 8, 5), "CSAT": (3, 3, 4, 5, 3), "CES": (3, 4, 5, 4, 3, 2, 2)},
)
SCORES = {"NPS": range(0, 11), "CSAT": range(1, 6), "CES": range(1, 8)}
REGIONS, DEVICES, LANGUAGES = ("eu", "us", "apac", "latam"), ("mobile", "desktop", "tablet"), ("en", "de", "fr", "es")
PLANS = {"free": 0.0, "basic": 19.0, "pro": 99.0}  # plan -> monthly recurring revenue
INTENTS = {"order_status": "Where is my order?", "refund": "I want my money back.",
           "billing": "Why was I charged twice?", "technical": "The app keeps crashing.", "account": "I can't log in."}
# Complaint handling per priority: weight, mean time to first response, mean time to resolution.
PRIORITIES = {"low": (3, 12 * HOUR, 40 * HOUR), "normal": (10, 150 * MIN, 20 * HOUR),
              "high": (4, 40 * MIN, 8 * HOUR), "urgent": (1, 10 * MIN, 3 * HOUR)}
CATEGORIES = ("billing", "delivery", "product_quality", "service", "technical")
CHANNELS = ("phone", "email", "social", "store", "web", "chatbot")
BAD_KINDS = ("duplicate", "bad_score", "missing_survey", "empty_event_id", "missing_customer")


@dataclass
class Customer:
    id: str
    tenant: str
    profile: dict
    attributes: dict
    subscribed: bool
    joined_ms: int  # joined then: nothing before it; the first activity after it starts with a signup if in the run
    currency: str
    repeat_buyer: bool  # buys far more often once in the shop
    signs_up: bool  # joins during the run: their first activity starts with a web signup
    leaves_ms: float = math.inf  # a joining customer who only tried: nothing new from then on
    unhappy: bool = False  # after a detractor answer, an abandoned chat or a complaint: more likely to churn
    silent_from_ms: Optional[int] = None  # starts nothing new from then on: an inactive (churning) customer


# An activity yields steps: (delay in ms after its previous step, source, event_type, fields of the event).
Step = tuple[float, str, str, dict]


class Simulator:
    """``events()`` yields (source, event); ``stats`` counts the injected bad records by kind (BAD_KINDS)."""

    def __init__(self, seed: int, customers: int = 2000, tenants: Sequence[str] = ("acme", "globex"), *,
                 start_ms: int, spike_at_ms: Optional[int] = None, bad_rate: float = 0.0,
                 silent_share: float = 0.0, silent_at_ms: Optional[int] = None, joining_share: float = 0.3,
                 join_span_ms: int = JOIN_SPAN_MS, complaint_rate: Optional[float] = None,
                 spike_ms: int = SPIKE_MS, spike_factor: float = SPIKE_FACTOR):
        """``silent_share`` of the customers, drawn from a stream of their own (so the events up to
        ``silent_at_ms`` are those of a run without silence), start no new activity from ``silent_at_ms``.
        ``joining_share`` of them join during ``join_span_ms`` after ``start_ms``. ``complaint_rate``: complaints
        opened per customer and 30 days (e.g. 0.04), instead of complaints as a share of the activities; a spike
        from ``spike_at_ms`` lasts ``spike_ms`` and multiplies new complaints by ``spike_factor``."""
        if customers < 1 or not tenants or not 0 <= bad_rate < 1 or not 0 <= silent_share < 1:
            raise ValueError("need customers >= 1, at least one tenant, 0 <= bad_rate < 1 and 0 <= silent_share < 1")
        if silent_share and silent_at_ms is None:
            raise ValueError("silent_share needs silent_at_ms")
        if not 0 <= joining_share < 1 or join_span_ms <= 0 or (complaint_rate is not None and complaint_rate <= 0):
            raise ValueError("need 0 <= joining_share < 1, join_span_ms > 0 and complaint_rate > 0 (or None)")
        if spike_ms <= 0 or spike_factor < 1:
            raise ValueError("need spike_ms > 0 and spike_factor >= 1")
        self.rng = Random(seed)
        self.spike_at_ms, self.bad_rate = spike_at_ms, bad_rate
        self.spike_ms, self.spike_factor = spike_ms, spike_factor
        self.stats: Counter = Counter()
        self._start_ms, self._joining_share, self._join_span_ms = start_ms, joining_share, join_span_ms
        self.customers = [self._customer(i, tenants) for i in range(customers)]
        # A few customers are far more active than most, as in real traffic.
        self._customer_weights = list(itertools.accumulate(self.rng.lognormvariate(0, 1) for _ in self.customers))
        if silent_share:
            quiet = Random(f"{seed}-silent")
            for customer in self.customers:
                if quiet.random() < silent_share:
                    customer.silent_from_ms = silent_at_ms
        activities = {name: 0 if complaint_rate and name == "complaint" else w for name, w in ACTIVITIES.items()}
        self._activity_weights = list(itertools.accumulate(activities.values()))
        self._spike_weights = list(itertools.accumulate(
            w * spike_factor if name == "complaint" else w for name, w in activities.items()))
        # Complaints at a pace of their own: candidates at the spike's pace, kept at normal/spike odds (thinning).
        self._complaint_gap_ms = MONTH / (customers * complaint_rate) / spike_factor if complaint_rate else None
        self._next_complaint = start_ms + self._complaint_gap() if complaint_rate else math.inf
        self._clock = float(start_ms)  # start of the next output slot
        self._last = start_ms  # event_time of the last output
        self._due: list[tuple[float, int, Customer, Iterator[Step], Step]] = []  # heap of next steps
        self._seq = itertools.count()
        self._recent: deque[tuple[str, dict]] = deque(maxlen=200)  # what duplicates copy

    def _customer(self, i: int, tenants: Sequence[str]) -> Customer:
        r = self.rng
        plan = r.choices(tuple(PLANS), weights=(5, 3, 2))[0]
        attributes = {"region": r.choice(REGIONS), "plan": plan, "device": r.choice(DEVICES),
                      "language": r.choice(LANGUAGES)}
        tenant = i % len(tenants)
        signs_up = r.random() < self._joining_share
        joined = self._start_ms + r.random() * self._join_span_ms if signs_up else self._start_ms - r.uniform(0, 52) * WEEK
        currency = REGIONAL_CURRENCY[attributes["region"]] if tenant == 0 else OTHER_TENANTS_CURRENCY
        customer = Customer(f"cust-{i:06d}", tenants[tenant], PROFILES[tenant % len(PROFILES)], attributes,
                            plan != "free", int(joined), currency, r.random() < 0.2, signs_up)
        if signs_up and r.random() < TRYING_SHARE:
            customer.leaves_ms = joined + r.expovariate(1 / (TRYING_WEEKS * WEEK))
        return customer

    # -- output ----------------------------------------------------------------------------------
    def events(self, count: Optional[int] = None, until_ms: Optional[int] = None,
               rate: float = 100.0) -> Iterator[tuple[str, dict]]:
        """(source, event) at ``rate`` events per second of event time, in non-decreasing event_time order
        (except injected duplicates, which repeat an earlier event as it was); stops after ``count`` events
        or before the first event after ``until_ms``, else never.

        The n-th event is never later than ``start_ms + n / rate``. Follow-ups due at once wait for free
        slots: milliseconds at 1000 events/s, but minutes at rates below one event per second."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        gap = 1000.0 / rate
        for _ in itertools.count() if count is None else range(count):
            at = int(self._clock + self.rng.random() * gap)
            if until_ms is not None and at > until_ms:
                return
            self._clock += gap
            yield self._next(at)

    def skip_to(self, ms: int) -> None:
        """Move event time ahead to ``ms`` (e.g. from a backfilled history to the wall clock): no activity
        starts in between, and follow-ups that fell due meanwhile come first, in order."""
        self._clock = max(self._clock, float(ms))

    def _next(self, at: int) -> tuple[str, dict]:
        if self.bad_rate and self.rng.random() < self.bad_rate:
            self._last = at
            return self._bad(at)
        if self._due and self._due[0][0] <= at:
            scheduled, _, customer, activity, step = heapq.heappop(self._due)
            at = max(int(scheduled), self._last)
        else:
            customer, activity = self._start(at)
            if customer.signs_up:  # their first activity: they sign up first
                customer.signs_up = False
                visit = {"session_id": f"s-{self.rng.getrandbits(48):012x}", "url": "/signup"}
                activity = itertools.chain([(0, "web", "signup", visit)], activity)
            step = next(activity)
        _, source, event_type, fields = step
        event = self._event(source, event_type, at, customer, fields)
        following = next(activity, None)
        if following is not None:
            heapq.heappush(self._due, (at + following[0], next(self._seq), customer, activity, following))
        self._last = at
        self._recent.append((source, event))
        return source, event

    def _spiking(self, at: float) -> bool:
        return self.spike_at_ms is not None and self.spike_at_ms <= at < self.spike_at_ms + self.spike_ms

    def _complaint_gap(self) -> float:
        return self.rng.expovariate(1 / self._complaint_gap_ms)

    def _start(self, at: int) -> tuple[Customer, Iterator[Step]]:
        while self._next_complaint <= at:  # complaints at their own pace: this candidate is kept at normal/spike odds
            candidate, self._next_complaint = self._next_complaint, self._next_complaint + self._complaint_gap()
            if self._spiking(candidate) or self.rng.random() < 1 / self.spike_factor:
                customer = self._customer_at(at)
                return customer, self._complaint(customer)
        spiking = self._spiking(at)
        name = self._pick(tuple(ACTIVITIES), self._spike_weights if spiking else self._activity_weights)
        customer = self._customer_at(at)
        return customer, getattr(self, f"_{name}")(customer)

    def _customer_at(self, at: int) -> Customer:
        """A customer who has joined and is not silent, drawn by activity weight and kept with the chance that
        they come back this many weeks after joining; after RETURN_TRIES draws, the first eligible one drawn
        (or, when none was, any eligible one: the earliest to join if nobody is)."""
        chosen = None
        for _ in range(RETURN_TRIES):
            customer = self._pick(self.customers, self._customer_weights)
            if not self._eligible(customer, at):
                continue
            weeks = (at - customer.joined_ms) / WEEK
            if self.rng.random() < RETURN_PLATEAU + (1 - RETURN_PLATEAU) * RETURN_DECAY ** weeks:
                return customer
            chosen = chosen or customer
        if chosen is None:
            chosen = next((c for c in self.customers if self._eligible(c, at)), None) or \
                min(self.customers, key=lambda c: c.joined_ms)
        return chosen

    @staticmethod
    def _eligible(customer: Customer, at: int) -> bool:
        return customer.joined_ms <= at < customer.leaves_ms and (customer.silent_from_ms is None or
                                                                  customer.silent_from_ms > at)

    def _pick(self, items: Sequence, cum_weights: list[float]):
        """``rng.choices(items, cum_weights=...)[0]`` without its overhead: this runs for most events."""
        return items[bisect.bisect(cum_weights, self.rng.random() * cum_weights[-1])]

    def _event(self, source: str, event_type: str, at: int, customer: Customer, fields: dict) -> dict:
        event = {"event_id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)), "event_type": event_type,
                 "event_time": at, "tenant": customer.tenant, "customer_id": customer.id, "session_id": None,
                 "attributes": dict(customer.attributes)}
        event.update(dict.fromkeys(EXTRA_FIELDS[source]))
        event.update(fields)
        return event

    # -- activities ------------------------------------------------------------------------------
    def _delay(self, mean_ms: float, low_ms: float = 1 * SEC) -> float:
        return low_ms + self.rng.expovariate(1 / mean_ms)

    def _answer(self, customer: Customer, kind: str, touchpoint: Optional[str]) -> dict:
        score = self.rng.choices(SCORES[kind], weights=customer.profile[kind])[0]
        low = {"NPS": score <= 6, "CSAT": score <= 2, "CES": score >= 5}[kind]
        customer.unhappy = low or (customer.unhappy and kind != "NPS")  # an NPS answer says how they feel now
        comment = None
        if self.rng.random() < 0.2:
            comment = self.rng.choice(("Too slow.", "Nobody answered.", "Too expensive.") if low else
                                      ("Great service!", "Quick and easy.", "Works as expected."))
        return {"kind": kind, "score": score, "comment": comment, "touchpoint": touchpoint}

    def _visitor(self, customer: Customer) -> dict:
        """Fields that make a web event anonymous, for a quarter of the visits."""
        if self.rng.random() >= 0.25:
            return {}
        attributes = {k: v for k, v in customer.attributes.items() if k != "plan"}
        return {"customer_id": None, "anonymous_id": f"anon-{self.rng.getrandbits(48):012x}", "attributes": attributes}

    def _shop(self, c: Customer) -> Iterator[Step]:
        """The purchase funnel: product_view -> add_to_cart -> checkout_started -> purchase, with drop-off."""
        r = self.rng
        visit = dict(self._visitor(c), session_id=f"s-{r.getrandbits(48):012x}")
        yield 0, "web", "page_view", dict(visit, url="/")
        for _ in range(r.choice((1, 1, 2, 3))):
            product = f"p-{r.randrange(300):04d}"
            page = dict(visit, url=f"/products/{product}", product_id=product)
            yield self._delay(20 * SEC), "web", "product_view", page
        if r.random() >= (0.6 if c.repeat_buyer else 0.35):
            return
        yield self._delay(40 * SEC), "web", "add_to_cart", dict(visit, product_id=product)
        if r.random() < 0.1:
            yield self._delay(60 * SEC), "web", "remove_from_cart", dict(visit, product_id=product)
            return
        if r.random() >= (0.85 if c.repeat_buyer else 0.5):
            return
        yield self._delay(90 * SEC), "web", "checkout_started", dict(visit, url="/checkout")
        if r.random() >= 0.7:
            return
        # a basket of about 55 EUR on average, in the customer's currency, to its minor unit
        digits = minor_unit(c.currency)
        revenue = round(r.lognormvariate(math.log(45), 0.6) * EUR_RATES[c.currency], digits)
        order = {"order_id": f"o-{r.getrandbits(40):010x}", "revenue": float(revenue), "currency": c.currency}
        purchase = dict(visit, url="/checkout/done", **order)
        yield self._delay(120 * SEC), "web", "purchase", purchase
        if r.random() < RESENT_SHARE:  # the same order again, under a new event id
            yield self._delay(5 * SEC), "web", "purchase", purchase
        if not visit.get("anonymous_id") and r.random() < 0.15:
            kind = r.choice(("CES", "CSAT"))
            yield self._delay(30 * SEC), "web", "survey_response", dict(visit, survey=self._answer(c, kind, "checkout"))

    def _browse(self, c: Customer) -> Iterator[Step]:
        r = self.rng
        visit = dict(self._visitor(c), session_id=f"s-{r.getrandbits(48):012x}")
        if not visit.get("anonymous_id") and r.random() < 0.6:
            yield 0, "web", "login", dict(visit, url="/account")
        for i in range(r.randint(1, 3)):
            event_type = "search" if r.random() < 0.4 else "page_view"
            yield (0 if i == 0 else self._delay(30 * SEC)), "web", event_type, dict(visit, url=f"/{event_type}/{i}")

    def _survey(self, c: Customer) -> Iterator[Step]:
        """A relationship survey answered on the web or by email (CRM)."""
        source, kind = self.rng.choice((("web", "NPS"), ("crm", "NPS"), ("crm", "NPS"), ("web", "CSAT"), ("crm", "CES")))
        survey = self._answer(c, kind, "relationship" if kind == "NPS" else "account")
        yield 0, source, "survey_response", {"survey": survey}

    def _chat(self, c: Customer) -> Iterator[Step]:
        r = self.rng
        conv = {"conversation_id": f"conv-{r.getrandbits(48):012x}", "session_id": f"s-{r.getrandbits(48):012x}"}
        yield 0, "chatbot", "conversation_started", conv
        intent = r.choice(tuple(INTENTS))
        for turn in range(r.randint(1, 4)):
            text = INTENTS[intent] if turn == 0 else r.choice(("Thanks.", "That didn't help.", "Yes.", "No."))
            yield self._delay(20 * SEC), "chatbot", "user_message", dict(conv, text=text, intent=intent)
            yield self._delay(2 * SEC, 200), "chatbot", "bot_message", dict(conv, text="Let me check that for you.")
        outcome = "resolved" if r.random() < 0.75 else "abandoned"
        if r.random() < 0.25:
            yield self._delay(30 * SEC), "chatbot", "handoff_requested", conv
            if r.random() < 0.85:
                yield self._delay(3 * MIN), "chatbot", "agent_joined", conv
                outcome = "resolved" if r.random() < 0.85 else "abandoned"
            else:
                outcome = "abandoned"
        yield self._delay(2 * MIN), "chatbot", f"conversation_{outcome}", conv
        if outcome == "abandoned":
            c.unhappy = True
        elif r.random() < 0.3:
            survey = self._answer(c, "CSAT", "chatbot")
            yield self._delay(30 * SEC), "chatbot", "survey_response", dict(conv, survey=survey)

    def _crm(self, c: Customer) -> Iterator[Step]:
        """One CRM record; subscription changes follow the customer's state and mood."""
        r = self.rng
        plan = c.attributes["plan"]
        if c.subscribed:
            churny = 4 if c.unhappy else 1
            change = ("subscription_upgraded", 8) if plan == "basic" else ("subscription_downgraded", 3 * churny)
            options = {"subscription_renewed": 30, "subscription_cancelled": 3 * churny, change[0]: change[1],
                       "order_placed": 20, "account_updated": 10, "contact_logged": 10}
        else:
            options = {"subscription_started": 20, "order_placed": 15, "account_updated": 10, "contact_logged": 10}
        event_type = r.choices(tuple(options), weights=tuple(options.values()))[0]
        new_plan = {"subscription_started": r.choice(("basic", "pro")), "subscription_upgraded": "pro",
                    "subscription_downgraded": "basic", "subscription_cancelled": "free"}.get(event_type, plan)
        c.attributes["plan"], c.subscribed = new_plan, new_plan != "free"
        yield 0, "crm", event_type, {"account_id": f"acc-{c.id}", "plan": new_plan, "mrr": PLANS[new_plan]}

    def _complaint(self, c: Customer) -> Iterator[Step]:
        """opened -> acknowledged -> (escalated) -> resolved -> (reopened -> resolved) -> closed."""
        r = self.rng
        priority = r.choices(tuple(PRIORITIES), weights=[p[0] for p in PRIORITIES.values()])[0]
        _, mean_ack, mean_resolve = PRIORITIES[priority]
        case = {"complaint_id": f"cmp-{r.getrandbits(48):012x}", "priority": priority,
                "category": r.choice(CATEGORIES), "origin_channel": r.choice(CHANNELS)}
        c.unhappy = True
        yield 0, "complaints", "opened", case
        case = dict(case, agent_id=f"agent-{r.randrange(40):02d}")
        yield self._delay(mean_ack), "complaints", "acknowledged", case
        if r.random() < 0.15:
            yield self._delay(2 * HOUR), "complaints", "escalated", case
        yield self._delay(mean_resolve), "complaints", "resolved", case
        if r.random() < 0.1:
            yield self._delay(12 * HOUR), "complaints", "reopened", case
            yield self._delay(mean_resolve / 2), "complaints", "resolved", case
        yield self._delay(24 * HOUR), "complaints", "closed", case

    # -- bad records -----------------------------------------------------------------------------
    def _bad(self, at: int) -> tuple[str, dict]:
        """A duplicate or an encodable event with exactly one defect (docs/contract.md, Bad input), counted in ``stats``."""
        r = self.rng
        kind = r.choice(BAD_KINDS if self._recent else BAD_KINDS[1:])
        self.stats[kind] += 1
        if kind == "duplicate":
            source, event = r.choice(self._recent)
            return source, copy.deepcopy(event)
        c = self._pick(self.customers, self._customer_weights)
        if kind == "missing_customer":
            source, event_type, fields = r.choice((
                ("crm", "order_placed", {"account_id": f"acc-{c.id}"}),
                ("chatbot", "conversation_started", {"conversation_id": f"conv-{r.getrandbits(48):012x}"}),
                ("complaints", "opened", {"complaint_id": f"cmp-{r.getrandbits(48):012x}", "priority": "normal"})))
            return source, self._event(source, event_type, at, c, dict(fields, customer_id=None))
        if kind == "empty_event_id":
            return "web", dict(self._event("web", "page_view", at, c, {"url": "/"}), event_id="")
        source, survey_kind = r.choice((("web", "CSAT"), ("web", "CES"), ("crm", "NPS")))
        survey = None
        if kind == "bad_score":
            scores = SCORES[survey_kind]
            survey = {"kind": survey_kind, "score": r.choice((scores[0] - 1, scores[-1] + 1, scores[-1] + 5)),
                      "comment": None, "touchpoint": None}
        return source, self._event(source, "survey_response", at, c, {"survey": survey})


# -- sinks and the runner ------------------------------------------------------------------------
class JsonlWriter:
    """A sink for run_simulation writing one ``{"source": ..., "event": {...}}`` per line."""

    def __init__(self, path_or_stream: Union[str, Path, IO[str]]):
        self._own = not hasattr(path_or_stream, "write")
        self._out = open(path_or_stream, "w", encoding="utf-8") if self._own else path_or_stream

    def send(self, source: str, event: dict) -> None:
        self._out.write(json.dumps({"source": source, "event": event}, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self.flush()
        if self._own:
            self._out.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: Union[str, Path]) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                yield record["source"], record["event"]


def run_simulation(sink, events: Iterator[tuple[str, dict]], rate: Optional[float], duration_s: Optional[float] = None,
                   progress: Optional[Callable[[int], None]] = None, stop: Optional[threading.Event] = None) -> int:
    """Send events to ``sink.send(source, event)`` at ``rate`` per wall-clock second (None: as fast as it goes).

    Stops when the events run out, at the first event more than ``duration_s`` of event time after the first
    one (with a simulator at the same rate that is wall-clock time too), or when ``stop`` is set. Calls
    ``progress(sent)`` about once a second, flushes the sink and returns the number of events sent.
    """
    started = time.monotonic()
    next_report = started + 1.0
    sent, first_ms = 0, None
    for source, event in events:
        if first_ms is None:
            first_ms = event["event_time"]
        if duration_s is not None and event["event_time"] - first_ms > duration_s * 1000:
            break
        if rate:
            while (ahead := started + sent / rate - time.monotonic()) > 0.001 and not (stop and stop.is_set()):
                time.sleep(min(ahead, 0.1))  # short naps, so a stop request is seen quickly
        if stop is not None and stop.is_set():
            break
        sink.send(source, event)
        sent += 1
        if progress is not None and time.monotonic() >= next_report:
            progress(sent)
            next_report += 1.0
    sink.flush()
    if progress is not None:
        progress(sent)
    return sent
