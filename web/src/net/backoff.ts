// Reconnect pacing: exponential backoff with full jitter, reset once a
// connection has proved itself by delivering a message.

export interface BackoffPolicy {
  /** Delay cap of the first retry, ms. */
  readonly initialMs: number;
  /** Largest delay cap, ms. */
  readonly maxMs: number;
  /** Growth of the cap per failed attempt. */
  readonly multiplier: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { initialMs: 250, maxMs: 8000, multiplier: 2 };

export class Backoff {
  private failures = 0;

  constructor(
    readonly policy: BackoffPolicy = DEFAULT_BACKOFF,
    private readonly random: () => number = Math.random,
  ) {}

  /** Failed attempts since the last reset. */
  get attempt(): number {
    return this.failures;
  }

  /** The cap of the next delay: initialMs · multiplier^failures, at most maxMs. */
  nextCapMs(): number {
    return Math.min(this.policy.maxMs, this.policy.initialMs * this.policy.multiplier ** this.failures);
  }

  /**
   * Records a failure and returns how long to wait before retrying: uniform
   * in [cap/2, cap] ("equal jitter"), so many clients restarted together
   * spread out without any of them retrying at once.
   */
  next(): number {
    const cap = this.nextCapMs();
    this.failures += 1;
    return cap / 2 + (cap / 2) * this.random();
  }

  reset(): void {
    this.failures = 0;
  }
}
