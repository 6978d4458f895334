"""Edge render room: the Envoy template filled in with the config and one route per file of the UI.

With ``replayer_port`` set (``mbostream run --gateways N``) the same template also gets the
cluster's parts: a route sending ``ReplayService`` to a ``mbostream_replayer`` cluster, every
gateway as an endpoint of ``mbostream_grpc`` (least-request, no panic routing to unhealthy hosts),
and a retry on another gateway when a connection fails or is refused. For a single server those
placeholders are empty and the rendered config is what it always was, byte for byte. With the
servers' TLS (:class:`~mbostream.edge.config.EdgeTls`) both upstream clusters, gateways and
replayer, connect over TLS pinning the servers' certificate (or validating it by a CA and a name),
presenting Envoy's own for mTLS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Any, Final

from mbostream.edge.config import EdgeConfig
from mbostream.errors import ConfigError

# Names the template gives its listener and its upstream cluster; the supervisor looks them up.
LISTENER_NAME: Final = "mbostream_edge"
UPSTREAM_CLUSTER: Final = "mbostream_grpc"
#: The cluster of the OpenTelemetry collector Envoy exports spans to, and Envoy's service name in them.
OTLP_CLUSTER: Final = "otel_collector"
EDGE_SERVICE_NAME: Final = "mbostream-edge"
REPLAYER_CLUSTER: Final = "mbostream_replayer"
#: StreamBook on the server's native transport (``--book-port``).
BOOK_CLUSTER: Final = "mbostream_books"
#: Envoy's HTTP/2 stream window, toward the clients and toward the servers: what Envoy holds for one
#: stream whose client reads slower than it is sent (its per-stream buffers toward a client take the
#: same limit), against 256 MiB by Envoy's default, with which a book stream paused 3 s behind the
#: edge found 31-50 MB of old books there. 64 KiB (the smallest Envoy takes) held an events stream
#: read through the edge under a --max replay (cut, 3.2-3.3M records/s); 256 KiB keeps it lossless
#: (3.5-4.0M; docs/operations.md, "Slow readers behind the edge").
STREAM_WINDOW_BYTES: Final = 262144
_STREAM_BOOK_PATH: Final = "/mbostream.v1.MarketDataService/StreamBook"
_REPLAY_SERVICE_PREFIX: Final = "/mbostream.v1.ReplayService/"
# A request that found no gateway (refused, reset before a response, or UNAVAILABLE in its
# headers: not caught up) is tried again on another one, after a short backoff.
_GATEWAY_RETRY: Final = {
    "retry_on": "connect-failure,refused-stream,reset,unavailable",
    "num_retries": 3,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
        }
    ],
    "host_selection_retry_max_attempts": 5,
    "retry_back_off": {"base_interval": "0.05s", "max_interval": "0.5s"},
}
_ENDPOINT_INDENT: Final = " " * 14
_GATEWAY_HEALTH_INTERVAL: Final = "0.25s"
# Envoy's default; a larger UI file raises the limit to the file's size.
_MIN_DIRECT_RESPONSE_BYTES: Final = 4096
_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}
# Vite puts content-hashed files under assets/: they never change, so browsers may keep them.
_IMMUTABLE_DIR: Final = "assets"
_CACHE_IMMUTABLE: Final = "public, max-age=31536000, immutable"
_CACHE_REVALIDATE: Final = "no-cache"
# frame-ancestors (and X-Frame-Options for browsers without CSP 2) keep the UI, whose buttons
# control the replay, out of other sites' frames; no-referrer keeps its URL out of other sites' logs.
_CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; object-src 'none'; frame-ancestors 'none'"
)
_UI_HEADERS: Final = (("x-frame-options", "DENY"), ("referrer-policy", "no-referrer"))
_UI_NOT_BUILT: Final = "The mbostream web UI is not built: run `npm --prefix web ci && npm --prefix web run build`.\n"
_ROUTE_INDENT: Final = " " * 24


def _header(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _ui_headers() -> list[dict[str, Any]]:
    return [_header(key, value) for key, value in _UI_HEADERS]


def _file_route(url_path: str, file: Path, relative: str) -> dict[str, Any]:
    content_type = _CONTENT_TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    immutable = relative.startswith(_IMMUTABLE_DIR + "/")
    headers = [
        _header("content-type", content_type),
        _header("cache-control", _CACHE_IMMUTABLE if immutable else _CACHE_REVALIDATE),
        _header("x-content-type-options", "nosniff"),
        *_ui_headers(),
    ]
    if file.suffix == ".html":
        headers.append(_header("content-security-policy", _CONTENT_SECURITY_POLICY))
    return {
        "match": {"path": url_path},
        "direct_response": {"status": 200, "body": {"filename": str(file)}},
        "response_headers_to_add": headers,
    }


def static_routes(static_dir: Path | None) -> tuple[list[dict[str, Any]], int]:
    """One direct_response route per file of the built UI, and the largest file's size.

    Envoy reads the files when it loads the config: rebuilding the UI needs an edge restart.
    """
    index = static_dir / "index.html" if static_dir is not None else None
    if index is None or not index.is_file():
        not_built = {
            "match": {"prefix": "/"},
            "direct_response": {"status": 503, "body": {"inline_string": _UI_NOT_BUILT}},
            "response_headers_to_add": [_header("content-type", "text/plain; charset=utf-8"), *_ui_headers()],
        }
        return [not_built], _MIN_DIRECT_RESPONSE_BYTES
    assert static_dir is not None
    root = static_dir.resolve()
    routes = [_file_route("/", root / "index.html", "index.html")]
    largest = _MIN_DIRECT_RESPONSE_BYTES
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = file.relative_to(root).as_posix()
        routes.append(_file_route("/" + urllib.parse.quote(relative), file, relative))
        largest = max(largest, file.stat().st_size)
    return routes, largest


def _cors_origins(config: EdgeConfig, own_origins: Sequence[str]) -> list[dict[str, Any]]:
    if "*" in config.allowed_origins:
        return [{"safe_regex": {"regex": ".*"}}]
    origins = dict.fromkeys([*own_origins, *config.allowed_origins])
    return [{"exact": origin} for origin in origins]


def _endpoint(host: str, port: int) -> str:
    return (
        f"{_ENDPOINT_INDENT}- endpoint:\n"
        f"{_ENDPOINT_INDENT}    address:\n"
        f"{_ENDPOINT_INDENT}      socket_address: {{ address: {host}, port_value: {port} }}"
    )


def _cluster_parts(config: EdgeConfig, upstream_tls: str) -> dict[str, str]:
    """The placeholders of the scale-out parts: empty for a single server. ``upstream_tls`` is the
    servers' transport socket (:func:`_tls_parts`): the replayer speaks TLS as the gateways do."""
    ports = config.upstream_ports or (config.upstream_port,)
    endpoints = "\n".join(_endpoint(config.upstream_host, port) for port in ports)
    if config.replayer_port is None:
        return dict.fromkeys(("replayer_route", "upstream_retry", "upstream_lb", "protocol_anchor", "health_anchor", "replayer_cluster"), "") | {
            "upstream_endpoints": endpoints,
            "health_interval": "2s",
            "unhealthy_threshold": "2",
        }
    replay_route = {
        "match": {"prefix": _REPLAY_SERVICE_PREFIX},
        "route": {"cluster": REPLAYER_CLUSTER, "timeout": "0s", "max_stream_duration": {"grpc_timeout_header_max": "0s"}},
    }
    replayer_endpoint = {"endpoint": {"address": {"socket_address": {"address": config.upstream_host, "port_value": config.replayer_port}}}}
    load_assignment = {"cluster_name": REPLAYER_CLUSTER, "endpoints": [{"lb_endpoints": [replayer_endpoint]}]}
    replayer_cluster = (
        f"    - name: {REPLAYER_CLUSTER}\n"
        "      type: STATIC\n"
        f"      connect_timeout: 1s{upstream_tls}\n"
        f"      load_assignment: {json.dumps(load_assignment)}\n"
        "      typed_extension_protocol_options: *upstream_protocol\n"
        "      health_checks: *upstream_health_checks\n"
    )
    return {
        "replayer_route": f"{_ROUTE_INDENT}- {json.dumps(replay_route)}\n",
        "upstream_retry": f"\n{_ROUTE_INDENT}    retry_policy: {json.dumps(_GATEWAY_RETRY)}",
        "upstream_lb": "\n      lb_policy: LEAST_REQUEST\n      common_lb_config: { healthy_panic_threshold: { value: 0 } }",
        "upstream_endpoints": endpoints,
        "protocol_anchor": " &upstream_protocol",
        "health_anchor": " &upstream_health_checks",
        "replayer_cluster": replayer_cluster,
        # A killed gateway restarts on the same port within seconds, NOT_SERVING until it caught up:
        # one failed check (refused, or NOT_SERVING) takes it out before it can take a resume.
        "health_interval": _GATEWAY_HEALTH_INTERVAL,
        "unhealthy_threshold": "1",
    }


