/**
 * One conversation's position on a subscription, and the `prev` chain check that keeps what the
 * application sees gap-free and duplicate-free whatever the transport did.
 */
import type { MsgFrame } from "./protocol.js";

/** What to do with an arriving `msg`. */
export type Verdict =
  /** Deliver it: it continues the chain. */
  | "deliver"
  /** Drop it: at or below the cursor, already delivered (a replay overlapping an old subscription). */
  | "duplicate"
  /** Drop it and resubscribe from the cursor: something between the cursor and it is missing. */
  | "gap";

/** The last message delivered to the application in one conversation. */
export class Cursor {
  /** The `seq` of the last delivered message (or the subscription's start); undefined: never subscribed. */
  seq: number | undefined;
  constructor(seq?: number) {
    this.seq = seq;
  }

  /** Judges `msg` and, when it is to be delivered, moves the cursor to it. */
  accept(msg: Pick<MsgFrame, "seq" | "prev">): Verdict {
    if (this.seq === undefined) {
      this.seq = msg.seq;
      return "deliver";
    }
    if (msg.seq <= this.seq) return "duplicate";
    if (msg.prev !== this.seq) return "gap";
    this.seq = msg.seq;
    return "deliver";
  }

  /** A subscription started after `cursor`: the chain continues from there. */
  started(cursor: number): void {
    if (this.seq === undefined) this.seq = cursor;
  }

  /** A message from history (no `prev`) was delivered. */
  caughtUp(seq: number): void {
    if (this.seq === undefined || seq > this.seq) this.seq = seq;
  }
}
