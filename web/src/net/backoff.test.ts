import { describe, expect, it } from "vitest";
import { Backoff } from "./backoff";
import { isLoss, type LinkState, runResilient, StreamEndedError } from "./resilient";

const policy = { initialMs: 100, maxMs: 1000, multiplier: 2 };

describe("Backoff", () => {
  it("doubles its cap up to the maximum and waits between half the cap and the cap", () => {
    const low = new Backoff(policy, () => 0);
    expect([1, 2, 3, 4, 5, 6].map(() => low.next())).toEqual([50, 100, 200, 400, 500, 500]);
    const high = new Backoff(policy, () => 1);
    expect([1, 2, 3, 4, 5].map(() => high.next())).toEqual([100, 200, 400, 800, 1000]);
  });

  it("starts over after a reset", () => {
    const backoff = new Backoff(policy, () => 1);
    backoff.next();
    backoff.next();
    expect(backoff.attempt).toBe(2);
    backoff.reset();
    expect(backoff.attempt).toBe(0);
    expect(backoff.next()).toBe(100);
  });
});

/** A scripted server: each connection yields its messages, then fails (or ends when `fail` is undefined). */
function scripted(connections: { messages: number[]; fail?: Error }[]): {
  open: (signal: AbortSignal) => AsyncIterable<number>;
  opened: () => number;
} {
  let opened = 0;
  return {
    opened: () => opened,
    open: (signal) =>
      (async function* () {
        const connection = connections[opened++];
        if (!connection) {
          // Past the script: stay open until the caller stops.
          await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
          return;
        }
        yield* connection.messages;
        if (connection.fail) throw connection.fail;
      })(),
  };
}

describe("runResilient", () => {
  it("reconnects with growing delays while connections fail, and resets once one delivers", async () => {
    const server = scripted([
      { messages: [], fail: new Error("refused") },
      { messages: [], fail: new Error("refused") },
      { messages: [1, 2], fail: new Error("server restarted") },
      { messages: [3] },
      { messages: [4] },
    ]);
    const stop = new AbortController();
    const received: number[] = [];
    const states: LinkState["kind"][] = [];
    const delays: number[] = [];
    const errors: string[] = [];
    let previous: LinkState | undefined;
    let losses = 0;
    await runResilient({
      open: server.open,
      onMessage: (m) => {
        received.push(m);
        if (m === 4) stop.abort();
      },
      onState: (s) => {
        states.push(s.kind);
        if (isLoss(previous, s)) losses += 1;
        previous = s;
      },
      onError: (e) => errors.push(e instanceof StreamEndedError ? "ended" : String((e as Error).message)),
      signal: stop.signal,
      backoff: new Backoff(policy, () => 1),
      sleep: async (ms) => {
        delays.push(ms);
      },
    });
    expect(received).toEqual([1, 2, 3, 4]);
    // Two refusals grow the delay; a connection that delivered resets it.
    expect(delays).toEqual([100, 200, 100, 100]);
    expect(errors).toEqual(["refused", "refused", "server restarted", "ended"]);
    expect(states.filter((s) => s === "live")).toHaveLength(3);
    // Lost twice (the third connection failed, the fourth ended); the refusals before any
    // message and the stop at the end are not losses.
    expect(losses).toBe(2);
    expect(states.at(-1)).toBe("stopped");
    expect(server.opened()).toBe(5);
  });

  it("stops without reconnecting when aborted mid-stream", async () => {
    const server = scripted([]);
    const stop = new AbortController();
    const run = runResilient({
      open: server.open,
      onMessage: () => undefined,
      onState: () => undefined,
      signal: stop.signal,
      sleep: async () => undefined,
    });
    stop.abort();
    await run;
    expect(server.opened()).toBe(1);
  });

  it("survives a failing message handler", async () => {
    const server = scripted([{ messages: [1, 2, 3] }]);
    const stop = new AbortController();
    const seen: number[] = [];
    const originalError = console.error;
    console.error = () => undefined;
    try {
      await runResilient({
        open: server.open,
        onMessage: (m) => {
          seen.push(m);
          if (m === 1) throw new Error("view bug");
          if (m === 3) stop.abort();
        },
        onState: () => undefined,
        signal: stop.signal,
        sleep: async () => undefined,
      });
    } finally {
      console.error = originalError;
    }
    expect(seen).toEqual([1, 2, 3]);
  });
});
