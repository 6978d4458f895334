"""``mbostream bench wire``: the server's share of publish→client latency, from a packet capture.

``bench e2e`` measures from a message's ``ts_out`` (when the server published it) to when the
load client has it: the server, the network and the client together. A capture taken on the
server's host splits that: the time the kernel saw a packet carrying a message minus the message's
``ts_out`` is the server's share (its event loop, its transport thread, its socket), the rest is
the network's and the client's. This reads a pcap file (tcpdump, ``--time-stamp-precision=nano``
for nanoseconds), follows every TCP connection's server-to-client bytes, takes the HTTP/2 DATA
frames apart into gRPC messages and reads each message's ``ts_out`` (field 3 of StreamBookResponse
and StreamEventsResponse, its last occurrence as a protobuf parser does).

Plaintext gRPC only: a TLS connection's bytes are not readable (its flows report no message).
The capture and the server must share a clock (the same host). A message's ts_out is read as the
server's own delivery metric reads it (:func:`~mbostream.server.interceptors.message_ts_out`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from mbostream.server.interceptors import message_ts_out

#: HTTP/2 frame types and flags used here (RFC 9113).
_DATA, _PADDED = 0, 0x8
#: Link-layer header lengths by pcap link type: BSD loopback, Ethernet, Linux cooked v1 and v2.
_LINK_HEADER = {0: 4, 1: 14, 113: 16, 276: 20}
#: A frame longer than this is no frame of ours: the parser lost its place (max frame size 2**24-1).
_MAX_FRAME = 1 << 24
_SEQ_MASK = 0xFFFFFFFF
#: The longest frame a connection caught mid-stream is taken up from (a frame is recognised only
#: whole, so what one that begins in a segment has there is kept until the rest comes).
_UNSYNCED_KEEP = 1 << 16


class CaptureError(ValueError):
    """The file is not a pcap capture this reads."""


@dataclass
class _Flow:
    """One connection's server-to-client bytes: where the next segment goes, what is not a whole
    frame yet, and each HTTP/2 stream's bytes that are not a whole gRPC message yet."""

    next_seq: int | None = None
    synced: bool = False
    frames: bytes = b""
    streams: dict[int, bytes] = field(default_factory=lambda: defaultdict(bytes))


