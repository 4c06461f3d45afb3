"""What the ClickHouse inserts of a flush cost: the driver's encoding per column, and where a flush's time goes.

    python -m benchmarks.insert_costs                      # 50k events, flushes of 5,000 events, pool of 4
    python -m benchmarks.insert_costs --flush-events 2000 --pool 8 --numpy

The rows are the worker's: the harness's input (``benchmarks.harness.make_events``) through a ``Processor``
with every core, each table's rows as one flush would hand them to ``ClickHouseSink``. Against a ClickHouse
server started here (Debian's 18.16 on this machine; ``--clickhouse-url`` for another one):

1. **Encoding**: clickhouse-driver's ``write_column`` of each table's columns into a discarding socket
   buffer, CPU µs per row (best of 3), per table and column and per column type: the part of an insert that
   holds the GIL in the worker. ``--numpy`` adds the driver's ``use_numpy`` path for the ``events`` columns
   (needs pandas, the driver's ``[numpy]`` extra), numpy arrays built from the row values counted in.
2. **Flushes**: the rows cut into flushes of ``--flush-events`` events, every table inserted through
   ``ClickHouseSink`` in the worker's order (``durable_order``, ``events`` last), per table: wall, client
   thread CPU, the server's own query duration (``system.query_log``) and the server process's CPU
   (background merges included) per row, and per flush.
3. **Tables at once**: each flush inserted twice, into two databases, alternating which goes first: one
   table after the other on one connection, and in stages on ``--pool`` connections (tables with no order
   between them at once, a stage after the one whose facts it consumes, ``events`` last). Median flush
   wall of each and the median ratio of the pairs.
Ratios within one run are what to compare: the machine is shared.
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from benchmarks.harness import batch_records, make_events, processor_for
from pipeline.metrics.base import Output
from pipeline.metrics.registry import durable_order
from pipeline.registry import BundledRegistry
from pipeline.tables import TABLES
from pipeline.wire import Codec
from sinks.clickhouse.backend import NativeBackend
from sinks.clickhouse.sink import ClickHouseSink

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def worker_rows(events: int, customers: int) -> tuple[dict[str, list[tuple]], list]:
    """Each table's rows for the events (as plain tuples), and the cores that made them."""
    codec = Codec(BundledRegistry())
    records = batch_records(make_events(events, customers), codec)
    processor = processor_for(codec)
    out, now = Output(), int(time.time() * 1000)
    for i in range(0, len(records), 20):
        out.merge(processor.process(records[i:i + 20], now))
    return {table: [tuple(row) for row in rows] for table, rows in out.rows.items() if rows}, processor.cores


def stages(cores: list, tables: list[str]) -> list[list[str]]:
    """Tables grouped so that each group may be inserted at once: a core's tables in a stage before those of
    every core whose facts it consumes (directly or through a core without tables), ``events`` alone last."""
    consumers = [[j for j, other in enumerate(cores) if set(core.publishes) & set(other.consumes)] for core in cores]
    rank: dict[int, int] = {}

    def rank_of(i: int) -> int:
        if i not in rank:
            rank[i] = 1 + max((rank_of(j) for j in consumers[i]), default=-1)
        return rank[i]

    by_rank: dict[int, list[str]] = defaultdict(list)
    for i, core in enumerate(cores):
        by_rank[rank_of(i)].extend(table for table in core.tables if table in tables)
    first = [table for table in tables if table != "events" and not any(table in core.tables for core in cores)]
    groups = [by_rank[r] for r in sorted(by_rank) if by_rank[r]]
    groups[0] = first + groups[0]
    return groups + [["events"]]


def encoding(rows: dict[str, list[tuple]], context, tables: list[str]) -> None:
    from clickhouse_driver.columns.service import write_column

    per_type: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    total = 0.0
    print("1. clickhouse-driver encoding, CPU µs per row (best of 3)")
    for table in tables:
        n, columns = len(rows[table]), list(zip(*rows[table]))
        costs = []
        for (name, kind), values in zip(TABLES[table].columns, columns):
            best = min(_encode_seconds(write_column, context, name, kind, list(values)) for _ in range(3))
            costs.append((name, best / n * 1e6))
            per_type[kind][0] += best
            per_type[kind][1] += n
            total += best
        print(f"  {table:22s} {n:7,} rows {sum(c for _, c in costs):6.2f}  "
              + " ".join(f"{name}={cost:.2f}" for name, cost in costs))
    print("  per type, µs per value: " + ", ".join(
        f"{kind} {seconds / count * 1e6:.2f}" for kind, (seconds, count) in
        sorted(per_type.items(), key=lambda item: -item[1][0])))
    print(f"  all tables: {total / len(rows['events']) * 1e6:.2f} µs per event")


def _encode_seconds(write_column, context, name: str, kind: str, values) -> float:
    from clickhouse_driver.bufferedwriter import BufferedSocketWriter

    class Discard:
        def sendall(self, data: bytes) -> None:
            pass

    started = time.process_time()
    buffer = BufferedSocketWriter(Discard(), 1 << 20)
    write_column(context, name, kind, values, buffer)
    buffer.flush()
    return time.process_time() - started


