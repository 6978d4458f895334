"""Configuration room: one frozen settings object, from ``MBOSTREAM_*`` variables and flags.

Precedence: command-line flag, then environment variable, then default. Everything is validated
at start-up; an invalid value raises :class:`~mbostream.errors.ConfigError` naming the flag and the
variable. Credentials have no default: without a control token the ReplayService is disabled.

Every number has one documented range in :data:`RANGES` (finite, with both ends given): the flags'
argparse types, this loader and the RPC handlers that take the same quantity (``SetRate`` takes a
``rate`` or a ``speed``) all check against it, and ``--help`` and ``.env.example`` quote it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from mbostream_core.argtypes import Range
from mbostream.errors import ConfigError
from mbostream.storage.settings import StorageSettings

PACING_MODES: Final = ("rate", "speed", "max")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

_PORT: Final = Range(low=0, high=65535, integer=True)
#: The range of every numeric setting (and of the RPC fields that carry the same quantity).
RANGES: Final[Mapping[str, Range]] = {
    "port": _PORT,
    "edge_port": _PORT,
    "metrics_port": Range(low=-1, high=65535, integer=True),
    "book_port": Range(low=-1, high=65535, integer=True),
    "book_threads": Range(low=1, high=64, integer=True),
    "book_thread_priority": Range(low=1, high=99, integer=True, zero="off: the process's own scheduling"),
    "rate": Range(low=0.01, high=1e9, unit="records/s"),
    "speed": Range(low=0.001, high=1e6, unit="(multiplier of recorded time)"),
    "max_streams": Range(low=1, high=100_000, integer=True),
    "max_streams_per_peer": Range(low=1, high=100_000, integer=True),
    "listeners": Range(low=1, high=64, integer=True),
    "subscriber_buffer_batches": Range(low=1, high=1_000_000, integer=True),
    "replay_buffer_records": Range(low=1, high=1_000_000_000, integer=True),
    "batch_records": Range(low=1, high=1_048_576, integer=True),
    # Below 1 ms the ticker would spin the CPU for refreshes nobody can see.
    "book_interval_ms": Range(low=1, high=60_000, zero="refresh at every replay step", unit="ms"),
    "book_interval_max_ms": Range(low=1, high=60_000, unit="ms"),
    "book_cpu_target": Range(low=0.05, high=1024, unit="cores", zero="no target: only a late loop with gRPC-port book streams stretches the refresh"),
    "grace_seconds": Range(low=0, high=3600, unit="s"),
    "sample_records": Range(low=1, high=100_000_000, integer=True),
    "sample_instruments": Range(low=1, high=1024, integer=True),
    "sample_seed": Range(low=0, high=2**32 - 1, integer=True),
    "bus_max_age_seconds": Range(low=60, high=30 * 86400, unit="s"),
    "bus_max_bytes": Range(low=1 << 20, high=1 << 40, integer=True, unit="bytes"),
    "snapshot_interval_seconds": Range(low=0.1, high=3600, unit="s"),
    "store_ack_interval_seconds": Range(low=0.01, high=3600, unit="s"),
}
#: ``StreamBook.max_updates_per_second``: a client's per-book update limit.
MAX_UPDATES_PER_SECOND: Final = Range(low=0, high=1_000_000, unit="updates/s (0: no limit)")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the server needs to start. Build it with :func:`load_settings`."""

    #: DBN MBO files replayed in order; empty: the generated sample.
    files: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 50051
    #: Prometheus port; 0 picks a free one, -1 disables the endpoint.
    metrics_port: int = 9464
    #: StreamBook on the native HTTP/2 transport (mbostream.server.native_books; TLS as ``port``) on its
    #: own port besides ``port``; 0 picks a free one, -1 (the default) disables it.
    book_port: int = -1
    #: Threads of the native book transport: its connections are dealt out to them, each thread
    #: writing to its own clients, so the per-client cost of book streams (framing, flow control,
    #: TLS, syscalls) spreads over that many cores; the replay and the hub stay on one.
    book_threads: int = 1
    #: SCHED_FIFO priority of those threads (1-99; 0: off), so that a thread woken by a refresh
    #: writes at once instead of waiting for the event loop's thread to give up a shared core:
    #: the server's share of publish→client p99 halves where they share one (docs/performance.md,
    #: "The transport's threads at a real-time priority"). Needs CAP_SYS_NICE or RLIMIT_RTPRIO.
    book_thread_priority: int = 0
    #: ``rate`` (records/s), ``speed`` (recorded ts_recv gaps divided by ``speed``) or ``max``.
    pacing: str = "rate"
    rate: float = 100_000.0
    speed: float = 1.0
    loop: bool = False
    control_token: str | None = field(default=None, repr=False)
    log_level: str = "info"
    log_format: str = "json"
    #: Concurrent streams served at most (StreamBook + StreamEvents).
    max_streams: int = 1000
    #: Concurrent streams one client address (IP, any port) may hold: one host cannot take them all.
    max_streams_per_peer: int = 256
    #: gRPC servers listening on the one port (SO_REUSEPORT), each with its own accept queue. A busy
    #: event loop admits about one new stream per server per turn, so more servers admit a crowd of
    #: new clients faster; the kernel spreads new connections over them.
    listeners: int = 4
    #: gRPC over TLS: the server's certificate chain and private key (PEM files; both or neither).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: mTLS: clients must present a certificate signed by this CA (PEM; needs the server's TLS).
    tls_client_ca_file: str = ""
    #: Batches a StreamEvents subscriber may fall behind before it is cut off (slow reader).
    subscriber_buffer_batches: int = 512
    #: Records kept for StreamEvents resumption (start_after_sequence).
    replay_buffer_records: int = 2_000_000
    #: Most records applied and published per replay step.
    batch_records: int = 4096
    #: Book streams are refreshed at most this often (ms); updates in between are conflated.
    book_interval_ms: float = 5.0
    #: Longest the book refresh interval stretches to while the server is over its CPU target, or
    #: while its event loop is behind with book streams on the gRPC port (more than it can send). It bounds how old a streamed book can be only while the
    #: loop can send every subscriber's books within it: 1,000 streams on one core cannot
    #: (docs/performance.md, "Held book age"). Below ``book_interval_ms`` it is that (the refresh
    #: never stretches).
    book_interval_max_ms: float = 50.0
    #: The server's CPU (cores, all its threads) above which the book refresh stretches (towards
    #: ``book_interval_max_ms``): book streams are what gives way, with fewer, fresher books, so
    #: that the replay and the event streams keep headroom. A late event loop stretches it too
    #: while gRPC-port book streams are open (their sends are the loop's). 0: no target
    #: (docs/performance.md, "Fan-out by channel", "Stamped when sent"). 0.57, under the 60% of a
    #: core issue 13 allows: the refresh holds the process *at* its target, so the server's CPU
    #: over a benchmark's window lands about a point either side of it (57.6-60.5% at 0.6; at
    #: 0.57, 56.7-58.1%: docs/performance.md, "The CPU target under the ceiling").
    book_cpu_target: float = 0.57
    #: Seconds open streams get to finish on shutdown.
    grace_seconds: float = 5.0
    #: ``mbostream run`` only: the Envoy edge port (UI + gRPC-Web + gRPC on one origin).
    edge_port: int = 8080
    #: ``mbostream run`` only: HTTPS at the edge with this certificate chain and key (PEM; both or neither).
    edge_tls_cert_file: str = ""
    edge_tls_key_file: str = ""
    #: ``mbostream run`` only: the client certificate and key Envoy presents to servers that require
    #: mTLS (``tls_client_ca_file``); both or neither.
    edge_tls_client_cert_file: str = ""
    edge_tls_client_key_file: str = ""
    #: ``mbostream run`` only: extra CORS origins for gRPC-Web, comma-separated (e.g. a dev server).
    allowed_origins: str = ""
    sample_records: int = 2_000_000
    sample_instruments: int = 4
    sample_seed: int = 1
    #: Persist the feed (InfluxDB when ``INFLUX_URL`` is set, else the on-disk spool only).
    store: bool = True
    #: Storage settings (``INFLUX_*``, ``MBOSTREAM_SPOOL_DIR``, ``MBOSTREAM_STORE_MBO``, …).
    storage: StorageSettings = field(default_factory=StorageSettings)
    #: ``mbostream replay`` / ``gateway`` only: the NATS server (JetStream) of the bus; ``serve`` never uses it.
    nats_url: str = ""
    #: TLS to the bus: the CA that signed the NATS server's certificate (PEM); set, every NATS
    #: connection (replayer, gateway, store) is TLS, verified against it.
    nats_tls_ca_file: str = ""
    #: mTLS to the bus: this process's client certificate and key (PEM; both or neither; need the CA).
    nats_tls_cert_file: str = ""
    nats_tls_key_file: str = ""
    #: Bus retention (the record stream): messages older than this are dropped…
    bus_max_age_seconds: float = 3600.0
    #: …and the stream never holds more than this many bytes (oldest dropped first).
    bus_max_bytes: int = 1 << 30
    #: How often the replayer writes every book's snapshot to the bus (gateways cold-start from them).
    snapshot_interval_seconds: float = 5.0
    #: ``mbostream store`` only: seconds per round (offered, made durable, then acknowledged).
    store_ack_interval_seconds: float = 1.0


