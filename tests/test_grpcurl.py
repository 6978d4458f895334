"""grpcurl, the real binary, against a running server: reflection needs no proto files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import shared_file
from server_harness import ServeProcess


def _grpcurl() -> str:
    found = shutil.which("grpcurl")
    if found:
        return found
    gopath = subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True).stdout.strip() if shutil.which("go") else ""
    candidate = Path(gopath or os.path.expanduser("~/go")) / "bin" / "grpcurl"
    if candidate.exists():
        return str(candidate)
    pytest.skip("grpcurl is not installed (CI installs it: go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = ServeProcess(
        str(shared_file("CLX5_mbo.dbn")), "--max", log_path=tmp_path_factory.mktemp("grpcurl") / "serve.log"
    ).start()
    yield srv
    assert srv.stop() == 0


def grpcurl(*args: str) -> str:
    proc = subprocess.run([_grpcurl(), *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_list_services(server) -> None:
    out = grpcurl("-plaintext", server.address, "list").split()
    assert {"mbostream.v1.MarketDataService", "mbostream.v1.ReplayService", "grpc.health.v1.Health"} <= set(out)


def test_describe_service_and_message(server) -> None:
    out = grpcurl("-plaintext", server.address, "describe", "mbostream.v1.MarketDataService")
    for rpc in ("ListInstruments", "GetBook", "StreamBook", "StreamEvents"):
        assert f"rpc {rpc}" in out
    msg = grpcurl("-plaintext", server.address, "describe", "mbostream.v1.GetBookRequest")
    assert "symbol" in msg and "depth" in msg


def test_get_book_as_json(server) -> None:
    out = grpcurl("-d", '{"symbol":"CLX5","depth":10}', "-plaintext", server.address, "mbostream.v1.MarketDataService/GetBook")
    book = json.loads(out)["book"]
    assert book["symbol"] == "CLX5"
    assert len(book["bids"]) == 10 and len(book["asks"]) == 10
    assert int(book["bids"][0]["price"]) > 0


def test_health_check(server) -> None:
    out = grpcurl("-plaintext", server.address, "grpc.health.v1.Health/Check")
    assert json.loads(out)["status"] == "SERVING"
