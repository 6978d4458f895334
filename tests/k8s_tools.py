"""The offline Kubernetes checkers of scripts/install-k8s-tools (built once, cached by version)
and a YAML reader, shared by tests/test_k8s.py, test_infra.py and test_workflows.py."""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: PyYAML is not a dependency of the server's venv; the infra venv (scripts/bootstrap-dev) has it.
INFRA_PYTHON = REPO / "infra" / ".venv" / "bin" / "python"


@cache
def k8s_tools() -> dict[str, str]:
    """``{"kustomize": path, "kubeconform": path, ..., "schemas": dir}``, installing what is missing."""
    out = subprocess.run([str(REPO / "scripts" / "install-k8s-tools")], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, f"scripts/install-k8s-tools failed:\n{out.stderr[-3000:]}"
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def load_yaml(text: str) -> list[dict[str, Any]]:
    """The documents of a YAML stream (parsed by the infra venv's PyYAML)."""
    result = subprocess.run(
        [str(INFRA_PYTHON), "-c", "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)"],
        input=text, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"{INFRA_PYTHON} could not parse YAML (run scripts/bootstrap-dev):\n{result.stderr}"
    return json.loads(result.stdout)
