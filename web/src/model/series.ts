// Price chart view-model: a bounded time series of mid and last-trade prices.
// Prices stay bigint here; the chart converts them to axis numbers relative to
// an origin, so no large float ever stands in for a price.

export interface PricePoint {
  /** Market time: the book's ts_recv, ns since the UNIX epoch. */
  readonly ts: bigint;
  readonly mid: bigint | undefined;
  readonly last: bigint | undefined;
}

export class PriceSeries {
  private items: PricePoint[] = [];
  private head = 0;

  constructor(readonly capacity: number) {}

  /**
   * Appends a point. A point at the newest point's time replaces it; one
   * before it means the replay started over, so the series restarts.
   */
  push(point: PricePoint): void {
    const newest = this.newest;
    if (newest && point.ts === newest.ts) {
      this.items[(this.head + this.items.length - 1) % this.capacity] = point;
      return;
    }
    if (newest && point.ts < newest.ts) this.clear();
    if (this.items.length < this.capacity) {
      this.items.push(point);
    } else {
      this.items[this.head] = point;
      this.head = (this.head + 1) % this.capacity;
    }
  }

  get newest(): PricePoint | undefined {
    return this.items.length ? this.items[(this.head + this.items.length - 1) % this.capacity] : undefined;
  }

  get length(): number {
    return this.items.length;
  }

  /** Oldest first. */
  *points(): IterableIterator<PricePoint> {
    for (let i = 0; i < this.items.length; i++) {
      const point = this.items[(this.head + i) % this.capacity];
      if (point) yield point;
    }
  }

  /** The lowest and highest price of the series, or undefined when it has none. */
  range(): { low: bigint; high: bigint } | undefined {
    let low: bigint | undefined;
    let high: bigint | undefined;
    for (const point of this.points()) {
      for (const price of [point.mid, point.last]) {
        if (price === undefined) continue;
        if (low === undefined || price < low) low = price;
        if (high === undefined || price > high) high = price;
      }
    }
    return low === undefined || high === undefined ? undefined : { low, high };
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }
}
