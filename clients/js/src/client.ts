/**
 * The WebSocket client: subscriptions that survive reconnects, sends retried with the same
 * `client_id`, history, conversations, presence, typing, read receipts and unread counts.
 */
import { Connection, type ConnectionOptions, type ConnectionState } from "./connection.js";
import { Cursor } from "./cursor.js";
import { Emitter } from "./emitter.js";
import {
  ChatfabricError,
  ClosedError,
  CursorExpiredError,
  DisconnectedError,
  UnauthenticatedError,
  errorFromFrame,
} from "./errors.js";
import { walkHistory, type HistoryOptions } from "./history.js";
import { CloseCode, type ConversationInfo, type Message, type MsgFrame, type ServerFrame } from "./protocol.js";
import { SendQueue, type SendPromise } from "./sends.js";
import { TypingThrottle, Typers } from "./typing.js";

/** Options of {@link connect}. */
export interface ClientOptions extends ConnectionOptions {
  /** Sends waiting for their ack before `send` refuses with `SendQueueFullError` (default 1000). */
  maxPendingSends?: number;
  /**
   * How long a send is retried before it fails with `SendTimeoutError`, ms (default 100000: under
   * the gateway's 2-minute duplicate window, so a retry is never stored twice).
   */
  sendTimeoutMs?: number;
}

/** Someone's online state. */
export interface Presence {
  /** The user. */
  user: string;
  /** Whether any of their devices is connected. */
  online: boolean;
  /** Online: since when. Offline: when last seen (ms since the epoch). Absent if never seen. */
  lastSeen?: number;
  /** The conversation an event came on (absent for query answers). */
  conv?: string;
}

/** A read receipt: `user` has read `conv` up to and including `seq`. */
export interface ReadReceipt {
  /** The conversation. */
  conv: string;
  /** Who read. */
  user: string;
  /** Their read cursor: everything up to and including this `seq` is read. */
  seq: number;
}

/** The events of a {@link Client}; listen with `client.on(name, fn)`. */
export interface ClientEvents {
  /** The connection's state changed (connecting, connected, disconnected with reason and code). */
  state: ConnectionState;
  /** A message of a subscribed conversation: in order, each once, also across reconnects. */
  message: Message;
  /** The set of users typing in a conversation changed (you are left out). */
  typing: { conv: string; users: string[] };
  /** A member of a subscribed conversation went online or offline. */
  presence: Presence;
  /** A member of a subscribed conversation moved their read cursor. */
  read: ReadReceipt;
  /** Your unread count of a conversation changed. */
  unread: { conv: string; count: number };
  /** A subscription ended by the gateway (`removed`: you were removed from the conversation). */
  unsubscribed: { conv: string; reason: string };
  /** A subscription failed for good (e.g. `forbidden`); its `ready` promise rejects too. */
  error: ChatfabricError;
}

/** A conversation you receive. Messages come as `message` events (and to `onMessage`). */
export class Subscription {
  /** Resolves with the starting cursor once the gateway confirmed the subscription. */
  readonly ready: Promise<number>;
  /** @internal */
  readonly state: Cursor;
  /** @internal */
  starting = false;
  /** @internal */
  listeners = new Set<(m: Message) => void>();
  /** @internal */
  settle!: { resolve(cursor: number): void; reject(e: ChatfabricError): void; done: boolean };

  /** @internal */
  constructor(
    /** The conversation. */
    readonly conv: string,
    after: number | undefined,
    private readonly end: (s: Subscription) => void,
  ) {
    this.state = new Cursor(after);
    this.ready = new Promise<number>((resolve, reject) => {
      this.settle = { resolve, reject, done: false };
    });
    this.ready.catch(() => {});
  }

  /** The `seq` of the last message delivered: where a later `subscribe(conv, { after })` resumes. */
  get cursor(): number | undefined {
    return this.state.seq;
  }

  /** Stops receiving the conversation. */
  unsubscribe(): void {
    this.end(this);
  }
}

