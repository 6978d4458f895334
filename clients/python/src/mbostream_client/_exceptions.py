"""Error room: every error the client raises on purpose, as one documented tree.

::

    ClientError                         base of everything below
    ├── RpcError                        the server answered a call with a non-OK status
    │   │                               (carries ``method``, ``code``, ``details``)
    │   ├── InvalidRequestError         INVALID_ARGUMENT: a malformed request
    │   ├── InstrumentNotFoundError     NOT_FOUND: no book for the requested instrument
    │   ├── ResumeOutOfRangeError       OUT_OF_RANGE: start_after_sequence is no longer buffered
    │   ├── SlowConsumerError           RESOURCE_EXHAUSTED for a reader that fell behind
    │   │                               (carries ``resume_after``, parsed from the message)
    │   ├── StreamLimitError            RESOURCE_EXHAUSTED: the server's stream limit is reached
    │   ├── AuthThrottledError          RESOURCE_EXHAUSTED: too many wrong operator tokens from this
    │   │                               address; control calls are refused until the cool-down ends
    │   │                               (carries ``retry_after``, parsed from the message)
    │   ├── MessageTooLargeError        RESOURCE_EXHAUSTED: a message beyond the receiver's size limit
    │   │                               (``grpc.max_receive_message_length`` on this side, 4 MiB for
    │   │                               a request on the server's); retrying cannot help
    │   ├── AuthenticationError         UNAUTHENTICATED: missing or wrong operator token
    │   ├── PermissionDeniedError       PERMISSION_DENIED: replay control is disabled
    │   ├── PreconditionFailedError     FAILED_PRECONDITION: valid call, wrong replay state
    │   │   └── EpochChangedError       a resume into another server run: its positions are not
    │   │                               ours, so the books must be rebuilt from a snapshot
    │   ├── ServerUnavailableError      UNAVAILABLE: cannot connect, or the connection dropped
    │   └── DeadlineExceededError       DEADLINE_EXCEEDED: the call's timeout passed
    └── ReplicaGapError                 a live record's replay_sequence skipped ahead
                                        (carries ``expected`` and ``received``)

:func:`error_from_rpc` is the one place where gRPC status codes become these classes; RESOURCE_EXHAUSTED's
causes are told apart by their messages, as the Go client does (``clients/go/mbostream/errors.go``).
"""

from __future__ import annotations

import re
from typing import Final

import grpc


class ClientError(Exception):
    """Base class of every deliberate mbostream client error."""


class RpcError(ClientError):
    """The server ended a call with a non-OK status.

    Attributes
    ----------
    method
        Short RPC name, e.g. ``"GetBook"``.
    code
        The gRPC status code.
    details
        The server's status message.
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details


class InvalidRequestError(RpcError):
    """INVALID_ARGUMENT: the request is malformed; the details name the field."""


class InstrumentNotFoundError(RpcError):
    """NOT_FOUND: the server has no book for the requested instrument."""


class ResumeOutOfRangeError(RpcError):
    """OUT_OF_RANGE: the resume point is older (or newer) than the server's replay buffer."""


class SlowConsumerError(RpcError):
    """RESOURCE_EXHAUSTED: this reader fell further behind than the server buffers.

    Attributes
    ----------
    resume_after
        The ``start_after_sequence=N`` the server suggested, or None when the message had none.
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: str, resume_after: int | None) -> None:
        super().__init__(method, code, details)
        self.resume_after = resume_after


class StreamLimitError(RpcError):
    """RESOURCE_EXHAUSTED: the server already serves its maximum number of streams."""


class AuthThrottledError(RpcError):
    """RESOURCE_EXHAUSTED: this address presented wrong operator tokens too often.

    Every control call from it is refused, even with the right token, until the cool-down ends.

    Attributes
    ----------
    retry_after
        Seconds until the cool-down ends, as the server named them, or None when the message had none.
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: str, retry_after: float | None) -> None:
        super().__init__(method, code, details)
        self.retry_after = retry_after


class MessageTooLargeError(RpcError):
    """RESOURCE_EXHAUSTED: a message exceeded the receiver's size limit.

    From this client's ``grpc.max_receive_message_length`` (a response: a large book, a snapshot
    batch) or the server's (a request over 4 MiB). The same message would come again, so a stream
    ends with it instead of reconnecting: raise the limit or ask for less (``depth``, instruments).
    """


class AuthenticationError(RpcError):
    """UNAUTHENTICATED: the operator token is missing or wrong."""


class PermissionDeniedError(RpcError):
    """PERMISSION_DENIED: replay control is disabled on this server."""


class PreconditionFailedError(RpcError):
    """FAILED_PRECONDITION: the call is valid but not in the replay's current state."""


class EpochChangedError(PreconditionFailedError):
    """The server runs another epoch than the one a resume position came from.

    Raised for FAILED_PRECONDITION on a StreamEvents resume with ``resume_epoch``, and when a
    resumed stream's batches carry another epoch than the one asked for.
    """


class ServerUnavailableError(RpcError):
    """UNAVAILABLE: the server cannot be reached or the connection dropped."""


class DeadlineExceededError(RpcError):
    """DEADLINE_EXCEEDED: the call did not finish within its timeout."""


class ReplicaGapError(ClientError):
    """A live record arrived whose replay_sequence is not the one after the last applied."""

    def __init__(self, expected: int, received: int) -> None:
        super().__init__(f"replay_sequence gap: expected {expected}, received {received}")
        self.expected = expected
        self.received = received


_BY_CODE: Final[dict[grpc.StatusCode, type[RpcError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: InstrumentNotFoundError,
    grpc.StatusCode.OUT_OF_RANGE: ResumeOutOfRangeError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionFailedError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}
_RESUME_AFTER: Final = re.compile(r"start_after_sequence=(\d+)")
#: RESOURCE_EXHAUSTED's messages: the server's (server/mbostream/errors.py, server/peers.py) and
#: gRPC's own size checks ("Received message larger than max (N vs. M)" in gRPC core, "received
#: message larger than max" and "message after decompression larger than max" in gRPC-Go).
_SLOW_READER: Final = "slow reader"
_THROTTLED: Final = "too many failed control-token attempts"
_RETRY_IN: Final = re.compile(r"retry in (\d+(?:\.\d+)?) s")
_TOO_LARGE: Final = "larger than max"


def error_from_rpc(method: str, exc: grpc.RpcError) -> RpcError:
    """The typed error for a failed call (a plain :class:`RpcError` for unmapped codes).

    Parameters
    ----------
    method
        Short RPC name, used in the message.
    exc
        The error grpc raised; it must carry a status (``grpc.aio.AioRpcError`` does).
    """
    code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined,unused-ignore]
    details: str = exc.details() or ""  # type: ignore[attr-defined,unused-ignore]
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return _resource_exhausted(method, code, details)
    return _BY_CODE.get(code, RpcError)(method, code, details)


def _resource_exhausted(method: str, code: grpc.StatusCode, details: str) -> RpcError:
    """RESOURCE_EXHAUSTED by its cause; the server's stream limit is what remains."""
    # The server names the resume point only when it cut off a slow reader.
    found = _RESUME_AFTER.search(details)
    if found or _SLOW_READER in details:
        return SlowConsumerError(method, code, details, int(found.group(1)) if found else None)
    if _THROTTLED in details:
        retry = _RETRY_IN.search(details)
        return AuthThrottledError(method, code, details, float(retry.group(1)) if retry else None)
    if _TOO_LARGE in details.lower():
        return MessageTooLargeError(method, code, details)
    return StreamLimitError(method, code, details)
