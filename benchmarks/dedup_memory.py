"""Dedup memory and speed: bytes per remembered id, check cost per id, restore seconds per million ids.

    python -m benchmarks.dedup_memory [--ids N] [--repeats K] [--clickhouse URL] [--out FILE]

Times are CPU seconds of this process (time.process_time), the median of --repeats runs: the work is
single-threaded, and CPU time is steadier than wall time on a shared machine. Bytes are measured three
ways: the table's own count (Deduper.nbytes), what tracemalloc saw allocated (numpy reports its arrays
to it), and the growth of the process's resident set. The baseline is a Python set of the same ints,
which is what the Deduper held before. With --clickhouse, a scratch database on that server gets N ids
and the query the worker runs on partition assignment is timed apart from the restore of its result.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.dedup import BUCKET_MS, Deduper

console = Console()
HORIZON_MS = 86_400_000
CALL = 500


def random_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(1, 2**64 - 1, n, dtype=np.uint64, endpoint=True)


def spread_over_horizon(rng: np.random.Generator, n: int, clock_ms: int) -> np.ndarray:
    """Event times of n ids, uniform over the horizon before clock_ms, in time order."""
    return np.sort(rng.integers(clock_ms - HORIZON_MS + 1, clock_ms + 1, n))


def median_cpu(run: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return statistics.median(times)


def resident_bytes() -> int:
    """The resident set after handing freed heap memory back to the OS, so it counts what is live."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_bytes_per_id(ids: np.ndarray, times: np.ndarray) -> float:
    before = resident_bytes()
    dedup = Deduper(HORIZON_MS)
    dedup.restore(ids, times)
    return (resident_bytes() - before) / len(dedup)


def measure_memory(ids: np.ndarray, times: np.ndarray) -> tuple[Deduper, dict]:
    """Restore a Deduper from arrays under tracemalloc; report bytes per remembered id."""
    rss = rss_bytes_per_id(ids, times)
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    dedup = Deduper(HORIZON_MS)
    dedup.restore(ids, times)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    remembered = len(dedup)
    return dedup, {
        "ids_remembered": remembered,
        "bytes_per_id_nbytes": dedup.nbytes() / remembered,
        "bytes_per_id_tracemalloc": (current - baseline) / remembered,
        "bytes_per_id_peak_during_restore": (peak - baseline) / remembered,
        "bytes_per_id_rss_delta": rss,
        "table_load": remembered / len(dedup._keys),
        "stashed_ids": len(dedup._stash),
    }


def python_set_bytes_per_id(rng: np.random.Generator, n: int) -> float:
    """What the Deduper used to hold: a set of Python ints (plus per-hour lists, not counted here)."""
    values = random_ids(rng, n).tolist()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    ids = set(values)
    current = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del values  # the ints were allocated before tracing; count them as the set would own them
    return (current - baseline) / len(ids) + 32


def ns_per_id_in_calls(dedup: Deduper, batches: list[list[int]], clock_ms: int) -> float:
    times = [clock_ms] * len(batches[0])
    started = time.process_time()
    for batch in batches:
        dedup.check(batch, times)
    return (time.process_time() - started) / (len(batches) * len(batches[0])) * 1e9


def measure_check(dedup: Deduper, ids: np.ndarray, rng: np.random.Generator, clock_ms: int, calls: int) -> dict:
    """Check cost on a full table: new ids, repeated ids, and short calls. Inputs are Python lists,
    as the processor builds them."""
    new_batches = [random_ids(rng, CALL).tolist() for _ in range(calls)]
    repeats = [ids[rng.integers(0, len(ids), CALL)].tolist() for _ in range(calls)]
    singles = [[value] for value in random_ids(rng, calls * 10).tolist()]
    tens = [random_ids(rng, 10).tolist() for _ in range(calls * 2)]
    return {
        "check_ns_per_id_500_new": ns_per_id_in_calls(dedup, new_batches, clock_ms),
        "check_ns_per_id_500_duplicates": ns_per_id_in_calls(dedup, repeats, clock_ms),
        "check_ns_per_id_1_id_calls": ns_per_id_in_calls(dedup, singles, clock_ms),
        "check_ns_per_id_10_id_calls": ns_per_id_in_calls(dedup, tens, clock_ms),
    }


def measure_growth(ids: np.ndarray, times: np.ndarray) -> dict:
    """Fill an empty Deduper by 500-id calls, hour by hour with expiry, as the worker would: the
    amortised cost includes every rebuild the growth triggers."""
    dedup = Deduper(HORIZON_MS)
    id_lists, time_lists = ids.tolist(), times.tolist()
    started = time.process_time()
    for start in range(0, len(id_lists), CALL):
        dedup.check(id_lists[start:start + CALL], time_lists[start:start + CALL])
        dedup.expire(time_lists[min(start + CALL, len(time_lists)) - 1])
    seconds = time.process_time() - started
    return {"grow_check_ns_per_id_with_rebuilds": seconds / len(ids) * 1e9,
            "grow_bytes_per_id_nbytes": dedup.nbytes() / len(dedup), "grow_ids_remembered": len(dedup)}


