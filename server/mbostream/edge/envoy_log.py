"""Edge log room: Envoy's stderr forwarded to the ``mbostream.edge.envoy`` logger, line by line."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Final

envoy_log = logging.getLogger("mbostream.edge.envoy")

# Envoy's ``--log-format``: each line is "<level>|<message>", so the forwarder can keep Envoy's level.
LOG_FORMAT: Final = "%l|%n: %v"
LOG_TAIL_LINES: Final = 40
ENVOY_LEVELS: Final = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class EnvoyLogForwarder:
    """Forwards one Envoy's stderr to logging and keeps its last lines (``tail``) for error reports.

    Set ``stopping`` once Envoy was asked to exit: its "caught SIGTERM" warning is then expected
    news, logged at INFO at most.
    """

    def __init__(self, *, tail_lines: int = LOG_TAIL_LINES) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.stopping = False

    async def forward(self, stderr: asyncio.StreamReader, pid: int) -> None:
        """Reads ``stderr`` to its end, logging each line with Envoy's level and ``pid``."""
        while line := await stderr.readline():
            text = line.decode(errors="replace").rstrip()
            if not text:
                continue
            level_name, sep, message = text.partition("|")
            if not sep or level_name not in ENVOY_LEVELS:
                level_name, message = "info", text  # a line Envoy wrote without its log format
            self.tail.append(f"[{level_name}] {message}")
            level = ENVOY_LEVELS[level_name]
            if self.stopping:
                level = min(level, logging.INFO)
            envoy_log.log(level, message, extra={"component": "envoy", "pid": pid})
