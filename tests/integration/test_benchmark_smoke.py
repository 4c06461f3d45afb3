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
    figures = json.loads(out.read_text())["figures"]
    for key in ("end_to_end_eps", "ceiling_eps", "ratio_to_ceiling", "bare_pipeline_eps", "ratio_to_bare",
                "surveys_only_eps", "all_cores_to_surveys_only", "single_event_eps", "faust_noop_msgs_per_s",
                "sink_ratio", "state_bytes_per_customer", "worker_peak_rss_mib"):
        assert figures[key] > 0, key
