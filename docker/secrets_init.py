"""The compose deployment's secrets, made once per project by the one-shot ``secrets-init`` service.

For each secret below, in the ``secrets`` volume (``OUT``, the first argument):
  * a file of that name in ``PROVIDED`` (the second argument, the operator's folder, bind-mounted
    read-only; ``MBOSTREAM_SECRETS_DIR`` in compose) wins: it is copied in whenever it differs;
  * else a value already in the volume is kept (restarts and later ``up`` runs change nothing);
  * else a fresh random token is written (``secrets.token_hex``, 192 bits).
Nothing has a default value. Files are written atomically and read-only (0444: the services that
read them run as other users: ours 10001, InfluxDB 1000, Grafana 472); the folder is 0755. Prints
one line per secret (its name and where its value came from, never the value); exits 1 naming a
provided file that is empty or unreadable.
"""

import os
import secrets
import sys
from pathlib import Path

#: The secrets every profile needs (their file names in the volume and in the operator's folder).
NAMES = ("mbostream-control-token", "influxdb-token", "influxdb-admin-password", "grafana-admin-password")
TOKEN_BYTES = 24


def _write(path: Path, value: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    with os.fdopen(fd, "wb") as file:
        file.write(value)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def main(out: Path, provided: Path) -> int:
    out.chmod(0o755)
    for name in NAMES:
        target, mine = out / name, provided / name
        if mine.exists():
            try:
                value = mine.read_bytes().strip()
            except OSError as exc:
                print(f"secrets-init: {mine} cannot be read ({exc.strerror}): make it readable by uid {os.getuid()}", file=sys.stderr)
                return 1
            if not value:
                print(f"secrets-init: {mine} is empty", file=sys.stderr)
                return 1
            if not target.exists() or target.read_bytes() != value:
                _write(target, value)
            print(f"secrets-init: {name}: from {mine}")
        elif target.exists() and target.stat().st_size > 0:
            print(f"secrets-init: {name}: kept")
        else:
            _write(target, secrets.token_hex(TOKEN_BYTES).encode())
            print(f"secrets-init: {name}: generated")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
