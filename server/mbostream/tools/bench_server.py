"""Bench server room: the ``mbostream serve`` process the server benchmarks measure, and the /proc
readings of a process's CPU time and memory.

:class:`BenchServer` is ``mbostream serve --loop`` on a free port with a control token and a spool
of its own; ``bench e2e``, ``bench soak``, ``bench web`` and ``storage bench server`` start it the
same way: as a context manager it waits until the replay runs and stops the server on the way out,
keeping the exit code. :meth:`BenchServer.read` takes a :class:`Reading` (replay position, the
server's CPU time and RSS, the machine's CPU time) and a :class:`Window` of two readings gives the
rates and CPU shares every bench reports.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from mbostream.errors import BenchError
from mbostream_core.argtypes import Range

#: How long the bench waits for the server to answer a status call.
STATUS_TIMEOUT_SECONDS: Final = 30.0
#: Generating the default sample on a cold cache takes a while; serving a cached one, seconds.
_SERVER_START_TIMEOUT: Final = 900.0
_STOP_TIMEOUT: Final = 30.0
#: How long stopping waits for the copies of the server's output to reach the log.
_DRAIN_JOIN_TIMEOUT: Final = 5.0


# -- processes and CPUs ---------------------------------------------------------------------------


def cpu_sets(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """CPUs for (server, client): one each when pinning and two are available."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pins a just-started child process to ``cpus`` (None: leaves it alone).

    Popen returns once the child has exec'd, long before the new interpreter starts any thread,
    so every thread it starts later inherits the CPU set.
    """
    if cpus is not None:
        os.sched_setaffinity(pid, cpus)


#: The CFS bandwidth period of a :class:`CpuCap`: short, so that a capped server waits at most
#: (1 - share) x 10 ms before it runs again. The kernel's default, 100 ms, would stall it for up to
#: 40 ms at a 0.6 share, and the figures would mostly measure those stalls.
CPU_CAP_PERIOD_US: Final = 10_000
#: The shares a :class:`CpuCap` takes (``bench e2e --server-cpu-share``).
CPU_SHARE: Final = Range(low=0.01, high=1.0, unit="of one CPU")
_CGROUP_V1_CPU: Final = "/sys/fs/cgroup/cpu"
_CGROUP_V2: Final = "/sys/fs/cgroup"


class CpuCap:
    """A cpu cgroup that caps the processes added to it at ``share`` of one CPU (CFS bandwidth
    control, a quota per :data:`CPU_CAP_PERIOD_US`): the bench's stand-in for a neighbour taking
    the rest of the core. It is not a slower core: capped, the server runs at full speed until its
    quota is spent, then waits (docs/performance.md, "Headroom, measured").

    cgroup v1 (``/sys/fs/cgroup/cpu``) or v2 (``cpu.max``, the root cgroup's cpu controller
    enabled); it needs the right to make a cgroup there (root). A :class:`BenchError` says when it
    cannot, and nothing is measured. :meth:`close` removes the cgroup once its processes are gone.
    """

    def __init__(self, share: float) -> None:
        try:
            self.share = CPU_SHARE.check(share)
        except ValueError as exc:
            raise BenchError(f"the server's CPU share {exc}") from None
        quota = max(1000, round(self.share * CPU_CAP_PERIOD_US))
        name = f"mbostream-bench-{os.getpid()}-{secrets.token_hex(3)}"
        try:
            if os.path.isfile(os.path.join(_CGROUP_V1_CPU, "cpu.cfs_quota_us")):
                self.path = os.path.join(_CGROUP_V1_CPU, name)
                os.mkdir(self.path)
                self._write("cpu.cfs_period_us", str(CPU_CAP_PERIOD_US))
                self._write("cpu.cfs_quota_us", str(quota))
            elif "cpu" in _read(os.path.join(_CGROUP_V2, "cgroup.subtree_control")).split():
                self.path = os.path.join(_CGROUP_V2, name)
                os.mkdir(self.path)
                self._write("cpu.max", f"{quota} {CPU_CAP_PERIOD_US}")
            else:
                raise OSError("no cpu controller: neither cgroup v1's cpu hierarchy nor v2's cpu.max")
        except OSError as exc:
            self.close()
            raise BenchError(
                f"cannot cap the server's CPU (a cpu cgroup under /sys/fs/cgroup, as root): {exc}; not measured"
            ) from None

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def add(self, pid: int) -> None:
        """Moves a just-started process (all its threads, and every thread it starts later) in."""
        self._write("cgroup.procs", str(pid))

    def throttled_seconds(self) -> float:
        """How long the kernel has held the cgroup's processes back for their quota, so far."""
        for line in _read(os.path.join(self.path, "cpu.stat")).splitlines():
            key, _, value = line.partition(" ")
            if key == "throttled_time":  # v1, ns
                return int(value) / 1e9
            if key == "throttled_usec":  # v2
                return int(value) / 1e6
        return 0.0

    def close(self) -> None:
        path = getattr(self, "path", None)
        if path and os.path.isdir(path):
            os.rmdir(path)  # its processes have exited: an empty cgroup is removed like a folder


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (OSError once the process is gone)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu_seconds(fields: list[str]) -> float:
    """User + system time of a ``/proc/PID/stat`` line (all the process's threads)."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads, from /proc (NaN once it is gone)."""
    try:
        return _cpu_seconds(_stat_fields(pid))
    except OSError:
        return float("nan")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time of a process's living threads, by thread name (threads of one name summed), from
    /proc; empty once the process is gone. In nanoseconds where the kernel keeps them (``schedstat``:
    a thread that ran 6 ms in a 1.5 s window is 0.4% of it, not 0 or 10 ms by clock ticks), else
    ``stat``'s user + system clock ticks."""
    by_name: dict[str, float] = {}
    try:
        tasks = list(os.scandir(f"/proc/{pid}/task"))
    except OSError:
        return by_name
    for task in tasks:
        try:
            with open(f"{task.path}/stat") as f:
                line = f.read()
            try:
                with open(f"{task.path}/schedstat") as f:
                    seconds = int(f.read().split()[0]) / 1e9
            except (FileNotFoundError, ValueError, IndexError):
                seconds = _cpu_seconds(line.rsplit(")", 1)[1].split())
        except OSError:
            continue  # the thread ended meanwhile
        name = line[line.index("(") + 1 : line.rindex(")")]
        by_name[name] = by_name.get(name, 0.0) + seconds
    return by_name


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU time of a process and all its living descendants, from /proc."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.name)
        except OSError:
            continue  # the process ended meanwhile
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = _cpu_seconds(fields)
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, pending = 0.0, [root]
    while pending:
        pid = pending.pop()
        total += cpu.get(pid, 0.0)
        pending.extend(children.get(pid, ()))
    return total


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB (NaN once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def machine_busy_seconds() -> tuple[float, float]:
    """CPU seconds all CPUs spent in processes, and in interrupts, since boot (from /proc/stat).

    Interrupt time (loopback TCP runs largely in softirq) is charged to no process, so it is kept
    apart from the process time used to see who else was running.
    """
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    except (OSError, ValueError):
        return float("nan"), float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + steal) / tick, (irq + softirq) / tick


