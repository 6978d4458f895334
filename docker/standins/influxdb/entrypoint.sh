#!/bin/bash
# influxd 1.8 in the place of 2.7: data under /var/lib/influxdb2 (the 2.x image's volume; the data
# and the WAL in engine/, where 2.x keeps them, so compose.yaml's WAL repair finds them), Flux on,
# no auth (the 2.x token is not checked), and the database DOCKER_INFLUXDB_INIT_BUCKET created
# before the health check can pass (it waits for /health, then /ping says ready only after).
# INFLUXD_TLS_CERT and INFLUXD_TLS_KEY (both set): HTTPS only on 8086, as the 2.x image serves it;
# like the 2.x entrypoint, the set-up before runs in plaintext on a port of its own.
set -euo pipefail
mkdir -p /var/lib/influxdb2
cat >/tmp/influxdb.conf <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:8088"
[meta]
  dir = "/var/lib/influxdb2/meta"
[data]
  dir = "/var/lib/influxdb2/engine/data"
  wal-dir = "/var/lib/influxdb2/engine/wal"
  index-version = "inmem"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = ":8087"
  auth-enabled = false
  flux-enabled = true
  log-enabled = false
CONF
influxd -config /tmp/influxdb.conf &
pid=$!
trap 'kill -TERM $pid; wait $pid' TERM INT
for _ in $(seq 1 120); do curl -fsS http://127.0.0.1:8087/ping >/dev/null 2>&1 && break; sleep 0.5; done
if [[ -n "${DOCKER_INFLUXDB_INIT_BUCKET:-}" ]]; then
  curl -fsS -XPOST http://127.0.0.1:8087/query --data-urlencode "q=CREATE DATABASE \"$DOCKER_INFLUXDB_INIT_BUCKET\"" >/dev/null
fi
# Only now is the port the clients and the health check use open: a socat-free relay is not
# available, so influxd is restarted on 8086 with the database in place.
kill -TERM $pid; wait $pid || true
sed -i 's/bind-address = ":8087"/bind-address = ":8086"/' /tmp/influxdb.conf
if [[ -n "${INFLUXD_TLS_CERT:-}" && -n "${INFLUXD_TLS_KEY:-}" ]]; then
  sed -i "s#^\[http\]\$#[http]\n  https-enabled = true\n  https-certificate = \"$INFLUXD_TLS_CERT\"\n  https-private-key = \"$INFLUXD_TLS_KEY\"#" /tmp/influxdb.conf
fi
exec influxd -config /tmp/influxdb.conf
