"""The ingest step: each fetch of input records through the processor into the delivery path.

Faust's consumer hands over what one fetch returned (:mod:`runtime.batches`): per partition, many records
at once, and the processor takes all of them in one call (the cores one ``add`` per partition). Records
are not acked here: :class:`sinks.delivery.Delivery` acks them, per partition, once everything they
produced is durable. Records of partitions this worker no longer owns, or fetched before a rebalance,
are left alone: their owner consumes them again from the committed offset.
"""
from __future__ import annotations

import asyncio
import time
from bisect import bisect_right
from itertools import accumulate
from typing import Any, Callable, Iterator

from pipeline.processor import Processor
from sinks.delivery import Delivery


class Ingest:
    """``await ingest(generation, batches)`` for each fetch; ``batches`` is ``[(tp, records)]``, the records
    of one partition in offset order. ``ready`` is set while the owned partitions' state is rebuilt and
    current: nothing is processed during a rebalance or a rebuild. ``generation()``: the consumer's."""

    def __init__(self, processor: Processor, delivery: Delivery, ready: asyncio.Event, generation: Callable[[], int],
                 max_messages: int, max_bytes: int, after_batch: Callable[[], None] = lambda: None):
        self.processor, self.delivery, self.ready, self.generation = processor, delivery, ready, generation
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.after_batch = after_batch  # the worker's garbage-collector policy (runtime/gc_policy.py)

    async def __call__(self, generation: int, batches: list[tuple[Any, list[Any]]], caught_up: bool = False) -> None:
        """``caught_up``: no fetched record waits behind these, so their output is flushed right after them
        (:class:`sinks.delivery.Delivery`); else it may wait for more, up to the flush size or interval."""
        await self.ready.wait()
        if generation != self.generation():
            return  # fetched before a rebalance: consumed again from the committed offsets
        owned = [(tp, fetched) for tp, fetched in batches if self.processor.owns(tp.partition)]
        parts = list(self._bounded(owned))
        for index, part in enumerate(parts, 1):
            # each partition's records go to the processor as the run they are (no copy per record; the
            # processor reads a record's offset, key and value) and are acked as one run of offsets
            self.delivery.add(self.processor.process_runs([(tp.topic, tp.partition, fetched) for tp, fetched in part],
                                                          int(time.time() * 1000)),
                              [(tp, fetched[0].offset, fetched[-1].offset) for tp, fetched in part])
            self.after_batch()
            await self.delivery.maybe_flush(caught_up=caught_up and index == len(parts))
            await self.delivery.wait_for_room()

    def _bounded(self, batches: list[tuple[Any, list[Any]]]) -> Iterator[list[tuple[Any, list[Any]]]]:
        """The fetch in parts of at most ``max_messages`` messages and ``max_bytes`` of values (a larger
        message alone), in order; a partition's records stay in offset order across the parts. A part is
        cut only where the next record would not fit; the cuts are found by bisecting each partition's
        running byte count, not by a step per record."""
        max_messages, max_bytes = self.max_messages, self.max_bytes
        part: list[tuple[Any, list[Any]]] = []
        messages = size = 0
        for tp, fetched in batches:
            ends = list(accumulate([len(record.value or b"") for record in fetched]))  # bytes up to each record
            start, count = 0, len(fetched)
            while start < count:
                before = ends[start - 1] if start else 0
                stop = min(count, start + max_messages - messages, bisect_right(ends, before + max_bytes - size, start))
                if stop == start:  # the next record does not fit
                    if messages:
                        yield part
                        part, messages, size = [], 0, 0
                        continue
                    stop = start + 1  # a message larger than max_bytes, alone
                part.append((tp, fetched if stop - start == count else fetched[start:stop]))
                messages, size, start = messages + stop - start, size + ends[stop - 1] - before, stop
        if messages:
            yield part

def register_flush_timer(app: Any, delivery: Delivery, interval: float) -> None:
    """Flush what is due even when no records arrive."""

    @app.timer(interval=interval)
    async def flush_when_due() -> None:
        await delivery.maybe_flush()
