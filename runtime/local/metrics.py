"""Read a worker's /metrics (and /progress) as the tests, the benchmarks and the demo's live view need it."""
from __future__ import annotations

import json
import urllib.request
from collections import defaultdict
from typing import Optional

from prometheus_client.parser import text_string_to_metric_families


def fetch(url: str, timeout: float = 2.0, token: Optional[str] = None) -> bytes:
    """The body of a GET on the worker's web server (sending ``token`` if it needs one)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return response.read()


def scrape(url: str, timeout: float = 2.0, token: Optional[str] = None) -> dict[str, list[tuple[dict, float]]]:
    """metric sample name -> [(labels, value)] from a /metrics endpoint (sending ``token`` if it needs one)."""
    text = fetch(url, timeout, token).decode()
    samples: dict[str, list[tuple[dict, float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def progress(url: str, timeout: float = 2.0, token: Optional[str] = None) -> dict:
    """A worker's /progress: {"events": {consumed, processed, duplicate, rejected}, "sink_rows": {table: n},
    "oldest_unacked_seconds": s} (sinks.prometheus.PipelineMetrics.progress)."""
    return json.loads(fetch(url, timeout, token))


def total(samples: dict, name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == m for k, m in match.items()))


def histogram_quantile(q: float, samples: dict, name: str, by: str) -> dict[str, float]:
    """Prometheus' ``histogram_quantile(q, sum by (by, le) (name_bucket))`` over one scrape: per value of
    label ``by``, linear interpolation inside the bucket that holds the q-th observation (the highest
    finite bound when it falls in +Inf). A group without observations is left out."""
    cumulative: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in samples.get(f"{name}_bucket", []):
        cumulative[labels.get(by, "")][float(labels["le"])] += value
    result = {}
    for group, buckets in cumulative.items():
        bounds = sorted(buckets)
        count = buckets[bounds[-1]]
        if count <= 0:
            continue
        rank, lower, below = q * count, 0.0, 0.0
        for bound in bounds:
            if buckets[bound] >= rank:
                if bound == float("inf"):
                    result[group] = lower
                else:
                    inside = buckets[bound] - below
                    result[group] = lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
                break
            lower, below = bound, buckets[bound]
    return result
