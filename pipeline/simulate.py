"""A seeded, reproducible generator of a realistic CX event mix, and a runner that paces it.

The generator is pure: ``random.Random(seed)`` only, so the same seed and arguments give the same
events. Customers start activities (a shopping journey, a survey answer, a chatbot conversation, a
CRM change, a complaint) and each activity schedules its follow-up events in event time, so drop-off
in the funnel and the delays of complaint handling come out as they would from real systems.
"""
from __future__ import annotations

import heapq
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import IO, Iterator, Optional, Sequence, Union

SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN
SPIKE_MS = 10 * MIN  # how long a complaint spike lasts
SPIKE_FACTOR = 8  # opened complaints per minute during a spike, relative to the baseline

# Activity mix: (name, weight). Each activity emits ~EVENTS_PER_ACTIVITY events on average.
ACTIVITIES = (("shop", 45), ("survey", 15), ("chat", 12), ("crm", 10), ("account", 5), ("complaint", 2))
EVENTS_PER_ACTIVITY = 3.2
NPS_BY_TENANT = {"acme": (1, 1, 1, 1, 1, 2, 3, 6, 9, 14, 12), "globex": (3, 2, 2, 3, 4, 5, 6, 9, 9, 8, 5)}
REGIONS, PLANS = ("eu", "us", "apac"), ("free", "basic", "pro")
DEVICES, LANGUAGES = ("mobile", "desktop", "tablet"), ("en", "de", "fr", "es")
CATEGORIES = ("billing", "delivery", "product", "service", "technical")
CHANNELS = ("phone", "email", "social", "store", "web", "chatbot")


@dataclass(frozen=True)
class Customer:
    id: str
    tenant: str
    attributes: dict


