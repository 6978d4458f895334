"""The compose deployment, brought up for real: images built, both profiles up, checked end to end.

A private Docker engine (``scripts/docker-test-env``: Debian's dockerd as root, its data root and
socket under a temp folder, no default bridge, no IP forwarding, stopped by PID) builds the images
from ``Dockerfile`` the air-gapped way (``DIST=prebuilt``: ``scripts/docker-dist`` wheels and web
bundle, ``--network none``) on local stand-ins for the official bases (``docker/standins/build``),
then ``compose.yaml`` + ``compose.test.yaml`` are brought up with ``docker compose up --wait``.
The host talks to the stack only through ports published on 127.0.0.1.

Nothing is prepared for compose but the images: the one-shot ``secrets-init`` service makes the
project's tokens and its TLS set (``docker/secrets_init.py``), which the test reads back from the
containers; TLS on each hop is checked by refusing plaintext on it and by the traffic that crosses
it (both published edges over HTTPS, trusted by the stack's CA copied out of the volume as a user
does; serve behind the default edge; InfluxDB over HTTPS in both profiles; NATS with mTLS, the
replayer, the gateways and Envoy's upstreams in the cluster profile). The UI is loaded through
Envoy's published port over HTTPS in headless Chromium (``playwright-core``, Debian's
``/usr/bin/chromium``; the stack's CA trusted by its public key) by a small driver written by this
module.

Grafana is not run: its image cannot be had here (no registry; not packaged by Debian); its
provisioning is checked offline against the compose file instead.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import http.client
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mbostream.tools.browser import WEB_DIR, chromium_path, missing_requirement
from mbostream_client import Backoff, EventFollower, MarketDataClient, TlsConfig
from mbostream_core.v1 import market_data_pb2, market_data_pb2_grpc, replay_pb2, replay_pb2_grpc

REPO: Final = Path(__file__).resolve().parent.parent
DOCKER: Final = "/usr/bin/docker"  # Debian's client, matching its dockerd (BuildKit built in)
PROJECT: Final = "mbostream-test"
#: Where the services read the project's secrets (the `secrets` volume, written by secrets-init).
SECRETS_DIR: Final = "/run/mbostream/secrets"
CONTROL_TOKEN_FILE: Final = f"{SECRETS_DIR}/mbostream-control-token"
#: Where the services read the TLS set (the `certs` volume, written by secrets-init).
CERTS_DIR: Final = "/run/mbostream/tls"
INFLUX_BUCKET: Final = "mbostream"
UP_TIMEOUT: Final = 300
RPC_TIMEOUT: Final = 10.0
#: The services that run our images (built from ./Dockerfile).
OUR_SERVICES: Final = frozenset({"serve", "replay", "gateway-1", "gateway-2", "store", "envoy", "envoy-cluster"})
#: Services without a compose health check, and why (the policy test holds the others to one).
NO_HEALTH_CHECK: Final = {
    "otel-collector": "the official collector image is FROM scratch: no program to run a check with",
    "secrets-init": "a one-shot: the others wait for it to exit 0 (service_completed_successfully)",
}
#: One-shot services (restart "no"): what others may wait for with service_completed_successfully.
ONE_SHOTS: Final = frozenset({"secrets-init"})
#: Images we build (from ./Dockerfile), named by these variables; every other image is a pinned base.
OUR_IMAGE_VARIABLES: Final = frozenset({"MBOSTREAM_IMAGE", "EDGE_IMAGE", "EDGE_CLUSTER_IMAGE"})
#: An image pinned by tag and by digest: ``[registry/]name:tag@sha256:<64 hex>``.
PINNED: Final = re.compile(r"^[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9_][A-Za-z0-9._-]*@sha256:[0-9a-f]{64}$")
#: Where the collector's file exporter writes (observability/otelcol/config.yaml).
COLLECTED_SPANS: Final = "/var/lib/otelcol/traces.jsonl"
GRAFANA_LEFT_OUT: Final = (
    "Grafana is left out of the compose test: its image cannot be pulled here (no registry) and no "
    "Debian package or Go-proxy build of it is available; its provisioning is validated offline"
)

pytestmark = pytest.mark.timeout(1500)


def _secrets_init() -> Any:
    """docker/secrets_init.py as a module (its names: what compose may read from the volumes)."""
    sys.path.insert(0, str(REPO / "docker"))
    try:
        import secrets_init
    finally:
        sys.path.pop(0)
    return secrets_init


#: Ports :func:`_free_port` handed out, so that none is handed out twice.
_PORTS_GIVEN: set[int] = set()


def _free_port() -> int:
    """A port free on 127.0.0.1 now, from below the kernel's ephemeral range: compose publishes it
    up to minutes later (the cluster profile's gateways last), and a port of that range may be
    taken meanwhile by any connection or port-0 listener of the suites running beside this one
    (CI: gateway-2's 58609, "bind: address already in use"). Nothing picks these by itself."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = [p for p in range(max(10_000, low - 12_000), low) if p not in _PORTS_GIVEN]
    for port in random.sample(candidates, min(len(candidates), 500)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 below the ephemeral range (from {low})")


def _run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 900, check: bool = True) -> str:
    """Runs ``cmd``; its stdout, or a failure quoting its output."""
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


@dataclass
class Stack:
    """The engine, the images and the compose command line of one test module."""

    compose: str
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    #: The control token secrets-init made for this project (read back once the stack is up).
    control_token: str = ""

    def compose_cmd(self, *args: str, profile: str | None = None, override: bool = True) -> list[str]:
        files = ["-f", "compose.yaml"] + (["-f", "compose.test.yaml"] if override else [])
        profiles = ["--profile", profile] if profile else []
        return [self.compose, *files, *profiles, *args]

    def run(self, *args: str, profile: str | None = None, timeout: float = 600, check: bool = True) -> str:
        return _run(self.compose_cmd(*args, profile=profile), env=self.env, timeout=timeout, check=check)

    def docker(self, *args: str, timeout: float = 120) -> str:
        return _run([DOCKER, *args], env=self.env, timeout=timeout)

    def up(self, profile: str | None = None) -> None:
        """``up --wait``: every service running and healthy, or a failure with their logs."""
        cmd = self.compose_cmd("up", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT), "--no-build", profile=profile)
        result = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=UP_TIMEOUT + 120)
        if result.returncode != 0:
            logs = self.run("logs", "--no-color", "--tail", "12", profile=profile, check=False)
            pytest.fail(f"compose up --wait failed ({result.returncode}):\n{result.stderr[-3000:]}\n--- logs:\n{logs[-12000:]}")

    def published(self, service: str, port: int, profile: str | None = None) -> str:
        """``127.0.0.1:PORT`` where the host reaches ``service``'s container ``port``."""
        address = self.run("port", service, str(port), profile=profile).strip()
        assert address.startswith("127.0.0.1:"), f"{service}:{port} is published on {address}, not on loopback"
        return address

    def leftovers(self) -> list[str]:
        """Containers, volumes and networks of the project still in the engine."""
        label = f"label=com.docker.compose.project={PROJECT}"
        found = []
        for kind, cmd in (
            ("container", ["ps", "-a", "--filter", label, "--format", "{{.Names}}"]),
            ("volume", ["volume", "ls", "--filter", label, "--format", "{{.Name}}"]),
            ("network", ["network", "ls", "--filter", label, "--format", "{{.Name}}"]),
        ):
            found += [f"{kind} {name}" for name in self.docker(*cmd).split()]
        return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private engine with the stand-ins and our images; stopped by PID and removed at the end."""
    if os.geteuid() != 0:
        pytest.fail("the compose test needs root: dockerd runs as root (scripts/install-docker installs it)")
    started = time.monotonic()
    compose = _run(["scripts/install-docker"], timeout=3000).strip().splitlines()[-1]
    _run(["scripts/docker-dist"], timeout=1800)
    # A short path: the engine's unix sockets live under it (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="mbs-dk-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
    stack = Stack(compose=compose, env=env)
    try:
        env["DOCKER_HOST"] = _run(["scripts/docker-test-env", "start", str(root)], timeout=120).strip().split("=", 1)[1]
        stack.timings["install"] = time.monotonic() - started
        bases = dict(line.split("=", 1) for line in _run(["docker/standins/build"], env=env, timeout=3000).split())
        stack.timings["stand-ins"] = time.monotonic() - started - stack.timings["install"]
        env.update(bases)
        built = time.monotonic()
        args = ["--network", "none", "--build-arg", "DIST=prebuilt"]
        args += [f"--build-arg={name}={bases[name]}" for name in ("PYTHON_IMAGE", "ENVOY_IMAGE")]
        # As compose.yaml builds the edges: Envoy's tracer sends to the otel-collector service.
        args += ["--build-arg", "OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4317"]
        images = {"MBOSTREAM_IMAGE": "mbostream:test", "EDGE_IMAGE": "mbostream-edge:test"}
        images["EDGE_CLUSTER_IMAGE"] = "mbostream-edge-cluster:test"
        build_env = {**env, "DOCKER_BUILDKIT": "1"}
        _run([DOCKER, "build", *args, "--target", "runtime", "-t", images["MBOSTREAM_IMAGE"], "."], env=build_env)
        # As compose.yaml builds the edges: HTTPS with edge.crt, TLS to the upstreams validated by the CA.
        edge_tls = [f"--build-arg=EDGE_TLS_CERT_FILE={CERTS_DIR}/edge.crt", f"--build-arg=EDGE_TLS_KEY_FILE={CERTS_DIR}/edge.key"]
        edge_tls += [f"--build-arg=EDGE_UPSTREAM_CA_FILE={CERTS_DIR}/ca.crt"]
        # And each edge's StreamBook route to the native book port, as compose.yaml sets it.
        compose_services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
        book_port = compose_services["envoy"]["build"]["args"]["EDGE_BOOK_PORT"]
        edge_book = [f"--build-arg=EDGE_BOOK_PORT={book_port}"]
        _run([DOCKER, "build", *args, *edge_tls, *edge_book, "--target", "edge", "-t", images["EDGE_IMAGE"], "."], env=build_env)
        upstream = ["--build-arg", "EDGE_UPSTREAM_HOST=gateways", "--build-arg", "EDGE_REPLAYER_HOST=replay"]
        cluster_book_port = compose_services["envoy-cluster"]["build"]["args"]["EDGE_BOOK_PORT"]
        upstream += [f"--build-arg=EDGE_BOOK_PORT={cluster_book_port}"]
        _run([DOCKER, "build", *args, *edge_tls, *upstream, "--target", "edge", "-t", images["EDGE_CLUSTER_IMAGE"], "."], env=build_env)
        stack.timings["images"] = time.monotonic() - built
        env.update(images)
        env.update(
            COMPOSE_PROJECT_NAME=PROJECT,
            # No secret is prepared: the operator's folder does not even exist (secrets-init makes them).
            MBOSTREAM_SECRETS_DIR=str(tmp_path_factory.mktemp("operator") / "no-secrets-here"),
            MBOSTREAM_DATA_DIR=str(tmp_path_factory.mktemp("data")),
            # A live feed for minutes (1M records at 4000/s), without a loop's restart of positions.
            MBOSTREAM_SAMPLE_RECORDS="1000000",
            MBOSTREAM_RATE="4000",
            MBOSTREAM_LOOP="false",
            MBOSTREAM_SPOOL_MAX_BYTES="64M",
            EDGE_PORT=str(_free_port()),
            EDGE_CLUSTER_PORT=str(_free_port()),
            INFLUXDB_PORT=str(_free_port()),
            PROMETHEUS_PORT=str(_free_port()),
            TEST_SERVE_GRPC_PORT=str(_free_port()),
            TEST_GATEWAY1_GRPC_PORT=str(_free_port()),
            TEST_GATEWAY2_GRPC_PORT=str(_free_port()),
        )
        yield stack
    finally:
        if "DOCKER_HOST" in env:
            stack.run("down", "--volumes", "--timeout", "5", profile="cluster", check=False)
            _run(["scripts/docker-test-env", "stop", str(root)], timeout=120, check=False)
        shutil.rmtree(root, ignore_errors=True)
        print(f"compose test: set-up timings (s): { {k: round(v, 1) for k, v in stack.timings.items()} }")


# --- static checks -------------------------------------------------------------------------------


def test_dockerfiles_are_hadolint_clean() -> None:
    hadolint = _run(["scripts/install-hadolint"], timeout=600).strip().splitlines()[-1]
    files = ["Dockerfile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docker").rglob("Dockerfile"))]
    _run([hadolint, "--no-color", *files], timeout=120)


def _config(stack: Stack, profile: str | None) -> dict[str, Any]:
    """``docker compose config`` of compose.yaml alone (what a user runs), as JSON."""
    cmd = stack.compose_cmd("config", "--format", "json", profile=profile, override=False)
    return json.loads(_run(cmd, env=stack.env))


@pytest.mark.parametrize("profile", [None, "cluster"])
def test_compose_config_is_valid_and_follows_policy(stack: Stack, profile: str | None) -> None:
    """Every profile's config is valid; services are health-checked, limited, restarted; no secret has a value."""
    config = _config(stack, profile)
    expected = {"secrets-init", "serve", "envoy", "influxdb", "prometheus", "grafana", "otel-collector"}
    if profile:
        expected |= {"nats", "replay", "gateway-1", "gateway-2", "store", "envoy-cluster"}
    assert set(config["services"]) == expected
    for name, service in config["services"].items():
        assert service.get("restart") == ("no" if name in ONE_SHOTS else "unless-stopped"), name
        assert service["deploy"]["resources"]["limits"]["memory"], name
        assert service["deploy"]["resources"]["limits"]["cpus"], name
        for published in service.get("ports", []):
            assert published["host_ip"] == "127.0.0.1", f"{name} publishes on {published['host_ip']}"
        for needed, dependency in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if needed in ONE_SHOTS else "service_healthy"
            assert dependency["condition"] == wanted, f"{name} waits for {needed} to be {dependency['condition']}"
        # Our images carry their health check and user; the others are given one here.
        ours = name in OUR_SERVICES
        assert ours or name in NO_HEALTH_CHECK or "healthcheck" in service, f"{name} has no health check"
        if ours:
            # Envoy's tracer endpoint is a build argument (its config is rendered at build time).
            otlp = service.get("environment", {}) | service.get("build", {}).get("args", {})
            assert otlp.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector:4317", f"{name} sends no spans to the collector"
        if ours or name in ONE_SHOTS:
            assert service.get("read_only") is True, f"{name}: the root filesystem is not read-only"
        _assert_secrets_from_the_volume(name, service)
        _assert_certs_from_the_volume(name, service)
    _assert_tls_on_every_hop(config["services"])
    # No compose secret (their files would have to exist before `up`); no secret with a value.
    assert "secrets" not in config, f"compose secrets need files made first: {config['secrets']}"
    environment = json.dumps([s.get("environment", {}) for s in config["services"].values()]).lower()
    assert "token\": \"" not in environment.replace("token_file", ""), "a token is set as a plain variable"
    assert "password\": \"" not in environment, "a password is set as a plain variable"


