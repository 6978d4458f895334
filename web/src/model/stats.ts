// Header statistics: event rates over a sliding window and latency
// percentiles over the most recent samples. Pure: time is passed in.

/** Counts per second over a sliding window, kept in fixed time buckets. */
export class RateMeter {
  private readonly counts: Float64Array;
  private readonly starts: Float64Array;

  constructor(
    readonly windowMs = 2000,
    readonly bucketMs = 100,
  ) {
    const buckets = Math.ceil(windowMs / bucketMs);
    this.counts = new Float64Array(buckets);
    this.starts = new Float64Array(buckets).fill(-Infinity);
  }

  add(count: number, nowMs: number): void {
    const bucketStart = Math.floor(nowMs / this.bucketMs) * this.bucketMs;
    const index = Math.floor(bucketStart / this.bucketMs) % this.counts.length;
    if (this.starts[index] !== bucketStart) {
      this.starts[index] = bucketStart;
      this.counts[index] = 0;
    }
    this.counts[index] = (this.counts[index] ?? 0) + count;
  }

  /** Events per second over the window that ends at `nowMs`. */
  rate(nowMs: number): number {
    let total = 0;
    const oldest = nowMs - this.windowMs;
    for (let i = 0; i < this.counts.length; i++) {
      if ((this.starts[i] ?? -Infinity) > oldest) total += this.counts[i] ?? 0;
    }
    return (total * 1000) / this.windowMs;
  }

  reset(): void {
    this.counts.fill(0);
    this.starts.fill(-Infinity);
  }
}

/** Percentiles over the last `capacity` samples (a ring buffer; sorting happens only on read). */
export class Percentiles {
  private readonly samples: Float64Array;
  private size = 0;
  private next = 0;

  constructor(readonly capacity = 2048) {
    this.samples = new Float64Array(capacity);
  }

  record(value: number): void {
    if (!Number.isFinite(value)) return;
    this.samples[this.next] = value;
    this.next = (this.next + 1) % this.capacity;
    this.size = Math.min(this.size + 1, this.capacity);
  }

  get count(): number {
    return this.size;
  }

  /** The nearest-rank percentile `p` (0–100), or undefined before the first sample. */
  percentile(p: number): number | undefined {
    if (this.size === 0) return undefined;
    const sorted = this.samples.slice(0, this.size).sort();
    const rank = Math.min(this.size - 1, Math.max(0, Math.ceil((p / 100) * this.size) - 1));
    return sorted[rank];
  }

  reset(): void {
    this.size = 0;
    this.next = 0;
  }
}

/** Wall-clock now in ns since the UNIX epoch, at the browser's sub-ms resolution. */
export function nowNs(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;
}

/** Milliseconds from a server timestamp (ns since the epoch) to `now` (ns). */
export function latencyMs(tsOut: bigint, now: bigint): number {
  return Number(now - tsOut) / 1e6;
}
