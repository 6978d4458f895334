"""Test-only InfluxDB: a real InfluxDB 1.8 engine, written to through its 2.x API."""
