"""Trace context room: the W3C ``traceparent`` each call sends, so that the edge and the server
continue the caller's trace.

With the OpenTelemetry API importable and a span current in the caller, that span's context is
injected (``opentelemetry.propagate.inject``, the caller's propagators). Otherwise a client made
with ``trace=True`` starts a trace of its own per call: a fresh ``traceparent`` (random 16-byte
trace id, 8-byte span id, sampled), whose trace id it logs on the ``mbostream_client.trace``
logger (INFO) and keeps as ``last_trace_id``. OpenTelemetry is optional: the client never needs it.
"""

from __future__ import annotations

import logging
import secrets
from typing import Final

try:
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # OpenTelemetry is the caller's choice, not a dependency of the client
    _propagate = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]

Metadata = tuple[tuple[str, str], ...]

_LOGGER: Final = logging.getLogger("mbostream_client.trace")


def new_traceparent() -> tuple[str, str]:
    """A fresh W3C ``traceparent`` (version 00, sampled) and its trace id (32 hex digits)."""
    # All-zero ids are invalid; 2**-64 odds, but a tracer would drop the trace, so draw again.
    trace_id = "0" * 32
    while trace_id == "0" * 32:
        trace_id = secrets.token_hex(16)
    span_id = "0" * 16
    while span_id == "0" * 16:
        span_id = secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id


def _current_context() -> Metadata:
    """The current OpenTelemetry span's context as metadata; empty without one (or without the API)."""
    if _trace is None or _propagate is None or not _trace.get_current_span().get_span_context().is_valid:
        return ()
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    return tuple((key.lower(), value) for key, value in carrier.items())


def trace_metadata(method: str, *, start: bool) -> tuple[Metadata, str | None]:
    """The trace metadata of one call of ``method`` and, when this call starts a trace, its id.

    The caller's current span wins; else, with ``start``, a new trace (its id logged); else nothing.
    """
    continued = _current_context()
    if continued or not start:
        return continued, None
    traceparent, trace_id = new_traceparent()
    _LOGGER.info("%s: trace_id=%s", method, trace_id)
    return (("traceparent", traceparent),), trace_id
