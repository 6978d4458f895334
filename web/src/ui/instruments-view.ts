// The instrument picker: every book the server has, with its symbol and state.

import type { InstrumentInfo } from "../gen/mbostream/v1/market_data_pb";
import { formatQuantity } from "../model/price";
import { h, setClass, setData, setText } from "./dom";

/** The key of one book: instrument and publisher, as the server keeps them. */
export const instrumentKey = (info: { instrumentId: number; publisherId: number }): string =>
  `${info.instrumentId}:${info.publisherId}`;

export function instrumentStatus(info: InstrumentInfo): "crossed" | "locked" | "empty" | "ok" {
  if (info.crossed) return "crossed";
  if (info.locked) return "locked";
  if (info.orderCount === 0n) return "empty";
  return "ok";
}

export class InstrumentsView {
  readonly element: HTMLElement;
  private readonly list: HTMLElement;
  private readonly note: HTMLElement;
  private readonly items = new Map<string, HTMLButtonElement>();

  constructor(private readonly onSelect: (key: string) => void) {
    this.list = h("div", { class: "instrument-list", testid: "instruments", attrs: { role: "listbox" } });
    this.note = h("p", { class: "note", text: "Waiting for the server…" });
    this.element = h("section", { class: "panel instruments-panel" }, h("header", {}, h("h2", { text: "Instruments" })), this.note, this.list);
  }

  update(instruments: readonly InstrumentInfo[], selected: string | undefined, loaded: boolean): void {
    this.note.hidden = instruments.length > 0;
    setText(this.note, loaded ? "The server has no books yet." : "Waiting for the server…");
    const seen = new Set<string>();
    for (const info of instruments) {
      const key = instrumentKey(info);
      seen.add(key);
      let item = this.items.get(key);
      if (!item) {
        item = h(
          "button",
          { class: "instrument", testid: "instrument", attrs: { "data-key": key, role: "option" } },
          h("span", { class: "symbol" }),
          h("span", { class: "status" }),
          h("span", { class: "detail" }),
        );
        item.addEventListener("click", () => this.onSelect(key));
        this.items.set(key, item);
      }
      this.list.append(item); // keeps the server's order
      const [symbol, status, detail] = Array.from(item.children) as HTMLElement[];
      const state = instrumentStatus(info);
      setData(item, "symbol", info.symbol);
      setData(item, "status", state);
      item.setAttribute("aria-selected", String(key === selected));
      setClass(item, "selected", key === selected);
      if (symbol) setText(symbol, info.symbol || `#${info.instrumentId}`);
      if (status) setText(status, state === "ok" ? "" : state.toUpperCase());
      if (detail) setText(detail, `${info.dataset || "pub " + info.publisherId} · ${formatQuantity(info.orderCount)} orders`);
    }
    for (const [key, item] of this.items) {
      if (!seen.has(key)) {
        item.remove();
        this.items.delete(key);
      }
    }
  }
}
