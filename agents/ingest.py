"""The ingest agent: batches of input records through the processor into the delivery path.

Records are taken without acking (``noack_take``); :class:`sinks.delivery.Delivery` acks them once
everything they produced is durable. Records of partitions this worker no longer owns (fetched before
a rebalance) are left alone: their new owner consumes them again.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from pipeline.processor import Processor, Record
from sinks.delivery import Delivery


def register(app: Any, topics: Any, processor: Processor, delivery: Delivery, batch_max: int, batch_within: float,
             ready: asyncio.Event) -> None:
    """Attach the ingest agent and its flush timer to the Faust app. ``ready`` is set while the owned
    partitions' state is rebuilt and current: nothing is processed during a rebalance or a rebuild."""

    @app.agent(topics, name="ingest")
    async def ingest(stream: Any) -> None:
        delivery.acknowledge = stream.ack
        async for events in stream.noack_take(batch_max, within=batch_within):
            await ready.wait()
            events = [event for event in events if processor.owns(event.message.partition)]
            records = [Record(m.topic, m.partition, m.offset, m.key, m.value) for m in (e.message for e in events)]
            delivery.add(processor.process(records, int(time.time() * 1000)), events)
            await delivery.maybe_flush()
            await delivery.wait_for_room()

    @app.timer(interval=min(0.25, batch_within))
    async def flush_when_due() -> None:
        await delivery.maybe_flush()
