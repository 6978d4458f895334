"""The import contracts (``.importlinter``, docs/architecture.md) hold on this tree, and a wrong-way
import breaks them: a copy of the packages whose feed imports the hub fails ``lint-imports`` (what
``make test`` runs), naming the contract and the line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
#: Each root package of the contracts and the folder it is imported from.
PACKAGES = {
    "mbostream": Path("server"),
    "mbostream_core": Path("core"),
    "mbostream_client": Path("clients/python/src"),
}
TIMEOUT = 120


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports --no-cache`` with ``root``'s .importlinter and ``root``'s copies of the packages
    first on the path (ahead of the editable installs of this checkout)."""
    path = os.pathsep.join(str(root / folder) for folder in PACKAGES.values())
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def test_the_contracts_hold_on_this_tree() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken." in result.stdout


def test_a_feed_that_imports_the_hub_fails_the_contracts(tmp_path: Path) -> None:
    shutil.copy(REPO / ".importlinter", tmp_path)
    for package, folder in PACKAGES.items():
        shutil.copytree(REPO / folder / package, tmp_path / folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    feed = tmp_path / "server" / "mbostream" / "feed.py"
    source = feed.read_text()
    assert "\nimport numpy as np\n" in source
    feed.write_text(source.replace("\nimport numpy as np\n", "\nimport numpy as np\n\nfrom mbostream.hub import Hub\n", 1))
    line = feed.read_text().splitlines().index("from mbostream.hub import Hub") + 1

    result = _lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    broken = result.stdout.split("Broken contracts", 1)[-1]
    # The wrong-way import itself, found in the copy (not in this checkout), under the feed's contract.
    assert "The feed (replay) publishes through its Publisher protocol" in broken
    assert f"mbostream.feed -> mbostream.hub (l.{line})" in broken
