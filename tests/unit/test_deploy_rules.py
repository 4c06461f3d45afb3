"""deploy/ checked with the real promtool, and every dashboard query against the SPEC §6 series."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROM = DEPLOY / "prometheus"
SPEC_SERIES = {
    "cx_nps", "cx_nps_margin_of_error", "cx_survey_responses", "cx_survey_score_sum", "cx_survey_score_count",
    "cx_csat", "cx_ces", "cx_funnel_customers", "cx_funnel_conversion_ratio", "cx_churn_risk_customers",
    "cx_churn_signals_total", "cx_complaints_open", "cx_complaints_opened_total", "cx_complaint_spike",
    "cx_complaint_sla_breaches_total", "cx_active_customers", "cxp_events_consumed_total", "cxp_events_rejected_total",
    "cxp_events_duplicate_total", "cxp_sink_rows_total", "cxp_sink_errors_total", "cxp_event_time_lag_seconds", "up",
} | {f"{h}_{s}" for h in ("cx_complaint_first_response_seconds", "cx_complaint_resolution_seconds", "cxp_sink_flush_seconds")
     for s in ("bucket", "sum", "count")}
PROMQL_WORDS = {"sum", "by", "rate", "increase", "max", "histogram_quantile", "round", "sqrt", "offset", "and", "le",
                "tenant", "window", "kind", "class", "source", "reason", "table", "level", "priority", "category", "stage",
                "funnel", "instance", "job"}


def promtool(*args, cwd=PROM):
    assert shutil.which("promtool"), "promtool is not installed: apt-get install prometheus"
    result = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def recording_rules() -> set[str]:
    groups = yaml.safe_load((PROM / "recording_rules.yml").read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"]}


def test_config_and_rules_are_valid():
    promtool("check", "config", "prometheus.yml")
    promtool("check", "rules", "recording_rules.yml", "alert_rules.yml")


def test_rule_unit_tests_pass():
    assert "SUCCESS" in promtool("test", "rules", "tests/rules_test.yml")


def test_every_alert_has_a_test():
    alerts = {r["alert"] for g in yaml.safe_load((PROM / "alert_rules.yml").read_text())["groups"] for r in g["rules"]}
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "tests" / "rules_test.yml").read_text()))
    assert alerts == tested


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w not in PROMQL_WORDS and not w.isdigit()}


@pytest.mark.parametrize("path", sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")), ids=lambda p: p.name)
def test_dashboard_queries_use_known_series(path):
    allowed = SPEC_SERIES | recording_rules()
    dashboard = json.loads(path.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    assert exprs
    for expr in exprs:
        unknown = metric_names(expr) - allowed
        assert not unknown, f"{expr}: unknown series {unknown}"


def test_compose_file_parses_and_wires_the_workers():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    worker_env = compose["services"]["worker-1"]["environment"]
    assert worker_env["CXP_KAFKA_URL"].startswith("kafka://") and "CXP_CLICKHOUSE_URL" in worker_env
    assert {"kafka", "clickhouse", "prometheus", "grafana", "worker-2"} <= set(compose["services"])
