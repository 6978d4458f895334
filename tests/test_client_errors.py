"""The Python client's RESOURCE_EXHAUSTED causes, each from a real ``mbostream serve`` subprocess.

The server answers RESOURCE_EXHAUSTED for a slow reader (tests/test_client.py), its stream limit and
an address that guessed operator tokens too often; gRPC itself answers it for a message over the
receiver's size limit, on either side. Each cause is its own class (as in the Go client), and a
message too large ends a followed stream instead of reconnecting to it forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Final, TypeVar

import grpc
import pytest
from server_harness import ServeProcess

client_pkg = pytest.importorskip(
    "mbostream_client", reason="the Python client is not installed: pip install -e clients/python"
)
from mbostream_client import (  # noqa: E402
    AuthThrottledError,
    AuthenticationError,
    Backoff,
    BookReplica,
    EventFollower,
    MarketDataClient,
    MessageTooLargeError,
    ReplayClient,
    RpcError,
    SlowConsumerError,
    StreamLimitError,
)
from mbostream_client._exceptions import error_from_rpc  # noqa: E402

TOKEN: Final = "client-errors-test-operator-token"
#: Upper bound of any single await in these tests.
STEP: Final = 20.0
#: Upper bound of a whole scenario.
SCENARIO: Final = 90.0
#: A receive limit no book with its orders, and no snapshot batch, fits in.
TINY_LIMIT: Final = 512
#: The server's own limit on a request (server/mbostream/server/app.py).
SERVER_REQUEST_LIMIT: Final = 4 * 1024 * 1024
#: Wrong tokens one address may present before it is refused (server/mbostream/server/peers.py).
MAX_AUTH_FAILURES: Final = 10

T = TypeVar("T")


def start_server(log_dir: Path, files: list[Path], *args: str) -> ServeProcess:
    """A ``mbostream serve`` logging to ``log_dir`` (a pytest tmp path: pytest removes old runs')."""
    return ServeProcess(*map(str, files), "--no-store", *args, log_path=log_dir / "serve.log", token=TOKEN).start()


@pytest.fixture(scope="module")
def server(generated_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """The 60,000-record generated file at 20,000 records/s, looping; stopped by PID.

    Only the throttle test makes control calls here (it leaves 127.0.0.1 throttled for a minute).
    """
    started = start_server(tmp_path_factory.mktemp("client-errors"), [generated_small], "--rate", "20000", "--loop")
    try:
        yield started
    finally:
        started.stop()


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, SCENARIO)

    return asyncio.run(bounded())


async def within(awaitable: Awaitable[T], seconds: float = STEP) -> T:
    return await asyncio.wait_for(awaitable, seconds)


async def first_symbol(target: str) -> str:
    """A symbol the replay has a book for (waits until it has one)."""
    async with MarketDataClient(target) as client, asyncio.timeout(STEP):
        while not (found := await client.list_instruments()):
            await asyncio.sleep(0.05)
    return found[0].symbol


def tiny_client(target: str) -> MarketDataClient:
    return MarketDataClient(target, options=[("grpc.max_receive_message_length", TINY_LIMIT)])


def assert_too_large(error: RpcError, method: str) -> None:
    assert type(error) is MessageTooLargeError
    assert (error.method, error.code) == (method, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "larger than max" in error.details.lower()


# -- a message over a size limit ---------------------------------------------------------------------
def test_a_response_over_the_clients_limit_is_message_too_large(server: ServeProcess) -> None:
    async def scenario() -> None:
        symbol = await first_symbol(server.address)
        async with tiny_client(server.address) as client:
            with pytest.raises(MessageTooLargeError) as unary:
                await within(client.get_book(symbol, include_orders=True))
            assert_too_large(unary.value, "GetBook")
            assert f"vs. {TINY_LIMIT})" in unary.value.details

            books = client.stream_book([symbol], depth=0, include_orders=True)
            with pytest.raises(MessageTooLargeError) as book_stream:
                await within(books.__anext__())
            assert_too_large(book_stream.value, "StreamBook")

            events = client.stream_events(with_snapshot=True)
            with pytest.raises(MessageTooLargeError) as event_stream:
                await within(events.__anext__())
            assert_too_large(event_stream.value, "StreamEvents")

    run(scenario())


def test_a_followed_stream_ends_on_a_message_too_large_instead_of_reconnecting(server: ServeProcess) -> None:
    """Every reconnect would meet the same snapshot batch: the follower raises after one connection."""

    async def scenario() -> None:
        async with tiny_client(server.address) as client:
            follower = EventFollower(client, backoff=Backoff(base=0.01, cap=0.05), reconnect=True)
            with pytest.raises(MessageTooLargeError) as ended:
                async with asyncio.timeout(STEP):
                    async for _ in follower.follow():
                        pytest.fail("no batch fits in the limit")
            assert_too_large(ended.value, "StreamEvents")
            assert (follower.stats.connections, follower.stats.snapshots) == (1, 1)

            replica = BookReplica(client)
            with pytest.raises(MessageTooLargeError):
                await within(replica.run())

    run(scenario())


def test_a_request_over_the_servers_limit_is_message_too_large(server: ServeProcess) -> None:
    async def scenario() -> None:
        async with MarketDataClient(server.address) as client:
            with pytest.raises(MessageTooLargeError) as refused:
                await within(client.get_book("X" * (SERVER_REQUEST_LIMIT + 1)))
            assert_too_large(refused.value, "GetBook")
            assert f"vs. {SERVER_REQUEST_LIMIT})" in refused.value.details
            # The same client, asking for less, is served.
            assert (await within(client.get_book(await first_symbol(server.address), depth=1))).symbol

    run(scenario())


# -- the operator-token throttle ---------------------------------------------------------------------
def test_wrong_tokens_from_one_address_are_throttled(server: ServeProcess) -> None:
    async def scenario() -> None:
        async with ReplayClient(server.address, token="not-the-operator-token") as guesser:
            for _ in range(MAX_AUTH_FAILURES):
                with pytest.raises(AuthenticationError):
                    await within(guesser.status())
            with pytest.raises(AuthThrottledError) as throttled:
                await within(guesser.status())
        assert throttled.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert throttled.value.retry_after is not None and 0 < throttled.value.retry_after <= 60
        # The cool-down refuses the address itself: the right token does not get through either.
        async with ReplayClient(server.address, token=TOKEN) as operator:
            with pytest.raises(AuthThrottledError):
                await within(operator.status())

    run(scenario())


# -- the stream limit ---------------------------------------------------------------------------------
def test_a_stream_over_the_servers_limit_is_stream_limit(generated_small: Path, tmp_path: Path) -> None:
    limited = start_server(tmp_path, [generated_small], "--rate", "20000", "--loop", "--max-streams", "1")
    try:

        async def scenario() -> None:
            async with MarketDataClient(limited.address) as client:
                held = client.stream_events()
                assert len(await within(held.__anext__()))
                refused = client.stream_book()
                with pytest.raises(StreamLimitError) as over:
                    await within(refused.__anext__())
                assert type(over.value) is StreamLimitError
                assert over.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "stream limit reached (1 concurrent streams)" in over.value.details
                await within(held.aclose())

        run(scenario())
    finally:
        limited.stop()


# -- every message form, one class each --------------------------------------------------------------
@pytest.mark.parametrize(
    ("details", "expected"),
    [
        # The server's texts (server/mbostream/errors.py, hub.py, server/peers.py).
        ("slow reader: fell more than 512 batches behind; resume with start_after_sequence=42 or resubscribe "
         "with with_snapshot", SlowConsumerError),  # fmt: skip
        ("stream limit reached (1000 concurrent streams)", StreamLimitError),
        ("stream limit per client address reached (256 concurrent streams from ipv4:127.0.0.1)", StreamLimitError),
        ("too many failed control-token attempts from ipv4:127.0.0.1: retry in 59 s", AuthThrottledError),
        # gRPC's size checks: C core (Python, the server) and gRPC-Go (the Go client's transport).
        ("Received message larger than max (5000 vs. 512)", MessageTooLargeError),
        ("grpc: received message larger than max (5000 vs. 512)", MessageTooLargeError),
        ("grpc: message after decompression larger than max (5000 vs. 512)", MessageTooLargeError),
    ],
)
def test_each_resource_exhausted_cause_has_its_class(details: str, expected: type[RpcError]) -> None:
    status = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details
    )
    error = error_from_rpc("StreamEvents", status)
    assert type(error) is expected
    assert error.details == details
    if isinstance(error, SlowConsumerError):
        assert error.resume_after == 42
    if isinstance(error, AuthThrottledError):
        assert error.retry_after == 59.0