def _packets(stream: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
    """``(capture time ns, link type, frame bytes)`` of each packet of a pcap file."""
    header = stream.read(24)
    if len(header) < 24:
        raise CaptureError("not a pcap file (shorter than its header)")
    for endian in ("<", ">"):
        magic = struct.unpack(endian + "I", header[:4])[0]
        if magic in (0xA1B2C3D4, 0xA1B23C4D):
            break
    else:
        raise CaptureError("not a pcap file (pcapng is not read: tcpdump -w writes pcap)")
    scale = 1 if magic == 0xA1B23C4D else 1000
    link = struct.unpack(endian + "I", header[20:24])[0] & 0x0FFFFFFF
    if link not in _LINK_HEADER:
        raise CaptureError(f"link type {link} is not read (Ethernet, Linux cooked or loopback captures are)")
    record = struct.Struct(endian + "IIII")
    while True:
        head = stream.read(16)
        if len(head) < 16:
            return
        seconds, fraction, captured, _length = record.unpack(head)
        yield seconds * 1_000_000_000 + fraction * scale, link, stream.read(captured)


def _tcp(link: int, frame: bytes) -> tuple[tuple[bytes, int, bytes, int], int, int, bytes] | None:
    """``((src, sport, dst, dport), seq, flags, payload)`` of a TCP segment over IPv4 or IPv6."""
    ip = frame[_LINK_HEADER[link] :]
    if not ip:
        return None
    version = ip[0] >> 4
    if version == 4:
        if ip[9] != 6:
            return None
        total = struct.unpack(">H", ip[2:4])[0]
        header = (ip[0] & 15) * 4
        src, dst, ip = ip[12:16], ip[16:20], ip[:total]
    elif version == 6:
        if ip[6] != 6:  # extension headers: not followed
            return None
        total = 40 + struct.unpack(">H", ip[4:6])[0]
        header, src, dst, ip = 40, ip[8:24], ip[24:40], ip[:total]
    else:
        return None
    tcp = ip[header:]
    if len(tcp) < 20:
        return None
    sport, dport, seq = struct.unpack(">HHI", tcp[:8])
    offset = (tcp[12] >> 4) * 4
    return (src, sport, dst, dport), seq, tcp[13], tcp[offset:]


def _tiled(body: bytes) -> bool:
    """Whether ``body`` is one or more whole gRPC messages end to end."""
    at = 0
    while at < len(body):
        if len(body) - at < 5 or body[at] not in (0, 1):
            return False
        at += 5 + int.from_bytes(body[at + 1 : at + 5], "big")
    return 0 < at == len(body)


def _sync(data: bytes) -> tuple[int | None, int]:
    """Where the first DATA frame that is whole gRPC messages begins in bytes caught
    mid-connection (the capture started after the connection did), or None; and where to look
    again from with the next segment. The frame's body must be one or more whole messages end to
    end (the native transport gathers a call's messages of a connection's turn into one frame),
    so a frame is recognised only once all of it is here: the first that begins here and ends
    later is looked at again (frames up to _UNSYNCED_KEEP long), else the last 13 bytes are."""
    pending = None
    for at in range(max(0, len(data) - 13)):
        length = int.from_bytes(data[at : at + 3], "big")
        if data[at + 3] != _DATA or data[at + 4] not in (0, 1) or not 5 <= length <= _UNSYNCED_KEEP:
            continue
        end = at + 9 + length
        if end > len(data):
            pending = at if pending is None else pending
        elif _tiled(data[at + 9 : end]):
            return at, at
    return None, max(0, len(data) - 13) if pending is None else pending


def _messages(flow: _Flow, payload: bytes) -> Iterator[bytes]:
    """The gRPC messages ``payload`` completes on ``flow``."""
    data = flow.frames + payload
    if not flow.synced:
        start, again = _sync(data)
        if start is None:
            flow.frames = data[again:]
            return
        data, flow.synced = data[start:], True
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if length >= _MAX_FRAME:
            flow.synced, flow.frames, flow.streams = False, b"", defaultdict(bytes)
            return
        if len(data) < 9 + length:
            break
        kind, flags = data[3], data[4]
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        body, data = data[9 : 9 + length], data[9 + length :]
        if kind != _DATA:
            continue
        if flags & _PADDED and body:
            body = body[1 : len(body) - body[0]]
        buffered = flow.streams[stream_id] + body
        while len(buffered) >= 5:
            size = int.from_bytes(buffered[1:5], "big")
            if len(buffered) < 5 + size:
                break
            yield buffered[5 : 5 + size]
            buffered = buffered[5 + size :]
        flow.streams[stream_id] = buffered
    flow.frames = data


def server_delays(path: Path, ports: set[int] | None = None) -> dict[int, list[int]]:
    """Capture time minus ``ts_out`` (ns) of every message each server port sent, by port. A
    server port is the source port of the DATA; ``ports`` keeps only those (None: every port)."""
    flows: dict[tuple[bytes, int, bytes, int], _Flow] = {}
    delays: dict[int, list[int]] = defaultdict(list)
    with path.open("rb") as stream:
        for captured, link, frame in _packets(stream):
            segment = _tcp(link, frame)
            if segment is None:
                continue
            key, seq, flags, payload = segment
            if ports is not None and key[1] not in ports:
                continue
            flow = flows.setdefault(key, _Flow())
            if flags & 0x02:  # SYN: the stream starts at a frame boundary (the server's preface)
                flow.next_seq, flow.synced, flow.frames = (seq + 1) & _SEQ_MASK, True, b""
                continue
            if not payload:
                continue
            if flow.next_seq is not None and seq != flow.next_seq:
                behind = (flow.next_seq - seq) & _SEQ_MASK
                if behind < 0x80000000:  # starts before what we have: a retransmission, or part of one
                    if behind >= len(payload):
                        continue
                    payload, seq = payload[behind:], flow.next_seq
                else:  # bytes missing (the capture dropped them): find our place again
                    flow.synced, flow.frames, flow.streams = False, b"", defaultdict(bytes)
            flow.next_seq = (seq + len(payload)) & _SEQ_MASK
            for message in _messages(flow, payload):
                ts_out = message_ts_out(message)
                if ts_out:
                    delays[key[1]].append(captured - ts_out)
    return dict(delays)


def _percentile(values: list[int], q: float) -> int:
    return values[min(len(values) - 1, int(q * len(values)))]


def summarize(delays: dict[int, list[int]]) -> list[dict[str, float | int]]:
    """Per server port: messages and the delay's p50, p99, p99.9 and max in ms."""
    rows: list[dict[str, float | int]] = []
    for port, values in sorted(delays.items()):
        values = sorted(values)
        rows.append(
            {
                "port": port,
                "messages": len(values),
                **{name: round(_percentile(values, q) / 1e6, 3) for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999))},
                "max_ms": round(values[-1] / 1e6, 3),
            }
        )
    return rows


