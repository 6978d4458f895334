"""Test-only InfluxDB: a real InfluxDB 1.8 (``influxd``), written to through its 2.x API.

InfluxDB 1.8 serves the 2.x compatibility endpoints: ``/api/v2/write`` (``bucket=DB`` or ``DB/RP``,
``Authorization: Token USER:PASSWORD``) takes the storage sink's ``influxdb-client`` writes as they
are, and ``/api/v2/query`` runs Flux (when started with ``flux=True``: Flux slows every start by
seconds). Authentication is on, so a sink sending a wrong token is refused. Tests read the engine
back with InfluxQL (``/query``, ``epoch=ns``) to compare what it stored value for value, and run
the docs' Flux examples with ``influxdb-client``'s query API.

The binary is InfluxDB 1.8.10 as built by ``scripts/install-influxd`` (``$MBOSTREAM_INFLUXD``
overrides it). A missing binary is an error naming that script, never a skip; an ``influxd``
without the 2.x API (Debian's 1.6 on PATH is never looked at) is refused at start.

The process runs on 127.0.0.1 free ports in its own session and is stopped by PID; every wait has a
timeout, and the child gets SIGTERM if the test process dies without stopping it. Also runnable:
``python tests/influx/harness.py -- COMMAND...`` starts the engine, runs COMMAND with
``INFLUX_URL``/``INFLUX_ORG``/``INFLUX_BUCKET``/``INFLUX_TOKEN`` set (and ``MBOSTREAM_INFLUXQL_URL``,
the same engine, for the bench's stored counts), and stops it.
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

from mbostream.storage.influx_wal import repair_wal

#: The repair compose.yaml runs in the influxdb container before every start (Perl: that image has
#: no Python); the same cut as ``mbostream storage repair-wal``.
DEPLOYED_REPAIR: Final = Path(__file__).resolve().parents[2] / "docker" / "influxdb" / "repair-wal"

HERE: Final = Path(__file__).resolve().parent
START_TIMEOUT_SECONDS: Final = 90.0  # a start with Flux takes ~20 s on two busy cores
STOP_TIMEOUT_SECONDS: Final = 10.0
REQUEST_TIMEOUT_SECONDS: Final = 30.0
POLL_SECONDS: Final = 0.05
INFLUXD_VERSION: Final = "1.8.10"
INFLUXD_VARIABLE: Final = "MBOSTREAM_INFLUXD"
INSTALL_SCRIPT: Final = "scripts/install-influxd"
TEST_ORG: Final = "mbostream"  # 1.8 ignores the org; the sink requires one, as 2.x does
TEST_USER: Final = "mbostream"
TEST_PASSWORD: Final = "test-password-not-a-secret"
#: A 2.x token as 1.8 reads it: ``USER:PASSWORD`` of a 1.x user.
TEST_TOKEN: Final = f"{TEST_USER}:{TEST_PASSWORD}"


def python_repair_cuts(wal_dir: Path) -> list[str]:
    """``mbostream storage repair-wal`` on ``wal_dir``: one line per segment it cut."""
    return [repair.describe() for repair in repair_wal(wal_dir)]


def deployed_repair_cuts(wal_dir: Path) -> list[str]:
    """``DEPLOYED_REPAIR`` on ``wal_dir``: one line per segment it cut (exit 0, nothing on stderr,
    and its last line the directory's count of them, or AssertionError)."""
    run = subprocess.run([str(DEPLOYED_REPAIR), str(wal_dir)], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0 and not run.stderr, run
    *cuts, summary = run.stdout.splitlines()
    assert summary == f"{wal_dir}: {len(cuts)} segment(s) repaired", run.stdout
    return cuts


class InfluxdNotFoundError(RuntimeError):
    """No InfluxDB 1.8 binary where the harness looks for one."""


def influxd_cache_path() -> Path:
    """Where ``scripts/install-influxd`` builds ``influxd`` (the script's rule, ``XDG_CACHE_HOME`` first)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mbostream" / f"influxd-{INFLUXD_VERSION}" / "influxd"


def influxd_binary() -> str:
    """``$MBOSTREAM_INFLUXD`` if set, else the install script's build; never ``influxd`` on PATH."""
    override = os.environ.get(INFLUXD_VARIABLE, "").strip()
    path = Path(override) if override else influxd_cache_path()
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    where = f"{INFLUXD_VARIABLE}={override} is not an executable file" if override else f"no influxd at {path}"
    raise InfluxdNotFoundError(
        f"{where}: build InfluxDB {INFLUXD_VERSION} with {INSTALL_SCRIPT} (or point {INFLUXD_VARIABLE} at one)"
    )


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
    """One request as the test user (1.8 reads ``Token USER:PASSWORD`` on every endpoint)."""
    request = urllib.request.Request(url, data=data, method=method, headers={"Authorization": f"Token {TEST_TOKEN}"})
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
    """A real ``influxd`` 1.8 with its data under ``directory``; restartable on the same port."""

    directory: Path
    http_port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    #: Serve Flux on ``/api/v2/query`` (slows every start by seconds: only for the Flux tests).
    flux: bool = False
    #: Cut torn WAL entries before each start, as operators must (off only to show the engine's loss).
    repair_wal: bool = True
    #: Cut them with the deployed script (``DEPLOYED_REPAIR``) rather than ``mbostream.storage``.
    deployed_repair: bool = False
    process: Process | None = None
    user_created: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        """Starts ``influxd`` and waits for it; the first start also creates the test user."""
        binary = influxd_binary()
        config = _render(
            "influxdb.conf.in",
            self.directory / "influxdb.conf",
            DIR=self.directory,
            RPC_PORT=self.rpc_port,
            HTTP_PORT=self.http_port,
            FLUX_ENABLED=str(self.flux).lower(),
        )
        # What an operator runs before every start (docs/storage.md, "InfluxDB after a crash"):
        # without it InfluxDB loses the points acknowledged after a restart that followed a
        # kill -9 in the middle of a WAL write (mbostream.storage.influx_wal tells why).
        if self.repair_wal:
            wal = self.directory / "wal"
            cuts = deployed_repair_cuts(wal) if self.deployed_repair else python_repair_cuts(wal)
            with self.repair_log.open("a") as log:
                log.writelines(cut + "\n" for cut in cuts)
        self.process = Process("influxd", [binary, "-config", str(config)], self.directory / "influxd.log")
        self.process.start()
        _wait_until(lambda: _http(f"{self.url}/ping", timeout=1)[0] == 204, "influxd", self.process)
        # /health came with the 2.x endpoints (1.8): an older engine would only fail later, obscurely.
        if _http(f"{self.url}/health")[0] != 200:
            self.stop()
            raise InfluxdNotFoundError(f"{binary} has no 2.x API (older than 1.8?): build {INFLUXD_VERSION} with {INSTALL_SCRIPT}")
        if not self.user_created:
            # With authentication on and no user yet, 1.x accepts exactly this statement unauthenticated.
            self.query(f"CREATE USER \"{TEST_USER}\" WITH PASSWORD '{TEST_PASSWORD}' WITH ALL PRIVILEGES")
            self.user_created = True

    @property
    def repair_log(self) -> Path:
        """Where each start logs the WAL segments it cut, one line each (``Repair.describe``)."""
        return self.directory / "repair-wal.log"

    def wal_repairs(self) -> list[str]:
        """The WAL segments cut before this engine's starts so far (empty: none)."""
        return self.repair_log.read_text().splitlines() if self.repair_log.exists() else []

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
        """Writes line protocol through the 1.x API (test setup only: not the sink's path)."""
        return _http(f"{self.url}/write?db={urllib.parse.quote(db)}&precision=n", method="POST", data=lines)


@dataclass
class InfluxStack:
    """The engine and one database, which is the 2.x "bucket". ``url`` is what the sink is given."""

    engine: InfluxEngine
    bucket: str
    org: str = TEST_ORG
    token: str = TEST_TOKEN

    @property
    def url(self) -> str:
        return self.engine.url

    def create_bucket(self) -> None:
        self.engine.query(f'CREATE DATABASE "{self.bucket}"')

    def rows(self, q: str) -> list[dict[str, Any]]:
        return self.engine.rows(q, self.bucket)

    def count(self, measurement: str) -> int:
        """Points stored in one measurement (counts ``sequence``, a field every point has)."""
        series = self.engine.query(f'SELECT count("sequence") FROM "{measurement}"', self.bucket)
        return int(series[0]["values"][0][1]) if series else 0

    def flux(self, query: str) -> list[dict[str, Any]]:
        """Runs Flux through ``influxdb-client``'s query API (the engine started with ``flux``); every record.

        A query the engine rejects, or that fails while streaming, raises (``ApiException``,
        ``FluxQueryException``).
        """
        # Imported here: ``harness.py -- COMMAND`` needs only the standard library.
        from influxdb_client.client.influxdb_client import InfluxDBClient

        timeout_ms = int(REQUEST_TIMEOUT_SECONDS * 1000)
        with InfluxDBClient(url=self.url, token=self.token, org=self.org, timeout=timeout_ms) as client:
            tables = client.query_api().query(query)
        return [record.values for table in tables for record in table.records]

    def stop(self) -> None:
        self.engine.stop()


@contextmanager
def influx_stack(
    directory: Path, bucket: str = "mbostream", *, start_engine: bool = True, flux: bool = False
) -> Iterator[InfluxStack]:
    """Starts the engine with an empty bucket (unless told not to: nothing listens then); stops it."""
    directory.mkdir(parents=True, exist_ok=True)
    influxd_binary()  # fail before anything runs when the binary is missing, engine started or not
    stack = InfluxStack(InfluxEngine(directory, flux=flux), bucket)
    try:
        if start_engine:
            stack.engine.start()
            stack.create_bucket()
        yield stack
    finally:
        stack.stop()


def main(argv: list[str]) -> int:
    """``harness.py -- COMMAND...``: runs COMMAND against a fresh engine, with INFLUX_* set."""
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
