"""Pacing controls against a real server: every control keeps the replay alive, every number is checked.

The operator panel's buttons (pause, resume, set rate) in every pacing mode, then the numbers a
control call, a flag or a variable may carry: finite and inside the one documented range of
:data:`mbostream.config.RANGES`, or refused with a message that names the field and the range.
"""

from __future__ import annotations

import asyncio
import logging
import math

import grpc
import pytest
from conftest import shared_file
from server_harness import AUTH, RPC_TIMEOUT, in_process, run, settings, stubs, wait_for

from mbostream.config import MAX_UPDATES_PER_SECOND, RANGES
from mbostream.feed import Batch
from mbostream.server.app import serve
from mbostream_core.v1 import market_data_pb2 as md
from mbostream_core.v1 import replay_pb2 as rp


def clx5(**kw):
    return settings(files=(str(shared_file("CLX5_mbo.dbn")),), **kw)


async def _alive_and_advancing(app, seconds: float = 0.6) -> None:
    """The replay task is still running and publishes records within ``seconds``."""
    replay = app._tasks[0]
    before = app.hub.position
    await wait_for(lambda: _advanced(app, before), timeout=10)
    await asyncio.sleep(seconds)
    assert not replay.done(), replay.exception() if replay.done() and not replay.cancelled() else "replay ended"


async def _advanced(app, before: int) -> bool:
    return app.hub.position > before


@pytest.mark.parametrize(
    "controls",
    [
        [rp.SetRateRequest(speed=2)],
        [rp.SetRateRequest(speed=0.5), rp.SetRateRequest(speed=3)],
        ["pause", "resume"],
        ["pause!", "resume", "pause!", "resume"],
        [rp.SetRateRequest(records_per_second=2000), rp.SetRateRequest(speed=2)],
        [rp.SetRateRequest(max=True), rp.SetRateRequest(speed=1)],
    ],
    ids=["speed-2", "speed-twice", "pause-resume", "quick-pause-resume-twice", "rate-then-speed", "max-then-speed"],
)
def test_controls_in_speed_mode_keep_the_replay_running(controls) -> None:
    """A speed replay sleeps between records; a control call during that sleep must not kill it."""

    async def body() -> None:
        # CLX5 at recorded speed: gaps of tens of ms, so the replay is asleep when each call lands;
        # looped, so a burst at max speed does not finish it.
        async with in_process(clx5(pacing="speed", speed=1.0, loop=True)) as (app, channel):
            _, control = stubs(channel)
            await _alive_and_advancing(app, 0.3)
            for call in controls:
                if call in ("pause", "pause!"):
                    # "pause!": the operator clicks resume at once, while the replay still sleeps.
                    await control.Pause(rp.PauseRequest(), metadata=AUTH, timeout=RPC_TIMEOUT)
                    await asyncio.sleep(0.3 if call == "pause" else 0.0)
                elif call == "resume":
                    await control.Resume(rp.ResumeRequest(), metadata=AUTH, timeout=RPC_TIMEOUT)
                else:
                    await control.SetRate(call, metadata=AUTH, timeout=RPC_TIMEOUT)
                await asyncio.sleep(0.05)
            await _alive_and_advancing(app)
            status = (await control.GetStatus(rp.GetStatusRequest(), metadata=AUTH, timeout=RPC_TIMEOUT)).status
            assert status.state == rp.REPLAY_STATE_RUNNING

    run(body())


def test_pause_in_speed_mode_releases_nothing_until_resumed() -> None:
    async def body() -> None:
        async with in_process(clx5(pacing="speed", speed=1.0)) as (app, channel):
            _, control = stubs(channel)
            await _alive_and_advancing(app, 0.2)
            await control.Pause(rp.PauseRequest(), metadata=AUTH, timeout=RPC_TIMEOUT)
            await asyncio.sleep(0.1)  # a release already past its pacing decision completes
            paused_at = app.hub.position
            await asyncio.sleep(0.6)
            assert app.hub.position == paused_at
            await control.Resume(rp.ResumeRequest(), metadata=AUTH, timeout=RPC_TIMEOUT)
            await _alive_and_advancing(app, 0.2)

    run(body())


NON_FINITE_OR_OUT_OF_RANGE = [math.inf, -math.inf, math.nan, 0.0, -1.0, 1e300, 1e-300]


