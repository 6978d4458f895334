"""Bad input, as users meet it: one clear line and exit 2, never a traceback, never exit 0 for a failure.

Each case runs the real command (``book``, ``audit``, ``serve``) as a subprocess on a real broken
file or directory, or a real client against a real server, and checks what a user or a supervisor
sees: the exit code and stderr.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import zstandard
from conftest import shared_file
from grpc import aio as grpc_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mbo_records import Rec, px, records
from server_harness import RPC_TIMEOUT, ServeProcess, in_process, run, settings, stubs, wait_for

from mbostream_core.dbn import DbnReader
from mbostream.errors import MAX_MESSAGE_CHARS
from mbostream_core.synth import generate_file
from mbostream_core.v1 import market_data_pb2 as md

SERVE_FLAGS = ("--port", "0", "--metrics-port", "-1", "--no-store")


#: ``python -c`` program: parse the command line and import what the commands load, then drop to
#: uid argv[1] and run the command (the interpreter's own files may be private to root, too).
_AS_USER = """
import os, sys
import mbostream.cli, mbostream.loading, mbostream.server.app, mbostream.tools.audit, mbostream_core.render
# serve's first asyncio.to_thread imports this lazily; the Python install may be private to us too.
import concurrent.futures.thread
args = mbostream.cli.build_parser().parse_args(sys.argv[2:])
user = int(sys.argv[1])
os.setgroups([])
os.setgid(user)
os.setuid(user)
sys.exit(mbostream.cli.execute(args))
"""


def mbostream(
    *args: str, env: dict[str, str] | None = None, user: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The real command; ``user``: run it as that uid (and gid) with no privileges.

    The process imports the CLI and every module its commands load as it is, then drops to
    ``user`` before running: the checkout it imports from may be private to us (a CI clone under a
    0700 temp folder), while the data file is what must be unreadable.
    """
    command = [sys.executable, "-m", "mbostream.cli", "--log-format", "text", *args]
    if user is not None:
        command = [sys.executable, "-c", _AS_USER, str(user), "--log-format", "text", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env={**os.environ, "MBOSTREAM_STORE": "false", **(env or {})},
    )  # fmt: skip


