"""Server run identity (epoch): every stream message and book names the run its replay positions
belong to, and a resume into another run is refused, so a client never mixes two runs' books."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from server_harness import AUTH, RPC_TIMEOUT, in_process, is_rpc_error, run, settings, stubs

from mbostream_core.v1 import market_data_pb2 as md
from mbostream_core.v1 import replay_pb2


async def _epoch_of_run(path) -> tuple[str, str, str, str]:
    """(events epoch, book stream epoch, GetBook epoch, ReplayStatus epoch) of one server run."""
    async with in_process(settings(files=(str(path),), pacing="rate", rate=20_000.0, loop=True)) as (app, channel):
        market, replay = stubs(channel)
        events = market.StreamEvents(md.StreamEventsRequest(with_snapshot=True))
        first = await asyncio.wait_for(events.read(), RPC_TIMEOUT)
        events.cancel()
        books = market.StreamBook(md.StreamBookRequest())
        book_message = await asyncio.wait_for(books.read(), RPC_TIMEOUT)
        books.cancel()
        symbol = (await market.ListInstruments(md.ListInstrumentsRequest(), timeout=RPC_TIMEOUT)).instruments[0].symbol
        get_book = await market.GetBook(md.GetBookRequest(symbol=symbol), timeout=RPC_TIMEOUT)
        status = await replay.GetStatus(replay_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT, metadata=AUTH)
        assert app.hub.epoch and first.epoch == app.hub.epoch
        return first.epoch, book_message.epoch, get_book.epoch, status.status.epoch


def test_every_message_of_a_run_names_one_epoch_and_each_run_has_its_own(generated_small) -> None:
    first = run(_epoch_of_run(generated_small))
    second = run(_epoch_of_run(generated_small))
    assert len(set(first)) == 1, f"one run, several epochs: {first}"
    assert len(set(second)) == 1, f"one run, several epochs: {second}"
    assert first[0] != second[0], "two runs of the same file share an epoch"
    assert len(first[0]) == 16 and int(first[0], 16) >= 0  # 64 random bits, hex


def test_a_resume_into_another_epoch_is_failed_precondition_and_the_right_one_resumes(generated_small) -> None:
    async def scenario() -> None:
        s = settings(files=(str(generated_small),), pacing="rate", rate=20_000.0, loop=True)
        async with in_process(s) as (app, channel):
            market, _ = stubs(channel)
            live = market.StreamEvents(md.StreamEventsRequest())
            batch = await asyncio.wait_for(live.read(), RPC_TIMEOUT)
            live.cancel()
            position = batch.batch_sequence

            wrong = market.StreamEvents(
                md.StreamEventsRequest(start_after_sequence=position, resume_epoch="0123456789abcdef")
            )
            with pytest.raises(grpc.RpcError) as refused:
                await asyncio.wait_for(wrong.read(), RPC_TIMEOUT)
            assert is_rpc_error(refused.value, grpc.StatusCode.FAILED_PRECONDITION)
            assert "0123456789abcdef" in refused.value.details() and app.hub.epoch in refused.value.details()

            right = market.StreamEvents(md.StreamEventsRequest(start_after_sequence=position, resume_epoch=batch.epoch))
            resumed = await asyncio.wait_for(right.read(), RPC_TIMEOUT)
            right.cancel()
            assert resumed.replay_sequence[0] == position + 1
            assert resumed.epoch == batch.epoch

            # A client that predates epochs (no resume_epoch) resumes as before.
            legacy = market.StreamEvents(md.StreamEventsRequest(start_after_sequence=position))
            assert (await asyncio.wait_for(legacy.read(), RPC_TIMEOUT)).replay_sequence[0] == position + 1
            legacy.cancel()

    run(scenario())


def test_an_echoed_resume_epoch_is_capped(generated_small) -> None:
    async def scenario() -> None:
        async with in_process(settings(files=(str(generated_small),))) as (_, channel):
            market, _ = stubs(channel)
            call = market.StreamEvents(md.StreamEventsRequest(start_after_sequence=1, resume_epoch="x" * 100_000))
            with pytest.raises(grpc.RpcError) as refused:
                await asyncio.wait_for(call.read(), RPC_TIMEOUT)
            assert is_rpc_error(refused.value, grpc.StatusCode.FAILED_PRECONDITION)
            assert len(refused.value.details()) < 1_000

    run(scenario())
