// Ladder view-model: a BookSnapshot turned into the rows the depth ladder
// shows (cumulative depth, bar fractions, best levels, spread and the
// crossed/locked state). Pure: no DOM, no network.

import type { BookSnapshot, Level } from "../gen/mbostream/v1/book_pb";
import { displayDecimals, inferTick } from "./price";

export type BookSide = "bid" | "ask";

/** The book's shape at its top: what a trader must be told before reading prices. */
export type BookState = "two-sided" | "locked" | "crossed" | "one-sided" | "empty";

export interface LadderRow {
  readonly side: BookSide;
  readonly price: bigint;
  readonly size: bigint;
  readonly count: number;
  /** Size of this level and every better one on the same side. */
  readonly cumulative: bigint;
  /** size / the largest size shown on either side, in [0, 1]. */
  readonly sizeFraction: number;
  /** cumulative / the largest cumulative size shown on either side, in [0, 1]. */
  readonly depthFraction: number;
  /** The best level of its side. */
  readonly best: boolean;
}

export interface Ladder {
  /** Ask rows in display order: highest price first, so the best ask sits just above the spread. */
  readonly asks: readonly LadderRow[];
  /** Bid rows in display order: best (highest) bid first. */
  readonly bids: readonly LadderRow[];
  readonly bestBid: bigint | undefined;
  readonly bestAsk: bigint | undefined;
  /** bestAsk − bestBid; zero when locked, negative when crossed. */
  readonly spread: bigint | undefined;
  /** The spread in ticks, when the tick is known and divides it. */
  readonly spreadTicks: bigint | undefined;
  /** (bestBid + bestAsk) / 2, truncated toward zero to the wire's 1e-9 unit. */
  readonly mid: bigint | undefined;
  /** Tick size inferred from the shown levels. */
  readonly tick: bigint | undefined;
  /** Decimals that show every price of the ladder exactly. */
  readonly decimals: number;
  readonly state: BookState;
}

const fraction = (part: bigint, whole: bigint): number => (whole === 0n ? 0 : Number(part) / Number(whole));

function cumulate(levels: readonly Level[], depth: number): { level: Level; cumulative: bigint }[] {
  let running = 0n;
  return levels.slice(0, depth).map((level) => {
    running += level.size;
    return { level, cumulative: running };
  });
}

/** Classifies the top of the book; the server's crossed/locked flags win over the levels. */
export function bookState(bestBid: bigint | undefined, bestAsk: bigint | undefined, book: BookSnapshot): BookState {
  if (bestBid === undefined && bestAsk === undefined) return "empty";
  if (bestBid === undefined || bestAsk === undefined) return "one-sided";
  if (book.crossed || bestBid > bestAsk) return "crossed";
  if (book.locked || bestBid === bestAsk) return "locked";
  return "two-sided";
}

/**
 * Builds the ladder for the `depth` best levels of each side of `book`.
 * Best prices come from the full book's BBO when the server sent one.
 */
export function buildLadder(book: BookSnapshot, depth = Number.MAX_SAFE_INTEGER): Ladder {
  const bids = cumulate(book.bids, depth);
  const asks = cumulate(book.asks, depth);
  const bbo = book.bbo;
  const bestBid = bbo ? (bbo.hasBid ? bbo.bidPrice : undefined) : book.bids[0]?.price;
  const bestAsk = bbo ? (bbo.hasAsk ? bbo.askPrice : undefined) : book.asks[0]?.price;

  let maxSize = 0n;
  let maxCumulative = 0n;
  for (const { level, cumulative } of [...bids, ...asks]) {
    if (level.size > maxSize) maxSize = level.size;
    if (cumulative > maxCumulative) maxCumulative = cumulative;
  }
  const row =
    (side: BookSide, best: bigint | undefined) =>
    ({ level, cumulative }: { level: Level; cumulative: bigint }): LadderRow => ({
      side,
      price: level.price,
      size: level.size,
      count: level.count,
      cumulative,
      sizeFraction: fraction(level.size, maxSize),
      depthFraction: fraction(cumulative, maxCumulative),
      best: level.price === best,
    });

  const prices = [...bids.map((b) => b.level.price).reverse(), ...asks.map((a) => a.level.price)];
  const sortedPrices = [...prices].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const tick = inferTick(sortedPrices);
  const spread = bestBid !== undefined && bestAsk !== undefined ? bestAsk - bestBid : undefined;
  const spreadTicks = spread !== undefined && tick !== undefined && spread % tick === 0n ? spread / tick : undefined;
  return {
    asks: asks.map(row("ask", bestAsk)).reverse(),
    bids: bids.map(row("bid", bestBid)),
    bestBid,
    bestAsk,
    spread,
    spreadTicks,
    mid: bestBid !== undefined && bestAsk !== undefined ? (bestBid + bestAsk) / 2n : undefined,
    tick,
    decimals: displayDecimals(prices),
    state: bookState(bestBid, bestAsk, book),
  };
}

export interface QueueRow {
  /** 1 is next to fill. */
  readonly position: number;
  readonly orderId: bigint;
  readonly size: number;
  /** Size resting ahead of this order at the level. */
  readonly ahead: bigint;
  /** size / the level's total size, in [0, 1]. */
  readonly share: number;
}

/** The level at `price` on `side` of `book`, if it is among the levels sent. */
export function findLevel(book: BookSnapshot, side: BookSide, price: bigint): Level | undefined {
  return (side === "bid" ? book.bids : book.asks).find((level) => level.price === price);
}

/** The L3 queue of one level in priority order, with the size ahead of each order. */
export function buildQueue(level: Level): QueueRow[] {
  const total = level.orders.reduce((sum, order) => sum + BigInt(order.size), 0n);
  let ahead = 0n;
  return level.orders.map((order, index) => {
    const row = {
      position: index + 1,
      orderId: order.orderId,
      size: order.size,
      ahead,
      share: fraction(BigInt(order.size), total),
    };
    ahead += BigInt(order.size);
    return row;
  });
}
