"""Render the fault suite's figures (the JSON lines `harness.record_fault` appends when $CXP_FAULT_REPORT is
set) as the Markdown table of docs/reliability.md, "Faults injected".

    CXP_FAULT_REPORT=/tmp/faults.jsonl PYTHONPATH=. .venv/bin/pytest -q -p no:cacheprovider tests/faults
    PYTHONPATH=. .venv/bin/python -m tests.faults.report /tmp/faults.jsonl          # print it
    PYTHONPATH=. .venv/bin/python -m tests.faults.report /tmp/faults.jsonl --write  # replace it in the page

A test that ran more than once keeps its last line, so a rerun replaces its figures.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

DASH = "–"
PAGE = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
HEADER = "| # | fault | how injected | events sent | lost | double-counted | recovery |"


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


def recovery_cell(seconds: float | list[float] | None) -> str:
    if seconds is None:
        return DASH
    if isinstance(seconds, list):
        return f"median {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s ({len(seconds)} times)"
    return f"{seconds:.1f} s"


def markdown(records: list[dict]) -> str:
    rows = [HEADER, "|---|---|---|---|---|---|---|"]
    for r in records:
        rows.append(f"| {r['number']} | {r['fault']} | {r['injected']} | {events_cell(r)} | {count_cell(r['lost'])} | "
                    f"{count_cell(r['double_counted'])} | {recovery_cell(r['recovery_s'])} |")
    notes = [f"- **{r['number']}** recovery: {r['recovery_from']}." + (f" {_sentence(r['note'])}" if r["note"] else "")
             for r in records]
    return "\n".join(rows + [""] + notes) + "\n"


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def replace_table(page_text: str, table: str) -> str:
    """The page with its fault table and the recovery notes under it replaced by `table`; the rest unchanged."""
    lines = page_text.split("\n")
    start = lines.index(HEADER)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    if end + 1 < len(lines) and lines[end] == "" and lines[end + 1].startswith("- **"):
        end += 1
        while end < len(lines) and lines[end].startswith("- **"):
            end += 1
    return "\n".join(lines[:start] + table.rstrip("\n").split("\n") + lines[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="the JSON-lines file named by CXP_FAULT_REPORT during the run")
    parser.add_argument("--write", nargs="?", type=Path, const=PAGE, metavar="PAGE",
                        help=f"replace the table in PAGE (default {PAGE.relative_to(PAGE.parents[1])}) instead of printing it")
    args = parser.parse_args()
    table = markdown(load(args.file))
    if args.write:
        args.write.write_text(replace_table(args.write.read_text(), table))
    else:
        print(table, end="")


if __name__ == "__main__":
    main()
