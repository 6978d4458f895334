"""The GitHub workflows (.github/workflows) pass actionlint (pinned, scripts/install-k8s-tools),
and actionlint is shown to fail on a copy broken on purpose. Running them needs GitHub: not here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from k8s_tools import REPO, k8s_tools

WORKFLOWS = REPO / ".github" / "workflows"


def actionlint(workflows: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [k8s_tools()["actionlint"], "-no-color", *map(str, workflows)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_workflows_pass_actionlint() -> None:
    workflows = sorted(WORKFLOWS.glob("*.yml"))
    assert {w.name for w in workflows} >= {"ci.yml", "release.yml", "deploy.yml"}
    result = actionlint(workflows, REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_fails_on_a_broken_workflow(tmp_path: Path) -> None:
    copy = tmp_path / ".github" / "workflows"
    shutil.copytree(WORKFLOWS, copy)
    # actionlint finds local reusable workflows from the project root, which a .git marks.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=30)
    deploy = copy / "deploy.yml"
    text = deploy.read_text()
    assert "uses: ./.github/workflows/pulumi-up.yml" in text
    # An input the called workflow does not declare, and a context that does not exist.
    deploy.write_text(text.replace("      stack: staging\n", "      stak: staging\n", 1).replace(
        "${{ github.sha }}", "${{ github.shaa }}", 1))
    result = actionlint(sorted(copy.glob("*.yml")), tmp_path)
    assert result.returncode != 0
    assert 'input "stak" is not defined' in result.stdout, result.stdout
    assert 'property "shaa" is not defined' in result.stdout, result.stdout