# -- readings -------------------------------------------------------------------------------------


def read_metrics(host: str, port: int, names: Sequence[str], timeout: float) -> dict[str, float]:
    """The samples ``names`` from the Prometheus text at ``host:port/metrics``, in one scrape: each
    named as the text writes it (labels included, e.g. ``x_bucket{le="0.1"}``); a sample not
    exported there is missing from the result. OSError when the endpoint does not answer."""
    import urllib.request

    wanted, found = set(names), {}
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as reply:
        for line in reply.read().decode().splitlines():
            fields = line.split()
            if fields and fields[0] in wanted:
                found[fields[0]] = float(fields[1])
    return found


def read_metric(host: str, port: int, name: str, timeout: float) -> float | None:
    """The sample ``name`` (see :func:`read_metrics`); None when it is not exported there."""
    return read_metrics(host, port, (name,), timeout).get(name)


#: The event loop's wake-ups later than LOOP_STALL_SECONDS are counted from its lag histogram
#: (``mbostream_event_loop_lag_seconds``, observed by the book ticker): a bucket's upper bound.
LOOP_STALL_SECONDS: Final = 0.1
_SINK_WAIT: Final = "mbostream_replay_sink_wait_seconds_total"
_LAG_COUNT: Final = "mbostream_event_loop_lag_seconds_count"
_LAG_ON_TIME: Final = f'mbostream_event_loop_lag_seconds_bucket{{le="{LOOP_STALL_SECONDS}"}}'


