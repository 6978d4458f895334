"""Test-only InfluxDB stack: a real InfluxDB 1.6 engine behind an Envoy v2→v1 write shim."""
