/**
 * The receive-only transport: server-sent events (`GET /v1/events`) for where WebSockets are
 * blocked. Read with `fetch` (browsers and Node alike), so the token goes in the
 * `Authorization` header; resumes with `Last-Event-ID` built from the cursors the SDK verified,
 * and checks every message's `prev` like the WebSocket client does.
 */
import { Backoff, type BackoffOptions } from "./backoff.js";
import { Cursor } from "./cursor.js";
import { Emitter } from "./emitter.js";
import { errorFromFrame, type ChatfabricError } from "./errors.js";
import { walkHistory, type HistoryOptions } from "./history.js";
import type { Message, ServerFrame } from "./protocol.js";
import type { TokenSource } from "./connection.js";
import type { Presence, ReadReceipt } from "./client.js";
import { Typers } from "./typing.js";

/** Options of {@link connectEvents}. */
export interface EventsOptions extends TokenSource {
  /** The conversations to receive (default: all of yours, at most 100). */
  convs?: string[];
  /** Cursors to resume from, by conversation. */
  after?: Record<string, number>;
  /** Reconnect delays. */
  backoff?: BackoffOptions;
  /** The fetch implementation (default: the global one). */
  fetch?: typeof fetch;
}

/** The state of an event stream. */
export type EventsState =
  | { state: "connecting"; attempt: number }
  | { state: "connected" }
  | { state: "disconnected"; reason: string; status?: number; willRetry: boolean; retryInMs?: number };

/** The events of an {@link EventsClient}. */
export interface EventsClientEvents {
  /** The stream's state changed. */
  state: EventsState;
  /** A message: in order, each once, across reconnects. */
  message: Message;
  /** Users typing in a conversation changed. */
  typing: { conv: string; users: string[] };
  /** A member went online or offline. */
  presence: Presence;
  /** A member moved their read cursor. */
  read: ReadReceipt;
  /** The stream was refused for good (e.g. `forbidden`, or an expired fixed token). */
  error: ChatfabricError;
}

/** See the module doc; create one with {@link connectEvents}. */
export class EventsClient extends Emitter<EventsClientEvents> {
  private cursors = new Map<string, Cursor>();
  private typers = new Typers((conv, users) => this.emit("typing", { conv, users }));
  private abort: AbortController | undefined;
  private closed = false;
  private backoff: Backoff;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** The current state. */
  state: EventsState = { state: "connecting", attempt: 0 };

  constructor(
    private readonly baseUrl: string,
    private readonly options: EventsOptions,
  ) {
    super();
    if (!options.token && !options.getToken) throw new TypeError("pass token or getToken");
    for (const [conv, seq] of Object.entries(options.after ?? {})) this.cursors.set(conv, new Cursor(seq));
    this.backoff = new Backoff(options.backoff);
    void this.run();
  }