class Simulator:
    def __init__(self, seed: int, customers: int = 2000, tenants: Sequence[str] = ("acme", "globex"),
                 start_ms: Optional[int] = None, spike_at_ms: Optional[int] = None, bad_rate: float = 0.0):
        self.rng = random.Random(seed)
        self.now = start_ms if start_ms is not None else int(time.time() * 1000)
        self.spike_at_ms = spike_at_ms
        self.bad_rate = bad_rate
        self.customers = [self._customer(i, tenants) for i in range(customers)]
        self.stats: Counter = Counter()
        self._heap: list[tuple[int, int, str, dict]] = []
        self._seq = 0
        self._recent: list[tuple[str, dict]] = []
        self._complaints = 0

    def _customer(self, i: int, tenants: Sequence[str]) -> Customer:
        r = self.rng
        return Customer(f"cust-{i:06d}", tenants[i % len(tenants)], {
            "region": r.choice(REGIONS), "plan": r.choice(PLANS), "device": r.choice(DEVICES),
            "language": r.choice(LANGUAGES)})

    # -- building events -------------------------------------------------------------------------
    def _event(self, source: str, event_type: str, at: int, customer: Optional[Customer], **extra) -> None:
        self._seq += 1
        event = {"event_id": f"{self.rng.getrandbits(64):016x}-{self._seq}", "event_type": event_type,
                 "event_time": at, "tenant": customer.tenant if customer else "acme",
                 "customer_id": customer.id if customer else None, "session_id": None,
                 "attributes": dict(customer.attributes) if customer else {}}
        event.update(extra)
        heapq.heappush(self._heap, (at, self._seq, source, event))

    def _survey(self, kind: str, tenant: str) -> dict:
        if kind == "NPS":
            score = self.rng.choices(range(11), weights=NPS_BY_TENANT.get(tenant, NPS_BY_TENANT["acme"]))[0]
        elif kind == "CSAT":
            score = self.rng.choices(range(1, 6), weights=(1, 1, 2, 5, 5))[0]
        else:
            score = self.rng.choices(range(1, 8), weights=(6, 6, 4, 3, 2, 1, 1))[0]
        return {"kind": kind, "score": score, "comment": None, "touchpoint": self.rng.choice(("checkout", "support", "onboarding"))}

    def _later(self, at: int, low_s: float, high_s: float) -> int:
        return at + int(self.rng.uniform(low_s, high_s) * SEC)

    # -- activities ------------------------------------------------------------------------------
    def _shop(self, c: Customer, at: int) -> None:
        anonymous = self.rng.random() < 0.2
        who = None if anonymous else c
        extra = {"anonymous_id": f"anon-{self.rng.getrandbits(32):08x}"} if anonymous else {}
        session = f"s-{self.rng.getrandbits(40):010x}"
        product = f"p-{self.rng.randrange(200):03d}"
        self._event("web", "page_view", at, who, url="/", session_id=session, **extra)
        at = self._later(at, 2, 30)
        self._event("web", "product_view", at, who, url=f"/p/{product}", product_id=product, session_id=session, **extra)
        for step, p, delay in (("add_to_cart", 0.45, 120), ("checkout_started", 0.6, 180), ("purchase", 0.7, 300)):
            if self.rng.random() >= p:
                return
            at = self._later(at, 5, delay)
            revenue = {"order_id": f"o-{self._seq}", "revenue": round(self.rng.uniform(5, 400), 2), "currency": "EUR"} \
                if step == "purchase" else {}
            self._event("web", step, at, who, product_id=product, session_id=session, **extra, **revenue)

    def _survey_activity(self, c: Customer, at: int) -> None:
        source, kind = self.rng.choice((("web", "NPS"), ("crm", "NPS"), ("crm", "NPS"), ("web", "CSAT"),
                                        ("chatbot", "CSAT"), ("web", "CES"), ("crm", "CES")))
        extra = {"conversation_id": f"conv-{self._seq}"} if source == "chatbot" else {}
        self._event(source, "survey_response", at, c, survey=self._survey(kind, c.tenant), **extra)

    def _chat(self, c: Customer, at: int) -> None:
        conv = f"conv-{self.rng.getrandbits(40):010x}"
        self._event("chatbot", "conversation_started", at, c, conversation_id=conv)
        for _ in range(self.rng.randint(1, 3)):
            at = self._later(at, 3, 40)
            self._event("chatbot", "user_message", at, c, conversation_id=conv, intent=self.rng.choice(("order", "refund", "account")))
            at = self._later(at, 1, 5)
            self._event("chatbot", "bot_message", at, c, conversation_id=conv)
        if self.rng.random() < 0.25:
            at = self._later(at, 5, 60)
            self._event("chatbot", "handoff_requested", at, c, conversation_id=conv)
            if self.rng.random() < 0.8:
                at = self._later(at, 30, 300)
                self._event("chatbot", "agent_joined", at, c, conversation_id=conv)
        at = self._later(at, 10, 120)
        if self.rng.random() < 0.75:
            self._event("chatbot", "conversation_resolved", at, c, conversation_id=conv)
            if self.rng.random() < 0.3:
                self._event("chatbot", "survey_response", self._later(at, 5, 60), c, conversation_id=conv,
                            survey=self._survey("CSAT", c.tenant))
        else:
            self._event("chatbot", "conversation_abandoned", at, c, conversation_id=conv)

    def _crm(self, c: Customer, at: int) -> None:
        event_type = self.rng.choices(
            ("subscription_started", "subscription_renewed", "subscription_upgraded", "subscription_downgraded",
             "subscription_cancelled", "order_placed", "account_updated", "contact_logged"),
            weights=(10, 25, 8, 6, 4, 25, 12, 10))[0]
        plan = c.attributes["plan"]
        self._event("crm", event_type, at, c, account_id=f"acc-{c.id}", plan=plan,
                    mrr={"free": 0.0, "basic": 19.0, "pro": 99.0}[plan])

    def _account(self, c: Customer, at: int) -> None:
        self._event("web", self.rng.choice(("login", "login", "signup", "search")), at, c, url="/account")

    def _complaint(self, c: Customer, at: int) -> None:
        self._complaints += 1
        complaint = {"complaint_id": f"cmp-{self._seq}-{self._complaints}",
                     "priority": self.rng.choices(("low", "normal", "high", "urgent"), weights=(3, 10, 4, 1))[0],
                     "category": self.rng.choice(CATEGORIES), "origin_channel": self.rng.choice(CHANNELS)}
        self._event("complaints", "opened", at, c, **complaint)
        at = self._later(at, 60, 4 * 3600)
        self._event("complaints", "acknowledged", at, c, agent_id=f"agent-{self.rng.randrange(20)}", **complaint)
        if self.rng.random() < 0.15:
            at = self._later(at, 600, 6 * 3600)
            self._event("complaints", "escalated", at, c, **complaint)
        at = self._later(at, 1800, 48 * 3600)
        self._event("complaints", "resolved", at, c, **complaint)
        if self.rng.random() < 0.1:
            at = self._later(at, 3600, 24 * 3600)
            self._event("complaints", "reopened", at, c, **complaint)
            at = self._later(at, 1800, 24 * 3600)
            self._event("complaints", "resolved", at, c, **complaint)
        self._event("complaints", "closed", self._later(at, 600, 3 * 24 * 3600), c, **complaint)

    def _start_activity(self, at: int) -> None:
        customer = self.rng.choice(self.customers)
        if self.spike_at_ms is not None and self.spike_at_ms <= at < self.spike_at_ms + SPIKE_MS \
                and self.rng.random() < 0.03 * (SPIKE_FACTOR - 1):
            self._complaint(customer, at)  # the spike: extra complaints on top of the normal mix
        name = self.rng.choices([a for a, _ in ACTIVITIES], weights=[w for _, w in ACTIVITIES])[0]
        {"shop": self._shop, "survey": self._survey_activity, "chat": self._chat, "crm": self._crm,
         "account": self._account, "complaint": self._complaint}[name](customer, at)

    # -- bad records -----------------------------------------------------------------------------
    def _spoil(self, source: str, event: dict) -> tuple[str, dict]:
        """A duplicate, or a bad but encodable version of an event (SPEC §4); counted in stats."""
        kind = self.rng.choices(("duplicate", "bad_score", "missing_survey", "empty_event_id", "missing_customer"),
                                weights=(40, 20, 15, 10, 15))[0]
        if kind == "duplicate" and not self._recent:
            kind = "bad_score"
        self.stats[kind] += 1
        if kind == "duplicate":
            return self.rng.choice(self._recent)
        if kind == "empty_event_id":
            return source, dict(event, event_id="")
        crm = {k: event[k] for k in ("event_time", "tenant", "customer_id", "session_id", "attributes")}
        crm["event_id"] = f"bad-{self._seq}-{self.stats.total()}"
        if kind == "missing_customer":
            return "crm", dict(crm, event_type="order_placed", customer_id=None)
        survey = {"kind": "NPS", "score": 11, "comment": None, "touchpoint": None} if kind == "bad_score" else None
        return "crm", dict(crm, event_type="survey_response", customer_id=crm["customer_id"] or "cust-anon", survey=survey)

    # -- output ----------------------------------------------------------------------------------
    def events(self, count: Optional[int] = None, until_ms: Optional[int] = None, rate: float = 1000.0) -> Iterator[tuple[str, dict]]:
        """(source, event) in non-decreasing event_time, about ``rate`` events per simulated second."""
        gap_ms = 1000.0 * EVENTS_PER_ACTIVITY / rate
        produced = 0
        clock = float(self.now)
        while count is None or produced < count:
            clock += self.rng.expovariate(1.0 / gap_ms)
            self.now = int(clock)
            if until_ms is not None and self.now > until_ms:
                return
            self._start_activity(self.now)
            while self._heap and self._heap[0][0] <= self.now:
                _, _, source, event = heapq.heappop(self._heap)
                if self.bad_rate and self.rng.random() < self.bad_rate:
                    source, event = self._spoil(source, event)
                else:
                    self._recent.append((source, event))
                    if len(self._recent) > 100:
                        self._recent.pop(0)
                self.stats[f"events_{source}"] += 1
                yield source, event
                produced += 1
                if count is not None and produced >= count:
                    return


