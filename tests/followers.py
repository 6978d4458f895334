"""StreamEvents followers for tests, each recording what it received: the Python client's
``EventFollower`` in a thread, the Go client's ``EventStream`` as a process
(``clients/go/internal/followevents``).

``seen`` holds, in order, ``("live", first, last, count, contiguous inside)`` per live batch and
``("snapshot", position)`` where the client started over from a snapshot (the Go follower with
``snapshots=True``); ``batches`` the live ones as ``(first, last, count, contiguous inside)``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mbostream_client import Backoff, EventFollower, MarketDataClient
from server_harness import repo

Seen = list[tuple[Any, ...]]


def _live(seen: Seen) -> list[tuple[int, int, int, bool]]:
    return [item[1:] for item in seen if item[0] == "live"]


class StartOverCauses(logging.Handler):
    """The error each "cannot resume …; starting over from a snapshot" warning of EventFollower names."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.causes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("cannot resume") and record.args:
            self.causes.append(type(record.args[0]).__name__)  # type: ignore[index]


class PythonFollower(threading.Thread):
    """The Python client's EventFollower from the live edge of ``target``; ``start_over.causes``
    says why it started over from a snapshot, each time it did."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.seen: Seen = []
        self.stats: Any = None
        self.error: BaseException | None = None
        self.start_over = StartOverCauses()
        self._stopping = False
        # The thread's loop and the follow's task, for stop() to cancel from another thread.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # Its warnings are seen whatever level an earlier test left the root logger at (a CLI run
        # in the test process configures logging for the whole process).
        self._logger = logging.getLogger("mbostream_client._follow")
        self._level = self._logger.level
        self._logger.setLevel(logging.WARNING)
        self._logger.addHandler(self.start_over)

    @property
    def batches(self) -> list[tuple[int, int, int, bool]]:
        return _live(self.seen)

    def run(self) -> None:
        try:
            asyncio.run(self._follow())
        except asyncio.CancelledError as exc:
            if not self._stopping:
                self.error = exc
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    async def _follow(self) -> None:
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        if self._stopping:
            return
        async with MarketDataClient(self.target) as client:
            follower = EventFollower(client, with_snapshot=False, backoff=Backoff(base=0.02, factor=2, cap=0.5))
            self.stats = follower.stats
            async for batch, new_snapshot in follower.follow():
                seq = batch.replay_sequence
                if batch.snapshot:
                    if new_snapshot and len(seq):
                        self.seen.append(("snapshot", int(seq[-1])))
                elif len(seq):
                    inside = bool(np.all(np.diff(seq.astype(np.int64)) == 1))
                    self.seen.append(("live", int(seq[0]), int(seq[-1]), len(seq), inside))

    def stop(self) -> None:
        """Ends the follow and waits for the thread (bounded): its task is cancelled, so a stream
        with nothing coming (a paused replay) ends at once instead of after the join's timeout."""
        self._stopping = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass  # the loop is closed: the follow has ended
        self.join(30)
        self._logger.removeHandler(self.start_over)
        self._logger.setLevel(self._level)


class GoFollower:
    """``followevents [-snapshots] target`` as a process; ``stats`` from its last line: connections,
    resumes, rebuilds, OUT_OF_RANGE answers, gaps and duplicates the client caught."""

    def __init__(self, binary: Path, target: str, log: Path, *, snapshots: bool = False) -> None:
        command = [str(binary), *(["-snapshots"] if snapshots else []), target]
        with log.open("ab") as err:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True)
        self.seen: Seen = []
        self.stats: tuple[int, ...] | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def batches(self) -> list[tuple[int, int, int, bool]]:
        return _live(self.seen)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            fields = line.split()
            if fields[0] == "stats":
                self.stats = tuple(int(f) for f in fields[1:])
            elif fields[0] == "snapshot":
                self.seen.append(("snapshot", int(fields[1])))
            else:
                first, last, count = (int(f) for f in fields)
                self.seen.append(("live", first, last, count, last - first + 1 == count))

    def stop(self) -> int:
        """SIGTERM by PID; its exit code once its output is read."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self._reader.join(10)
        return code


def build_go_follower(out: Path) -> Path:
    """Builds ``followevents`` into ``out``; its path."""
    binary = out / "followevents"
    subprocess.run(
        ["go", "build", "-buildvcs=false", "-o", str(binary), "./internal/followevents"],
        cwd=repo() / "clients" / "go", check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    return binary


def assert_no_silent_gap(name: str, seen: Seen) -> int:
    """Every live batch is contiguous inside and follows the one before it, except right after an
    explicit snapshot, whose position it follows: no gap, no duplicate. Returns how many times the
    client started over from a snapshot."""
    assert any(item[0] == "live" for item in seen), f"{name}: no live batch received"
    expected: int | None = None
    snapshots = 0
    for item in seen:
        if item[0] == "snapshot":
            snapshots += 1
            expected = item[1] + 1
            continue
        _, first, last, count, inside = item
        assert inside and last - first + 1 == count, f"{name}: batch {first}..{last} is not contiguous"
        assert expected is None or first == expected, f"{name}: after position {expected - 1} came {first} (gap or duplicate)"
        expected = last + 1
    return snapshots
