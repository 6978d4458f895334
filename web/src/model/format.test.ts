import { describe, expect, it } from "vitest";
import { ceilTo, floorTo, axisBounds, gridStep } from "./axis";
import { formatClock, formatMs, formatRate } from "./format";
import { PriceSeries } from "./series";

describe("formatClock", () => {
  it("formats UTC time of day from ns with integer arithmetic", () => {
    // 2025-10-01T14:32:01.123456789Z
    expect(formatClock(1_759_329_121_123_456_789n)).toBe("14:32:01.123");
    expect(formatClock(0n)).toBe("—");
  });
});

describe("formatRate and formatMs", () => {
  it.each([
    [0, "0"],
    [999.6, "1000"],
    [12_345, "12.3k"],
    [498_213, "498.2k"],
    [1_250_000, "1.25M"],
  ])("rate %d is %s", (rate, text) => {
    expect(formatRate(rate)).toBe(text);
  });

  it.each([
    [0.423, "0.42 ms"],
    [3.14, "3.1 ms"],
    [120.4, "120 ms"],
    [undefined, "—"],
  ])("duration %s is %s", (ms, text) => {
    expect(formatMs(ms)).toBe(text);
  });
});

describe("axis", () => {
  it("picks 1-2-5 steps", () => {
    expect(gridStep(100_000_000n, 4)).toBe(50_000_000n);
    expect(gridStep(40_000_000n, 4)).toBe(10_000_000n);
    expect(gridStep(70_000_000n, 4)).toBe(20_000_000n);
  });

  it("floors and ceils negative prices onto the grid", () => {
    expect(floorTo(-15n, 10n)).toBe(-20n);
    expect(ceilTo(-15n, 10n)).toBe(-10n);
    expect(floorTo(15n, 10n)).toBe(10n);
    expect(ceilTo(20n, 10n)).toBe(20n);
  });

  it("never returns an empty axis", () => {
    const bounds = axisBounds(65_400_000_000n, 65_400_000_000n, 4, 10_000_000n);
    expect(bounds.high).toBeGreaterThan(bounds.low);
    expect(bounds.low).toBeLessThanOrEqual(65_400_000_000n);
    expect(bounds.high).toBeGreaterThanOrEqual(65_400_000_000n);
  });
});

describe("PriceSeries", () => {
  it("keeps the newest points, replaces a same-time point and restarts when time goes back", () => {
    const series = new PriceSeries(3);
    for (const ts of [1n, 2n, 3n, 4n]) series.push({ ts, mid: ts, last: undefined });
    expect([...series.points()].map((p) => p.ts)).toEqual([2n, 3n, 4n]);
    series.push({ ts: 4n, mid: 40n, last: undefined });
    expect(series.newest?.mid).toBe(40n);
    expect(series.range()).toEqual({ low: 2n, high: 40n });
    series.push({ ts: 1n, mid: 7n, last: 8n });
    expect(series.length).toBe(1);
  });
});
