"""Metric cores: one pure module per metric, behind the interface of :mod:`pipeline.metrics.base`.

:func:`build_cores` is the one list of cores, in the order they run: a later core may read the
facts an earlier one published in the same batch. A new metric is a new module plus one line here.
"""
from __future__ import annotations

from typing import Callable

from pipeline.metrics.base import MetricCore
from pipeline.metrics.funnels import FunnelCore
from pipeline.metrics.segments import SegmentCore
from pipeline.metrics.surveys import SurveyCore
from pipeline.settings import Settings

CORES: dict[str, Callable[[Settings], MetricCore]] = {
    "surveys": lambda settings: SurveyCore(settings.window_ms),
    "segments": lambda settings: SegmentCore(settings.window_ms, tuple(settings.segment_dimensions),
                                             settings.segment_max_values),
    "funnels": FunnelCore.from_settings,
}


def build_cores(settings: Settings) -> list[MetricCore]:
    """The enabled cores (setting ``metrics``), in run order."""
    wanted = list(CORES) if settings.metrics == ["all"] else settings.metrics
    unknown = sorted(set(wanted) - set(CORES))
    if unknown:
        raise ValueError(f"unknown metric cores {unknown} in CXP_METRICS; known: {', '.join(CORES)} (or all)")
    return [make(settings) for name, make in CORES.items() if name in wanted]
