// The depth ladder: asks above bids around a central price column, with size
// and cumulative-depth bars, best levels and the spread highlighted, and a
// banner when the book is crossed or locked.
//
// Rows are fixed-height grid rows created once, each a containment root
// (`contain: strict`), so a changed number relayouts one row, not the ladder;
// each row remembers what it shows and touches the DOM only for what changed.

import type { BookSide, Ladder, LadderRow } from "../model/ladder";
import { formatPrice, formatQuantity } from "../model/price";
import { h, setBar, setClass, setData, setText, TextSlot } from "./dom";

interface BarCell {
  readonly text: TextSlot;
  readonly bar: HTMLElement;
}

function barCell(kind: string): { cell: HTMLElement; slots: BarCell } {
  const bar = h("i", { class: "bar" });
  const value = h("b", { class: "v" });
  return { cell: h("span", { class: kind }, bar, value), slots: { text: new TextSlot(value), bar } };
}

/** One ladder row; `side` fixes which half of the row carries the level. */
class RowView {
  readonly element: HTMLElement;
  private readonly size: BarCell;
  private readonly cumulative: BarCell;
  private readonly count: TextSlot;
  private readonly price: TextSlot;
  private shown: LadderRow | undefined;
  private shownDecimals = -1;

  constructor(readonly side: BookSide) {
    const size = barCell("size");
    const cumulative = barCell("cum");
    const count = h("span", { class: "count" });
    const price = h("span", { class: "price" });
    this.size = size.slots;
    this.cumulative = cumulative.slots;
    this.count = new TextSlot(count);
    this.price = new TextSlot(price);
    const blank = (): HTMLElement => h("span", { class: "blank" });
    const cells =
      side === "bid"
        ? [cumulative.cell, count, size.cell, price, blank(), blank(), blank()]
        : [blank(), blank(), blank(), price, size.cell, count, cumulative.cell];
    this.element = h("div", { class: `level ${side} empty`, testid: "level", attrs: { "data-side": side } }, ...cells);
  }

  update(row: LadderRow | undefined, decimals: number, selected: boolean): void {
    const previous = this.shown;
    const decimalsChanged = decimals !== this.shownDecimals;
    this.shown = row;
    this.shownDecimals = decimals;
    setClass(this.element, "selected", selected);
    setClass(this.element, "empty", row === undefined);
    if (row === undefined) {
      if (previous === undefined) return;
      setData(this.element, "price", "");
      for (const slot of [this.size.text, this.cumulative.text, this.count, this.price]) slot.set("");
      setBar(this.size.bar, 0);
      setBar(this.cumulative.bar, 0);
      setClass(this.element, "best", false);
      return;
    }
    if (row.price !== previous?.price || decimalsChanged) {
      setData(this.element, "price", row.price.toString());
      this.price.set(formatPrice(row.price, decimals));
    }
    if (row.size !== previous?.size) {
      setData(this.element, "size", row.size.toString());
      this.size.text.set(formatQuantity(row.size));
    }
    if (row.count !== previous?.count) {
      setData(this.element, "count", row.count.toString());
      this.count.set(formatQuantity(row.count));
    }
    if (row.cumulative !== previous?.cumulative) this.cumulative.text.set(formatQuantity(row.cumulative));
    if (row.sizeFraction !== previous?.sizeFraction) setBar(this.size.bar, row.sizeFraction);
    if (row.depthFraction !== previous?.depthFraction) setBar(this.cumulative.bar, row.depthFraction);
    if (row.best !== previous?.best) setClass(this.element, "best", row.best);
  }
}

export interface LevelSelection {
  readonly side: BookSide;
  readonly price: bigint;
}

const STATE_TEXT: Record<Ladder["state"], string> = {
  "two-sided": "",
  locked: "LOCKED: best bid equals best ask",
  crossed: "CROSSED: best bid above best ask",
  "one-sided": "ONE-SIDED: only one side has orders",
  empty: "EMPTY BOOK",
};

const COLUMNS = ["Cum", "Orders", "Bid size", "Price", "Ask size", "Orders", "Cum"];

export class LadderView {
  readonly element: HTMLElement;
  private readonly asks: RowView[];
  private readonly bids: RowView[];
  private readonly banner: HTMLElement;
  private readonly spread: HTMLElement;
  private readonly spreadText: TextSlot;

  constructor(
    readonly depth: number,
    onSelect: (selection: LevelSelection) => void,
  ) {
    this.asks = Array.from({ length: depth }, () => new RowView("ask"));
    this.bids = Array.from({ length: depth }, () => new RowView("bid"));
    this.banner = h("div", { class: "book-state", testid: "book-state", attrs: { "data-state": "empty" } });
    this.spread = h("div", { class: "spread", testid: "spread" });
    this.spreadText = new TextSlot(this.spread);
    const ladder = h(
      "div",
      { class: "ladder", testid: "ladder", attrs: { role: "grid" } },
      h("div", { class: "level head" }, ...COLUMNS.map((t) => h("span", { text: t }))),
      ...this.asks.map((r) => r.element),
      this.spread,
      ...this.bids.map((r) => r.element),
    );
    ladder.addEventListener("click", (event) => {
      const row = (event.target as HTMLElement).closest<HTMLElement>(".level");
      const price = row?.dataset.price;
      const side = row?.dataset.side;
      if (price && (side === "bid" || side === "ask")) onSelect({ side, price: BigInt(price) });
    });
    this.element = h("div", { class: "ladder-wrap" }, this.banner, ladder);
  }

  update(ladder: Ladder | undefined, selection: LevelSelection | undefined, crossedSince: string): void {
    const state = ladder?.state ?? "empty";
    setData(this.banner, "state", state);
    const flagged = state === "crossed" || state === "locked";
    setText(this.banner, flagged && crossedSince ? `${STATE_TEXT[state]} since ${crossedSince}` : STATE_TEXT[state]);
    const decimals = ladder?.decimals ?? 2;
    const isSelected = (row: LadderRow | undefined): boolean =>
      row !== undefined && selection !== undefined && row.side === selection.side && row.price === selection.price;
    // Asks fill from the bottom up so the best ask always sits on the spread row.
    const askOffset = this.depth - (ladder?.asks.length ?? 0);
    this.asks.forEach((view, i) => {
      const row = ladder?.asks[i - askOffset];
      view.update(row, decimals, isSelected(row));
    });
    this.bids.forEach((view, i) => {
      const row = ladder?.bids[i];
      view.update(row, decimals, isSelected(row));
    });
    this.spreadText.set(spreadText(ladder));
    setData(this.spread, "state", state);
  }
}

function spreadText(ladder: Ladder | undefined): string {
  if (!ladder || ladder.spread === undefined) return "no spread: a side is empty";
  const plural = ladder.spreadTicks === 1n || ladder.spreadTicks === -1n ? "" : "s";
  const ticks = ladder.spreadTicks !== undefined ? ` (${ladder.spreadTicks} tick${plural})` : "";
  const mid = ladder.mid !== undefined ? ` · mid ${formatPrice(ladder.mid, ladder.decimals)}` : "";
  return `spread ${formatPrice(ladder.spread, ladder.decimals)}${ticks}${mid}`;
}
