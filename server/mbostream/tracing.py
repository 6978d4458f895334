"""Tracing room: OpenTelemetry spans for the gRPC API, exported over OTLP; off unless configured.

Configuration is the standard ``OTEL_*`` environment, read once at start-up by :func:`configure`:

* on when ``OTEL_TRACES_EXPORTER=otlp``, or when it is unset and an OTLP endpoint is
  (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``); off otherwise, with
  ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true``. Unlike the SDK's own default
  (``otlp``), nothing is exported unless asked: a server must not try to reach a collector that
  no one set up;
* OTLP over gRPC only (``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` unset or ``grpc``); the exporter
  reads its endpoint, headers, timeout and TLS from the same variables (an ``http://`` endpoint
  is plain text);
* ``OTEL_SERVICE_NAME`` (default: the role's name, ``mbostream``), ``OTEL_RESOURCE_ATTRIBUTES``,
  ``OTEL_TRACES_SAMPLER[_ARG]`` (default: follow the caller's decision, else sample all),
  ``OTEL_BSP_*`` (batching, e.g. ``OTEL_BSP_SCHEDULE_DELAY`` in ms).

Every RPC becomes one SERVER span (streams: from the call to the stream's end) named
``package.Service/Method``, a child of the caller's W3C ``traceparent`` when the request carries one
(Envoy adds it, see ``envoy/envoy.template.yaml``). While a unary call runs its span is current, so
its log lines carry ``trace_id`` and ``span_id`` (:mod:`mbostream.logs`).
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from mbostream.errors import ConfigError

DEFAULT_SERVICE_NAME: Final = "mbostream"
_INSTRUMENTATION: Final = "mbostream.server"
#: Health checks (Envoy's, Kubernetes' probes every few seconds) are not traced: noise, no user.
_HEALTH: Final = "/grpc.health.v1.Health/"
#: gRPC codes that are the server's fault: the span's status is ERROR (OpenTelemetry's gRPC
#: conventions); the other non-OK codes are the caller's business and leave it unset.
_SERVER_ERRORS: Final = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})
_CODE_NUMBERS: Final = {
    name: number
    for number, name in enumerate(
        (
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        )
    )
}

#: Replay steps traced along replayer → bus → gateway: one in this many (the first always).
BUS_SAMPLE_EVERY: Final = 100

_enabled = False


def enabled_by(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` asks for traces to be exported (see the module docstring).

    Raises ConfigError for an exporter or protocol this server does not ship.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter not in ("", "otlp", "none"):
        raise ConfigError("OTEL_TRACES_EXPORTER", f"must be otlp or none, got {exporter!r}")
    on = exporter == "otlp" or (
        not exporter and bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    )
    if on:
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = environ.get(name, "").strip().lower()
            if protocol not in ("", "grpc"):
                raise ConfigError(name, f"only grpc is supported, got {protocol!r}")
    return on


def otlp_endpoint(environ: Mapping[str, str] | None = None) -> tuple[str, int] | None:
    """``(host, port)`` of the OTLP/gRPC collector the environment names, None when tracing is off.

    For the edge: Envoy exports its own spans to the same collector as the server
    (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else ``OTEL_EXPORTER_OTLP_ENDPOINT``, else the OTLP
    default ``localhost:4317``).
    """
    env = os.environ if environ is None else environ
    if not enabled_by(env):
        return None
    url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4317"
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if not parsed.hostname:
        raise ConfigError("OTEL_EXPORTER_OTLP_ENDPOINT", f"{url!r} names no host")
    return parsed.hostname, parsed.port or 4317


def configure(service_name: str = DEFAULT_SERVICE_NAME, environ: Mapping[str, str] | None = None) -> bool:
    """Starts exporting spans when the environment asks for it; returns whether tracing is on.

    Idempotent: the first call that turns tracing on installs the global tracer provider (flushed
    at exit by the SDK); later calls change nothing.
    """
    global _enabled
    env = os.environ if environ is None else environ
    if _enabled or not enabled_by(env):
        return _enabled
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the role's name fills in
    # only the SDK's placeholder (unknown_service).
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def enabled() -> bool:
    """True once :func:`configure` turned tracing on in this process."""
    return _enabled


def start_rpc_span(method_name: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> Span | None:
    """A SERVER span for one RPC (``/package.Service/Method``), child of the request's ``traceparent``.

    None when tracing is off, and for health checks: callers pass it on to :func:`current` and
    :func:`end_rpc_span`.
    """
    if not _enabled or method_name.startswith(_HEALTH):
        return None
    carrier = {key.lower(): value for key, value in (metadata or ()) if isinstance(value, str)}
    parent = propagate.extract(carrier)
    service, _, rpc_method = method_name.lstrip("/").rpartition("/")
    return trace.get_tracer(_INSTRUMENTATION).start_span(
        f"{service}/{rpc_method}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method},
    )


@contextlib.contextmanager
def current(span: Span | None) -> Iterator[None]:
    """Makes ``span`` the current span for the block (log lines then carry its ids)."""
    if span is None:
        yield
        return
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield


def end_rpc_span(span: Span | None, code: str) -> None:
    """Ends an RPC span with its gRPC status code (a name such as ``OK`` or ``CANCELLED``)."""
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", _CODE_NUMBERS.get(code, 2))
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code))
    span.end()


def bus_publish_span(step: int, attributes: Mapping[str, Any]) -> tuple[Span | None, dict[str, str]]:
    """For one replay step in :data:`BUS_SAMPLE_EVERY` (the first always): a PRODUCER span, to be
    ended once the bus acknowledged the step, and the message headers that carry its context to
    the roles consuming it. ``(None, {})`` otherwise, and when tracing is off."""
    if not _enabled or step % BUS_SAMPLE_EVERY:
        return None, {}
    span = trace.get_tracer(_INSTRUMENTATION).start_span(
        "mbostream.records publish",
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.operation.type": "publish", **attributes},
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return span, carrier


@contextlib.contextmanager
def bus_consume_span(headers: Mapping[str, str] | None, attributes: Mapping[str, Any]) -> Iterator[None]:
    """A CONSUMER span around applying one bus message, child of the replayer's publish span when
    the message carries one (a sampled step); nothing otherwise."""
    if not _enabled or not headers or "traceparent" not in headers:
        yield
        return
    parent = propagate.extract(dict(headers))
    with trace.get_tracer(_INSTRUMENTATION).start_as_current_span(
        "mbostream.records apply",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "nats", "messaging.operation.type": "process", **attributes},
    ):
        yield


def log_ids() -> dict[str, Any]:
    """``trace_id`` and ``span_id`` (hex, as OTLP backends show them) of the current span; {} if none."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}
