/**
 * Unacknowledged sends: each keeps its `client_id` across retries and reconnects, so the gateway
 * stores it once, and resolves exactly once. Bounded in count and in time.
 */
import { ClosedError, SendQueueFullError, SendTimeoutError, type ChatfabricError } from "./errors.js";

/** A stored message's acknowledgement. */
export interface Ack {
  /** The conversation. */
  conv: string;
  /** The message's cursor. */
  seq: number;
  /** The idempotency key the SDK chose for it. */
  clientId: string;
  /** True when the gateway had stored it before: an earlier attempt got through. */
  duplicate: boolean;
}

/** What `send` returns: the promise of the ack, carrying the `client_id` the SDK chose. */
export type SendPromise = Promise<Ack> & {
  /** The idempotency key of this send (absent when it was refused at once). */
  readonly clientId?: string;
};

/** A send waiting for its ack. */
export interface PendingSend {
  conv: string;
  body: string;
  clientId: string;
  /** Attempts refused with `unavailable` or `rate_limited` so far. */
  refusals: number;
  resolve(ack: Ack): void;
  reject(error: ChatfabricError): void;
  timer: ReturnType<typeof setTimeout>;
  retryTimer?: ReturnType<typeof setTimeout>;
}

/** The unacknowledged sends of one client, in the order they were made. */
export class SendQueue {
  private pending = new Map<string, PendingSend>();
  private counter = 0;
  private readonly prefix: string;

  constructor(
    private readonly limit: number,
    private readonly timeoutMs: number,
  ) {
    const bytes = new Uint8Array(6);
    globalThis.crypto.getRandomValues(bytes);
    this.prefix = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /**
   * Registers a new send; the promise settles once, with the ack or an error
   * ({@link SendQueueFullError} at once when `limit` sends are waiting).
   */
  add(conv: string, body: string): { send?: PendingSend; acked: SendPromise } {
    if (this.pending.size >= this.limit) {
      return { acked: Promise.reject(new SendQueueFullError(this.limit)) };
    }
    const clientId = `${this.prefix}-${++this.counter}`;
    let send!: PendingSend;
    const acked = new Promise<Ack>((resolve, reject) => {
      send = {
        conv,
        body,
        clientId,
        refusals: 0,
        resolve,
        reject,
        timer: setTimeout(() => this.fail(clientId, new SendTimeoutError(clientId, this.timeoutMs)), this.timeoutMs),
      };
    });
    this.pending.set(clientId, send);
    return { send, acked: Object.assign(acked, { clientId }) };
  }

  /** The send with this client id, if still unacknowledged. */
  get(clientId: string): PendingSend | undefined {
    return this.pending.get(clientId);
  }

  /** All unacknowledged sends, oldest first. */
  all(): PendingSend[] {
    return [...this.pending.values()];
  }

  /** Settles a send with its ack (later acks of the same id are ignored). */
  acked(ack: Ack): void {
    const send = this.take(ack.clientId);
    send?.resolve(ack);
  }

  /** Settles a send with an error. */
  fail(clientId: string, error: ChatfabricError): void {
    this.take(clientId)?.reject(error);
  }

  /** Fails every send (the client closed, or can never connect again). */
  failAll(error: ChatfabricError = new ClosedError()): void {
    for (const id of [...this.pending.keys()]) this.fail(id, error);
  }

  private take(clientId: string): PendingSend | undefined {
    const send = this.pending.get(clientId);
    if (!send) return undefined;
    this.pending.delete(clientId);
    clearTimeout(send.timer);
    clearTimeout(send.retryTimer);
    return send;
  }
}
