"""ReplayService: operator control of the replay, behind a bearer token. Calls are idempotent."""

from __future__ import annotations

import grpc
from grpc import aio as grpc_aio

from mbostream.config import RANGES
from mbostream.errors import InvalidArgumentError, PreconditionError
from mbostream.replay import Replayer, ReplayState
from mbostream.server.convert import replay_status
from mbostream.server.interceptors import check_bearer
from mbostream.server.peers import AuthThrottle, peer_address
from mbostream_core.v1 import replay_pb2 as pb


def _checked(field: str, value: float, setting: str) -> float:
    """``value`` when inside the range of the setting it changes (the same as its flag's)."""
    try:
        return RANGES[setting].check(value)
    except ValueError as exc:
        raise InvalidArgumentError(field, str(exc)) from None


class ReplayControlService:
    """Implements ``mbostream.v1.ReplayService``; an address that keeps presenting wrong tokens is
    refused for a while (:class:`~mbostream.server.peers.AuthThrottle`)."""

    def __init__(self, replayer: Replayer, token: str | None, epoch: str = "", throttle: AuthThrottle | None = None) -> None:
        self.replayer = replayer
        self.token = token
        self.epoch = epoch
        self.throttle = throttle or AuthThrottle()

    def _authorize(self, context: grpc_aio.ServicerContext) -> None:
        metadata = context.invocation_metadata()
        self.throttle.check(peer_address(context.peer()), lambda: check_bearer(metadata, self.token))

    def _status(self) -> pb.ReplayStatus:
        return replay_status(self.replayer.status(), self.epoch)

    async def GetStatus(self, request: pb.GetStatusRequest, context: grpc_aio.ServicerContext) -> pb.GetStatusResponse:
        """Files, position, pacing, achieved rate and state."""
        self._authorize(context)
        return pb.GetStatusResponse(status=self._status())

    async def Pause(self, request: pb.PauseRequest, context: grpc_aio.ServicerContext) -> pb.PauseResponse:
        """Pauses; pausing a paused (or finished) replay is a successful no-op."""
        self._authorize(context)
        if self.replayer.state is ReplayState.STOPPED:
            raise PreconditionError("the replay is stopped (the server is shutting down)")
        self.replayer.pause()
        return pb.PauseResponse(status=self._status())

    async def Resume(self, request: pb.ResumeRequest, context: grpc_aio.ServicerContext) -> pb.ResumeResponse:
        """Resumes; resuming a running replay is a no-op, a finished one needs Restart."""
        self._authorize(context)
        if self.replayer.state in (ReplayState.FINISHED, ReplayState.STOPPED):
            raise PreconditionError(f"the replay is {self.replayer.state.value}: use Restart to start it over")
        self.replayer.resume()
        return pb.ResumeResponse(status=self._status())

    async def SetRate(self, request: pb.SetRateRequest, context: grpc_aio.ServicerContext) -> pb.SetRateResponse:
        """Switches pacing (records/s, speed factor or max); setting the current pacing is a no-op."""
        self._authorize(context)
        which = request.WhichOneof("pacing")
        if which == "records_per_second":
            self.replayer.set_pacing("rate", rate=_checked("records_per_second", request.records_per_second, "rate"))
        elif which == "speed":
            self.replayer.set_pacing("speed", speed=_checked("speed", request.speed, "speed"))
        elif which == "max":
            if not request.max:
                raise InvalidArgumentError("max", "must be true when set")
            self.replayer.set_pacing("max")
        else:
            raise InvalidArgumentError("pacing", "set records_per_second, speed or max")
        return pb.SetRateResponse(status=self._status())

    async def Restart(self, request: pb.RestartRequest, context: grpc_aio.ServicerContext) -> pb.RestartResponse:
        """Starts the files over; books are cleared with published R records first."""
        self._authorize(context)
        if self.replayer.state is ReplayState.STOPPED:
            raise PreconditionError("the replay is stopped (the server is shutting down)")
        self.replayer.restart()
        return pb.RestartResponse(status=self._status())


def handler(service: ReplayControlService) -> grpc.GenericRpcHandler:
    """Registers the service with its standard message serializers."""
    methods = {}
    for name in ("GetStatus", "Pause", "Resume", "SetRate", "Restart"):
        request_cls = getattr(pb, f"{name}Request")
        response_cls = getattr(pb, f"{name}Response")
        methods[name] = grpc.unary_unary_rpc_method_handler(
            getattr(service, name),
            request_deserializer=request_cls.FromString,
            response_serializer=response_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler("mbostream.v1.ReplayService", methods)
