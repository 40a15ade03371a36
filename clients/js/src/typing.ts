/**
 * Typing indicators: the sender side throttled as PROTOCOL.md asks (a `start` every 3 to 5 s
 * while typing, at most 1 frame per second with bursts of 5), the receiver side expiring each
 * `start` after its `expires_in`.
 */

/** How often a continued `start` is repeated while the user keeps typing, ms. */
export const TYPING_REPEAT_MS = 4000;
/** A `start` without `expires_in` lasts this long, ms (the gateway's default). */
const DEFAULT_EXPIRY_MS = 6000;

/** Decides which typing frames to send. */
export class TypingThrottle {
  private lastStart = new Map<string, number>();
  private tokens = 5;
  private refilled = Date.now();

  /** Whether to send `start` for `conv` now (the user typed). */
  start(conv: string, now = Date.now()): boolean {
    const last = this.lastStart.get(conv);
    if (last !== undefined && now - last < TYPING_REPEAT_MS) return false;
    if (!this.take(now)) return false;
    this.lastStart.set(conv, now);
    return true;
  }

  /** Whether to send `stop` for `conv` now (only after a `start`). */
  stop(conv: string, now = Date.now()): boolean {
    if (!this.lastStart.delete(conv)) return false;
    return this.take(now);
  }

  private take(now: number): boolean {
    this.tokens = Math.min(5, this.tokens + (now - this.refilled) / 1000);
    this.refilled = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

/** Who is typing where, with each `start` expiring on its own. */
export class Typers {
  private byConv = new Map<string, Map<string, ReturnType<typeof setTimeout>>>();
  constructor(private readonly changed: (conv: string, users: string[]) => void) {}

  /** A typing event arrived. A repeated `start` only renews the expiry. */
  event(conv: string, user: string, state: "start" | "stop", expiresIn?: number): void {
    const users = this.byConv.get(conv) ?? new Map<string, ReturnType<typeof setTimeout>>();
    const was = users.has(user);
    clearTimeout(users.get(user));
    if (state === "start") {
      users.set(user, setTimeout(() => this.event(conv, user, "stop"), expiresIn ?? DEFAULT_EXPIRY_MS));
      this.byConv.set(conv, users);
      if (was) return;
    } else {
      if (!was) return;
      users.delete(user);
    }
    this.changed(conv, this.users(conv));
  }

  /** The users typing in `conv` now. */
  users(conv: string): string[] {
    return [...(this.byConv.get(conv)?.keys() ?? [])].sort();
  }

  /** A user's message arrived: they stopped typing. */
  sent(conv: string, user: string): void {
    if (this.byConv.get(conv)?.has(user)) this.event(conv, user, "stop");
  }

  /** Forget everything (the client closed). */
  clear(): void {
    for (const users of this.byConv.values()) for (const t of users.values()) clearTimeout(t);
    this.byConv.clear();
  }
}
