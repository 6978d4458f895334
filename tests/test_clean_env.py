"""scripts/lib/venv.sh with scripts/lib/clean-env.sh: a virtualenv made while python3 is reached
through .ci/run's temporary toolchain links still starts after those links are gone.

Stop 27's CI failed this way: scripts/install-sbom-tools had cached cyclonedx-py in a venv made
through a link in an earlier run's temporary folder; the folder was deleted, the cached tool could
not start, and scripts/audit-deps reported a failed tool. Real scripts, real venvs, real links.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from server_harness import repo

LIB = repo() / "scripts" / "lib"


def _bash(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in bash with clean-env.sh and venv.sh sourced."""
    prelude = f'set -euo pipefail; source "{LIB / "clean-env.sh"}"; source "{LIB / "venv.sh"}"\n'
    return subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, timeout=300)


def _runs(venv: Path) -> bool:
    """Whether the venv's interpreter starts (a dead link raises FileNotFoundError here)."""
    try:
        return subprocess.run([str(venv / "bin" / "python"), "-c", ""], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def test_a_venv_made_through_the_ci_links_outlives_them(tmp_path: Path) -> None:
    links = tmp_path / "toolchains"
    proc = _bash(f'toolchain_links "{links}"; PATH="{links}:$PATH" make_venv "{tmp_path / "made"}"')
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(links)
    assert _runs(tmp_path / "made")


def test_a_venv_left_dead_by_the_links_is_mended_in_place_with_its_packages(tmp_path: Path) -> None:
    links, venv = tmp_path / "toolchains", tmp_path / "old"
    # The way the scripts made venvs before: `python3 -m venv` through the link.
    proc = _bash(f'toolchain_links "{links}"; PATH="{links}:$PATH" python3 -m venv --without-pip "{venv}"')
    assert proc.returncode == 0, proc.stderr
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "kept_marker.py").write_text("VALUE = 7\n")
    shutil.rmtree(links)
    assert not _runs(venv)  # the failure this guards against, reproduced
    assert _bash(f'venv_runs "{venv}"').returncode != 0

    proc = _bash(f'make_venv "{venv}"; venv_runs "{venv}"')
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import kept_marker; print(kept_marker.VALUE)"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.stdout.strip() == "7", out.stderr
