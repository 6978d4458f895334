"""Every overlay applied to a real API server (tests/k8s_control_plane.py: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok's fake nodes, built by
scripts/install-k8s-control-plane): server-side apply with strict field validation, admission
(Pod Security ``restricted`` enforced on the namespace, ServiceAccount, ...), defaulting, then
every Deployment Available (ReplicaSets, pods scheduled onto the fake nodes, ready by kwok), the
gateways raised to the HPA's ``minReplicas``, prod's zone spread honoured by the real scheduler,
and the HPA, PDBs and NetworkPolicies read back as applied. The API server is also shown to
refuse a manifest broken on purpose (on a temporary copy of k8s/).

What this cannot check: containers (kwok runs none, so probes, images, Secrets and volumes are
never exercised), NetworkPolicy enforcement (no network plugin), the Ingress (no controller), and
the ServiceMonitor/PrometheusRule beyond their group, version and kind: the CRDs installed here
are minimal ones written below (``x-kubernetes-preserve-unknown-fields``), not the Prometheus
operator's.

The TLS component (k8s/components/tls, in every overlay): cert-manager's own CRDs (from its Go
module, fetched by scripts/install-k8s-tools) are installed first, so the API server validates its
Issuers and Certificates against cert-manager's schemas (one broken on purpose is refused). No
cert-manager controller runs here: the test plays its part, writing each Secret a Certificate names
with certificates it makes itself (a CA, and leaves carrying the Certificate's names), and checks
that the Deployments mount exactly those Secrets with the keys they read. For the browser hop it
applies the ClusterIssuer of k8s/cluster and, per overlay, the Certificates cert-manager's
ingress-shim would keep for the Ingresses (test_k8s.ingress_certificates); both are accepted and
read back as applied. Whether the containers then speak TLS to each other is not checked here (no
container runs; tests/test_compose.py runs the same settings against real processes), nor whether
an ACME server issues.
"""

from __future__ import annotations

import datetime
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from k8s_control_plane import ZONES, ControlPlane
from k8s_tools import load_yaml
from test_k8s import K8S, OVERLAYS, TLS_OVERLAYS, broken_copy, build, cert_manager_crds, cluster_objects, ingress_certificates, kubeconform

#: Upper bound for an overlay's Deployments to become Available (seconds).
AVAILABLE_TIMEOUT: Final = 180.0
#: Kinds whose spec must read back as applied (the server may only add defaults).
READ_BACK_KINDS: Final = ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Issuer", "Certificate")


def _crd(kind: str, plural: str) -> dict[str, Any]:
    """A minimal CRD of the Prometheus operator's group: any spec is accepted."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                }}},
            }],
        },
    }  # fmt: skip


CRDS: Final = [_crd("ServiceMonitor", "servicemonitors"), _crd("PrometheusRule", "prometheusrules")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    try:
        plane.start()
        plane.apply_objects(CRDS + cert_manager_crds())
        names = [f"crd/{crd['metadata']['name']}" for crd in CRDS + cert_manager_crds()]
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
        # What the cluster's admin applies once, after cert-manager: the Ingresses' ClusterIssuer.
        plane.apply_objects(cluster_objects())
        yield plane
    finally:
        plane.stop()


def prepare_namespace(cluster: ControlPlane, objects: list[dict[str, Any]]) -> str:
    """What the cluster and Pulumi provide before the overlay: the namespace (Pod Security
    ``restricted`` enforced, stricter than Pulumi's ``baseline``: our pods claim to meet it) and a
    PersistentVolume pre-bound to each PersistentVolumeClaim (the cluster's storage)."""
    (namespace,) = {o["metadata"]["namespace"] for o in objects if "namespace" in o["metadata"]}
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
    volumes = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-{claim['metadata']['name']}"},
            "spec": {
                "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
                "accessModes": claim["spec"]["accessModes"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/var/lib/mbostream-test/{namespace}/{claim['metadata']['name']}"},
                "claimRef": {"namespace": namespace, "name": claim["metadata"]["name"]},
            },
        }
        for claim in objects
        if claim["kind"] == "PersistentVolumeClaim"
    ]
    cluster.apply_objects([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}}, *volumes])
    return namespace


def server_side_apply(cluster: ControlPlane, manifests: str, *extra: str) -> Any:
    return cluster.kubectl("apply", "--server-side", "--field-manager=mbostream-test", *extra, "-f", "-", input=manifests, check=False)


