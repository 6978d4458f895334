import { describe, expect, it } from "vitest";
import { latencyMs, Percentiles, RateMeter } from "./stats";

describe("RateMeter", () => {
  it("reports events per second over its window", () => {
    const meter = new RateMeter(1000, 100);
    for (let t = 0; t < 1000; t += 10) meter.add(5, t);
    expect(meter.rate(999)).toBeCloseTo(500, 0);
  });

  it("forgets counts older than the window", () => {
    const meter = new RateMeter(1000, 100);
    meter.add(100, 0);
    expect(meter.rate(500)).toBe(100);
    expect(meter.rate(1500)).toBe(0);
    meter.add(10, 1500);
    expect(meter.rate(1550)).toBe(10);
  });
});

describe("Percentiles", () => {
  it("uses the nearest rank", () => {
    const p = new Percentiles(1000);
    for (let i = 1; i <= 100; i++) p.record(i);
    expect(p.percentile(50)).toBe(50);
    expect(p.percentile(99)).toBe(99);
    expect(p.percentile(100)).toBe(100);
    expect(p.percentile(0)).toBe(1);
  });

  it("keeps only the most recent samples", () => {
    const p = new Percentiles(4);
    for (const x of [100, 100, 100, 100, 1, 2, 3, 4]) p.record(x);
    expect(p.percentile(100)).toBe(4);
    expect(p.count).toBe(4);
  });

  it("has no percentile before a sample and ignores non-finite ones", () => {
    const p = new Percentiles();
    p.record(Number.NaN);
    expect(p.percentile(50)).toBeUndefined();
  });
});

describe("latencyMs", () => {
  it("measures from ts_out in ns to now in ns", () => {
    expect(latencyMs(1_700_000_000_000_000_000n, 1_700_000_000_002_500_000n)).toBe(2.5);
  });
});
