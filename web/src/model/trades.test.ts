import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { StreamEventsResponseSchema } from "../gen/mbostream/v1/market_data_pb";
import { Tape, type TapeTrade, tradesFrom } from "./trades";

const ascii = (text: string): Uint8Array => new TextEncoder().encode(text);

const batch = create(StreamEventsResponseSchema, {
  batchSequence: 14n,
  replaySequence: [10n, 11n, 12n, 13n, 14n],
  tsEvent: [1n, 2n, 3n, 4n, 5n],
  tsRecv: [1n, 2n, 3n, 4n, 5n],
  orderId: [1n, 2n, 3n, 4n, 5n],
  price: [65_400_000_000n, 65_410_000_000n, 65_420_000_000n, 65_400_000_000n, 9_223_372_036_854_775_807n],
  size: [1, 2, 3, 4, 0],
  action: ascii("ATFTR"),
  side: ascii("BABNN"),
  flags: new Uint8Array([0, 0, 0, 128, 0]),
  sequence: [1, 2, 3, 4, 5],
  instrumentId: [42, 42, 42, 42, 42],
  publisherId: [1, 1, 1, 1, 1],
});

describe("tradesFrom", () => {
  it("keeps only 'T' records, with the aggressor side", () => {
    expect(tradesFrom(batch)).toEqual([
      { replaySequence: 11n, tsEvent: 2n, instrumentId: 42, price: 65_410_000_000n, size: 2, aggressor: "sell" },
      { replaySequence: 13n, tsEvent: 4n, instrumentId: 42, price: 65_400_000_000n, size: 4, aggressor: "none" },
    ]);
  });

  it("finds no trades in a snapshot batch", () => {
    expect(tradesFrom(create(StreamEventsResponseSchema, { ...batch, snapshot: true }))).toEqual([]);
  });
});

describe("Tape", () => {
  const trade = (n: number): TapeTrade => ({
    replaySequence: BigInt(n),
    tsEvent: BigInt(n),
    instrumentId: 1,
    price: 1n,
    size: n,
    aggressor: "buy",
  });

  it("shows the newest first and forgets beyond its capacity", () => {
    const tape = new Tape(3);
    tape.push([trade(1), trade(2)]);
    tape.push([trade(3), trade(4)]);
    expect(tape.trades.map((t) => t.size)).toEqual([4, 3, 2]);
    tape.push([trade(5), trade(6), trade(7), trade(8)]);
    expect(tape.trades.map((t) => t.size)).toEqual([8, 7, 6]);
  });
});
