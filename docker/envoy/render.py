"""Renders the edge's Envoy config for a container, from the template ``mbostream run`` uses.

Same template and renderer (:func:`mbostream.edge.render.render_config`), in one of its two modes:
one server (``--upstream-host serve``), or gateways plus a replayer (``--replayer-host replay``:
the API to the gateways with retries, ReplayService to the replayer, as ``mbostream run
--gateways N`` routes them). What differs in a container: Envoy listens on all interfaces, its
admin stays on loopback at a fixed port (the health check reads /ready there), and upstreams are
service names, so their clusters resolve them by DNS (STRICT_DNS: every address behind a name,
e.g. two gateways sharing the network alias `gateways`, re-resolved as containers come and go)
instead of the template's STATIC addresses. A template these edits no longer match fails the build.

HTTPS at the listener (``--listen-cert-file``/``--listen-key-file``, in-container paths read when
Envoy starts): the edge serves browsers and clients over TLS only, HTTP/2 or HTTP/1.1 by ALPN, as
``mbostream run`` does with ``MBOSTREAM_EDGE_TLS_CERT_FILE``.

StreamBook to the native port (``--book-port``, ``MBOSTREAM_BOOK_PORT``) of the server, or of every
gateway behind the gateways' name: its own cluster on the same host(s) with the same upstream TLS,
by DNS too; gateways are health-checked there on their gRPC port.

Upstream TLS (``--upstream-ca-file``): the servers' certificates are made when the stack first
starts (compose's ``secrets-init``), after this config is rendered, so there is nothing to pin:
Envoy validates each server by the CA file (read from that in-container path when it starts) and
the name its certificate must carry, ``gateways`` for the API's cluster and the replayer's own
name for the replayer's (each also sent as SNI).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mbostream.edge.config import EdgeConfig, EdgeTls
from mbostream.edge.render import BOOK_CLUSTER, UPSTREAM_CLUSTER, render_config

ADMIN_PORT = 9901
REPLAYER_CLUSTER = "mbostream_replayer"


def _dns(text: str, cluster: str) -> str:
    static = f"    - name: {cluster}\n      type: STATIC\n"
    if text.count(static) != 1:
        raise SystemExit(f"render: the template's {cluster} cluster is no longer STATIC as expected")
    dns = f"    - name: {cluster}\n      type: STRICT_DNS\n      dns_lookup_family: V4_ONLY\n      dns_refresh_rate: 2s\n"
    return text.replace(static, dns)


def _replayer_server_name(text: str, gateways_name: str, replayer_name: str) -> str:
    """The replayer's cluster validates (and sends as SNI) the replayer's name, not the gateways'."""
    start = text.index(f"    - name: {REPLAYER_CLUSTER}\n")
    end = text.find("\n    - ", start + 1)
    end = len(text) if end == -1 else end
    block = text[start:end]
    pairs = ((f'"exact": "{gateways_name}"', f'"exact": "{replayer_name}"'), (f'"sni": "{gateways_name}"', f'"sni": "{replayer_name}"'))
    for old, new in pairs:
        if block.count(old) != 1:
            raise SystemExit(f"render: the {REPLAYER_CLUSTER} cluster's TLS is no longer where expected ({old})")
        block = block.replace(old, new)
    return text[:start] + block + text[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", type=Path, required=True)
    parser.add_argument("--static-dir", type=Path, required=True)
    parser.add_argument("--upstream-host", required=True, help="the server, or the gateways' shared name")
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--replayer-host", default="", help="gateway mode: the replayer (same port)")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--allowed-origins", default="", help="comma-separated extra CORS origins")
    parser.add_argument("--upstream-ca-file", default="", help="TLS to the servers, validated by this CA (its path in the container)")
    parser.add_argument("--upstream-server-name", default="", help="the name the servers' certificate carries (default: --upstream-host)")
    parser.add_argument("--replayer-server-name", default="", help="the name the replayer's certificate carries (default: --replayer-host)")
    parser.add_argument("--listen-cert-file", default="", help="HTTPS at the listener: its certificate chain (its path in the container)")
    parser.add_argument("--listen-key-file", default="", help="HTTPS at the listener: its key (its path in the container)")
    parser.add_argument("--book-port", default="", help="StreamBook to the native port (MBOSTREAM_BOOK_PORT) of the server or the gateways, same TLS")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    gateways = bool(args.replayer_host)
    server_name = (args.upstream_server_name or args.upstream_host) if args.upstream_ca_file else ""
    config = EdgeConfig(
        listen_port=args.listen_port,
        listen_host="0.0.0.0",
        upstream_port=args.upstream_port,
        upstream_host=args.upstream_host,
        upstream_ports=(args.upstream_port,) if gateways else (),
        replayer_port=args.upstream_port if gateways else None,
        admin_port=ADMIN_PORT,
        static_dir=args.static_dir,
        allowed_origins=tuple(o for o in args.allowed_origins.split(",") if o),
        template=args.template,
        tls=EdgeTls(
            cert_file=args.listen_cert_file,
            key_file=args.listen_key_file,
            upstream_ca_file=args.upstream_ca_file,
            upstream_server_name=server_name,
        ),
        book_port=int(args.book_port) if args.book_port else None,
    )
    text = _dns(render_config(config), UPSTREAM_CLUSTER)
    if config.book_port is not None:
        text = _dns(text, BOOK_CLUSTER)
    if gateways:
        text = _dns(text, REPLAYER_CLUSTER)
        # The renderer puts the replayer on the gateways' host (one machine); here it has its own.
        line = next((ln for ln in text.splitlines() if f'"cluster_name": "{REPLAYER_CLUSTER}"' in ln), "")
        old = f'"address": "{args.upstream_host}"'
        if line.count(old) != 1:
            raise SystemExit(f"render: the {REPLAYER_CLUSTER} endpoint is no longer where expected")
        text = text.replace(line, line.replace(old, f'"address": "{args.replayer_host}"'))
        if server_name:
            text = _replayer_server_name(text, server_name, args.replayer_server_name or args.replayer_host)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
