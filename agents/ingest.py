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
from typing import Any, Callable, Iterator

from pipeline.processor import Processor
from sinks.delivery import Delivery


class Ingest:
    """``await ingest(generation, batches)`` for each fetch; ``batches`` is ``[(tp, records)]``, the records
    of one partition in offset order. ``ready`` is set while the owned partitions' state is rebuilt and
    current: nothing is processed during a rebalance or a rebuild. ``generation()``: the consumer's."""

    def __init__(self, processor: Processor, delivery: Delivery, ready: asyncio.Event, generation: Callable[[], int],
                 max_messages: int, max_bytes: int):
        self.processor, self.delivery, self.ready, self.generation = processor, delivery, ready, generation
        self.max_messages, self.max_bytes = max_messages, max_bytes

    async def __call__(self, generation: int, batches: list[tuple[Any, list[Any]]], caught_up: bool = False) -> None:
        """``caught_up``: no fetched record waits behind these, so their output is flushed right after them
        (:class:`sinks.delivery.Delivery`); else it may wait for more, up to the flush size or interval."""
        await self.ready.wait()
        if generation != self.generation():
            return  # fetched before a rebalance: consumed again from the committed offsets
        owned = [(tp, fetched) for tp, fetched in batches if self.processor.owns(tp.partition)]
        parts = list(self._bounded(owned))
        for index, part in enumerate(parts, 1):
            records, acks = [], []
            for tp, fetched in part:
                records.extend(fetched)  # aiokafka's ConsumerRecords have a Record's fields: no copy per record
                acks.append((tp, [r.offset for r in fetched]))
            self.delivery.add(self.processor.process(records, int(time.time() * 1000)), acks)
            await self.delivery.maybe_flush(caught_up=caught_up and index == len(parts))
            await self.delivery.wait_for_room()

    def _bounded(self, batches: list[tuple[Any, list[Any]]]) -> Iterator[list[tuple[Any, list[Any]]]]:
        """The fetch in parts of at most ``max_messages`` messages and ``max_bytes`` of values (a larger
        message alone), in order; a partition's records stay in offset order across the parts."""
        part: list[tuple[Any, list[Any]]] = []
        messages = size = 0
        for tp, fetched in batches:
            start = 0
            for index, record in enumerate(fetched):
                length = len(record.value or b"")
                if messages and (messages + 1 > self.max_messages or size + length > self.max_bytes):
                    if index > start:
                        part.append((tp, fetched[start:index]))
                    yield part
                    part, messages, size, start = [], 0, 0, index
                messages, size = messages + 1, size + length
            part.append((tp, fetched[start:] if start else fetched))
        if messages:
            yield part

def register_flush_timer(app: Any, delivery: Delivery, interval: float) -> None:
    """Flush what is due even when no records arrive."""

    @app.timer(interval=interval)
    async def flush_when_due() -> None:
        await delivery.maybe_flush()
