"""The composition root: one Faust app with the ingest agent, the sinks and the web endpoints.

Worker state is a cache of what ClickHouse holds: on every partition assignment the worker rebuilds
the dedup ids and survey buckets of newly owned partitions from ClickHouse (see
:mod:`sinks.clickhouse.state`). Rows reach ClickHouse before their offsets are committed, so a new
owner sees everything the old one acknowledged, and a replay of rows flushed but not committed is
caught as duplicates.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Optional

import faust
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest

from agents import ingest, snapshots
from pipeline.collector import register as register_collector
from pipeline.processor import Processor
from pipeline.registry import EVENT_SCHEMAS, make_registry
from pipeline.settings import Settings, duration_ms
from pipeline.topics import ensure_topics, input_topics
from pipeline.validate import Rules
from pipeline.wire import Codec
from sinks.clickhouse.backend import open_backend
from sinks.clickhouse.sink import ClickHouseSink
from sinks.clickhouse.state import load_partition_state
from sinks.prometheus import CONTENT_TYPE, StateCollector, render

log = logging.getLogger("cxp.worker")


class CxApp(faust.App):
    """A Faust app that makes pending rows durable before Faust stops its consumer.

    Faust's own wait for unacked messages (stream_wait_empty) is off: messages not acked at stop are
    simply consumed again by the next owner, where dedup catches what already reached ClickHouse.
    """

    before_stop: Optional[Callable[[], Awaitable[None]]] = None

    async def on_stop(self) -> None:
        if self.before_stop is not None:
            await self.before_stop()
        await super().on_stop()


def build_app(settings: Settings) -> faust.App:
    registry = make_registry(settings.schema_registry_url)
    codec = Codec(registry)
    rules = Rules.from_schemas(
        {source: registry.by_name(name).schema for source, name in EVENT_SCHEMAS.items()},
        duration_ms(settings.max_future_skew), duration_ms(settings.max_lateness),
    )
    topic_sources = input_topics(settings)
    partition_counts = ensure_topics(settings)
    processor = Processor(codec, rules, topic_sources, settings.window_ms, duration_ms(settings.dedup_horizon))

    backend = open_backend(settings.clickhouse_url, settings.data_dir, settings.clickhouse_database)
    clickhouse_thread = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")  # one connection, one thread
    sink = ClickHouseSink(backend, settings.sink_max_retries, settings.sink_retry_backoff)

    app = CxApp(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        autodiscover=False,
        store="memory://",
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=min(3.0, settings.session_timeout / 3),
        broker_rebalance_timeout=max(30.0, settings.session_timeout * 3),
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        stream_wait_empty=False,
    )
    topics = app.topic(*topic_sources, key_serializer="raw", value_serializer="raw")
    delivery = ingest.Delivery(app, sink, clickhouse_thread, settings.topic("deadletter"), settings.sink_batch_rows,
                               settings.sink_flush_interval, settings.sink_retry_backoff)
    ingest.register(app, topics, processor, delivery, settings.batch_max_messages, settings.batch_within)
    app.before_stop = delivery.flush
    snapshots.register(app, processor, delivery, settings.snapshot_interval)
    REGISTRY.register(StateCollector(processor.survey_totals, lambda: dict(processor.source_clock_ms)))

    @app.on_partitions_revoked.connect
    async def on_revoked(app: Any, revoked: set, **kwargs: Any) -> None:
        # Make what this worker processed durable before another worker takes the partitions over.
        await delivery.flush()

    @app.on_partitions_assigned.connect
    async def on_assigned(app: Any, assigned: set, **kwargs: Any) -> None:
        partitions = {tp.partition for tp in assigned if tp.topic in topic_sources}
        new = processor.keep_only(partitions)
        if new:
            started = time.monotonic()
            restored = await asyncio.get_running_loop().run_in_executor(
                clickhouse_thread, load_partition_state, backend, new,
                duration_ms(settings.dedup_horizon), max(settings.window_ms.values()))
            processor.restore(restored)
            log.info("partition state rebuilt from clickhouse", extra={
                "partitions": new, "event_ids": len(restored.event_ids), "survey_rows": len(restored.survey_counts),
                "seconds": round(time.monotonic() - started, 3)})

    collector_metrics = CollectorRegistry()
    collector_requests = Counter("cxp_collector_requests", "HTTP collector answers, by source and status code.",
                                 ["source", "code"], registry=collector_metrics)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(render() + generate_latest(collector_metrics), content_type=CONTENT_TYPE.split(";")[0])

    register_collector(app, settings, registry, rules, codec, partition_counts, collector_requests)

    return app
