// @ts-check
// End-to-end browser driver: Debian's Chromium, headless, driven by
// playwright-core against the real UI behind the real Envoy and server.
//
//   node e2e/driver.mjs --url http://127.0.0.1:8080 --token T --screenshot out.png [--controlled]
//   node e2e/driver.mjs --url … --scenario ladder        # only: load, read the ladder, screenshot
//   node e2e/driver.mjs --url …/#token=T --scenario launch-token   # the token handed over in the URL
//   node e2e/driver.mjs --url … --scenario bench          # frame times (for `mbostream bench web`)
//
// The trader scenario walks through what a trader does (pick, read the ladder,
// open a queue, pause/resume with and without the token, push the feed to a
// high rate and open a queue there). With --controlled it also asks its caller
// (the pytest in tests/test_web_e2e.py) to act outside the browser: it prints
// `EVENT {"name": ...}` lines and waits for one `ACK {...}` line on stdin per
// event: "paused" (compare the ladder with GetBook), "restart-server". The
// bench scenario measures frame times over a window it announces with
// "window" events (phase "start", then "end"), so its caller can measure the
// processes over the same window. The last line it prints is `RESULT {...}`,
// a JSON report; it exits 1 if a step failed (the report says which).

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    token: { type: "string", default: "" },
    screenshot: { type: "string", default: "" },
    chromium: { type: "string", default: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium" },
    controlled: { type: "boolean", default: false },
    scenario: { type: "string", default: "trader" },
    "high-rate": { type: "string", default: "500000" },
    "frame-seconds": { type: "string", default: "10" },
    "warmup-seconds": { type: "string", default: "3" },
    depth: { type: "string", default: "15" },
    "step-timeout-ms": { type: "string", default: "20000" },
  },
});
if (!args.url) throw new Error("--url is required");
const STEP_TIMEOUT_MS = Number(args["step-timeout-ms"]);
const DEPTH = Number(args.depth);
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** @typedef {{ side: string, price: string, size: string, count: string }} LevelRow */
/** @typedef {{ instrumentId: string, publisherId: string, sequence: string, replaySequence: string, state: string, asks: LevelRow[], bids: LevelRow[] }} LadderScrape */

/** @type {Record<string, unknown>} */
const report = { url: args.url, steps: {}, consoleErrors: [], pageErrors: [] };
const steps = /** @type {Record<string, unknown>} */ (report.steps);

const stdinLines = createInterface({ input: process.stdin });
/** @type {string[]} */
const pendingLines = [];
/** @type {((line: string) => void) | undefined} */
let lineWaiter;
stdinLines.on("line", (line) => {
  if (lineWaiter) {
    const waiter = lineWaiter;
    lineWaiter = undefined;
    waiter(line);
  } else pendingLines.push(line);
});

/**
 * Asks the controller to act and waits for its ACK.
 * @param {string} name
 * @param {Record<string, unknown>} data
 * @param {number} timeoutMs
 * @returns {Promise<Record<string, unknown>>}
 */
