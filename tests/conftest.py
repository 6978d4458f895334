"""Shared fixtures: paths to the real Databento data beside the repo, small generated files, and the
example code of the docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
#: The documents whose example queries the tests check.
DOCUMENTED_QUERIES = (REPO / "README.md", REPO / "docs" / "storage.md")


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or a skip with the reason when the shared data is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real Databento data not available: {path} is absent (it ships beside the repo in CI)")
    return path


@pytest.fixture(scope="session")
def generated_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60,000-record generated file (3 instruments), made once per test session."""
    from mbostream.synth import generate_file

    path = tmp_path_factory.mktemp("synth") / "small.mbo.dbn"
    generate_file(path, records=60_000, instruments=3, seed=11)
    return path


def documented_code(language: str) -> list[str]:
    """The bodies of every fenced ``language`` block of the README and the storage docs, in order."""
    text = "".join(path.read_text() for path in DOCUMENTED_QUERIES)
    return re.findall(rf"```{re.escape(language)}\n(.*?)```", text, re.S)
