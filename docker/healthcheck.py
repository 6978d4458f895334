"""Container health check: the gRPC health service of the mbostream process in this container.

Exit 0 when ``grpc.health.v1.Health/Check`` (the whole server) answers SERVING on
``127.0.0.1:$MBOSTREAM_PORT``, else 1 with the reason on stderr. Gateways answer NOT_SERVING until
they have caught up with the bus, so they are unhealthy until then.

TLS from the server's own settings: with ``MBOSTREAM_TLS_CERT_FILE`` the check speaks TLS and
verifies the server as any client would, by the last certificate of that file (the chain's CA: the
file must hold the chain up to it, as compose's ``secrets-init`` writes it) and the leaf's first
DNS name; with ``MBOSTREAM_TLS_CLIENT_CA_FILE`` (mTLS) it presents the server's own certificate and
key (``MBOSTREAM_TLS_KEY_FILE``), which must then allow client authentication.
"""

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _channel(target: str) -> grpc.Channel:
    cert_file = os.environ.get("MBOSTREAM_TLS_CERT_FILE", "")
    if not cert_file:
        return grpc.insecure_channel(target)
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    chain = Path(cert_file).read_bytes()
    certificates = x509.load_pem_x509_certificates(chain)
    leaf = certificates[0]
    try:
        name = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)[0]
    except (x509.ExtensionNotFound, IndexError):
        name = str(leaf.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value)
    mutual = bool(os.environ.get("MBOSTREAM_TLS_CLIENT_CA_FILE"))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certificates[-1].public_bytes(Encoding.PEM),
        private_key=Path(os.environ["MBOSTREAM_TLS_KEY_FILE"]).read_bytes() if mutual else None,
        certificate_chain=chain if mutual else None,
    )
    return grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", name)])


target = f"127.0.0.1:{os.environ.get('MBOSTREAM_PORT', '50051')}"
try:
    with _channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
except grpc.RpcError as exc:
    print(f"health: {target}: {exc.code().name} {exc.details() or ''}".rstrip(), file=sys.stderr)
    sys.exit(1)
except (OSError, ValueError, KeyError) as exc:
    print(f"health: {target}: the TLS files cannot be used: {exc}", file=sys.stderr)
    sys.exit(1)
status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
print(f"health: {target}: {status}")
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
