"""Every registered metric core has what docs/adding-a-metric.md says a new core brings: a section of
docs/metrics.md, a reproducing query per gauge family that says how workers combine, a recording rule
(tested by promtool's rule tests) for each value that is not a sum, a dashboard panel, and a unit test."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.metrics.registry import CORE_CLASSES, build_cores
from pipeline.settings import Settings
from tests.gauge_queries import METRICS_DOC, reproducing_queries

ROOT = Path(__file__).resolve().parents[2]
DOC = METRICS_DOC.read_text()
RULES = yaml.safe_load((ROOT / "deploy" / "prometheus" / "recording_rules.yml").read_text())
RECORDED = {rule["record"]: rule["expr"] for group in RULES["groups"] for rule in group["rules"] if "record" in rule}
RULE_TESTS = "\n".join(path.read_text() for path in (ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))
DASHBOARDS = "\n".join(path.read_text() for path in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
_COMBINED = re.compile(r"Reproduces `([a-z_]+)`:\n\n```sql\n.*?```\nOver several workers: (summed|`([^`]+)`)\.", re.DOTALL)
COMBINED = {family: rule or None for family, _, rule in _COMBINED.findall(DOC)}
CORES = {core.name: core for core in build_cores(Settings())}


def families(name: str) -> list[str]:
    return [family.name for family in CORES[name].describe()]


def mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", text) is not None


@pytest.mark.parametrize("name", [core.name for core in CORE_CLASSES])
def test_the_core_has_its_docs_section_and_a_unit_test(name):
    assert f"<!-- core: {name} -->" in DOC, f"docs/metrics.md needs a section marked <!-- core: {name} -->"
    assert (ROOT / "tests" / "unit" / f"test_{name}.py").is_file()


@pytest.mark.parametrize("name", [core.name for core in CORE_CLASSES])
def test_every_gauge_family_is_reproduced_and_combines_over_workers(name):
    queries = reproducing_queries()
    for family in families(name):
        assert family in queries, f"{family}: no 'Reproduces `{family}`:' block in docs/metrics.md"
        assert family in COMBINED, f"{family}: the line after its query says 'Over several workers: summed.' or names a rule"
        rule = COMBINED[family]
        if rule is not None:
            assert rule in RECORDED, f"{family}: recording rule {rule} is not in recording_rules.yml"
            assert mentions(RULE_TESTS, rule), f"{family}: recording rule {rule} has no promtool test"


@pytest.mark.parametrize("name", [core.name for core in CORE_CLASSES if families(core.name)])
def test_the_core_has_a_dashboard_panel(name):
    shown = [family for family in families(name) if mentions(DASHBOARDS, family)
             or (COMBINED.get(family) and mentions(DASHBOARDS, COMBINED[family]))
             or any(mentions(expr, family) and mentions(DASHBOARDS, rule) for rule, expr in RECORDED.items())]
    assert shown, f"no dashboard panel reads a gauge of {name} or a rule built on one"
