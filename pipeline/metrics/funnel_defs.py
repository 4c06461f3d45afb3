"""Funnel definitions: the YAML file named by ``funnels_file``, parsed and checked once at start-up.

    funnels:
      - name: purchase
        window: 1h                  # conversion window, from the step-1 event
        steps:
          - product_view            # shorthand for {event_type: product_view}
          - event_type: add_to_cart
            name: cart              # the `step` label; default the event_type
            where: {plan: pro}      # attributes.plan == "pro"
            source: web             # only events from cx.events.web
          - checkout_started
        exclude:                    # optional: an attempt ends at any of these between two steps
          - {event_type: support_ticket_opened, where: {topic: payment}}

A bad definition raises :class:`FunnelConfigError` naming the funnel and the step.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import yaml

from pipeline.config import duration_ms
from pipeline.registry import SOURCES

MAX_STEPS = 32  # ClickHouse's windowFunnel takes at most 32 conditions
# windowFunnel keeps its timestamps as Int32, so a reproducing query's relative milliseconds
# (event_ms - base) and the window must stay below 2**31 ms, about 24.8 days.
MAX_WINDOW_MS = 2**31 - 1
EXCLUDED = 1 << MAX_STEPS  # the step-mask bit of an exclusion event
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_.:-]+$")  # also keeps names safe inside SQL literals
_FUNNEL_KEYS = {"name", "window", "steps", "exclude"}
_STEP_KEYS = {"event_type", "name", "where", "source"}


class FunnelConfigError(ValueError):
    """A funnel definition that cannot run."""


@dataclass(frozen=True)
class Step:
    event_type: str
    name: str
    where: tuple[tuple[str, str], ...] = ()
    source: Optional[str] = None

    def matches(self, source: str, event: dict) -> bool:
        return event.get("event_type") == self.event_type and self.fits(source, event)

    def fits(self, source: str, event: dict) -> bool:
        """The step's source and attribute conditions, for an event already known to be of its type."""
        if self.source and source != self.source:
            return False
        if not self.where:
            return True
        attributes = event.get("attributes") or {}
        return all(attributes.get(key) == value for key, value in self.where)


@dataclass(frozen=True)
class Funnel:
    name: str
    window_ms: int
    steps: tuple[Step, ...] = field(default=())
    exclusions: tuple[Step, ...] = ()  # their event types are never steps

    def step_mask(self, source: str, event: dict) -> int:
        """Bit i set when the event matches step i+1 (one event may match several steps);
        EXCLUDED when it matches an exclusion."""
        mask = 0
        for i, step in enumerate(self.steps):
            if step.matches(source, event):
                mask |= 1 << i
        if any(exclusion.matches(source, event) for exclusion in self.exclusions):
            mask |= EXCLUDED
        return mask


def load_funnels(path: Union[Path, str]) -> tuple[Funnel, ...]:
    path = Path(path)
    if not path.is_file():
        raise FunnelConfigError(f"funnels file {path} not found (set CXP_FUNNELS_FILE)")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise FunnelConfigError(f"funnels file {path} is not valid YAML: {error}") from None
    return parse_funnels(document, str(path))


def parse_funnels(document, origin: str = "funnels file") -> tuple[Funnel, ...]:
    if not isinstance(document, dict) or not isinstance(document.get("funnels"), list) or not document["funnels"]:
        raise FunnelConfigError(f"{origin}: expected a top-level `funnels:` list with at least one funnel")
    funnels = tuple(_parse_funnel(item, index) for index, item in enumerate(document["funnels"], 1))
    seen: set[str] = set()
    for funnel in funnels:
        if funnel.name in seen:
            raise FunnelConfigError(f"funnel {funnel.name!r}: defined twice in {origin}")
        seen.add(funnel.name)
    return funnels


def _parse_funnel(item, index: int) -> Funnel:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not _IDENTIFIER.match(item["name"]):
        raise FunnelConfigError(f"funnel #{index}: needs a `name` of letters, digits, _ . : or -")
    name = item["name"]
    unknown = set(item) - _FUNNEL_KEYS
    if unknown:
        raise FunnelConfigError(f"funnel {name!r}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FUNNEL_KEYS)}")
    if "window" not in item:
        raise FunnelConfigError(f"funnel {name!r}: needs a conversion `window` such as 1h")
    try:
        window_ms = duration_ms(item["window"])
    except ValueError as error:
        raise FunnelConfigError(f"funnel {name!r}: window: {error}") from None
    if not 0 < window_ms <= MAX_WINDOW_MS:
        raise FunnelConfigError(f"funnel {name!r}: window must be above 0 and at most 24 days, got {item['window']!r}")
    steps = item.get("steps")
    if not isinstance(steps, list) or not 2 <= len(steps) <= MAX_STEPS:
        raise FunnelConfigError(f"funnel {name!r}: needs a `steps` list of 2 to {MAX_STEPS} steps")
    parsed = tuple(_parse_step(name, number, step) for number, step in enumerate(steps, 1))
    names = [step.name for step in parsed]
    for number, step in enumerate(parsed, 1):
        if names.index(step.name) != number - 1:
            raise FunnelConfigError(f"funnel {name!r}, step {number} ({step.name}): step name used twice; "
                                    "give one of them a distinct `name`")
    raw_exclusions = item.get("exclude") or []
    if not isinstance(raw_exclusions, list):
        raise FunnelConfigError(f"funnel {name!r}: `exclude` must be a list of event types or mappings")
    exclusions = tuple(_parse_step(name, number, raw, "exclusion") for number, raw in enumerate(raw_exclusions, 1))
    step_types = {step.event_type for step in parsed}
    for number, exclusion in enumerate(exclusions, 1):
        if exclusion.event_type in step_types:
            raise FunnelConfigError(f"funnel {name!r}, exclusion {number} ({exclusion.name}): {exclusion.event_type} "
                                    "is also a step's event type; an exclusion must be another event type")
    return Funnel(name, window_ms, parsed, exclusions)


def _parse_step(funnel: str, number: int, raw, kind: str = "step") -> Step:
    if isinstance(raw, str):
        raw = {"event_type": raw}
    where = f"funnel {funnel!r}, {kind} {number}"
    if not isinstance(raw, dict):
        raise FunnelConfigError(f"{where}: expected an event type or a mapping with `event_type`")
    event_type = raw.get("event_type")
    if not isinstance(event_type, str) or not _IDENTIFIER.match(event_type):
        raise FunnelConfigError(f"{where}: needs an `event_type` of letters, digits, _ . : or -")
    where = f"{where} ({raw.get('name', event_type)})"
    unknown = set(raw) - _STEP_KEYS
    if unknown:
        raise FunnelConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_STEP_KEYS)}")
    name = raw.get("name", event_type)
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise FunnelConfigError(f"{where}: `name` must be letters, digits, _ . : or -")
    filters = raw.get("where") or {}
    if not isinstance(filters, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in filters.items()):
        raise FunnelConfigError(f"{where}: `where` must map attribute names to strings, e.g. {{plan: \"pro\"}}")
    source = raw.get("source")
    if source is not None and source not in SOURCES:
        raise FunnelConfigError(f"{where}: `source` must be one of {', '.join(SOURCES)}, got {source!r}")
    return Step(event_type, name, tuple(sorted(filters.items())), source)
