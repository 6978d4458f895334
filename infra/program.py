"""Infrastructure room: one Pulumi stack per environment (dev, staging, prod).

Each stack deploys into one namespace: the Secrets made from the stack's config secrets, the NATS
and InfluxDB Helm releases (pinned in ``k8s/helm/charts.yaml``, values per environment) with the
NetworkPolicies of their pods (``k8s/helm/networkpolicies.yaml``), and the kustomize overlay ``k8s/overlays/<stack>``. In prod every image (the roles', the edge's and the
collector's) is pinned by digest (``mbostream:imageDigest``, ``mbostream:edgeImageDigest`` from the
release, ``mbostream:otelcolImageDigest`` from the collector's tag, set by the deploy workflow) and a missing digest is an error. ``mbostream:createCluster`` (off by default) first creates an EKS cluster and deploys
into it; without it the stack uses the current kubeconfig context.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import pulumi
import pulumi_kubernetes as k8s
import yaml

REPO: Final = Path(__file__).resolve().parent.parent
K8S: Final = REPO / "k8s"
ENVIRONMENTS: Final = ("dev", "staging", "prod")
#: The namespace of each environment (the overlays set the same one).
NAMESPACES: Final = {"dev": "mbostream-dev", "staging": "mbostream-staging", "prod": "mbostream"}
#: Config key of each image's digest → the image (the Dockerfile's `runtime` and `edge` targets,
#: and the official OpenTelemetry Collector of k8s/base/otel-collector.yaml, whose tag's digest
#: the deploy workflow reads from the registry).
IMAGES: Final = {
    "imageDigest": "ghcr.io/mbostream/mbostream",
    "edgeImageDigest": "ghcr.io/mbostream/mbostream-edge",
    "otelcolImageDigest": "docker.io/otel/opentelemetry-collector-contrib",
}
_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")


class InfraError(Exception):
    """A stack's configuration that cannot be deployed; the message names the setting."""


def pin_images(digests: dict[str, str]):
    """A kustomize transformation: a container of an image in ``digests`` (image → digest) runs
    ``image@digest`` instead of its tag."""

    def transform(obj: dict[str, Any], opts: pulumi.ResourceOptions) -> None:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
            repository = container.get("image", "").split("@")[0].rsplit(":", 1)[0]
            if repository in digests:
                container["image"] = f"{repository}@{digests[repository]}"

    return transform


def set_ingress_hosts(host: str):
    """A kustomize transformation: the Ingresses serve the stack's ``mbostream:host`` (the web UI and
    gRPC-Web) and ``grpc.<host>`` (native gRPC), so the stack's edge URL is where the edge is."""
    hosts = {"edge-web": host, "edge-grpc": f"grpc.{host}"}

    def transform(obj: dict[str, Any], opts: pulumi.ResourceOptions) -> None:
        if obj.get("kind") == "Ingress" and obj["metadata"]["name"] in hosts:
            name = hosts[obj["metadata"]["name"]]
            obj["spec"]["rules"][0]["host"] = name
            obj["spec"]["tls"][0]["hosts"] = [name]

    return transform


def _helm_release(name: str, environment: str, namespace: k8s.core.v1.Namespace, opts: pulumi.ResourceOptions):
    pins = yaml.safe_load((K8S / "helm" / "charts.yaml").read_text())[name]
    values = K8S / "helm" / name
    return k8s.helm.v3.Release(
        name,
        name=pins["release"],
        chart=pins["chart"],
        version=pins["version"],
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=pins["repository"]),
        namespace=namespace.metadata.name,
        value_yaml_files=[
            pulumi.FileAsset(str(values / "values.yaml")),
            pulumi.FileAsset(str(values / f"values-{environment}.yaml")),
        ],
        atomic=True,
        opts=opts,
    )


