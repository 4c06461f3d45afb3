"""The composition root: one Faust app with the ingest agent, the delivery path and the web endpoints.

Worker state is a cache of what ClickHouse holds. On a rebalance (Faust/aiokafka use the eager
protocol: every member revokes everything, then gets its new assignment) each worker first flushes
and acks what it processed, and stops processing revoked partitions; then each rebuilds the state of
partitions it did not hold from ClickHouse (:mod:`sinks.clickhouse.state`). A partition kept across
the rebalance keeps its state if the revoke-time flush succeeded, else every partition is rebuilt.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Optional

import faust
from prometheus_client import CollectorRegistry

from agents import ingest, snapshots
from agents.collector import register as register_collector
from pipeline.kafka_security import faust_credentials
from pipeline.metrics import build_cores
from pipeline.pii import Pseudonymiser
from pipeline.processor import Processor
from pipeline.registry import EVENT_SCHEMAS, make_registry
from pipeline.secret_values import clickhouse_security
from pipeline.settings import Settings, duration_ms
from pipeline.topics import input_topics, output_topics
from runtime.topics import ensure_topics
from pipeline.validate import Rules
from agents.web_security import Guard
from pipeline.wire import Codec
from sinks.clickhouse.backend import open_backend
from sinks.clickhouse.sink import ClickHouseSink
from sinks.clickhouse.state import read_partitions
from sinks.delivery import Delivery, RetryPolicy
from runtime.commits import CommitWatch
from sinks.prometheus import CONTENT_TYPE, ConsumerLagCollector, CoreCollector, PipelineMetrics, instruments_of

log = logging.getLogger("cxp.worker")


class CxApp(faust.App):
    """A Faust app that makes pending rows durable, within a deadline, before Faust stops its consumer.

    Faust's own wait for unacked messages (stream_wait_empty) is off: messages not acked at stop are
    simply consumed again by the next owner, where dedup catches what already reached ClickHouse.
    """

    before_stop: Optional[Callable[[], Awaitable[Any]]] = None

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
    cores = build_cores(settings, codec)
    dedup_horizon_ms = duration_ms(settings.dedup_horizon)
    processor = Processor(codec, rules, topic_sources, dedup_horizon_ms, cores, settings.deadletter_max_bytes,
                          pii=Pseudonymiser.from_settings(settings))
    prometheus = CollectorRegistry(auto_describe=True)
    metrics = PipelineMetrics(prometheus, instruments_of(cores))
    prometheus.register(CoreCollector(processor))

    guard = Guard(settings)
    backend = open_backend(settings.clickhouse_url, settings.data_dir, settings.clickhouse_database,
                           settings.clickhouse_connect_timeout, settings.clickhouse_timeout, settings.clickhouse_cluster,
                           **clickhouse_security(settings))
    clickhouse_thread = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")  # one connection, one thread

    def run_blocking(function: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return asyncio.get_running_loop().run_in_executor(clickhouse_thread, function, *args)

    settings.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates its folder in it, not the parents
    app = CxApp(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings),
        autodiscover=False,
        store="memory://",
        datadir=str(settings.data_dir / "faust-{conf.name}"),  # not <app id>-data/ in the working directory
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.topic_replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=min(3.0, settings.session_timeout / 3),
        broker_rebalance_timeout=max(30.0, settings.session_timeout * 3),
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        stream_wait_empty=False,
    )
    commits = CommitWatch(metrics, stall_s=settings.session_timeout)
    app.transport.Consumer = commits.consumer_class()
    prometheus.register(ConsumerLagCollector(lambda: app.consumer, topic_sources, commits.committed))
    topics = app.topic(*topic_sources, key_serializer="raw", value_serializer="raw")

    retry = RetryPolicy(settings.sink_retry_backoff, settings.sink_retry_max_backoff)
    delivery = Delivery(
        ClickHouseSink(backend), run_blocking,
        publish=lambda topic, key, value: app.producer.send(topic, key, value, None, None, None),
        topic_names=output_topics(settings), metrics=metrics,
        retry=retry,
        flush_rows=settings.sink_batch_rows, flush_interval=settings.sink_flush_interval)
    metrics.oldest_unacked.set_function(delivery.oldest_unacked_seconds)
    ready = asyncio.Event()  # set once the owned partitions' state is rebuilt; cleared during a rebalance
    ingest.register(app, topics, processor, delivery, settings.batch_max_messages, settings.batch_within, ready)
    snapshots.register(app, processor, delivery, settings.snapshot_interval)

    async def flush_before_stop() -> None:
        if not await delivery.flush_until(max(settings.shutdown_timeout - 3.0, 1.0)):
            log.warning("stopping with data not yet durable; its records are unacked and will be consumed again")

    app.before_stop = flush_before_stop

    @app.on_partitions_revoked.connect
    async def on_revoked(app: Any, revoked: set, **kwargs: Any) -> None:
        # The barrier of a rebalance: make what this worker processed durable and acked before another
        # worker rebuilds the partitions from ClickHouse, then process nothing more until assigned.
        ready.clear()
        flushed = await delivery.flush_until(settings.session_timeout * 0.6)
        if not flushed:
            delivery.discard()
            log.warning("flush at rebalance did not finish; dropping unflushed output, partitions will be rebuilt "
                        "and their records consumed again")
        processor.revoke(forget=not flushed)

    @app.on_partitions_assigned.connect
    async def on_assigned(app: Any, assigned: set, **kwargs: Any) -> None:
        new = processor.assign({tp.partition for tp in assigned if tp.topic in topic_sources})
        if new:
            started, delay = time.monotonic(), None
            while True:  # nothing is processed until the state is back, however long ClickHouse takes
                try:
                    restored = await run_blocking(read_partitions, backend, new, cores, processor.clock_ms,
                                                  dedup_horizon_ms)
                    break
                except Exception as exc:  # noqa: BLE001 - any ClickHouse failure: retry like a failed insert
                    metrics.sink_errors.labels("restore").inc()
                    delay = retry.next_delay(delay)
                    log.error("rebuilding partition state from clickhouse failed; retrying, input held back",
                              extra={"error": f"{type(exc).__name__}: {exc}", "retry_in_s": delay})
                    await asyncio.sleep(delay)
            processor.restore(restored)
            log.info("partition state rebuilt from clickhouse", extra={
                "partitions": new, "rows": restored.row_count(), "seconds": round(time.monotonic() - started, 3)})
        ready.set()

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(metrics.render(), content_type=CONTENT_TYPE)

    register_collector(app, settings, registry, rules, codec, partition_counts, metrics.collector_requests,
                       guard)

    return app
