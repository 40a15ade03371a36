/**
 * The wire protocol's frames, as PROTOCOL.md documents them. The SDK speaks these for you;
 * they are exported for applications that want to log or inspect raw frames.
 * @module
 */

/** A conversation's kind. */
export type ConversationKind = "direct" | "group";

/** A conversation as the gateway lists it. */
export interface ConversationInfo {
  /** Its id (`d-...` for direct conversations, `g-...` for groups). */
  conv: string;
  /** Direct (two users, fixed) or a group. */
  kind: ConversationKind;
  /** A group's title, if it has one. */
  title?: string;
}

/** A stored message, as the application receives it: in conversation order, each once. */
export interface Message {
  /** The conversation. */
  conv: string;
  /** The message's cursor: increasing along the conversation (not consecutive). */
  seq: number;
  /** Server-assigned unique id (UUIDv7). */
  id: string;
  /** The authenticated sender. */
  sender: string;
  /** The sender's idempotency key. */
  client_id: string;
  /** Server time when the message was accepted, ms since the Unix epoch. */
  ts: number;
  /** The text. */
  body: string;
  /**
   * Set when the application's backend posted it through the server API: `"backend"` on behalf
   * of `sender` (who did not type it), `"service"` when `sender` is a service id (`svc_<name>`,
   * never a user). Absent for the sender's own send: show the two differently.
   */
  via?: "backend" | "service";
}

/** A `msg` frame: a {@link Message} plus the cursor of the one before it on the subscription. */
export interface MsgFrame extends Message {
  op: "msg";
  /** The `seq` of the message delivered just before, or the subscription's starting cursor. */
  prev: number;
}

/** Every frame the gateway sends, discriminated by `op`. */
export type ServerFrame =
  | { op: "ready"; user: string; conn: number; ref?: string }
  | { op: "subscribed"; conv: string; cursor: number; ref?: string }
  | { op: "unsubscribed"; conv: string; reason: "requested" | "removed" | string; ref?: string }
  | MsgFrame
  | { op: "ack"; conv: string; client_id: string; seq: number; duplicate: boolean }
  | { op: "conversation"; conversation: ConversationInfo; members: string[]; ref?: string }
  | { op: "conversations"; conversations: ConversationInfo[]; ref?: string }
  | { op: "members"; conv: string; members: string[]; ref?: string }
  | { op: "history"; conv: string; messages: Omit<Message, "conv">[]; ref?: string }
  | { op: "presence"; user: string; online: boolean; last_seen?: number; conv?: string; ref?: string }
  | { op: "typing"; conv: string; user: string; state: "start" | "stop"; expires_in?: number }
  | { op: "read"; conv: string; user: string; seq: number; ref?: string }
  | { op: "unread"; counts: Record<string, number> }
  | { op: "pong"; ref?: string }
  | { op: "error"; code: string; message: string; ref?: string };

/** Close codes of PROTOCOL.md ("Close codes"). */
export const CloseCode = {
  /** The gateway is shutting down: reconnect and resume. */
  GoingAway: 1001,
  /** A binary frame was sent. */
  UnsupportedData: 1003,
  /** A frame over the size limit was sent. */
  TooBig: 1009,
  /** The gateway lost its view of a conversation: reconnect and resume. */
  InternalError: 1011,
  /** Missing, invalid or expired token: get a fresh one and reconnect. */
  Unauthorized: 4001,
  /** The application disconnected the user (logout, ban): the client does not reconnect. */
  Disconnected: 4003,
  /** Slow consumer: reconnect and resume; nothing is lost. */
  SlowConsumer: 4008,
  /** Flood: back off before reconnecting. */
  Flood: 4029,
} as const;
