// The header: the selected book's identity, the feed and rendering statistics,
// and the connection state.

import type { LinkState } from "../net/resilient";
import { h, setData, setText } from "./dom";

export interface HeaderModel {
  readonly title: string;
  readonly subtitle: string;
  readonly stats: readonly { readonly label: string; readonly value: string; readonly testid: string; readonly title: string }[];
  readonly link: LinkState | undefined;
  /** Live connections lost since this book was opened. */
  readonly losses: number;
  readonly nowMs: number;
}

export function describeLink(link: LinkState | undefined, nowMs: number): { state: string; text: string } {
  switch (link?.kind) {
    case "live":
      return { state: "live", text: "LIVE" };
    case "connecting":
      return { state: "connecting", text: link.attempt ? `RECONNECTING (attempt ${link.attempt + 1})` : "CONNECTING" };
    case "waiting":
      return {
        state: "reconnecting",
        text: `RECONNECTING in ${Math.max(0, (link.retryAtMs - nowMs) / 1000).toFixed(1)} s (attempt ${link.attempt})`,
      };
    case "stopped":
      return { state: "offline", text: "OFFLINE" };
    default:
      return { state: "idle", text: "NO INSTRUMENT" };
  }
}

export class HeaderView {
  readonly element: HTMLElement;
  private readonly title: HTMLElement;
  private readonly subtitle: HTMLElement;
  private readonly stats: HTMLElement;
  private readonly link: HTMLElement;

  constructor() {
    this.title = h("span", { class: "title", testid: "book-title" });
    this.subtitle = h("span", { class: "subtitle", testid: "book-subtitle" });
    this.stats = h("dl", { class: "stats", testid: "stats" });
    this.link = h("span", { class: "link", testid: "connection", attrs: { "aria-live": "polite" } });
    this.element = h(
      "header",
      { class: "top" },
      h("span", { class: "brand", text: "mbostream" }),
      h("div", { class: "book-id" }, this.title, this.subtitle),
      this.stats,
      this.link,
    );
  }

  update(model: HeaderModel): void {
    setText(this.title, model.title);
    setText(this.subtitle, model.subtitle);
    while (this.stats.children.length < model.stats.length * 2) {
      this.stats.append(h("dt"), h("dd"));
    }
    model.stats.forEach((stat, i) => {
      const dt = this.stats.children[i * 2] as HTMLElement;
      const dd = this.stats.children[i * 2 + 1] as HTMLElement;
      setText(dt, stat.label);
      setText(dd, stat.value);
      dt.title = stat.title;
      dd.dataset.testid = stat.testid;
    });
    const link = describeLink(model.link, model.nowMs);
    setData(this.link, "state", link.state);
    setData(this.link, "losses", String(model.losses));
    setText(this.link, link.text);
    const title = model.losses
      ? `The connection to the server was lost ${model.losses === 1 ? "once" : `${model.losses} times`} since this book was opened`
      : "";
    if (this.link.title !== title) this.link.title = title;
  }
}
