// The SDK against a real `chatfabric dev`: resume, retries, token refresh, chain repair,
// history walks, typed errors, typing, presence, receipts and unread counts.
import assert from "node:assert/strict";
import { after, afterEach, before, test } from "node:test";
import { connect, ForbiddenError, TooLargeError, InvalidError } from "../dist/index.js";
import { DevFabric, interceptingWebSocket, waitFor } from "./support/fabric.mjs";

let fabric;
const clients = [];
before(async () => {
  fabric = await DevFabric.start();
});
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});
after(async () => {
  await fabric?.close();
});

/** A client for `user` that fetches its tokens from the dev endpoint, recording what it sees. */
function client(user, options = {}) {
  const c = connect(fabric.ws, {
    getToken: () => fabric.token(user),
    backoff: { initialMs: 50, maxMs: 500 },
    ...options,
  });
  c.seen = [];
  c.states = [];
  c.on("message", (m) => c.seen.push(m));
  c.on("state", (s) => c.states.push(s));
  clients.push(c);
  return c;
}

const connected = (c) => waitFor(() => c.state.state === "connected", "connected");
const bodies = (c, conv) => c.seen.filter((m) => m.conv === conv).map((m) => m.body);

async function group(owner, ...others) {
  await connected(owner);
  const { conversation } = await owner.createGroup(others, "test");
  return conversation.conv;
}

/** Every message's seq grows: in order, none twice. */
function assertOrdered(messages) {
  for (let i = 1; i < messages.length; i++) assert.ok(messages[i].seq > messages[i - 1].seq, `order at ${i}`);
}

test("resume across a gateway restart: nothing lost, nothing repeated", async () => {
  const alice = client("alice");
  const bob = client("bob");
  const conv = await group(alice, "bob");
  await alice.subscribe(conv).ready;
  for (let i = 1; i <= 5; i++) await bob.send(conv, `m${i}`);
  await waitFor(() => alice.seen.length === 5, "the first five");

  await fabric.stop();
  await waitFor(() => alice.state.state !== "connected" && bob.state.state !== "connected", "both to notice");
  // Sent while the fabric is down: kept and retried with the same client_id.
  const offline = [6, 7, 8].map((i) => bob.send(conv, `m${i}`));
  await fabric.spawn();
  const acks = await Promise.all(offline);
  assert.deepEqual(acks.map((a) => a.duplicate), [false, false, false]);
  for (let i = 9; i <= 10; i++) await bob.send(conv, `m${i}`);

  await waitFor(() => bodies(alice, conv).length >= 10, "all ten at alice", 30_000);
  assert.deepEqual(bodies(alice, conv), Array.from({ length: 10 }, (_, i) => `m${i + 1}`));
  assertOrdered(alice.seen);
  assert.ok(alice.states.some((s) => s.state === "disconnected" && s.willRetry), "alice saw the drop");
  const stored = [];
  for await (const m of alice.history(conv)) stored.push(m.body);
  assert.equal(stored.length, 10, "stored once each");
});

test("a send whose ack was lost is retried with the same client_id and stored once", async () => {
  let dropAcks = true;
  const lossy = interceptingWebSocket((frame, socket) => {
    if (frame.op === "ack" && dropAcks) {
      dropAcks = false;
      socket.terminate(); // the message is stored; its ack dies with the connection
      return false;
    }
    return true;
  });
  const alice = client("alice", { WebSocket: lossy.WebSocket });
  const conv = await group(alice, "bob");
  const ack = await alice.send(conv, "once");
  assert.equal(ack.duplicate, true, "the retry found the stored original");
  const sends = lossy.sent.filter((f) => f.op === "send");
  assert.equal(sends.length, 2, "sent twice");
  assert.equal(sends[0].client_id, sends[1].client_id, "with one client_id");
  assert.equal(lossy.sockets.length, 2, "over two connections");
  const stored = [];
  for await (const m of alice.history(conv)) stored.push(m);
  assert.deepEqual(stored.map((m) => [m.body, m.client_id, m.seq]), [["once", ack.clientId, ack.seq]]);
});

