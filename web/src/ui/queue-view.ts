// The L3 queue of the selected level: its orders in priority order, with the
// size resting ahead of each one.

import type { QueueRow } from "../model/ladder";
import { formatPrice, formatQuantity } from "../model/price";
import { h, setBar, setText, TextSlot } from "./dom";
import type { LevelSelection } from "./ladder-view";

const MAX_ROWS = 200;
const HINT = "Click a price level to see its orders in priority order.";

export interface QueueModel {
  readonly selection: LevelSelection;
  readonly decimals: number;
  /** undefined while the first book with orders is on its way. */
  readonly rows: readonly QueueRow[] | undefined;
  /** False when the level is no longer in the book (filled, cancelled or beyond the depth shown). */
  readonly present: boolean;
  readonly sequence: number;
}

class OrderRow {
  readonly element: HTMLElement;
  private readonly slots: TextSlot[];
  private readonly bar: HTMLElement;

  constructor() {
    const cells = ["pos", "oid", "qty", "ahead"].map((kind) => h("span", { class: kind }));
    this.slots = cells.map((cell) => new TextSlot(cell));
    this.bar = h("i", { class: "bar" });
    this.element = h("div", { class: "order", testid: "queue-order" }, ...cells, h("span", { class: "share" }, this.bar));
  }

  update(row: QueueRow): void {
    this.element.dataset.orderId = row.orderId.toString();
    this.element.dataset.size = row.size.toString();
    const [pos, oid, qty, ahead] = this.slots;
    pos?.set(row.position.toString());
    oid?.set(row.orderId.toString());
    qty?.set(formatQuantity(row.size));
    ahead?.set(formatQuantity(row.ahead));
    setBar(this.bar, row.share);
  }
}

export class QueueView {
  readonly element: HTMLElement;
  private readonly title: HTMLElement;
  private readonly note: HTMLElement;
  private readonly list: HTMLElement;
  private readonly rows: OrderRow[] = [];

  constructor(onClose: () => void) {
    this.title = h("h2", { text: "L3 queue" });
    const close = h("button", { class: "close", text: "×", title: "Close the queue", testid: "queue-close" });
    close.addEventListener("click", onClose);
    this.note = h("p", { class: "note", text: HINT });
    this.list = h("div", { class: "scroll queue", testid: "queue" });
    const head = h("div", { class: "order head" }, ...["#", "Order id", "Size", "Ahead", "Share"].map((t) => h("span", { text: t })));
    this.element = h(
      "section",
      { class: "panel queue-panel", testid: "queue-panel", attrs: { "data-open": "false" } },
      h("header", {}, this.title, close),
      this.note,
      head,
      this.list,
    );
  }

  update(model: QueueModel | undefined): void {
    this.element.dataset.open = model ? "true" : "false";
    if (!model) {
      setText(this.title, "L3 queue");
      setText(this.note, HINT);
      this.show([]);
      return;
    }
    const { selection, rows } = model;
    const side = selection.side === "bid" ? "Bid" : "Ask";
    setText(this.title, `${side} ${formatPrice(selection.price, model.decimals)}`);
    if (rows === undefined) {
      setText(this.note, "Loading orders…");
    } else if (!model.present) {
      setText(this.note, `Level no longer in the book (venue seq ${model.sequence}).`);
    } else {
      const total = rows.reduce((sum, row) => sum + BigInt(row.size), 0n);
      setText(this.note, `${rows.length} orders · ${formatQuantity(total)} lots · venue seq ${model.sequence}`);
    }
    this.show(model.present && rows ? rows.slice(0, MAX_ROWS) : []);
  }

  private show(rows: readonly QueueRow[]): void {
    while (this.rows.length < rows.length) {
      const row = new OrderRow();
      this.rows.push(row);
      this.list.append(row.element);
    }
    while (this.rows.length > rows.length) this.rows.pop()?.element.remove();
    rows.forEach((row, i) => this.rows[i]?.update(row));
  }
}