#: setting name → (flag, environment variable)
SOURCES: Final[dict[str, tuple[str, str]]] = {
    name: (f"--{name.replace('_', '-')}", f"MBOSTREAM_{name.upper()}")
    for name in Settings.__dataclass_fields__
    if name not in ("files", "control_token", "storage")
}


def _names(setting: str) -> str:
    flag, env = SOURCES.get(setting, (f"--{setting.replace('_', '-')}", f"MBOSTREAM_{setting.upper()}"))
    return f"{flag} / {env}"


def _convert(setting: str, raw: object, kind: type) -> object:
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    text = str(raw).strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        return kind(text)
    except ValueError:
        raise ConfigError(_names(setting), f"expected {kind.__name__}, got {text!r}") from None


def _read_token(env: Mapping[str, str], flag_value: str | None) -> str | None:
    if flag_value:
        return flag_value
    if env.get("MBOSTREAM_CONTROL_TOKEN"):
        return env["MBOSTREAM_CONTROL_TOKEN"]
    token_file = env.get("MBOSTREAM_CONTROL_TOKEN_FILE")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError("MBOSTREAM_CONTROL_TOKEN_FILE", f"cannot read {token_file}: {exc.strerror}") from None
        if not token:
            raise ConfigError("MBOSTREAM_CONTROL_TOKEN_FILE", f"{token_file} is empty")
        return token
    return None


