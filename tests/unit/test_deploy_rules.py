"""deploy/ checked with the real promtool, and every dashboard query against the series of the contract.

Needs Debian's `prometheus` package (promtool); without it these tests fail, they do not skip:
the shipped rules are part of the product and must be checked on every run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.grafana.rules import metric_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
RUNBOOK = DEPLOY / "RUNBOOK.md"
RULE_FILES = ("recording_rules.yml", "alert_rules.yml")
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

def exported_series() -> set[str]:
    """Every series name a worker with every core exports: the cores' gauge families, the counters (+ _total)
    and histograms (+ _bucket/_sum/_count) of the cores and the pipeline, and the scrape-time gauges."""
    from prometheus_client import CollectorRegistry

    from pipeline.metrics.registry import build_cores
    from pipeline.settings import Settings
    from sinks.prometheus import ConsumerLagCollector, CoreCollector, PipelineMetrics, instruments_of

    cores = build_cores(Settings())
    registry = CollectorRegistry(auto_describe=True)
    PipelineMetrics(registry, instruments_of(cores))
    names: set[str] = set()
    for family in registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    names |= {family.name for core in cores for family in core.describe()}
    names |= {CoreCollector._lag_family().name, ConsumerLagCollector.NAME}
    return names


SERIES = exported_series()
# Prometheus' own per-target series: only the rules may read it (WorkerDown, job:up:sum).
PROMETHEUS_SERIES = {"up"}
SPEC_TABLES = {"events", "survey_responses", "complaints", "funnel_progress", "churn_signals", "metric_snapshots",
               "dead_letters", "orders", "customer_firsts", "retention"}
ID_LABELS = ("customer_id", "session_id", "complaint_id", "event_id", "anonymous_id", "conversation_id")


# ------------------------------------------------------------------------------------------ helpers

def promtool_path() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None)
    if not path:
        pytest.fail("promtool is not installed, so the Prometheus rules cannot be checked: "
                    "apt-get install prometheus  (Debian's package brings promtool)", pytrace=False)
    return path


def promtool(*args: str, cwd: Path = PROM) -> str:
    result = subprocess.run([promtool_path(), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    output = f"$ promtool {' '.join(args)}  (in {cwd})\n{result.stdout}{result.stderr}"
    assert result.returncode == 0, output
    return output


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def rules(kind: str) -> list[dict]:
    """Every rule of the rule files that is a `record` or an `alert`."""
    return [rule for name in RULE_FILES for group in load_yaml(PROM / name)["groups"] for rule in group["rules"]
            if kind in rule]


def recording_rule_names() -> set[str]:
    return {rule["record"] for rule in rules("record")}


def alert_names() -> set[str]:
    return {rule["alert"] for rule in rules("alert")}


def walk_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard_targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(panel.get("title", ""), target) for panel in walk_panels(dashboard["panels"])
            for target in panel.get("targets", [])]


def prometheus_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template variable query on Prometheus."""
    found = [(f"panel {title!r}", target["expr"]) for title, target in dashboard_targets(dashboard)
             if "expr" in target]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query" and variable.get("datasource", {}).get("type") == "prometheus":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", query)
            assert match, f"variable {variable['name']}: unsupported query {query!r}"
            found.append((f"variable {variable['name']!r}", match.group(1)))
    return found


def concrete(expr: str) -> str:
    """Grafana variables replaced by values, so promtool can parse the query."""
    for var, value in (("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h"),
                       ("${tenant}", "acme"), ("$tenant", "acme"), ("${window}", "24h"), ("$window", "24h")):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


# ------------------------------------------------------------------------------------ promtool

def test_prometheus_config_is_valid(tmp_path):
    """promtool checks every file the config names, the metrics token file included: it is a compose
    secret at deploy time, so the check runs on a copy whose token file points at a stand-in."""
    copy = tmp_path / "prometheus"
    shutil.copytree(PROM, copy)
    token = tmp_path / "metrics_token"
    token.write_text("stand-in\n")
    config = (copy / "prometheus.yml").read_text()
    assert "credentials_file: /run/secrets/metrics_token" in config
    (copy / "prometheus.yml").write_text(config.replace("/run/secrets/metrics_token", str(token)))
    output = promtool("check", "config", "prometheus.yml", cwd=copy)
    assert "SUCCESS" in output, output