def _assert_secrets_from_the_volume(name: str, service: dict[str, Any]) -> None:
    """Every secret ``service`` reads is a file secrets-init makes, in the `secrets` volume it mounts
    (read-only), and the service starts only once secrets-init has exited 0."""
    names = set(_secrets_init().NAMES)
    read = set(re.findall(rf"{SECRETS_DIR}/([\w-]+)", json.dumps([service.get("environment", {}), service.get("entrypoint")])))
    if not read:
        return
    assert read <= names, f"{name} reads {sorted(read - names)}, which secrets-init does not make"
    mounts = {v["target"]: v for v in service.get("volumes", [])}
    assert mounts.get(SECRETS_DIR, {}).get("source") == "secrets", f"{name} does not mount the secrets volume at {SECRETS_DIR}"
    assert mounts[SECRETS_DIR].get("read_only") is True, f"{name} mounts the secrets writable"
    assert "secrets-init" in service.get("depends_on", {}), f"{name} may start before its secrets exist"


def _assert_certs_from_the_volume(name: str, service: dict[str, Any]) -> None:
    """Every TLS file ``service`` names (settings, command, health check, Envoy's build arguments)
    is one secrets-init makes, in the `certs` volume it mounts read-only after secrets-init exited 0."""
    where = [service.get(k) for k in ("environment", "command", "entrypoint", "healthcheck")] + [service.get("build", {}).get("args")]
    read = set(re.findall(rf"{CERTS_DIR}/([\w.-]+)", json.dumps(where)))
    if not read:
        return
    made = set(_secrets_init().CERT_FILES)
    assert read <= made, f"{name} reads {sorted(read - made)}, which secrets-init does not make"
    mounts = {v["target"]: v for v in service.get("volumes", [])}
    assert mounts.get(CERTS_DIR, {}).get("source") == "certs", f"{name} does not mount the certs volume at {CERTS_DIR}"
    assert mounts[CERTS_DIR].get("read_only") is True, f"{name} mounts the certificates writable"
    assert "secrets-init" in service.get("depends_on", {}), f"{name} may start before its certificates exist"