async function control(name, data = {}, timeoutMs = 60_000) {
  process.stdout.write(`EVENT ${JSON.stringify({ name, ...data })}\n`);
  const line = await new Promise((resolve, reject) => {
    const queued = pendingLines.shift();
    if (queued !== undefined) return resolve(queued);
    const timer = setTimeout(() => reject(new Error(`no ACK for ${name} within ${timeoutMs} ms`)), timeoutMs);
    lineWaiter = (l) => {
      clearTimeout(timer);
      resolve(l);
    };
  });
  if (!line.startsWith("ACK ")) throw new Error(`expected ACK for ${name}, got ${line}`);
  return JSON.parse(line.slice(4));
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs one named step, recording its duration and outcome; a failure is recorded and rethrown.
 * @template T
 * @param {string} name
 * @param {() => Promise<T>} body
 * @returns {Promise<T>}
 */
async function step(name, body) {
  const started = Date.now();
  try {
    const value = await body();
    steps[name] = { ok: true, ms: Date.now() - started, ...(value && typeof value === "object" ? { value } : {}) };
    return value;
  } catch (error) {
    steps[name] = { ok: false, ms: Date.now() - started, error: String(error instanceof Error ? error.stack : error) };
    throw error;
  }
}

/**
 * The ladder as rendered: identity attributes and every filled row.
 * @param {import("playwright-core").Page} page
 * @returns {Promise<LadderScrape>}
 */
function scrapeLadder(page) {
  return page.evaluate(() => {
    const wrap = /** @type {HTMLElement} */ (document.querySelector(".ladder-wrap"));
    /** @param {string} side */
    const rows = (side) =>
      Array.from(document.querySelectorAll(`[data-testid="level"].${side}:not(.empty)`)).map((tr) => {
        const data = /** @type {HTMLElement} */ (tr).dataset;
        return { side, price: data.price ?? "", size: data.size ?? "", count: data.count ?? "" };
      });
    return {
      instrumentId: wrap.dataset.instrumentId ?? "",
      publisherId: wrap.dataset.publisherId ?? "",
      sequence: wrap.dataset.sequence ?? "",
      replaySequence: wrap.dataset.replaySequence ?? "",
      state: wrap.dataset.state ?? "",
      asks: rows("ask"),
      bids: rows("bid"),
    };
  });
}

/**
 * Waits until the rendered book's replay sequence stops moving for `quietMs`.
 * @param {import("playwright-core").Page} page
 * @param {number} quietMs
 */
async function waitLadderStable(page, quietMs) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  let last = "";
  let since = Date.now();
  while (Date.now() < deadline) {
    const now = (await scrapeLadder(page)).replaySequence;
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) return last;
    await sleep(100);
  }
  throw new Error(`the ladder kept changing for ${STEP_TIMEOUT_MS} ms`);
}

/**
 * Measures frame intervals (requestAnimationFrame) and long tasks for `seconds`.
 * @param {import("playwright-core").Page} page
 * @param {number} seconds
 */
function measureFrames(page, seconds) {
  return page.evaluate(async (durationMs) => {
    /** @type {number[]} */
    const intervals = [];
    let longTaskMs = 0;
    let longTasks = 0;
    const observer = new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        longTasks += 1;
        longTaskMs += entry.duration;
      }
    });
    try {
      observer.observe({ type: "longtask", buffered: false });
    } catch {
      // Long task timing is not in every browser; frame intervals still tell.
    }
    await new Promise((resolve) => {
      const start = performance.now();
      let previous = start;
      /** @param {number} now */
      const tick = (now) => {
        intervals.push(now - previous);
        previous = now;
        if (now - start < durationMs) requestAnimationFrame(tick);
        else resolve(undefined);
      };
      requestAnimationFrame((now) => {
        previous = now;
        requestAnimationFrame(tick);
      });
    });
    observer.disconnect();
    const sorted = [...intervals].sort((a, b) => a - b);
    /** @param {number} p */
    const pct = (p) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? NaN;
    const round = (/** @type {number} */ x) => Math.round(x * 100) / 100;
    return {
      seconds: durationMs / 1000,
      frames: intervals.length,
      fps: round(intervals.length / (durationMs / 1000)),
      p50Ms: round(pct(50)),
      p95Ms: round(pct(95)),
      p99Ms: round(pct(99)),
      maxMs: round(sorted[sorted.length - 1] ?? NaN),
      over50Ms: intervals.filter((x) => x > 50).length,
      longTasks,
      longTaskMs: round(longTaskMs),
    };
  }, seconds * 1000);
}

/**
 * The header's statistics as shown.
 * @param {import("playwright-core").Page} page
 */
function headerStats(page) {
  return page.evaluate(() =>
    Object.fromEntries(
      Array.from(document.querySelectorAll(".stats dd")).map((dd) => [
        /** @type {HTMLElement} */ (dd).dataset.testid ?? "",
        dd.textContent ?? "",
      ]),
    ),
  );
}

/**
 * Clicks an operator button and waits for the outcome message.
 * @param {import("playwright-core").Page} page
 * @param {string} testid
 * @param {string} expect
 */
async function operate(page, testid, expect) {
  const message = page.getByTestId("op-message");
  await page.getByTestId(testid).click();
  await page.waitForFunction(
    ([want]) => (document.querySelector('[data-testid="op-message"]')?.textContent ?? "").includes(want ?? ""),
    [expect],
    { timeout: STEP_TIMEOUT_MS },
  );
  return { message: await message.textContent(), failed: await message.getAttribute("data-failed") };
}

