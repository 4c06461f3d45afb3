"""The composition root: one Faust app with the ingest agent, the delivery path and the web endpoints.

:func:`build_app` reads as the list of parts; each part has its small builder below. Worker state is a
cache of what ClickHouse holds. On a rebalance (Faust/aiokafka use the eager protocol: every member
revokes everything, then gets its new assignment) each worker first flushes and acks what it processed,
and stops processing revoked partitions; then each rebuilds the state of partitions it did not hold from
ClickHouse (:mod:`sinks.clickhouse.state`). A partition kept across the rebalance keeps its state if the
revoke-time flush succeeded, else every partition is rebuilt.
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
from agents.ingest import Ingest
from agents.collector import register as register_collector
from agents.web_security import METRICS_PATH, PROGRESS_PATH, Guard
from pipeline.kafka_security import faust_credentials
from pipeline.metrics.registry import build_cores, durable_order
from pipeline.pii import Pseudonymiser
from pipeline.processor import Processor
from pipeline.registry import make_registry
from pipeline.settings import Settings
from pipeline.topics import input_topics, output_topics
from pipeline.validate import Rules
from pipeline.wire import Codec
from runtime.batches import ack_all, batch_consumer_class
from runtime.commits import COORDINATOR_LOGGER, CommitWatch
from runtime.gc_policy import WORKER_GC
from runtime.topics import ensure_topics
from sinks.clickhouse.backend import connect
from sinks.clickhouse.sink import ClickHouseSink
from sinks.clickhouse.state import read_partitions
from sinks.delivery import Delivery, Retrier, RetryPolicy
from sinks.prometheus import CONTENT_TYPE, ConsumerLagCollector, CoreCollector, PipelineMetrics, instruments_of

log = logging.getLogger("cxp.worker")
RunBlocking = Callable[..., Awaitable[Any]]


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
    registry = make_registry(settings.kafka.schema_registry_url)
    codec = Codec(registry)
    rules = Rules.from_registry(registry, settings.stream)
    topic_sources = input_topics(settings.kafka)
    partition_counts = ensure_topics(settings)
    processor = Processor(codec, rules, topic_sources, settings.stream.dedup_horizon.ms, build_cores(settings),
                          settings.stream.deadletter_max_bytes, pii=Pseudonymiser.from_settings(settings.security))
    prometheus = CollectorRegistry(auto_describe=True)
    metrics = PipelineMetrics(prometheus, instruments_of(processor.cores))
    prometheus.register(CoreCollector(processor))
    backend = connect(settings.clickhouse, settings.data_dir)
    run_blocking = clickhouse_thread()
    retrier = Retrier(RetryPolicy(settings.sink.retry_backoff.seconds, settings.sink.retry_max_backoff.seconds),
                      metrics.sink_errors)

    app = faust_app(settings)
    ready = asyncio.Event()  # set once the owned partitions' state is rebuilt; cleared during a rebalance
    commits = CommitWatch(metrics, stall_s=settings.kafka.session_timeout.seconds)
    logging.getLogger(COORDINATOR_LOGGER).addFilter(commits.log_filter)
    prometheus.register(ConsumerLagCollector(lambda: app.consumer, topic_sources, commits.committed))
    delivery = Delivery(
        ClickHouseSink(backend), run_blocking,
        publish=lambda topic, key, value: app.producer.send(topic, key, value, None, None, None),
        topic_names=output_topics(settings.kafka), codec=codec, table_order=durable_order(processor.cores),
        metrics=metrics, retrier=retrier, flush_rows=settings.sink.batch_rows,
        flush_interval=settings.sink.flush_interval.seconds,
        min_flush_interval=settings.sink.min_flush_interval.seconds)
    metrics.oldest_unacked.set_function(delivery.oldest_unacked_seconds)

    # Faust fetches and owns the group and the offsets; each fetch of the input topics goes to Ingest at once.
    app.topics.add(app.topic(*topic_sources, key_serializer="raw", value_serializer="raw"))
    app.transport.Consumer = batch_consumer_class(
        commits.consumer_class(), topic_sources,
        Ingest(processor, delivery, ready, generation=lambda: app.consumer_generation_id,
               max_messages=settings.kafka.batch_max_messages, max_bytes=settings.kafka.batch_max_bytes,
               after_batch=WORKER_GC.after_batch))
    delivery.acknowledge = lambda acks: ack_all(app.consumer, acks)
    ingest.register_flush_timer(app, delivery, interval=0.2)  # a due flush waits at most this long
    snapshots.register(app, processor, delivery, settings.snapshot_interval.seconds)
    handle_rebalances(app, settings, processor, delivery, ready,
                      rebuild=lambda partitions: retrier.run("restore", run_blocking, read_partitions, backend,
                                                             partitions, processor.cores,
                                                             settings.stream.dedup_horizon.ms))
    app.before_stop = lambda: flush_before_stop(delivery, settings.shutdown_timeout.seconds)

    @app.page(METRICS_PATH)
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(metrics.render(), content_type=CONTENT_TYPE)

    @app.page(PROGRESS_PATH)
    async def progress_page(web: Any, request: Any) -> Any:
        return web.json(metrics.progress())

    register_collector(app, settings, registry, rules, codec, partition_counts, metrics.collector_requests,
                       Guard(settings))
    return app


def clickhouse_thread() -> RunBlocking:
    """Run blocking ClickHouse calls on one thread (one connection), off the event loop."""
    thread = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")

    def run_blocking(function: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return asyncio.get_running_loop().run_in_executor(thread, function, *args)

    return run_blocking


def faust_app(settings: Settings) -> CxApp:
    kafka = settings.kafka
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates its folder in it, not the parents
    return CxApp(
        kafka.app_id,
        broker=[f"kafka://{server}" for server in kafka.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(kafka),
        autodiscover=False,
        store="memory://",
        datadir=str(settings.data_dir / "faust-{conf.name}"),  # not <app id>-data/ in the working directory
        web_host=settings.web.host,
        web_bind=settings.web.host,
        web_port=settings.web.port,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.topic_replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=kafka.session_timeout.seconds,
        broker_heartbeat_interval=min(3.0, kafka.session_timeout.seconds / 3),
        broker_rebalance_timeout=max(30.0, kafka.session_timeout.seconds * 3),
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        stream_wait_empty=False,
        broker_max_poll_records=kafka.batch_max_messages,  # records per fetch handed to Ingest
    )


def handle_rebalances(app: faust.App, settings: Settings, processor: Processor, delivery: Delivery,
                      ready: asyncio.Event, rebuild: Callable[[list[int]], Awaitable[Any]]) -> None:
    """The revoke barrier and the rebuild of newly assigned partitions (``rebuild`` retries until it succeeds)."""
    topic_sources = input_topics(settings.kafka)

    @app.on_partitions_revoked.connect
    async def on_revoked(app: Any, revoked: set, **kwargs: Any) -> None:
        # The barrier of a rebalance: make what this worker processed durable and acked before another
        # worker rebuilds the partitions from ClickHouse, then process nothing more until assigned.
        ready.clear()
        flushed = await delivery.flush_until(settings.kafka.session_timeout.seconds * 0.6)
        if not flushed:
            delivery.discard()
            log.warning("flush at rebalance did not finish; dropping unflushed output, partitions will be rebuilt "
                        "and their records consumed again")
        processor.revoke(forget=not flushed)

    @app.on_partitions_assigned.connect
    async def on_assigned(app: Any, assigned: set, **kwargs: Any) -> None:
        new = processor.assign({tp.partition for tp in assigned if tp.topic in topic_sources})
        if new:  # nothing is processed until the state is back, however long ClickHouse takes
            started = time.monotonic()
            restored = await rebuild(new)
            processor.restore(restored)
            WORKER_GC.collect()  # the restored state, frozen: young collections never walk it
            log.info("partition state rebuilt from clickhouse", extra={
                "partitions": new, "rows": restored.row_count(), "seconds": round(time.monotonic() - started, 3)})
        ready.set()


async def flush_before_stop(delivery: Delivery, shutdown_timeout_s: float) -> None:
    if not await delivery.flush_until(max(shutdown_timeout_s - 3.0, 1.0)):
        log.warning("stopping with data not yet durable; its records are unacked and will be consumed again")