def _assert_tls_on_every_hop(services: dict[str, Any]) -> None:
    """The settings that put each hop on TLS, the published edges' included (the stack tests show
    them at work)."""
    ca = f"{CERTS_DIR}/ca.crt"
    for name in ("envoy", "envoy-cluster"):
        if name in services:
            args = services[name]["build"]["args"]
            listener = (args.get("EDGE_TLS_CERT_FILE"), args.get("EDGE_TLS_KEY_FILE"))
            assert listener == (f"{CERTS_DIR}/edge.crt", f"{CERTS_DIR}/edge.key"), f"{name} publishes plaintext"
            assert args.get("EDGE_UPSTREAM_CA_FILE") == ca, f"{name} -> its upstreams is plaintext"
    serve = services["serve"]["environment"]
    assert serve.get("MBOSTREAM_TLS_CERT_FILE") == f"{CERTS_DIR}/serve.crt", "serve serves plaintext gRPC"
    for name in ("serve", "store"):
        if name in services:
            env = services[name]["environment"]
            assert env["INFLUX_URL"].startswith("https://") and env["INFLUX_CA_FILE"] == ca, f"{name} -> InfluxDB is not HTTPS verified by the CA"
    influx = services["influxdb"]
    assert influx["environment"]["INFLUXD_TLS_CERT"] and influx["environment"]["INFLUXD_TLS_KEY"], "InfluxDB serves no HTTPS"
    assert "https://" in " ".join(influx["healthcheck"]["test"]), "InfluxDB's health check is not over HTTPS"
    if "nats" not in services:
        return
    assert {"--tlsverify", f"--tlscacert={ca}"} <= set(services["nats"]["command"]), "nats-server does not require mTLS"
    for name in ("replay", "gateway-1", "gateway-2", "store"):
        env = services[name]["environment"]
        assert env.get("MBOSTREAM_NATS_TLS_CA_FILE") == ca and env.get("MBOSTREAM_NATS_TLS_CERT_FILE"), f"{name} -> NATS is not mTLS"
    for name in ("replay", "gateway-1", "gateway-2"):
        assert services[name]["environment"].get("MBOSTREAM_TLS_CERT_FILE"), f"{name} serves plaintext gRPC"


