// Price axis arithmetic for the chart, in fixed-point bigint units.

/** A round step (1, 2 or 5 × 10^k units) that cuts `span` into about `lines` parts. */
export function gridStep(span: bigint, lines: number): bigint {
  const raw = span / BigInt(Math.max(1, lines));
  let power = 1n;
  while (power * 10n <= raw) power *= 10n;
  for (const factor of [1n, 2n, 5n]) {
    if (power * factor >= raw) return power * factor;
  }
  return power * 10n;
}

/** The largest multiple of `step` not above `value` (floor, also for negative prices). */
export function floorTo(value: bigint, step: bigint): bigint {
  const remainder = ((value % step) + step) % step;
  return value - remainder;
}

/** The smallest multiple of `step` not below `value`. */
export function ceilTo(value: bigint, step: bigint): bigint {
  const floor = floorTo(value, step);
  return floor === value ? value : floor + step;
}

/** Axis bounds on grid lines around [low, high], never empty. */
export function axisBounds(low: bigint, high: bigint, lines: number, minSpan: bigint): { low: bigint; high: bigint; step: bigint } {
  const span = high - low > minSpan ? high - low : minSpan;
  const step = gridStep(span, lines);
  let [bottom, top] = [floorTo(low, step), ceilTo(high, step)];
  if (top === bottom) [bottom, top] = [bottom - step, top + step];
  return { low: bottom, high: top, step };
}