@pytest.mark.parametrize("field", ["records_per_second", "speed"])
def test_set_rate_refuses_numbers_outside_the_documented_range(field: str) -> None:
    setting = {"records_per_second": "rate", "speed": "speed"}[field]
    allowed = RANGES[setting]

    async def body() -> None:
        async with in_process(clx5(pacing="speed", speed=1.0)) as (app, channel):
            _, control = stubs(channel)
            for value in NON_FINITE_OR_OUT_OF_RANGE:
                with pytest.raises(grpc.RpcError) as err:
                    await control.SetRate(rp.SetRateRequest(**{field: value}), metadata=AUTH, timeout=RPC_TIMEOUT)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (value, err.value.details())
                assert field in err.value.details() and allowed.describe() in err.value.details()
            # Both ends of the range are accepted, one after the other (a tiny then a huge factor).
            for value in (allowed.low, allowed.high, allowed.low):
                await control.SetRate(rp.SetRateRequest(**{field: value}), metadata=AUTH, timeout=RPC_TIMEOUT)
                await asyncio.sleep(0.1)
            await control.SetRate(rp.SetRateRequest(speed=1), metadata=AUTH, timeout=RPC_TIMEOUT)
            await _alive_and_advancing(app)

    run(body())


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, MAX_UPDATES_PER_SECOND.high * 2])
def test_stream_book_refuses_a_non_finite_update_limit(value: float) -> None:
    async def body() -> None:
        async with in_process(clx5(pacing="max")) as (_, channel):
            market, _ = stubs(channel)
            call = market.StreamBook(md.StreamBookRequest(max_updates_per_second=value))
            with pytest.raises(grpc.RpcError) as err:
                await asyncio.wait_for(call.read(), RPC_TIMEOUT)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "max_updates_per_second" in err.value.details()
            assert MAX_UPDATES_PER_SECOND.describe() in err.value.details()

    run(body())


class FailingSink:
    """A storage-like sink that breaks after a few batches: a background failure of a real server."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.offered = 0

    def offer(self, batch: Batch) -> None:
        self.offered += 1

    def behind(self) -> bool:
        if self.offered >= self.after:
            raise RuntimeError("the sink broke")
        return False

    async def start(self) -> None:
        return None

    async def stop(self, grace: float) -> None:
        return None


def test_a_dying_background_task_stops_the_server_with_a_failing_exit_code(caplog) -> None:
    """serve() returns non-zero (a supervisor sees the failure) and says why in one error line."""
    caplog.set_level(logging.ERROR)
    code = run(serve(clx5(pacing="max"), sinks=[FailingSink(after=3)], ready_line=False), timeout=60)
    assert code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "replay" in errors[0].getMessage() and "the sink broke" in errors[0].getMessage()


class _Recorder:
    """A publisher that keeps where each batch starts and how long it is."""

    def __init__(self) -> None:
        self.batches: dict[int, int] = {}

    def publish(self, batch: Batch) -> None:
        self.batches[batch.first_replay_seq] = len(batch)

    def backlogged(self) -> bool:
        return False

    async def wait_ready(self) -> None:
        return None


def test_an_event_split_by_a_chunk_boundary_is_finished_alone(tmp_path) -> None:
    """The file is read in chunks of 65,536 records, and a chunk may end inside an event. The replay
    then finishes that event before anything else, unpaced, and only it: the next batch ends where
    every book is whole again. It had applied a whole batch there (4,096 records), unpaced, so a
    rate replay ran that far ahead of its clock at every such boundary (41 ms at 100k records/s)
    and then stopped the feed as long to let the clock catch up."""
    from mbostream.replay import Replayer, ReplayState
    from mbostream_core.dbn import DbnReader
    from mbostream_core.market import Market
    from mbostream_core.synth import generate_file

    path = tmp_path / "split.mbo.dbn"
    generate_file(path, records=200_000, instruments=3, seed=3)
    with DbnReader(str(path)) as reader:
        records = reader.read_all()
    # Where each split event ends: the records applied up to the boundary leave a book inside an
    # event, and the engine, asked for one record more, goes on to the event's end.
    ends = {}
    for boundary in (65_536, 131_072):
        market = Market()
        market.apply(records[:boundary], complete_events=False)
        if not market.consistent:
            ends[boundary] = market.apply(records, boundary, boundary + 1, complete_events=True).end
    assert ends, "no chunk boundary of this file falls inside an event: the test shows nothing"

    recorder = _Recorder()

    async def body() -> None:
        replayer = Replayer([str(path)], Market(), recorder, mode="max", rate=1.0, speed=1.0, loop=False, batch_records=4096)
        task = asyncio.create_task(replayer.run())
        try:
            async with asyncio.timeout(60):
                while replayer.state is not ReplayState.FINISHED:
                    await asyncio.sleep(0.05)
        finally:
            replayer.stop()
            await asyncio.wait_for(task, 10)

    run(body())
    for boundary, end in ends.items():
        # Replay positions start at 1: the record at index i is position i + 1.
        assert recorder.batches.get(boundary + 1) == end - boundary, (boundary, end, recorder.batches.get(boundary + 1))
        assert end - boundary < 4096
