"""Faust's own ceiling: one agent on the single-event topics that takes, acks and counts, nothing else.

Run by the harness as ``python -m benchmarks.noop_agent worker -l warn --without-web``; configured by
environment (BENCH_BROKER, BENCH_PREFIX, BENCH_GROUP, BENCH_DATADIR, BENCH_COUNT_FILE). It writes its
running count of messages to BENCH_COUNT_FILE after every batch. Settings follow runtime/app.py:
raw serializers, earliest offset reset, 6 s session timeout, memory store, no stream_wait_empty.
"""
import os
from pathlib import Path

import faust

from pipeline.registry import SOURCES

PREFIX = os.environ.get("BENCH_PREFIX", "cx.")
COUNT_FILE = Path(os.environ.get("BENCH_COUNT_FILE", "noop.count"))

app = faust.App(
    os.environ.get("BENCH_GROUP", "noop"),
    broker=f"kafka://{os.environ.get('BENCH_BROKER', '127.0.0.1:9092')}",
    datadir=os.environ.get("BENCH_DATADIR", "noop-data"),
    store="memory://",
    autodiscover=False,
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=6,
    broker_heartbeat_interval=2,
    broker_rebalance_timeout=30,
    key_serializer="raw",
    value_serializer="raw",
    stream_wait_empty=False,
)
topics = app.topic(*[f"{PREFIX}events.{s}" for s in SOURCES], key_serializer="raw", value_serializer="raw")
count = 0


@app.agent(topics)
async def noop(stream):
    global count
    async for events in stream.noack_take(100, within=0.2):
        for event in events:
            await stream.ack(event)
        count += len(events)
        COUNT_FILE.write_text(str(count))


if __name__ == "__main__":
    app.main()