test("a send answered `unavailable` that was stored is retried with its client_id and resolves once", async () => {
  let replaced = false;
  const flaky = interceptingWebSocket((frame, socket) => {
    if (frame.op === "ack" && !replaced) {
      replaced = true;
      // What a gateway answers when the PubAck was late although JetStream stored the message
      // (PROTOCOL.md: `unavailable` means "not known to be stored").
      const refusal = { op: "error", code: "unavailable", message: "timed out", ref: frame.client_id };
      socket.onmessage?.({ data: JSON.stringify(refusal) });
      return false;
    }
    return true;
  });
  const alice = client("alice", { WebSocket: flaky.WebSocket });
  const conv = await group(alice, "bob");
  const ack = await alice.send(conv, "stored once");
  assert.equal(replaced, true, "the first ack was turned into `unavailable`");
  assert.equal(ack.duplicate, true, "the retry found the stored original");
  const sends = flaky.sent.filter((f) => f.op === "send");
  assert.deepEqual(sends.map((f) => f.client_id), [ack.clientId, ack.clientId], "retried with its client_id");
  const stored = [];
  for await (const m of alice.history(conv)) stored.push(m);
  assert.deepEqual(stored.map((m) => [m.body, m.seq]), [["stored once", ack.seq]]);
});

test("an expired token (4001) is refreshed and the subscription resumes without loss", async () => {
  let calls = 0;
  const alice = client("alice", {
    // The first token lives 1 s (plus the gateway's 5 s leeway at auth); later ones a day.
    getToken: () => fabric.token("alice", ++calls === 1 ? 1 : undefined),
  });
  const bob = client("bob");
  const conv = await group(alice, "bob");
  await alice.subscribe(conv).ready;
  await bob.send(conv, "before");
  await waitFor(() => alice.states.some((s) => s.code === 4001), "the 4001 close", 20_000);
  await bob.send(conv, "during");
  await waitFor(() => calls >= 2 && alice.state.state === "connected", "a fresh token and a new connection");
  await bob.send(conv, "after");
  await waitFor(() => bodies(alice, conv).length >= 3, "three messages");
  assert.deepEqual(bodies(alice, conv), ["before", "during", "after"]);
  const closed = alice.states.find((s) => s.code === 4001);
  assert.equal(closed.willRetry, true);
});

test("the application's posts carry via, and its disconnect (4003) ends the client", async () => {
  const alice = client("alice");
  const conv = await group(alice, "bob");
  await alice.subscribe(conv).ready;
  const posted = await fabric.serverApi("POST", `/conversations/${conv}/messages`, {
    service: "billing",
    body: "invoice ready",
    idempotency_key: "inv-1",
  });
  assert.equal(posted.status, 200, JSON.stringify(posted.body));
  await alice.send(conv, "mine");
  await waitFor(() => bodies(alice, conv).length >= 2, "both messages");
  const seen = alice.seen.map((m) => [m.sender, m.via, m.body]);
  assert.deepEqual(seen, [["svc_billing", "service", "invoice ready"], ["alice", undefined, "mine"]]);
  const cut = await fabric.serverApi("POST", "/users/alice/disconnect");
  assert.equal(cut.status, 200, JSON.stringify(cut.body));
  const closed = await waitFor(() => alice.states.find((s) => s.code === 4003), "the 4003 close");
  assert.equal(closed.willRetry, false);
  assert.equal(alice.state.state, "disconnected");
});

test("a break in the prev chain is repaired by resubscribing from the last good cursor", async () => {
  let msgs = 0;
  const lossy = interceptingWebSocket((frame) => !(frame.op === "msg" && ++msgs === 3));
  const alice = client("alice", { WebSocket: lossy.WebSocket });
  const bob = client("bob");
  const conv = await group(alice, "bob");
  const sub = alice.subscribe(conv);
  await sub.ready;
  const acks = [];
  for (let i = 1; i <= 6; i++) acks.push(await bob.send(conv, `c${i}`));
  await waitFor(() => bodies(alice, conv).length >= 6, "six messages");
  assert.deepEqual(bodies(alice, conv), ["c1", "c2", "c3", "c4", "c5", "c6"]);
  assertOrdered(alice.seen);
  const subscribes = lossy.sent.filter((f) => f.op === "subscribe");
  assert.equal(subscribes.length, 2, "one resubscribe");
  assert.equal(subscribes[1].after, acks[1].seq, "from the last message that passed the check");
  assert.equal(sub.cursor, acks[5].seq);
});

