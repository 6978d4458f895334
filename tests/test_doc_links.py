"""Every relative link of the project's Markdown leads somewhere: the file exists, and a
``#fragment`` names a heading of the file it points to, by GitHub's rule for heading anchors
(lower case; punctuation other than ``-`` and ``_`` dropped; spaces to ``-``; a repeated heading
gets ``-1``, ``-2``, ...). The docs link to sections of one another by anchor, and sections get
renamed and moved: without this, a broken link is found by a reader."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import REPO

#: ``[text](target)`` and ``![alt](target)``, the target without spaces (an optional "title" after it).
_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _markdown_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / line for line in listed.splitlines() if "node_modules/" not in line]


def _lines_outside_code(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (inline links keep their text)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in _lines_outside_code(path.read_text()):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(files: list[Path]) -> list[str]:
    broken = []
    for path in files:
        for line in _lines_outside_code(path.read_text()):
            for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                    continue
                file_part, _, fragment = target.partition("#")
                linked = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(REPO)}: {target}"
                if not linked.exists():
                    broken.append(f"{where} (no such file)")
                elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                    broken.append(f"{where} (no such heading)")
    return broken


def test_every_relative_link_of_the_docs_leads_somewhere() -> None:
    files = _markdown_files()
    assert len(files) >= 20 and REPO / "README.md" in files, files
    assert broken_links(files) == []


def test_the_readmes_contents_list_every_section_in_order() -> None:
    lines = _lines_outside_code((REPO / "README.md").read_text())
    sections = [line[3:] for line in lines if line.startswith("## ") and line != "## Contents"]
    start = lines.index("## Contents") + 1
    listed = []
    for line in lines[start:]:
        if line.startswith("## "):
            break
        if match := re.match(r"^- \[(.+)\]\(#(.+)\)$", line):
            listed.append(match.group(1))
            assert match.group(2) == slug(match.group(1)), line
    assert listed == sections


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    """The check itself: a page with a good link, a missing file and a missing heading."""
    page = REPO / "docs" / "performance.md"
    assert "the-cost-model-mbostream-bench-costs" in anchors(page)
    assert slug("StreamBook on the native transport: `--book-port` (2026-12-04)") == "streambook-on-the-native-transport---book-port-2026-12-04"
    probe = REPO / "docs" / f"_link_probe_{tmp_path.name}.md"
    probe.write_text(
        "# Probe\n\n[fine](performance.md#the-cost-model-mbostream-bench-costs) [self](#probe)\n"
        "[gone](no-such-page.md) [moved](performance.md#no-such-section)\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    try:
        assert broken_links([probe]) == [
            f"docs/{probe.name}: no-such-page.md (no such file)",
            f"docs/{probe.name}: performance.md#no-such-section (no such heading)",
        ]
    finally:
        probe.unlink()
