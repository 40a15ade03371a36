/** Reconnect delays: exponential, capped, with jitter so a fleet of clients does not reconnect in step. */
export interface BackoffOptions {
  /** Delay before the first retry, ms (default 250). */
  initialMs?: number;
  /** Largest delay, ms (default 15000). */
  maxMs?: number;
}

/** Counts failed attempts and turns them into delays. */
export class Backoff {
  private attempt = 0;
  private readonly initial: number;
  private readonly max: number;
  constructor(options: BackoffOptions = {}) {
    this.initial = options.initialMs ?? 250;
    this.max = options.maxMs ?? 15_000;
  }

  /** The delay before the next attempt: between half and all of `initial * 2^attempt`, capped. */
  next(): number {
    const ceiling = Math.min(this.max, this.initial * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  /** A connection succeeded: start over. */
  reset(): void {
    this.attempt = 0;
  }
}
