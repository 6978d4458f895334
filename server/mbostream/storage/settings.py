"""Storage settings room: the one frozen configuration of persistence, from the environment.

Every knob of the storage sink lives in :class:`StorageSettings`. It is built once at start-up,
validated there, and never changed; a bad value raises :class:`~mbostream.errors.ConfigError`
naming the setting (the field when built directly, the environment variable from
:meth:`StorageSettings.from_env`). No credential has a default: without ``INFLUX_URL`` the sink
writes the spool only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from mbostream_core.argtypes import Range
from mbostream.errors import ConfigError

MIB: Final = 1 << 20
DEFAULT_SPOOL_DIR: Final = Path("var/spool")
MAX_DEPTH_LEVELS: Final = 50
#: ``mbostream storage drain`` gives up after this many seconds without progress (``--stall-timeout``).
DEFAULT_STALL_TIMEOUT_SECONDS: Final = 60.0
#: The range of ``--stall-timeout`` (NaN or infinity would never give up, a negative number at once).
STALL_TIMEOUT_SECONDS: Final = Range(low=0.1, high=86_400, unit="s")

#: The range of every numeric storage setting (the same :class:`~mbostream_core.argtypes.Range` checks
#: as the server's settings and flags: finite, both ends given).
RANGES: Final[Mapping[str, Range]] = {
    "depth_interval": Range(low=0.001, high=86_400, zero="no depth samples", unit="s"),
    "depth_levels": Range(low=1, high=MAX_DEPTH_LEVELS, integer=True),
    "batch_points": Range(low=1, high=1_000_000, integer=True),
    "flush_interval": Range(low=0.001, high=3600, unit="s"),
    "max_pending_bytes": Range(low=MIB, high=1 << 40, integer=True, unit="bytes"),
    "max_backlog_bytes": Range(low=MIB, high=1 << 40, integer=True, unit="bytes"),
    "segment_bytes": Range(low=64 << 10, high=1 << 40, integer=True, unit="bytes"),
    "spool_max_bytes": Range(low=MIB, high=1 << 50, zero="no limit", integer=True, unit="bytes"),
    "spool_sync_interval": Range(low=0, high=3600, unit="s"),
    "write_timeout": Range(low=0.001, high=3600, unit="s"),
    "write_concurrency": Range(low=1, high=16, integer=True),
    "max_retries": Range(low=0, high=100, integer=True),
    "retry_initial": Range(low=0.001, high=3600, unit="s"),
    "retry_max": Range(low=0.001, high=86_400, unit="s"),
    "gzip_level": Range(low=0, high=9, integer=True),
}

#: field name → environment variable.
ENV_VARIABLES: Final[Mapping[str, str]] = {
    "url": "INFLUX_URL",
    "org": "INFLUX_ORG",
    "bucket": "INFLUX_BUCKET",
    "token": "INFLUX_TOKEN",
    "ca_file": "INFLUX_CA_FILE",
    "spool_dir": "MBOSTREAM_SPOOL_DIR",
    "store_mbo": "MBOSTREAM_STORE_MBO",
    "depth_interval": "MBOSTREAM_DEPTH_INTERVAL",
    "depth_levels": "MBOSTREAM_DEPTH_LEVELS",
    "batch_points": "MBOSTREAM_STORAGE_BATCH_POINTS",
    "flush_interval": "MBOSTREAM_STORAGE_FLUSH_INTERVAL",
    "max_pending_bytes": "MBOSTREAM_STORAGE_MAX_PENDING_BYTES",
    "max_backlog_bytes": "MBOSTREAM_STORAGE_MAX_BACKLOG_BYTES",
    "segment_bytes": "MBOSTREAM_SPOOL_SEGMENT_BYTES",
    "spool_max_bytes": "MBOSTREAM_SPOOL_MAX_BYTES",
    "spool_sync_interval": "MBOSTREAM_SPOOL_SYNC_INTERVAL",
    "write_timeout": "MBOSTREAM_STORAGE_TIMEOUT",
    "write_concurrency": "MBOSTREAM_STORAGE_WRITE_CONCURRENCY",
    "max_retries": "MBOSTREAM_STORAGE_MAX_RETRIES",
    "retry_initial": "MBOSTREAM_STORAGE_RETRY_INITIAL",
    "retry_max": "MBOSTREAM_STORAGE_RETRY_MAX",
    "gzip_level": "MBOSTREAM_STORAGE_GZIP_LEVEL",
}
TOKEN_FILE_VARIABLE: Final = "INFLUX_TOKEN_FILE"

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_SIZE_SUFFIXES: Final = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """How and where the storage sink persists the feed.

    Attributes
    ----------
    url, org, bucket, token
        The InfluxDB 2.x write target (``/api/v2/write``). All four together, or none: without a
        URL the sink writes the spool only, for ``mbostream storage drain`` to push later.
    ca_file
        An ``https`` database's certificate is verified against this CA (PEM) instead of the
        system's trust store (e.g. a private CA, or cert-manager's).
    spool_dir
        Directory of the on-disk spool (created if missing); one process uses it at a time.
    store_mbo
        Also write every raw MBO record to the ``mbo`` measurement (off by default).
    depth_interval
        Seconds of feed time between ``depth`` samples of every book; 0 turns depth off.
    depth_levels
        Levels per side in a ``depth`` sample (1 to 50).
    batch_points
        Points per write request (the size a batch is cut at).
    flush_interval
        Seconds after which a partial batch is written anyway.
    max_pending_bytes
        Bytes of blocks (compressed line protocol) held in memory for the database; beyond it,
        batches go to the spool.
    max_backlog_bytes
        Replay steps (their record and event buffers) waiting to be formatted, at most. Formatting
        and compression run on one thread; when it cannot keep up (a ``--max`` replay of a feed
        with many top-of-book changes, on a small machine) the replay waits for it rather than
        holding ever more memory or dropping points. At paced rates it is never reached.
    segment_bytes
        Size at which the spool starts a new segment file.
    spool_max_bytes
        Most bytes of unsent blocks the spool may hold on disk (0: no limit). Beyond it new points are
        dropped — counted in ``points_dropped_spool_full_total`` and logged — instead of filling the
        disk: a deliberate, visible loss, for spool-only runs that nobody drains.
    write_timeout
        Seconds for one write request.
    write_concurrency
        Write requests in flight at once (1 to 16).
    max_retries
        Retries of one batch on 429/5xx/connection errors before it goes to the spool.
    retry_initial, retry_max
        Backoff before the first retry, and its cap (seconds); each retry doubles it, with jitter.
    gzip_level
        Compression level of the blocks (:mod:`mbostream.storage.blocks`: gzip members made once,
        then spooled and sent as they are), 0 (stored, no compression) to 9, default 1.
    spool_sync_interval
        Longest time spooled data waits for its fsync (seconds; 0: fsync every append). A crash of
        the process loses nothing spooled (the data is in the page cache); a crash of the machine
        loses at most this interval. Default 1, like Redis's ``appendfsync everysec``.
    """

    url: str | None = None
    org: str | None = None
    bucket: str | None = None
    token: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    spool_dir: Path = DEFAULT_SPOOL_DIR
    store_mbo: bool = False
    depth_interval: float = 1.0
    depth_levels: int = 10
    batch_points: int = 10_000
    flush_interval: float = 1.0
    max_pending_bytes: int = 64 * MIB
    max_backlog_bytes: int = 256 * MIB
    segment_bytes: int = 64 * MIB
    spool_max_bytes: int = 0
    spool_sync_interval: float = 1.0
    write_timeout: float = 10.0
    write_concurrency: int = 3
    max_retries: int = 3
    retry_initial: float = 0.5
    retry_max: float = 30.0
    gzip_level: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "spool_dir", Path(self.spool_dir))
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError("url", f"{self.url!r} is not an http(s) URL")
            for name in ("org", "bucket", "token"):
                if not getattr(self, name):
                    raise ConfigError(name, "required when a database URL is set")
        else:
            for name in ("org", "bucket", "token"):
                if getattr(self, name):
                    raise ConfigError("url", f"{name} is set but the database URL is not")
        if self.ca_file is not None:
            if self.url is None or urlsplit(self.url).scheme != "https":
                raise ConfigError("ca_file", "a CA is for an https database URL")
            if not os.access(self.ca_file, os.R_OK) or not os.path.isfile(self.ca_file):
                raise ConfigError("ca_file", f"cannot read {self.ca_file}")
        for name, allowed in RANGES.items():
            try:
                allowed.check(getattr(self, name))
            except ValueError as exc:
                raise ConfigError(name, str(exc)) from None
        if self.retry_max < self.retry_initial:
            raise ConfigError("retry_max", f"{self.retry_max} is below retry_initial {self.retry_initial}")

    @property
    def database_configured(self) -> bool:
        """True when a database is set; otherwise the sink writes the spool only."""
        return self.url is not None

    @property
    def depth_interval_ns(self) -> int:
        """The depth sampling interval in nanoseconds of feed time (0: off)."""
        return round(self.depth_interval * 1e9)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StorageSettings:
        """Builds the settings from environment variables (blank values count as unset).

        ``INFLUX_TOKEN`` or ``INFLUX_TOKEN_FILE`` (a file holding the token, e.g. a mounted
        secret) supplies the token; setting both is an error.

        Raises
        ------
        ConfigError
            Naming the environment variable whose value is invalid.
        """
        env = os.environ if environ is None else environ
        raw = {name: env.get(var, "").strip() for name, var in ENV_VARIABLES.items()}
        values: dict[str, object] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, text in raw.items():
            if not text:
                continue
            try:
                values[name] = _parse(name, types[name], text)
            except ValueError as exc:
                raise ConfigError(ENV_VARIABLES[name], str(exc)) from None
        token_file = env.get(TOKEN_FILE_VARIABLE, "").strip()
        if token_file:
            if raw["token"]:
                raise ConfigError(TOKEN_FILE_VARIABLE, "set only one of INFLUX_TOKEN and INFLUX_TOKEN_FILE")
            values["token"] = _read_token(token_file)
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ConfigError as exc:
            variable = ENV_VARIABLES.get(exc.setting, exc.setting)
            if exc.setting == "token" and token_file:
                variable = TOKEN_FILE_VARIABLE
            raise ConfigError(variable, exc.reason) from None


def _parse(name: str, annotation: object, text: str) -> object:
    kind = str(annotation)
    if kind == "bool":
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{text!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")
    if kind == "int":
        if name.endswith("_bytes"):
            return _parse_size(text)
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number of seconds") from None
    if kind == "Path":
        return Path(text)
    return text


def _parse_size(text: str) -> int:
    """Parses ``65536``, ``64k``, ``64M`` or ``1G`` (binary multiples) into bytes."""
    lowered = text.lower().removesuffix("ib").removesuffix("b")
    multiplier = _SIZE_SUFFIXES.get(lowered[-1:], 1)
    digits = lowered[:-1] if multiplier > 1 else lowered
    try:
        return int(digits) * multiplier
    except ValueError:
        raise ValueError(f"{text!r} is not a size (bytes, or with a k/M/G suffix)") from None


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(TOKEN_FILE_VARIABLE, f"cannot read {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(TOKEN_FILE_VARIABLE, f"{path} is empty")
    return token
