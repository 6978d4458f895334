"""Hypothesis stateful tests: random valid and invalid record sequences against a simple model book.

The model is deliberately naive (a dict of orders and a list per level, aggregates summed on read);
after every F_LAST the engine's views, queues, anomaly counts and integrity must match it.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from mbo_records import F_LAST, F_TOB, UNDEF_PRICE, Rec, records

from mbostream_core.market import BookKey, Market

KEY = BookKey(7, 1)
PRICES = [100, 101, 102, 103, 104]
IDS = st.integers(min_value=1, max_value=12)
SIDES = st.sampled_from("BA")
SIZES = st.integers(min_value=0, max_value=6)


class ModelBook:
    """The documented rules, written as plainly as possible."""

    def __init__(self) -> None:
        self.orders: dict[int, list] = {}  # id -> [side, price, size]
        self.queues: dict[tuple[str, int], list[int]] = {}
        self.tob: dict[str, tuple[int, int] | None] = {"B": None, "A": None}
        self.anomalies: Counter[str] = Counter()

    def _remove(self, oid: int) -> None:
        side, price, _ = self.orders.pop(oid)
        q = self.queues[(side, price)]
        q.remove(oid)
        if not q:
            del self.queues[(side, price)]

    def _clear_side(self, side: str) -> None:
        for oid in [o for o, (s, _, _) in self.orders.items() if s == side]:
            self._remove(oid)
        self.tob[side] = None

    def _add(self, oid: int, side: str, price: int, size: int) -> None:
        if self.tob[side] is not None:
            self.tob[side] = None
        self.orders[oid] = [side, price, size]
        self.queues.setdefault((side, price), []).append(oid)

    def apply(self, r: Rec) -> None:
        a = r.action
        if a == "A":
            if r.side not in "BA" or r.side == "":
                self.anomalies["unknown_side"] += 1
            elif r.flags & F_TOB:
                self._clear_side(r.side)
                if r.price != UNDEF_PRICE:
                    if r.size == 0:
                        self.anomalies["zero_size"] += 1
                    else:
                        self.tob[r.side] = (r.price, r.size)
            elif r.size == 0:
                self.anomalies["zero_size"] += 1
            elif r.price == UNDEF_PRICE:
                self.anomalies["undefined_price"] += 1
            else:
                if r.order_id in self.orders:
                    self.anomalies["duplicate_add"] += 1
                    self._remove(r.order_id)
                self._add(r.order_id, r.side, r.price, r.size)
        elif a == "C":
            if r.order_id not in self.orders:
                self.anomalies["cancel_unknown_order"] += 1
            elif r.size == 0:
                self.anomalies["zero_size"] += 1
            else:
                o = self.orders[r.order_id]
                if r.size > o[2]:
                    self.anomalies["cancel_exceeds_size"] += 1
                o[2] -= min(r.size, o[2])
                if o[2] == 0:
                    self._remove(r.order_id)
        elif a == "M":
            if r.side not in "BA":
                self.anomalies["unknown_side"] += 1
            elif r.order_id not in self.orders:
                self.anomalies["modify_unknown_order"] += 1
                if r.size == 0:
                    self.anomalies["zero_size"] += 1
                elif r.price == UNDEF_PRICE:
                    self.anomalies["undefined_price"] += 1
                else:
                    self._add(r.order_id, r.side, r.price, r.size)
            elif r.size == 0:
                self.anomalies["zero_size"] += 1
                self._remove(r.order_id)
            else:
                side, price, size = self.orders[r.order_id]
                if side != r.side:
                    self.anomalies["modify_side_change"] += 1
                    self._remove(r.order_id)
                    self._add(r.order_id, r.side, r.price, r.size)
                elif price != r.price or r.size > size:
                    self._remove(r.order_id)
                    self._add(r.order_id, side, r.price, r.size)
                else:
                    self.orders[r.order_id][2] = r.size
        elif a == "R":
            self.orders.clear()
            self.queues.clear()
            self.tob = {"B": None, "A": None}
        elif a == "F":
            if r.order_id not in self.orders and r.side != "N":
                self.anomalies["fill_unknown_order"] += 1
        elif a not in "TN":
            self.anomalies["unknown_action"] += 1

    def levels(self, side: str) -> list[tuple[int, int, int, list[tuple[int, int]]]]:
        if self.tob[side] is not None:
            price, size = self.tob[side]
            return [(price, size, 0, [])]
        out = []
        for (s, price), q in self.queues.items():
            if s == side:
                out.append((price, sum(self.orders[o][2] for o in q), len(q), [(o, self.orders[o][2]) for o in q]))
        return sorted(out, reverse=(side == "B"))


class BookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.market = Market()
        self.model = ModelBook()
        self.in_event = False
        self.events_seen = 0
        self.last_row = None

    def _send(self, r: Rec) -> None:
        r.instrument_id, r.publisher_id = KEY.instrument_id, KEY.publisher_id
        result = self.market.apply(records([r]), complete_events=False)
        self.model.apply(r)
        self.in_event = not (r.flags & F_LAST)
        if len(result.events):
            self.events_seen += 1
            self.last_row = result.events[-1]

    last = st.sampled_from([F_LAST, F_LAST, F_LAST, 0])

    @rule(oid=IDS, side=SIDES, price=st.sampled_from(PRICES), size=SIZES, flags=last)
    def add(self, oid: int, side: str, price: int, size: int, flags: int) -> None:
        self._send(Rec("A", side, oid, price, size, flags))

    @rule(oid=IDS, side=SIDES, size=SIZES, flags=last)
    def cancel(self, oid: int, side: str, size: int, flags: int) -> None:
        price = self.model.orders.get(oid, [side, PRICES[0], 0])[1]
        self._send(Rec("C", side, oid, price, size, flags))

    @rule(oid=IDS, side=SIDES, price=st.sampled_from(PRICES), size=SIZES, flags=last)
    def modify(self, oid: int, side: str, price: int, size: int, flags: int) -> None:
        self._send(Rec("M", side, oid, price, size, flags))

    @rule(oid=IDS, side=SIDES, flags=last, data=st.data())
    def modify_existing_keeping_side(self, oid: int, side: str, flags: int, data: st.DataObject) -> None:
        if oid in self.model.orders:
            side, price, size = self.model.orders[oid]
            new_size = data.draw(st.integers(min_value=1, max_value=size + 2))
            new_price = data.draw(st.sampled_from([price, *PRICES]))
            self._send(Rec("M", side, oid, new_price, new_size, flags))

    @rule(action=st.sampled_from("TFN"), oid=IDS, side=st.sampled_from("BAN"), size=SIZES, flags=last)
    def no_book_change(self, action: str, oid: int, side: str, size: int, flags: int) -> None:
        self._send(Rec(action, side, oid, PRICES[2], size, flags))

    @rule(flags=last)
    def clear(self, flags: int) -> None:
        self._send(Rec("R", "N", 0, UNDEF_PRICE, 0, flags))

    @rule(side=SIDES, price=st.sampled_from([*PRICES, UNDEF_PRICE]), size=SIZES)
    def top_of_book(self, side: str, price: int, size: int) -> None:
        self._send(Rec("A", side, 0, price, size, F_LAST | F_TOB))

    @rule(action=st.sampled_from("AMXZ"), side=st.sampled_from("NX?"), oid=IDS)
    def garbage(self, action: str, side: str, oid: int) -> None:
        self._send(Rec(action, side, oid, PRICES[1], 1, F_LAST))

    @rule(oid=IDS, side=SIDES)
    def undefined_price(self, oid: int, side: str) -> None:
        self._send(Rec("A", side, oid, UNDEF_PRICE, 1, F_LAST))

    @invariant()
    def matches_model_at_f_last(self) -> None:
        if self.in_event or not self.market.books():
            return
        bids, asks = self.market._engine.depth_with_orders(KEY.instrument_id, KEY.publisher_id, 0)
        assert [(p, s, c, list(q)) for p, s, c, q in bids] == self.model.levels("B")
        assert [(p, s, c, list(q)) for p, s, c, q in asks] == self.model.levels("A")
        assert self.market.anomaly_counts(KEY) == {k: v for k, v in self.model.anomalies.items() if v}
        assert self.market.check_integrity(KEY) == []
        assert self.market.stats(KEY).order_count == len(self.model.orders)
        if self.last_row is not None:
            model_bid = self.model.levels("B")[:1]
            model_ask = self.model.levels("A")[:1]
            assert self.last_row["bid_price"] == (model_bid[0][0] if model_bid else UNDEF_PRICE)
            assert self.last_row["ask_price"] == (model_ask[0][0] if model_ask else UNDEF_PRICE)
            assert self.last_row["bid_size"] == (model_bid[0][1] if model_bid else 0)

    @invariant()
    def snapshot_round_trips(self) -> None:
        if self.in_event or not self.market.books():
            return
        replica = Market()
        replica.apply(self.market.snapshot(KEY, ts_recv=1))
        here = self.market._engine.depth_with_orders(KEY.instrument_id, KEY.publisher_id, 0)
        there = replica._engine.depth_with_orders(KEY.instrument_id, KEY.publisher_id, 0)
        assert here == there


TestBookMachine = BookMachine.TestCase
TestBookMachine.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
