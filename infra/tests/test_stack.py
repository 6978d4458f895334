"""Policy tests of the Pulumi program under Pulumi's mocks: no CLI, no cloud, no cluster.

The mocks answer the kustomize invoke with the real ``kustomize build`` of the overlay (the binary
from scripts/install-k8s-tools), so the assertions read the manifests a real ``pulumi up`` would
send, plus the Namespace, Secrets and Helm releases the program declares itself. Run with the
infra venv: ``infra/.venv/bin/python -m pytest infra/tests`` (tests/test_infra.py does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

INFRA = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(INFRA))

import program  # noqa: E402  (the program under test, from infra/)

SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # Pulumi's wire marker of a secret value
SECRETS = {
    "controlToken": "control-token-3f9c1a7e",
    "influxToken": "influx-token-8b2d4e6f",
    "influxAdminPassword": "influx-admin-5a7c9e1b",
}
DIGESTS = {
    "imageDigest": "sha256:" + "4f" * 32,
    "edgeImageDigest": "sha256:" + "e0" * 32,
    "otelcolImageDigest": "sha256:" + "0c" * 32,
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}


def _kustomize() -> str:
    if os.environ.get("MBOSTREAM_KUSTOMIZE"):
        return os.environ["MBOSTREAM_KUSTOMIZE"]
    out = subprocess.run(
        [str(INFRA.parent / "scripts" / "install-k8s-tools")], capture_output=True, text=True, check=True, timeout=3600
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines())["kustomize"]


@dataclass
class Recorded:
    """What the program declared: (type, name, inputs) of every resource, and the stack outputs."""

    resources: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, typ: str) -> list[dict[str, Any]]:
        return [inputs for t, _, inputs in self.resources if t == typ]


class KustomizeMocks(pulumi.runtime.Mocks):
    """Records every resource; answers the kustomize invoke by running the real kustomize."""

    def __init__(self, kustomize: str, recorded: Recorded) -> None:
        self.kustomize = kustomize
        self.recorded = recorded

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        self.recorded.resources.append((args.typ, args.name, args.inputs))
        return f"{args.name}-id", args.inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None] | dict:
        if args.token != "kubernetes:kustomize:directory":
            raise AssertionError(f"unexpected invoke {args.token}")
        built = subprocess.run(
            [self.kustomize, "build", args.args["directory"]], capture_output=True, text=True, check=True, timeout=120
        ).stdout
        return {"result": [doc for doc in yaml.safe_load_all(built) if doc]}


def run_stack(stack: str, config: dict[str, str] | None = None) -> Recorded:
    """Runs the program for ``stack`` under the mocks, with the secrets as config secrets."""
    recorded = Recorded()
    pulumi.runtime.set_mocks(KustomizeMocks(_kustomize(), recorded), project="mbostream", stack=stack, preview=False)
    values = {"host": f"{stack}.mbostream.test", **SECRETS, **(config or {})}
    pulumi.runtime.set_all_config(
        {f"mbostream:{key}": value for key, value in values.items()},
        secret_keys=[f"mbostream:{key}" for key in SECRETS],
    )

    @pulumi.runtime.test
    def declare():
        outputs = program.deploy()
        return pulumi.Output.all(**outputs).apply(recorded.outputs.update)

    declare()
    return recorded


@pytest.fixture(scope="module")
def stacks() -> dict[str, Recorded]:
    return {
        "dev": run_stack("dev"),
        "staging": run_stack("staging"),
        "prod": run_stack("prod", DIGESTS),
    }


def _pod_specs(recorded: Recorded):
    for typ, name, inputs in recorded.resources:
        kind = typ.rsplit(":", 1)[-1]
        if kind in WORKLOADS:
            yield name, inputs["spec"]["template"]["spec"]


def test_prod_has_two_gateways_an_hpa_and_a_pdb(stacks):
    prod = stacks["prod"]
    hpas = [h for h in prod.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == "gateway"]
    assert len(hpas) == 1, "prod: no HPA scales the gateways"
    assert hpas[0]["spec"]["minReplicas"] >= 2, "prod: fewer than 2 gateways"
    gateway = [d for d in prod.of_type("kubernetes:apps/v1:Deployment") if d["metadata"]["name"] == "gateway"][0]
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    pdbs = prod.of_type("kubernetes:policy/v1:PodDisruptionBudget")
    assert any(set(p["spec"]["selector"]["matchLabels"].items()) <= set(labels.items()) for p in pdbs), "prod: no PDB covers the gateways"
    assert gateway["spec"]["template"]["spec"]["topologySpreadConstraints"], "prod: gateways not spread across zones"


def test_every_container_runs_as_non_root_with_limits(stacks):
    checked = 0
    for env, recorded in stacks.items():
        for name, spec in _pod_specs(recorded):
            pod_context = spec.get("securityContext", {})
            for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
                context = {**pod_context, **container.get("securityContext", {})}
                where = f"{env}: {name}/{container['name']}"
                assert context.get("runAsNonRoot") is True, f"{where}: may run as root"
                assert context.get("runAsUser", 0) != 0, f"{where}: runAsUser 0"
                assert context.get("readOnlyRootFilesystem") is True, f"{where}: writable root filesystem"
                assert context.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed"
                assert "ALL" in context.get("capabilities", {}).get("drop", []), f"{where}: capabilities not dropped"
                limits = container.get("resources", {}).get("limits", {})
                assert {"cpu", "memory"} <= set(limits), f"{where}: no cpu/memory limits"
                checked += 1
            assert spec.get("automountServiceAccountToken") is False, f"{env}: {name} mounts a service-account token"
    assert checked >= 12, f"only {checked} containers seen: the overlay's workloads were not declared"


def _plain_strings(node: Any):
    """Every string of a resource's inputs that is not inside a Pulumi secret."""
    if isinstance(node, dict):
        if node.get("4dabf18193072939515e22adb298388d") == SECRET_SIG:
            return
        for value in node.values():
            yield from _plain_strings(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _plain_strings(value)
    elif isinstance(node, str):
        yield node


def test_no_secret_value_in_plain_text(stacks):
    for env, recorded in stacks.items():
        for typ, name, inputs in recorded.resources:
            text = "\n".join(_plain_strings(inputs))
            for key, value in SECRETS.items():
                assert value not in text, f"{env}: {typ} {name} holds mbostream:{key} in plain text"
        secrets = recorded.of_type("kubernetes:core/v1:Secret")
        assert len(secrets) == 2, f"{env}: expected the two Secrets from config secrets"
        assert "mbostream:" not in json.dumps(recorded.outputs)
        for value in SECRETS.values():
            assert value not in json.dumps(recorded.outputs, default=str), f"{env}: a secret in the stack outputs"


def test_prod_images_are_pinned_by_digest(stacks):
    images = {c["image"] for _, spec in _pod_specs(stacks["prod"]) for c in spec["containers"]}
    expected = {f"{program.IMAGES[key]}@{digest}" for key, digest in DIGESTS.items()}
    assert images == expected, f"prod images not pinned by the release's digests: {sorted(images)}"


@pytest.mark.parametrize("missing", sorted(DIGESTS))
def test_prod_without_a_digest_is_refused(missing):
    with pytest.raises(program.InfraError, match=missing):
        run_stack("prod", {key: value for key, value in DIGESTS.items() if key != missing})


def test_stack_outputs_the_edge_url(stacks):
    for env, recorded in stacks.items():
        assert recorded.outputs["edgeUrl"] == f"https://{env}.mbostream.test"
        assert recorded.outputs["grpcTarget"] == f"grpc.{env}.mbostream.test:443"
        assert recorded.outputs["namespace"] == program.NAMESPACES[env]
        # ... and the Ingresses serve exactly those hosts.
        ingresses = {i["metadata"]["name"]: i["spec"] for i in recorded.of_type("kubernetes:networking.k8s.io/v1:Ingress")}
        for name, target in (("edge-web", recorded.outputs["edgeUrl"]), ("edge-grpc", recorded.outputs["grpcTarget"])):
            host = target.removeprefix("https://").removesuffix(":443")
            assert ingresses[name]["rules"][0]["host"] == host, f"{env}: {name} serves {ingresses[name]['rules'][0]['host']}"
            assert ingresses[name]["tls"][0]["hosts"] == [host]


def test_helm_releases_are_pinned_with_per_environment_values(stacks):
    pins = yaml.safe_load((program.K8S / "helm" / "charts.yaml").read_text())
    for env, recorded in stacks.items():
        releases = {r["chart"]: r for r in recorded.of_type("kubernetes:helm.sh/v3:Release")}
        assert set(releases) == {"nats", "influxdb2"}, f"{env}: releases {sorted(releases)}"
        for chart, release in releases.items():
            assert release["version"] == pins[chart]["version"]
            files = [Path(asset.path).name for asset in release["valueYamlFiles"]]
            assert files == ["values.yaml", f"values-{env}.yaml"], f"{env}: {chart} values {files}"
            for asset in release["valueYamlFiles"]:
                assert isinstance(yaml.safe_load(Path(asset.path).read_text()), dict), f"{asset.path}: not a YAML map"


def test_the_releases_pods_get_their_network_policies(stacks):
    for env, recorded in stacks.items():
        names = {p["metadata"]["name"] for p in recorded.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")}
        assert {"default-deny", "nats", "influxdb"} <= names, f"{env}: network policies {sorted(names)}"


def test_everything_lands_in_the_stacks_namespace(stacks):
    for env, recorded in stacks.items():
        namespace = program.NAMESPACES[env]
        for typ, name, inputs in recorded.resources:
            if typ.startswith("kubernetes:") and "metadata" in inputs and not typ.endswith(":Namespace"):
                assert inputs["metadata"].get("namespace") == namespace, f"{env}: {typ} {name} outside {namespace}"
        releases = recorded.of_type("kubernetes:helm.sh/v3:Release")
        assert all(r["namespace"] == namespace for r in releases), f"{env}: a release outside {namespace}"
