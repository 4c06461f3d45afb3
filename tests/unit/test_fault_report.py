"""`python -m tests.faults.report FILE --write` replaces the fault table of docs/reliability.md and nothing else."""
from tests.faults.report import HEADER, PAGE, markdown, replace_table

RECORDS = [
    {"number": "1", "fault": "worker killed mid-stream", "injected": "SIGKILL; restart", "events_sent": 15_016,
     "junk_sent": 0, "lost": 0, "double_counted": 0, "recovery_s": 12.5, "recovery_from": "from the restart",
     "note": ""},
    {"number": "8", "fault": "rebalances", "injected": "join and leave", "events_sent": 100, "junk_sent": 0,
     "lost": 0, "double_counted": 0, "recovery_s": [1.0, 3.0], "recovery_from": "per join", "note": "all fine"},
]


def test_write_replaces_the_table_and_its_notes_only():
    page = PAGE.read_text()
    table = markdown(RECORDS)
    written = replace_table(page, table)
    before, after = page.split(HEADER)[0], page[page.index("**Lost** is input events"):]
    assert written.startswith(before + table) and written.endswith("\n" + after)
    assert "| 1 | worker killed mid-stream | SIGKILL; restart | 15,016 | 0 | 0 | 12.5 s |" in written
    assert "- **8** recovery: per join. All fine." in written
    assert "| 10 | raw-byte fuzz" not in written and "- **10** recovery" not in written
    assert replace_table(written, table) == written
