"""The Pulumi program (infra/) under Pulumi's mocks, run in its own venv (infra/.venv: the Pulumi
SDK needs protobuf<7, the server protobuf>=7.35). The policy tests live in infra/tests; here they
run as they are, then once more on a copy of the manifests broken on purpose, where they must fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from k8s_tools import INFRA_PYTHON, REPO, k8s_tools


def run_policy_tests(root: Path) -> subprocess.CompletedProcess[str]:
    """``pytest infra/tests`` of the repo (or copy) at ``root``, with the kustomize of our scripts."""
    assert INFRA_PYTHON.exists(), f"{INFRA_PYTHON} is missing: run scripts/bootstrap-dev"
    env = {**os.environ, "MBOSTREAM_KUSTOMIZE": k8s_tools()["kustomize"]}
    return subprocess.run(
        [str(INFRA_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "infra" / "tests")],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )


def test_pulumi_policy_tests_pass() -> None:
    result = run_policy_tests(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 8, result.stdout[-2000:]
    assert "failed" not in result.stdout.splitlines()[-1]


def test_pulumi_policy_tests_fail_on_a_container_without_limits(tmp_path: Path) -> None:
    for part in ("k8s", "infra", "observability/otelcol", "observability/grafana"):  # the base includes these
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns(".venv", "__pycache__"))
    gateway = tmp_path / "k8s" / "base" / "gateway.yaml"
    text = gateway.read_text()
    limits = '\n            limits:\n              cpu: "1"\n              memory: 1Gi\n              ephemeral-storage: 256Mi'
    assert limits in text, "k8s/base/gateway.yaml changed: update the test"
    gateway.write_text(text.replace(limits, "", 1))
    # The overlays patch the gateway's cpu/memory limits back in; drop those patches' limits too.
    for scale in (tmp_path / "k8s" / "overlays").glob("*/scale.yaml"):
        scale.write_text(re.sub(r"\n            limits:\n(              .*\n){2}", "\n", scale.read_text()))
    result = run_policy_tests(tmp_path)
    assert result.returncode != 0, result.stdout[-3000:]
    assert "test_every_container_runs_as_non_root_with_limits" in result.stdout
    assert "no cpu/memory limits" in result.stdout, result.stdout[-3000:]