def _render_edge(*args: str) -> dict[str, Any]:
    """docker/envoy/render.py as the Dockerfile runs it (the template, an empty UI), parsed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "envoy.yaml"
        cmd = [sys.executable, "docker/envoy/render.py", "--template", "envoy/envoy.template.yaml", "--static-dir", tmp]
        _run([*cmd, "--upstream-port", "50051", "--listen-port", "8080", *args, "--out", str(out)], timeout=60)
        return dict(yaml.safe_load(out.read_text()))


@pytest.mark.parametrize(
    ("upstream", "names"),
    [
        (("--upstream-host", "serve", "--book-port", "50052"), {"mbostream_grpc": "serve", "mbostream_books": "serve"}),
        (
            ("--upstream-host", "gateways", "--replayer-host", "replay", "--book-port", "50052"),
            {"mbostream_grpc": "gateways", "mbostream_replayer": "replay", "mbostream_books": "gateways"},
        ),
    ],
    ids=["envoy", "envoy-cluster"],
)
def test_the_edges_serve_https_and_validate_their_upstreams_by_the_ca_and_their_names(upstream: tuple[str, ...], names: dict[str, str]) -> None:
    """docker/envoy/render.py with compose's build arguments for each edge: the listener serves TLS
    only, with edge.crt from the `certs` volume, HTTP/2 or HTTP/1.1 by ALPN; every upstream cluster
    (the native book port's too, serve's or the gateways') speaks TLS, trusts the CA at its
    in-container path and accepts only its own name, and finds its hosts by DNS; the gateways' book
    port is health-checked on their gRPC port. Without those arguments (the image built alone) the
    config has no TLS at all."""
    tls_args = ("--listen-cert-file", f"{CERTS_DIR}/edge.crt", "--listen-key-file", f"{CERTS_DIR}/edge.key", "--upstream-ca-file", f"{CERTS_DIR}/ca.crt")
    configs = {tls: _render_edge(*upstream, *(tls_args if tls else ())) for tls in (True, False)}

    def validated(name: str) -> dict[str, Any]:
        return {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "validation_context": {"trusted_ca": {"filename": f"{CERTS_DIR}/ca.crt"}, "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": name}}]},
            },
            "sni": name,
        }

    def sockets(config: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        resources = config["static_resources"]
        listener = [chain.get("transport_socket", {}).get("typed_config") for chain in resources["listeners"][0]["filter_chains"]]
        clusters = {c["name"]: c.get("transport_socket", {}).get("typed_config") for c in resources["clusters"] if c["name"] in names}
        return listener, clusters

    listener, clusters = sockets(configs[True])
    https = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [{"certificate_chain": {"filename": f"{CERTS_DIR}/edge.crt"}, "private_key": {"filename": f"{CERTS_DIR}/edge.key"}}],
        },
    }
    assert listener == [https], "the edge's one filter chain is not HTTPS with edge.crt"
    assert clusters == {cluster: validated(name) for cluster, name in names.items()}
    assert sockets(configs[False]) == ([None], dict.fromkeys(names))
    for cluster in configs[True]["static_resources"]["clusters"]:
        if cluster["name"] in names:
            assert cluster["type"] == "STRICT_DNS", cluster["name"]
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            address = endpoint["address"]["socket_address"]
            expected_port = 50052 if cluster["name"] == "mbostream_books" else 50051
            assert (address["address"], address["port_value"]) == (names[cluster["name"]], expected_port), cluster["name"]
            if cluster["name"] == "mbostream_books" and "mbostream_replayer" in names:
                assert endpoint["health_check_config"] == {"port_value": 50051} and cluster["health_checks"], cluster


def _image_default(reference: str) -> tuple[str, str]:
    """``${VAR:-default}`` -> (VAR, default); a literal reference -> ("", reference)."""
    match = re.fullmatch(r"\$\{(\w+):?-([^}]*)\}", reference.strip().strip("'\""))
    return (match.group(1), match.group(2)) if match else ("", reference.strip().strip("'\""))


def test_base_images_are_pinned_by_tag_and_digest() -> None:
    """Every base image the Dockerfile and compose.yaml name by default is ``tag@sha256:<index>``;
    compose's build arguments are the Dockerfile's defaults. Excepted: our own images (built here),
    the stand-ins' Dockerfiles (test only, FROM an ARG without default: always a local stand-in) and
    compose.test.yaml (it points at the stand-ins)."""
    dockerfile = (REPO / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", dockerfile, flags=re.M))
    assert {"PYTHON_IMAGE", "RUST_IMAGE", "NODE_IMAGE", "ENVOY_IMAGE"} <= set(args), sorted(args)
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, flags=re.M))
    for base in re.findall(r"^FROM (\S+)", dockerfile, flags=re.M):
        variable = re.fullmatch(r"\$\{(\w+)\}", base)
        if variable and variable.group(1) in args:
            base = args[variable.group(1)]
        elif base == "scratch" or base in stages or base.startswith("dist-${"):
            continue
        assert PINNED.match(base), f"Dockerfile: FROM {base} is not pinned by tag and digest"
    for name, value in args.items():
        assert PINNED.match(value), f"Dockerfile: ARG {name}={value} is not pinned by tag and digest"
    compose = (REPO / "compose.yaml").read_text()
    images = re.findall(r"^\s+image: (.+)$", compose, flags=re.M)
    assert len(images) >= 9, images
    for reference in images:
        variable, default = _image_default(reference)
        if variable in OUR_IMAGE_VARIABLES:
            continue
        assert PINNED.match(default), f"compose.yaml: image {reference} is not pinned by tag and digest"
    for name, reference in re.findall(r"^  (\w+_IMAGE): (\$\{.+\})$", compose, flags=re.M):
        assert _image_default(reference)[1] == args[name], f"compose.yaml's build argument {name} is not the Dockerfile's default"
    for standin in sorted((REPO / "docker" / "standins").rglob("Dockerfile")):
        text = standin.read_text()
        assert re.findall(r"^FROM (\S+)", text, flags=re.M) == ["${TOOLS_IMAGE}"], standin
        assert re.search(r"^ARG TOOLS_IMAGE$", text, flags=re.M), f"{standin}: a default base could be pulled"


def test_images_are_non_root_with_health_checks_and_labels(stack: Stack) -> None:
    for image in (stack.env["MBOSTREAM_IMAGE"], stack.env["EDGE_IMAGE"]):
        info = json.loads(stack.docker("image", "inspect", image))[0]["Config"]
        assert info["User"] and info["User"].split(":")[0] not in {"0", "root"}, f"{image} runs as {info['User']!r}"
        assert info["Healthcheck"]["Test"][0] == "CMD", image
        assert info["Labels"]["org.opencontainers.image.title"], image
    size = json.loads(stack.docker("image", "inspect", stack.env["MBOSTREAM_IMAGE"]))[0]["Size"]
    base = json.loads(stack.docker("image", "inspect", stack.env["PYTHON_IMAGE"]))[0]["Size"]
    print(f"compose test: mbostream image {size / 1e6:.0f} MB ({(size - base) / 1e6:.0f} MB over the stand-in base)")


def test_grafana_provisioning_offline(stack: Stack) -> None:
    """Grafana cannot run here: its provisioning must at least match what compose gives it."""
    print(GRAFANA_LEFT_OUT)
    grafana = _config(stack, None)["services"]["grafana"]
    mounts = {volume["target"]: volume.get("source", "") for volume in grafana["volumes"]}
    provisioning = Path(mounts["/etc/grafana/provisioning"])
    assert (provisioning / "datasources").is_dir() and (provisioning / "dashboards").is_dir()
    given = set(grafana["environment"]) | {"INFLUX_TOKEN"}  # set from the secret by the entrypoint
    assert f"{SECRETS_DIR}/influxdb-token" in " ".join(grafana["entrypoint"])
    for file in sorted(provisioning.rglob("*.y*ml")):
        wanted = set(re.findall(r"\$\{(\w+)\}", file.read_text()))
        assert wanted <= given, f"{file.name} reads {sorted(wanted - given)}, which compose does not set"
    dashboards_file = (provisioning / "dashboards").glob("*.y*ml")
    paths = {m for f in dashboards_file for m in re.findall(r"path:\s*(\S+)", f.read_text())}
    dashboards = [target for target, source in mounts.items() if source.endswith("observability/grafana/dashboards")]
    assert dashboards and paths == set(dashboards), f"dashboards provisioned from {paths}, mounted at {dashboards}"
    boards = sorted(Path(mounts[dashboards[0]]).glob("*.json"))
    assert boards, "no dashboards"
    for board in boards:
        assert json.loads(board.read_text())["uid"], board.name


# --- the default profile -------------------------------------------------------------------------


def _channel(target: str, ca: bytes, server_name: str = "") -> grpc.Channel:
    """gRPC over TLS to ``target`` (every gRPC port of the stack speaks only TLS), verified by the
    stack's CA for ``server_name`` (default: the target's host, e.g. 127.0.0.1 for a published edge)."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(ca), options=options)


def _get_books(channel: grpc.Channel) -> dict[int, bytes]:
    """Every instrument's full book (orders included) through ``channel``, serialized deterministically."""
    with channel:
        stub = market_data_pb2_grpc.MarketDataServiceStub(channel)
        listed = stub.ListInstruments(market_data_pb2.ListInstrumentsRequest(), timeout=RPC_TIMEOUT)
        books = {}
        for instrument in listed.instruments:
            request = market_data_pb2.GetBookRequest(instrument_id=instrument.instrument_id, include_orders=True)
            books[instrument.instrument_id] = stub.GetBook(request, timeout=RPC_TIMEOUT).SerializeToString(deterministic=True)
    assert books, "no instrument listed"
    return books


def _control(target: str, ca: bytes, rpc: str, token: str) -> None:
    with _channel(target, ca) as channel:
        stub = replay_pb2_grpc.ReplayServiceStub(channel)
        request = getattr(replay_pb2, f"{rpc}Request")()
        getattr(stub, rpc)(request, timeout=RPC_TIMEOUT, metadata=(("authorization", f"Bearer {token}"),))


def _secret(stack: Stack, service: str, name: str, profile: str | None = None) -> str:
    """A secret as ``service`` reads it (from the secrets volume, inside its container)."""
    return stack.run("exec", "-T", service, "cat", f"{SECRETS_DIR}/{name}", profile=profile).strip()


#: bash: what the Envoy admin's /stats?filter=$2 prints ($1: the admin port; $2: a plain name part).
_ENVOY_STATS_SCRIPT: Final = (
    'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; '
    "printf 'GET /stats?filter=%s HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n' \"$2\" >&3; "
    "cat <&3"
)


def _envoy_counter(stack: Stack, name: str, service: str = "envoy", profile: str | None = None) -> int:
    """A counter of an edge's Envoy, from its admin interface (loopback in its container; read as
    its health check reads /ready)."""
    cluster = name.split(".")[1]
    answer = stack.run("exec", "-T", service, "bash", "-c", _ENVOY_STATS_SCRIPT, "envoy-stats", "9901", cluster, profile=profile)
    match = re.search(rf"^{re.escape(name)}: (\d+)\r?$", answer, flags=re.M)
    assert match, answer[-2000:]
    return int(match.group(1))


