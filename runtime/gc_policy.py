"""The worker's garbage-collector policy (issue 17; docs/performance.md, "Engagement, orders, retention and the
collector, CPU per event").

What a processed batch leaves behind lives on: the cores' state, and the rows that wait in the delivery buffer
until the flush. CPython's collector walks every container that survives a young collection again in the
middle generation, and each walk touches every object it refers to (mostly strings, scattered in memory): at
50k customers, with the young threshold raised already, that was ~6 µs of CPU per event with all cores, ~2 with
surveys only. So after each batch the worker moves every tracked object to the permanent generation
(``gc.freeze()``, constant time): young collections then see only the batch being processed. Frozen objects are
still freed by reference counting (the rows after their flush); only garbage in reference cycles stays, of
which the processor makes none and Faust, aiokafka and asyncio some. A full collection (everything unfrozen,
collected, frozen again) runs after a restore, and once a minute when the process's allocated blocks have grown
by a quarter since the last one (CPython's own rule for its oldest generation, on memory): so cyclic garbage
stays within a quarter of what is live or a minute's worth, and a worker whose state still grows pays at most
one full walk of it a minute (~0.3 s at 50k customers).

Only ``cxp worker`` turns it on (:meth:`GcPolicy.start`); elsewhere (tests, tools building the app) its calls do
nothing.
"""
from __future__ import annotations

import gc
import sys
import time

# A young collection every 20,000 allocations instead of 700: a batch's temporaries die young, and what survives
# is frozen after the batch anyway (docs/performance.md, "The per-event path").
WORKER_GC_THRESHOLDS = (20_000, 10, 10)
GROWTH = 1.25  # a full collection once the allocated blocks have grown by this factor since the last one
CHECK_S = 60.0  # how often the allocated blocks are counted (it walks the allocator's pools: ~1 ms at 500 MB)


class GcPolicy:
    """``after_batch()`` after each processed batch, ``collect()`` after a restore."""

    def __init__(self, growth: float = GROWTH, check_s: float = CHECK_S):
        self.growth, self.check_s = growth, check_s
        self.enabled = False
        self.full_collections = 0
        self._blocks = 0  # allocated blocks after the last full collection
        self._checked = 0.0  # time.monotonic() of the last count or full collection

    def start(self) -> None:
        """Turn the policy on for this process (the worker's): thresholds, then a first full collection."""
        gc.set_threshold(*WORKER_GC_THRESHOLDS)
        self.enabled = True
        self.collect()

    def after_batch(self) -> None:
        if not self.enabled:
            return
        if time.monotonic() - self._checked >= self.check_s:
            self._checked = time.monotonic()
            if sys.getallocatedblocks() > self._blocks * self.growth:
                self.collect()
                return
        gc.freeze()

    def collect(self) -> None:
        """A full collection of everything, frozen included; what is left is frozen again."""
        if not self.enabled:
            return
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.full_collections += 1
        self._blocks, self._checked = sys.getallocatedblocks(), time.monotonic()


WORKER_GC = GcPolicy()  # the process's: the collector is global
