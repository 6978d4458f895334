"""``mbostream bench wire``: a capture's server-to-client gRPC messages, each taken apart to its
``ts_out``, give the server's share of publish→client. The capture here is written byte by byte
(Ethernet, IPv4 and IPv6, TCP, HTTP/2, gRPC framing) so that every delay is known in advance:
split and padded frames, a retransmission, connections caught mid-stream (one frame a message, and
frames that gather several), the client's own
requests, a restamped book message (two ts_out fields: the last one counts)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mbostream.server.wire import ProtobufBookEncoder
from mbostream.hub import BookPayload
from mbostream.tools.bench_wire import CaptureError, server_delays, summarize
from mbostream_core.v1 import book_pb2
from mbostream_core.v1 import market_data_pb2 as md

SERVER = 50051


def bench_wire(*args: str) -> subprocess.CompletedProcess[str]:
    """``mbostream bench wire`` in a process of its own (the CLI configures logging for its process)."""
    return subprocess.run(
        [sys.executable, "-m", "mbostream.cli", "bench", "wire", *args], capture_output=True, text=True, timeout=120
    )
T0 = 1_800_000_000_000_000_000  # ns: a ts_out the size of today's


def _frame(kind: int, payload: bytes, stream: int = 1, flags: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _grpc(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _book(ts_out: int, instrument: int = 7) -> bytes:
    book = book_pb2.BookSnapshot(instrument_id=instrument, publisher_id=1, replay_sequence=instrument * 100)
    return md.StreamBookResponse(book=book, ts_out=ts_out).SerializeToString()


def _tcp(src: tuple[bytes, int], dst: tuple[bytes, int], seq: int, payload: bytes, flags: int = 0x18) -> bytes:
    return struct.pack(">HHIIBBHHH", src[1], dst[1], seq, 0, 5 << 4, flags, 65535, 0, 0) + payload


def _ether(src: tuple[bytes, int], dst: tuple[bytes, int], seq: int, payload: bytes, flags: int = 0x18) -> bytes:
    tcp = _tcp(src, dst, seq, payload, flags)
    if len(src[0]) == 4:
        ip = struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0) + src[0] + dst[0]
        return b"\x00" * 12 + b"\x08\x00" + ip + tcp
    ip = struct.pack(">IHBB", 6 << 28, len(tcp), 6, 64) + src[0] + dst[0]
    return b"\x00" * 12 + b"\x86\xdd" + ip + tcp


def _pcap(path: Path, packets: list[tuple[int, bytes]]) -> None:
    out = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1)
    for at, frame in packets:
        out += struct.pack("<IIII", at // 1_000_000_000, at % 1_000_000_000, len(frame), len(frame)) + frame
    path.write_bytes(out)


def test_the_server_share_of_each_message_is_read_from_a_capture(tmp_path: Path) -> None:
    lo4, lo6 = bytes([127, 0, 0, 1]), bytes(15) + b"\x01"
    server, client_a, client_b, client_d = (lo4, SERVER), (lo4, 40001), (lo4, 40002), (lo4, 40004)
    server6, client_c = (lo6, SERVER), (lo6, 40003)
    # A book restamped by a later phase: the first ts_out is when it was taken, the last when sent.
    taken = BookPayload(_book(T0 - 9_000_000), b"", T0 - 9_000_000)
    restamped = ProtobufBookEncoder().restamp(taken, T0 + 1_000)
    m1 = restamped.single + md.StreamBookResponse(epoch="e").SerializeToString()
    m2, m3 = _book(T0 + 2_000, 8), _book(T0 + 3_000, 9)
    m4, m6 = _book(T0 + 4_000, 10), _book(T0 + 6_000, 11)
    m7, m8 = _book(T0 + 7_000, 12), _book(T0 + 8_000, 13)
    m5 = md.StreamEventsResponse(batch_sequence=5, ts_out=T0 + 5_000).SerializeToString()
    request = md.StreamBookRequest(depth=10, max_updates_per_second=2.5).SerializeToString()

    settings = _frame(4, b"")
    one = settings + _frame(0, _grpc(m1))
    split = _frame(0, _grpc(m2), stream=3)
    gathered = _frame(0, _grpc(m7) + _grpc(m8), stream=11)
    padded = _frame(0, bytes([4]) + _grpc(m3) + b"\x00" * 4, stream=5, flags=0x8)
    seq = 1001
    packets = [
        (T0 + 10_000, _ether(server, client_a, 1000, b"", flags=0x12)),  # SYN-ACK: bytes start at 1001
        (T0 + 11_000, _ether(client_a, server, 1, _frame(0, _grpc(request)))),  # the client's request
        (T0 + 20_000, _ether(server, client_a, seq, one)),
        (T0 + 30_000, _ether(server, client_a, seq + len(one), split[:20])),
        (T0 + 40_000, _ether(server, client_a, seq + len(one) + 20, split[20:] + padded)),
        (T0 + 50_000, _ether(server, client_a, seq, one)),  # retransmitted: seen already
        # Partly a retransmission: the last 10 bytes again, then a new frame.
        (T0 + 57_000, _ether(server, client_a, seq + len(one) + len(split) + len(padded) - 10, padded[-10:] + _frame(0, _grpc(m6), stream=7))),
        # Caught mid-stream: the end of an earlier frame, then a whole one.
        (T0 + 60_000, _ether(server, client_b, 77_000, b"\x17\x2a\x99\x10" + _frame(0, _grpc(m4), stream=9))),
        # Caught mid-stream on a connection whose frames gather a call's messages (as the native
        # transport writes a connection's turn): the first whole frame, two messages, spans two segments.
        (T0 + 62_000, _ether(server, client_d, 9_000, b"\x00\x01" + gathered[:15])),
        (T0 + 64_000, _ether(server, client_d, 9_017, gathered[15:])),
        (T0 + 70_000, _ether(server6, client_c, 5, b"", flags=0x12)),
        (T0 + 80_000, _ether(server6, client_c, 6, _frame(0, _grpc(m5)))),
    ]
    capture = tmp_path / "e2e.pcap"
    _pcap(capture, packets)

    delays = server_delays(capture)
    assert set(delays) == {SERVER}  # the client's request has no ts_out varint: no delay
    assert sorted(delays[SERVER]) == sorted(
        [20_000 - 1_000, 40_000 - 2_000, 40_000 - 3_000, 57_000 - 6_000, 60_000 - 4_000, 64_000 - 7_000, 64_000 - 8_000, 80_000 - 5_000]
    )
    assert server_delays(capture, {40001}) == {}
    (row,) = summarize(delays)
    assert row["port"] == SERVER and row["messages"] == 8
    assert row["p50_ms"] == 0.056 and row["max_ms"] == 0.075

    # The command: --json, its table, and a port that sent nothing.
    done = bench_wire(str(capture), "--port", str(SERVER), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [row]
    done = bench_wire(str(capture))
    assert done.returncode == 0 and f"{SERVER}: 8 messages; p50 0.056 ms" in done.stdout, done.stdout
    assert bench_wire(str(capture), "--port", "40001").returncode == 1


def test_a_file_that_is_not_a_pcap_capture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    path.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(40))
    with pytest.raises(CaptureError, match="pcapng"):
        server_delays(path)
    done = bench_wire(str(path))
    assert done.returncode == 2 and "pcapng" in done.stderr, done
    assert summarize({}) == []