def numpy_encoding(rows: dict[str, list[tuple]], url: str) -> None:
    import numpy as np
    from clickhouse_driver.columns.service import write_column

    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)  # "NumPy support is not implemented" per Array
    backend = NativeBackend(url)
    backend.query("SELECT 1")  # the column types need the server's time zone
    numpy_context = backend.client.connection.context
    plain = dict(numpy_context.client_settings)
    dtypes = {"DateTime": np.uint32, "Int64": np.int64, "UInt64": np.uint64, "UInt16": np.uint16}

    def as_array(kind: str, values: list):
        if kind in dtypes:
            return np.array(values, dtype=dtypes[kind])
        array = np.empty(len(values), dtype=object)  # not np.array: equal-length lists would make a 2-D array
        array[:] = values
        return array

    n, generic, numpy = len(rows["events"]), 0.0, 0.0
    print("1b. events columns, generic path vs use_numpy (arrays built from the values, counted), CPU µs per row")
    for (name, kind), values in zip(TABLES["events"].columns, zip(*rows["events"])):
        numpy_context.client_settings = plain
        a = min(_encode_seconds(write_column, numpy_context, name, kind, list(values)) for _ in range(3)) / n * 1e6
        numpy_context.client_settings = dict(plain, use_numpy=True)
        b = min(_timed_numpy(write_column, numpy_context, name, kind, values, as_array) for _ in range(3)) / n * 1e6
        generic, numpy = generic + a, numpy + b
        print(f"  {name:16s} {kind:18s} generic {a:.2f}  numpy {b:.2f}")
    print(f"  events row: generic {generic:.2f}, numpy {numpy:.2f} µs")
    backend.close()


def _timed_numpy(write_column, context, name, kind, values, as_array) -> float:
    started = time.process_time()
    array = as_array(kind, list(values))
    return _encode_seconds(write_column, context, name, kind, array) + time.process_time() - started


