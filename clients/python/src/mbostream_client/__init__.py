"""mbostream-client: async Python client of the mbostream gRPC API, with a local L3 book replica.

The public API is what this module exports; the underscored modules are private.
"""

from mbostream_core.records import F_LAST, F_SNAPSHOT

from mbostream_client._backoff import Backoff
from mbostream_client._channel import DEFAULT_TARGET, MAX_RECEIVE_WINDOW, MIN_RECEIVE_WINDOW, TlsConfig
from mbostream_client._decode import EventBatch, decode_events
from mbostream_client._exceptions import (
    AuthThrottledError,
    AuthenticationError,
    ClientError,
    DeadlineExceededError,
    EpochChangedError,
    InstrumentNotFoundError,
    InvalidRequestError,
    MessageTooLargeError,
    PermissionDeniedError,
    PreconditionFailedError,
    ReplicaGapError,
    ResumeOutOfRangeError,
    RpcError,
    ServerUnavailableError,
    SlowConsumerError,
    StreamLimitError,
)
from mbostream_client._latency import LatencyConfig, measure
from mbostream_client._latest import BookKey, LatestBook, LatestBooks, LatestBooksStats
from mbostream_client._market_data import Instrument, MarketDataClient
from mbostream_client._render import book_json, levels
from mbostream_client._replay import ReplayClient
from mbostream_client._follow import EventFollower, StreamStats
from mbostream_client._replica import BookReplica

__all__ = [
    "DEFAULT_TARGET",
    "F_LAST",
    "F_SNAPSHOT",
    "MAX_RECEIVE_WINDOW",
    "MIN_RECEIVE_WINDOW",
    "AuthThrottledError",
    "AuthenticationError",
    "Backoff",
    "BookKey",
    "BookReplica",
    "ClientError",
    "DeadlineExceededError",
    "EpochChangedError",
    "EventFollower",
    "EventBatch",
    "Instrument",
    "InstrumentNotFoundError",
    "InvalidRequestError",
    "LatencyConfig",
    "LatestBook",
    "LatestBooks",
    "LatestBooksStats",
    "MarketDataClient",
    "MessageTooLargeError",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "ReplayClient",
    "ReplicaGapError",
    "ResumeOutOfRangeError",
    "RpcError",
    "ServerUnavailableError",
    "SlowConsumerError",
    "StreamLimitError",
    "StreamStats",
    "TlsConfig",
    "book_json",
    "decode_events",
    "levels",
    "measure",
]