def _wait(what: str, check: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def _collected_spans(stack: Stack, trace_id: str) -> dict[str, set[str]]:
    """The span names of trace ``trace_id`` the collector has written, by service name."""
    cmd = stack.compose_cmd("exec", "-T", "otel-collector", "sh", "-c", f"cat {COLLECTED_SPANS} 2>/dev/null || true")
    found: dict[str, set[str]] = {}
    for line in _run(cmd, env=stack.env, timeout=60).splitlines():
        for resource in json.loads(line).get("resourceSpans", []):
            attributes = {a["key"]: a["value"].get("stringValue") for a in resource["resource"].get("attributes", [])}
            for scope in resource.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    if span["traceId"] == trace_id:
                        found.setdefault(attributes.get("service.name", "?"), set()).add(span["name"])
    return found


def _prometheus_targets(address: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://{address}/api/v1/targets", timeout=5) as response:
        return json.load(response)["data"]["activeTargets"]


def _ca(stack: Stack, service: str, profile: str | None = None) -> bytes:
    """The stack's CA certificate, as ``service`` reads it (from the certs volume, inside its container)."""
    return stack.run("exec", "-T", service, "cat", f"{CERTS_DIR}/ca.crt", profile=profile).encode()


def _copy_ca(stack: Stack, service: str, into: Path, profile: str | None = None) -> Path:
    """The stack's CA copied out of the volume as a user does it (README, "Deployment"):
    ``docker compose cp SERVICE:/run/mbostream/tls/ca.crt FILE``."""
    path = into / "mbostream-ca.crt"
    stack.run("cp", f"{service}:{CERTS_DIR}/ca.crt", str(path), profile=profile)
    assert x509.load_pem_x509_certificate(path.read_bytes()).extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    return path


def _https_get(url: str, ca: bytes) -> bytes:
    """GET ``url`` over HTTPS, the certificate verified by the stack's CA for the URL's host."""
    with urllib.request.urlopen(url, timeout=10, context=ssl.create_default_context(cadata=ca.decode())) as response:
        assert response.status == 200, response.status
        return bytes(response.read())


def _edge_alpn(edge: str, ca: bytes, offered: list[str]) -> str | None:
    """The protocol a published edge picks by ALPN from ``offered`` (verified by the CA as 127.0.0.1)."""
    context = ssl.create_default_context(cadata=ca.decode())
    context.set_alpn_protocols(offered)
    host, port = edge.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        return tls.selected_alpn_protocol()


def _edge_refuses_plaintext(edge: str) -> str:
    """A published edge spoken to in plain HTTP, and in plaintext gRPC: nothing is served (its one
    listener is TLS: the connection ends in the handshake, no HTTP response comes back)."""
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)) as refused:
        urllib.request.urlopen(f"http://{edge}/", timeout=5)
    assert not isinstance(refused.value, urllib.error.HTTPError), f"plain HTTP got an HTTP response: {refused.value}"
    assert _health(edge) == "UNAVAILABLE", f"{edge} answers plaintext gRPC"
    return repr(refused.value)


def _spki_sha256(pem: bytes) -> str:
    """base64 SHA-256 of a certificate's public key (Chromium's --ignore-certificate-errors-spki-list)."""
    key = x509.load_pem_x509_certificate(pem).public_key()
    return base64.b64encode(hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest()).decode()


class _HttpsByName(http.client.HTTPSConnection):
    """HTTPS to a published port (127.0.0.1:PORT) verifying the certificate for the service's name."""

    def __init__(self, address: str, ca: bytes, server_name: str) -> None:
        host, port = address.rsplit(":", 1)
        super().__init__(host, int(port), timeout=5, context=ssl.create_default_context(cadata=ca.decode()))
        self.server_name = server_name

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.server_name)  # type: ignore[attr-defined]


def _influx_count(address: str, ca: bytes, measurement: str) -> int:
    """Points of ``measurement`` in InfluxDB, asked over HTTPS verified by the stack's CA as `influxdb`."""
    query = urllib.parse.urlencode({"db": INFLUX_BUCKET, "q": f"SELECT count(price) FROM {measurement}"})
    connection = _HttpsByName(address, ca, "influxdb")
    try:
        connection.request("GET", f"/query?{query}")
        response = connection.getresponse()
        assert response.status == 200, (response.status, response.read()[:200])
        series = json.load(response)["results"][0].get("series")
    finally:
        connection.close()
    return int(series[0]["values"][0][1]) if series else 0


def _influx_refuses_plain_http(address: str) -> str:
    """InfluxDB's port spoken to in plain HTTP: no query is answered (Go's TLS server answers 400)."""
    query = urllib.parse.urlencode({"db": INFLUX_BUCKET, "q": "SHOW MEASUREMENTS"})
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)) as refused:
        urllib.request.urlopen(f"http://{address}/query?{query}", timeout=5)
    if isinstance(refused.value, urllib.error.HTTPError):
        assert refused.value.code == 400, refused.value
    return repr(refused.value)


async def _follow_through(target: str, ca_file: Path, disrupt: Any, *, after_batches: int = 20) -> tuple[Any, list[tuple[int, int]]]:
    """Follows StreamEvents through ``target`` (TLS, trusting ``ca_file``), calls ``disrupt()``
    mid-stream, keeps going until live batches arrive again; the follower's stats and the (first,
    last) positions received."""
    received: list[tuple[int, int]] = []
    async with MarketDataClient(target, tls=TlsConfig(ca_file=str(ca_file))) as client:
        follower = EventFollower(client, with_snapshot=False, backoff=Backoff(base=0.05, factor=2, cap=1.0))

        async def consume() -> None:
            async for batch, _ in follower.follow():
                if not batch.snapshot and len(batch):
                    received.append((int(batch.replay_sequence[0]), int(batch.replay_sequence[-1])))

        task = asyncio.create_task(consume())
        try:
            while len(received) < after_batches:
                await asyncio.wait_for(asyncio.sleep(0.2), 5)
                assert not task.done(), task.exception()
            await asyncio.to_thread(disrupt)
            before = len(received)
            deadline = time.monotonic() + 120
            while len(received) < before + after_batches or follower.stats.resumes == 0:
                assert time.monotonic() < deadline, f"no resume: {follower.stats}"
                assert not task.done(), task.exception()
                await asyncio.sleep(0.2)
        finally:
            follower.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return follower.stats, received


def _assert_no_gap(received: list[tuple[int, int]]) -> None:
    for (_, last), (first, _) in zip(received, received[1:]):
        assert first == last + 1, f"gap: a batch ending at {last} is followed by one starting at {first}"