def test_rule_files_are_valid():
    output = promtool("check", "rules", *RULE_FILES)
    assert output.count("SUCCESS") == len(RULE_FILES), output


def test_config_loads_the_shipped_rule_files():
    config = load_yaml(PROM / "prometheus.yml")
    assert set(config["rule_files"]) == set(RULE_FILES)
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert "cx-pipeline" in jobs  # the alert rules select job="cx-pipeline"


def test_rules_select_the_workers_job_of_both_prometheus_configs():
    """WorkerDown, WorkerTargetsAbsent, PipelineNoEvents and job:up:sum select the workers by job name: it
    must be a scrape job of the trial config and of the production profile's, or in one of them
    WorkerTargetsAbsent would fire for ever and the others never."""
    selected = {job for name in RULE_FILES for job in re.findall(r'job="([^"]+)"', (PROM / name).read_text())}
    assert selected == {"cx-pipeline"}
    for config in (PROM / "prometheus.yml", DEPLOY / "production" / "prometheus.yml"):
        assert selected <= {job["job_name"] for job in load_yaml(config)["scrape_configs"]}, config


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda path: path.name)
def test_promtool_rule_unit_tests_pass(test_file):
    output = promtool("test", "rules", test_file.name, cwd=test_file.parent)
    assert "SUCCESS" in output and "FAILED" not in output, output


def test_there_are_rule_unit_tests():
    assert {path.name for path in RULE_TESTS} >= {"recording_rules_test.yml", "alert_rules_test.yml"}


# --------------------------------------------------------------------- what the rule tests cover

def rule_tests() -> list[dict]:
    return [case for path in RULE_TESTS for case in load_yaml(path)["tests"]]


def test_every_alert_is_seen_firing_and_silent():
    """Each alert fires in some test case and is silent in the same case (before its `for`, or on the
    healthy series next to the bad ones), and every firing expectation states the rule's severity and
    team and all its annotations, so the templates are tested too."""
    firing, silent, both = set(), set(), set()
    rule = {r["alert"]: r for r in rules("alert")}
    for case in rule_tests():
        seen: dict[str, set[bool]] = {}
        for check in case.get("alert_rule_test", []):
            name = check["alertname"]
            (firing if check.get("exp_alerts") else silent).add(name)
            seen.setdefault(name, set()).add(bool(check.get("exp_alerts")))
            for alert in check.get("exp_alerts") or []:
                labels, annotations = alert["exp_labels"], alert.get("exp_annotations", {})
                assert {k: labels.get(k) for k in ("severity", "team")} == {
                    k: rule[name]["labels"][k] for k in ("severity", "team")}, (case["name"], name)
                assert set(annotations) == set(rule[name]["annotations"]), (case["name"], name)
        both |= {name for name, outcomes in seen.items() if outcomes == {True, False}}
    assert alert_names() == firing, f"alerts never tested firing: {alert_names() - firing}"
    assert alert_names() == silent, f"alerts never tested silent: {alert_names() - silent}"
    assert alert_names() == both, f"alerts not tested firing and silent in one case: {alert_names() - both}"


def test_every_recording_rule_value_is_checked():
    checked = set()
    for case in rule_tests():
        for check in case.get("promql_expr_test", []):
            checked |= metric_names(check["expr"])
    missing = recording_rule_names() - checked
    assert not missing, f"recording rules without a promql_expr_test: {sorted(missing)}"


