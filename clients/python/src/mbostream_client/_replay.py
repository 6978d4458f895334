"""ReplayService room: the async operator client (status, pause, resume, pacing, restart)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from mbostream_core.v1 import replay_pb2, replay_pb2_grpc

from mbostream_client._channel import DEFAULT_TARGET, TlsConfig, open_channel
from mbostream_client._exceptions import error_from_rpc
from mbostream_client._tracing import trace_metadata

_Response = TypeVar("_Response")


class ReplayClient:
    """Async client of ``mbostream.v1.ReplayService``; every call sends the bearer token.

    Every method returns the ``ReplayStatus`` after the call took effect. Failed calls raise the
    :class:`~mbostream_client.RpcError` subclass of their status code (a wrong token:
    :class:`~mbostream_client.AuthenticationError`).

    Parameters
    ----------
    target
        ``HOST:PORT`` of the server.
    token
        The server's operator token (``MBOSTREAM_CONTROL_TOKEN``); there is no default.
    timeout
        Deadline of each call, seconds (None: no deadline).
    options
        Extra gRPC channel arguments.
    tls
        Connect over TLS (:class:`~mbostream_client.TlsConfig`); None: plaintext.
    trace
        Start a W3C trace per call, as :class:`~mbostream_client.MarketDataClient` does.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str,
        timeout: float | None = 10.0,
        options: Sequence[tuple[str, Any]] = (),
        tls: TlsConfig | None = None,
        trace: bool = False,
    ) -> None:
        if not token or not token.strip():
            raise ValueError("token must be the server's operator token, not empty")
        self.target = target
        self.timeout = timeout
        self.trace = trace
        #: The trace id of the last call that started its own trace (``trace=True``), else None.
        self.last_trace_id: str | None = None
        self._metadata = (("authorization", f"Bearer {token.strip()}"),)
        self._channel = open_channel(target, options=options, tls=tls)
        self._stub = replay_pb2_grpc.ReplayServiceStub(self._channel)

    async def __aenter__(self) -> ReplayClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()

    async def _call(self, name: str, method: Callable[..., Awaitable[_Response]], request: Any) -> _Response:
        tracing, trace_id = trace_metadata(name, start=self.trace)
        if trace_id is not None:
            self.last_trace_id = trace_id
        try:
            return await method(request, metadata=self._metadata + tracing, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(name, exc) from exc

    async def status(self) -> replay_pb2.ReplayStatus:
        """The current replay status."""
        response = await self._call("GetStatus", self._stub.GetStatus, replay_pb2.GetStatusRequest())
        return response.status

    async def pause(self) -> replay_pb2.ReplayStatus:
        """Pauses the replay (a no-op when paused, finished or stopped)."""
        response = await self._call("Pause", self._stub.Pause, replay_pb2.PauseRequest())
        return response.status

    async def resume(self) -> replay_pb2.ReplayStatus:
        """Resumes a paused replay (a no-op when running; FAILED_PRECONDITION when finished)."""
        response = await self._call("Resume", self._stub.Resume, replay_pb2.ResumeRequest())
        return response.status

    async def set_rate(
        self, *, records_per_second: float | None = None, speed: float | None = None, max_speed: bool = False
    ) -> replay_pb2.ReplayStatus:
        """Changes the pacing; give exactly one of the three.

        Parameters
        ----------
        records_per_second
            A fixed number of records per second.
        speed
            The recorded ``ts_recv`` spacing divided by this factor (1 is real time).
        max_speed
            As fast as the server can go.
        """
        chosen = [records_per_second is not None, speed is not None, max_speed]
        if sum(chosen) != 1:
            raise ValueError("give exactly one of records_per_second, speed or max_speed=True")
        if records_per_second is not None:
            request = replay_pb2.SetRateRequest(records_per_second=records_per_second)
        elif speed is not None:
            request = replay_pb2.SetRateRequest(speed=speed)
        else:
            request = replay_pb2.SetRateRequest(max=True)
        response = await self._call("SetRate", self._stub.SetRate, request)
        return response.status

    async def restart(self) -> replay_pb2.ReplayStatus:
        """Starts the files over, clearing every book (replay positions keep increasing)."""
        response = await self._call("Restart", self._stub.Restart, replay_pb2.RestartRequest())
        return response.status