def contains(actual: Any, expected: Any, path: str = "spec") -> list[str]:
    """Where ``actual`` lacks or changes what ``expected`` has (extra keys in ``actual``: defaults;
    an empty list or map reads back as absent)."""
    if expected in ([], {}) and actual is None:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: {actual!r}"]
        return [d for key, value in expected.items() for d in contains(actual.get(key), value, f"{path}.{key}")]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: {actual!r} (applied {expected!r})"]
        return [d for i, (a, e) in enumerate(zip(actual, expected, strict=True)) for d in contains(a, e, f"{path}[{i}]")]
    return [] if actual == expected else [f"{path}: {actual!r} (applied {expected!r})"]


def _not_yet_available(cluster: ControlPlane, namespace: str, objects: list[dict[str, Any]]) -> list[str]:
    """What keeps the namespace's Deployments from being done: each at its wanted replicas (the
    gateway's: the HPA's ``minReplicas``), all updated, ready and available, condition Available."""
    min_replicas = {o["spec"]["scaleTargetRef"]["name"]: o["spec"]["minReplicas"] for o in objects if o["kind"] == "HorizontalPodAutoscaler"}
    pending = []
    for deployment in cluster.get("deployments", "-n", namespace)["items"]:
        name, spec, status = deployment["metadata"]["name"], deployment["spec"], deployment.get("status", {})
        wanted = min_replicas.get(name, spec["replicas"])
        available = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Available")
        counts = [spec["replicas"], *(status.get(k, 0) for k in ("updatedReplicas", "readyReplicas", "availableReplicas"))]
        if counts != [wanted] * 4 or available != "True" or status.get("observedGeneration") != deployment["metadata"]["generation"]:
            pending.append(f"{name}: wanted {wanted}, spec/updated/ready/available {counts}, Available={available}")
    return pending


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def certificate_secrets(namespace: str, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What cert-manager would write for the overlay's Certificates, made here: a ``kubernetes.io/tls``
    Secret per Certificate (tls.crt, tls.key, ca.crt), the CA self-signed, each leaf signed by it
    with the Certificate's DNS names or common name."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mbostream test CA")])

    def sign(subject: x509.Name, key: ec.EllipticCurvePrivateKey, names: list[str], ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )  # fmt: skip
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    ca = sign(ca_name, ca_key, [], True)
    secrets = []
    for certificate in (o for o in objects if o["kind"] == "Certificate"):
        spec = certificate["spec"]
        key = ca_key if spec.get("isCA") else ec.generate_private_key(ec.SECP256R1())
        leaf = ca if spec.get("isCA") else sign(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.get("commonName") or spec["dnsNames"][0])]), key, spec.get("dnsNames", []), False,
        )  # fmt: skip
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        secrets.append({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": spec["secretName"], "namespace": namespace, "annotations": {"cert-manager.io/certificate-name": certificate["metadata"]["name"]}},
            "stringData": {"tls.crt": _pem(leaf), "tls.key": private, "ca.crt": _pem(ca)},
        })  # fmt: skip
    return secrets


def check_tls_secrets_mounted(cluster: ControlPlane, namespace: str, objects: list[dict[str, Any]]) -> None:
    """Every Certificate's Secret is mounted by some Deployment, and every Secret volume of the
    Deployments on the server that names a Certificate's Secret finds it there with the keys it
    projects; every running pod of such a Deployment carries those volumes."""
    by_secret = {o["spec"]["secretName"]: o["metadata"]["name"] for o in objects if o["kind"] == "Certificate"}
    on_server = {s["metadata"]["name"]: s for s in cluster.get("secrets", "-n", namespace)["items"]}
    mounted: set[str] = set()
    pods = cluster.get("pods", "-n", namespace)["items"]
    for deployment in cluster.get("deployments", "-n", namespace)["items"]:
        template = deployment["spec"]["template"]
        secret_volumes = {v["name"]: v["secret"] for v in template["spec"]["volumes"] if v.get("secret", {}).get("secretName") in by_secret}
        for name, secret in secret_volumes.items():
            stored = on_server.get(secret["secretName"])
            assert stored, f"{deployment['metadata']['name']}: volume {name} names {secret['secretName']}, not in the namespace"
            wanted = [i["key"] for i in secret.get("items", [])] or ["tls.crt", "tls.key", "ca.crt"]
            assert set(wanted) <= set(stored["data"]), (deployment["metadata"]["name"], name, sorted(stored["data"]))
            mounted.add(secret["secretName"])
        selector = deployment["spec"]["selector"]["matchLabels"]
        own = [p for p in pods if selector.items() <= p["metadata"]["labels"].items() and p["metadata"].get("deletionTimestamp") is None]
        for pod in own:
            volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in pod["spec"]["volumes"]}
            assert all(volumes.get(n) == s["secretName"] for n, s in secret_volumes.items()), (pod["metadata"]["name"], volumes)
    # The CA's Secret is the Issuer's, read by cert-manager only; nats-tls is mounted by the nats
    # chart's pods (a Helm release, not in the overlay); edge-ingress-client-tls is read by
    # ingress-nginx (the web Ingress's proxy-ssl-secret); influxdb-tls's CA by the store.
    assert mounted == set(by_secret) - {"mbostream-ca", "nats-tls", "edge-ingress-client-tls"}, (sorted(mounted), sorted(by_secret))


