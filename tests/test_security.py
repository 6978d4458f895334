"""Control API hardening on a real server: failed token attempts throttled per client address,
streams limited per client address beside the global limit."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio as grpc_aio

from mbostream.errors import AuthError, AuthThrottledError, PermissionDeniedError
from mbostream.server.interceptors import check_bearer
from mbostream.server.peers import MAX_AUTH_FAILURES, AuthThrottle, peer_address
from mbostream_core.v1 import market_data_pb2, replay_pb2

from server_harness import AUTH, RPC_TIMEOUT, in_process, run, settings, stubs

WRONG = (("authorization", "Bearer not-the-token"),)


async def _status_code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc_aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_wrong_tokens_from_one_address_are_throttled() -> None:
    async def scenario() -> None:
        async with in_process(settings(sample_records=20_000)) as (_, channel):
            _, replay = stubs(channel)
            request = replay_pb2.GetStatusRequest()
            assert await _status_code(replay.GetStatus(request, metadata=AUTH, timeout=RPC_TIMEOUT)) is grpc.StatusCode.OK
            for _ in range(MAX_AUTH_FAILURES):
                code = await _status_code(replay.GetStatus(request, metadata=WRONG, timeout=RPC_TIMEOUT))
                assert code is grpc.StatusCode.UNAUTHENTICATED
            # The address now cools down: refused whatever it presents, the right token included.
            for metadata in (WRONG, AUTH):
                call = replay.GetStatus(request, metadata=metadata, timeout=RPC_TIMEOUT)
                try:
                    await call
                    pytest.fail("a cooling-down address was served")
                except grpc_aio.AioRpcError as exc:
                    assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "too many failed control-token attempts from ipv4:127.0.0.1" in (exc.details() or "")

    run(scenario())


class _Clock:
    """A clock the test moves by hand (time itself, not a stand-in for our code)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _attempt(throttle: AuthThrottle, address: str, token: str) -> type[Exception] | None:
    try:
        throttle.check(address, lambda: check_bearer((("authorization", f"Bearer {token}"),), "right-token"))
    except (AuthError, AuthThrottledError) as exc:
        return type(exc)
    return None


def test_throttle_window_cool_down_addresses_and_memory_bound() -> None:
    clock = _Clock()
    throttle = AuthThrottle(max_failures=3, window=10, cool_down=30, max_peers=50, clock=clock)
    # Failures spread wider than the window never block.
    for _ in range(6):
        assert _attempt(throttle, "ipv4:10.0.0.1", "guess") is AuthError
        clock.now += 11
    # Three within the window do; the right token is refused too until the cool-down ends.
    for _ in range(3):
        assert _attempt(throttle, "ipv4:10.0.0.1", "guess") is AuthError
    assert _attempt(throttle, "ipv4:10.0.0.1", "right-token") is AuthThrottledError
    assert _attempt(throttle, "ipv4:10.0.0.2", "right-token") is None  # another address is not affected
    clock.now += 29
    assert _attempt(throttle, "ipv4:10.0.0.1", "right-token") is AuthThrottledError
    clock.now += 2
    assert _attempt(throttle, "ipv4:10.0.0.1", "right-token") is None
    # Control disabled (no token): nothing to guess, nothing counted.
    for _ in range(5):
        with pytest.raises(PermissionDeniedError):
            throttle.check("ipv4:10.0.0.3", lambda: check_bearer(WRONG, None))
    assert _attempt(throttle, "ipv4:10.0.0.3", "right-token") is None
    # A flood of addresses: memory stays bounded.
    for i in range(5000):
        _attempt(throttle, f"ipv6:[2001:db8::{i:x}]", "guess")
    assert len(throttle) == 50


@pytest.mark.parametrize(
    ("peer", "address"),
    [("ipv4:127.0.0.1:50312", "ipv4:127.0.0.1"), ("ipv6:[::1]:443", "ipv6:[::1]"), ("unix:/tmp/s", "unix:/tmp/s")],
)
def test_peer_address_drops_the_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address


def test_streams_are_limited_per_client_address() -> None:
    async def scenario() -> None:
        async with in_process(settings(sample_records=20_000, max_streams_per_peer=2, max_streams=10)) as (app, channel):
            market, _ = stubs(channel)
            # Separate connections from the same address count together.
            second = grpc_aio.insecure_channel(f"127.0.0.1:{app.port}", options=[("grpc.use_local_subchannel_pool", 1)])
            book_stream = market.StreamBook(market_data_pb2.StreamBookRequest(depth=1))
            events_stream = stubs(second)[0].StreamEvents(market_data_pb2.StreamEventsRequest())
            try:
                await asyncio.wait_for(book_stream.read(), RPC_TIMEOUT)
                await asyncio.wait_for(events_stream.read(), RPC_TIMEOUT)
                assert app.hub.streams_by_peer == {"ipv4:127.0.0.1": 2}
                third = market.StreamBook(market_data_pb2.StreamBookRequest(depth=1))
                with pytest.raises(grpc_aio.AioRpcError) as refused:
                    await asyncio.wait_for(third.read(), RPC_TIMEOUT)
                assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "per client address" in (refused.value.details() or "")
                book_stream.cancel()
                for _ in range(100):  # the server notices the cancellation and releases the slot
                    if app.hub.streams_by_peer.get("ipv4:127.0.0.1") == 1:
                        break
                    await asyncio.sleep(0.05)
                again = market.StreamBook(market_data_pb2.StreamBookRequest(depth=1))
                await asyncio.wait_for(again.read(), RPC_TIMEOUT)
                again.cancel()
            finally:
                events_stream.cancel()
                await asyncio.wait_for(second.close(), RPC_TIMEOUT)
            for _ in range(100):
                if not app.hub.streams_by_peer:
                    break
                await asyncio.sleep(0.05)
            assert app.hub.streams_by_peer == {}  # an address leaves the map with its last stream

    run(scenario())
