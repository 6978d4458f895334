#!/bin/bash
# Envoy container health check: the admin interface (loopback only) answers /ready with LIVE.
exec 3<>/dev/tcp/127.0.0.1/9901 || exit 1
printf 'GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
grep -q '^LIVE' <&3
