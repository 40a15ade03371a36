/**
 * One logical connection to a gateway over any number of WebSockets in a row: authenticates
 * with a first-frame `auth`, reconnects with jittered backoff (asking for a fresh token after
 * 4001), detects dead sockets with `ping`, and matches replies to requests by `ref`.
 */
import { Backoff, type BackoffOptions } from "./backoff.js";
import { CloseCode, type ServerFrame } from "./protocol.js";
import {
  ClosedError,
  DisconnectedError,
  TimeoutError,
  UnauthenticatedError,
  errorFromFrame,
  type ChatfabricError,
} from "./errors.js";

/** The part of the WebSocket API the SDK uses (the browser's, or the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Where a token comes from: a fixed one, or a function asked on every (re)connect. */
export interface TokenSource {
  /** A fixed token. On 4001 (expired or invalid) the client stops: use `getToken` to refresh. */
  token?: string;
  /** Asked before every connection attempt, and again after a 4001. */
  getToken?: () => string | Promise<string>;
}

/** How the connection behaves. Every field has a default. */
export interface ConnectionOptions extends TokenSource {
  /** The WebSocket implementation (default: the global one, else the `ws` package). */
  WebSocket?: WebSocketConstructor;
  /** Reconnect delays. */
  backoff?: BackoffOptions;
  /** A request unanswered this long fails with {@link TimeoutError}, ms (default 30000). */
  requestTimeoutMs?: number;
  /** Interval of liveness pings while connected, ms (default 20000). */
  pingIntervalMs?: number;
  /** A ping unanswered this long means the socket is dead: reconnect, ms (default 10000). */
  pongTimeoutMs?: number;
}

/** The connection's state, as the application sees it. */
export type ConnectionState =
  /** Opening a socket; `attempt` counts since the last success. */
  | { state: "connecting"; attempt: number }
  /** Authenticated as `user` on the gateway's connection `conn`. */
  | { state: "connected"; user: string; conn: number }
  | {
      state: "disconnected";
      /** The WebSocket close code, if the gateway sent one (see {@link CloseCode}). */
      code?: number;
      /** Why, in words. */
      reason: string;
      /** Whether the client will reconnect by itself (false after `close()` or a refused token). */
      willRetry: boolean;
      /** When it will, in how many ms. */
      retryInMs?: number;
    };

interface Pending {
  frame: Record<string, unknown>;
  /** Sent again after a reconnect (reads and idempotent writes) instead of failing. */
  repeatable: boolean;
  resolve(frame: ServerFrame): void;
  reject(error: ChatfabricError): void;
  timer: ReturnType<typeof setTimeout>;
}

/** Callbacks of the client on top. */
export interface ConnectionEvents {
  /** A socket authenticated (first time or again). */
  ready(user: string, conn: number): void;
  /** A frame that answers no request. */
  frame(frame: ServerFrame): void;
  /** The state changed. */
  state(state: ConnectionState): void;
  /** A socket closed (after `state`). */
  lost(): void;
}

/** Resolves the WebSocket to use. */
async function webSocketImpl(given?: WebSocketConstructor): Promise<WebSocketConstructor> {
  if (given) return given;
  const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (global) return global;
  const ws = (await import("ws")) as unknown as { default: WebSocketConstructor };
  return ws.default;
}

const OPEN = 1;

/** See the module doc. */
export class Connection {
  private socket: WebSocketLike | undefined;
  private pending = new Map<string, Pending>();
  private nextRef = 0;
  private closed = false;
  private backoff: Backoff;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private attempt = 0;
  /** The current state. */
  current: ConnectionState = { state: "connecting", attempt: 0 };

  constructor(
    private readonly url: string,
    private readonly options: ConnectionOptions,
    private readonly events: ConnectionEvents,
  ) {
    if (!options.token && !options.getToken) throw new TypeError("pass token or getToken");
    this.backoff = new Backoff(options.backoff);
    void this.open();
  }

  /** Whether frames can be sent now. */
  get connected(): boolean {
    return this.current.state === "connected";
  }

