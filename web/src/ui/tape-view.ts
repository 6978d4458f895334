// The trade tape: newest trade first, with time, aggressor side, price and size.
// Each row is a containment root that shows one trade for its whole life.

import type { TapeTrade } from "../model/trades";
import { formatClock } from "../model/format";
import { formatPrice, formatQuantity } from "../model/price";
import { h } from "./dom";

const SIDE_TEXT = { buy: "BUY", sell: "SELL", none: "—" } as const;

/** One trade, rendered once. */
class TradeRow {
  readonly element: HTMLElement;

  constructor(
    readonly trade: TapeTrade,
    decimals: number,
  ) {
    const cell = (kind: string, text: string): HTMLElement => h("span", { class: kind, text });
    this.element = h(
      "div",
      { class: "trade", testid: "trade", attrs: { "data-aggressor": trade.aggressor } },
      cell("time", formatClock(trade.tsEvent)),
      cell("side", SIDE_TEXT[trade.aggressor]),
      cell("price", formatPrice(trade.price, decimals)),
      cell("qty", formatQuantity(trade.size)),
    );
  }
}

export class TapeView {
  readonly element: HTMLElement;
  private readonly list: HTMLElement;
  private readonly empty: HTMLElement;
  /** The rows on screen, newest first. */
  private rows: TradeRow[] = [];
  private shownDecimals = -1;

  constructor(readonly capacity: number) {
    this.empty = h("p", { class: "note", text: "No trades yet." });
    const head = h("div", { class: "trade head" }, ...["Time (UTC)", "Side", "Price", "Size"].map((t) => h("span", { text: t })));
    this.list = h("div", { class: "scroll tape" });
    this.element = h(
      "section",
      { class: "panel tape-panel", testid: "tape" },
      h("header", {}, h("h2", { text: "Trades" })),
      head,
      this.empty,
      this.list,
    );
  }

  /**
   * Shows `trades` (newest first). New trades become new rows at the top and
   * the oldest rows move out at the bottom, so rows already on screen are
   * neither rewritten nor re-laid out.
   */
  update(trades: readonly TapeTrade[], decimals: number): void {
    this.empty.hidden = trades.length > 0;
    const shown = trades.slice(0, this.capacity);
    const firstShown = this.rows[0]?.trade;
    const fresh = decimals === this.shownDecimals && firstShown ? shown.indexOf(firstShown) : -1;
    this.shownDecimals = decimals;
    if (fresh < 0) {
      this.rows.forEach((row) => row.element.remove());
      this.rows = shown.map((trade) => this.row(trade, decimals));
      this.list.append(...this.rows.map((row) => row.element));
      return;
    }
    const added = shown.slice(0, fresh).map((trade) => this.row(trade, decimals));
    this.list.prepend(...added.map((row) => row.element));
    this.rows = added.concat(this.rows);
    for (const row of this.rows.splice(shown.length)) row.element.remove();
  }

  private row(trade: TapeTrade, decimals: number): TradeRow {
    return new TradeRow(trade, decimals);
  }
}
