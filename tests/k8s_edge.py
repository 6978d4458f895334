"""The Kubernetes edge's Envoy config as the edge image gets it: the Dockerfile's ``edge-config``
stage read and its render command for the TLS component's config run here, with the image's paths
mapped to the repository's files (its COPY lines) and the built UI to a folder the test makes.
Shared by tests/test_k8s.py; nothing of the command is written out twice."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

from k8s_tools import REPO, load_yaml

DOCKERFILE = REPO / "Dockerfile"
#: Where the edge image holds the TLS component's config (the component starts Envoy with it).
K8S_TLS_CONFIG = "/etc/envoy/envoy-k8s-tls.yaml"
#: The image's default config (compose's), which the component's command replaces.
DEFAULT_CONFIG = "/etc/envoy/envoy.yaml"


def dockerfile_stage(name: str) -> list[str]:
    """The instructions of stage ``name``: continuation lines joined, comments dropped."""
    instructions: list[str] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            instructions.append(re.sub(r"\s+", " ", current).strip())
            current = ""
    starts = [i for i, text in enumerate(instructions) if re.fullmatch(rf"FROM \S+ AS {re.escape(name)}", text)]
    assert len(starts) == 1, f"Dockerfile: {len(starts)} stages named {name}"
    rest = instructions[starts[0] + 1 :]
    end = next((i for i, text in enumerate(rest) if text.startswith("FROM ")), len(rest))
    return rest[:end]


def release_edge_build_args() -> dict[str, str]:
    """The build arguments release.yml builds the Kubernetes edge image with."""
    workflow = load_yaml((REPO / ".github" / "workflows" / "release.yml").read_text())[0]
    (edge,) = [m for m in workflow["jobs"]["image"]["strategy"]["matrix"]["include"] if m["target"] == "edge"]
    return dict(line.split("=", 1) for line in edge["build-args"].split())


def edge_image_command() -> list[str]:
    """The edge image's ENTRYPOINT followed by its CMD (both in JSON form in the Dockerfile)."""
    stage = dockerfile_stage("edge")
    (entrypoint,) = [json.loads(i.removeprefix("ENTRYPOINT ")) for i in stage if i.startswith("ENTRYPOINT ")]
    (cmd,) = [json.loads(i.removeprefix("CMD ")) for i in stage if i.startswith("CMD ")]
    return [*entrypoint, *cmd]


def edge_image_copies() -> dict[str, str]:
    """The edge stage's ``COPY --from=edge-config`` lines: {path in the image: path in edge-config}."""
    copies = {}
    for text in dockerfile_stage("edge"):
        parts = text.split()
        if parts[0] == "COPY" and parts[1] == "--from=edge-config":
            copies[parts[3]] = parts[2]
    return copies


def render_k8s_tls_config(out: Path, static_dir: Path, build_args: dict[str, str]) -> str:
    """Runs the edge-config stage's render command whose output the edge image holds at
    :data:`K8S_TLS_CONFIG`, with ``build_args`` over the stage's ARG defaults (passed as the build
    passes them: substituted in the command and in its environment), the files the stage COPYs
    from the repository at their repository paths, the UI (COPY --from=dist) at ``static_dir`` and
    the output at ``out``. Returns the config's text."""
    stage = dockerfile_stage("edge-config")
    args: dict[str, str] = {}
    for text in stage:
        if text.startswith("ARG "):
            name, _, default = text.removeprefix("ARG ").partition("=")
            args[name] = default
    unknown = set(build_args) - set(args)
    assert not unknown, f"edge-config has no ARG {sorted(unknown)}"
    args.update(build_args)
    local: dict[str, str] = {}
    for text in stage:
        parts = text.split()
        if parts[0] == "COPY" and parts[1] == "--from=dist":
            local[parts[3]] = str(static_dir)
        elif parts[0] == "COPY" and not parts[1].startswith("--"):
            local[parts[2]] = str(REPO / parts[1])
    image_out = edge_image_copies().get(K8S_TLS_CONFIG)
    assert image_out, f"the edge stage does not COPY {K8S_TLS_CONFIG} from edge-config"
    commands = [c for text in stage if text.startswith("RUN ") for c in text.removeprefix("RUN ").split(" && ")]
    writes = [c for c in commands if c.rstrip().endswith(f"--out {image_out}")]
    assert len(writes) == 1, f"edge-config: {len(writes)} commands write {image_out}"
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], token) for token in shlex.split(writes[0])]
    assert argv[0] == "/opt/mbostream/bin/python", argv[0]
    argv[0] = sys.executable
    argv = [str(out) if token == image_out else local.get(token, token) for token in argv]
    unmapped = [t for t in argv[1:] if PurePosixPath(t).is_absolute() and t.startswith(("/src/", "/srv/"))]
    assert not unmapped, f"paths of the build stage not mapped to the repository: {unmapped}"
    result = subprocess.run(argv, env={**os.environ, **args}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stderr}"
    return out.read_text()
