"""gRPC core's I/O path for the serving processes, chosen before gRPC is first imported.

gRPC core 1.85 does its TCP I/O on EventEngine threads by default (the ``event_engine_listener``
and ``event_engine_for_all_other_endpoints`` experiments, on by default). With the server on one
core, every streamed message then crosses three threads (an EventEngine thread, the completion
queue's poller, the event loop). Turned off, the poller thread does the I/O itself: at the same
7,100 book messages a second (500k records/s, 100 StreamBook clients, ``bench e2e`` with a fixed
50 ms refresh) the server's core went from 72-80% busy to 65-68% (docs/performance.md).

``GRPC_EXPERIMENTS`` set by the operator wins, the empty string included (gRPC's own defaults).
gRPC core reads the variable when it starts, so this runs before anything imports ``grpc``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Final

#: The experiments the serving processes turn off (``-name``: off), unless GRPC_EXPERIMENTS is set.
SERVER_GRPC_EXPERIMENTS: Final = "-event_engine_listener,-event_engine_for_all_other_endpoints"


def configure(environ: MutableMapping[str, str] = os.environ) -> None:
    """Sets GRPC_EXPERIMENTS for this process and its children unless it is set already.

    A no-op once ``grpc`` is imported (gRPC core has read its configuration by then): the serving
    commands call it first, and the test processes that import ``grpc`` keep gRPC's defaults.
    """
    if "grpc" in sys.modules:
        return
    environ.setdefault("GRPC_EXPERIMENTS", SERVER_GRPC_EXPERIMENTS)
