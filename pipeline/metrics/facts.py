"""Facts: what one metric core tells the others, typed. Each core declares the facts it publishes (and in
which phase) and those it consumes; :mod:`pipeline.metrics.registry` derives the run order from that and
routes every published fact to every consumer (the rule is in :mod:`pipeline.metrics.base`).
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple, Optional


class SurveyAnswered(NamedTuple):
    """A survey answer counted for the first time. Published by surveys in ``add``."""

    event_id: str
    source: str
    tenant: str
    customer_id: Optional[str]
    kind: str
    score: int
    event_ms: int
    attributes: dict[str, str]
    touchpoint: Optional[str]
    comment: Optional[str]


class ComplaintOpened(NamedTuple):
    """A complaint's first ``opened`` became known. Published by complaints in ``tick``."""

    tenant: str
    customer_id: str
    complaint_id: str
    opened_ms: int


class SlaBreached(NamedTuple):
    """A complaint missed an SLA stage (once per complaint and stage). Published by complaints in ``tick``."""

    tenant: str
    customer_id: str
    complaint_id: str
    priority: str
    stage: str
    late_ms: int
    at_ms: int


class ChurnLevelChanged(NamedTuple):
    """A customer's churn-risk level changed. Published by churn in ``tick``."""

    tenant: str
    customer_id: str
    level: str
    previous_level: str
    score: float
    reasons: tuple[str, ...]
    at_ms: int  # the partition's clock when the change was found
    sequence: int
    reached_ms: int  # when the customer's evidence first added up to the new level (churn.reached_ms)


class ActionRequested(NamedTuple):
    """A follow-up action some core wants sent; the actions core sends each ``action_id`` once."""

    action_id: str
    kind: str
    tenant: str
    customer_id: str
    reason: str
    context: dict[str, str]
    due_ms: int
    created_ms: int


def action_id(kind: str, *cause: object) -> str:
    """Deterministic id of a follow-up action from its cause: the same cause always gets the same id.
    sha1 of ``kind|cause|...``, e.g. ``detractor_followup|<event id>``."""
    return hashlib.sha1("|".join((kind, *map(str, cause))).encode("utf-8")).hexdigest()
