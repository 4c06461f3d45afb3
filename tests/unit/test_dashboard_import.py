"""The dashboard JSON checked the way Grafana loads it, since no Grafana runs here.

Two copies of each dashboard ship (deploy/grafana/generate.py says why): dashboards/ is loaded by file
provisioning as it is; import/ goes through Grafana's import, whose backend (pkg/services/dashboardimport/
utils/dash_template_evaluator.go) requires a value for every `__inputs` entry, replaces each `${NAME}` of an
input in every string of the JSON and drops `__inputs`. Both must end with every data source reference
resolved: to a datasource template variable of the right plugin type whose default is a real data source
(provisioned uid, or the data source picked for the input).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from deploy.grafana.rules import metric_names, recording_rules

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GRAFANA = DEPLOY / "grafana"
PROVISIONED = sorted((GRAFANA / "dashboards").glob("*.json"))
IMPORTABLE = sorted((GRAFANA / "import").glob("*.json"))
ALL = PROVISIONED + IMPORTABLE
# The datasources.yml files Grafana provisions: the trial stack's, and the production profile's mounted over it.
DATASOURCE_FILES = (GRAFANA / "provisioning" / "datasources" / "datasources.yml",
                    DEPLOY / "production" / "grafana" / "datasources.yml")
# Grafana's variable syntax (public/app/features/variables/utils.ts, variableRegex): $name, [[name]], ${name:fmt}
VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")
INPUT_PLACEHOLDER = re.compile(r"\$\{.+?\}")  # dash_template_evaluator.go's varRegex
VARIABLE_TYPES = {"query", "custom", "constant", "datasource", "interval", "textbox", "adhoc"}
PANEL_TYPES = {"row", "timeseries", "stat", "bargauge", "table", "gauge", "piechart", "text", "barchart", "heatmap"}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def walk_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def datasource_refs(dashboard: dict):
    """(where, ref) of every data source reference: panels, targets, template variables."""
    for panel in walk_panels(dashboard["panels"]):
        if "datasource" in panel:
            yield f"panel {panel['title']!r}", panel["datasource"]
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target['refId']}", target.get("datasource", panel.get("datasource"))
    for variable in dashboard["templating"]["list"]:
        if "datasource" in variable:
            yield f"variable {variable['name']!r}", variable["datasource"]


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def imported(dashboard: dict, picks: dict[str, str]) -> dict:
    """What Grafana's import stores: __inputs checked and dropped, their ${NAME} replaced everywhere."""
    values = {}
    for spec in dashboard.get("__inputs", []):
        assert spec["name"] in picks, f"Dashboard input variable: {spec['name']} missing from import command"
        values["${" + spec["name"] + "}"] = picks[spec["name"]]

    def evaluate(value):
        if isinstance(value, str):
            return INPUT_PLACEHOLDER.sub(lambda m: values.get(m.group(0), m.group(0)), value)
        if isinstance(value, dict):
            return {key: evaluate(item) for key, item in value.items() if key != "__inputs"}
        if isinstance(value, list):
            return [evaluate(item) for item in value]
        return value

    return evaluate(dashboard)


def provisioned_sources(path: Path) -> dict[str, str]:
    """uid -> plugin type of the data sources a provisioning file creates."""
    return {ds["uid"]: ds["type"] for ds in yaml.safe_load(path.read_text())["datasources"]}


