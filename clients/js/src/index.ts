/**
 * chatfabric's client SDK for browsers and Node 20+.
 *
 * ```ts
 * import { connect } from "@chatfabric/client";
 * const client = connect("ws://127.0.0.1:8080/ws", { getToken: () => fetchToken() });
 * client.on("state", (s) => console.log(s.state));
 * client.subscribe(conv, { onMessage: (m) => console.log(m.sender, m.body) });
 * const ack = await client.send(conv, "hello");
 * for await (const m of client.history(conv)) console.log(m.seq, m.body);
 * ```
 * @module
 */
import { Client, type ClientOptions } from "./client.js";
import { EventsClient, type EventsOptions } from "./events.js";

export * from "./errors.js";
export * from "./protocol.js";
export type { Ack, SendPromise } from "./sends.js";
export type { BackoffOptions } from "./backoff.js";
export type { HistoryOptions } from "./history.js";
export type {
  ConnectionState,
  ConnectionOptions,
  TokenSource,
  WebSocketConstructor,
  WebSocketLike,
} from "./connection.js";
export { Client, Subscription } from "./client.js";
export type { ClientEvents, ClientOptions, Presence, ReadReceipt } from "./client.js";
export { EventsClient } from "./events.js";
export type { EventsClientEvents, EventsOptions, EventsState } from "./events.js";

/**
 * Connects to a gateway's WebSocket endpoint (`ws://host:port/ws`) and keeps connected:
 * reconnects with jittered backoff, asks `getToken` again after a 4001, resumes every
 * subscription from its cursor and retries unacknowledged sends.
 */
export function connect(url: string, options: ClientOptions): Client {
  return new Client(url, options);
}

/**
 * Receives over server-sent events from a gateway (`http://host:port`), for where WebSockets are
 * blocked: messages, presence, typing and read events, with the same gap-free resume. Receive
 * only; send over HTTP (`POST /v1/conversations/{conv}/messages`) or a WebSocket client.
 */
export function connectEvents(baseUrl: string, options: EventsOptions): EventsClient {
  return new EventsClient(baseUrl.replace(/\/+$/, ""), options);
}