def measure_restore(ids: np.ndarray, times: np.ndarray, repeats: int) -> dict:
    millions = len(ids) / 1e6
    from_arrays = median_cpu(lambda: Deduper(HORIZON_MS).restore(ids, times), repeats)
    id_list, time_list = ids.tolist(), times.tolist()
    from_lists = median_cpu(lambda: Deduper(HORIZON_MS).restore(id_list, time_list), 1)
    return {"restore_s_per_million_from_numpy": from_arrays / millions,
            "restore_s_per_million_from_lists": from_lists / millions}


def measure_clickhouse(url: str, ids: np.ndarray, times: np.ndarray, clock_ms: int) -> dict:
    """Load the ids into a scratch database, then time the worker's partition-assignment query
    (columnar, as numpy) and the restore of its result separately."""
    from clickhouse_driver import Client

    client = Client.from_url(url)
    address = urlparse(url)  # the driver reads numpy columns only when the client is made with use_numpy
    numpy_client = Client(address.hostname, port=address.port or 9000, user=address.username or "default",
                          password=address.password or "", settings={"use_numpy": True})
    database = f"cxp_dedup_bench_{uuid.uuid4().hex[:8]}"
    client.execute(f"CREATE DATABASE {database}")
    try:
        client.execute(f"CREATE TABLE {database}.events (kafka_partition UInt16, id_hash UInt64, event_ms UInt64) "
                       "ENGINE = MergeTree ORDER BY (kafka_partition, event_ms)")
        for start in range(0, len(ids), 1_000_000):
            chunk = slice(start, start + 1_000_000)
            client.execute(f"INSERT INTO {database}.events VALUES",
                           [np.zeros(len(ids[chunk]), np.uint16).tolist(), ids[chunk].tolist(), times[chunk].tolist()],
                           columnar=True)
        query = (f"SELECT id_hash, event_ms FROM {database}.events "
                 f"WHERE kafka_partition IN (0) AND event_ms > {clock_ms - HORIZON_MS}")
        started = time.perf_counter()
        hashes, event_ms = numpy_client.execute(query, columnar=True)
        query_s = time.perf_counter() - started
        started = time.process_time()
        Deduper(HORIZON_MS).restore(hashes, event_ms)
        restore_s = time.process_time() - started
        version = client.execute("SELECT version()")[0][0]
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {database}")
        client.disconnect()
        numpy_client.disconnect()
    millions = len(hashes) / 1e6
    return {"clickhouse_version": version, "clickhouse_rows": len(hashes),
            "clickhouse_query_wall_s_per_million": query_s / millions,
            "clickhouse_restore_cpu_s_per_million": restore_s / millions}


def report(results: dict, out: Optional[Path]) -> None:
    table = Table(title=f"Deduper, {results['ids']:,} ids in a 24 h horizon")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in results.items():
        table.add_row(name, f"{value:,.2f}" if isinstance(value, float) else str(value))
    console.print(table)
    if out:
        out.write_text(json.dumps(results, indent=2))
        console.print(f"written to {out}")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dedup_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", type=int, default=5_000_000, help="ids in the horizon (default 5M)")
    parser.add_argument("--calls", type=int, default=400, help="500-id check calls per timing (default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="restore runs; the median is reported")
    parser.add_argument("--baseline-ids", type=int, default=1_000_000, help="ids in the Python set baseline")
    parser.add_argument("--no-growth", action="store_true", help="skip filling a Deduper by check calls")
    parser.add_argument("--clickhouse", metavar="URL", help="clickhouse://host:port of a server to time the query on")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    clock_ms = int(time.time() * 1000) // BUCKET_MS * BUCKET_MS
    ids, times = random_ids(rng, args.ids), spread_over_horizon(rng, args.ids, clock_ms)
    results: dict = {"ids": args.ids, "python_set_bytes_per_id": python_set_bytes_per_id(rng, args.baseline_ids)}
    dedup, memory = measure_memory(ids, times)
    results.update(memory)
    results.update(measure_check(dedup, ids, rng, clock_ms, args.calls))
    del dedup
    results.update(measure_restore(ids, times, args.repeats))
    if not args.no_growth:
        results.update(measure_growth(ids, times))
    if args.clickhouse:
        results.update(measure_clickhouse(args.clickhouse, ids, times, clock_ms))
    report(results, args.out)


if __name__ == "__main__":
    main()
