// The receive-only transport (server-sent events) and the demo's HTTP endpoints, against real
// processes.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { connect, connectEvents, ForbiddenError } from "../dist/index.js";
import { binary, DevFabric, freePort, waitFor } from "./support/fabric.mjs";

let fabric;
before(async () => {
  fabric = await DevFabric.start();
});
after(async () => {
  await fabric?.close();
});

test("an event stream delivers in order, resumes after a drop and repairs a chain break", async () => {
  const bob = connect(fabric.ws, { getToken: () => fabric.token("bob") });
  await waitFor(() => bob.state.state === "connected", "bob connected");
  const { conversation } = await bob.createGroup(["alice"], "sse");
  const conv = conversation.conv;

  // A fetch whose stream loses the second msg event once, as a broken proxy might.
  let msgEvents = 0;
  const lossyFetch = async (url, init) => {
    const res = await fetch(url, init);
    if (!res.headers.get("content-type")?.startsWith("text/event-stream")) return res;
    let carry = "";
    const filtered = res.body.pipeThrough(new TextDecoderStream()).pipeThrough(
      new TransformStream({
        transform(chunk, out) {
          carry += chunk;
          let end;
          while ((end = carry.indexOf("\n\n")) >= 0) {
            const event = carry.slice(0, end + 2);
            carry = carry.slice(end + 2);
            if (event.includes("event: msg") && ++msgEvents === 2) continue;
            out.enqueue(new TextEncoder().encode(event));
          }
        },
      }),
    );
    return new Response(filtered, { status: res.status, headers: res.headers });
  };
  const alice = connectEvents(fabric.http, {
    getToken: () => fabric.token("alice"),
    convs: [conv],
    fetch: lossyFetch,
    backoff: { initialMs: 50, maxMs: 500 },
  });
  const seen = [];
  const states = [];
  alice.on("message", (m) => seen.push(m.body));
  alice.on("state", (s) => states.push(s));
  await waitFor(() => alice.state.state === "connected", "the stream");
  // The stream is subscribed once its first event arrived; send after that.
  for (let i = 1; i <= 4; i++) await bob.send(conv, `s${i}`);
  await waitFor(() => seen.length >= 4, "four messages");
  assert.deepEqual(seen, ["s1", "s2", "s3", "s4"]);
  assert.ok(states.some((s) => s.reason === "chain break"), "the break was noticed and repaired");

  alice.reconnect();
  await bob.send(conv, "s5");
  await waitFor(() => seen.length >= 5, "the fifth after a reconnect");
  assert.deepEqual(seen, ["s1", "s2", "s3", "s4", "s5"]);

  const history = [];
  for await (const m of alice.history(conv, { pageSize: 2 })) history.push(m.body);
  assert.deepEqual(history, ["s5", "s4", "s3", "s2", "s1"]);
  alice.close();

  const carol = connectEvents(fabric.http, { getToken: () => fabric.token("carol"), convs: [conv] });
  const error = await new Promise((resolve) => carol.on("error", resolve));
  assert.ok(error instanceof ForbiddenError);
  assert.equal(carol.state.willRetry, false);
  bob.close();
});

test("dev serves the page and mints tokens; a gateway with real auth has no token endpoint", async () => {
  const page = await fetch(`${fabric.http}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type"), /text\/html/);
  assert.match(await page.text(), /chatfabric/);
  assert.equal((await fetch(`${fabric.http}/chatfabric.js`)).status, 200);
  const refused = await fetch(`${fabric.http}/dev/token`, { method: "POST", body: '{"user":"no spaces"}' });
  assert.equal(refused.status, 400);
  assert.equal((await refused.json()).code, "invalid");

  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "chatfabric-gw-"));
  const gateway = spawn(
    binary(),
    ["gateway", "--nats-url", fabric.gatewayNatsUrl, "--listen", `127.0.0.1:${port}`, "--jwt-secret", "production-like", "--demo-page", "--sqlite-path", join(dir, "h.db")],
    { env: { ...process.env, CHATFABRIC_LOG: "warn" }, stdio: "ignore" },
  );
  try {
    const base = `http://127.0.0.1:${port}`;
    await waitFor(async () => (await fetch(`${base}/readyz`).catch(() => undefined))?.ok, "the gateway", 30_000);
    assert.equal((await fetch(`${base}/`)).status, 200, "--demo-page serves the page");
    const mint = await fetch(`${base}/dev/token`, { method: "POST", body: '{"user":"mallory"}' });
    assert.equal(mint.status, 404, "no token endpoint outside dev");
  } finally {
    gateway.kill("SIGTERM");
    await new Promise((r) => gateway.once("exit", r));
    rmSync(dir, { recursive: true, force: true });
  }
});
