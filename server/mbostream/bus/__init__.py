"""Bus room: the NATS JetStream link between one replayer and N gateways (issue 14, docs/bus.md).

* :mod:`~mbostream.bus.streams` — the three streams, declared idempotently, and the connection.
* :mod:`~mbostream.bus.codec` — a replay step as one message (raw DBN records + position headers),
  book snapshots and the meta message.
* :mod:`~mbostream.bus.publisher` — the replayer's side: a :class:`~mbostream.feed.Publisher` that
  hands each batch to the local hub and to the bus (single writer, deduplicated), and the periodic
  book snapshots.
* :mod:`~mbostream.bus.ingest` — the gateway's side: a feed that re-applies the bus's records to a
  local market with the same engine and publishes the same batches (same positions) to its hub,
  and the stream history that serves resumes older than the hub's memory.

The bus depends on the feed and the core only; the roles' wiring (gRPC, health) is the server's.
"""
