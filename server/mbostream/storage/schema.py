"""Schema room: the measurements, tags and fields the storage sink writes, and why they never collide.

=========== ============================================ ===================================================
measurement tags                                         fields
=========== ============================================ ===================================================
``trades``  instrument, instrument_id, publisher_id,     price, size, order_id, sequence, ts_event, ts_recv
            side (aggressor: ``A``, ``B`` or ``N``)
``bbo``     instrument, instrument_id, publisher_id      bid_price, bid_size, bid_count, ask_price,
                                                         ask_size, ask_count, spread, mid, crossed, locked,
                                                         sequence, ts_event, ts_recv
``depth``   instrument, instrument_id, publisher_id      bid_px_NN, bid_sz_NN, bid_ct_NN, ask_px_NN,
                                                         ask_sz_NN, ask_ct_NN (NN = 00 … levels-1),
                                                         bid_levels, ask_levels, sequence, ts_event, ts_recv
``mbo``     instrument, instrument_id, publisher_id,     order_id, price, size, flags, sequence, ts_event,
            action, side                                 ts_recv
=========== ============================================ ===================================================

* Prices are int64 in units of 1e-9 (as in DBN); divide by 1e9 at the edge. A side without
  orders has no ``*_price`` field (nor ``spread``/``mid``). ``mid`` is the floor of the half sum.
* ``bbo`` is written at each F_LAST that changed the top of book; ``depth`` once per
  ``depth_interval`` of feed time for each book that changed since its last sample (a level
  absent from the book has no field); ``mbo`` (optional) once per record.
* Tags are bounded: instruments × publishers × 3 sides × 7 actions. Order ids and sequences are
  fields, never tags.
* Unsigned 64-bit values are stored as the int64 with the same bits (InfluxDB 1.x has no unsigned
  type); only UNDEF_TIMESTAMP reaches 2^63, and reads back as -1.

Timestamps
----------
InfluxDB keeps one point per (measurement, tag set, time). The point time is ``ts_event``, made
strictly increasing per book and measurement in feed order: ``time = max(ts_event, previous + 1)``
(a ``ts_event`` more than a second behind restarts the clock: a replay that loops maps the same
records onto the same points). Hundreds of records can share a ``ts_event`` (648 in one CLX5
event), so they get consecutive nanoseconds; ``ts_event`` itself stays exact in its field. Two
distinct events of a book therefore never share a point, ordering by time replays the feed, and
the same event always maps to the same point, so a retried or re-drained write is idempotent.
"""