#: The browser's walk (playwright-core from web/node_modules, Debian's Chromium, headless): load the
#: UI over HTTPS (the stack's CA trusted by its public key, EDGE_CA_SPKI: Chromium then accepts a
#: chain that carries it, as a browser given the CA would; no other certificate error is ignored),
#: see the book change (distinct replay sequences in the rendered ladder), print ``EVENT
#: restart`` and wait for ``GO`` on stdin (the test restarts Envoy meanwhile), see the connection
#: leave "live" (reconnecting or connecting) and come back to it and the book change again past where it was; the last
#: line is ``RESULT {json}``. Written to a temp file by the test (it is this test's own driver).
BROWSER_DRIVER: Final = r"""
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
const { chromium } = createRequire(process.env.WEB_PACKAGE_JSON)("playwright-core");
const [url, executablePath] = process.argv.slice(2);
const report = { url, pageErrors: [], failedRequests: [] };
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const browser = await chromium.launch({ executablePath, headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         `--ignore-certificate-errors-spki-list=${process.env.EDGE_CA_SPKI}`] });
const sequence = (page) => page.evaluate(() => document.querySelector(".ladder-wrap")?.dataset.replaySequence ?? "");
async function changes(page, after, count) {
  const seen = new Set();
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline && seen.size < count) {
    const now = await sequence(page);
    if (now && BigInt(now) > after) seen.add(now);
    await sleep(100);
  }
  if (seen.size < count) throw new Error(`only ${seen.size} book updates past ${after} in 30 s`);
  return [...seen].map(BigInt).reduce((a, b) => (b > a ? b : a));
}
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(30000);
  page.on("pageerror", (e) => report.pageErrors.push(String(e)));
  page.on("requestfailed", (r) => report.failedRequests.push(`${r.url()} ${r.failure()?.errorText}`));
  const loaded = await page.goto(url, { waitUntil: "load" });
  report.protocol = new URL(page.url()).protocol;
  report.status = loaded?.status();
  await page.waitForSelector('[data-testid="level"]:not(.empty)');
  await page.waitForSelector('[data-testid="connection"][data-state="live"]');
  report.instruments = await page.locator('[data-testid="instrument"]').count();
  report.lastBefore = String(await changes(page, 0n, 5));
  await page.evaluate(() => {
    const pill = document.querySelector('[data-testid="connection"]');
    window.__states = [];
    new MutationObserver(() => window.__states.push(pill.dataset.state)).observe(pill, { attributes: true, attributeFilter: ["data-state"] });
  });
  process.stdout.write("EVENT restart\n");
  if ((await lines.next()).value !== "GO") throw new Error("no GO from the test");
  // The link leaves "live" (a short backoff may fall between two rendered frames, so "connecting"
  // counts as much as "reconnecting") and comes back to it.
  const left = () => window.__states.some((state) => state !== "live");
  try {
    await page.waitForFunction(left, null, { timeout: 90000 });
    await page.waitForFunction(() => window.__states.at(-1) === "live" && window.__states.some((s) => s !== "live"), null, { timeout: 90000 });
  } finally {
    report.states = await page.evaluate(() => window.__states);
  }
  report.lastAfter = String(await changes(page, BigInt(report.lastBefore), 5));
  report.ok = report.pageErrors.length === 0;
} catch (error) {
  report.ok = false;
  report.error = String(error);
} finally {
  await browser.close();
}
process.stdout.write(`RESULT ${JSON.stringify(report)}\n`);
process.exit(0);
"""