class JsonlWriter:
    """A sink for run_simulation writing one {"source": ..., "event": {...}} per line."""

    def __init__(self, path_or_stream: Union[str, Path, IO[str]]):
        self._own = not hasattr(path_or_stream, "write")
        self._out = open(path_or_stream, "w") if self._own else path_or_stream

    def send(self, source: str, event: dict) -> None:
        self._out.write(json.dumps({"source": source, "event": event}, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        self._out.flush()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        if self._own:
            self._out.close()


def read_jsonl(path: Union[str, Path]) -> Iterator[tuple[str, dict]]:
    with open(path) as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                yield record["source"], record["event"]


def run_simulation(sink, events: Iterator[tuple[str, dict]], duration_s: Optional[float] = None, paced: bool = True,
                   stop: Optional[Event] = None) -> int:
    """Send events to sink (anything with send(source, event)); paced, event time tracks the wall clock.

    Stops after duration_s of event time, when events run out, or when stop is set. Returns the count.
    """
    sent = 0
    first_ms: Optional[int] = None
    wall_start = time.monotonic()
    for source, event in events:
        if first_ms is None:
            first_ms = event["event_time"]
        offset_s = (event["event_time"] - first_ms) / 1000
        if duration_s is not None and offset_s > duration_s:
            break
        if stop is not None and stop.is_set():
            break
        if paced:
            ahead = offset_s - (time.monotonic() - wall_start)
            if ahead > 0.005:
                time.sleep(min(ahead, 0.5))
        sink.send(source, event)
        sent += 1
    sink.flush()
    return sent
