// Mid and last-trade price over market time, drawn on a canvas. Redrawn only
// in frames where the series changed; prices are mapped to pixels relative to
// the visible low, so the axis never rounds a price through a large float.

import type { PriceSeries } from "../model/series";
import { axisBounds } from "../model/axis";
import { formatClock } from "../model/format";
import { formatPrice } from "../model/price";
import { h } from "./dom";

const PAD = { left: 8, right: 72, top: 10, bottom: 20 } as const;
// Without a known tick, a flat series still gets an axis 0.01 wide.
const MIN_SPAN = 10_000_000n;
const COLORS = { grid: "#26303d", label: "#8a97a8", mid: "#5fb3ff", last: "#f5c15c" } as const;

export class ChartView {
  readonly element: HTMLElement;
  private readonly canvas: HTMLCanvasElement;
  private width = 0;
  private height = 0;
  private cssWidth = 0;
  private cssHeight = 0;
  private dirty = true;

  constructor() {
    this.canvas = h("canvas", { testid: "chart" });
    const legend = h(
      "div",
      { class: "legend" },
      h("span", { class: "mid", text: "mid" }),
      h("span", { class: "last", text: "last trade" }),
    );
    this.element = h(
      "section",
      { class: "panel chart-panel" },
      h("header", {}, h("h2", { text: "Price" }), legend),
      h("div", { class: "canvas-wrap" }, this.canvas),
    );
    // The size comes from the observer: reading clientWidth in a frame after
    // DOM writes would force a synchronous layout every frame.
    new ResizeObserver((entries) => {
      const box = entries[entries.length - 1]?.contentRect;
      if (!box) return;
      this.cssWidth = Math.round(box.width);
      this.cssHeight = Math.round(box.height);
      this.dirty = true;
    }).observe(this.canvas);
  }

  /** Draws `series` if it changed (or the canvas was resized) since the last draw. */
  draw(series: PriceSeries, decimals: number, tick: bigint | undefined, changed: boolean): void {
    if (!changed && !this.dirty) return;
    this.dirty = false;
    const context = this.resize();
    if (!context) return;
    context.clearRect(0, 0, this.width, this.height);
    const range = series.range();
    const first = series.points().next().value;
    const newest = series.newest;
    if (!range || !first || !newest) return;
    const { low, high, step } = axisBounds(range.low, range.high, 4, tick ?? MIN_SPAN);
    const plotW = this.width - PAD.left - PAD.right;
    const plotH = this.height - PAD.top - PAD.bottom;
    const yOf = (price: bigint): number => PAD.top + plotH - (Number(price - low) / Number(high - low)) * plotH;
    const timeSpan = Number(newest.ts - first.ts);
    // A series of one instant sits at the right edge, where "now" is.
    const xOf = (ts: bigint): number => PAD.left + (timeSpan ? Number(ts - first.ts) / timeSpan : 1) * plotW;

    context.font = "11px ui-monospace, SFMono-Regular, Menlo, monospace";
    context.lineWidth = 1;
    context.strokeStyle = COLORS.grid;
    context.fillStyle = COLORS.label;
    context.textBaseline = "middle";
    for (let price = low; price <= high; price += step) {
      const y = Math.round(yOf(price)) + 0.5;
      context.beginPath();
      context.moveTo(PAD.left, y);
      context.lineTo(PAD.left + plotW, y);
      context.stroke();
      context.fillText(formatPrice(price, decimals), PAD.left + plotW + 6, y);
    }
    context.textBaseline = "alphabetic";
    context.fillText(formatClock(first.ts), PAD.left, this.height - 5);
    const endLabel = formatClock(newest.ts);
    context.fillText(endLabel, PAD.left + plotW - context.measureText(endLabel).width, this.height - 5);

    context.lineWidth = 1.5;
    context.strokeStyle = COLORS.mid;
    context.beginPath();
    let drawing = false;
    for (const point of series.points()) {
      if (point.mid === undefined) {
        drawing = false;
        continue;
      }
      const [x, y] = [xOf(point.ts), yOf(point.mid)];
      if (drawing) context.lineTo(x, y);
      else context.moveTo(x, y);
      drawing = true;
    }
    context.stroke();

    context.strokeStyle = COLORS.last;
    context.lineWidth = 1;
    context.beginPath();
    let previousY: number | undefined;
    for (const point of series.points()) {
      if (point.last === undefined) continue;
      const [x, y] = [xOf(point.ts), yOf(point.last)];
      if (previousY === undefined) context.moveTo(x, y);
      else {
        context.lineTo(x, previousY);
        context.lineTo(x, y);
      }
      previousY = y;
    }
    context.stroke();
    if (newest.mid !== undefined) this.marker(context, xOf(newest.ts), yOf(newest.mid), COLORS.mid);
    if (newest.last !== undefined) this.marker(context, xOf(newest.ts), yOf(newest.last), COLORS.last);
  }

  /** A dot on the newest value, so even a one-point series (a finished replay) shows. */
  private marker(context: CanvasRenderingContext2D, x: number, y: number, color: string): void {
    context.fillStyle = color;
    context.beginPath();
    context.arc(x, y, 3, 0, 2 * Math.PI);
    context.fill();
  }

  private resize(): CanvasRenderingContext2D | null {
    const ratio = window.devicePixelRatio || 1;
    if (this.cssWidth === 0 || this.cssHeight === 0) return null;
    if (this.width !== this.cssWidth || this.height !== this.cssHeight) {
      this.width = this.cssWidth;
      this.height = this.cssHeight;
      this.canvas.width = Math.round(this.width * ratio);
      this.canvas.height = Math.round(this.height * ratio);
    }
    const context = this.canvas.getContext("2d");
    context?.setTransform(ratio, 0, 0, ratio, 0, 0);
    return context;
  }
}
