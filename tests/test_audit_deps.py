"""scripts/audit-deps and scripts/sbom, the real scripts and tools: honest lines, never a clean
result they did not get, and CycloneDX SBOMs that list real components.

The first run builds govulncheck, vulndb's cmd/indexdb and the offline database, and installs the
SBOM tools (cached by version under ~/.cache/mbostream/); later runs reuse them. scripts/test
builds the SBOM tools in the background while the rest of the suite runs and runs this file near
the end (tests/conftest.py RUN_LAST): the ``sbom_tools`` fixture waits for that build (the
installer's lock), and the tests' own timeouts (``func_only``) bound their work, not that wait.

The images' SBOMs are tested on a small image made here from a root filesystem that holds what
syft reads in our real images: Debian's package database (this machine's), a Go binary of ours
(mbostream-load) and a Python package's dist-info (grpcio, from the venv). It is packed as a
``docker save`` archive by hand, and imported into a private engine (scripts/docker-test-env) to
be read by name, as scripts/sbom reads the images tests/test_compose.py builds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest

from mbostream.tools.bench_e2e import _go_load_binary
from server_harness import repo

#: Building govulncheck, indexdb (many modules) and the database on a fresh machine, then auditing.
AUDIT_TIMEOUT = 1500
#: Longest the SBOM tools' install (or the wait for scripts/test's background build of them) may take.
SBOM_TOOLS_TIMEOUT = 3600
DOCKER = "/usr/bin/docker"  # Debian's client, matching its dockerd (as tests/test_compose.py)
PROBE_IMAGE = "mbostream-sbom-probe:1"


@pytest.fixture(scope="module", autouse=True)
def sbom_tools() -> list[Path]:
    """The SBOM tools installed: at once when cached, else built (or waited for, see above)."""
    out = subprocess.run(
        [str(repo() / "scripts" / "install-sbom-tools")], capture_output=True, text=True, timeout=SBOM_TOOLS_TIMEOUT
    )
    assert out.returncode == 0, f"scripts/install-sbom-tools failed:\n{out.stderr[-3000:]}"
    assert all(Path(line).is_file() for line in out.stdout.splitlines()) and len(out.stdout.splitlines()) == 4, out.stdout
    return [Path(line) for line in out.stdout.splitlines()]


def _names(sbom_file: Path) -> set[str]:
    """Component names of a CycloneDX JSON SBOM, after checking it is one."""
    doc = json.loads(sbom_file.read_text())
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"].startswith("1."), sbom_file
    return {component["name"] for component in doc.get("components", [])}


def _probe_rootfs(root: Path) -> Path:
    """A root filesystem with a Debian package database, a Go binary and a Python dist-info."""
    (root / "etc").mkdir(parents=True)
    shutil.copy("/etc/os-release", root / "etc" / "os-release")
    (root / "var/lib/dpkg").mkdir(parents=True)
    shutil.copy("/var/lib/dpkg/status", root / "var/lib/dpkg" / "status")
    (root / "usr/local/bin").mkdir(parents=True)
    shutil.copy(_go_load_binary(), root / "usr/local/bin" / "mbostream-load")
    dist = importlib.metadata.distribution("grpcio")
    info = Path(str(dist.locate_file(f"grpcio-{dist.version}.dist-info")))
    site = root / "usr/local/lib/python3.11/site-packages"
    site.mkdir(parents=True)
    shutil.copytree(info, site / info.name)
    return root


def _docker_archive(rootfs: Path, out: Path, tag: str) -> Path:
    """``rootfs`` as a one-layer image in the ``docker save`` layout (docker-archive)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for path in sorted(rootfs.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(rootfs)), recursive=False)
    layer_bytes = layer.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created_by": "tests/test_audit_deps.py"}],
    }).encode()  # fmt: skip
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in ((f"{diff_id}/layer.tar", layer_bytes), (config_name, config), ("manifest.json", manifest)):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return out


def _dpkg_names() -> set[str]:
    """The packages this machine's dpkg database lists (what the probe image carries)."""
    text = Path("/var/lib/dpkg/status").read_text()
    return set(re.findall(r"^Package: (\S+)$", text, re.MULTILINE))