@dataclass(frozen=True)
class Reading:
    """The server and the machine at one instant (:meth:`BenchServer.read`)."""

    at: float
    replay_sequence: int
    server_cpu: float
    rss_mib: float
    #: CPU seconds of every process on the machine, and of interrupts (:func:`machine_busy_seconds`).
    machine_cpu: float
    interrupts: float
    #: Seconds the kernel has held the server back for its cap (:meth:`CpuCap.throttled_seconds`);
    #: None when it runs uncapped.
    throttled: float | None = None
    #: The server's CPU seconds by thread name (:func:`thread_cpu_seconds`).
    threads: Mapping[str, float] = field(default_factory=dict)
    #: Seconds the replay has waited for storage that could not keep up
    #: (``mbostream_replay_sink_wait_seconds``); None when its metrics could not be read.
    sink_wait: float | None = None
    #: The event loop's wake-ups the book ticker has timed, and how many of them were later than
    #: LOOP_STALL_SECONDS; None when its metrics could not be read.
    loop_wakeups: tuple[float, float] | None = None


@dataclass(frozen=True)
class Window:
    """What happened between two readings: the replay's rate and the CPU shares (100% = one core)."""

    start: Reading
    end: Reading

    @property
    def seconds(self) -> float:
        return self.end.at - self.start.at

    def percent(self, cpu_seconds: float) -> float:
        """CPU seconds spent over the window as a share of one core, in percent."""
        return round(100 * cpu_seconds / self.seconds, 1)

    @property
    def server_cpu(self) -> float:
        return self.end.server_cpu - self.start.server_cpu

    @property
    def server_cpu_percent(self) -> float:
        return self.percent(self.server_cpu)

    @property
    def thread_cpu_percent(self) -> dict[str, float]:
        """The server's CPU share by thread name over the window, busiest first (threads alive at
        its end; what threads that ended meanwhile used is in :attr:`server_cpu_percent` only)."""
        shares = {name: self.percent(cpu - self.start.threads.get(name, 0.0)) for name, cpu in self.end.threads.items()}
        return {name: share for name, share in sorted(shares.items(), key=lambda item: -item[1]) if share > 0}

    @property
    def replayed_records_per_second(self) -> int:
        return round((self.end.replay_sequence - self.start.replay_sequence) / self.seconds)

    @property
    def replay_sink_wait_seconds(self) -> float | None:
        """Seconds of the window the replay waited for storage (a replay that falls behind its
        pacing for that reason says so); None when a reading lacks it."""
        if self.start.sink_wait is None or self.end.sink_wait is None:
            return None
        return round(self.end.sink_wait - self.start.sink_wait, 3)

    @property
    def event_loop_stalls(self) -> int | None:
        """The event loop's wake-ups over the window later than LOOP_STALL_SECONDS (a replay behind
        its pacing with some had its loop held up); None when a reading lacks them or the book
        ticker timed none in the window (it runs while book streams are open)."""
        if self.start.loop_wakeups is None or self.end.loop_wakeups is None:
            return None
        (timed0, late0), (timed1, late1) = self.start.loop_wakeups, self.end.loop_wakeups
        return round(late1 - late0) if timed1 > timed0 else None

    @property
    def interrupts_cpu_percent(self) -> float:
        return self.percent(self.end.interrupts - self.start.interrupts)

    @property
    def throttled_percent(self) -> float | None:
        """The share of the window the kernel held a capped server back (None: uncapped)."""
        if self.start.throttled is None or self.end.throttled is None:
            return None
        return self.percent(self.end.throttled - self.start.throttled)

    def others_cpu_percent(self, *measured: float) -> float:
        """The CPU share of every process but the server and the ``measured`` ones (CPU seconds each
        over the window): other jobs on the machine, which skew the figures."""
        others = (self.end.machine_cpu - self.start.machine_cpu) - self.server_cpu - sum(measured)
        return self.percent(max(0.0, others))