def _book_parts(config: EdgeConfig, upstream_tls: str) -> dict[str, str]:
    """StreamBook's route to the server's native transport and its cluster, when ``book_port`` is
    set. ``upstream_tls`` is the server cluster's transport socket: the book port speaks the same
    TLS (and mTLS). One server: no health check of its own (the port serves StreamBook only; the
    gRPC cluster's says whether the server is up, and a refused connection fails the call as it
    would there). Gateways: each is health-checked on its gRPC port (gRPC health: NOT_SERVING
    while it catches up), the least loaded healthy one takes a stream, and a stream that found no
    gateway is retried on another, as the API's cluster does."""
    if config.book_port is None and not config.book_ports:
        return {"book_route": "", "book_cluster": ""}
    gateways = config.replayer_port is not None
    route = {
        "match": {"path": _STREAM_BOOK_PATH},
        "route": {
            "cluster": BOOK_CLUSTER,
            "timeout": "0s",
            **({"retry_policy": _GATEWAY_RETRY} if gateways else {}),
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
        },
    }
    # (gRPC port, book port) of each server: one address, or each gateway of `run --gateways N`.
    servers = list(zip(config.upstream_ports, config.book_ports)) or [((config.upstream_ports or (config.upstream_port,))[0], config.book_port)]
    endpoints: list[dict[str, Any]] = []
    for grpc_port, book_port in servers:
        endpoint: dict[str, Any] = {"endpoint": {"address": {"socket_address": {"address": config.upstream_host, "port_value": book_port}}}}
        if gateways:
            endpoint["endpoint"]["health_check_config"] = {"port_value": grpc_port}
        endpoints.append(endpoint)
    load_assignment = {"cluster_name": BOOK_CLUSTER, "endpoints": [{"lb_endpoints": endpoints}]}
    protocol = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {
                "http2_protocol_options": {
                    "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                    "initial_stream_window_size": STREAM_WINDOW_BYTES,
                }
            },
        }
    }
    cluster = (
        f"    - name: {BOOK_CLUSTER}\n"
        "      type: STATIC\n"
        f"      connect_timeout: 1s{upstream_tls}\n"
        f"      load_assignment: {json.dumps(load_assignment)}\n"
        f"      typed_extension_protocol_options: {json.dumps(protocol)}\n"
    )
    if gateways:
        cluster += (
            "      lb_policy: LEAST_REQUEST\n"
            "      common_lb_config: { healthy_panic_threshold: { value: 0 } }\n"
            "      health_checks: *upstream_health_checks\n"
        )
    return {"book_route": f"{_ROUTE_INDENT}- {json.dumps(route)}\n", "book_cluster": cluster}