def _browse_through_envoy_restart(stack: Stack, url: str, ca: bytes, tmp_path: Path) -> dict[str, Any]:
    """The UI at ``url`` (Envoy's published port, HTTPS) in headless Chromium, across ``restart envoy``."""
    missing = missing_requirement()
    assert missing is None, f"the browser cannot run: {missing}"
    driver = tmp_path / "compose-browser.mjs"
    driver.write_text(BROWSER_DRIVER)
    env = {**os.environ, "WEB_PACKAGE_JSON": str(WEB_DIR / "package.json"), "EDGE_CA_SPKI": _spki_sha256(ca)}
    with subprocess.Popen(
        ["node", str(driver), url, chromium_path()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(tmp_path / "browser.log").open("w"), text=True, env=env,
    ) as process:  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        report: dict[str, Any] = {}
        try:
            for line in process.stdout:
                if line.strip() == "EVENT restart":
                    stack.run("restart", "envoy")
                    process.stdin.write("GO\n")
                    process.stdin.flush()
                elif line.startswith("RESULT "):
                    report = json.loads(line[len("RESULT ") :])
                    break
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert report.get("ok"), f"the UI through Envoy: {report or 'no report'}\n{(tmp_path / 'browser.log').read_text()[-3000:]}"
    assert (report["protocol"], report["status"]) == ("https:", 200), report
    return report


#: Run in a one-off container with InfluxDB's data volume at /d (python3 -c): appends to the last
#: WAL segment a write entry's header and a third of its block, what a kill mid-write leaves.
_TEAR_WAL = """
import pathlib, struct
segment = sorted(pathlib.Path("/d/engine/wal").rglob("_*.wal"))[-1]
with segment.open("ab") as f:
    f.write(bytes([1]) + struct.pack(">I", 300) + b"x" * 100)
print(segment.relative_to("/d"))
"""


def _influx_wal_repaired_at_start(stack: Stack, influx: str, ca: bytes) -> str:
    """InfluxDB stopped, a torn entry put at the end of its WAL, started again: its entrypoint's
    repair (compose.yaml, docker/influxdb/repair-wal) cut exactly those bytes before influxd opened
    the segment, influxd found nothing corrupt, and the points stored before are all there."""
    before = _influx_count(influx, ca, "trades")
    stack.run("stop", "--timeout", "20", "influxdb")
    volume = f"{PROJECT}_influxdb-data"
    one_off = ["run", "--rm", "--network", "none", "--user", "0", "-v", f"{volume}:/d", "--entrypoint", "python3"]
    segment = stack.docker(*one_off, stack.env["MBOSTREAM_IMAGE"], "-c", _TEAR_WAL).strip()
    since = stack.docker("info", "--format", "{{.SystemTime}}").strip()
    stack.run("start", "influxdb")
    influx = stack.published("influxdb", 8086)
    after = _wait("InfluxDB serving again after the repair", lambda: _influx_count(influx, ca, "trades"), timeout=120)
    logs = stack.run("logs", "--no-color", "--since", since, "influxdb")
    cut = [line for line in logs.splitlines() if f"/var/lib/influxdb2/{segment}: kept" in line]
    assert len(cut) == 1 and cut[0].endswith("cut 105 torn bytes"), logs[-3000:]
    assert "File corrupt" not in logs, "influxd met the torn entry: the repair did not run before it"
    assert after >= before, f"InfluxDB holds {after} trades after the restart, {before} before"
    return cut[0].split("| ", 1)[-1]


def test_default_profile(stack: Stack, tmp_path: Path) -> None:
    started = time.monotonic()
    stack.up()
    up_seconds = time.monotonic() - started
    edge = stack.published("envoy", 8080)
    server = stack.published("serve", 50051)
    # The stack's CA as a user gets it: copied out of the `certs` volume.
    ca_file = _copy_ca(stack, "envoy", tmp_path)
    ca = ca_file.read_bytes()
    assert ca == _ca(stack, "serve"), "the CA copied out is not the one the services read"

    # The published edge serves HTTPS only: its certificate is the stack's CA's for 127.0.0.1 and
    # localhost, HTTP/2 and HTTP/1.1 by ALPN; plain HTTP and plaintext gRPC get nothing.
    assert (_edge_alpn(edge, ca, ["h2", "http/1.1"]), _edge_alpn(edge, ca, ["http/1.1"])) == ("h2", "http/1.1")
    plain_edge = _edge_refuses_plaintext(edge)
    # serve speaks gRPC over TLS only, as `serve` (the name Envoy validates): plaintext gets no
    # answer, and its certificate does not pass for another name.
    assert _health(server) == "UNAVAILABLE", "serve answers plaintext gRPC"
    assert _health(server, grpc.ssl_channel_credentials(ca), "serve") == "SERVING"
    assert _health(server, grpc.ssl_channel_credentials(ca), "replay") == "UNAVAILABLE", "serve's certificate passes for another name"

    # Nothing was prepared: secrets-init made the project's secrets, random, and the server holds
    # its control token: a wrong one is refused, the one from the volume works.
    token = stack.control_token = _secret(stack, "serve", "mbostream-control-token")
    assert re.fullmatch(r"[0-9a-f]{48}", token), "the control token is not a fresh 192-bit token"
    assert _secret(stack, "influxdb", "influxdb-token") not in {token, ""}
    with pytest.raises(grpc.RpcError) as refused:
        _control(edge, ca, "Pause", token[::-1])
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value

    # GetBook through Envoy's published port (HTTPS, then TLS to serve) equals GetBook on the
    # server, replay paused.
    _control(edge, ca, "Pause", token)
    time.sleep(1)
    assert _get_books(_channel(edge, ca)) == _get_books(_channel(server, ca, "serve"))
    _control(edge, ca, "Resume", token)

    # One GetBook through Envoy with the caller's traceparent: the collector receives the trace,
    # with Envoy's span and the server's.
    trace_id = os.urandom(16).hex()
    with _channel(edge, ca) as channel:
        stub = market_data_pb2_grpc.MarketDataServiceStub(channel)
        instrument = stub.ListInstruments(market_data_pb2.ListInstrumentsRequest(), timeout=RPC_TIMEOUT).instruments[0]
        request = market_data_pb2.GetBookRequest(instrument_id=instrument.instrument_id)
        stub.GetBook(request, timeout=RPC_TIMEOUT, metadata=(("traceparent", f"00-{trace_id}-{os.urandom(8).hex()}-01"),))
    get_book = "mbostream.v1.MarketDataService/GetBook"
    spans = _wait(
        "the GetBook trace in the collector",
        lambda: (s := _collected_spans(stack, trace_id)) and "mbostream-edge" in s and get_book in s.get("mbostream", ()) and s,
        timeout=60,
    )

    # The UI is served by Envoy over HTTPS on the same port (as localhost and as 127.0.0.1), and in
    # Chromium it shows the books live over gRPC-Web, loses the stream when Envoy restarts,
    # reconnects and shows them updating again.
    port = edge.rsplit(":", 1)[1]
    assert b"<html" in _https_get(f"https://localhost:{port}/", ca).lower()
    browser = _browse_through_envoy_restart(stack, f"https://{edge}/", ca, tmp_path)
    # Its book streams went to serve's native book port (MBOSTREAM_BOOK_PORT), over TLS.
    book_streams = _envoy_counter(stack, "cluster.mbostream_books.upstream_rq_total")
    assert book_streams >= 1 and _envoy_counter(stack, "cluster.mbostream_books.ssl.handshake") >= 1, book_streams

    # Prometheus reports every target up (the server's metrics and its own).
    prometheus = stack.published("prometheus", 9090)
    targets = _wait("Prometheus: every target up", lambda: (t := _prometheus_targets(prometheus)) and all(x["health"] == "up" for x in t) and t)
    assert {t["labels"]["job"] for t in targets} == {"mbostream", "prometheus"}

    # Points arrive in InfluxDB (written by serve's storage with the token from the secret), over
    # HTTPS: InfluxDB serves nothing in plain HTTP, and its certificate is the stack's CA's for `influxdb`.
    influx = stack.published("influxdb", 8086)
    _wait("trades in InfluxDB", lambda: _influx_count(influx, ca, "trades") > 0)
    plain_influx = _influx_refuses_plain_http(influx)
    wal_repair = _influx_wal_repaired_at_start(stack, influx, ca)

    # Envoy restarts under a live stream: the client (TLS, trusting the copied CA) reconnects and
    # resumes with no gap.
    stats, received = asyncio.run(asyncio.wait_for(_follow_through(edge, ca_file, lambda: stack.run("restart", "envoy")), 300))
    assert stats.resumes >= 1 and stats.rebuilds == 0, stats
    _assert_no_gap(received)
    print(f"compose test: default profile up --wait {up_seconds:.0f} s; envoy restart: {stats}; trace {trace_id}: {spans}")
    print(f"compose test: the UI in Chromium through Envoy: {browser}")
    print(f"compose test: plain HTTP to the edge: {plain_edge}; to InfluxDB: {plain_influx}")
    print(f"compose test: InfluxDB's start after a torn WAL entry: {wal_repair}")


def test_secrets_are_random_per_project_and_yours_win(stack: Stack, tmp_path: Path) -> None:
    """A second project's secrets-init makes other tokens and another CA, its edge certificate
    naming EDGE_TLS_NAMES too; a file in MBOSTREAM_SECRETS_DIR replaces its secret, a ``tls/``
    folder there the TLS set; a second run keeps what the volumes hold."""
    assert stack.control_token, "test_default_profile did not read the first project's token"
    other = f"{PROJECT}-secrets"
    mine = tmp_path / "mine"
    mine.mkdir()
    extra_names = "mbostream.example.net,192.0.2.10"
    env = {**stack.env, "COMPOSE_PROJECT_NAME": other, "MBOSTREAM_SECRETS_DIR": str(mine), "EDGE_TLS_NAMES": extra_names}
    dump = "import json, pathlib, sys; print(json.dumps({p.name: p.read_text() for p in pathlib.Path(sys.argv[1]).iterdir()}))"

    def volume(name: str) -> dict[str, str]:
        cmd = ["run", "--rm", "--network", "none", "-v", f"{name}:/s:ro", "--entrypoint", "python3"]
        return dict(json.loads(stack.docker(*cmd, stack.env["MBOSTREAM_IMAGE"], "-c", dump, "/s")))

    def made(edge_names: str = extra_names) -> tuple[dict[str, str], dict[str, str]]:
        _run(stack.compose_cmd("up", "--no-build", "secrets-init"), env={**env, "EDGE_TLS_NAMES": edge_names}, timeout=120)
        return {k: v.strip() for k, v in volume(f"{other}_secrets").items()}, volume(f"{other}_certs")

    secrets_init = _secrets_init()
    ours = volume(f"{PROJECT}_certs")
    try:
        first, first_tls = made()
        assert set(first) == {"mbostream-control-token", "influxdb-token", "influxdb-admin-password", "grafana-admin-password"}
        assert len(set(first.values())) == 4 and stack.control_token not in first.values(), "secrets repeat"
        # The TLS set: a CA of this project's, every server's certificate signed by it for its names.
        assert set(first_tls) == set(ours) == set(secrets_init.CERT_FILES)
        assert first_tls["ca.crt"] != ours["ca.crt"], "two projects share a CA"
        ca = x509.load_pem_x509_certificate(first_tls["ca.crt"].encode())
        expected = {**secrets_init.SERVERS, "edge": ("localhost", "127.0.0.1", "mbostream.example.net", "192.0.2.10")}
        assert set(expected) >= {"serve", "edge"}
        for server, names in expected.items():
            leaf, issuer = x509.load_pem_x509_certificates(first_tls[f"{server}.crt"].encode())
            leaf.verify_directly_issued_by(ca)
            assert issuer == ca, f"{server}.crt does not carry its CA after the leaf"
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert [str(name.value) for name in sans] == list(names), server
        # The edge's addresses are IP SANs (browsers match an address only against those).
        edge_ips = x509.load_pem_x509_certificate(first_tls["edge.crt"].encode()).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert [str(ip) for ip in edge_ips.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "192.0.2.10"]
        # A current set is kept; one naming other edge names than EDGE_TLS_NAMES is replaced (a new CA).
        assert made()[1] == first_tls, "a current TLS set was not kept"
        renamed = made("")[1]
        assert renamed["ca.crt"] != first_tls["ca.crt"], "a set naming other edge names was kept"
        edge_sans = x509.load_pem_x509_certificates(renamed["edge.crt"].encode())[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert [str(name.value) for name in edge_sans.value] == ["localhost", "127.0.0.1"]
        (mine / "mbostream-control-token").write_text("operator-chosen-token-1234\n")
        (mine / "mbostream-control-token").chmod(0o644)
        # The operator's TLS set (here the first project's), readable by secrets-init's uid.
        (mine / "tls").mkdir(mode=0o755)
        for name, text in ours.items():
            (mine / "tls" / name).write_text(text)
            (mine / "tls" / name).chmod(0o644)
        second, second_tls = made()
        assert second == {**first, "mbostream-control-token": "operator-chosen-token-1234"}
        assert second_tls == ours
        # An incomplete set is refused (a mix of two CAs would fail at every handshake instead).
        (mine / "tls" / "nats.key").unlink()
        _run(stack.compose_cmd("up", "--no-build", "secrets-init"), env=env, timeout=120, check=False)
        exited = _run(stack.compose_cmd("ps", "--all", "--format", "{{.ExitCode}}", "secrets-init"), env=env, timeout=60).strip()
        logs = _run(stack.compose_cmd("logs", "--no-color", "secrets-init"), env=env, timeout=60)
        assert exited == "1" and "missing: nats.key" in logs, (exited, logs[-2000:])
    finally:
        _run(stack.compose_cmd("down", "--volumes", "--timeout", "5"), env=env, timeout=120, check=False)


#: Run in the gateway-1 container (python3 -c): the cluster network's hops seen from inside it.
#: NATS in plaintext, in TLS without a client certificate and with the roles' one (each: did a PING
#: get its PONG, and what came back); the replayer's gRPC in plaintext; one JSON line.
TLS_PROBE: Final = r"""
import json, socket, ssl
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
T = "/run/mbostream/tls/"
PING = b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n'

def exchange(sock):
    sock.sendall(PING)
    reply = b""
    try:
        while b"PONG" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
    except OSError as exc:
        reply += f" [{exc!r}]".encode()
    return reply.decode(errors="replace")

def nats(client_cert):
    with socket.create_connection(("nats", 4222), timeout=10) as raw:
        info = raw.recv(65536).decode(errors="replace")
        if client_cert is None:
            return {"info": info, "reply": exchange(raw)}
        context = ssl.create_default_context(cafile=T + "ca.crt")
        if client_cert:
            context.load_cert_chain(T + "nats-client.crt", T + "nats-client.key")
        try:
            with context.wrap_socket(raw, server_hostname="nats") as tls:
                return {"info": info, "reply": exchange(tls)}
        except (ssl.SSLError, OSError) as exc:
            return {"info": info, "reply": f"[{exc!r}]"}

def replay_plaintext():
    with grpc.insecure_channel("replay:50051") as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return "SERVING"
        except grpc.RpcError as exc:
            return exc.code().name

print(json.dumps({"plain": nats(None), "no_cert": nats(False), "cert": nats(True), "replay_plaintext": replay_plaintext()}))
"""


def _health(address: str, credentials: grpc.ChannelCredentials | None = None, server_name: str = "") -> str:
    """``Health/Check`` on ``address``: the status name, or the RPC's error code name."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = grpc.secure_channel(address, credentials, options=options) if credentials else grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _prometheus_value(address: str, query: str) -> float:
    """The first sample of an instant query, 0 when there is none."""
    url = f"http://{address}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        result = json.load(response)["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def test_cluster_profile_gateway_killed(stack: Stack, tmp_path: Path) -> None:
    started = time.monotonic()
    stack.up(profile="cluster")
    up_seconds = time.monotonic() - started
    edge = stack.published("envoy-cluster", 8080, profile="cluster")
    # The cluster's edge serves HTTPS only, with the same CA's certificate as the default edge.
    ca_file = _copy_ca(stack, "envoy-cluster", tmp_path, profile="cluster")
    assert b"<html" in _https_get(f"https://{edge}/", ca_file.read_bytes()).lower()
    plain_edge = _edge_refuses_plaintext(edge)
    prometheus = stack.published("prometheus", 9090, profile="cluster")
    jobs = {"mbostream", "mbostream-replay", "mbostream-gateway", "mbostream-store", "prometheus"}
    _wait(
        "Prometheus: every cluster target up",
        lambda: (t := _prometheus_targets(prometheus)) and {x["labels"]["job"] for x in t} == jobs and all(x["health"] == "up" for x in t),
    )

    # TLS on the cluster's hops. NATS: a plaintext client is told TLS is required and never
    # answered; a TLS client without a certificate of the CA is refused (mTLS); the roles' one works.
    probe = json.loads(stack.run("exec", "-T", "gateway-1", "python3", "-c", TLS_PROBE, profile="cluster"))
    assert '"tls_required":true' in probe["plain"]["info"] and "PONG" not in probe["plain"]["reply"], probe["plain"]
    assert "PONG" not in probe["no_cert"]["reply"], probe["no_cert"]
    assert "PONG" in probe["cert"]["reply"], probe["cert"]
    # The replayer and the gateways serve gRPC over TLS only: plaintext gets no answer; TLS verified
    # by the stack's CA gets one for the gateways' names, and a certificate for another name is refused.
    assert probe["replay_plaintext"] == "UNAVAILABLE", probe
    ca = _ca(stack, "gateway-1", profile="cluster")
    for service, name in (("gateway-1", "gateway-1"), ("gateway-2", "gateways")):
        address = stack.published(service, 50051, profile="cluster")
        assert _health(address) == "UNAVAILABLE", f"{service} answers plaintext gRPC"
        assert _health(address, grpc.ssl_channel_credentials(ca), name) == "SERVING", service
        assert _health(address, grpc.ssl_channel_credentials(ca), "replay") == "UNAVAILABLE", f"{service}'s certificate passes for the replayer"
    # Envoy -> replayer over TLS (validated by the CA, as `replay`): a control call through the edge.
    token = _secret(stack, "gateway-1", "mbostream-control-token", profile="cluster")
    with _channel(edge, ca) as channel:
        status = replay_pb2_grpc.ReplayServiceStub(channel).GetStatus(
            replay_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT, metadata=(("authorization", f"Bearer {token}"),)
        )
    assert status.status.records_done > 0, status
    # StreamBook through the cluster's edge goes to a gateway's native book port, over TLS.
    with _channel(edge, ca) as channel:
        stream = market_data_pb2_grpc.MarketDataServiceStub(channel).StreamBook(market_data_pb2.StreamBookRequest(depth=5), timeout=RPC_TIMEOUT)
        first = next(stream)
        stream.cancel()
    assert first.is_snapshot and (first.book.bids or first.book.asks), first
    book_streams = _envoy_counter(stack, "cluster.mbostream_books.upstream_rq_total", "envoy-cluster", "cluster")
    assert book_streams >= 1 and _envoy_counter(stack, "cluster.mbostream_books.ssl.handshake", "envoy-cluster", "cluster") >= 1

    def kill_each_gateway() -> None:
        # One of the two carries the stream: kill the first, start it again (Docker's restart policy
        # does not restart a container stopped by `docker kill`) and wait until it is healthy, i.e.
        # caught up; then kill the second, so the stream loses its gateway either way.
        first = stack.run("ps", "-q", "gateway-1", profile="cluster").strip()
        stack.docker("kill", first)
        stack.run("start", "gateway-1", profile="cluster")
        _wait("gateway-1 healthy again", lambda: json.loads(stack.docker("inspect", first))[0]["State"].get("Health", {}).get("Status") == "healthy", timeout=120)
        stack.docker("kill", stack.run("ps", "-q", "gateway-2", profile="cluster").strip())

    stats, received = asyncio.run(asyncio.wait_for(_follow_through(edge, ca_file, kill_each_gateway), 600))
    assert stats.resumes >= 1 and stats.rebuilds == 0, stats
    # secrets-init ran again with this `up` and kept the project's token (InfluxDB has it already).
    assert _secret(stack, "gateway-1", "mbostream-control-token", profile="cluster") == stack.control_token
    _assert_no_gap(received)
    # The store writes to InfluxDB over HTTPS (serve writes there too: the store's own counter says
    # the database acknowledged its points), and InfluxDB holds the trades.
    influx = stack.published("influxdb", 8086, profile="cluster")
    _wait("the store's points acknowledged by InfluxDB", lambda: _prometheus_value(prometheus, 'mbostream_storage_points_written_total{job="mbostream-store"}') > 0)
    _wait("trades in InfluxDB", lambda: _influx_count(influx, ca, "trades") > 0)
    print(f"compose test: cluster profile up --wait {up_seconds:.0f} s; gateways killed: {stats}")
    print(f"compose test: TLS probes from gateway-1: {probe}; plain HTTP to the cluster's edge: {plain_edge}")


def test_down_leaves_nothing(stack: Stack) -> None:
    stack.run("down", "--volumes", "--timeout", "10", profile="cluster")
    assert stack.leftovers() == []