/** See the module doc; create one with {@link connect}. */
export class Client extends Emitter<ClientEvents> {
  private connection: Connection;
  private subs = new Map<string, Subscription>();
  private sends: SendQueue;
  private throttle = new TypingThrottle();
  private typers = new Typers((conv, users) => this.emit("typing", { conv, users }));
  private unread = new Map<string, number>();
  private readSeq = new Map<string, number>();
  private readies = 0;
  private closed = false;
  /** The authenticated user (known once connected). */
  user: string | undefined;

  constructor(url: string, options: ClientOptions) {
    super();
    this.sends = new SendQueue(options.maxPendingSends ?? 1000, options.sendTimeoutMs ?? 100_000);
    this.connection = new Connection(url, options, {
      ready: (user) => this.onReady(user),
      frame: (frame) => this.onFrame(frame),
      state: (state) => {
        // A refused fixed token, or the application's disconnect: nothing will ever be sent again.
        if (state.state === "disconnected" && !state.willRetry && !this.closed) {
          this.sends.failAll(
            state.code === CloseCode.Disconnected
              ? new DisconnectedError(state.reason)
              : new UnauthenticatedError("unauthenticated", state.reason),
          );
        }
        this.emit("state", state);
      },
      lost: () => {
        for (const sub of this.subs.values()) sub.starting = false;
      },
    });
  }

  /** The connection's current state. */
  get state(): ConnectionState {
    return this.connection.current;
  }

  /**
   * Receives a conversation's messages, from `after` on (a cursor you kept) or from now. Calling
   * it again for the same conversation returns the same subscription.
   */
  subscribe(conv: string, options: { after?: number; onMessage?: (m: Message) => void } = {}): Subscription {
    let sub = this.subs.get(conv);
    if (!sub) {
      sub = new Subscription(conv, options.after, (s) => this.unsubscribe(s));
      this.subs.set(conv, sub);
      if (this.connection.connected) this.start(sub);
    }
    if (options.onMessage) sub.listeners.add(options.onMessage);
    return sub;
  }

  /**
   * Sends a message. Resolves with the ack once it is durably stored. The SDK picks the
   * `client_id` (`.clientId` of the returned promise; your own message arrives with it) and
   * retries with it across reconnects and `unavailable`, so it is stored once.
   */
  send(conv: string, body: string): SendPromise {
    if (this.closed) return Promise.reject(new ClosedError());
    const { send, acked } = this.sends.add(conv, body);
    if (send) {
      this.writeSend(send.clientId);
      if (this.throttle.stop(conv)) this.connection.write({ op: "typing", conv, state: "stop" });
    }
    return acked;
  }

  /** Walks a conversation's history page by page (see {@link HistoryOptions}); members only. */
  history(conv: string, options: HistoryOptions = {}): AsyncGenerator<Message, void, undefined> {
    return walkHistory(
      conv,
      async (params) => {
        const reply = await this.connection.request<Extract<ServerFrame, { op: "history" }>>(
          { op: "history", conv, ...params },
          true,
        );
        return reply.messages;
      },
      options,
    );
  }

  /** The conversations you are a member of. */
  async conversations(): Promise<ConversationInfo[]> {
    const r = await this.connection.request<Extract<ServerFrame, { op: "conversations" }>>({ op: "conversations" }, true);
    return r.conversations;
  }

  /** Creates (or finds) the direct conversation with `user`. */
  createDirect(user: string): Promise<{ conversation: ConversationInfo; members: string[] }> {
    return this.create({ kind: "direct", with: user }, true);
  }

  /** Creates a group with you and `members`. Not repeated after a disconnect (it would create two). */
  createGroup(members: string[], title?: string): Promise<{ conversation: ConversationInfo; members: string[] }> {
    return this.create({ kind: "group", members, title }, false);
  }

  private async create(
    fields: Record<string, unknown>,
    repeatable: boolean,
  ): Promise<{ conversation: ConversationInfo; members: string[] }> {
    const r = await this.connection.request<Extract<ServerFrame, { op: "conversation" }>>({ op: "create", ...fields }, repeatable);
    return { conversation: r.conversation, members: r.members };
  }