def _tracing_parts(config: EdgeConfig) -> dict[str, str]:
    """Envoy's OpenTelemetry tracer and its collector cluster, when ``config.otlp_endpoint`` is set.

    Envoy starts a span per request (or continues the caller's W3C ``traceparent``) and sends the
    server a ``traceparent`` naming that span, so one trace crosses Envoy and the server.
    """
    if config.otlp_endpoint is None:
        return {"tracing": "", "tracing_cluster": ""}
    host, port = config.otlp_endpoint
    tracing = {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
                "service_name": EDGE_SERVICE_NAME,
            },
        },
        "random_sampling": {"value": 100},
    }
    cluster = {
        "name": OTLP_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": OTLP_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }
    return {"tracing": f"\n                tracing: {json.dumps(tracing)}", "tracing_cluster": f"\n    - {json.dumps(cluster)}"}


def _tls_parts(config: EdgeConfig) -> dict[str, str]:
    """The listener's TLS (HTTP/2 or HTTP/1.1 by ALPN) and the API cluster's, when configured."""
    tls = config.tls
    parts = {"listener_tls": "", "upstream_tls": ""}
    if tls.cert_file:
        certificate = {"certificate_chain": {"filename": tls.cert_file}, "private_key": {"filename": tls.key_file}}
        socket = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {"alpn_protocols": ["h2", "http/1.1"], "tls_certificates": [certificate]},
            },
        }
        parts["listener_tls"] = f"transport_socket: {json.dumps(socket)}\n          "
    if tls.upstream:
        if tls.upstream_ca_file:
            san = {"san_type": "DNS", "matcher": {"exact": tls.upstream_server_name}}
            validation = {"trusted_ca": {"filename": tls.upstream_ca_file}, "match_typed_subject_alt_names": [san]}
        else:
            validation = {"verify_certificate_hash": [certificate_sha256(Path(tls.upstream_cert_file))]}
        context: dict[str, Any] = {"alpn_protocols": ["h2"], "validation_context": validation}
        if tls.upstream_client_cert_file:
            # mTLS: the servers require a client certificate of their CA; this is Envoy's.
            context["tls_certificates"] = [
                {"certificate_chain": {"filename": tls.upstream_client_cert_file}, "private_key": {"filename": tls.upstream_client_key_file}}
            ]
        socket = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": context,
                **({"sni": tls.upstream_server_name} if tls.upstream_server_name else {}),
            },
        }
        parts["upstream_tls"] = f"\n      transport_socket: {json.dumps(socket)}"
    return parts


