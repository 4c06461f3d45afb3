"""The recording rules of deploy/prometheus that the dashboards read, and the metric names of a PromQL expression.

deploy/prometheus/recording_rules.yml is the one owner of the rule names: the generator derives from it the
"Recording rules" panel (which rules a dashboard needs, and whether each one is being recorded), and the
tests check every rule a panel reads against it.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

RULES_FILE = Path(__file__).resolve().parents[1] / "prometheus" / "recording_rules.yml"
PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                   "bool", "inf", "nan", "atan2", "start", "end"}


def recording_rules(path: Path = RULES_FILE) -> dict[str, str]:
    """Rule name -> expression, in file order."""
    groups = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    return {rule["record"]: rule["expr"] for group in groups for rule in group["rules"] if "record" in rule}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, label names and durations removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings (label values)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)  # label lists
    names = set()
    for match in re.finditer(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-zA-Z]*|([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        name, is_call = match.group(1), match.group(2)
        if name and not is_call and name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def raw_inputs(rule: str, rules: dict[str, str]) -> set[str]:
    """The scraped series a rule is computed from, through the rules it reads."""
    names = metric_names(rules[rule])
    return set().union(*(raw_inputs(name, rules) if name in rules else {name} for name in names))


def missing_rule_expr(rule: str, rules: dict[str, str]) -> str:
    """1 while every scraped series the rule is computed from exists but the rule has no series (Prometheus
    does not evaluate it: the rule file is not loaded, or an older copy of it), else 0. A rule with an input
    that has no series (no sink error yet, say) is not missing, only without data."""
    present = "".join(f' and on () count({{__name__="{name}"}})' for name in sorted(raw_inputs(rule, rules)))
    return f"(absent({rule}){present}) or on () vector(0)"
