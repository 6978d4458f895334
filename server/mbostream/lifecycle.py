"""Life-cycle room: the one JSON line a long-running command prints once it is up, and the signals
that stop it (``serve``/``run``, ``replay``, ``gateway``, ``store``, ``run --gateways``, the edge)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Mapping
from typing import Any, Final

#: The signals that stop a command: a supervisor's SIGTERM and Ctrl-C's SIGINT.
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def print_ready_line(fields: Mapping[str, Any]) -> None:
    """One machine-readable line on stdout once the command is up: tests and launchers read the
    bound ports (and pids) from it."""
    print(json.dumps(fields), flush=True)


def on_stop_signals(handler: Callable[[signal.Signals], object]) -> None:
    """Calls ``handler(signal)`` on SIGINT or SIGTERM, in the running event loop."""
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, handler, signum)