def flushes(rows: dict[str, list[tuple]], url: str, order: list[str], flush_events: int,
            server_pid: Optional[int]) -> None:
    database = f"bench_insert_{uuid.uuid4().hex[:8]}"
    warm = NativeBackend(_with_database(url, database))
    warm.create_tables()
    for table in order:
        ClickHouseSink(warm).insert(table, rows[table][:10])  # first-use costs outside the figures (and the log)
    warm.close()
    backend = NativeBackend(_with_database(url, database) + "?log_queries=1")
    sink = ClickHouseSink(backend)
    n_flushes = max(1, len(rows["events"]) // flush_events)
    cost: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    flush_walls = []
    for i in range(n_flushes):
        flush_started = time.perf_counter()
        for table, chunk in _flush(rows, order, i, n_flushes):
            wall, cpu, server = time.perf_counter(), time.thread_time(), _cpu_seconds(server_pid)
            sink.insert(table, chunk)
            spent = cost[table]
            spent[0] += time.perf_counter() - wall
            spent[1] += time.thread_time() - cpu
            spent[2] += _cpu_seconds(server_pid) - server
        flush_walls.append(time.perf_counter() - flush_started)
    backend.execute("SYSTEM FLUSH LOGS")
    durations = dict(backend.query(
        "SELECT extract(query, 'INSERT INTO [a-z_0-9]+[.]([a-z_]+)') AS t, sum(query_duration_ms) / 1000 "
        f"FROM system.query_log WHERE type = 2 AND query LIKE 'INSERT INTO {database}.%' GROUP BY t"))
    print(f"2. {n_flushes} flushes of {flush_events:,} events, one table after the other: µs per row of wall, "
          "client CPU, server query duration, server CPU (with merges); ms per flush")
    totals = [0.0] * 4
    for table in order:
        n, (wall, cpu, server) = len(rows[table]), cost[table]
        duration = durations.get(table, 0.0)
        for k, value in enumerate((wall, cpu, duration, server)):
            totals[k] += value
        print(f"  {table:22s} {n:7,}  {wall / n * 1e6:8.1f} {cpu / n * 1e6:7.1f} {duration / n * 1e6:8.1f} "
              f"{server / n * 1e6:8.1f}   {wall / n_flushes * 1e3:6.1f} ms")
    events = len(rows["events"])
    print(f"  per event: wall {totals[0] / events * 1e6:.1f}, client CPU {totals[1] / events * 1e6:.1f}, server "
          f"duration {totals[2] / events * 1e6:.1f}, server CPU {totals[3] / events * 1e6:.1f} µs; flush median "
          f"{statistics.median(flush_walls) * 1e3:.0f} ms wall")
    backend.close()
    admin = NativeBackend(url, timeout=300)  # a DROP of many parts is slow
    admin.execute(f"DROP DATABASE {database}")
    admin.close()


def tables_at_once(rows: dict[str, list[tuple]], url: str, order: list[str], groups: list[list[str]],
                   flush_events: int, pool: int) -> None:
    sequential_db, staged_db = (f"bench_insert_{uuid.uuid4().hex[:8]}" for _ in range(2))
    one = ClickHouseSink(NativeBackend(_with_database(url, sequential_db), timeout=300))  # a DROP of many parts is slow
    one.backend.create_tables()
    sinks: queue.Queue = queue.Queue()
    for k in range(pool):
        backend = NativeBackend(_with_database(url, staged_db))
        if k == 0:
            backend.create_tables()
        sinks.put(ClickHouseSink(backend))
    threads = ThreadPoolExecutor(pool)

    def insert(table: str, chunk: list) -> None:
        sink = sinks.get()
        try:
            sink.insert(table, chunk)
        finally:
            sinks.put(sink)

    n_flushes = max(1, len(rows["events"]) // flush_events)
    sequential, staged = [], []
    for i in range(n_flushes):
        chunks = dict(_flush(rows, order, i, n_flushes))

        def one_by_one() -> None:
            started = time.perf_counter()
            for table in order:
                if table in chunks:
                    one.insert(table, chunks[table])
            sequential.append(time.perf_counter() - started)

        def in_stages() -> None:
            started = time.perf_counter()
            for group in groups:
                present = sorted((t for t in group if t in chunks), key=lambda t: -len(chunks[t]))
                list(threads.map(lambda t: insert(t, chunks[t]), present))
            staged.append(time.perf_counter() - started)

        for run in ((one_by_one, in_stages) if i % 2 == 0 else (in_stages, one_by_one)):
            run()
    ratio = statistics.median(s / q for s, q in zip(staged, sequential))
    print(f"3. {n_flushes} flushes of {flush_events:,} events: one table after the other "
          f"{statistics.median(sequential) * 1e3:.0f} ms, in {len(groups)} stages on {pool} connections "
          f"{statistics.median(staged) * 1e3:.0f} ms (medians; median ratio of the pairs {ratio:.2f})")
    print("  stages: " + " | ".join(", ".join(group) for group in groups))
    threads.shutdown()
    one.backend.execute(f"DROP DATABASE {sequential_db}")
    one.backend.execute(f"DROP DATABASE {staged_db}")
    one.backend.close()
    while not sinks.empty():
        sinks.get().backend.close()


def _flush(rows: dict[str, list[tuple]], order: list[str], i: int, n: int):
    """Flush i of n: each table's rows cut in the same proportion as the events."""
    for table in order:
        chunk = rows[table][len(rows[table]) * i // n: len(rows[table]) * (i + 1) // n]
        if chunk:
            yield table, chunk


def _with_database(url: str, database: str) -> str:
    return url.rsplit("/", 1)[0] + f"/{database}"


def _cpu_seconds(pid: Optional[int]) -> float:
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.insert_costs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000, help="events of input (default 50,000)")
    parser.add_argument("--customers", type=int, default=50_000, help="customers of the input (default 50,000)")
    parser.add_argument("--flush-events", type=int, default=5_000, help="events per flush (default 5,000)")
    parser.add_argument("--pool", type=int, default=4, help="connections for the tables at once (default 4)")
    parser.add_argument("--numpy", action="store_true", help="also the driver's use_numpy path for events")
    parser.add_argument("--only", type=lambda text: set(text.split(",")), default={"encoding", "flushes", "stages"},
                        help="comma-separated parts to run: encoding,flushes,stages (default all)")
    parser.add_argument("--clickhouse-url", help="a server's clickhouse:// URL (default: start one here)")
    parser.add_argument("--workdir", help="folder under which the started server keeps its data (default the system's "
                                          "temporary folder; e.g. /dev/shm to compare with a tmpfs)")
    args = parser.parse_args(argv)

    print(f"load average at the start: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows, cores = worker_rows(args.events, args.customers)
    order = [t for t in durable_order(cores) + ["dead_letters", "metric_snapshots"] if t in rows] + ["events"]
    server, workdir = None, tempfile.TemporaryDirectory(prefix="cxp-insert-costs-", dir=args.workdir)
    if args.clickhouse_url:
        url = args.clickhouse_url
    else:
        from runtime.local.clickhouse import ClickHouseServer

        server = ClickHouseServer(Path(workdir.name))
        url = server.url()
    try:
        if "encoding" in args.only:
            probe = NativeBackend(url)
            probe.query("SELECT 1")
            encoding(rows, probe.client.connection.context, order)
            probe.close()
            if args.numpy:
                numpy_encoding(rows, url)
        if "flushes" in args.only:
            flushes(rows, url, order, args.flush_events, server.pid if server else None)
        if "stages" in args.only:
            tables_at_once(rows, url, order, stages(cores, list(rows)), args.flush_events, args.pool)
    finally:
        if server is not None:
            server.stop()
        workdir.cleanup()
    print(f"load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
