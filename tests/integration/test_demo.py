"""`cxp demo` on a fresh data folder: it starts its own broker and embedded ClickHouse, backfills a
history, goes live, and cleans up."""
import os
import re
import signal
import subprocess
import sys
from collections import defaultdict

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_to_a_summary(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXP_")}
    env.update(CXP_DATA_DIR=str(tmp_path), COLUMNS="200")
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "demo", "--history", "22d", "--history-events",
                             "20000", "--duration", "8", "--rate", "800"],
                            capture_output=True, text=True, timeout=240, env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    consumed = int(re.search(r"events consumed\s*│\s*([\d,]+)", out).group(1).replace(",", ""))
    produced = int(re.search(r"events produced\s*│\s*([\d,]+)", out).group(1).replace(",", ""))
    assert consumed == produced > 0
    history = int(re.search(r"of which history\s*│\s*([\d,]+)", out).group(1).replace(",", ""))
    assert 19_000 < history < produced
    assert re.search(rf"history consumed\s.*{history}/{history}", out), "no backfill progress"
    # The history makes the windows differ: other NPS values, and a wider margin on fewer answers in 1h.
    summary = out[out.rindex("CX metrics at the end"):]
    nps = {(t, w): float(v) for t, w, v in re.findall(r"│ NPS\s*│ (\w+) (\w+)\s*│\s*(-?\d+\.\d)", summary)}
    margin = {(t, w): float(v) for t, w, v in re.findall(r"│ NPS ± \(95 %\)\s*│ (\w+) (\w+)\s*│\s*(\d+\.\d)", summary)}
    tenants = {t for t, _ in nps}
    assert tenants and set(nps) == set(margin) == {(t, w) for t in tenants for w in ("1h", "24h", "7d")}
    for tenant in tenants:
        assert len({nps[(tenant, w)] for w in ("1h", "24h", "7d")}) > 1, nps
        assert margin[(tenant, "7d")] < margin[(tenant, "1h")], margin
    assert re.search(r"│ funnel conversion\s*│ \w+ purchase 1h\s*│\s*\d+\.\d%", out), "no funnel conversion"
    assert re.search(r"│ NPS by region\s*│ \w+ \w+ 7d\s*│\s*-?\d+\.\d", out), "no segment NPS"
    # every other metric family of the summary, with a value of its own shape
    for family, value in (("active customers", r"\w+ 1d\s*│\s*[\d,]+"), (r"stickiness \(DAU/MAU\)", r"\w+\s*│\s*\d+\.\d%"),
                          ("churn risk", r"\w+ \w+\s*│\s*[\d,]+"), ("complaints open", r"\w+ \w+\s*│\s*[\d,]+"),
                          ("complaint spike", r"\w+\s*│\s*[01]"),
                          ("complaint first response p50 / p90", r"\w+\s*│\s*[\d.]+[smhd] / [\d.]+[smhd]"),
                          ("actions sent", r"\w+ \w+\s*│\s*[\d,]+"), ("revenue", r"\w+ [A-Z]{3} 24h\s*│\s*[\d,]+\.\d\d"),
                          ("average order value", r"\w+ [A-Z]{3} 24h\s*│\s*[\d,]+\.\d\d"),
                          ("repeat-purchase rate", r"\w+ 30d\s*│\s*\d+\.\d%"), ("cart abandonment", r"\w+ 24h\s*│\s*\d+\.\d%"),
                          ("time to first purchase p50 / p90", r"\w+ 7d\s*│\s*[\d.]+[smhd] / [\d.]+[smhd]"),
                          ("MRR", r"\w+ \w+\s*│\s*[\d,]+\.\d\d"), ("paying customers", r"\w+ \w+\s*│\s*[\d,]+"),
                          ("LTV", r"\w+\s*│\s*[\d,]+\.\d\d")):
        assert re.search(rf"│ {family}\s*│ {value}", summary), f"no {family} in the summary"
    # plausible complaints (issue 19): a few percent of the customers, the open ones far fewer, a spike flagged
    rates = {t: (int(c.replace(",", "")), int(a.replace(",", "")), float(m) / 100) for t, c, a, m in
             re.findall(r"complaint rate (\w+)\s*│ ([\d,]+) of ([\d,]+) active customers in 30d \(([\d.]+)% a month",
                        out)}
    assert set(rates) == tenants, rates
    open_complaints = defaultdict(int)
    for tenant, count in re.findall(r"│ complaints open\s*│ (\w+) \w+\s*│\s*([\d,]+)", summary):
        open_complaints[tenant] += int(count.replace(",", ""))
    for tenant, (complained, active, monthly) in rates.items():
        assert 0 < complained and monthly == pytest.approx(complained / active * 30 / 22, abs=1e-3), rates
        assert monthly < 0.10 and open_complaints[tenant] < 0.02 * active, (tenant, rates, open_complaints)
    assert re.search(r"│ complaint spike\s*│ \w+\s*│\s*1", summary), "no complaint spike"
    # 22 days hold at least two ended weeks after the first cohort's: ages 1 and 2, a share of each cohort.
    # On a Monday they hold a third, whose only cohort is the history's first hours: its age 3 may be 0 %.
    retention = {(t, int(a)): float(v) for t, a, v in
                 re.findall(r"│ retention, week \+age\s*│ (\w+) (\d)\s*│\s*(\d+\.\d)%", summary)}
    assert {(t, a) for t in tenants for a in (1, 2)} <= set(retention), retention
    assert all(0 < v < 100 for (_, age), v in retention.items() if age <= 2), retention
    assert all(0 <= v <= 100 for v in retention.values()) and max(age for _, age in retention) <= 3, retention
    rows = int(re.search(r"ClickHouse rows: events\s*│\s*([\d,]+)", out).group(1).replace(",", ""))
    assert rows > 0
    assert_all_gone(out)


def assert_all_gone(out: str) -> None:
    """Every process the demo started (it prints their pids) is gone."""
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)|worker pid (\d+)", out) for p in p if p]
    assert len(pids) == 2
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_sigterm_during_the_backfill_stops_everything(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXP_")}
    env.update(CXP_DATA_DIR=str(tmp_path), COLUMNS="200")
    demo = subprocess.Popen([sys.executable, "-m", "runtime.cli", "demo", "--history", "1d", "--history-events",
                             "5000000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in demo.stdout:
        lines.append(line)
        if line.startswith("backfilling"):
            break
    demo.send_signal(signal.SIGTERM)
    rest, _ = demo.communicate(timeout=120)
    out = "".join(lines) + rest
    assert demo.returncode == 130, out[-4000:]
    assert_all_gone(out)
