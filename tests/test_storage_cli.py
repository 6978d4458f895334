"""``mbostream storage`` commands: wiring, and errors that say what to fix."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mbostream.storage.blocks import encode_block
from mbostream.storage.cli import register_cli
from mbostream.storage.settings import STALL_TIMEOUT_SECONDS
from mbostream.storage.spool import Spool


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INFLUX_", "MBOSTREAM_"))}
    return subprocess.run(
        [sys.executable, "-m", "mbostream.storage.cli", *args],
        env={**base, **(env or {})}, capture_output=True, text=True, timeout=60, check=False,
    )


def test_register_cli_adds_the_storage_group() -> None:
    parser = argparse.ArgumentParser(prog="mbostream")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["storage", "drain", "--url", "http://db:8086", "--org", "o", "--bucket", "b"])
    assert args.storage_command == "drain" and callable(args.func)
    args = parser.parse_args(["storage", "bench", "format", "--copies", "1"])
    assert args.which == "format" and callable(args.func)


def test_drain_without_a_token_names_the_variable(tmp_path: Path) -> None:
    done = run_cli("drain", "--url", "http://127.0.0.1:9", "--org", "o", "--bucket", "b", "--spool-dir", str(tmp_path))
    assert done.returncode == 2
    assert "INFLUX_TOKEN: required" in done.stderr


def test_drain_refuses_a_spool_in_use(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    try:
        done = run_cli(
            "drain", "--url", "http://127.0.0.1:9", "--org", "o", "--bucket", "b", "--spool-dir", str(tmp_path / "spool"),
            env={"INFLUX_TOKEN": "t"},
        )
    finally:
        spool.close()
    assert done.returncode == 2
    assert f"in use by another process (pid {os.getpid()})" in done.stderr


def test_drain_of_an_empty_spool_succeeds_without_a_request(tmp_path: Path) -> None:
    done = run_cli(
        "drain", "--url", "http://127.0.0.1:9", "--org", "o", "--bucket", "b", "--spool-dir", str(tmp_path / "spool"),
        env={"INFLUX_TOKEN": "t"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("drained ")


def test_drain_gives_up_when_the_database_is_unreachable(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    spool.append([encode_block(b"m v=1i 1\n")])
    spool.close()
    done = run_cli(
        "drain", "--url", "http://127.0.0.1:9", "--org", "o", "--bucket", "b", "--spool-dir", str(tmp_path / "spool"),
        "--stall-timeout", "1", env={"INFLUX_TOKEN": "t", "MBOSTREAM_STORAGE_RETRY_INITIAL": "0.05", "MBOSTREAM_STORAGE_RETRY_MAX": "0.2"},
    )
    assert done.returncode == 1, done.stderr
    assert "bytes left" in done.stdout



@pytest.mark.parametrize("text", ["nan", "inf", "-1", "0", "1e300"])
def test_drain_refuses_a_stall_timeout_outside_its_range(text: str, tmp_path: Path) -> None:
    """``--stall-timeout`` is checked like every number (issue 10): NaN or infinity never gave up,
    a negative number gave up at once."""
    done = run_cli(
        "drain", "--url", "http://127.0.0.1:9", "--org", "o", "--bucket", "b", "--spool-dir", str(tmp_path),
        f"--stall-timeout={text}", env={"INFLUX_TOKEN": "t"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "argument --stall-timeout" in done.stderr and STALL_TIMEOUT_SECONDS.describe() in done.stderr
    assert "Traceback" not in done.stderr

def test_the_storage_bench_module_runs_on_its_own() -> None:
    """``python -m mbostream.tools.bench_storage`` (its documented entry) parses the same flags as
    ``mbostream storage bench`` and runs: it once called a ``register`` that no longer existed."""
    done = subprocess.run(
        [sys.executable, "-m", "mbostream.tools.bench_storage", "format", "--copies", "1", "--rounds", "1", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["benchmark"] == "format" and result["records"] > 0 and result["native_points_per_s"] > 0
