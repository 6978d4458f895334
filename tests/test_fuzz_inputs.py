"""Fuzzing the file inputs: thousands of damaged DBN files through ``book``, ``audit`` and ``serve``.

Seeded and deterministic. Small real and generated files are damaged by byte flips (anywhere,
header included), truncations, splices of two files, metadata-length shifts, and the same done to
the decompressed bytes of compressed files (re-compressed, so the damage reaches the records).
Every mutant goes through ``book`` and ``audit`` in-process (the command line's own parser and
error handling, :func:`mbostream.cli.execute`, output captured) and through the server ``serve``
runs, in-process (:class:`mbostream.server.app.App`: checked before it listens, then a real gRPC
server on a free port replaying the file at max speed, then shut down); a seeded sample also goes
through a real ``mbostream serve`` subprocess. Every run is bounded in time. The promise checked:
exit 0, or exit 2 with exactly one line (``mbostream COMMAND: error: …`` on stderr, or the server's
one error log line); never a traceback, never another code.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import zstandard
from conftest import SHARED_DATA
from grpc import aio as grpc_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_harness import settings

from mbostream.cli import build_parser, execute
from mbostream.errors import MbostreamError
from mbostream.replay import ReplayState
from mbostream.server.app import EXIT_BAD_INPUT, EXIT_OK, App
from mbostream_core.dbn import DbnReader
from mbostream_core.synth import generate_file
from mbostream_core.v1 import market_data_pb2, market_data_pb2_grpc, replay_pb2, replay_pb2_grpc

SEED = 20_251_002
#: Mutants made, each run through book, audit and an in-process server.
MUTANTS = 2_200
#: Of them, how many also run through a real `mbostream serve` subprocess.
SERVE_SAMPLE = 16
#: A serve run: at most this long to listen, report SERVING and stop.
SERVE_SECONDS = 30.0
#: The ReplayService token of the serve subprocesses (asked for the replay's state).
FUZZ_TOKEN = "fuzz-operator-token"
#: Records in each source slice: small, so thousands of runs take seconds.
SLICE_RECORDS = 240
#: Every way a mutant is made (see :func:`_mutant`); each must be drawn.
MUTANT_KINDS = ("flip", "flip-records", "truncate", "splice", "metadata-length", "cut-record")
#: Slices of real Databento files (../shared/data), beside the generated ones: (file, first record).
REAL_SLICES = (
    ("CLX5_mbo.dbn", 0),
    ("CLX5_mbo.dbn", 20_000),
    ("glbx-mdp3-esm4-20240508T0000.mbo.dbn.zst", 0),
    ("glbx-mdp3-esh4-20231225.mbo.dbn.zst", 9_000),
)
#: The generated file the generated slices come from.
GENERATED_NAME = "fuzz-source.mbo.dbn"


@dataclass(frozen=True)
class Source:
    name: str
    #: The whole file as stored (compressed for .zst).
    data: bytes
    #: The DBN stream (decompressed) and where its records start.
    dbn: bytes
    header_size: int
    compressed: bool


def _slice(path: Path, start: int, records: int, *, compress: bool) -> Source:
    """The metadata and ``records`` whole records from record ``start`` of a DBN file."""
    with DbnReader(path) as reader:
        header_size = reader.header_size
        raw = path.read_bytes()
        if reader.info.compressed:
            dbn = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True).read()
        else:
            dbn = raw
    body = dbn[header_size:]
    size = dbn[header_size] * 4  # MBO files: every record the same length
    piece = dbn[:header_size] + body[start * size : (start + records) * size]
    data = zstandard.ZstdCompressor(level=3).compress(piece) if compress else piece
    return Source(f"{path.name}[{start}:+{records}]{'.zst' if compress else ''}", data, piece, header_size, compress)


def _sources(tmp: Path) -> list[Source]:
    """Generated slices always; real Databento slices when ../shared/data is there, which CI
    (CI=true) requires: there the fuzz must damage real files too, not only generated ones."""
    missing = [name for name, _ in REAL_SLICES if not (SHARED_DATA / name).exists()]
    if missing and os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
        pytest.fail(f"CI fuzzes real files too, and {sorted(set(missing))} are absent from {SHARED_DATA}")
    generated = tmp / GENERATED_NAME
    generate_file(generated, records=2_000, instruments=3, seed=7)
    sources = [
        _slice(generated, 0, SLICE_RECORDS, compress=False),  # the snapshot start of each book
        _slice(generated, 1_200, SLICE_RECORDS, compress=False),
        _slice(generated, 600, SLICE_RECORDS, compress=True),
    ]
    for name, start in REAL_SLICES:
        if (SHARED_DATA / name).exists():
            sources.append(_slice(SHARED_DATA / name, start, SLICE_RECORDS, compress=name.endswith(".zst")))
    return sources


def _flip(rng: random.Random, data: bytes, lo: int = 0) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(lo, len(out))
        out[i] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
    return bytes(out)


def _recompress(source: Source, dbn: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(dbn) if source.compressed else dbn


def _mutant(rng: random.Random, sources: list[Source]) -> tuple[str, bytes]:
    """One damaged file: (what was done, its bytes)."""
    source = rng.choice(sources)
    kind = rng.choice(MUTANT_KINDS)
    if kind == "flip":  # anywhere in the stored bytes: compressed streams get damaged frames
        return f"{kind} {source.name}", _flip(rng, source.data)
    if kind == "flip-records":  # the records themselves, then stored as the source is
        return f"{kind} {source.name}", _recompress(source, _flip(rng, source.dbn, source.header_size))
    if kind == "truncate":
        return f"{kind} {source.name}", source.data[: rng.randrange(len(source.data))]
    if kind == "cut-record":  # the DBN stream cut inside the records, then stored as the source is
        cut = rng.randrange(source.header_size, len(source.dbn))
        return f"{kind} {source.name}", _recompress(source, source.dbn[:cut])
    if kind == "splice":  # a prefix of one file's DBN stream, a suffix of another's
        other = rng.choice(sources)
        a = rng.randrange(len(source.dbn))
        b = rng.randrange(len(other.dbn))
        return f"{kind} {source.name}+{other.name}", _recompress(source, source.dbn[:a] + other.dbn[b:])
    (length,) = struct.unpack_from("<I", source.dbn, 4)
    shifted = source.dbn[:4] + struct.pack("<I", max(0, length + rng.choice([-8, -4, -3, -1, 1, 2, 4, 8]))) + source.dbn[8:]
    return f"{kind} {source.name}", _recompress(source, shifted)


def _check(command: str, code: int, stderr: str, what: str) -> None:
    """Exit 0, or exit 2 with exactly one ``mbostream COMMAND: error:`` line."""
    assert "Traceback" not in stderr, (what, stderr[-2000:])
    assert code in (0, 2), (what, code, stderr[-2000:])
    if code == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mbostream {command}: error: "), (what, stderr[-2000:])


def _run_in_process(parser, argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = execute(parser.parse_args(argv))  # an exception escaping here would be a traceback
    return code, err.getvalue()


class _ErrorRecords(logging.Handler):
    """The ERROR (and worse) log records of one in-process server run."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _serve_in_process(path: Path, what: str) -> tuple[str, str | None, int]:
    """One mutant through the server `mbostream serve` runs: ``(outcome, message, exit code)``.

    Refused: its start raises an mbostream error (the command prints it as its one line, exit 2)
    before anything listens. Otherwise it listens on a free port and replays at max speed until the
    replay finishes, when it must be SERVING with its books listed ("served", exit 0), or until the
    damage stops it ("stopped by damage", exit 2). Either way it is then shut down.
    """
    app = App(settings(files=(str(path),), pacing="max", grace_seconds=0.0))
    try:
        await asyncio.wait_for(app.start(), SERVE_SECONDS)
    except MbostreamError as exc:
        return "refused", str(exc), EXIT_BAD_INPUT
    stopped = asyncio.ensure_future(app.wait_stopped())
    try:
        async with asyncio.timeout(SERVE_SECONDS):
            while app.replayer.state is not ReplayState.FINISHED and not stopped.done():
                await asyncio.wait({stopped}, timeout=0.002)
            if stopped.done():
                return "stopped by damage", None, app.exit_code
            async with grpc_aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                while (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status != health_pb2.HealthCheckResponse.SERVING:
                    await asyncio.sleep(0.002)
                market = market_data_pb2_grpc.MarketDataServiceStub(channel)
                await market.ListInstruments(market_data_pb2.ListInstrumentsRequest(), timeout=5)
    finally:
        if not stopped.done():
            await asyncio.wait_for(app.shutdown(), SERVE_SECONDS)
        stopped.cancel()
    return "served", None, app.exit_code


def _check_served_in_process(runner: asyncio.Runner, path: Path, what: str, book_code: int) -> str:
    """Runs :func:`_serve_in_process` on one mutant and checks the promise; returns the outcome."""
    errors = _ErrorRecords()
    logging.getLogger().addHandler(errors)
    try:
        outcome, message, code = runner.run(_serve_in_process(path, what))
    finally:
        logging.getLogger().removeHandler(errors)
    assert not [r for r in errors.records if r.exc_info], (what, [r.getMessage() for r in errors.records])
    if outcome == "refused":
        assert message is not None and "\n" not in message and not errors.records, (what, message)
    elif outcome == "served":
        assert code == EXIT_OK and not errors.records, (what, code, [r.getMessage() for r in errors.records])
    else:
        lines = [r.getMessage() for r in errors.records]
        assert code == EXIT_BAD_INPUT and len(lines) == 1 and "replay failed" in lines[0], (what, code, lines)
        assert str(path) in lines[0] and "\n" not in lines[0], (what, lines)
    # The server takes exactly the files `book` takes.
    assert (outcome == "served") == (book_code == 0), (what, outcome, book_code)
    return outcome


def _serve(path: Path, what: str, book_code: int) -> str:
    """A real `mbostream serve` on one mutant, bounded: refused (exit 2, one line), or up and
    SERVING and then stopped cleanly (exit 0), or up and then stopped by the damage (exit 2, one
    error line in its log). A file `book` takes must be served; one it refuses must not be.
    Returns which."""
    token_file = path.with_suffix(".token")
    token_file.write_text(FUZZ_TOKEN)
    command = [
        sys.executable, "-m", "mbostream.cli", "--log-format", "text", "--log-level", "error", "serve",
        "--port", "0", "--metrics-port", "-1", "--no-store", "--max",
        "--control-token-file", str(token_file), str(path),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()  # the ready line, or "" when it exits first
        outcome = "refused"
        if ready:
            address = json.loads(ready)["listening"]
            deadline = time.monotonic() + SERVE_SECONDS
            with grpc.insecure_channel(address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                control = replay_pb2_grpc.ReplayServiceStub(channel)
                auth = (("authorization", f"Bearer {FUZZ_TOKEN}"),)
                # SERVING comes before the replay has read the whole file (the damage of a
                # compressed file can show at its very end): wait for SERVING and a finished
                # replay, or for the damage to stop it, so the outcome never depends on when
                # our signal lands.
                while process.poll() is None and time.monotonic() < deadline:
                    with contextlib.suppress(grpc.RpcError):
                        serving = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
                        state = control.GetStatus(replay_pb2.GetStatusRequest(), timeout=5, metadata=auth).status.state
                        if serving and state == replay_pb2.REPLAY_STATE_FINISHED:
                            break
                    time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=SERVE_SECONDS)
        if ready:
            # Served means it finished the replay and stopped cleanly on our SIGTERM.
            outcome = "served" if process.returncode == 0 else "stopped by damage"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    code = process.returncode
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, (what, stderr[-2000:])
    lines = stderr.strip().splitlines()
    if outcome == "served":
        assert code == 0 and not lines, (what, code, stderr[-2000:])
    elif outcome == "refused":
        _check("serve", code, stderr, what)
        assert code == 2, (what, code)
    else:
        assert code == 2 and len(lines) == 1 and " ERROR " in lines[0], (what, code, stderr[-2000:])
    assert (outcome == "served") == (book_code == 0), (what, outcome, book_code)
    return outcome


def test_damaged_files_give_exit_0_or_one_line_and_exit_2(tmp_path: Path) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    sources = _sources(tmp_path)
    parser = build_parser()
    outcomes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    damaged: Counter[str] = Counter()  # mutants per origin: a generated or a real file
    served_in_process: Counter[str] = Counter()
    serve_candidates: list[tuple[Path, str, int]] = []
    path = tmp_path / "mutant.dbn"
    with asyncio.Runner() as runner:
        for i in range(MUTANTS):
            what, data = _mutant(rng, sources)
            path.write_bytes(data)
            kinds[what.split()[0]] += 1
            damaged["generated" if what.split()[1].startswith(GENERATED_NAME) else "real"] += 1
            codes = []
            for command in ("book", "audit"):
                code, stderr = _run_in_process(parser, [command, str(path)])
                _check(command, code, stderr, f"mutant {i}: {what}")
                outcomes[f"{command} exit {code}"] += 1
                codes.append(code)
            # Both read the same file: one cannot take a file the other refuses.
            assert codes[0] == codes[1], (f"mutant {i}: {what}", codes)
            served_in_process[_check_served_in_process(runner, path, f"mutant {i}: {what}", codes[0])] += 1
            if rng.random() < 4 * SERVE_SAMPLE / MUTANTS:
                kept = tmp_path / f"mutant-{i}.dbn"
                kept.write_bytes(data)
                serve_candidates.append((kept, f"mutant {i}: {what}", codes[0]))
    in_process = time.monotonic() - started
    sample = random.Random(SEED).sample(serve_candidates, min(SERVE_SAMPLE, len(serve_candidates)))
    with ThreadPoolExecutor(max_workers=2) as pool:
        served = Counter(pool.map(lambda item: _serve(*item), sample))
    print(
        f"\nfuzz: {MUTANTS} mutants of {len(sources)} sources through book, audit and an in-process "
        f"server in {in_process:.1f} s ({dict(sorted(outcomes.items()))}; server: {dict(served_in_process)}; "
        f"kinds: {dict(sorted(kinds.items()))}; origins: {dict(damaged)}); "
        f"{len(sample)} through a serve subprocess: {dict(served)}; {time.monotonic() - started:.1f} s in all"
    )
    assert MUTANTS >= 2_000 and sum(served_in_process.values()) == MUTANTS and len(sample) == SERVE_SAMPLE
    # Byte flips, truncations and splices (and the rest), of generated files and, with the shared
    # data there (always in CI), of real ones.
    assert set(kinds) == set(MUTANT_KINDS), kinds
    real_sources = sum(not s.name.startswith(GENERATED_NAME) for s in sources)
    assert damaged["generated"] and (damaged["real"] > 0) == (real_sources > 0), (damaged, real_sources)
    # The mutants must exercise every outcome, or the fuzz proves nothing.
    assert outcomes["book exit 0"] and outcomes["book exit 2"] and outcomes["audit exit 0"] and outcomes["audit exit 2"]
    assert all(served_in_process[o] for o in ("refused", "served", "stopped by damage")), served_in_process
