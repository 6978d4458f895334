import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { type BookSnapshot, BookSnapshotSchema, type Level, LevelSchema } from "../gen/mbostream/v1/book_pb";
import { buildLadder, buildQueue, findLevel } from "./ladder";

const px = (text: string): bigint => BigInt(Math.round(Number(text) * 100)) * 10_000_000n;

function level(price: string, size: number, count: number, orders: [bigint, number][] = []): Level {
  return create(LevelSchema, {
    price: px(price),
    size: BigInt(size),
    count,
    orders: orders.map(([orderId, sz]) => ({ orderId, size: sz })),
  });
}

function book(bids: Level[], asks: Level[], extra: { crossed?: boolean; locked?: boolean } = {}): BookSnapshot {
  const [bestBid, bestAsk] = [bids[0], asks[0]];
  return create(BookSnapshotSchema, {
    bids,
    asks,
    bbo: {
      hasBid: bestBid !== undefined,
      bidPrice: bestBid?.price ?? 0n,
      bidSize: bestBid?.size ?? 0n,
      hasAsk: bestAsk !== undefined,
      askPrice: bestAsk?.price ?? 0n,
      askSize: bestAsk?.size ?? 0n,
    },
    ...extra,
  });
}

const normal = book(
  [level("65.40", 5, 2), level("65.39", 10, 3), level("65.37", 25, 1)],
  [level("65.42", 4, 1), level("65.43", 50, 7)],
);

describe("buildLadder", () => {
  it("puts asks above bids, best levels next to the spread", () => {
    const ladder = buildLadder(normal);
    expect(ladder.asks.map((r) => r.price)).toEqual([px("65.43"), px("65.42")]);
    expect(ladder.bids.map((r) => r.price)).toEqual([px("65.40"), px("65.39"), px("65.37")]);
    expect(ladder.asks.at(-1)?.best).toBe(true);
    expect(ladder.bids[0]?.best).toBe(true);
    expect(ladder.asks.filter((r) => r.best)).toHaveLength(1);
  });

  it("accumulates depth away from the inside on each side", () => {
    const ladder = buildLadder(normal);
    expect(ladder.bids.map((r) => r.cumulative)).toEqual([5n, 15n, 40n]);
    // Displayed top-down, so the largest cumulative ask is the top row.
    expect(ladder.asks.map((r) => r.cumulative)).toEqual([54n, 4n]);
  });

  it("scales bars to the largest size and depth shown on either side", () => {
    const ladder = buildLadder(normal);
    expect(ladder.asks[0]?.sizeFraction).toBe(1);
    expect(ladder.bids[2]?.sizeFraction).toBeCloseTo(25 / 50);
    expect(ladder.asks[0]?.depthFraction).toBe(1);
    expect(ladder.bids[2]?.depthFraction).toBeCloseTo(40 / 54);
  });

  it("reports spread, ticks, mid and decimals exactly", () => {
    const ladder = buildLadder(normal);
    expect(ladder.spread).toBe(px("0.02"));
    expect(ladder.tick).toBe(px("0.01"));
    expect(ladder.spreadTicks).toBe(2n);
    expect(ladder.mid).toBe(px("65.41"));
    expect(ladder.decimals).toBe(2);
    expect(ladder.state).toBe("two-sided");
  });

  it("cuts each side to the depth asked for", () => {
    const ladder = buildLadder(normal, 1);
    expect(ladder.bids).toHaveLength(1);
    expect(ladder.asks).toHaveLength(1);
    expect(ladder.bids[0]?.sizeFraction).toBe(1);
  });

  it.each([
    ["crossed", book([level("65.45", 1, 1), level("65.44", 1, 1)], [level("65.42", 1, 1)], { crossed: true }), -3n],
    ["locked", book([level("65.42", 1, 1), level("65.41", 1, 1)], [level("65.42", 1, 1)], { locked: true }), 0n],
    ["one-sided", book([level("65.42", 1, 1)], []), undefined],
    ["empty", book([], []), undefined],
  ] as const)("flags a %s book", (state, snapshot, ticks) => {
    const ladder = buildLadder(snapshot);
    expect(ladder.state).toBe(state);
    expect(ladder.spreadTicks).toBe(ticks);
  });

  it("trusts the server's crossed flag and the full-book BBO over the levels sent", () => {
    const snapshot = book([level("65.40", 1, 1)], [level("65.42", 1, 1)], { crossed: true });
    expect(buildLadder(snapshot).state).toBe("crossed");
  });

  it("treats a zero price as a real price when the BBO flag says so", () => {
    const spread = book([level("-0.01", 1, 1)], [level("0", 2, 1)]);
    const ladder = buildLadder(spread);
    expect(ladder.bestAsk).toBe(0n);
    expect(ladder.spread).toBe(px("0.01"));
    expect(ladder.state).toBe("two-sided");
  });
});

describe("buildQueue", () => {
  const withOrders = level("65.40", 12, 3, [
    [101n, 5],
    [102n, 3],
    [103n, 4],
  ]);

  it("keeps priority order and sums the size ahead", () => {
    expect(buildQueue(withOrders).map((r) => [r.position, r.orderId, r.size, r.ahead])).toEqual([
      [1, 101n, 5, 0n],
      [2, 102n, 3, 5n],
      [3, 103n, 4, 8n],
    ]);
  });

  it("gives each order its share of the level", () => {
    const shares = buildQueue(withOrders).map((r) => r.share);
    expect(shares.reduce((a, b) => a + b, 0)).toBeCloseTo(1);
    expect(shares[0]).toBeCloseTo(5 / 12);
  });

  it("finds a level by side and price", () => {
    const snapshot = book([withOrders], [level("65.42", 1, 1)]);
    expect(findLevel(snapshot, "bid", px("65.40"))).toBe(withOrders);
    expect(findLevel(snapshot, "ask", px("65.40"))).toBeUndefined();
  });
});