  /** Sends a frame if connected; returns whether it was sent. */
  write(frame: Record<string, unknown>): boolean {
    if (!this.connected || this.socket?.readyState !== OPEN) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  /**
   * Sends `frame` with a fresh `ref` and resolves with the reply (rejects with the typed error).
   * While disconnected it waits; a `repeatable` request survives reconnects, others fail with
   * {@link DisconnectedError} when the socket they went out on drops.
   */
  request<F extends ServerFrame = ServerFrame>(
    frame: Record<string, unknown>,
    repeatable: boolean,
  ): Promise<F> {
    if (this.closed) return Promise.reject(new ClosedError());
    const ref = `q${++this.nextRef}`;
    const full = { ...frame, ref };
    return new Promise<F>((resolve, reject) => {
      const timeout = this.options.requestTimeoutMs ?? 30_000;
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(new TimeoutError(`no answer to ${String(frame.op)} within ${timeout} ms`, ref));
      }, timeout);
      this.pending.set(ref, {
        frame: full,
        repeatable,
        resolve: resolve as (f: ServerFrame) => void,
        reject,
        timer,
      });
      this.write(full);
    });
  }

  /** Closes for good: pending requests fail with {@link ClosedError}. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.retryTimer);
    const socket = this.detach();
    socket?.close(1000, "client closed");
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new ClosedError());
    }
    this.pending.clear();
    this.setState({ state: "disconnected", reason: "closed by the application", willRetry: false });
  }

  /** Drops the current socket and reconnects (as after a network failure). */
  reconnect(reason = "reconnect requested"): void {
    if (this.socket) this.lose(undefined, reason);
  }

  private setState(state: ConnectionState): void {
    this.current = state;
    this.events.state(state);
  }

  private async open(): Promise<void> {
    if (this.closed) return;
    this.setState({ state: "connecting", attempt: ++this.attempt });
    let token: string;
    let Impl: WebSocketConstructor;
    try {
      Impl = await webSocketImpl(this.options.WebSocket);
      token = this.options.getToken ? await this.options.getToken() : (this.options.token as string);
    } catch (e) {
      return this.retry(undefined, `could not get a token: ${(e as Error).message}`);
    }
    if (this.closed) return;
    let socket: WebSocketLike;
    try {
      socket = new Impl(this.url);
    } catch (e) {
      return this.retry(undefined, `could not connect: ${(e as Error).message}`);
    }
    this.socket = socket;
    socket.onopen = () => socket.send(JSON.stringify({ op: "auth", token }));
    socket.onerror = () => {}; // close follows with the code
    socket.onclose = (ev) => {
      if (this.socket === socket) this.lose(ev.code, ev.reason || `closed (${ev.code})`);
    };
    socket.onmessage = (ev) => {
      if (this.socket !== socket || typeof ev.data !== "string") return;
      let frame: ServerFrame;
      try {
        frame = JSON.parse(ev.data) as ServerFrame;
      } catch {
        return;
      }
      this.receive(frame);
    };
  }

  private receive(frame: ServerFrame): void {
    if (frame.op === "ready" && !this.connected) {
      this.backoff.reset();
      this.attempt = 0;
      this.setState({ state: "connected", user: frame.user, conn: frame.conn });
      this.startPings();
      for (const p of this.pending.values()) this.write(p.frame);
      this.events.ready(frame.user, frame.conn);
      return;
    }
    const ref = "ref" in frame ? frame.ref : undefined;
    const pending = ref === undefined ? undefined : this.pending.get(ref);
    if (pending && ref !== undefined) {
      this.pending.delete(ref);
      clearTimeout(pending.timer);
      if (frame.op === "error") pending.reject(errorFromFrame(frame));
      else pending.resolve(frame);
      return;
    }
    this.events.frame(frame);
  }

  private startPings(): void {
    clearInterval(this.pingTimer);
    const interval = this.options.pingIntervalMs ?? 20_000;
    const timeout = this.options.pongTimeoutMs ?? 10_000;
    this.pingTimer = setInterval(() => {
      const socket = this.socket;
      const ref = `p${++this.nextRef}`;
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        if (this.socket === socket) this.lose(undefined, `no answer to ping within ${timeout} ms`);
      }, timeout);
      this.pending.set(ref, {
        frame: { op: "ping", ref },
        repeatable: false,
        resolve: () => clearTimeout(timer),
        reject: () => clearTimeout(timer),
        timer,
      });
      this.write({ op: "ping", ref });
    }, interval);
  }

  /** Detaches the current socket's handlers and returns it. */
  private detach(): WebSocketLike | undefined {
    clearInterval(this.pingTimer);
    const socket = this.socket;
    this.socket = undefined;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    }
    return socket;
  }

  /** The socket is gone (closed by the gateway, the network, or declared dead). */
  private lose(code: number | undefined, reason: string): void {
    const socket = this.detach();
    if (socket && socket.readyState <= OPEN) {
      try {
        socket.close(1000, "reconnecting");
      } catch {
        // already closing
      }
    }
    for (const [ref, p] of this.pending) {
      if (p.repeatable) continue;
      this.pending.delete(ref);
      clearTimeout(p.timer);
      p.reject(new DisconnectedError());
    }
    this.retry(code, reason);
    this.events.lost();
  }

  private retry(code: number | undefined, reason: string): void {
    if (this.closed) return;
    // The application ended this user's session: reconnecting on our own would undo a logout.
    if (code === CloseCode.Disconnected) {
      this.setState({ state: "disconnected", code, reason, willRetry: false });
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new DisconnectedError(reason));
      }
      this.pending.clear();
      return;
    }
    if (code === CloseCode.Unauthorized && !this.options.getToken) {
      this.setState({ state: "disconnected", code, reason, willRetry: false });
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new UnauthenticatedError("unauthenticated", reason));
      }
      this.pending.clear();
      return;
    }
    let delay = this.backoff.next();
    // An expired token is expected: fetch a new one at once, the first time.
    if (code === CloseCode.Unauthorized && this.attempt <= 1) delay = 0;
    // A flood close asks clients to back off for real.
    if (code === CloseCode.Flood) delay = Math.max(delay, 5000);
    this.setState({ state: "disconnected", code, reason, willRetry: true, retryInMs: delay });
    this.retryTimer = setTimeout(() => void this.open(), delay);
  }
}
