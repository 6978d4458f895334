"""The command line starts light: ``import mbostream.cli`` (what every ``mbostream`` command does
first) registers every command's flags without importing the server's heavy libraries; a command
imports what it needs when it runs. Structural checks (which modules are loaded), not timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: What only the serving, bus, storage and tracing commands need.
HEAVY = ("grpc", "nats", "influxdb_client", "prometheus_client", "opentelemetry.sdk")


def _loaded_after(code: str) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """Runs ``code`` in a fresh interpreter, then reports which of :data:`HEAVY` it had imported."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stderr.strip().splitlines()[-1]), proc


def test_importing_the_cli_imports_no_server_library() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", f"import mbostream.cli, sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_building_the_parser_imports_no_server_library() -> None:
    loaded, _ = _loaded_after("from mbostream.cli import build_parser\nbuild_parser().format_help()")
    assert loaded == []


def test_book_command_imports_no_server_library(generated_small: Path) -> None:
    loaded, proc = _loaded_after(
        f"from mbostream.cli import main\nassert main(['book', {str(generated_small)!r}, '--depth', '1']) == 0"
    )
    assert loaded == []
    assert len(json.loads(proc.stdout)["instruments"]) == 3


def test_storage_package_exports_resolve_on_first_use() -> None:
    import mbostream.storage as storage
    from mbostream.storage import drain, errors, metrics, settings, sink

    homes = {"drain_spool": drain, "DrainReport": drain, "StorageMetrics": metrics, "StorageSettings": settings}
    homes |= {"StorageSink": sink, **{name: errors for name in storage.__all__ if name.endswith("Error")}}
    assert set(homes) == set(storage.__all__)
    for name, module in homes.items():
        assert getattr(storage, name) is getattr(module, name)
    assert set(storage.__all__) <= set(dir(storage))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = storage.nothing_here  # type: ignore[attr-defined]
