"""Metric cores: one pure module per metric, behind the interface of :mod:`pipeline.metrics.base`.

:func:`build_cores` is the one list of cores, in the order they run: a later core may read the
facts an earlier one published in the same batch. A new metric is a new module plus one line here.
"""
from __future__ import annotations

from typing import Callable

from pipeline.metrics.actions import ActionCore
from pipeline.metrics.base import MetricCore
from pipeline.metrics.churn import ChurnConfig, ChurnCore
from pipeline.metrics.complaint_spikes import ComplaintSpikeCore, SpikeTest
from pipeline.metrics.complaints import ComplaintCore
from pipeline.metrics.engagement import EngagementCore
from pipeline.metrics.followups import FollowupCore
from pipeline.metrics.funnels import FunnelCore
from pipeline.metrics.segments import SegmentCore
from pipeline.metrics.surveys import SurveyCore
from pipeline.settings import Settings, duration_ms, sla_targets
from pipeline.wire import Codec

# Each factory takes the settings and the worker's codec (the cores that publish Avro messages share it,
# and with it the one schema-registry client).
CORES: dict[str, Callable[[Settings, Codec], MetricCore]] = {
    "surveys": lambda settings, codec: SurveyCore(settings.window_ms),
    "segments": lambda settings, codec: SegmentCore(settings.window_ms, tuple(settings.segment_dimensions),
                                                    settings.segment_max_values),
    "funnels": lambda settings, codec: FunnelCore.from_settings(settings),
    "complaints": lambda settings, codec: ComplaintCore(
        sla_targets(settings.complaint_sla), duration_ms(settings.max_lateness),
        settings.complaint_category_max_values, settings.complaint_max_events),
    "complaint_spikes": lambda settings, codec: ComplaintSpikeCore(SpikeTest(
        duration_ms(settings.spike_bucket), settings.spike_alpha, settings.spike_min_count, settings.spike_min_ratio,
        settings.spike_weeks)),
    "engagement": lambda settings, codec: EngagementCore({w: duration_ms(w) for w in settings.engagement_windows}),
    "churn": lambda settings, codec: ChurnCore(churn_config(settings), codec),
    "followups": lambda settings, codec: FollowupCore(duration_ms(settings.followup_due),
                                                      duration_ms(settings.followup_recovery_window)),
    # actions must stay last: it sends the follow-up actions every core before it published
    "actions": lambda settings, codec: ActionCore(codec, duration_ms(settings.max_lateness)),
}


def churn_config(settings: Settings) -> ChurnConfig:
    return ChurnConfig(
        weights=settings.churn_weights, medium=settings.churn_medium, high=settings.churn_high,
        inactivity_ms=duration_ms(settings.churn_inactivity), memory_ms=duration_ms(settings.churn_memory),
        handoff_timeout_ms=duration_ms(settings.churn_handoff_timeout), drop=settings.churn_activity_drop,
        forget_ms=duration_ms(settings.churn_forget))


def build_cores(settings: Settings, codec: Codec) -> list[MetricCore]:
    """The enabled cores (setting ``metrics``), in run order."""
    wanted = list(CORES) if settings.metrics == ["all"] else settings.metrics
    unknown = sorted(set(wanted) - set(CORES))
    if unknown:
        raise ValueError(f"unknown metric cores {unknown} in CXP_METRICS; known: {', '.join(CORES)} (or all)")
    return [make(settings, codec) for name, make in CORES.items() if name in wanted]