#: How long a capture may take to end after its seconds are up (tcpdump writes what it holds).
_CAPTURE_GRACE_SECONDS = 30.0


class Capture:
    """tcpdump of what the server's ``ports`` send on the loopback, for ``seconds`` after a delay,
    in a temp folder; :meth:`finish` reads it as ``bench wire`` does. The capture runs pinned to
    ``cpus`` (the load client's: the server's core stays as it was) and needs what tcpdump needs
    (root, or CAP_NET_RAW). What it cannot do it reports as not checked, never as a figure."""

    def __init__(self, seconds: float, ports: dict[str, int], cpus: set[int] | None) -> None:
        self.seconds = seconds
        #: The server's ports by role ("book": the native book port, "gRPC").
        self.ports = ports
        self.cpus = cpus
        self._dir = tempfile.TemporaryDirectory(prefix="mbostream-capture-")
        self.path = Path(self._dir.name) / "server.pcap"
        self._process: subprocess.Popen[bytes] | None = None
        self._missing = ""

    def start(self, delay: float) -> None:
        """Starts the capture ``delay`` seconds from now (the client's warm-up), in the background."""
        tcpdump = shutil.which("tcpdump")
        if tcpdump is None:
            self._missing = "tcpdump is not installed (Debian: apt-get install tcpdump)"
            return
        sources = " or ".join(f"src port {port}" for port in sorted(set(self.ports.values())))
        command = [
            "sh", "-c", 'sleep "$0" && exec timeout "$1" "$2" -i lo -s 0 --time-stamp-precision=nano -w "$3" "$4"',
            f"{delay:g}", f"{self.seconds:g}", tcpdump, str(self.path), f"tcp and ({sources})",
        ]  # fmt: skip
        if self.cpus is not None:
            command = ["taskset", "-c", ",".join(map(str, sorted(self.cpus))), *command]
        # A session of its own: stopping it stops tcpdump too, not only the timeout(1) above it.
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )

    def _kill(self) -> None:
        assert self._process is not None
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:  # ended meanwhile
            pass
        self._process.communicate()

    def abandon(self) -> None:
        """Stops the capture and removes its folder (the run it was for failed)."""
        if self._process is not None:
            self._kill()
        self._dir.cleanup()

    def finish(self, timeout: float) -> dict[str, Any]:
        """Waits for the capture (``timeout``: seconds until it must have ended) and reads it:
        ``{"seconds", "rows": [{"role", "port", "messages", "p50_ms", ...}]}``, or ``{"not_checked": why}``."""
        try:
            if self._process is None:
                return {"not_checked": self._missing}
            try:
                _, err = self._process.communicate(timeout=timeout + _CAPTURE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self._kill()
                return {"not_checked": "tcpdump did not end"}
            # timeout(1) exits 124 when it ended tcpdump at the end of the seconds, as it should.
            if self._process.returncode not in (0, 124) or not self.path.exists():
                detail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {self._process.returncode}"]
                return {"not_checked": f"tcpdump failed: {detail[0]}"}
            rows = summarize(server_delays(self.path, set(self.ports.values())))
            role = {port: name for name, port in self.ports.items()}
            return {"seconds": self.seconds, "rows": [{"role": role[row["port"]], **row} for row in rows]}
        finally:
            self._dir.cleanup()


def format_share(share: dict[str, Any], cpus: Any) -> str:
    """One report line of a :class:`Capture`'s result."""
    if "not_checked" in share:
        return f"  the server's share of publish→client: not checked ({share['not_checked']})"
    parts = [
        f"{row['role']} port p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  p99.9 {row['p999_ms']} ms ({row['messages']:,} messages)"
        for row in share["rows"]
    ]
    where = f"tcpdump on CPU {cpus}" if cpus else "tcpdump"
    return f"  the server's share of publish→client (capture time - ts_out; a {share['seconds']:g} s capture, {where}): " + (
        "; ".join(parts) or "no message with a ts_out captured"
    )


def _cmd_wire(args: argparse.Namespace) -> int:
    try:
        delays = server_delays(args.capture, set(args.port) if args.port else None)
    except (OSError, CaptureError) as exc:
        print(f"mbostream bench wire: {exc}", file=sys.stderr)
        return 2
    rows = summarize(delays)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no gRPC message with a ts_out in the capture (a TLS connection, or not the server's port?)")
        return 1
    print("server port: messages; capture time - ts_out (the server's share of publish→client)")
    for row in rows:
        print(
            f"  {row['port']}: {row['messages']:,} messages; p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms"
            f"  p99.9 {row['p999_ms']} ms  max {row['max_ms']} ms"
        )
    return 0