  /** A conversation's members. */
  async members(conv: string): Promise<string[]> {
    const r = await this.connection.request<Extract<ServerFrame, { op: "members" }>>({ op: "members", conv }, true);
    return r.members;
  }

  /** Adds a member to a group; resolves with the members afterwards. */
  async addMember(conv: string, user: string): Promise<string[]> {
    const r = await this.connection.request<Extract<ServerFrame, { op: "members" }>>({ op: "add_member", conv, user }, true);
    return r.members;
  }

  /** Removes a member from a group (yourself, or anyone in a group you created). */
  async removeMember(conv: string, user: string): Promise<string[]> {
    const r = await this.connection.request<Extract<ServerFrame, { op: "members" }>>({ op: "remove_member", conv, user }, true);
    return r.members;
  }

  /** A user's presence (someone you share a conversation with, or yourself). */
  async presence(user: string): Promise<Presence> {
    const r = await this.connection.request<Extract<ServerFrame, { op: "presence" }>>({ op: "presence", user }, true);
    return { user: r.user, online: r.online, lastSeen: r.last_seen };
  }

  /**
   * Call on every keystroke: sends `typing start` at most every 4 s per conversation and within
   * the protocol's 1 per second (bursts of 5); anything beyond is skipped, never an error.
   */
  typing(conv: string): void {
    if (this.connection.connected && this.throttle.start(conv)) {
      this.connection.write({ op: "typing", conv, state: "start" });
    }
  }

  /** The user stopped typing (cleared the input, left the conversation). `send` does this too. */
  stopTyping(conv: string): void {
    if (this.connection.connected && this.throttle.stop(conv)) {
      this.connection.write({ op: "typing", conv, state: "stop" });
    }
  }

  /** The users typing in `conv` now (you left out). */
  typingIn(conv: string): string[] {
    return this.typers.users(conv);
  }

  /** Marks `conv` read up to and including `seq`; resolves with your stored cursor. */
  async markRead(conv: string, seq: number): Promise<number> {
    const r = await this.connection.request<Extract<ServerFrame, { op: "read" }>>({ op: "read", conv, seq }, true);
    this.ownRead(conv, r.seq);
    return r.seq;
  }

  /** Your unread messages in `conv`, as far as the client knows (the gateway's count on connect, plus what arrived since). */
  unreadCount(conv: string): number {
    return this.unread.get(conv) ?? 0;
  }

  /** Drops the socket and reconnects, resuming everything (also useful after a network change). */
  reconnect(): void {
    this.connection.reconnect();
  }

  /** Closes the client for good: pending sends and requests fail with `ClosedError`. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.connection.close();
    this.sends.failAll();
    this.typers.clear();
  }

  private onReady(user: string): void {
    this.user = user;
    this.readies++;
    for (const sub of this.subs.values()) this.start(sub);
    for (const send of this.sends.all()) this.writeSend(send.clientId);
  }

  private writeSend(clientId: string): void {
    const send = this.sends.get(clientId);
    if (send) this.connection.write({ op: "send", conv: send.conv, client_id: clientId, body: send.body });
  }

  private start(sub: Subscription): void {
    if (sub.starting || this.subs.get(sub.conv) !== sub) return;
    sub.starting = true;
    this.connection
      .request<Extract<ServerFrame, { op: "subscribed" }>>({ op: "subscribe", conv: sub.conv, after: sub.state.seq }, false)
      .then(
        (reply) => {
          sub.starting = false;
          sub.state.started(reply.cursor);
          if (!sub.settle.done) {
            sub.settle.done = true;
            sub.settle.resolve(reply.cursor);
          }
        },
        (e: ChatfabricError) => {
          sub.starting = false;
          if (e instanceof DisconnectedError || e instanceof ClosedError) return; // next ready restarts it
          if (e instanceof CursorExpiredError) return void this.catchUp(sub);
          this.subs.delete(sub.conv);
          if (!sub.settle.done) sub.settle.reject(e);
          this.emit("error", e);
        },
      );
  }

  /** The resume cursor is too old for the stream: read the history after it, then subscribe. */
  private async catchUp(sub: Subscription): Promise<void> {
    sub.starting = true;
    try {
      for await (const m of this.history(sub.conv, { after: sub.state.seq ?? 0, pageSize: 200 })) {
        if (this.subs.get(sub.conv) !== sub) return;
        if (sub.state.seq === undefined || m.seq > sub.state.seq) {
          sub.state.caughtUp(m.seq);
          this.deliver(sub, m);
        }
      }
    } catch {
      // The connection dropped or history failed: the next attempt starts over from the cursor.
    } finally {
      sub.starting = false;
    }
    if (this.connection.connected) this.start(sub);
  }