def runbook_anchors() -> list[str]:
    """GitHub's anchor of each `## ` section of deploy/RUNBOOK.md: lower case, punctuation dropped, spaces to '-'."""
    headings = re.findall(r"^## (.+?)\s*$", RUNBOOK.read_text(), re.M)
    return [re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-") for heading in headings]


def test_alerts_have_severity_team_summary_description_and_runbook_url():
    for rule in rules("alert"):
        name = rule["alert"]
        assert rule["labels"].get("severity") in {"critical", "warning"}, name
        assert rule["labels"].get("team") in {"cx", "platform"}, name
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name
        assert all(rule["annotations"][key].strip() for key in ("summary", "description")), name
        # relative to the repository root, or made absolute for a Git host (alert_rules.yml, top comment)
        assert re.fullmatch(rf"(deploy/|https?://\S+/deploy/)RUNBOOK\.md#{name.lower()}",
                            rule["annotations"]["runbook_url"]), name


def test_every_runbook_url_is_a_runbook_section_and_every_section_an_alert():
    anchors = runbook_anchors()
    assert len(anchors) == len(set(anchors)), f"deploy/RUNBOOK.md repeats a section: {anchors}"
    linked = {rule["annotations"]["runbook_url"].split("#", 1)[1] for rule in rules("alert")}
    assert linked <= set(anchors), f"runbook_url anchors without a RUNBOOK.md section: {linked - set(anchors)}"
    assert set(anchors) <= linked, f"RUNBOOK.md sections no alert links to: {set(anchors) - linked}"


def test_runbook_sections_say_what_to_check_and_how_to_fix():
    sections = re.split(r"^## ", RUNBOOK.read_text(), flags=re.M)[1:]
    for section in sections:
        title = section.splitlines()[0]
        for part in ("**Means**", "**Check**", "**Fix**", "**Resolves**"):
            assert part in section, f"RUNBOOK.md section {title} has no {part}"


def test_deploy_readme_points_at_the_runbook():
    readme = (DEPLOY / "README.md").read_text()
    assert "RUNBOOK.md" in readme and "## Runbooks" not in readme
    for name in alert_names():
        assert f"`{name}`" in readme, f"deploy/README.md's alert table lacks {name}"


def test_cx_alerts_name_the_tenant():
    for rule in rules("alert"):
        if rule["labels"].get("team") == "cx":
            text = rule["annotations"]["summary"] + rule["annotations"]["description"]
            assert "{{ $labels.tenant }}" in text, rule["alert"]


def test_rules_read_only_spec_series_and_their_own_records():
    allowed = SERIES | PROMETHEUS_SERIES | recording_rule_names()
    for rule in rules("record") + rules("alert"):
        unknown = metric_names(rule["expr"]) - allowed
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: unknown series {unknown}"


def test_recording_rule_names_follow_level_metric_operations():
    for name in recording_rule_names():
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name), name


def test_no_rule_or_dashboard_uses_an_id_label():
    """No expression, rule label, annotation template or legend touches a customer/session/complaint/event id."""
    texts = [rule["expr"] for rule in rules("record") + rules("alert")]
    texts += [json.dumps(rule.get("labels", {})) + json.dumps(rule.get("annotations", {})) for rule in rules("alert")]
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        texts += [expr for _, expr in prometheus_exprs(dashboard)]
        texts += [target.get("legendFormat", "") for _, target in dashboard_targets(dashboard)]
        texts += [target.get("rawSql", "") for _, target in dashboard_targets(dashboard)]
    for text in texts:
        for label in ID_LABELS:
            assert label not in text, f"{label} in {text!r}"


# ----------------------------------------------------------------------------------- dashboard

def test_metric_names_helper():
    assert metric_names('sum by (tenant, le) (rate(foo_total{a="b", c=~"$x"}[5m])) / bar offset 1d') == {
        "foo_total", "bar"}
    assert metric_names("histogram_quantile(0.9, a:b:c) > 0.05 and on (source) d unless e") == {"a:b:c", "d", "e"}
    assert metric_names('{__name__=~"cx_.+"}') == set()
    assert metric_names("100 * (a - b) / (c > 0) or 0 * c") == {"a", "b", "c"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_queries_use_only_known_series(path):
    allowed = SERIES | recording_rule_names()
    exprs = prometheus_exprs(json.loads(path.read_text()))
    assert len(exprs) >= 10
    problems = [f"{where}: {expr} -> unknown {sorted(metric_names(expr) - allowed)}"
                for where, expr in exprs if metric_names(expr) - allowed]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_promql_parses(path, tmp_path):
    """promtool parses every dashboard query (wrapped as recording rules, variables filled in)."""
    exprs = prometheus_exprs(json.loads(path.read_text()))
    group = {"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}:check", "expr": concrete(expr)}
                                            for i, (_, expr) in enumerate(exprs)]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump({"groups": [group]}))
    promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)