def resolve(dashboard: dict, sources: dict[str, str]) -> list[str]:
    """Problems resolving every data source reference against ``sources`` (uid -> type), as Grafana would:
    ${var} through a datasource variable of that type to its default, which must be one of the sources."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    problems = []
    for where, ref in datasource_refs(dashboard):
        match = VARIABLE.fullmatch(ref.get("uid", ""))
        uid = ref.get("uid")
        if match:
            variable = variables.get(match.group(1) or match.group(2) or match.group(4))
            if variable is None or variable["type"] != "datasource" or variable["query"] != ref["type"]:
                problems.append(f"{where}: {ref} names no datasource variable of type {ref['type']}")
                continue
            uid = variable["current"]["value"]
        if sources.get(uid) != ref.get("type"):
            problems.append(f"{where}: {ref} resolves to {uid!r}, not a {ref.get('type')} data source")
    return problems


# ---------------------------------------------------------------------------------------- structure

@pytest.mark.parametrize("path", ALL, ids=name)
def test_dashboard_structure_as_grafana_loads_it(path):
    dashboard = load(path)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]) and dashboard["title"].strip()
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None  # an id would overwrite another dashboard on import
    ids, covered = set(), set()
    for panel in walk_panels(dashboard["panels"]):
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        assert isinstance(panel["id"], int) and panel["id"] not in ids, f"{where}: id missing or repeated"
        ids.add(panel["id"])
        assert panel["type"] in PANEL_TYPES and panel["title"].strip(), where
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "hwxy") and grid["h"] > 0 and grid["w"] > 0, where
        assert grid["x"] + grid["w"] <= 24, f"{where}: wider than the 24-column grid"
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & covered, f"{where}: overlaps another panel"
        covered |= cells
        if panel["type"] == "row":
            assert not panel.get("targets"), f"{where}: a row has no queries"
            continue
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(set(ref_ids)) == len(ref_ids), f"{where}: no targets or repeated refIds {ref_ids}"
        for target in panel["targets"]:
            assert ("expr" in target) != ("rawSql" in target), f"{where} {target['refId']}: one query per target"


@pytest.mark.parametrize("path", ALL, ids=name)
def test_template_variables_are_well_formed_and_every_variable_used_is_defined(path):
    dashboard = load(path)
    variables = dashboard["templating"]["list"]
    names = [v["name"] for v in variables]
    assert len(set(names)) == len(names), names
    for position, variable in enumerate(variables):
        where = f"variable {variable['name']!r}"
        assert re.fullmatch(r"[A-Za-z_]\w*", variable["name"]) and variable["type"] in VARIABLE_TYPES, where
        assert {"text", "value"} <= set(variable["current"]), f"{where}: no default"
        if variable["type"] == "datasource":
            assert isinstance(variable["query"], str) and variable["query"], f"{where}: no plugin type"
            assert not variable["multi"] and not variable["includeAll"], f"{where}: one data source at a time"
        if variable["type"] == "query":
            assert variable["datasource"] and variable["query"], where
            # a variable may only use variables defined before it (Grafana resolves them in order)
            used = {m.group(1) or m.group(2) or m.group(4) for m in VARIABLE.finditer(json.dumps(variable["query"]))}
            assert used <= set(names[:position]), f"{where} uses {used - set(names[:position])}"
    for panel in walk_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            text = target.get("expr") or target.get("rawSql")
            used = {m.group(1) or m.group(2) or m.group(4) for m in VARIABLE.finditer(text)}
            unknown = {v for v in used if not v.startswith("__")} - set(names)
            assert not unknown, f"panel {panel['title']!r}: undefined variables {unknown}"


# ------------------------------------------------------------------------------------- data sources

def test_every_panel_reads_its_data_source_through_a_variable():
    """No fixed uid anywhere: the same reference works in any Grafana, whatever its data sources are called."""
    for path in ALL:
        for where, ref in datasource_refs(load(path)):
            assert VARIABLE.fullmatch(ref["uid"]), f"{name(path)} {where}: fixed uid {ref}"


@pytest.mark.parametrize("sources_file", DATASOURCE_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
@pytest.mark.parametrize("path", PROVISIONED, ids=name)
def test_provisioned_dashboards_resolve_the_provisioned_data_sources(path, sources_file):
    dashboard = load(path)
    assert "__inputs" not in dashboard, "file provisioning does not evaluate __inputs"
    assert not [s for s in strings(dashboard) if s.startswith("${DS_")], "an input placeholder would stay unresolved"
    assert resolve(dashboard, provisioned_sources(sources_file)) == []


@pytest.mark.parametrize("path", IMPORTABLE, ids=name)
def test_import_into_another_grafana_resolves_the_data_sources_picked(path):
    """Another Grafana, whose data sources have other uids: the import asks one per __inputs entry."""
    dashboard = load(path)
    requires = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    assert ("grafana", "grafana") in requires
    picks = {}
    for spec in dashboard["__inputs"]:
        assert spec["type"] == "datasource" and ("datasource", spec["pluginId"]) in requires, spec
        assert {"name", "label", "pluginId", "pluginName"} <= set(spec), spec
        picks[spec["name"]] = f"their-{spec['pluginId']}-uid"
    assert len(picks) == len(dashboard["__inputs"]), "input names repeat"
    panel_types = {p["type"] for p in walk_panels(dashboard["panels"])} - {"row"}
    assert {("panel", t) for t in panel_types} <= requires
    result = imported(dashboard, picks)
    theirs = {uid: uid.removeprefix("their-").removesuffix("-uid") for uid in picks.values()}
    assert resolve(result, theirs) == []
    # every input is used (an unused one would ask for a data source and ignore the answer)
    used = {s for s in strings(dashboard) for s in INPUT_PLACEHOLDER.findall(s)}
    assert {"${" + n + "}" for n in picks} <= used
    assert not [s for s in strings(result) if INPUT_PLACEHOLDER.search(s or "") and "${DS_" in s]
    with pytest.raises(AssertionError, match="missing from import command"):
        imported(dashboard, {})


@pytest.mark.parametrize("path", PROVISIONED, ids=name)
def test_import_copy_differs_only_in_the_data_source_defaults(path):
    provisioned, importable = load(path), load(GRAFANA / "import" / path.name)
    for dashboard in (provisioned, importable):
        dashboard.pop("__inputs", None), dashboard.pop("__requires", None)
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "datasource":
                variable.pop("current")
    assert provisioned == importable


# ------------------------------------------------------------------------------------ links and rules

def test_links_point_at_the_other_dashboards():
    uids = {load(path)["uid"] for path in PROVISIONED}
    for path in ALL:
        dashboard = load(path)
        targets = set()
        for link in dashboard["links"]:
            match = re.fullmatch(r"/d/([A-Za-z0-9_-]+)", link["url"])
            assert link["type"] == "link" and match and link["title"], link
            targets.add(match.group(1))
        assert targets == uids - {dashboard["uid"]}, f"{name(path)} links to {targets}"


def rules_read(dashboard: dict) -> set[str]:
    return {metric for panel in walk_panels(dashboard["panels"]) for target in panel.get("targets", [])
            if "expr" in target for metric in metric_names(target["expr"]) if ":" in metric}


@pytest.mark.parametrize("path", PROVISIONED, ids=name)
def test_every_recording_rule_the_panels_read_is_defined_and_checked(path):
    dashboard = load(path)
    defined = set(recording_rules())
    assert rules_read(dashboard) <= defined, f"not in recording_rules.yml: {rules_read(dashboard) - defined}"
    check = next(p for p in dashboard["panels"] if p["title"] == "Recording rules this dashboard reads")
    others = {**dashboard, "panels": [p for p in dashboard["panels"] if p is not check]}
    assert {t["legendFormat"] for t in check["targets"]} == rules_read(others)
    for target in check["targets"]:  # each one looks for its own rule
        assert metric_names(target["expr"]) == {target["legendFormat"]}, target["expr"]


# ------------------------------------------------------------------------------------------ pictures

def test_every_dashboard_row_has_its_picture_and_every_embedded_picture_exists():
    """python -m deploy.grafana.render --out docs/img/ draws one picture per row; rerun it after adding a row."""
    from deploy.grafana.queries import row_picture, rows

    repo = DEPLOY.parent
    embedded = {(page.parent / link).resolve() for page in (repo / "README.md", DEPLOY / "README.md")
                for link in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text(encoding="utf-8"))}
    assert embedded and all(path.exists() for path in embedded), sorted(p for p in embedded if not p.exists())
    for path in PROVISIONED:
        for title, _ in rows(load(path)):
            picture = repo / "docs" / "img" / row_picture(path.name, title)
            assert picture.exists() and picture.resolve() in embedded, f"{path.name} row {title!r}: no {picture.name}"
