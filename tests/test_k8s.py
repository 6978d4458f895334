"""The Kubernetes manifests (k8s/), checked offline by real tools: ``kustomize build`` of every
overlay, ``kubeconform -strict`` against the Kubernetes 1.37 schemas of ``kubernetes-validate``,
``kube-score`` with no critical finding, and the overlays differing only in the fields that
k8s/README.md's table names. Each checker is also shown to fail on a manifest broken on purpose.
The tools come from scripts/install-k8s-tools (cached by version). No cluster is involved: what
only an API server checks (admission, defaulting, a Deployment becoming Available) is not checked
here (k8s/README.md says so).

The TLS component (k8s/components/tls, enabled by every overlay): its Issuers and Certificates are
checked by kubeconform against schemas converted from cert-manager's own CRDs (from its Go module,
fetched by scripts/install-k8s-tools); every TLS file a role reads comes from a Secret a Certificate
writes; the edge starts Envoy with the image's envoy-k8s-tls.yaml, which the test renders by the
Dockerfile's own command with a built UI: its routes serve the UI's files, its TLS files are the
component's mounts, Envoy itself accepts it and, run in front of a real gRPC server over TLS, serves
the UI and gRPC over TLS only and follows the server's health in the edge's readiness command;
the web Ingress verifies the edge by the component's CA and the name of the edge's Certificate
(the gRPC Ingress: GRPCS, not verified by ingress-nginx); the NATS and InfluxDB Helm values (not rendered: no chart here) name the Secrets of its Certificates. The browser
hop: each Ingress serves its hosts over TLS with a Secret that cert-manager's ingress-shim makes; the
Certificates the shim would keep and the ClusterIssuer they name (k8s/cluster) are checked against
cert-manager's schemas too.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import ssl
import subprocess
import time
from concurrent import futures
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from k8s_edge import DEFAULT_CONFIG, K8S_TLS_CONFIG, edge_image_command, edge_image_copies, release_edge_build_args, render_k8s_tls_config
from k8s_tools import REPO, k8s_tools, load_yaml
from server_harness import free_port

K8S = REPO / "k8s"
OVERLAYS = ("dev", "staging", "prod")
#: Kinds whose schemas are CRDs, not in kubernetes-validate: kubeconform skips them (README says so).
CRD_KINDS = ("ServiceMonitor", "PrometheusRule")
#: The overlays that enable the TLS component (k8s/components/tls): all of them (k8s/README.md).
TLS_OVERLAYS = ("dev", "staging", "prod")
TLS_COMPONENT = K8S / "components" / "tls"
#: Cluster-wide objects applied once per cluster, not by an overlay (the Ingresses' ClusterIssuer).
CLUSTER = K8S / "cluster"
HELM = K8S / "helm"


def build(overlay: Path) -> str:
    result = subprocess.run([k8s_tools()["kustomize"], "build", str(overlay)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kustomize build {overlay} failed:\n{result.stderr}"
    return result.stdout


def cert_manager_crds() -> list[dict[str, Any]]:
    """cert-manager's CustomResourceDefinitions, as its release ships them (deploy/crds/*.yaml)."""
    folder = Path(k8s_tools()["cert-manager-crds"])
    return [doc for path in sorted(folder.glob("*.yaml")) for doc in load_yaml(path.read_text())]


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as kubeconform reads it with -strict: every object that lists
    its properties and does not keep unknown fields refuses any other."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def cert_manager_schemas() -> str:
    """A folder of kubeconform schemas (``<kind>-<group's first label>-<version>.json``) converted
    from cert-manager's CRDs, beside them in the tool cache."""
    folder = Path(k8s_tools()["cert-manager-crds"]).parent / "kubeconform-strict"
    folder.mkdir(exist_ok=True)
    for crd in cert_manager_crds():
        spec = crd["spec"]
        for version in spec["versions"]:
            name = f"{spec['names']['kind'].lower()}-{spec['group'].split('.')[0]}-{version['name']}.json"
            (folder / name).write_text(json.dumps(_strict(version["schema"]["openAPIV3Schema"])))
    return str(folder)