def _cluster_provider(environment: str) -> k8s.Provider | None:
    """With ``mbostream:createCluster``, an EKS cluster and a provider for it (needs pulumi-eks added
    to ``infra/requirements.in``, and AWS credentials); else None: the current kubeconfig."""
    config = pulumi.Config("mbostream")
    if not config.get_bool("createCluster"):
        return None
    import pulumi_eks as eks  # only with the flag: the cloud SDKs are not in requirements.txt

    cluster = eks.Cluster(
        f"mbostream-{environment}",
        instance_type=config.get("nodeInstanceType") or "m6i.large",
        desired_capacity=config.get_int("nodeCount") or 3,
        min_size=config.get_int("nodeCount") or 3,
        max_size=(config.get_int("nodeCount") or 3) * 2,
    )
    return k8s.Provider(f"mbostream-{environment}", kubeconfig=cluster.kubeconfig_json)


def deploy() -> dict[str, Any]:
    """Declares the stack's resources; returns the stack outputs (``edgeUrl``, ``grpcTarget``, …)."""
    environment = pulumi.get_stack()
    if environment not in ENVIRONMENTS:
        raise InfraError(f"stack {environment!r}: expected one of {', '.join(ENVIRONMENTS)}")
    config = pulumi.Config("mbostream")
    host = config.require("host")
    digests: dict[str, str] = {}
    for key, image in IMAGES.items():
        digest = config.get(key)
        if digest is not None and not _DIGEST.fullmatch(digest):
            raise InfraError(f"mbostream:{key}: {digest!r} is not sha256:<64 hex digits>")
        if environment == "prod" and digest is None:
            raise InfraError(f"mbostream:{key}: prod deploys only images pinned by digest (set it from the release)")
        if digest is not None:
            digests[image] = digest

    provider = _cluster_provider(environment)
    opts = pulumi.ResourceOptions(provider=provider)
    namespace = k8s.core.v1.Namespace(
        "namespace",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=NAMESPACES[environment],
            # Pod Security Admission: our pods meet `restricted` (warned and audited); `baseline` is
            # enforced, as the NATS and InfluxDB charts' pods are not all checked against `restricted`.
            labels={
                "pod-security.kubernetes.io/enforce": "baseline",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
                "app.kubernetes.io/part-of": "mbostream",
            },
        ),
        opts=opts,
    )
    in_namespace = pulumi.ResourceOptions(provider=provider, depends_on=[namespace])

    influx_token = config.require_secret("influxToken")
    secrets = k8s.core.v1.Secret(
        "mbostream-secrets",
        metadata=k8s.meta.v1.ObjectMetaArgs(name="mbostream-secrets", namespace=namespace.metadata.name),
        string_data={"control-token": config.require_secret("controlToken"), "influx-token": influx_token},
        opts=in_namespace,
    )
    influx_admin = k8s.core.v1.Secret(
        "mbostream-influx-admin",
        metadata=k8s.meta.v1.ObjectMetaArgs(name="mbostream-influx-admin", namespace=namespace.metadata.name),
        string_data={"admin-password": config.require_secret("influxAdminPassword"), "admin-token": influx_token},
        opts=in_namespace,
    )

    nats = _helm_release("nats", environment, namespace, in_namespace)
    influxdb = _helm_release(
        "influxdb2", environment, namespace, pulumi.ResourceOptions(provider=provider, depends_on=[influx_admin])
    )

    for policy in yaml.safe_load_all((K8S / "helm" / "networkpolicies.yaml").read_text()):
        k8s.networking.v1.NetworkPolicy(
            f"networkpolicy-{policy['metadata']['name']}",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=policy["metadata"]["name"], namespace=namespace.metadata.name),
            spec=policy["spec"],
            opts=in_namespace,
        )

    transformations = [set_ingress_hosts(host), *([pin_images(digests)] if digests else [])]
    k8s.kustomize.Directory(
        "mbostream",
        directory=str(K8S / "overlays" / environment),
        transformations=transformations,
        opts=pulumi.ResourceOptions(provider=provider, depends_on=[secrets, nats, influxdb]),
    )
    return {
        "namespace": namespace.metadata.name,
        "edgeUrl": f"https://{host}",
        "grpcTarget": f"grpc.{host}:443",
        "images": {image: f"{image}@{digest}" for image, digest in digests.items()},
    }
