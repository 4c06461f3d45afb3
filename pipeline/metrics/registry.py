"""The registered metric cores, and the run order derived from what they declare.

A new metric is a new module plus one line in ``CORE_CLASSES`` (docs/adding-a-metric.md lists the rest:
its docs section, reproducing queries, rules and a panel). The order of this tuple does not matter for
correctness: :func:`run_order` puts every producer of a fact before its consumers, keeping this order
otherwise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from pipeline.metrics.actions import ActionCore
from pipeline.metrics.base import MetricCore
from pipeline.metrics.carts import CartCore
from pipeline.metrics.chatbot import ChatbotCore
from pipeline.metrics.churn import ChurnCore
from pipeline.metrics.complaint_spikes import ComplaintSpikeCore
from pipeline.metrics.complaints import ComplaintCore
from pipeline.metrics.engagement import EngagementCore
from pipeline.metrics.followups import FollowupCore
from pipeline.metrics.funnels import FunnelCore
from pipeline.metrics.orders import OrdersCore
from pipeline.metrics.retention import RetentionCore
from pipeline.metrics.segments import SegmentCore
from pipeline.metrics.subscriptions import SubscriptionCore
from pipeline.metrics.surveys import SurveyCore
from pipeline.metrics.time_to_value import TimeToValueCore

if TYPE_CHECKING:
    from pipeline.settings import Settings

CORE_CLASSES: tuple[type[MetricCore], ...] = (
    SurveyCore,
    SegmentCore,
    FunnelCore,
    ComplaintCore,
    ComplaintSpikeCore,
    EngagementCore,
    ChurnCore,
    FollowupCore,
    ActionCore,
    ChatbotCore,
    OrdersCore,
    CartCore,
    TimeToValueCore,
    RetentionCore,
    SubscriptionCore,
)


class CoreConfigError(ValueError):
    """Enabled cores that cannot run together, or a core name nobody registered."""


def run_order(cores: Sequence[type[MetricCore]]) -> list[type[MetricCore]]:
    """The cores with every producer of a fact before each of its consumers (registration order otherwise).
    Raises :class:`CoreConfigError` naming the consumer and the fact when an enabled consumer has no enabled
    producer, or when the declarations form a cycle."""
    producers = {core: {other for other in cores if other is not core and set(other.publishes) & set(core.consumes)}
                 for core in cores}
    for core in cores:
        for fact in core.consumes:
            if not any(fact in other.publishes for other in cores if other is not core):
                makers = [other.name for other in CORE_CLASSES if fact in other.publishes]
                raise CoreConfigError(
                    f"metric core {core.name!r} consumes {fact.__name__}, which only {' or '.join(makers) or 'no core'} "
                    f"publishes; add {' or '.join(makers)} to CXP_METRICS, or remove {core.name}")
    ordered: list[type[MetricCore]] = []
    while len(ordered) < len(cores):
        ready = [core for core in cores if core not in ordered and producers[core] <= set(ordered)]
        if not ready:
            stuck = [core.name for core in cores if core not in ordered]
            raise CoreConfigError(f"metric cores {stuck} consume each other's facts in a cycle")
        ordered.append(ready[0])
    return ordered


def enabled_classes(names: Sequence[str]) -> list[type[MetricCore]]:
    """The registered cores named in CXP_METRICS (``all``: every one), in run order."""
    known = {core.name: core for core in CORE_CLASSES}
    wanted = list(known) if list(names) == ["all"] else list(names)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise CoreConfigError(f"unknown metric cores {', '.join(unknown)}; use all, or some of {', '.join(known)}")
    return run_order([core for core in CORE_CLASSES if core.name in wanted])


def build_cores(settings: "Settings") -> list[MetricCore]:
    """The enabled cores, configured from their settings sections, in run order."""
    return [core.configure(getattr(settings, core.name, None), settings.stream)
            for core in enabled_classes(settings.metrics)]


def durable_order(cores: Sequence[Any]) -> list[str]:
    """The tables the cores write, in the order a flush makes them durable: the reverse of the run order.
    A core's rows are durable before those of every core it consumes facts from, so a crash can never
    leave a restored upstream core (which would not publish the fact again) ahead of its consumers."""
    order: list[str] = []
    for core in reversed(list(cores)):
        order.extend(table for table in core.tables if table not in order)
    return order
