/**
 * Typed errors: one class per error code of PROTOCOL.md, plus the SDK's own.
 *
 * ```ts
 * try { await client.send(conv, text); }
 * catch (e) { if (e instanceof ForbiddenError) showNotAMember(); else throw e; }
 * ```
 * @module
 */

/** The error codes of PROTOCOL.md ("Errors"). */
export type ErrorCode =
  | "bad_frame"
  | "unknown_op"
  | "invalid"
  | "too_large"
  | "unauthenticated"
  | "forbidden"
  | "not_found"
  | "server_managed"
  | "conflict"
  | "rate_limited"
  | "cursor_expired"
  | "unavailable";

/** Every error the SDK rejects with or reports. `code` is machine-readable. */
export class ChatfabricError extends Error {
  /** A PROTOCOL.md error code, or one of the SDK's (`disconnected`, `timeout`, ...). */
  readonly code: string;
  /** The `ref` of the request that failed (a send's `client_id`), when there was one. */
  readonly ref?: string;
  constructor(code: string, message: string, ref?: string) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.ref = ref;
  }
}

/** `bad_frame`: the frame was not JSON, or not an object with a string `op` (an SDK bug). */
export class BadFrameError extends ChatfabricError {}
/** `unknown_op`: the gateway does not know the operation (an older gateway?). */
export class UnknownOpError extends ChatfabricError {}
/** `invalid`: a field is missing or invalid (ids, empty body, `read` past the newest message). */
export class InvalidError extends ChatfabricError {}
/** `too_large`: a body over 4 KiB, or a group title over 200 bytes. */
export class TooLargeError extends ChatfabricError {}
/** `unauthenticated`: not authenticated, or authenticated twice. */
export class UnauthenticatedError extends ChatfabricError {}
/** `forbidden`: not a member, or not allowed to do this to the conversation. */
export class ForbiddenError extends ChatfabricError {}
/** `not_found`: the conversation does not exist. */
export class NotFoundError extends ChatfabricError {}
/**
 * `server_managed`: the gateway leaves membership to the application's backend
 * (`--client-membership groups` or `off`): ask the backend to create or change the conversation.
 */
export class ServerManagedError extends ChatfabricError {}
/** `conflict`: (server API only) a conversation with this id exists with another kind, title or members. */
export class ConflictError extends ChatfabricError {}
/** `rate_limited`: too many frames per second; the frame was dropped. */
export class RateLimitedError extends ChatfabricError {}
/** `cursor_expired`: a resume cursor older than the stream keeps (the SDK reads history instead). */
export class CursorExpiredError extends ChatfabricError {}
/** `unavailable`: storage unreachable or slow (sends are retried for you). */
export class UnavailableError extends ChatfabricError {}

/** The connection dropped before a request that cannot be safely repeated was answered. */
export class DisconnectedError extends ChatfabricError {
  constructor(message = "the connection dropped before the gateway answered") {
    super("disconnected", message);
  }
}
/** The client was closed with {@link Client.close}; nothing more will be sent. */
export class ClosedError extends ChatfabricError {
  constructor() {
    super("closed", "the client is closed");
  }
}
/** A request got no answer in time. */
export class TimeoutError extends ChatfabricError {
  constructor(message: string, ref?: string) {
    super("timeout", message, ref);
  }
}
/**
 * A send was not acknowledged within `sendTimeoutMs`. It may or may not have been stored; the SDK
 * stops retrying before the gateway's duplicate window (2 min) ends, so a retry is never stored
 * twice.
 */
export class SendTimeoutError extends ChatfabricError {
  constructor(clientId: string, ms: number) {
    super("send_timeout", `not acknowledged within ${ms} ms; it may or may not be stored`, clientId);
  }
}
/** More unacknowledged sends than `maxPendingSends`: wait for some acks before sending more. */
export class SendQueueFullError extends ChatfabricError {
  constructor(limit: number) {
    super("send_queue_full", `${limit} sends are waiting for their ack; wait before sending more`);
  }
}

const byCode: Record<ErrorCode, new (code: string, message: string, ref?: string) => ChatfabricError> = {
  bad_frame: BadFrameError,
  unknown_op: UnknownOpError,
  invalid: InvalidError,
  too_large: TooLargeError,
  unauthenticated: UnauthenticatedError,
  forbidden: ForbiddenError,
  not_found: NotFoundError,
  server_managed: ServerManagedError,
  conflict: ConflictError,
  rate_limited: RateLimitedError,
  cursor_expired: CursorExpiredError,
  unavailable: UnavailableError,
};

/** The typed error for an `error` frame (or an HTTP error body) of the gateway. */
export function errorFromFrame(frame: { code: string; message?: string; ref?: string }): ChatfabricError {
  const Class = byCode[frame.code as ErrorCode] ?? ChatfabricError;
  return new Class(frame.code, frame.message ?? frame.code, frame.ref);
}