/**
 * Saves a screenshot of the page as a person sees it once the feed has run a moment
 * (toasts, e.g. the deliberate failed pause, are dismissed first).
 * @param {import("playwright-core").Page} page
 * @param {string} path
 */
async function screenshot(page, path) {
  await sleep(1500);
  // In one go inside the page: a toast may expire between being listed and being clicked.
  await page.evaluate(() => document.querySelectorAll('[data-testid="toast"]').forEach((toast) => /** @type {HTMLElement} */ (toast).click()));
  await page.screenshot({ path, fullPage: false });
  return { path };
}

async function main() {
  const profile = mkdtempSync(join(tmpdir(), "mbostream-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1440, height: 900 },
    deviceScaleFactor: 1,
  });
  let failed = false;
  try {
    await run(context);
  } catch {
    failed = true;
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    stdinLines.close();
  }
  if (/** @type {string[]} */ (report.pageErrors).length) failed = true;
  report.ok = !failed;
  process.stdout.write(`RESULT ${JSON.stringify(report)}\n`);
  process.exitCode = failed ? 1 : 0;
}

/**
 * The trader's walk through the page; each step records itself in the report.
 * @param {import("playwright-core").BrowserContext} context
 */
async function run(context) {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.on("console", (message) => {
    if (message.type() === "error") /** @type {string[]} */ (report.consoleErrors).push(message.text());
  });
  page.on("pageerror", (error) => /** @type {string[]} */ (report.pageErrors).push(String(error)));

  await step("load", async () => {
    await page.goto(args.url ?? "", { waitUntil: "load" });
    await page.locator('[data-testid="instrument"]').first().waitFor();
    await page.locator('[data-testid="level"]:not(.empty)').first().waitFor();
    await page.waitForSelector('[data-testid="connection"][data-state="live"]');
    return { instruments: await page.locator('[data-testid="instrument"]').allTextContents() };
  });

  await step("ladder-ordered", async () => {
    // A looping replay clears its books each time the file starts over, so the ladder can be
    // empty for a moment after "load" saw levels: read it again until it holds levels (or the
    // step's time runs out), then check the order on what it shows.
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    let ladder = await scrapeLadder(page);
    while (ladder.asks.length === 0 && ladder.bids.length === 0 && Date.now() < deadline) {
      await page.waitForTimeout(50);
      ladder = await scrapeLadder(page);
    }
    const asks = ladder.asks.map((r) => BigInt(r.price));
    const bids = ladder.bids.map((r) => BigInt(r.price));
    if (asks.length === 0 && bids.length === 0) throw new Error("empty ladder");
    const lowestAsk = asks.reduce((a, b) => (b < a ? b : a), asks[0] ?? 0n);
    const highestBid = bids.reduce((a, b) => (b > a ? b : a), bids[0] ?? 0n);
    const descending = (/** @type {bigint[]} */ xs) => xs.every((x, i) => i === 0 || (xs[i - 1] ?? 0n) > x);
    if (!descending(asks) || !descending(bids)) throw new Error("ladder prices are not strictly descending");
    const banner = await page.getByTestId("book-state").getAttribute("data-state");
    const separated = asks.length === 0 || bids.length === 0 || highestBid < lowestAsk;
    const flagged = (banner === "crossed" || banner === "locked") && (await page.getByTestId("book-state").isVisible());
    if (!separated && !flagged) throw new Error(`bids reach the asks (${highestBid} >= ${lowestAsk}) but no crossed/locked flag is shown`);
    return { state: ladder.state, bestBid: highestBid.toString(), bestAsk: lowestAsk.toString(), separated, flagged };
  });

  if (args.scenario === "ladder") {
    if (args.screenshot) await step("screenshot", () => screenshot(page, args.screenshot ?? ""));
    return;
  }
  if (args.scenario === "launch-token") return launchToken(page);
  if (args.scenario === "bench") return bench(page);

  await step("updates-arrive", async () => {
    /** @type {string[]} */
    const seen = [];
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    while (Date.now() < deadline && new Set(seen).size < 5) {
      seen.push((await scrapeLadder(page)).replaySequence);
      await sleep(200);
    }
    const distinct = new Set(seen).size;
    if (distinct < 5) throw new Error(`only ${distinct} distinct book states in ${STEP_TIMEOUT_MS} ms`);
    await page.waitForFunction(() => (document.querySelectorAll('[data-testid="trade"]:not([hidden])').length ?? 0) > 0);
    return { distinctStates: distinct, trades: await page.locator('[data-testid="trade"]:not([hidden])').count() };
  });

  await step("queue-opens", async () => {
    await page.locator(".level.bid.best").first().click();
    await page.locator('[data-testid="queue-order"]').first().waitFor();
    return {
      title: await page.locator(".queue-panel h2").textContent(),
      orders: await page.locator('[data-testid="queue-order"]').count(),
    };
  });

  await step("pause-without-token-fails-visibly", async () => {
    const outcome = await operate(page, "op-pause", "Pause failed");
    if (outcome.failed !== "true" || !outcome.message?.includes("Unauthenticated")) {
      throw new Error(`expected a visible UNAUTHENTICATED failure, got ${JSON.stringify(outcome)}`);
    }
    await page.locator('[data-testid="toast"][data-kind="error"]', { hasText: "Unauthenticated" }).first().waitFor();
    return outcome;
  });

  await step("pause-with-token", async () => {
    await page.getByTestId("op-token").fill(args.token ?? "");
    await page.getByTestId("op-token-use").click();
    const outcome = await operate(page, "op-pause", "Pause: done");
    await page.waitForSelector('[data-testid="op-state"][data-state="paused"]');
    const replaySequence = await waitLadderStable(page, 1500);
    const ladder = await scrapeLadder(page);
    // The queue stream is conflated to a few updates per second: let it settle too.
    await sleep(1000);
    const queue = await page.evaluate(() =>
      Array.from(document.querySelectorAll('[data-testid="queue-order"]')).map((tr) => ({
        orderId: /** @type {HTMLElement} */ (tr).dataset.orderId ?? "",
        size: /** @type {HTMLElement} */ (tr).dataset.size ?? "",
      })),
    );
    const queueTitle = await page.locator(".queue-panel h2").textContent();
    const selected = await page.evaluate(() => {
      const row = /** @type {HTMLElement | null} */ (document.querySelector(".level.selected"));
      return row ? { side: row.dataset.side ?? "", price: row.dataset.price ?? "" } : null;
    });
    if (args.controlled) {
      const verdict = await control("paused", { ladder, queue, selected, depth: DEPTH });
      if (!verdict.ok) throw new Error(`ladder differs from GetBook: ${JSON.stringify(verdict)}`);
    }
    return { outcome, replaySequence, ladder, queue: queue.length, queueTitle, selected };
  });

  await step("resume-with-token", async () => {
    const before = (await scrapeLadder(page)).replaySequence;
    const outcome = await operate(page, "op-resume", "Resume: done");
    await page.waitForSelector('[data-testid="op-state"][data-state="running"]');
    await page.waitForFunction(
      (seq) => (/** @type {HTMLElement | null} */ (document.querySelector(".ladder-wrap"))?.dataset.replaySequence ?? seq) !== seq,
      before,
    );
    return outcome;
  });

  if (args.screenshot) await step("screenshot", () => screenshot(page, args.screenshot ?? ""));

  await step("usable-at-high-rate", async () => {
    await page.getByTestId("op-rate").fill(args["high-rate"] ?? "500000");
    await operate(page, "op-set-rate", "done");
    await sleep(2000);
    const stats = await headerStats(page);
    const status = await page.getByTestId("op-detail").textContent();
    // Still usable while the feed runs flat out: a click on a level opens its queue.
    // (How fast, and the frame times, are `mbostream bench web`'s business.)
    await page.locator(".level.ask.best").first().click();
    await page.waitForFunction(() => (document.querySelector(".queue-panel h2")?.textContent ?? "").startsWith("Ask"));
    await page.locator('[data-testid="queue-order"]').first().waitFor();
    return { stats, status, queueTitle: await page.locator(".queue-panel h2").textContent() };
  });

  if (args.controlled) {
    await step("reconnects-after-server-restart", async () => {
      // Live first: the observer below records changes only, so a stream already waiting to
      // reconnect (after the high-rate step) would show no change when the server restarts.
      await page.waitForSelector('[data-testid="connection"][data-state="live"]', { timeout: 60_000 });
      await page.evaluate(() => {
        const pill = /** @type {HTMLElement} */ (document.querySelector('[data-testid="connection"]'));
        const seen = /** @type {string[]} */ ([]);
        /** @type {any} */ (window).__connectionStates = seen;
        new MutationObserver(() => {
          const state = pill.dataset.state ?? "";
          if (seen[seen.length - 1] !== state) seen.push(state);
        }).observe(pill, { attributes: true, attributeFilter: ["data-state"] });
      });
      const before = await scrapeLadder(page);
      const lossesBefore = Number(await page.getByTestId("connection").getAttribute("data-losses"));
      await control("restart-server", {}, 120_000);
      // The loss count, not the pill's states: a reconnect quicker than a frame (a loaded machine
      // draws few) shows no "reconnecting" state at all, but it is still counted.
      await page.waitForFunction(
        (n) => Number(document.querySelector('[data-testid="connection"]')?.getAttribute("data-losses")) > n,
        lossesBefore,
      );
      await page.waitForSelector('[data-testid="connection"][data-state="live"]', { timeout: 60_000 });
      await page.waitForFunction(
        (seq) => (/** @type {HTMLElement | null} */ (document.querySelector(".ladder-wrap"))?.dataset.replaySequence ?? seq) !== seq,
        before.replaySequence,
      );
      const after = await scrapeLadder(page);
      const states = await page.evaluate(() => /** @type {any} */ (window).__connectionStates);
      const toasts = await page.locator('[data-testid="toast"]').allTextContents();
      const losses = Number(await page.getByTestId("connection").getAttribute("data-losses")) - lossesBefore;
      const lossTitle = await page.getByTestId("connection").getAttribute("title");
      if (after.asks.length + after.bids.length === 0) throw new Error("the ladder is empty after reconnecting");
      return { states, losses, lossTitle, before: before.replaySequence, after: after.replaySequence, toasts };
    });
  }
}