# What each dashboard must show (words of its panel titles) and the variables it needs.
DASHBOARD_CONTENT = {
    "cx-overview.json": ({"tenant", "window"}, (
        "nps", "csat", "ces", "segment", "funnel", "conversion time", "churn", "active customers", "stickiness",
        "actions", "complaints open", "against the expected", "spike", "first response", "resolution",
        "exact percentiles", "sla", "metric_snapshots")),
    "cx-pipeline-health.json": (set(), (
        "workers up", "consumed", "rejected", "duplicates", "lag", "rows", "sink errors", "flush", "commit errors",
        "oldest unacknowledged", "dead letters")),
}


def test_every_dashboard_is_checked_for_content():
    assert {path.name for path in DASHBOARDS} == set(DASHBOARD_CONTENT)
    assert {path.name for path in (GRAFANA / "import").glob("*.json")} == set(DASHBOARD_CONTENT)


def test_committed_dashboards_are_the_generators_output():
    """Edit deploy/grafana/generate.py and run `python -m deploy.grafana.generate`; never the JSON by hand."""
    from deploy.grafana.generate import DASHBOARDS as GENERATED, render_json

    stale = [f"{folder}/{name}" for name, build in GENERATED.items()
             for folder, importable in (("dashboards", False), ("import", True))
             if not (GRAFANA / folder / name).exists()
             or (GRAFANA / folder / name).read_text(encoding="utf-8") != render_json(build, importable)]
    assert not stale, f"{stale} differ from the generator: run `python -m deploy.grafana.generate`"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_structure(path):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"]
    variables, words = DASHBOARD_CONTENT[path.name]
    assert variables <= {v["name"] for v in dashboard["templating"].get("list", [])}
    # ids, grid positions, variables and data sources are checked as Grafana's import would: test_dashboard_import.py
    titles = " ".join(p.get("title", "") for p in walk_panels(dashboard["panels"])).lower()
    for word in words:
        assert word in titles, f"no panel about {word!r}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_clickhouse_queries_read_spec_tables(path):
    sqls = [t["rawSql"] for _, t in dashboard_targets(json.loads(path.read_text())) if "rawSql" in t]
    assert sqls
    for sql in sqls:
        tables = set(re.findall(r"\bcx\.(\w+)", sql))
        assert tables and tables <= SPEC_TABLES, sql
        assert "FINAL" in sql, f"ReplacingMergeTree tables are read with FINAL: {sql}"


def test_grafana_provisioning_points_at_the_mounted_dashboards():
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")["providers"]
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    mounts = {v.split(":")[1] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./grafana/dashboards")}
    assert {p["options"]["path"] for p in providers} <= mounts


# ------------------------------------------------------------------------------ compose, Docker

def test_compose_file_wires_the_stack():
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert {"kafka", "clickhouse", "prometheus", "grafana"} <= set(services)
    workers = sorted(name for name in services if name.startswith("worker-"))
    assert len(workers) >= 2
    for name in workers:
        worker = services[name]
        env = worker["environment"]
        assert env["CXP_KAFKA_URL"] == "kafka://kafka:9092"
        assert env["CXP_CLICKHOUSE_URL"] == "clickhouse://default@clickhouse:9000/cx"
        assert str(env["CXP_WEB_PORT"]) == "6066" and env["CXP_WEB_HOST"] == "0.0.0.0"
        assert worker["command"] == ["worker"]
        assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    # KRaft: no ZooKeeper, the broker is its own controller
    assert "zookeeper" not in services and "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    # Prometheus scrapes exactly these workers, with the rule files mounted next to its config
    config = load_yaml(PROM / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "cx-pipeline")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:6066" for name in workers}
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "grafana-clickhouse-datasource" in services["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"compose mounts missing {source}"


def test_dockerfile_installs_the_project_and_runs_the_worker():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)
    assert 'ENTRYPOINT ["cxp"]' in dockerfile and 'CMD ["worker"]' in dockerfile
    for package in ("pipeline", "schemas", "agents", "sinks"):
        assert f"COPY {package} " in dockerfile
