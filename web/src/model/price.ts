// Prices: int64 fixed point in units of 1e-9 (bigint) from the wire to the
// screen. Decimal strings are made here, with integer arithmetic only, so no
// float ever rounds a price.

/** 1.0 in the wire's fixed-point units. */
export const PRICE_SCALE = 1_000_000_000n;
/** Digits after the decimal point in the wire's fixed-point units. */
export const PRICE_DECIMALS = 9;
/** DBN's UNDEF_PRICE (INT64_MAX): the record carries no price. */
export const UNDEF_PRICE = 9_223_372_036_854_775_807n;

const abs = (value: bigint): bigint => (value < 0n ? -value : value);

/** The fewest decimals (0–9) that show `price` exactly. */
export function exactDecimals(price: bigint): number {
  let frac = abs(price) % PRICE_SCALE;
  if (frac === 0n) return 0;
  let decimals = PRICE_DECIMALS;
  while (frac % 10n === 0n) {
    frac /= 10n;
    decimals -= 1;
  }
  return decimals;
}

/**
 * The decimals to show a column of prices with: enough for every price to be
 * exact, and at least `min`, so a ladder's prices line up.
 */
export function displayDecimals(prices: Iterable<bigint>, min = 2): number {
  let decimals = min;
  for (const price of prices) {
    if (price !== UNDEF_PRICE) decimals = Math.max(decimals, exactDecimals(price));
  }
  return Math.min(decimals, PRICE_DECIMALS);
}

/**
 * Formats a 1e-9 fixed-point price as a decimal string with at least
 * `decimals` digits after the point, more if that is what it takes to be
 * exact: 65_400_000_000n → "65.40" with 2 decimals. UNDEF_PRICE → "—".
 */
export function formatPrice(price: bigint, decimals = 2): string {
  if (price === UNDEF_PRICE) return "—";
  const shown = Math.max(Math.min(decimals, PRICE_DECIMALS), exactDecimals(price));
  const magnitude = abs(price);
  const whole = magnitude / PRICE_SCALE;
  const frac = (magnitude % PRICE_SCALE).toString().padStart(PRICE_DECIMALS, "0").slice(0, shown);
  const sign = price < 0n ? "-" : "";
  return shown === 0 ? `${sign}${whole}` : `${sign}${whole}.${frac}`;
}

/** Parses a decimal string into a 1e-9 fixed-point price, exactly; throws on anything else. */
export function parsePrice(text: string): bigint {
  const match = /^([+-]?)(\d*)(?:\.(\d*))?$/.exec(text.trim());
  const [, sign = "", whole = "", frac = ""] = match ?? [];
  if (!match || (whole === "" && frac === "")) throw new Error(`not a decimal price: ${JSON.stringify(text)}`);
  if (frac.length > PRICE_DECIMALS) throw new Error(`more than ${PRICE_DECIMALS} decimals: ${JSON.stringify(text)}`);
  const value = BigInt(whole || "0") * PRICE_SCALE + BigInt(frac.padEnd(PRICE_DECIMALS, "0"));
  return sign === "-" ? -value : value;
}

function gcd(a: bigint, b: bigint): bigint {
  let [x, y] = [abs(a), abs(b)];
  while (y !== 0n) [x, y] = [y, x % y];
  return x;
}

/**
 * The price increment the given prices are all multiples of apart: the
 * greatest common divisor of their differences, or undefined with fewer than
 * two distinct prices. A ladder's levels give the instrument's tick size.
 */
export function inferTick(prices: readonly bigint[]): bigint | undefined {
  let tick = 0n;
  for (let i = 1; i < prices.length; i++) {
    const [previous, current] = [prices[i - 1], prices[i]];
    if (previous !== undefined && current !== undefined) tick = gcd(tick, current - previous);
  }
  return tick === 0n ? undefined : tick;
}

/** A price on the chart's axis: a plain number of fixed-point units relative to `origin`, exact below 2^53. */
export function toAxis(price: bigint, origin: bigint): number {
  return Number(price - origin);
}

/** Formats a size or count with thin-space thousands separators (exact for bigint). */
export function formatQuantity(value: bigint | number): string {
  const digits = (typeof value === "bigint" ? value : BigInt(Math.trunc(value))).toString();
  const negative = digits.startsWith("-");
  const body = negative ? digits.slice(1) : digits;
  const grouped = body.replace(/\B(?=(\d{3})+(?!\d))/g, "\u2009");
  return negative ? `-${grouped}` : grouped;
}
