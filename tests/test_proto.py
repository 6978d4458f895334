"""Protobuf API checks: buf lint, generated code freshness, and the generated Python modules."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Final

import pytest

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
SERVER_DIR: Final = REPO_ROOT / "server"
BUF: Final = REPO_ROOT / "tools" / "node_modules" / ".bin" / "buf"
TOOL_TIMEOUT_SECONDS: Final = 300
RPC_TIMEOUT_SECONDS: Final = 10
MAX_FILL_DEPTH: Final = 3
# scripts/generate exits with this code when a code generation tool is not installed.
EXIT_TOOL_MISSING: Final = 127
PROTO_MODULES: Final = ("book_pb2", "market_data_pb2", "replay_pb2")
SERVICE_MODULES: Final = ("market_data_pb2_grpc", "replay_pb2_grpc")

if str(SERVER_DIR) not in sys.path:
    sys.path.insert(0, str(SERVER_DIR))

from google.protobuf import json_format  # noqa: E402
from google.protobuf.descriptor import Descriptor, FieldDescriptor  # noqa: E402
from google.protobuf.message import Message  # noqa: E402


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_SECONDS,
        check=False,
    )


def test_buf_lint_passes() -> None:
    if not BUF.exists():
        pytest.skip("buf is not installed in tools/node_modules: run npm ci --prefix tools")
    if shutil.which("node") is None:
        pytest.skip("node is not installed, and the npm buf launcher needs it")
    result = _run(str(BUF), "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_up_to_date() -> None:
    result = _run(str(REPO_ROOT / "scripts" / "check-generated"))
    if result.returncode == EXIT_TOOL_MISSING:
        pytest.skip(f"code generation tools are not installed:\n{result.stderr}")
    assert result.returncode == 0, result.stdout + result.stderr


def _generated(name: str) -> ModuleType:
    return importlib.import_module(f"mbostream_core.v1.{name}")


def _message_classes() -> Iterator[type[Message]]:
    for module_name in PROTO_MODULES:
        module = _generated(module_name)
        for name in module.DESCRIPTOR.message_types_by_name:
            yield getattr(module, name)


_SCALAR_SAMPLES: Final = {
    FieldDescriptor.CPPTYPE_INT32: -7,
    FieldDescriptor.CPPTYPE_INT64: -(2**40),
    FieldDescriptor.CPPTYPE_UINT32: 7,
    FieldDescriptor.CPPTYPE_UINT64: 2**63 + 1,
    FieldDescriptor.CPPTYPE_DOUBLE: 2.5,
    FieldDescriptor.CPPTYPE_FLOAT: 0.5,
    FieldDescriptor.CPPTYPE_BOOL: True,
    FieldDescriptor.CPPTYPE_ENUM: 1,
}


def _sample(field: FieldDescriptor) -> object:
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"AB"
    if field.type == FieldDescriptor.TYPE_STRING:
        return "CLX5"
    return _SCALAR_SAMPLES[field.cpp_type]


def _fill(message: Message, depth: int = 0) -> None:
    """Sets every field of `message` (the last member of each oneof wins) to a non-default value."""
    descriptor: Descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        value = getattr(message, field.name)
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            value["order_not_found"] = 3
        elif field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            child = value.add() if field.is_repeated else value
            child.SetInParent()
            if depth < MAX_FILL_DEPTH:
                _fill(child, depth + 1)
        elif field.is_repeated:
            value.append(_sample(field))
        else:
            setattr(message, field.name, _sample(field))


@pytest.mark.parametrize("message_class", list(_message_classes()), ids=lambda cls: cls.__name__)
def test_every_message_round_trips(message_class: type[Message]) -> None:
    message = message_class()
    _fill(message)

    from_binary = message_class.FromString(message.SerializeToString())
    from_json = json_format.Parse(json_format.MessageToJson(message), message_class())

    assert from_binary == message
    assert from_json == message


def test_get_book_request_accepts_the_documented_grpcurl_json() -> None:
    market_data = _generated("market_data_pb2")

    request = json_format.Parse('{"symbol":"CLX5","depth":10}', market_data.GetBookRequest())

    assert request.WhichOneof("instrument") == "symbol"
    assert request.symbol == "CLX5"
    assert request.depth == 10


def test_start_after_sequence_distinguishes_zero_from_unset() -> None:
    market_data = _generated("market_data_pb2")
    request = market_data.StreamEventsRequest()
    assert not request.HasField("start_after_sequence")

    request.start_after_sequence = 0

    assert request.HasField("start_after_sequence")


def test_event_columns_are_packed() -> None:
    market_data = _generated("market_data_pb2")

    wire = market_data.StreamEventsResponse(instrument_id=[1, 2, 3]).SerializeToString()

    # Field 14, wire type 2 (length-delimited): one tag and one length for the whole column.
    assert wire == bytes([14 << 3 | 2, 3, 1, 2, 3])


def test_generated_services_serve_over_a_real_channel() -> None:
    grpc = pytest.importorskip("grpc")
    book = _generated("book_pb2")
    market_data = _generated("market_data_pb2")
    market_data_grpc = _generated("market_data_pb2_grpc")
    for module_name in SERVICE_MODULES:
        _generated(module_name)

    class FixedBook(market_data_grpc.MarketDataServiceServicer):  # type: ignore[misc]
        def GetBook(self, request: Message, context: object) -> Message:  # noqa: N802 (gRPC name)
            best_bid = book.Level(price=75_120_000_000, size=3, count=1)
            snapshot = book.BookSnapshot(symbol=request.symbol, bids=[best_bid])
            return market_data.GetBookResponse(book=snapshot)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    market_data_grpc.add_MarketDataServiceServicer_to_server(FixedBook(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = market_data_grpc.MarketDataServiceStub(channel)
            response = stub.GetBook(
                market_data.GetBookRequest(symbol="CLX5", depth=10), timeout=RPC_TIMEOUT_SECONDS
            )
    finally:
        server.stop(grace=None)

    assert response.book.symbol == "CLX5"
    assert response.book.bids[0].price == 75_120_000_000