# func_only: the timeouts bound each test's own work, not the cluster fixture's set-up, which first
# waits for the control plane's build (scripts/test runs it in the background while the suite runs,
# and these tests last) and is bounded by its own timeouts (the build 3600 s, the start 180 s).
@pytest.mark.timeout(600, func_only=True)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_applies_and_every_deployment_becomes_available(cluster: ControlPlane, overlay: str) -> None:
    manifests = build(K8S / "overlays" / overlay)
    objects = load_yaml(manifests)
    namespace = prepare_namespace(cluster, objects)
    tls = overlay in TLS_OVERLAYS
    if tls:
        # cert-manager's part, played by the test: the Secrets the Certificates name.
        cluster.apply_objects(certificate_secrets(namespace, objects))
    applied = server_side_apply(cluster, manifests)
    assert applied.returncode == 0, f"server-side apply of {overlay} refused:\n{applied.stderr}"
    # kubectl prints Pod Security's verdict on each pod template as a warning.
    assert "PodSecurity" not in applied.stderr, applied.stderr
    assert len(applied.stdout.splitlines()) == len(objects), applied.stdout

    # Every object reads back; the HPA, PDBs and NetworkPolicies as applied (plus defaults).
    on_server = {f"{o['kind']}/{o['metadata']['name']}": o for o in json.loads(cluster.kubectl("get", "-f", "-", "-o", "json", input=manifests).stdout)["items"]}
    assert sorted(on_server) == sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    read_back = [o for o in objects if o["kind"] in READ_BACK_KINDS]
    kinds = Counter(o["kind"] for o in read_back)
    assert (kinds["HorizontalPodAutoscaler"], kinds["PodDisruptionBudget"]) == (1, 2) and kinds["NetworkPolicy"] >= 5, kinds
    # Issuers and Certificates exist only where the TLS component is; the CRDs validated them.
    assert (kinds["Issuer"], kinds["Certificate"]) == ((2, 7) if tls else (0, 0)), kinds
    for obj in read_back:
        key = f"{obj['kind']}/{obj['metadata']['name']}"
        assert not contains(on_server[key]["spec"], obj["spec"]), f"{key} reads back changed: {contains(on_server[key]['spec'], obj['spec'])}"
    if tls:
        # The browser hop: the Certificates cert-manager's ingress-shim keeps for the Ingresses,
        # issued by the ClusterIssuer applied with the CRDs, are accepted as the shim writes them.
        shim = ingress_certificates(objects)
        cluster.apply_objects(shim)
        issuer = cluster.get("clusterissuer", "letsencrypt")
        assert not contains(issuer["spec"], next(o["spec"] for o in cluster_objects() if o["kind"] == "ClusterIssuer"))
        for certificate in shim:
            stored = cluster.get("certificate", "-n", namespace, certificate["metadata"]["name"])
            assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
            assert not contains(stored["spec"], certificate["spec"]), contains(stored["spec"], certificate["spec"])

    deadline = time.monotonic() + AVAILABLE_TIMEOUT
    while pending := _not_yet_available(cluster, namespace, objects):
        if time.monotonic() > deadline:
            events = cluster.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout
            pytest.fail(f"{overlay}: Deployments not Available after {AVAILABLE_TIMEOUT:.0f} s: {pending}\n{events[-4000:]}\n{cluster.logs()}")
        time.sleep(1)
    deployments = {d["metadata"]["name"] for d in cluster.get("deployments", "-n", namespace)["items"]}
    assert deployments == {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    assert {"replayer", "gateway", "store", "edge", "otel-collector"} <= deployments
    claims = cluster.get("persistentvolumeclaims", "-n", namespace)["items"]
    assert claims and all(c["status"]["phase"] == "Bound" for c in claims), [c["status"] for c in claims]
    if tls:
        check_tls_secrets_mounted(cluster, namespace, objects)

    if overlay == "prod":
        # The real scheduler placed gateways and edges across the zones within maxSkew 1.
        pods = cluster.get("pods", "-n", namespace)["items"]
        nodes = {n["metadata"]["name"]: n["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in cluster.get("nodes")["items"]}
        for component, at_least in (("gateway", 3), ("edge", 2)):
            zones = Counter(nodes[p["spec"]["nodeName"]] for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == component)
            assert sum(zones.values()) >= at_least and len(zones) == min(at_least, len(ZONES)), (component, zones)
            assert max(zones.values()) - min(zones.values()) <= 1, (component, zones)


BROKEN: Final = {
    # Strict field validation (kubectl's default) on the server: an unknown field is refused.
    "misspelt-field": ("base/gateway.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true",
                       '.spec.template.spec.containers[name="gateway"].securityContext.readOnlyRootFileSystem: field not declared in schema'),
    # Valid against the schema (kubeconform accepts it), refused by the API server's validation.
    "pdb-min-and-max": ("base/gateway.yaml", "  name: gateway\nspec:\n  maxUnavailable: 1\n",
                        "  name: gateway\nspec:\n  maxUnavailable: 1\n  minAvailable: 1\n",
                        "minAvailable and maxUnavailable cannot be both set"),
}  # fmt: skip


@pytest.mark.timeout(300, func_only=True)
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_api_server_refuses_a_manifest_broken_on_purpose(cluster: ControlPlane, tmp_path: Path, case: str) -> None:
    file, old, new, error = BROKEN[case]
    intact = build(K8S / "overlays" / "dev")
    prepare_namespace(cluster, load_yaml(intact))
    control = server_side_apply(cluster, intact, "--dry-run=server")
    assert control.returncode == 0, f"the intact overlay is refused:\n{control.stderr}"

    broken = build(broken_copy(tmp_path, file, old, new) / "overlays" / "dev")
    if case == "pdb-min-and-max":
        assert kubeconform(broken).returncode == 0, "kubeconform refuses it too: the case no longer shows what only the server checks"
    result = server_side_apply(cluster, broken, "--dry-run=server")
    assert result.returncode != 0, result.stdout
    assert error in result.stderr, result.stderr


#: A Certificate broken on purpose -> what the API server says, validating it by cert-manager's CRD.
BROKEN_CERTIFICATES: Final = {
    "unknown-field": ('dnsNames: ["nats"]', 'dnsName: ["nats"]', "(mbostream/nats; cert-manager.io/v1, Kind=Certificate): .spec.dnsName: field not declared in schema"),
    "unsupported-algorithm": ("algorithm: ECDSA", "algorithm: DSA", 'Unsupported value: "DSA"'),
}  # fmt: skip


@pytest.mark.timeout(300, func_only=True)
@pytest.mark.parametrize("case", sorted(BROKEN_CERTIFICATES))
def test_api_server_refuses_a_certificate_broken_on_purpose(cluster: ControlPlane, tmp_path: Path, case: str) -> None:
    old, new, error = BROKEN_CERTIFICATES[case]
    overlay = "prod"  # the messages name its namespace, mbostream
    intact = build(K8S / "overlays" / overlay)
    prepare_namespace(cluster, load_yaml(intact))
    control = server_side_apply(cluster, intact, "--dry-run=server")
    assert control.returncode == 0, f"the intact overlay is refused:\n{control.stderr}"
    broken = build(broken_copy(tmp_path, "components/tls/certificates.yaml", old, new) / "overlays" / overlay)
    result = server_side_apply(cluster, broken, "--dry-run=server")
    assert result.returncode != 0, result.stdout
    assert error in result.stderr, result.stderr