# -- the server -----------------------------------------------------------------------------------


def _drain(stream: IO[str] | None, sink: IO[str]) -> threading.Thread:
    """Copies a child's pipe to ``sink`` so it never fills and blocks the server."""

    def copy() -> None:
        try:
            for line in iter(stream.readline, ""):  # type: ignore[union-attr]
                sink.write(line)
                sink.flush()
        except (OSError, ValueError):
            pass  # the pipe or the log closed under it

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


class BenchServer:
    """A ``mbostream serve --loop`` subprocess on a free port, stopped with SIGTERM.

    ``pacing``: the serve flags of the replay's pace (``--max``, ``--rate R``); ``files``: the data
    (the generated sample by default); ``server_args``: more serve flags; ``cpus``: the CPUs to pin
    it to; ``cpu_share``: a cap on its CPU time, as a share of one CPU (:class:`CpuCap`); ``log``:
    where its output goes after the ready line (by default it stays in the pipes); ``tls``: serve
    over TLS (every port, the native book port too) with a throw-away CA whose certificate is
    :attr:`ca_file` (:mod:`mbostream.tools.bench_tls`).
    Used as a context manager it waits for the replay to start and stops the server on exit;
    :attr:`exit_code` is then its exit status.
    """

    def __init__(
        self,
        pacing: Sequence[str],
        *,
        files: Sequence[str] = (),
        server_args: Sequence[str] = (),
        cpus: set[int] | None = None,
        cpu_share: float | None = None,
        log: IO[str] | None = None,
        tls: bool = False,
    ) -> None:
        # The cap first: it may refuse (not root), and then nothing is started.
        self.cpu_cap = CpuCap(cpu_share) if cpu_share is not None else None
        self.token = secrets.token_urlsafe(18)
        self.exit_code: int | None = None
        self._drains: list[threading.Thread] = []
        # A private spool: the server's storage sink (on by default) must not share one with a
        # server already running here, and the bench leaves nothing behind.
        self._spool = tempfile.TemporaryDirectory(prefix="mbostream-e2e-spool-")
        #: The CA a client trusts to reach this server over TLS (None: plaintext), and its PEM.
        self.ca_file: str | None = None
        self._ca_pem: bytes | None = None
        tls_env: dict[str, str] = {}
        self._tls_dir = tempfile.TemporaryDirectory(prefix="mbostream-e2e-tls-") if tls else None
        if self._tls_dir is not None:
            from mbostream.tools.bench_tls import make_bench_pki

            pki = make_bench_pki(Path(self._tls_dir.name))
            self.ca_file = str(pki.ca_file)
            self._ca_pem = pki.ca_file.read_bytes()
            tls_env = {"MBOSTREAM_TLS_CERT_FILE": str(pki.cert_file), "MBOSTREAM_TLS_KEY_FILE": str(pki.key_file)}
        # Every client of the bench is this one host: the per-address stream limit must not cap it.
        env = {
            **os.environ,
            "MBOSTREAM_CONTROL_TOKEN": self.token,
            "MBOSTREAM_SPOOL_DIR": self._spool.name,
            "MBOSTREAM_MAX_STREAMS_PER_PEER": "100000",
            **tls_env,
        }
        cmd = [
            sys.executable, "-m", "mbostream.cli", "--log-level", "warning", "serve", *files,
            "--port", "0", "--metrics-port", "0", "--loop", *pacing, *server_args,
        ]  # fmt: skip
        #: The server's JSON ready line, once read.
        self.ready: dict[str, Any] = {}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            pin(self.proc.pid, cpus)
            if self.cpu_cap is not None:
                self.cpu_cap.add(self.proc.pid)
            self.target = self._read_ready_line()
        except BaseException:
            self.stop()  # the process, its spool and its cgroup: nothing is left behind
            raise
        if log is not None:
            self._drains = [_drain(self.proc.stderr, log), _drain(self.proc.stdout, log)]

    def __enter__(self) -> BenchServer:
        try:
            self.wait_replaying()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _read_ready_line(self) -> str:
        import selectors

        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(_SERVER_START_TIMEOUT):
                self.stop()
                raise BenchError(f"server printed no ready line within {_SERVER_START_TIMEOUT:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise BenchError(f"server exited with {self.proc.wait()} before listening: {err.strip()[-2000:]}")
        self.ready = json.loads(line)
        return str(self.ready["listening"])

    @property
    def book_target(self) -> str | None:
        """``host:port`` of StreamBook on the native transport (``--book-port``), if it serves it."""
        port = self.ready.get("book_port")
        return None if port is None else f"{self.target.rsplit(':', 1)[0]}:{port}"

    def status(self) -> Any:
        """The replay status over ReplayService (bearer token of this server)."""
        import grpc

        from mbostream_core.v1 import replay_pb2, replay_pb2_grpc

        if self._ca_pem is None:
            channel = grpc.insecure_channel(self.target)
        else:
            channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(self._ca_pem))
        with channel:
            stub = replay_pb2_grpc.ReplayServiceStub(channel)
            metadata = (("authorization", f"Bearer {self.token}"),)
            try:
                return stub.GetStatus(replay_pb2.GetStatusRequest(), metadata=metadata, timeout=STATUS_TIMEOUT_SECONDS).status
            except grpc.RpcError as exc:
                # A server whose one core is saturated can answer a control call late: say so.
                raise BenchError(
                    f"the server did not answer ReplayService/GetStatus within {STATUS_TIMEOUT_SECONDS:.0f} s "
                    f"({exc.code().name}): its core is saturated; this scenario has no figure"
                ) from None

    def read(self) -> Reading:
        """The replay position (a status call), then the server's CPU time, RSS and time held back by
        its cap, and the machine's CPU time."""
        status = self.status()
        at = time.monotonic()
        server_cpu, rss, threads = process_cpu_seconds(self.proc.pid), rss_mib(self.proc.pid), thread_cpu_seconds(self.proc.pid)
        machine, interrupts = machine_busy_seconds()
        metrics = self.metrics(_SINK_WAIT, _LAG_COUNT, _LAG_ON_TIME)
        timed, on_time = metrics.get(_LAG_COUNT), metrics.get(_LAG_ON_TIME)
        return Reading(
            sink_wait=metrics.get(_SINK_WAIT),
            loop_wakeups=None if timed is None or on_time is None else (timed, timed - on_time),
            at=at,
            replay_sequence=status.replay_sequence,
            server_cpu=server_cpu,
            rss_mib=rss,
            machine_cpu=machine,
            interrupts=interrupts,
            throttled=self.cpu_cap.throttled_seconds() if self.cpu_cap is not None else None,
            threads=threads,
        )

    def metrics(self, *names: str) -> dict[str, float]:
        """Samples from the server's /metrics (its ready line's ``metrics_port``) in one scrape (see
        :func:`read_metrics`); empty when it serves none (``--metrics-port -1``) or does not answer
        in time."""
        port = self.ready.get("metrics_port")
        if not port:
            return {}
        try:
            return read_metrics(self.target.rsplit(":", 1)[0], port, names, STATUS_TIMEOUT_SECONDS)
        except OSError:
            return {}

    def wait_replaying(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.status().replay_sequence == 0:
            if time.monotonic() > deadline:
                raise BenchError(f"the replay did not start within {timeout:.0f} s")
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM, then the exit code (SIGKILL after the timeout); also kept in :attr:`exit_code`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for thread in self._drains:
            thread.join(_DRAIN_JOIN_TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self._spool.cleanup()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()
        if self.cpu_cap is not None:
            self.cpu_cap.close()
        self.exit_code = code
        return code