def kubeconform(manifests: str) -> subprocess.CompletedProcess[str]:
    t = k8s_tools()
    location = t["schemas"] + "/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"
    crd_location = cert_manager_schemas() + "/{{ .ResourceKind }}{{ .KindSuffix }}.json"
    return subprocess.run(
        [t["kubeconform"], "-strict", "-summary", "-output", "text", "-kubernetes-version",
         t["schema-kubernetes-version"], "-schema-location", location, "-schema-location", crd_location,
         "-skip", ",".join(CRD_KINDS), "-"],
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


def test_kubeconform_checks_the_certificates_against_cert_managers_schema(tmp_path: Path) -> None:
    manifests = build(K8S / "overlays" / "prod")
    assert {"Certificate", "Issuer"} <= set(re.findall(r"^kind: (\w+)$", manifests, re.M))
    copy = broken_copy(tmp_path, "components/tls/certificates.yaml", 'dnsNames: ["nats"]', 'dnsName: ["nats"]')
    result = kubeconform(build(copy / "overlays" / "prod"))
    assert result.returncode != 0
    assert re.search(r"Certificate nats is invalid: .*dnsName", result.stdout), result.stdout
    copy = broken_copy(tmp_path / "enum", "components/tls/certificates.yaml", "algorithm: ECDSA", "algorithm: DSA")
    result = kubeconform(build(copy / "overlays" / "prod"))
    assert result.returncode != 0
    assert re.search(r"Certificate mbostream-ca is invalid: .*DSA", result.stdout), result.stdout


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


# --- the TLS component -----------------------------------------------------------------------------

_TLS_FILE_SETTINGS = re.compile(r"^(MBOSTREAM_(NATS_)?TLS_\w+_FILE|INFLUX_CA_FILE)$")


def test_only_the_tls_overlays_enable_the_component() -> None:
    for overlay in OVERLAYS:
        kinds = re.findall(r"^kind: (\w+)$", build(K8S / "overlays" / overlay), re.M)
        assert ("Certificate" in kinds) == (overlay in TLS_OVERLAYS), overlay


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_every_tls_file_a_role_reads_comes_from_a_certificates_secret(overlay: str) -> None:
    """Each TLS setting names a file in a mounted volume holding that key of a Secret a Certificate
    writes (or the chain file the init container writes from one); every hop the component covers
    is configured: gRPC served over TLS by the replayer and the gateways, NATS over mTLS by every
    role, InfluxDB over HTTPS with the CA, the edge's Envoy config with upstream TLS."""
    objects = load_yaml(build(K8S / "overlays" / overlay))
    certificates = {o["spec"]["secretName"] for o in objects if o["kind"] == "Certificate"}
    settings: dict[str, dict[str, str]] = {}
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        chain_writers = {m["name"] for c in spec.get("initContainers", []) for m in c["volumeMounts"] if "emptyDir" in volumes[m["name"]]}
        for container in spec["containers"]:
            env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
            settings[container["name"]] = env
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
            for name, path in env.items():
                if not _TLS_FILE_SETTINGS.match(name):
                    continue
                folder, key = path.rsplit("/", 1)
                assert folder in mounts, f"{container['name']}: {name}={path} is in no mounted volume"
                volume = mounts[folder]
                if "emptyDir" in volume:
                    assert volume["name"] in chain_writers and key == "chain.crt", f"{container['name']}: {name}={path}"
                    continue
                secret = volume["secret"]
                assert secret["secretName"] in certificates, f"{container['name']}: {name} reads {secret['secretName']}, which no Certificate writes"
                keys = [i["path"] for i in secret.get("items", [])] or ["tls.crt", "tls.key", "ca.crt"]
                assert key in keys, f"{container['name']}: {name}={path}: {key} not in {keys}"
    bus = {"MBOSTREAM_NATS_TLS_CA_FILE", "MBOSTREAM_NATS_TLS_CERT_FILE", "MBOSTREAM_NATS_TLS_KEY_FILE"}
    for role in ("replayer", "gateway", "store"):
        assert bus <= set(settings[role]), role
    for role in ("replayer", "gateway"):
        assert {"MBOSTREAM_TLS_CERT_FILE", "MBOSTREAM_TLS_KEY_FILE"} <= set(settings[role]), role
    assert settings["store"]["INFLUX_URL"].startswith("https://") and "INFLUX_CA_FILE" in settings["store"]


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_tls_servers_are_probed_by_the_tls_aware_health_check(overlay: str) -> None:
    """The kubelet's grpc probes speak no TLS: the replayer's and gateways' startup and readiness
    probes run the image's health check, which takes TLS from the server's settings, and liveness
    is a TCP check; a plaintext server keeps its probes."""
    for deployment in (o for o in load_yaml(build(K8S / "overlays" / overlay)) if o["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            tls = any(e["name"] == "MBOSTREAM_TLS_CERT_FILE" for e in container.get("env", []))
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe not in container:
                    continue
                kind = {"grpc", "exec", "tcpSocket", "httpGet"} & set(container[probe])
                if container["name"] == "edge":
                    # Envoy serves HTTPS only: readiness asks its admin for a healthy gateway.
                    expected = {"readinessProbe": {"exec"}, "livenessProbe": {"tcpSocket"}}[probe]
                    assert kind == expected, f"edge {probe}: {kind}"
                    if probe == "readinessProbe":
                        assert container[probe]["exec"]["command"][:2] == ["bash", "-c"]
                        assert container[probe]["exec"]["command"][2] == EDGE_READINESS
                elif tls and probe == "livenessProbe":
                    assert kind == {"tcpSocket"}, f"{container['name']} {probe}: {kind}"
                elif tls:
                    assert kind == {"exec"}, f"{container['name']} {probe}: {kind}"
                    assert container[probe]["exec"]["command"] == ["python3", "/usr/local/lib/mbostream/healthcheck.py"]
                    assert container[probe]["timeoutSeconds"] >= 3
                else:
                    assert "exec" not in kind, f"{container['name']} {probe}: {kind}"


#: The edge's readiness with the component (its listener is HTTPS, which the kubelet's grpc probe
#: cannot speak): a host of the gateways' cluster that passes Envoy's own gRPC health checks.
EDGE_READINESS = (
    "exec 3<>/dev/tcp/127.0.0.1/9901 && "
    "printf 'GET /clusters HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n' >&3 && "
    "grep -q '^mbostream_grpc::.*::health_flags::healthy' <&3"
)
#: Where the component's Envoy config reads the edge's certificate and key (the edge Secret's keys)
#: and the gateways' CA (the gRPC Secret's ca.crt).
EDGE_CERT_FILE = "/etc/mbostream/edge-tls/tls.crt"
EDGE_KEY_FILE = "/etc/mbostream/edge-tls/tls.key"
UPSTREAM_CA_FILE = "/etc/mbostream/upstream-tls/ca.crt"
#: A built UI as web/ builds it: index.html and a content-hashed asset under assets/.
FAKE_UI = {"index.html": "<!doctype html><title>mbostream test UI</title>\n", "assets/index-3f2a9c1b.js": "console.log('test UI');\n"}


@pytest.fixture(scope="module")
def k8s_tls_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The edge image's /etc/envoy/envoy-k8s-tls.yaml, rendered by the Dockerfile's own command
    with release.yml's build arguments and :data:`FAKE_UI` as the built UI: (its text, the UI's folder)."""
    folder = tmp_path_factory.mktemp("edge-config")
    static = folder / "web"
    for relative, text in FAKE_UI.items():
        (static / relative).parent.mkdir(parents=True, exist_ok=True)
        (static / relative).write_text(text)
    return render_k8s_tls_config(folder / "envoy-k8s-tls.yaml", static, release_edge_build_args()), static


def _edge_secret_files(objects: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """The files the edge container reads from Secrets: {path: (Secret, key)}."""
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "edge"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "edge"]
    files = {}
    for mount in container["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret:
            for item in secret["items"]:
                files[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return files


def _tls_files(node: Any) -> set[str]:
    """Every file an Envoy config's TLS contexts read (CA, certificate chain, private key)."""
    if isinstance(node, list):
        return {f for item in node for f in _tls_files(item)}
    if not isinstance(node, dict):
        return set()
    found = {node[k]["filename"] for k in ("trusted_ca", "certificate_chain", "private_key") if isinstance(node.get(k), dict)}
    return found | {f for value in node.values() for f in _tls_files(value)}


def _openssl_leaf(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A leaf for ``name`` signed by the test's CA in ``tmp_path`` (ca.crt, made by the first call):
    (leaf certificate, leaf key)."""
    ca_key, ca = tmp_path / "ca.key", tmp_path / "ca.crt"
    key, csr, leaf = tmp_path / f"{name}.key", tmp_path / f"{name}.csr", tmp_path / f"{name}.crt"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    make_ca = [] if ca.exists() else [["req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=test CA", "-days", "1"]]
    for command in (
        *make_ca,
        ["req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"],
        ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(leaf),
         "-days", "1", "-extfile", "/dev/stdin"],
    ):  # fmt: skip
        subprocess.run(["openssl", *command], check=True, capture_output=True, timeout=60, input=f"subjectAltName=DNS:{name}\n".encode())
    return leaf, key


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_every_overlays_edge_starts_envoy_with_the_images_tls_config(overlay: str) -> None:
    """The edge container runs the image's entrypoint with the image's CMD, its config swapped for
    /etc/envoy/envoy-k8s-tls.yaml, a file the edge stage copies from edge-config's render; no volume
    is mounted over it."""
    (deployment,) = [o for o in load_yaml(build(K8S / "overlays" / overlay)) if o["kind"] == "Deployment" and o["metadata"]["name"] == "edge"]
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "edge"]
    entrypoint, *cmd = edge_image_command()
    assert entrypoint == "envoy" and "command" not in container, container.get("command")
    assert cmd.count(DEFAULT_CONFIG) == 1
    assert container["args"] == [K8S_TLS_CONFIG if arg == DEFAULT_CONFIG else arg for arg in cmd]
    assert K8S_TLS_CONFIG in edge_image_copies()
    hidden = [m["mountPath"] for m in container["volumeMounts"] if K8S_TLS_CONFIG.startswith(m["mountPath"].rstrip("/") + "/")]
    assert hidden == [], f"{overlay}: mounted over {K8S_TLS_CONFIG}"


def test_the_images_tls_config_serves_the_ui_reads_the_components_mounts_and_envoy_accepts_it(k8s_tls_config: tuple[str, Path], tmp_path: Path) -> None:
    """The Dockerfile's render of envoy-k8s-tls.yaml (release.yml's build arguments, a built UI):
    the UI's files are routes that serve them (not the 'not built' 503); every TLS file it reads is
    one the component mounts into the edge in every overlay, and all of them are read; the gateways
    are validated by their Certificate's name; the listener serves TLS only; Envoy loads it with a
    test CA and edge certificate at those paths and refuses it when the CA or the key is missing."""
    text, static = k8s_tls_config
    config = load_yaml(text)[0]
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (manager,) = [f["typed_config"] for f in chain["filters"] if f["name"] == "envoy.filters.network.http_connection_manager"]
    routes = [r for host in manager["route_config"]["virtual_hosts"] for r in host["routes"]]
    served = {r["match"]["path"]: r["direct_response"]["body"].get("filename") for r in routes if "direct_response" in r and "path" in r["match"]}
    expected = {"/": str(static / "index.html"), **{f"/{relative}": str(static / relative) for relative in FAKE_UI}}
    assert {path: served.get(path) for path in expected} == expected
    assert not [r for r in routes if r.get("direct_response", {}).get("status") == 503], "the UI route is the 'not built' 503"
    # The listener serves TLS only, with the edge Secret's files; the gateways are validated by the CA.
    assert chain["transport_socket"]["typed_config"]["@type"].endswith("DownstreamTlsContext")
    (gateways,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "mbostream_grpc"]
    upstream = gateways["transport_socket"]["typed_config"]
    name = release_edge_build_args()["EDGE_UPSTREAM_HOST"]
    assert upstream["sni"] == name and upstream["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": name}}]
    # StreamBook goes to the gateways' native book port, with the same TLS, found by DNS.
    (books,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "mbostream_books"]
    assert books["transport_socket"] == gateways["transport_socket"] and books["type"] == "STRICT_DNS"
    book_address = books["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (book_address["address"], book_address["port_value"]) == (name, int(release_edge_build_args()["EDGE_BOOK_PORT"]))
    assert _tls_files(config) == {UPSTREAM_CA_FILE, EDGE_CERT_FILE, EDGE_KEY_FILE}
    for overlay in TLS_OVERLAYS:
        objects = load_yaml(build(K8S / "overlays" / overlay))
        mounted = _edge_secret_files(objects)
        assert set(mounted) == _tls_files(config), f"{overlay}: the edge mounts {sorted(mounted)}"
        secret_names = {c["spec"]["secretName"]: c["spec"].get("dnsNames", []) for c in objects if c["kind"] == "Certificate"}
        assert mounted[UPSTREAM_CA_FILE] == ("mbostream-grpc-tls", "ca.crt") and name in secret_names["mbostream-grpc-tls"]
    # Envoy loads it (with a CA and an edge certificate of the test's own at the mounted paths).
    leaf, key = _openssl_leaf(tmp_path, "edge")
    files = {UPSTREAM_CA_FILE: tmp_path / "ca.crt", EDGE_CERT_FILE: leaf, EDGE_KEY_FILE: key}
    envoy = REPO / ".venv" / "bin" / "envoy"

    def validate(missing: str = "") -> subprocess.CompletedProcess[str]:
        moved = text
        for path, local in files.items():
            moved = moved.replace(path, str(tmp_path / "missing") if path == missing else str(local))
        config = tmp_path / "envoy-test.yaml"
        config.write_text(moved)
        return subprocess.run([str(envoy), "--mode", "validate", "-c", str(config)], capture_output=True, text=True, timeout=120)

    result = validate()
    assert result.returncode == 0 and "OK" in result.stdout + result.stderr, result.stdout + result.stderr
    # and refuses it when the CA or the listener's key is not there, so the check above read them.
    for missing in (UPSTREAM_CA_FILE, EDGE_KEY_FILE):
        result = validate(missing)
        assert result.returncode != 0, (missing, result.stdout + result.stderr)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateways_serve_the_book_port_the_edge_routes_to(overlay: str) -> None:
    """release.yml builds the edge with EDGE_BOOK_PORT; in every overlay the gateways serve
    StreamBook there (MBOSTREAM_BOOK_PORT, a named container port, the headless Service's port) and
    the NetworkPolicies let the edge, and only the edge, reach it."""
    port = int(release_edge_build_args()["EDGE_BOOK_PORT"])
    objects = load_yaml(build(K8S / "overlays" / overlay))
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "gateway"]
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"]
    assert {"name": "MBOSTREAM_BOOK_PORT", "value": str(port)} in container.get("env", [])
    assert {"name": "books", "containerPort": port} in container["ports"]
    (service,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "gateway"]
    assert any(p["port"] == port and p["targetPort"] == "books" for p in service["spec"]["ports"]), service["spec"]["ports"]
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}

    def ports(rules: list[dict[str, Any]], peer: str) -> set[int]:
        return {
            p["port"]
            for rule in rules
            for selector in rule.get("to", rule.get("from", []))
            if selector.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == peer
            for p in rule.get("ports", [])
        }

    assert port in ports(policies["edge"]["egress"], "gateway")
    assert port in ports(policies["gateway"]["ingress"], "edge")
    others = [rule for rule in policies["gateway"]["ingress"] if any(p["port"] == port for p in rule.get("ports", []))]
    assert all(ports([rule], "edge") for rule in others), "the book port is open to more than the edge"


def _until(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return False


def _https_get(port: int, path: str, ca: Path, name: str) -> tuple[int, bytes]:
    """GET ``path`` over HTTPS from 127.0.0.1:``port``, verifying ``name`` by ``ca``: (status, body)."""
    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=name)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_components_edge_serves_tls_and_its_readiness_follows_the_gateways_health(k8s_tls_config: tuple[str, Path], tmp_path: Path) -> None:
    """The image's envoy-k8s-tls.yaml (as the Dockerfile renders it) run by a real Envoy (paths
    and ports moved to the test's own) in front of a real gRPC server over TLS standing in for a
    gateway (certificate for `gateway` of the test's CA): a client that verifies `edge` by that CA,
    as ingress-nginx does, gets the UI's files and the gateway's health through the HTTPS listener;
    a plaintext client is refused; the edge's readiness command succeeds while the gateway is
    SERVING and fails once it is NOT_SERVING."""
    text, _ = k8s_tls_config
    edge_cert, edge_key = _openssl_leaf(tmp_path, "edge")
    gateway_cert, gateway_key = _openssl_leaf(tmp_path, "gateway")
    ca = (tmp_path / "ca.crt").read_bytes()
    status = health.HealthServicer()
    status.set("", health_pb2.HealthCheckResponse.SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    gateway_port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(gateway_key.read_bytes(), gateway_cert.read_bytes())]))
    server.start()
    listen_port, admin_port = free_port(), free_port()
    # The upstream CA is read by both gateway clusters (the API's and the book port's).
    text = text.replace(UPSTREAM_CA_FILE, str(tmp_path / "ca.crt"))
    for old, new in (
        (EDGE_CERT_FILE, str(edge_cert)), (EDGE_KEY_FILE, str(edge_key)),
        ("address: gateway, port_value: 50051", f"address: 127.0.0.1, port_value: {gateway_port}"),
        ('{"address": "gateway", "port_value": 50052}', f'{{"address": "127.0.0.1", "port_value": {free_port()}}}'),
        ("address: 0.0.0.0, port_value: 8080", f"address: 127.0.0.1, port_value: {listen_port}"),
        ("address: 127.0.0.1, port_value: 9901", f"address: 127.0.0.1, port_value: {admin_port}"),
    ):  # fmt: skip
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    config = tmp_path / "envoy-run.yaml"
    config.write_text(text)
    readiness = ["bash", "-c", EDGE_READINESS.replace("/127.0.0.1/9901", f"/127.0.0.1/{admin_port}")]

    def ready() -> bool:
        return subprocess.run(readiness, capture_output=True, timeout=10).returncode == 0

    envoy = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "envoy"), "-c", str(config), "--disable-hot-restart", "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "envoy.log", "wb"),
    )  # fmt: skip
    try:
        assert _until(ready, 30), "the readiness command never succeeded:\n" + (tmp_path / "envoy.log").read_text()[-3000:]
        for path, body in (("/", FAKE_UI["index.html"]), *((f"/{relative}", content) for relative, content in FAKE_UI.items())):
            assert _https_get(listen_port, path, tmp_path / "ca.crt", "edge") == (200, body.encode()), path
        verified = grpc.ssl_channel_credentials(root_certificates=ca)
        with grpc.secure_channel(f"127.0.0.1:{listen_port}", verified, options=[("grpc.ssl_target_name_override", "edge")]) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(f"127.0.0.1:{listen_port}") as channel, pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        status.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert _until(lambda: not ready(), 30), "the readiness command still succeeds with the gateway NOT_SERVING"
    finally:
        envoy.terminate()
        envoy.wait(timeout=30)
        server.stop(grace=None)


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_ingress_nginx_reaches_the_edge_over_tls_verified_by_the_components_ca(overlay: str, k8s_tls_config: tuple[str, Path]) -> None:
    """ingress-nginx -> edge: the web Ingress proxies HTTPS and verifies the edge by the ca.crt of a
    Secret a Certificate of the component writes (issued by the CA that issues the edge's), in the
    Ingress's namespace as namespace/name, and by a name the edge's Certificate carries, which is
    the Service every Ingress points at; that Certificate's Secret is what the edge's Envoy serves
    (its listener's files, on the port behind that Service). The gRPC Ingress proxies GRPCS."""
    objects = load_yaml(build(K8S / "overlays" / overlay))
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for o in objects:
        # A generated ConfigMap's name ends in its content hash.
        name = re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"]) if o["kind"] == "ConfigMap" else o["metadata"]["name"]
        by_kind.setdefault(o["kind"], {})[name] = o
    ingresses, certificates = by_kind["Ingress"], list(by_kind["Certificate"].values())
    web = ingresses["edge-web"]["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert web[prefix + "backend-protocol"] == "HTTPS" and web[prefix + "proxy-ssl-verify"] == "on"
    assert ingresses["edge-grpc"]["metadata"]["annotations"][prefix + "backend-protocol"] == "GRPCS"
    namespace, secret = web[prefix + "proxy-ssl-secret"].split("/")
    assert namespace == ingresses["edge-web"]["metadata"]["namespace"], "ingress-nginx refuses a Secret of another namespace"
    client = [c for c in certificates if c["spec"]["secretName"] == secret]
    assert len(client) == 1, f"proxy-ssl-secret {secret}: no Certificate of the component writes it"
    name = web[prefix + "proxy-ssl-name"]
    edge = [c for c in certificates if name in c["spec"].get("dnsNames", [])]
    assert len(edge) == 1, f"proxy-ssl-name {name}: no Certificate carries it"
    # ca.crt of the client Secret is the edge's CA: both issued by the one CA Issuer.
    assert client[0]["spec"]["issuerRef"] == edge[0]["spec"]["issuerRef"] == {"name": "mbostream-ca", "kind": "Issuer"}
    for ingress in ingresses.values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == name, f"{ingress['metadata']['name']} points at another Service"
    # The edge serves exactly that Certificate's Secret at the files its Envoy config names.
    served = _edge_secret_files(objects)
    container = next(c for c in by_kind["Deployment"]["edge"]["spec"]["template"]["spec"]["containers"] if c["name"] == "edge")
    assert served[EDGE_CERT_FILE] == (edge[0]["spec"]["secretName"], "tls.crt")
    assert served[EDGE_KEY_FILE] == (edge[0]["spec"]["secretName"], "tls.key")
    envoy_config, _ = k8s_tls_config
    assert EDGE_CERT_FILE in envoy_config and EDGE_KEY_FILE in envoy_config
    # The Service port the Ingresses name reaches the container port Envoy's TLS listener is on.
    service_port = next(p for p in by_kind["Service"][name]["spec"]["ports"] if p["name"] == "http")
    container_port = next(p for p in container["ports"] if p["name"] == service_port["targetPort"])
    assert f"port_value: {container_port['containerPort']} }}" in envoy_config.split("filter_chains:")[0]
    assert service_port["appProtocol"] == "https"


# --- the browser hop: HTTPS at the Ingress, the Secret made by cert-manager ---------------------

#: The Ingress annotations that cert-manager's ingress-shim (v1.21.2, pkg/controller/certificate-shim)
#: turns into fields of the Certificate it keeps, as ``ingress_certificates`` reproduces them. Any
#: other ``cert-manager.io/`` annotation fails the test, so none is left out of the check silently.
_SHIM_ANNOTATIONS = {
    "cert-manager.io/cluster-issuer": ("issuerRef", "name"),
    "cert-manager.io/private-key-algorithm": ("privateKey", "algorithm"),
    "cert-manager.io/private-key-rotation-policy": ("privateKey", "rotationPolicy"),
}


def cluster_objects(k8s: Path = K8S) -> list[dict[str, Any]]:
    """The cluster-wide objects of ``k8s/cluster`` (applied once per cluster)."""
    return [doc for path in sorted((k8s / "cluster").glob("*.yaml")) for doc in load_yaml(path.read_text())]


def ingress_certificates(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Certificates cert-manager's ingress-shim keeps for the Ingresses among ``objects``, as its
    ``buildCertificates`` makes them: one per ``spec.tls`` entry, named after its Secret, for its
    hosts, issued by the ``cert-manager.io/cluster-issuer`` (kind ClusterIssuer, group
    cert-manager.io), with the default usages; the private-key annotations set ``spec.privateKey``."""
    certificates = []
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        annotations = ingress["metadata"].get("annotations", {})
        unknown = {a for a in annotations if a.startswith("cert-manager.io/")} - set(_SHIM_ANNOTATIONS)
        assert not unknown, f"Ingress {ingress['metadata']['name']}: {unknown}: teach ingress_certificates what the shim does with them"
        for tls in ingress["spec"].get("tls", []):
            spec: dict[str, Any] = {
                "secretName": tls["secretName"],
                "dnsNames": tls["hosts"],
                "issuerRef": {"kind": "ClusterIssuer", "group": "cert-manager.io"},
                "usages": ["digital signature", "key encipherment"],
            }
            for annotation, (field, key) in _SHIM_ANNOTATIONS.items():
                if annotation in annotations:
                    spec.setdefault(field, {})[key] = annotations[annotation]
            certificates.append({
                "apiVersion": "cert-manager.io/v1",
                "kind": "Certificate",
                "metadata": {"name": tls["secretName"], "namespace": ingress["metadata"]["namespace"]},
                "spec": spec,
            })  # fmt: skip
    return certificates


def _as_stream(objects: list[dict[str, Any]]) -> str:
    return "".join(f"---\n{json.dumps(o)}\n" for o in objects)


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_the_browser_hop_is_https_with_a_secret_cert_manager_makes(overlay: str) -> None:
    """Each Ingress serves every host of its rules over TLS (plain HTTP redirected), with a Secret
    that cert-manager's ingress-shim writes from a ClusterIssuer of k8s/cluster; the Certificates
    the shim keeps for it and that ClusterIssuer are valid against cert-manager's schemas."""
    objects = load_yaml(build(K8S / "overlays" / overlay))
    ingresses = [o for o in objects if o["kind"] == "Ingress"]
    assert {i["metadata"]["name"] for i in ingresses} == {"edge-web", "edge-grpc"}
    certificates = {c["metadata"]["name"]: c for c in ingress_certificates(objects)}
    issuers = {o["metadata"]["name"]: o for o in cluster_objects() if o["kind"] == "ClusterIssuer"}
    for ingress in ingresses:
        name, spec, annotations = ingress["metadata"]["name"], ingress["spec"], ingress["metadata"]["annotations"]
        hosts = [rule["host"] for rule in spec["rules"]]
        assert [h for tls in spec["tls"] for h in tls["hosts"]] == hosts, f"{overlay} {name}: TLS hosts differ from the rules' hosts"
        assert annotations.get("nginx.ingress.kubernetes.io/force-ssl-redirect") == "true", f"{overlay} {name}: plain HTTP is not redirected"
        assert annotations["cert-manager.io/cluster-issuer"] in issuers, f"{overlay} {name}: no ClusterIssuer {annotations['cert-manager.io/cluster-issuer']} in k8s/cluster"
        for tls in spec["tls"]:
            assert certificates[tls["secretName"]]["spec"]["dnsNames"] == tls["hosts"]
    # The shim refuses to take over a Certificate it does not own: no name of the component's is reused.
    component = {name for o in objects if o["kind"] == "Certificate" for name in (o["metadata"]["name"], o["spec"]["secretName"])}
    assert len(certificates) == 2 and not set(certificates) & component, sorted(certificates)
    result = kubeconform(_as_stream([*certificates.values(), *issuers.values()]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid: 3, Invalid: 0, Errors: 0, Skipped: 0" in result.stdout, result.stdout


def test_kubeconform_checks_the_ingress_certificates_and_the_cluster_issuer(tmp_path: Path) -> None:
    copy = broken_copy(tmp_path, "base/ingress.yaml", "cert-manager.io/private-key-algorithm: ECDSA", "cert-manager.io/private-key-algorithm: DSA")
    result = kubeconform(_as_stream(ingress_certificates(load_yaml(build(copy / "overlays" / "prod")))))
    assert result.returncode != 0
    assert re.search(r"Certificate edge-web-tls is invalid: .*DSA", result.stdout), result.stdout
    copy = broken_copy(tmp_path / "issuer", "cluster/letsencrypt.yaml", "ingressClassName: nginx", "ingressClass: nginx")
    result = kubeconform(_as_stream(cluster_objects(copy)))
    assert result.returncode != 0
    assert re.search(r"ClusterIssuer letsencrypt is invalid: .*ingressClass", result.stdout), result.stdout


# --- the Helm values of NATS and InfluxDB against the TLS component --------------------------------


def helm_values(chart: str, environment: str, helm: Path = HELM) -> dict[str, Any]:
    """``values.yaml`` then ``values-<environment>.yaml`` as Helm merges them (maps merged key by key,
    anything else replaced), the two files the Pulumi program passes."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{key: merge(base.get(key), value) for key, value in over.items()}}
        return over

    (values,) = load_yaml((helm / chart / "values.yaml").read_text())
    for override in load_yaml((helm / chart / f"values-{environment}.yaml").read_text()):
        values = merge(values, override)
    return values


def helm_tls_mismatches(objects: list[dict[str, Any]], environment: str, helm: Path = HELM) -> list[str]:
    """Where the nats and influxdb2 values of ``environment`` do not serve TLS with the Secrets of the
    overlay's Certificates ``nats`` and ``influxdb`` (the keys follow the charts' documented values;
    the charts are not rendered here)."""
    secrets = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "Certificate"}
    store_env = {e["name"]: e.get("value") for d in objects if d["kind"] == "Deployment" and d["metadata"]["name"] == "store"
                 for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}  # fmt: skip
    problems = []
    nats = helm_values("nats", environment, helm)["config"]["nats"].get("tls", {})
    expected = {"enabled": True, "secretName": secrets["nats"]["secretName"], "cert": "tls.crt", "key": "tls.key"}
    problems += [f"nats config.nats.tls.{k}: {nats.get(k)!r}, not {v!r}" for k, v in expected.items() if nats.get(k) != v]
    merged = nats.get("merge", {})
    if merged != {"ca_file": f"{nats.get('dir')}/ca.crt", "verify": True}:
        problems.append(f"nats config.nats.tls.merge {merged}: not the Secret's ca.crt with verify")
    influx = helm_values("influxdb2", environment, helm)
    env = {e["name"]: e["value"] for e in influx.get("env", [])}
    volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in influx.get("volumes", [])}
    mounts = {m["mountPath"]: volumes.get(m["name"]) for m in influx.get("mountPoints", [])}
    for name, key in (("INFLUXD_TLS_CERT", "tls.crt"), ("INFLUXD_TLS_KEY", "tls.key")):
        folder, _, file = env.get(name, "/").rpartition("/")
        if file != key or mounts.get(folder) != secrets["influxdb"]["secretName"]:
            problems.append(f"influxdb2 {name}={env.get(name)!r}: not {key} of the Secret {secrets['influxdb']['secretName']}")
    problems += [f"influxdb2 {p}.scheme: {influx.get(p, {}).get('scheme')!r}" for p in ("livenessProbe", "readinessProbe") if influx.get(p, {}).get("scheme") != "HTTPS"]
    host = store_env["INFLUX_URL"].removeprefix("https://").split(":")[0]
    if host not in secrets["influxdb"]["dnsNames"]:
        problems.append(f"the store dials {host}, not a name of the influxdb Certificate")
    return problems


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_the_helm_values_serve_tls_with_the_components_secrets(overlay: str) -> None:
    assert helm_tls_mismatches(load_yaml(build(K8S / "overlays" / overlay)), overlay) == []


def test_a_helm_value_naming_another_secret_is_caught(tmp_path: Path) -> None:
    copy = broken_copy(tmp_path, "helm/nats/values.yaml", "secretName: nats-tls", "secretName: nats-cert")
    problems = helm_tls_mismatches(load_yaml(build(K8S / "overlays" / "staging")), "staging", copy / "helm")
    assert problems == ["nats config.nats.tls.secretName: 'nats-cert', not 'nats-tls'"]
    copy = broken_copy(tmp_path / "influx", "helm/influxdb2/values.yaml", "scheme: HTTPS", "scheme: HTTP")
    problems = helm_tls_mismatches(load_yaml(build(K8S / "overlays" / "dev")), "dev", copy / "helm")
    assert problems == ["influxdb2 livenessProbe.scheme: 'HTTP'"]
