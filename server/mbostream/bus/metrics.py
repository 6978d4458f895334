"""Bus metrics of the gateway's ingest (the other bus series are in :mod:`mbostream.metrics`)."""

from __future__ import annotations

from prometheus_client import Counter

#: Record messages skipped because their positions were already applied (a redelivery).
DUPLICATES_DROPPED = Counter("mbostream_bus_duplicates_dropped", "Record messages a gateway dropped as already applied")
#: Positions the record stream skipped (the gateway then resyncs from the snapshots: RESYNCS).
GAPS = Counter("mbostream_bus_gaps", "Gaps in the record stream's replay positions seen by a gateway")
#: Books rebuilt in place from the latest snapshots after a gap (the process stays up).
RESYNCS = Counter("mbostream_bus_resyncs", "Times a gateway rebuilt its books from the bus's snapshots after a gap")
