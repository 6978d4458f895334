// Trade tape view-model: trade prints picked out of the column-wise MBO
// batches of StreamEvents. Pure: no DOM, no network.

import type { StreamEventsResponse } from "../gen/mbostream/v1/market_data_pb";

const ACTION_TRADE = 0x54; // 'T'
const SIDE_BID = 0x42; // 'B': a buy aggressor
const SIDE_ASK = 0x41; // 'A': a sell aggressor

/** Who lifted or hit: a buy aggressor trades at the ask, a sell aggressor at the bid. */
export type Aggressor = "buy" | "sell" | "none";

export interface TapeTrade {
  readonly replaySequence: bigint;
  readonly tsEvent: bigint;
  readonly instrumentId: number;
  readonly price: bigint;
  readonly size: number;
  readonly aggressor: Aggressor;
}

function aggressor(side: number | undefined): Aggressor {
  if (side === SIDE_BID) return "buy";
  if (side === SIDE_ASK) return "sell";
  return "none";
}

/** The trades ('T' records) of one batch, in replay order; snapshot batches hold none. */
export function tradesFrom(batch: StreamEventsResponse): TapeTrade[] {
  const trades: TapeTrade[] = [];
  if (batch.snapshot) return trades;
  const { action } = batch;
  for (let i = 0; i < action.length; i++) {
    if (action[i] !== ACTION_TRADE) continue;
    trades.push({
      replaySequence: batch.replaySequence[i] ?? 0n,
      tsEvent: batch.tsEvent[i] ?? 0n,
      instrumentId: batch.instrumentId[i] ?? 0,
      price: batch.price[i] ?? 0n,
      size: batch.size[i] ?? 0,
      aggressor: aggressor(batch.side[i]),
    });
  }
  return trades;
}

/** A bounded newest-first list of trades: what the tape shows. */
export class Tape {
  private items: TapeTrade[] = [];

  constructor(readonly capacity: number) {}

  /** Adds trades given oldest first; keeps the newest `capacity`. */
  push(trades: readonly TapeTrade[]): void {
    if (trades.length === 0) return;
    const newest = trades.slice(-this.capacity).reverse();
    this.items = newest.concat(this.items).slice(0, this.capacity);
  }

  clear(): void {
    this.items = [];
  }

  /** Newest first. */
  get trades(): readonly TapeTrade[] {
    return this.items;
  }
}
