"""Container health check: the gRPC health service of the mbostream process in this container.

Exit 0 when ``grpc.health.v1.Health/Check`` (the whole server) answers SERVING on
``127.0.0.1:$MBOSTREAM_PORT``, else 1 with the reason on stderr. Gateways answer NOT_SERVING until
they have caught up with the bus, so they are unhealthy until then.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

target = f"127.0.0.1:{os.environ.get('MBOSTREAM_PORT', '50051')}"
try:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
except grpc.RpcError as exc:
    print(f"health: {target}: {exc.code().name}", file=sys.stderr)
    sys.exit(1)
status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
print(f"health: {target}: {status}")
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