def assert_one_line_error(proc: subprocess.CompletedProcess[str], command: str, *needles: str) -> None:
    """Exit 2 and exactly one stderr line, ``mbostream COMMAND: error: ...`` naming every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"mbostream {command}: error: "), lines[0]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


def clx5_header_size() -> int:
    with DbnReader(shared_file("CLX5_mbo.dbn")) as reader:
        return reader.header_size


# --- files whose bytes are wrong ------------------------------------------------------------------


@pytest.mark.parametrize("delta", [-4, -3, 2, 4, 8])
def test_metadata_length_off_by_a_few_bytes(tmp_path: Path, delta: int) -> None:
    data = shared_file("CLX5_mbo.dbn").read_bytes()
    (length,) = struct.unpack_from("<I", data, 4)
    path = tmp_path / f"meta{delta}.dbn"
    path.write_bytes(data[:4] + struct.pack("<I", length + delta) + data[8:])
    for command in ("book", "audit"):
        assert_one_line_error(mbostream(command, str(path)), command, str(path), "corrupt")
    assert_one_line_error(mbostream("serve", *SERVE_FLAGS, str(path)), "serve", str(path), "corrupt")


def test_a_trade_before_any_f_last_is_audited_like_book_and_serve_handle_it(tmp_path: Path) -> None:
    """A T/F record naming a book with no F_LAST yet: the book is simply not judged there."""
    head = shared_file("CLX5_mbo.dbn").read_bytes()[: clx5_header_size()]
    body = records(
        [
            Rec("T", "B", 0, px(60), 1, flags=0, instrument_id=432669),
            Rec("F", "A", 5, px(60), 1, flags=0, instrument_id=432669),
            Rec("A", "B", 1, px(59), 2, instrument_id=432669),
        ]
    )
    path = tmp_path / "trade-first.dbn"
    path.write_bytes(head + body.tobytes())
    for command in ("book", "audit"):
        proc = mbostream(command, str(path))
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr

    # serve applies the same records and serves the book they leave: one bid of 2 at 59.
    log_path = tmp_path / "serve.log"
    server = ServeProcess("--max", str(path), log_path=log_path).start(timeout=60)
    try:

        async def book_when_applied() -> md.GetBookResponse:
            replies: list[md.GetBookResponse] = []
            async with grpc_aio.insecure_channel(server.address) as channel:
                market, _ = stubs(channel)

                async def applied() -> bool:
                    replies.append(await market.GetBook(md.GetBookRequest(instrument_id=432669), timeout=RPC_TIMEOUT))
                    return replies[-1].book.bid_level_count > 0

                await wait_for(applied, timeout=30)
            return replies[-1]

        reply = run(book_when_applied(), timeout=40)
        assert server.process is not None and server.process.poll() is None  # still serving
    finally:
        code = server.stop()
    assert code == 0
    assert [(level.price, level.size) for level in reply.book.bids] == [(px(59), 2)] and not reply.book.asks
    log = log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-2000:]


# --- files that cannot be read --------------------------------------------------------------------


def _unreadable_runner(path: Path) -> int | None:
    """A uid that cannot read ``path`` (chmod 000): nobody, when we are root (root reads anything)."""
    path.chmod(0)
    return 65534 if os.geteuid() == 0 else None


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's own tmp_path is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="mbostream-unreadable-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_an_unreadable_file_is_a_clear_error(open_dir: Path) -> None:
    path = open_dir / "locked.dbn"
    shutil.copyfile(shared_file("CLX5_mbo.dbn"), path)
    user = _unreadable_runner(path)
    for command in ("book", "audit"):
        assert_one_line_error(mbostream(command, str(path), user=user), command, str(path), "permission denied")
    proc = mbostream("serve", *SERVE_FLAGS, str(path), user=user, env={"HOME": str(open_dir)})
    assert_one_line_error(proc, "serve", str(path), "permission denied")


def test_a_directory_is_not_a_data_file(tmp_path: Path) -> None:
    for command in ("book", "audit"):
        assert_one_line_error(mbostream(command, str(tmp_path)), command, str(tmp_path), "is a directory")


# --- serve: what is checked before serving, and a file that turns bad mid-replay ------------------


def test_serve_refuses_a_file_truncated_mid_record_before_serving(tmp_path: Path) -> None:
    path = tmp_path / "cut.dbn"
    path.write_bytes(shared_file("CLX5_mbo.dbn").read_bytes()[:1_000_000])
    proc = mbostream("serve", *SERVE_FLAGS, str(path))
    assert_one_line_error(proc, "serve", str(path), "ends inside a record")
    assert "listening" not in proc.stdout


def test_serve_refuses_half_a_zst_before_serving(tmp_path: Path) -> None:
    whole = tmp_path / "whole.dbn.zst"
    generate_file(whole, records=100_000, instruments=2, seed=3)
    half = tmp_path / "half.dbn.zst"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    proc = mbostream("serve", *SERVE_FLAGS, str(half))
    assert_one_line_error(proc, "serve", str(half), "truncated")
    assert "listening" not in proc.stdout


def _corrupt_late_block(path: Path, out: Path) -> None:
    """A copy of a zstd file with one compressed block near the end damaged, its framing intact.

    Only decompression can find this, so the server starts serving and meets it mid-replay.
    """
    data = bytearray(path.read_bytes())
    params = zstandard.get_frame_parameters(bytes(data))
    pos = zstandard.frame_header_size(bytes(data))
    blocks = []
    while True:
        header = int.from_bytes(data[pos : pos + 3], "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        blocks.append((pos, kind, size))
        pos += 3 + (1 if kind == 1 else size)
        if last:
            break
    assert not params.has_checksum and len(blocks) > 10
    start, _, _ = next(b for b in reversed(blocks[: int(len(blocks) * 0.9)]) if b[1] == 2 and b[2] > 64)
    for i in range(start + 3, start + 3 + 4):  # the block's literals header: decoding fails there
        data[i] ^= 0xFF
    out.write_bytes(bytes(data))


def test_a_file_found_bad_mid_replay_stops_the_server_with_exit_2_and_one_line(tmp_path: Path) -> None:
    good = tmp_path / "good.dbn.zst"
    generate_file(good, records=400_000, instruments=2, seed=5)
    bad = tmp_path / "late-damage.dbn.zst"
    _corrupt_late_block(good, bad)
    log_path = tmp_path / "serve.log"
    server = ServeProcess("--rate", "150000", str(bad), log_path=log_path)
    server.start(timeout=60)  # the damage is late: the server is up and SERVING first
    try:

        async def watch() -> list[int]:
            seen: list[int] = []
            async with grpc_aio.insecure_channel(server.address) as channel:
                stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
                try:
                    async with asyncio.timeout(30):
                        async for reply in stream:
                            seen.append(reply.status)
                except grpc.RpcError:
                    pass  # the server went away after reporting
            return seen

        statuses = run(watch(), timeout=40)
        code = server.wait(30)
    finally:
        server.stop()
    assert code == 2
    assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    log = log_path.read_text()
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and str(bad) in errors[0] and "replay failed" in errors[0], errors


# --- the spool ------------------------------------------------------------------------------------


def test_a_locked_spool_is_one_line_and_no_leftover_server(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    with open(spool / "spool.lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process holds it
        proc = mbostream(
            "serve", "--port", "0", "--metrics-port", "0", str(shared_file("CLX5_mbo.dbn")),
            env={"MBOSTREAM_STORE": "true", "MBOSTREAM_SPOOL_DIR": str(spool)},
        )  # fmt: skip
    assert_one_line_error(proc, "serve", str(spool), "in use")


def test_an_unusable_spool_directory_is_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("not a directory")
    proc = mbostream(
        "serve", "--port", "0", "--metrics-port", "-1", str(shared_file("CLX5_mbo.dbn")),
        env={"MBOSTREAM_STORE": "true", "MBOSTREAM_SPOOL_DIR": str(not_a_dir / "spool")},
    )  # fmt: skip
    assert_one_line_error(proc, "serve", str(not_a_dir / "spool"))


# --- clients --------------------------------------------------------------------------------------


def test_a_client_going_away_mid_stream_is_not_an_error(tmp_path: Path) -> None:
    """Clients that stop reading, then cancel or disconnect while the server's write is blocked."""
    log_path = tmp_path / "serve.log"
    server = ServeProcess("--max", "--loop", str(shared_file("CLX5_mbo.dbn")), log_path=log_path).start()
    try:

        async def go_away(cancel: bool, events: bool) -> None:
            channel = grpc_aio.insecure_channel(server.address)
            market, _ = stubs(channel)
            call = (
                market.StreamEvents(md.StreamEventsRequest(with_snapshot=True))
                if events
                else market.StreamBook(md.StreamBookRequest(include_orders=True))
            )
            await asyncio.wait_for(call.read(), RPC_TIMEOUT)
            await asyncio.sleep(1.5)  # flow control fills up: the server's next write waits
            if cancel:
                call.cancel()
            await asyncio.wait_for(channel.close(), RPC_TIMEOUT)

        async def clients() -> None:
            await asyncio.gather(*(go_away(i % 2 == 0, i % 4 < 2) for i in range(8)))
            await asyncio.sleep(1.0)

        run(clients(), timeout=60)
        assert server.process is not None and server.process.poll() is None
    finally:
        assert server.stop() == 0
    log = log_path.read_text()
    assert "ExecuteBatchError" not in log and "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_a_client_going_away_is_one_debug_line_naming_the_method(caplog) -> None:
    """grpc's own ERROR report of a write to a call the client already left (``ExecuteBatchError``,
    with its traceback) becomes one DEBUG line naming the method, and nothing when DEBUG is off.

    The end-to-end test above cannot force grpc to report it (grpc often notices the cancellation
    first), so the report is made here as grpc makes it, through grpc's logger.
    """
    from grpc._cython import cygrpc

    from mbostream.server.interceptors import quiet_client_disconnects

    quiet_client_disconnects()
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    method = "/mbostream.v1.MarketDataService/StreamBook"

    def report() -> None:
        try:
            raise cygrpc.ExecuteBatchError('Failed "execute_batch": (SendMessageOperation,)')
        except cygrpc.ExecuteBatchError:
            grpc_log.exception("Unexpected [ExecuteBatchError] raised by servicer method [%s]", method)

    caplog.set_level(logging.DEBUG)
    report()
    gone = [r for r in caplog.records if r.name == grpc_log.name]
    assert len(gone) == 1, [r.getMessage() for r in gone]
    assert gone[0].levelno == logging.DEBUG and gone[0].exc_info is None
    assert gone[0].getMessage() == f"client went away mid-stream: {method}"

    caplog.clear()
    caplog.set_level(logging.INFO)
    report()
    assert [r for r in caplog.records if r.name == grpc_log.name] == []

    # Any other grpc error keeps its level and its traceback.
    caplog.clear()
    try:
        raise RuntimeError("another failure")
    except RuntimeError:
        grpc_log.exception("Unexpected [RuntimeError] raised by servicer method [%s]", method)
    kept = [r for r in caplog.records if r.name == grpc_log.name]
    assert len(kept) == 1 and kept[0].levelno == logging.ERROR and kept[0].exc_info is not None


def test_echoed_input_is_capped_in_status_details_and_errors(tmp_path: Path) -> None:
    huge = "X" * 3_000_000

    async def body() -> None:
        async with in_process(settings(files=(str(shared_file("CLX5_mbo.dbn")),), pacing="max")) as (_, channel):
            market, _ = stubs(channel)
            with pytest.raises(grpc.RpcError) as err:
                await market.GetBook(md.GetBookRequest(symbol=huge), timeout=RPC_TIMEOUT)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            details = err.value.details()
            assert len(details) <= MAX_MESSAGE_CHARS and details.startswith("unknown instrument symbol='XXX")
            # Cut to its start, then the whole message's length (MbostreamError.__str__).
            assert details.endswith(f"… [{len(f'unknown instrument symbol={huge!r}'):,} characters in all]"), details[-80:]

    run(body())
    proc = mbostream("book", str(shared_file("CLX5_mbo.dbn")), "--instrument", "Y" * 100_000)
    assert_one_line_error(proc, "book", "unknown instrument")
    assert len(proc.stderr) <= MAX_MESSAGE_CHARS + 100
