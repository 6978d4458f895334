// Display formatting of rates, durations and timestamps (prices are in price.ts).

/** 498_213 → "498.2k"; 1_250_000 → "1.25M"; 12.4 → "12". */
export function formatRate(perSecond: number): string {
  if (!Number.isFinite(perSecond) || perSecond < 0) return "—";
  if (perSecond >= 1e6) return `${(perSecond / 1e6).toFixed(2)}M`;
  if (perSecond >= 1e4) return `${(perSecond / 1e3).toFixed(1)}k`;
  return Math.round(perSecond).toString();
}

/** Milliseconds with a precision that suits their size: "0.42 ms", "3.1 ms", "120 ms". */
export function formatMs(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms)) return "—";
  if (Math.abs(ms) < 1) return `${ms.toFixed(2)} ms`;
  if (Math.abs(ms) < 100) return `${ms.toFixed(1)} ms`;
  return `${Math.round(ms)} ms`;
}

const pad = (n: bigint, width: number): string => n.toString().padStart(width, "0");

/** ns since the UNIX epoch → "HH:MM:SS.mmm" (UTC), with integer arithmetic; 0 → "—". */
export function formatClock(ns: bigint): string {
  if (ns <= 0n) return "—";
  const ms = ns / 1_000_000n;
  const dayMs = ms % 86_400_000n;
  const hours = dayMs / 3_600_000n;
  const minutes = (dayMs / 60_000n) % 60n;
  const seconds = (dayMs / 1000n) % 60n;
  return `${pad(hours, 2)}:${pad(minutes, 2)}:${pad(seconds, 2)}.${pad(dayMs % 1000n, 3)}`;
}

/** ns since the UNIX epoch → "YYYY-MM-DD" (UTC); 0 → "". */
export function formatDate(ns: bigint): string {
  if (ns <= 0n) return "";
  return new Date(Number(ns / 1_000_000n)).toISOString().slice(0, 10);
}