def load_settings(
    flags: Mapping[str, object | None] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Builds and validates :class:`Settings` from flags (None = not given) and the environment."""
    flags = dict(flags or {})
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name, f in Settings.__dataclass_fields__.items():
        if name in ("files", "control_token", "storage"):
            continue
        kind = type(f.default)
        raw = flags.get(name)
        if raw is None:
            raw = env.get(SOURCES[name][1]) or None  # an empty variable counts as unset
        if raw is not None:
            values[name] = _convert(name, raw, kind)
    files = flags.get("files") or tuple(p for p in env.get("MBOSTREAM_FILES", "").split(",") if p)
    values["files"] = tuple(str(p) for p in files)  # type: ignore[union-attr]
    values["control_token"] = _read_token(env, flags.get("control_token"))  # type: ignore[arg-type]
    values["storage"] = StorageSettings.from_env(env)
    settings = Settings(**values)  # type: ignore[arg-type]
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    """Raises ConfigError for the first invalid setting."""
    for path in s.files:
        if not Path(path).is_file():
            raise ConfigError("FILE / MBOSTREAM_FILES", f"{path} does not exist or is not a file")
    for name, allowed in RANGES.items():
        try:
            allowed.check(getattr(s, name))
        except ValueError as exc:
            raise ConfigError(_names(name), str(exc)) from None
    if s.pacing not in PACING_MODES:
        raise ConfigError(_names("pacing"), f"must be one of {', '.join(PACING_MODES)}, got {s.pacing!r}")
    if s.log_level not in LOG_LEVELS:
        raise ConfigError(_names("log_level"), f"must be one of {', '.join(LOG_LEVELS)}, got {s.log_level!r}")
    if s.log_format not in ("json", "text"):
        raise ConfigError(_names("log_format"), f"must be json or text, got {s.log_format!r}")
    _validate_tls(s)
    if s.control_token is not None and len(s.control_token) < 8:
        raise ConfigError("MBOSTREAM_CONTROL_TOKEN", "must be at least 8 characters")


#: Certificate and key settings that go together.
_TLS_PAIRS: Final = (
    ("tls_cert_file", "tls_key_file"),
    ("edge_tls_cert_file", "edge_tls_key_file"),
    ("edge_tls_client_cert_file", "edge_tls_client_key_file"),
    ("nats_tls_cert_file", "nats_tls_key_file"),
)


def _validate_tls(s: Settings) -> None:
    """Certificate and key both or neither, a client CA (or a bus client certificate) only with the TLS
    it belongs to, every file readable PEM."""
    for cert, key in _TLS_PAIRS:
        if bool(getattr(s, cert)) != bool(getattr(s, key)):
            given, missing = (cert, key) if getattr(s, cert) else (key, cert)
            raise ConfigError(_names(missing), f"must be set together with {_names(given)}")
    if s.tls_client_ca_file and not s.tls_cert_file:
        raise ConfigError(_names("tls_client_ca_file"), f"mTLS needs the server's own TLS: set {_names('tls_cert_file')} and the key")
    if s.nats_tls_cert_file and not s.nats_tls_ca_file:
        raise ConfigError(_names("nats_tls_cert_file"), f"a client certificate needs TLS to the bus: set {_names('nats_tls_ca_file')}")
    for name in (*(n for pair in _TLS_PAIRS for n in pair), "tls_client_ca_file", "nats_tls_ca_file"):
        path = getattr(s, name)
        if not path:
            continue
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(_names(name), f"cannot read {path}: {exc.strerror}") from None
        if b"-----BEGIN " not in text:
            raise ConfigError(_names(name), f"{path} is not a PEM file")


def read_tls_files(s: Settings) -> tuple[bytes, bytes, bytes | None] | None:
    """``(certificate chain, private key, client CA or None)`` when TLS is configured, else None."""
    if not s.tls_cert_file:
        return None
    ca = Path(s.tls_client_ca_file).read_bytes() if s.tls_client_ca_file else None
    return Path(s.tls_cert_file).read_bytes(), Path(s.tls_key_file).read_bytes(), ca