  private unsubscribe(sub: Subscription): void {
    if (this.subs.get(sub.conv) !== sub) return;
    this.subs.delete(sub.conv);
    this.connection.request({ op: "unsubscribe", conv: sub.conv }, false).catch(() => {});
  }

  private onFrame(frame: ServerFrame): void {
    switch (frame.op) {
      case "msg":
        return this.onMsg(frame);
      case "ack":
        return this.sends.acked({ conv: frame.conv, seq: frame.seq, clientId: frame.client_id, duplicate: frame.duplicate });
      case "error":
        return this.onSendError(frame);
      case "typing":
        if (frame.user !== this.user) this.typers.event(frame.conv, frame.user, frame.state, frame.expires_in);
        return;
      case "presence":
        return this.emit("presence", { user: frame.user, online: frame.online, lastSeen: frame.last_seen, conv: frame.conv });
      case "read":
        if (frame.user === this.user) this.ownRead(frame.conv, frame.seq);
        return this.emit("read", { conv: frame.conv, user: frame.user, seq: frame.seq });
      case "unread":
        return this.onUnread(frame.counts);
      case "unsubscribed":
        this.subs.delete(frame.conv);
        return this.emit("unsubscribed", { conv: frame.conv, reason: frame.reason });
    }
  }

  private onMsg(frame: MsgFrame): void {
    const sub = this.subs.get(frame.conv);
    if (!sub) return;
    const verdict = sub.state.accept(frame);
    if (verdict === "gap") return this.start(sub); // resubscribe from the last good cursor
    if (verdict === "duplicate") return;
    const { op: _op, prev: _prev, ...message } = frame;
    this.deliver(sub, message);
  }

  private deliver(sub: Subscription, message: Message): void {
    this.typers.sent(message.conv, message.sender);
    if (message.seq > (this.readSeq.get(message.conv) ?? 0)) {
      this.setUnread(message.conv, this.unreadCount(message.conv) + 1);
    }
    this.emit("message", message);
    for (const listener of sub.listeners) listener(message);
  }

  private onSendError(frame: Extract<ServerFrame, { op: "error" }>): void {
    const send = frame.ref === undefined ? undefined : this.sends.get(frame.ref);
    if (!send) return;
    if (frame.code === "unavailable" || frame.code === "rate_limited") {
      // Retry with the same client_id, backing off; the send's own timeout bounds it.
      const delay = Math.min(5000, 200 * 2 ** send.refusals++) * (0.5 + Math.random() / 2);
      send.retryTimer = setTimeout(() => this.writeSend(send.clientId), delay);
      return;
    }
    this.sends.fail(send.clientId, errorFromFrame(frame));
  }

  private onUnread(counts: Record<string, number>): void {
    for (const [conv, count] of Object.entries(counts)) {
      // After a reconnect, a resumed subscription already counted what it delivers; the
      // gateway's count would count the replayed messages twice.
      if (this.readies > 1 && this.subs.get(conv)?.cursor !== undefined) continue;
      this.setUnread(conv, count);
    }
  }

  private ownRead(conv: string, seq: number): void {
    if (seq <= (this.readSeq.get(conv) ?? 0)) return;
    this.readSeq.set(conv, seq);
    const latest = this.subs.get(conv)?.cursor;
    if (latest === undefined || seq >= latest) this.setUnread(conv, 0);
  }

  private setUnread(conv: string, count: number): void {
    if (this.unread.get(conv) === count) return;
    this.unread.set(conv, count);
    this.emit("unread", { conv, count });
  }
}
