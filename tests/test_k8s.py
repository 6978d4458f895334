"""The Kubernetes manifests (k8s/), checked offline by real tools: ``kustomize build`` of every
overlay, ``kubeconform -strict`` against the Kubernetes 1.37 schemas of ``kubernetes-validate``,
``kube-score`` with no critical finding, and the overlays differing only in the fields that
k8s/README.md's table names. Each checker is also shown to fail on a manifest broken on purpose.
The tools come from scripts/install-k8s-tools (cached by version). No cluster is involved: what
only an API server checks (admission, defaulting, a Deployment becoming Available) is not checked
here (k8s/README.md says so).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from k8s_tools import REPO, k8s_tools, load_yaml

K8S = REPO / "k8s"
OVERLAYS = ("dev", "staging", "prod")
#: Kinds whose schemas are CRDs, not in kubernetes-validate: kubeconform skips them (README says so).
CRD_KINDS = ("ServiceMonitor", "PrometheusRule")


def build(overlay: Path) -> str:
    result = subprocess.run([k8s_tools()["kustomize"], "build", str(overlay)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kustomize build {overlay} failed:\n{result.stderr}"
    return result.stdout


def kubeconform(manifests: str) -> subprocess.CompletedProcess[str]:
    t = k8s_tools()
    location = t["schemas"] + "/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"
    return subprocess.run(
        [t["kubeconform"], "-strict", "-summary", "-output", "text", "-kubernetes-version",
         t["schema-kubernetes-version"], "-schema-location", location, "-skip", ",".join(CRD_KINDS), "-"],
        input=manifests, capture_output=True, text=True, timeout=120,
    )


def kube_score(manifests: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [k8s_tools()["kube-score"], "score", "--output-format", "ci", "-"],
        input=manifests, capture_output=True, text=True, timeout=120,
    )


def broken_copy(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of k8s/ (and the collector config the base includes) with one replacement in ``file``
    (asserted to happen)."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    shutil.copytree(REPO / "observability" / "otelcol", tmp_path / "observability" / "otelcol")
    shutil.copytree(REPO / "observability" / "grafana", tmp_path / "observability" / "grafana")
    target = copy / file
    text = target.read_text()
    assert old in text, f"{file} no longer contains {old!r}: update the test"
    target.write_text(text.replace(old, new, 1))
    return copy


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_valid_against_the_kubernetes_schemas(overlay: str) -> None:
    manifests = build(K8S / "overlays" / overlay)
    result = kubeconform(manifests)
    assert result.returncode == 0, f"kubeconform -strict on {overlay}:\n{result.stdout}{result.stderr}"
    summary = re.search(r"Valid: (\d+), Invalid: (\d+), Errors: (\d+), Skipped: (\d+)", result.stdout)
    assert summary, result.stdout
    valid, invalid, errors, skipped = map(int, summary.groups())
    kinds = re.findall(r"^kind: (\w+)$", manifests, re.M)
    assert (invalid, errors) == (0, 0)
    assert skipped == sum(kinds.count(k) for k in CRD_KINDS), f"skipped {skipped}: a kind without a schema?\n{result.stdout}"
    assert valid == len(kinds) - skipped and valid >= 20


def test_kubeconform_rejects_a_misspelt_field(tmp_path: Path) -> None:
    copy = broken_copy(tmp_path, "base/gateway.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true")
    result = kubeconform(build(copy / "overlays" / "prod"))
    assert result.returncode != 0
    assert "readOnlyRootFileSystem" in result.stdout, result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kube_score_finds_nothing_critical(overlay: str) -> None:
    result = kube_score(build(K8S / "overlays" / overlay))
    critical = [line for line in result.stdout.splitlines() if line.startswith("[CRITICAL]")]
    assert not critical, "\n".join(critical)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kube_score_flags_a_container_without_limits(tmp_path: Path) -> None:
    copy = broken_copy(
        tmp_path, "base/store.yaml",
        '\n            limits:\n              cpu: "1"\n              memory: 1Gi\n              ephemeral-storage: 256Mi', "",
    )
    result = kube_score(build(copy / "overlays" / "dev"))
    critical = [line for line in result.stdout.splitlines() if line.startswith("[CRITICAL]")]
    assert result.returncode != 0
    assert any("(store)" in line and "limit is not set" in line for line in critical), result.stdout


def test_prometheusrule_holds_the_tested_rule_files() -> None:
    check = subprocess.run([str(K8S / "generate-prometheusrule"), "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, f"k8s/base/prometheusrule.yaml is stale (run k8s/generate-prometheusrule) or the rule files are missing\n{check.stderr}"
    rule_files = sorted((REPO / "observability" / "prometheus" / "rules").glob("*.yml"))
    expected = [group for path in rule_files for doc in load_yaml(path.read_text()) for group in doc["groups"]]
    for overlay in OVERLAYS:
        rules = [d for d in load_yaml(build(K8S / "overlays" / overlay)) if d["kind"] == "PrometheusRule"]
        assert len(rules) == 1 and rules[0]["spec"]["groups"] == expected, f"{overlay}: PrometheusRule differs from the rule files"
    assert sum(len(group["rules"]) for group in expected) >= 10


def test_every_overlay_ships_the_generated_dashboards_for_grafanas_sidecar() -> None:
    """The dashboards reach Kubernetes as they are generated: one ConfigMap labelled for Grafana's
    dashboard sidecar, holding every file of observability/grafana/dashboards unchanged."""
    files = {path.name: path.read_text() for path in (REPO / "observability" / "grafana" / "dashboards").glob("*.json")}
    assert len(files) >= 5
    for overlay in OVERLAYS:
        maps = [d for d in load_yaml(build(K8S / "overlays" / overlay)) if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("mbostream-dashboards")]
        assert len(maps) == 1, overlay
        assert maps[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert maps[0]["data"] == files, f"{overlay}: the dashboards ConfigMap differs from the generated files"


# --- the overlays differ only where the README's table says ------------------------------------

_HASHED = re.compile(r"^(mbostream-config)-[a-z0-9]{10}$")


def _flatten(node: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(value, f"{path}.{key}" if path else key, out)
    elif isinstance(node, list) and node and all(isinstance(i, dict) and "name" in i for i in node):
        for item in node:
            _flatten(item, f"{path}[{item['name']}]", out)
    elif isinstance(node, list) and node and all(isinstance(i, dict) for i in node):
        for index, item in enumerate(node):
            _flatten(item, f"{path}[{index}]", out)
    else:
        # The ConfigMap's content hash differs with its content; the content itself is compared.
        out[path] = _HASHED.sub(r"\1", node) if isinstance(node, str) else node


def rendered(overlay: str) -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for doc in load_yaml(build(K8S / "overlays" / overlay)):
        flat: dict[str, Any] = {}
        _flatten(doc, "", flat)
        name = _HASHED.sub(r"\1", doc["metadata"]["name"])
        objects[f"{doc['kind']}/{name}"] = flat
    return objects


def _matches(where: str, obj: str, field: str) -> bool:
    """``obj:field`` with ``*`` as the only wildcard (brackets are literal, as in ``[gateway]``)."""
    return re.fullmatch(re.escape(f"{obj}:{field}").replace(r"\*", ".*"), where) is not None


def documented_differences() -> list[tuple[str, str, dict[str, str]]]:
    """(object pattern, field pattern, {overlay: cell}) of each row of k8s/README.md's table."""
    text = (K8S / "README.md").read_text()
    section = text.split("## What differs per overlay", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("object", "") and not set(cells[0]) <= set("-: "):
            rows.append((cells[0], cells[1], dict(zip(OVERLAYS, cells[2:]))))
    assert len(rows) >= 8, "k8s/README.md: the table of overlay differences is missing"
    return rows


def test_overlays_differ_only_in_documented_fields() -> None:
    renders = {overlay: rendered(overlay) for overlay in OVERLAYS}
    differing: dict[str, dict[str, Any]] = {}
    for key in sorted(set().union(*renders.values())):
        present = {o: renders[o].get(key) for o in OVERLAYS}
        paths = set().union(*(flat or {} for flat in present.values()))
        for path in sorted(paths):
            values = {o: (flat or {}).get(path) for o, flat in present.items()}
            if len({repr(v) for v in values.values()}) > 1:
                differing[f"{key}:{path}"] = values
    rows = documented_differences()
    undocumented = [where for where in differing if not any(_matches(where, o, f) for o, f, _ in rows)]
    assert not undocumented, "overlays differ in fields k8s/README.md does not name:\n" + "\n".join(undocumented)
    for obj, field, cells in rows:
        matches = [w for w in differing if _matches(w, obj, field)]
        assert matches, f"k8s/README.md names {obj} {field}, which does not differ between overlays"
        if "*" not in obj + field:
            actual = {o: "—" if v is None else str(v) for o, v in differing[f"{obj}:{field}"].items()}
            assert actual == cells, f"k8s/README.md's row {obj} {field} says {cells}, the overlays render {actual}"
