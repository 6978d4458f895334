// A server stream that reconnects by itself: open, read with `for await`,
// and on any failure wait (backoff) and open again, until stopped.

import { Backoff } from "./backoff";

export type LinkState =
  | { readonly kind: "connecting"; readonly attempt: number }
  | { readonly kind: "live" }
  | { readonly kind: "waiting"; readonly attempt: number; readonly retryAtMs: number; readonly error: unknown }
  | { readonly kind: "stopped" };

export interface ResilientStreamOptions<T> {
  /** Opens the stream; it must end (or throw) when `signal` aborts. */
  readonly open: (signal: AbortSignal) => AsyncIterable<T>;
  readonly onMessage: (message: T) => void;
  readonly onState: (state: LinkState) => void;
  /** Called once per failed attempt, before waiting. */
  readonly onError?: (error: unknown, attempt: number) => void;
  /** Stops the loop (and the open stream) for good. */
  readonly signal: AbortSignal;
  readonly backoff?: Backoff;
  readonly now?: () => number;
  readonly sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

/**
 * Whether the change from `previous` to `next` is a live connection lost: counted once per loss,
 * whatever the retries after it, so a page can say how often it lost the server even when a
 * reconnect is quicker than a frame and no "reconnecting" state is ever drawn.
 */
export function isLoss(previous: LinkState | undefined, next: LinkState): boolean {
  return previous?.kind === "live" && next.kind === "waiting";
}

/** The error a stream that ended without one is retried with: the server closed it. */
export class StreamEndedError extends Error {
  constructor() {
    super("the server ended the stream");
    this.name = "StreamEndedError";
  }
}

/** Resolves after `ms`, or early when `signal` aborts. */
export function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

/**
 * Runs a stream until `signal` aborts, reconnecting after every failure or
 * end with backoff. The backoff resets when a connection delivers its first
 * message, so a flapping server is retried slowly and a healthy one quickly.
 * A throwing `onMessage` is logged and skips that message only: a bug in
 * one view never tears the stream down.
 */
export async function runResilient<T>(options: ResilientStreamOptions<T>): Promise<void> {
  const { open, onMessage, onState, onError, signal } = options;
  const backoff = options.backoff ?? new Backoff();
  const now = options.now ?? Date.now;
  const sleep = options.sleep ?? abortableSleep;
  while (!signal.aborted) {
    onState({ kind: "connecting", attempt: backoff.attempt });
    let failure: unknown = new StreamEndedError();
    try {
      let first = true;
      for await (const message of open(signal)) {
        if (first) {
          first = false;
          backoff.reset();
          onState({ kind: "live" });
        }
        deliver(onMessage, message);
      }
    } catch (error) {
      failure = error;
    }
    if (signal.aborted) break;
    const delay = backoff.next();
    onError?.(failure, backoff.attempt);
    onState({ kind: "waiting", attempt: backoff.attempt, retryAtMs: now() + delay, error: failure });
    await sleep(delay, signal);
  }
  onState({ kind: "stopped" });
}

function deliver<T>(onMessage: (message: T) => void, message: T): void {
  try {
    onMessage(message);
  } catch (error) {
    console.error("stream message handler failed", error);
  }
}