  /** The cursor of each conversation: the `seq` of the last message delivered. */
  get positions(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [conv, c] of this.cursors) if (c.seq !== undefined) out[conv] = c.seq;
    return out;
  }

  /** Walks a conversation's history over HTTP (`GET /v1/conversations/{conv}/messages`). */
  history(conv: string, options: HistoryOptions = {}): AsyncGenerator<Message, void, undefined> {
    return walkHistory(
      conv,
      async (params) => {
        const query = new URLSearchParams({ limit: String(params.limit) });
        if (params.before !== undefined) query.set("before", String(params.before));
        if (params.after !== undefined) query.set("after", String(params.after));
        const res = await this.fetchImpl(
          `${this.baseUrl}/v1/conversations/${encodeURIComponent(conv)}/messages?${query}`,
          { headers: { authorization: `Bearer ${await this.token()}` } },
        );
        const body = (await res.json().catch(() => undefined)) as
          | { messages?: Omit<Message, "conv">[]; code?: string; message?: string }
          | undefined;
        if (!res.ok || !Array.isArray(body?.messages)) {
          throw errorFromFrame({ code: body?.code ?? "unavailable", message: body?.message ?? `HTTP ${res.status}` });
        }
        return body.messages;
      },
      options,
    );
  }

  /** Drops the stream and reconnects, resuming from the verified cursors. */
  reconnect(): void {
    this.abort?.abort();
  }

  /** Stops for good. */
  close(): void {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.abort?.abort();
    this.typers.clear();
    this.setState({ state: "disconnected", reason: "closed by the application", willRetry: false });
  }

  private get fetchImpl(): typeof fetch {
    return this.options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  private async token(): Promise<string> {
    return this.options.getToken ? await this.options.getToken() : (this.options.token as string);
  }

  private setState(state: EventsState): void {
    this.state = state;
    this.emit("state", state);
  }

  private async run(): Promise<void> {
    if (this.closed) return;
    this.setState({ state: "connecting", attempt: ++this.attempt });
    const abort = (this.abort = new AbortController());
    let status: number | undefined;
    let reason = "stream ended";
    try {
      const query = new URLSearchParams();
      for (const conv of this.options.convs ?? []) query.append("conv", conv);
      const headers: Record<string, string> = {
        authorization: `Bearer ${await this.token()}`,
        accept: "text/event-stream",
      };
      const resume = [...this.cursors].filter(([, c]) => c.seq !== undefined).map(([conv, c]) => `${conv}:${c.seq}`);
      if (resume.length > 0) headers["last-event-id"] = resume.join(",");
      const res = await this.fetchImpl(`${this.baseUrl}/v1/events?${query}`, { headers, signal: abort.signal });
      status = res.status;
      if (!res.ok || !res.body) {
        const body = (await res.json().catch(() => ({}))) as { code?: string; message?: string };
        const error = errorFromFrame({ code: body.code ?? "unavailable", message: body.message ?? `HTTP ${res.status}` });
        const refreshable = res.status === 401 && this.options.getToken;
        if (res.status !== 503 && !refreshable) {
          this.emit("error", error);
          return this.setState({ state: "disconnected", reason: error.message, status, willRetry: false });
        }
        reason = error.message;
      } else {
        this.setState({ state: "connected" });
        this.attempt = 0;
        this.backoff.reset();
        reason = await this.read(res.body, abort);
      }
    } catch (e) {
      reason = abort.signal.aborted ? "reconnecting" : `network: ${(e as Error).message}`;
    }
    if (this.closed) return;
    const delay = reason === "chain break" ? 0 : this.backoff.next();
    this.setState({ state: "disconnected", reason, status, willRetry: true, retryInMs: delay });
    this.retryTimer = setTimeout(() => void this.run(), delay);
  }

  /** Reads events until the stream ends; returns why it ended. */
  private async read(body: ReadableStream<Uint8Array>, abort: AbortController): Promise<string> {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let event = "message";
    let data: string[] = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return "stream ended";
      buffer += decoder.decode(value, { stream: true });
      let nl: number;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, "");
        buffer = buffer.slice(nl + 1);
        if (line === "") {
          const ended = data.length > 0 ? this.dispatch(event, data.join("\n")) : undefined;
          event = "message";
          data = [];
          if (ended) {
            abort.abort();
            return ended;
          }
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        } else if (line.startsWith("event:")) {
          event = line.slice(6).trim();
        }
      }
    }
  }

  /** Handles one event; returns a reason to reconnect, if any. */
  private dispatch(event: string, data: string): string | undefined {
    let frame: ServerFrame | { code?: string };
    try {
      frame = JSON.parse(data) as ServerFrame;
    } catch {
      return undefined;
    }
    if (event === "error") return `error: ${(frame as { code?: string }).code ?? "unknown"}`;
    const f = frame as ServerFrame;
    switch (f.op) {
      case "subscribed": {
        let cursor = this.cursors.get(f.conv);
        if (!cursor) this.cursors.set(f.conv, (cursor = new Cursor()));
        cursor.started(f.cursor);
        return undefined;
      }
      case "msg": {
        let cursor = this.cursors.get(f.conv);
        if (!cursor) this.cursors.set(f.conv, (cursor = new Cursor()));
        const verdict = cursor.accept(f);
        if (verdict === "gap") return "chain break";
        if (verdict === "deliver") {
          const { op: _op, prev: _prev, ...message } = f;
          this.typers.sent(message.conv, message.sender);
          this.emit("message", message);
        }
        return undefined;
      }
      case "typing":
        this.typers.event(f.conv, f.user, f.state, f.expires_in);
        return undefined;
      case "presence":
        this.emit("presence", { user: f.user, online: f.online, lastSeen: f.last_seen, conv: f.conv });
        return undefined;
      case "read":
        this.emit("read", { conv: f.conv, user: f.user, seq: f.seq });
        return undefined;
      default:
        return undefined;
    }
  }
}