test("history walks visit every message once, back and forward", async () => {
  const bob = client("bob");
  const conv = await group(bob, "alice");
  const seqs = [];
  for (let i = 0; i < 40; i++) seqs.push((await bob.send(conv, `h${i}`)).seq);
  const back = [];
  for await (const m of bob.history(conv, { pageSize: 7 })) back.push(m.seq);
  assert.deepEqual(back, [...seqs].reverse());
  const forward = [];
  for await (const m of bob.history(conv, { after: 0, pageSize: 6 })) forward.push(m.seq);
  assert.deepEqual(forward, seqs);
  const older = [];
  for await (const m of bob.history(conv, { before: seqs[10], pageSize: 4 })) older.push(m.seq);
  assert.deepEqual(older, seqs.slice(0, 10).reverse());
});

test("a cursor the stream no longer keeps falls back to history, then resumes live", async () => {
  let faked = false;
  const expiring = interceptingWebSocket(() => true);
  const bob = client("bob");
  const conv = await group(bob, "alice");
  for (let i = 1; i <= 3; i++) await bob.send(conv, `e${i}`);
  const alice = client("alice", { WebSocket: expiring.WebSocket });
  await connected(alice);
  // The gateway answers a too-old cursor with cursor_expired: stand in for it once.
  const socket = expiring.sockets[0];
  const send = socket.send.bind(socket);
  socket.send = (data) => {
    const f = JSON.parse(data);
    if (f.op === "subscribe" && f.after !== undefined && !faked) {
      faked = true;
      const error = { op: "error", code: "cursor_expired", message: "too old", ref: f.ref };
      return setTimeout(() => socket.onmessage({ data: JSON.stringify(error) }), 0);
    }
    send(data);
  };
  alice.subscribe(conv, { after: 0 });
  await waitFor(() => bodies(alice, conv).length >= 3, "the history");
  await bob.send(conv, "e4");
  await waitFor(() => bodies(alice, conv).length >= 4, "the live one");
  assert.deepEqual(bodies(alice, conv), ["e1", "e2", "e3", "e4"]);
  assert.ok(faked);
});

test("every gateway error is a typed error", async () => {
  const alice = client("alice");
  const carol = client("carol");
  const conv = await group(alice, "bob");
  await connected(carol);
  await assert.rejects(carol.send(conv, "not a member"), ForbiddenError);
  await assert.rejects(alice.send(conv, "x".repeat(5000)), TooLargeError);
  await assert.rejects(alice.createDirect("not valid!"), InvalidError);
  await assert.rejects(alice.markRead(conv, 1e9), (e) => e instanceof InvalidError && e.code === "invalid");
});

test("typing, presence, read receipts and unread counts", async () => {
  const alice = client("alice");
  const bob = client("bob");
  const conv = await group(alice, "bob");
  await connected(bob);
  const typing = [];
  alice.on("typing", (t) => typing.push(t));
  await alice.subscribe(conv).ready;
  await bob.subscribe(conv).ready;

  bob.typing(conv);
  bob.typing(conv); // throttled: one start
  await waitFor(() => typing.some((t) => t.users.includes("bob")), "bob typing");
  assert.deepEqual(alice.typingIn(conv), ["bob"]);
  const ack = await bob.send(conv, "typed"); // ends the typing
  await waitFor(() => alice.typingIn(conv).length === 0, "bob stopped");

  const now = await alice.presence("bob");
  assert.equal(now.online, true);
  assert.ok(now.lastSeen > 0);
  await waitFor(() => alice.unreadCount(conv) === 1, "alice's unread count");
  await bob.send(conv, "second");
  await waitFor(() => alice.unreadCount(conv) === 2, "two unread");
  const bobSees = [];
  bob.on("read", (r) => bobSees.push(r));
  assert.equal(await alice.markRead(conv, ack.seq), ack.seq);
  await waitFor(() => bobSees.some((r) => r.user === "alice" && r.seq === ack.seq), "bob sees the receipt");
  // A new device of alice's gets the gateway's count: one message after her read cursor.
  const fresh = client("alice");
  await waitFor(() => fresh.unreadCount(conv) === 1, "the unread count on connect");
  fresh.close();

  const presence = [];
  alice.on("presence", (p) => presence.push(p));
  bob.close();
  await waitFor(() => presence.some((p) => p.user === "bob" && !p.online), "bob offline", 15_000);
  const last = await alice.presence("bob");
  assert.equal(last.online, false);
  assert.ok(last.lastSeen > 0);
});
