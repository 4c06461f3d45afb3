"""Render the fault suite's figures (the JSON lines `harness.record_fault` appends when $CXP_FAULT_REPORT is
set) as the Markdown table of the README's Reliability section.

    CXP_FAULT_REPORT=/tmp/faults.jsonl PYTHONPATH=. .venv/bin/pytest -q -p no:cacheprovider tests/faults
    PYTHONPATH=. .venv/bin/python -m tests.faults.report /tmp/faults.jsonl

A test that ran more than once keeps its last line, so a rerun replaces its figures.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

DASH = "–"


def load(path: Path) -> list[dict]:
    """The last record of each test, in the suite's numbering order."""
    latest: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[record["test"] or record["fault"]] = record
    return sorted(latest.values(), key=_order)


def _order(record: dict) -> tuple[int, str]:
    """By number (7a before 7b before 8); the variants of one test (7a's signals) in the order they ran."""
    number, suffix = re.fullmatch(r"(\d+)(\D*)", record["number"]).groups()
    return int(number), suffix


def events_cell(record: dict) -> str:
    if record["events_sent"] is None:
        return f"{DASH} (its own simulator)"
    cell = f"{record['events_sent']:,}"
    if record["junk_sent"]:
        cell += f" + {record['junk_sent']:,} bad"
    return cell


def count_cell(value: int | None) -> str:
    return DASH if value is None else f"{value:,}"


def recovery_cell(seconds: float | list[float]) -> str:
    if isinstance(seconds, list):
        return f"median {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s ({len(seconds)} times)"
    return f"{seconds:.1f} s"


def markdown(records: list[dict]) -> str:
    rows = ["| # | fault | how injected | events sent | lost | double-counted | recovery |",
            "|---|---|---|---|---|---|---|"]
    for r in records:
        rows.append(f"| {r['number']} | {r['fault']} | {r['injected']} | {events_cell(r)} | {count_cell(r['lost'])} | "
                    f"{count_cell(r['double_counted'])} | {recovery_cell(r['recovery_s'])} |")
    notes = [f"- **{r['number']}** recovery: {r['recovery_from']}." + (f" {_sentence(r['note'])}" if r["note"] else "")
             for r in records]
    return "\n".join(rows + [""] + notes) + "\n"


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="the JSON-lines file named by CXP_FAULT_REPORT during the run")
    print(markdown(load(parser.parse_args().file)), end="")


if __name__ == "__main__":
    main()
