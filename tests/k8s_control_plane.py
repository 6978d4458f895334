"""A real Kubernetes control plane on 127.0.0.1 for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes whose pods become Running and Ready without a container runtime),
built by scripts/install-k8s-control-plane (cached by version) and reached with its kubectl.

Everything lives under one temporary folder: the certificates (a CA, the API server's serving
certificate, an admin client certificate in ``system:masters``, the service-account key), the
kubeconfig, etcd's data and each component's log. Every process is stopped by PID by ``stop``.
No address outside 127.0.0.1 is ever contacted: the Service and pod ranges below are only numbers
the API server and kwok hand out (no kube-proxy, no kubelet, no container runtime).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import IO, Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from k8s_tools import REPO
from server_harness import free_port

#: The zones of the fake nodes: prod's gateways spread across zones with ``DoNotSchedule``.
ZONES: Final = ("zone-a", "zone-b", "zone-c")
#: Each fake node's capacity: room for every overlay's pods at once (prod's gateways ask 2 CPUs each).
NODE_CAPACITY: Final = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"}
#: The annotation kwok manages nodes by.
KWOK_ANNOTATION: Final = "kwok.x-k8s.io/node"
#: Upper bound of one kubectl call.
KUBECTL_TIMEOUT: Final = 120.0


@cache
def control_plane_binaries() -> dict[str, str]:
    """``{"etcd": path, "kube-apiserver": path, ..., "kwok-stages": file}``, building what is missing
    (cold, about 5.5 min and 620 CPU-s alone on 2 idle cores; instant once cached)."""
    out = subprocess.run(
        [str(REPO / "scripts" / "install-k8s-control-plane")], capture_output=True, text=True, timeout=3600
    )
    assert out.returncode == 0, f"scripts/install-k8s-control-plane failed:\n{out.stderr[-3000:]}"
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: x509.ObjectIdentifier | None = None,
    names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """A one-day certificate: self-signed CA when ``issuer`` is None, else a leaf for ``usage``."""
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signer = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write_pki(folder: Path) -> None:
    """ca.crt, apiserver.{crt,key}, admin.{crt,key} (``system:masters``) and sa.{key,pub} in ``folder``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mbostream-test-ca")])
    ca = _certificate(ca_name, ca_key, None)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes.default.svc"),
    ]
    leaves = {
        "apiserver": (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]), ExtendedKeyUsageOID.SERVER_AUTH, server_names),
        "admin": (
            x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "mbostream-test-admin"),
            ]),
            ExtendedKeyUsageOID.CLIENT_AUTH,
            None,
        ),
    }  # fmt: skip
    for name, (subject, usage, names) in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(subject, key, (ca_name, ca_key), usage=usage, names=names)
        (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(_pem_key(key))
    service_account_key = ec.generate_private_key(ec.SECP256R1())
    (folder / "sa.key").write_bytes(_pem_key(service_account_key))
    (folder / "sa.pub").write_bytes(
        service_account_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok under ``folder``.

    ``start`` returns once the API server is ready and every fake node (one per zone of ``ZONES``)
    is Ready; ``stop`` ends every process it started, by PID, in reverse order.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.binaries = control_plane_binaries()
        self.kubeconfig = folder / "admin.kubeconfig"
        self.processes: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, timeout: float = 180) -> ControlPlane:
        deadline = time.monotonic() + timeout
        pki = self.folder / "pki"
        pki.mkdir(parents=True)
        _write_pki(pki)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self._write_kubeconfig(pki, api_port)
        self._spawn("etcd", [
            "--name=test", f"--data-dir={self.folder / 'etcd'}", "--unsafe-no-fsync",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}", f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=test=http://127.0.0.1:{peer_port}", "--log-level=warn",
        ])  # fmt: skip
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--cert-dir={self.folder / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            # No kubelet, no kube-proxy: the `kubernetes` Service gets no endpoints.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ])  # fmt: skip
        self._wait(deadline, "kube-apiserver ready", lambda: self.kubectl("get", "--raw=/readyz", check=False).returncode == 0)
        common = [
            f"--kubeconfig={self.kubeconfig}", f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}", "--bind-address=127.0.0.1", "--leader-elect=false",
        ]  # fmt: skip
        self._spawn("kube-controller-manager", [
            *common, f"--secure-port={free_port()}", f"--cert-dir={self.folder / 'controller-manager-certs'}",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            # The HPA raises a Deployment to minReplicas without metrics; check it every second.
            "--horizontal-pod-autoscaler-sync-period=1s",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            *common, f"--secure-port={free_port()}", f"--cert-dir={self.folder / 'scheduler-certs'}",
        ])  # fmt: skip
        self._spawn("kwok", [
            f"--kubeconfig={self.kubeconfig}", f"--config={self.binaries['kwok-stages']}",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40", "--node-ip=127.0.0.1", f"--server-address=127.0.0.1:{free_port()}",
        ])  # fmt: skip
        # Created, not applied: a Node keeps the status it is created with (its capacity), and the
        # API server does not create nodes through an apply.
        self.kubectl("create", "-f", "-", input="\n".join(json.dumps(self._node(zone)) for zone in ZONES))
        self._wait(deadline, "fake nodes Ready", self._nodes_ready)
        # The default ServiceAccount (made by the controller-manager) must exist before pods can be.
        self._wait(deadline, "ServiceAccount default/default", lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0)
        return self

    def stop(self) -> None:
        """Ends every process this control plane started (SIGTERM, then SIGKILL after 10 s), newest first."""
        for _name, process, log in reversed(self.processes):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait(10)
            log.close()
        self.processes.clear()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = KUBECTL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Runs this cluster's kubectl; with ``check``, asserts it succeeded."""
        result = subprocess.run(
            [self.binaries["kubectl"], f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert not check or result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr[-3000:]}"
        return result

    def get(self, *args: str) -> dict[str, Any]:
        """``kubectl get ... -o json``, parsed."""
        loaded: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return loaded

    def apply_objects(self, objects: list[dict[str, Any]]) -> None:
        """Server-side applies ``objects`` (JSON is YAML)."""
        self.kubectl("apply", "--server-side", "--field-manager=mbostream-test", "-f", "-",
                     input="\n".join(json.dumps(o) for o in objects))  # fmt: skip

    def logs(self) -> str:
        """The last lines of every component's log (for an assertion message)."""
        return "\n".join(f"--- {name}:\n" + (self.folder / f"{name}.log").read_text()[-2000:] for name, _, _ in self.processes)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        process = subprocess.Popen([self.binaries[name], *args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append((name, process, log))

    def _wait(self, deadline: float, what: str, done: Any) -> None:
        while not done():
            for name, process, _ in self.processes:
                assert process.poll() is None, f"{name} exited ({process.returncode}) waiting for {what}:\n{self.logs()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.logs()}"
            time.sleep(0.5)

    def _nodes_ready(self) -> bool:
        nodes = self.get("nodes")["items"]
        ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))]
        return len(ready) == len(ZONES)

    def _write_kubeconfig(self, pki: Path, port: int) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": f"https://127.0.0.1:{port}", "certificate-authority": str(pki / "ca.crt")}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        }
        self.kubeconfig.write_text(json.dumps(config))

    @staticmethod
    def _node(zone: str) -> dict[str, Any]:
        """A fake node in ``zone``, managed by kwok (no taint: every pod may land on it)."""
        name = f"kwok-{zone}"
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "topology.kubernetes.io/zone": zone,
                    "type": "kwok",
                },
            },
            "status": {"allocatable": NODE_CAPACITY, "capacity": NODE_CAPACITY},
        }
