// Error and notice toasts: deduplicated by text, dismissed after a while or on click.

import { h, setText } from "./dom";

export type ToastKind = "error" | "info";

const SHOW_MS = { error: 8000, info: 4000 } as const;

export class Toasts {
  readonly element = h("div", { class: "toasts", attrs: { role: "status", "aria-live": "polite" } });
  private readonly open = new Map<string, { element: HTMLElement; count: number; timer: number }>();

  show(kind: ToastKind, text: string): void {
    const key = `${kind}:${text}`;
    const existing = this.open.get(key);
    if (existing) {
      existing.count += 1;
      window.clearTimeout(existing.timer);
      existing.timer = window.setTimeout(() => this.dismiss(key), SHOW_MS[kind]);
      setText(existing.element.querySelector(".count") as HTMLElement, `×${existing.count}`);
      return;
    }
    const element = h(
      "div",
      { class: `toast ${kind}`, testid: "toast", attrs: { "data-kind": kind } },
      h("span", { class: "text", text }),
      h("span", { class: "count" }),
    );
    element.addEventListener("click", () => this.dismiss(key));
    this.element.append(element);
    this.open.set(key, { element, count: 1, timer: window.setTimeout(() => this.dismiss(key), SHOW_MS[kind]) });
  }

  private dismiss(key: string): void {
    const toast = this.open.get(key);
    if (!toast) return;
    window.clearTimeout(toast.timer);
    toast.element.remove();
    this.open.delete(key);
  }
}
