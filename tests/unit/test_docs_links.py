"""The READMEs, docs/ and the runbook link only to files that exist, and to headings that exist in them; and nothing in
the project points at files outside it."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "deploy").glob("*.md")),
         ROOT / "benchmarks" / "README.md"]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """The text without fenced code blocks, whose lines may look like headings or links but are neither."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped (letters, digits, `_` and `-` kept),
    lower case, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[`*]|<[^>]*>", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, heading in HEADING.findall(prose(path.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    return [target for target in LINK.findall(CODE_SPAN.sub("", prose(page.read_text())))
            if not EXTERNAL.match(target)]


def cases():
    for page in PAGES:
        for target in links(page):
            yield pytest.param(page, target, id=f"{page.relative_to(ROOT)}->{target}")


def test_the_pages_have_links():
    assert (ROOT / "docs" / "configuration.md") in PAGES
    assert len(links(ROOT / "README.md")) >= 10


@pytest.mark.parametrize(("page", "target"), list(cases()))
def test_relative_link_resolves(page: Path, target: str):
    """Links into deploy/README.md and deploy/RUNBOOK.md are checked too, though those files are written
    elsewhere: a section renamed there breaks the README's link here."""
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.is_relative_to(ROOT), f"{page.name} links outside the repository: {target}"
    assert file.exists(), f"{page.relative_to(ROOT)} links to a missing file: {target}"
    if anchor and file.suffix == ".md":
        assert anchor in anchors(file), f"{file.relative_to(ROOT)} has no heading with anchor #{anchor}"


def test_slug_follows_github():
    assert slug("How the worker keeps its promises") == "how-the-worker-keeps-its-promises"
    assert slug("Running the stack (needs Docker with Compose v2)") == "running-the-stack-needs-docker-with-compose-v2"
    assert slug("`cxp demo` signalled, 7a") == "cxp-demo-signalled-7a"
    assert slug("NPSDrop") == "npsdrop"


# ------------------------------------------------------------------------------ nothing outside the project

OUTSIDE = ["../" + "shared", "SPEC" + ".md"]  # split so that this file does not name them itself
SKIP_DIRS = {".git", ".venv", ".cxp", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist", "results"}


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist)
        found = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            found += [Path(folder) / name for name in files]
        return found


def test_no_file_refers_to_files_outside_the_project():
    offenders = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary (pictures), or deleted in the work tree
        offenders += [f"{path.relative_to(ROOT)}: {needle}" for needle in OUTSIDE if needle.lower() in text.lower()]
    assert len(tracked_files()) > 50
    assert not offenders