def certificate_sha256(pem_file: Path) -> str:
    """The SHA-256 of the first certificate of a PEM file (its DER bytes), in hex."""
    text = pem_file.read_text()
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in text or end not in text:
        raise ConfigError("upstream TLS certificate", f"{pem_file} holds no PEM certificate")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    return hashlib.sha256(base64.b64decode("".join(body.split()))).hexdigest()


def render_config(config: EdgeConfig) -> str:
    """The Envoy v3 bootstrap YAML for ``config``: the template with every placeholder filled."""
    routes, largest = static_routes(config.static_dir)
    scheme = "https" if config.tls.downstream else "http"
    own_origins = (
        [f"{scheme}://127.0.0.1:{config.listen_port}", f"{scheme}://localhost:{config.listen_port}"]
        if config.listen_port
        else []
    )
    tls = _tls_parts(config)
    values = {
        "listen_host": config.listen_host,
        "listen_port": config.listen_port,
        "admin_port": config.admin_port,
        "upstream_host": config.upstream_host,
        "upstream_port": config.upstream_port,
        "max_connections": config.max_connections,
        "max_static_bytes": largest,
        "stream_window": STREAM_WINDOW_BYTES,
        "cors_origins": json.dumps(_cors_origins(config, own_origins)),
        "static_routes": "\n".join(f"{_ROUTE_INDENT}- {json.dumps(route)}" for route in routes),
        **_cluster_parts(config, tls["upstream_tls"]),
        **_tracing_parts(config),
        **_book_parts(config, tls["upstream_tls"]),
        **tls,
    }
    return Template(config.template.read_text()).substitute(values)