/**
 * The token `mbostream run` hands over in the URL's fragment: the page takes it, drops it from the
 * address bar and keeps it in memory only, and the operator panel works without typing it.
 * @param {import("playwright-core").Page} page
 */
async function launchToken(page) {
  const token = new URL(args.url ?? "").hash.match(/^#token=(.+)$/)?.[1];
  if (!token) throw new Error("--url carries no #token=…");
  await step("token-leaves-the-address-bar", async () => {
    const href = await page.evaluate(() => window.location.href);
    if (href.includes(token) || href.includes("token=")) throw new Error(`the token is still in the address bar: ${href}`);
    const stored = await page.evaluate(
      (t) => ({
        local: Object.values({ ...window.localStorage }).some((v) => v.includes(t)),
        session: Object.values({ ...window.sessionStorage }).some((v) => v.includes(t)),
        cookie: document.cookie.includes(t),
        dom: document.documentElement.outerHTML.includes(t),
      }),
      token,
    );
    if (Object.values(stored).some(Boolean)) throw new Error(`the token was kept outside memory: ${JSON.stringify(stored)}`);
    return { href };
  });
  await step("pause-with-launch-token", async () => {
    const outcome = await operate(page, "op-pause", "Pause: done");
    await page.waitForSelector('[data-testid="op-state"][data-state="paused"]');
    return outcome;
  });
  await step("resume-with-launch-token", async () => {
    const before = (await scrapeLadder(page)).replaySequence;
    const outcome = await operate(page, "op-resume", "Resume: done");
    await page.waitForSelector('[data-testid="op-state"][data-state="running"]');
    await page.waitForFunction(
      (seq) => (/** @type {HTMLElement | null} */ (document.querySelector(".ladder-wrap"))?.dataset.replaySequence ?? seq) !== seq,
      before,
    );
    return outcome;
  });
}

/**
 * Frame times while the feed runs at the server's rate, with a level's queue open (as a trader
 * watching a level has it); the window is announced to the caller with "window" events.
 * @param {import("playwright-core").Page} page
 */
async function bench(page) {
  await step("queue-opens", async () => {
    await page.locator(".level.bid.best").first().click();
    await page.locator('[data-testid="queue-order"]').first().waitFor();
  });
  await sleep(Number(args["warmup-seconds"]) * 1000);
  await step("frames", async () => {
    await control("window", { phase: "start" });
    const frames = await measureFrames(page, Number(args["frame-seconds"]));
    await control("window", { phase: "end" });
    return { frames, stats: await headerStats(page) };
  });
}

await main();
