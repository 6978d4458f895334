import { describe, expect, it } from "vitest";
import { displayDecimals, exactDecimals, formatPrice, formatQuantity, inferTick, parsePrice, UNDEF_PRICE } from "./price";

describe("formatPrice", () => {
  it.each([
    [65_400_000_000n, 2, "65.40"],
    [65_400_000_000n, 0, "65.4"],
    [65_000_000_000n, 0, "65"],
    [1n, 2, "0.000000001"],
    [-1n, 2, "-0.000000001"],
    [-2_500_000_000n, 2, "-2.50"],
    [0n, 2, "0.00"],
    [123_456_789_012_345_678n, 2, "123456789.012345678"],
    [6_500_250_000_000n, 2, "6500.25"],
    [9_223_372_036_854_775_806n, 9, "9223372036.854775806"],
    [UNDEF_PRICE, 2, "—"],
  ])("%s with %i decimals is %s", (price, decimals, text) => {
    expect(formatPrice(price, decimals)).toBe(text);
  });

  it("is exact where a float is not", () => {
    // 0.1 + 0.2 in fixed point: a float sum would print 0.30000000000000004.
    expect(formatPrice(100_000_000n + 200_000_000n, 1)).toBe("0.3");
    // Above 2^53 units a Number cannot hold the price; the string is still exact.
    expect(formatPrice(9_007_199_254_740_993n, 9)).toBe("9007199.254740993");
  });

  it("round-trips through parsePrice for every nanounit step near a price", () => {
    for (let p = 65_399_999_990n; p <= 65_400_000_010n; p++) {
      expect(parsePrice(formatPrice(p, 2))).toBe(p);
    }
  });
});

describe("exactDecimals and displayDecimals", () => {
  it("counts the digits a price needs", () => {
    expect(exactDecimals(65_000_000_000n)).toBe(0);
    expect(exactDecimals(65_400_000_000n)).toBe(1);
    expect(exactDecimals(65_410_000_000n)).toBe(2);
    expect(exactDecimals(-65_412_500_000n)).toBe(4);
  });

  it("lines a column up on its most precise price, at least the minimum", () => {
    expect(displayDecimals([65_400_000_000n, 65_410_000_000n])).toBe(2);
    expect(displayDecimals([6_500_250_000_000n, 6_500_000_000_000n], 0)).toBe(2);
    expect(displayDecimals([1_125_000_000n])).toBe(3);
    expect(displayDecimals([UNDEF_PRICE])).toBe(2);
  });
});

describe("parsePrice", () => {
  it.each([
    ["65.40", 65_400_000_000n],
    ["-0.5", -500_000_000n],
    [".25", 250_000_000n],
    ["7", 7_000_000_000n],
  ])("%s", (text, price) => {
    expect(parsePrice(text)).toBe(price);
  });

  it.each(["", "abc", "1.0000000001", "1e3", "--1"])("rejects %j", (text) => {
    expect(() => parsePrice(text)).toThrow();
  });
});

describe("inferTick", () => {
  it("is the gcd of the level gaps", () => {
    expect(inferTick([65_400_000_000n, 65_410_000_000n, 65_440_000_000n])).toBe(10_000_000n);
    expect(inferTick([6_500_000_000_000n, 6_500_250_000_000n, 6_501_000_000_000n])).toBe(250_000_000n);
  });

  it("is unknown with fewer than two prices", () => {
    expect(inferTick([])).toBeUndefined();
    expect(inferTick([65_400_000_000n])).toBeUndefined();
  });
});

describe("formatQuantity", () => {
  it("groups thousands exactly", () => {
    expect(formatQuantity(0n)).toBe("0");
    expect(formatQuantity(999)).toBe("999");
    expect(formatQuantity(1234567n)).toBe("1\u2009234\u2009567");
    expect(formatQuantity(18_446_744_073_709_551_615n)).toBe("18\u2009446\u2009744\u2009073\u2009709\u2009551\u2009615");
  });
});
