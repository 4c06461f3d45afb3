"""The benchmark harness in its small form: it must run end to end and its results must be right.
Speed is never asserted here (the machines are noisy); the harness checks correctness itself."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_harness_smoke(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.harness", "--smoke", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    results = json.loads(out.read_text())
    figures = results["figures"]
    for key in ("end_to_end_eps", "ceiling_eps", "ratio_to_ceiling", "bare_pipeline_eps", "ratio_to_bare",
                "surveys_only_eps", "all_cores_to_surveys_only", "single_event_eps", "faust_noop_msgs_per_s",
                "quix_stateless_msgs_per_s", "quix_stateful_msgs_per_s", "confluent_msgs_per_s", "single_to_batched",
                "sink_ratio", "state_bytes_per_customer", "worker_peak_rss_mib", "scrape_ms", "scrape_cpu_ms"):
        assert figures[key] > 0, key
    # The harness compared /progress with /metrics after every worker run, and every peer's per-tenant
    # counts with the input; a run without those checks would not have exited 0, but make sure they ran.
    checked = results["correctness"]
    assert sum("/progress = /metrics" in line for line in checked) == 3, checked
    assert sum(line.endswith("events per tenant ok") for line in checked) == 3, checked
    # Every worker run measured what following it cost (a share of its CPU: a number, not a speed).
    assert {cost["run"] for cost in results["costs"]} == {"end_to_end", "surveys_only", "single_event"}
    assert all(cost["polls"] > 0 and cost["worker_cpu_s"] > 0 for cost in results["costs"]), results["costs"]
    assert set(results["targets"]) >= {"poll_cost_percent", "scrape_ms", "single_to_batched", "all_cores_to_surveys_only"}
