"""Offset commits seen from the worker: failures counted and logged, committed offsets kept for the lag gauge."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Mapping

from faust.transport.drivers import aiokafka as aiokafka_driver

from sinks.prometheus import PipelineMetrics

log = logging.getLogger("cxp.worker")


class CommitWatch:
    """Counts failed offset commits and logs the first of each incident, with the fix, and the recovery.
    Keeps the group's committed offset of each partition (``committed``), for the consumer lag gauge.

    A commit that has not finished after ``stall_s`` counts as failed: with the broker gone, aiokafka
    waits for a coordinator instead of failing, and a stalled commit is what an operator must see.
    """

    def __init__(self, metrics: PipelineMetrics, stall_s: float):
        self.metrics, self.stall_s, self.failing = metrics, stall_s, False
        self.committed: dict[Any, int] = {}

    def consumer_class(self) -> type:
        watch = self

        class CountingConsumer(aiokafka_driver.Consumer):
            async def _commit(self, offsets: Mapping[Any, int]) -> bool:
                commit = asyncio.ensure_future(super()._commit(offsets))
                done, _ = await asyncio.wait({commit}, timeout=watch.stall_s)
                if not done:
                    watch.report(False)
                ok = False
                try:
                    ok = await commit
                    if ok:
                        watch.committed.update(offsets)
                    return ok
                finally:
                    if done or ok:
                        watch.report(ok or not offsets)

            async def seek_to_committed(self) -> Mapping[Any, int]:
                # Faust calls this after every assignment: the broker's committed offsets of the owned partitions.
                offsets = await super().seek_to_committed()
                for tp, offset in offsets.items():
                    if offset is None:
                        watch.committed.pop(tp, None)
                    else:
                        watch.committed[tp] = offset
                return offsets

        return CountingConsumer

    def report(self, ok: bool) -> None:
        if ok:
            if self.failing:
                log.warning("offset commits succeed again")
            self.failing = False
            return
        self.metrics.commit_errors.inc()
        if not self.failing:
            self.failing = True
            log.error("offset commit failed: records already durable may be consumed again after a restart (dedup "
                      "absorbs them). Usually the broker restarted or the group is rebalancing and it recovers by "
                      "itself; if cxp_commit_errors_total keeps growing, check the broker and CXP_KAFKA_URL")
