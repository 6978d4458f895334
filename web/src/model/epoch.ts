// The server run (epoch) the page's history comes from. Replay positions and
// trades of two runs are unrelated: when a book stream reconnects to a server
// that restarted, the chart and the tape must start over instead of mixing
// the two. Pure: no DOM, no network.

/** Remembers the epoch of the messages seen so far and says when it changes. */
export class EpochWatch {
  private current: string | undefined;

  /** The epoch seen last ("" never counts: servers that predate epochs send none). */
  get value(): string | undefined {
    return this.current;
  }

  /** True when `epoch` is another run than the one seen so far. */
  changed(epoch: string): boolean {
    if (!epoch) return false;
    const before = this.current;
    this.current = epoch;
    return before !== undefined && before !== epoch;
  }

  /** Forgets the run (a new instrument starts its history afresh anyway). */
  reset(): void {
    this.current = undefined;
  }
}