@pytest.mark.timeout(AUDIT_TIMEOUT + 120, func_only=True)
def test_audit_deps_says_what_it_checked_and_what_it_could_not(tmp_path: Path) -> None:
    out = tmp_path / "out"
    archive = _docker_archive(_probe_rootfs(tmp_path / "rootfs"), tmp_path / "probe.tar", PROBE_IMAGE)
    env = {**os.environ, "MBOSTREAM_SBOM_IMAGES": str(archive)}
    proc = subprocess.run(
        [str(repo() / "scripts" / "audit-deps"), str(out)], capture_output=True, text=True, timeout=AUDIT_TIMEOUT, env=env
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode in (0, 1), (proc.returncode, proc.stdout, proc.stderr)

    # Go: audited against the offline database, with the number of advisories it holds.
    go = [line for line in lines if "Go module clients/go" in line]
    assert len(go) == 1, proc.stdout
    advisories = re.search(r"offline database of (\d+) advisories", go[0])
    assert advisories and int(advisories[1]) > 1000, go[0]
    findings = (out / "govulncheck.json").read_text()
    assert '"config"' in findings and "file://" in findings  # govulncheck really ran, on our database
    vulnerable = go[0].startswith("VULNERABLE:")
    assert go[0].startswith("checked:") or vulnerable
    assert (proc.returncode == 1) == any(line.startswith("VULNERABLE:") for line in lines)

    # The audits whose databases are out of reach: "not checked", never a clean result.
    for tool in ("(pip-audit)", "(npm audit)", "(cargo audit)"):
        line = next(line for line in lines if tool in line)
        assert line.startswith("not checked: "), line
    assert "No known vulnerabilities found" not in proc.stdout
    assert "found 0 vulnerabilities" not in proc.stdout

    # SBOMs: CycloneDX documents listing real components.
    python_sbom = json.loads((out / "sbom-python.cdx.json").read_text())
    assert python_sbom["bomFormat"] == "CycloneDX"
    names = {component["name"] for component in python_sbom["components"]}
    assert {"grpcio", "protobuf", "cryptography"} <= names
    web_sbom = json.loads((out / "sbom-web.cdx.json").read_text())
    assert web_sbom["bomFormat"] == "CycloneDX" and len(web_sbom["components"]) > 10

    # The Rust crates: one SBOM per crate of the workspace; the extension crate depends on PyO3.
    rust = sorted(out.glob("sbom-rust-*.cdx.json"))
    assert any(line.startswith("sbom: Rust crates of server/Cargo.lock") for line in lines), proc.stdout
    cargo = tomllib.loads((repo() / "server" / "Cargo.toml").read_text())
    crates = [cargo["package"]["name"]] + [
        tomllib.loads((repo() / "server" / member / "Cargo.toml").read_text())["package"]["name"]
        for member in cargo["workspace"]["members"]
    ]
    assert sorted(f.name for f in rust) == sorted(f"sbom-rust-{name}.cdx.json" for name in crates), rust
    rust_names = set().union(*(_names(f) for f in rust))
    assert {"pyo3", "mbostream-book", "mbostream-wire"} <= rust_names, rust_names
    assert not list((repo() / "server").glob("**/*.cdx.json")), "cargo-cyclonedx wrote into the tree"

    # The image named in MBOSTREAM_SBOM_IMAGES (here a docker save archive).
    image_lines = [line for line in lines if line.startswith("sbom: image archive")]
    assert len(image_lines) == 1, proc.stdout
    image_names = _names(out / "sbom-image-probe.cdx.json")
    assert {"dpkg", "grpcio", "google.golang.org/grpc"} <= image_names, sorted(image_names)[:50]


@pytest.mark.timeout(300, func_only=True)
def test_sbom_of_an_image_by_name_in_a_private_engine_and_of_a_root_filesystem(tmp_path: Path) -> None:
    """scripts/sbom on an image in the engine (saved, then read offline) and on a folder."""
    rootfs = _probe_rootfs(tmp_path / "rootfs")
    archive = _docker_archive(rootfs, tmp_path / "probe.tar", PROBE_IMAGE)
    engine = Path(f"/tmp/sbom-{os.getpid()}")  # short: unix socket paths are limited
    env_script = repo() / "scripts" / "docker-test-env"
    started = subprocess.run([str(env_script), "start", str(engine)], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        env = {**os.environ, **dict([started.stdout.strip().split("=", 1)]), "DOCKER": DOCKER}
        # `docker load` of the hand-made archive: the engine holds the image under its tag.
        subprocess.run([DOCKER, "load", "--input", str(archive)], env=env, check=True, capture_output=True, timeout=120)
        by_name = subprocess.run(
            [str(repo() / "scripts" / "sbom"), PROBE_IMAGE, str(tmp_path / "image.cdx.json")],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert by_name.returncode == 0, by_name.stderr
        assert by_name.stdout.startswith(f"sbom: image {PROBE_IMAGE} -> "), by_name.stdout
        missing = subprocess.run(
            [str(repo() / "scripts" / "sbom"), "mbostream-no-such-image:0", str(tmp_path / "none.cdx.json")],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert missing.returncode != 0 and "cannot save image" in missing.stderr, missing
    finally:
        subprocess.run([str(env_script), "stop", str(engine)], capture_output=True, timeout=120)
        shutil.rmtree(engine, ignore_errors=True)
    names = _names(tmp_path / "image.cdx.json")
    dpkg = _dpkg_names()
    assert {"dpkg", "libc6"} <= dpkg  # what the probe carries: this machine's Debian packages
    assert {"dpkg", "libc6", "grpcio", "google.golang.org/grpc"} <= names, sorted(names)[:50]
    assert len(names & dpkg) >= len(dpkg) * 0.9  # (nearly) every package of the database

    folder = subprocess.run(
        [str(repo() / "scripts" / "sbom"), str(rootfs), str(tmp_path / "rootfs.cdx.json")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert folder.returncode == 0, folder.stderr
    assert {"dpkg", "grpcio", "google.golang.org/grpc"} <= _names(tmp_path / "rootfs.cdx.json")


@pytest.mark.timeout(600, func_only=True)
def test_a_cached_cyclonedx_py_that_cannot_start_is_installed_again(tmp_path: Path, sbom_tools: list[Path]) -> None:
    """Stop 27's CI: cyclonedx-py cached in a venv whose interpreter link had been deleted (.ci/run's
    temporary toolchain links) passed the installer's "is it there" check and then failed to start.
    The installer now checks the venv starts, and makes venvs with the interpreter's real path."""
    cache = tmp_path / "cache" / "mbostream"
    cache.mkdir(parents=True)
    # The other three tools as cached (links to the real ones: nothing else is rebuilt).
    cyclonedx_py, cyclonedx_npm, cargo_cyclonedx, syft = sbom_tools
    for tool_dir in (cyclonedx_npm.parents[2], cargo_cyclonedx.parents[1], syft.parent):
        (cache / tool_dir.name).symlink_to(tool_dir)
    # cyclonedx-py as the CI found it: executable, its interpreter gone.
    dead = cache / cyclonedx_py.parents[1].name / "bin"
    dead.mkdir(parents=True)
    (dead / "python").symlink_to(tmp_path / "gone" / "python3")
    (dead / "cyclonedx-py").write_text(f"#!{dead / 'python'}\n")
    (dead / "cyclonedx-py").chmod(0o755)

    out = subprocess.run([str(repo() / "scripts" / "install-sbom-tools")], capture_output=True, text=True,
                         timeout=540, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "install-sbom-tools: cyclonedx-bom" in out.stderr  # installed again, not taken from the cache
    tool = Path(out.stdout.splitlines()[0])
    assert tool == dead / "cyclonedx-py"
    version = subprocess.run([str(tool), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "7.5.0" in version.stdout + version.stderr, version
    assert "npm" not in out.stderr and "cargo-cyclonedx" not in out.stderr and "syft" not in out.stderr, out.stderr
