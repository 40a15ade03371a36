// Test fixtures: a real `chatfabric dev` (nats-server child, gateway, persister, presence) on
// free ports with its own data directory, restartable in place; tokens from its /dev/token.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

const repo = fileURLToPath(new URL("../../../../", import.meta.url));

/** The chatfabric binary: $CHATFABRIC_BIN, else the debug build, else the release build. */
export function binary() {
  if (process.env.CHATFABRIC_BIN) return process.env.CHATFABRIC_BIN;
  for (const profile of ["debug", "release"]) {
    const path = join(repo, "target", profile, "chatfabric");
    if (existsSync(path)) return path;
  }
  throw new Error("no chatfabric binary: run `cargo build` first or set CHATFABRIC_BIN");
}

/** A TCP port free right now on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Polls `check` until it returns a truthy value, or fails after `ms` saying what it waited for. */
export async function waitFor(check, what, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A running `chatfabric dev`; `restart()` stops it and starts it again on the same data and port. */
export class DevFabric {
  static async start(extraArgs = []) {
    const fabric = new DevFabric(mkdtempSync(join(tmpdir(), "chatfabric-js-")), await freePort(), extraArgs);
    await fabric.spawn();
    return fabric;
  }

  constructor(dir, port, extraArgs) {
    this.dir = dir;
    this.port = port;
    this.extraArgs = extraArgs;
    this.http = `http://127.0.0.1:${port}`;
    this.ws = `ws://127.0.0.1:${port}/ws`;
    this.output = "";
  }

  async spawn() {
    const args = ["dev", "--data", this.dir, "--nats-port", "0", "--listen", `127.0.0.1:${this.port}`, ...this.extraArgs];
    this.child = spawn(binary(), args, { env: { ...process.env, CHATFABRIC_LOG: "warn" }, stdio: ["ignore", "pipe", "pipe"] });
    this.child.stdout.on("data", (d) => (this.output += d));
    this.child.stderr.on("data", (d) => (this.output += d));
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.exited = exited;
    await waitFor(async () => {
      if (this.child.exitCode !== null) throw new Error(`chatfabric dev exited:\n${this.output}`);
      try {
        return (await fetch(`${this.http}/readyz`)).ok;
      } catch {
        return false;
      }
    }, "chatfabric dev to be ready", 30_000);
  }

  /** The child nats-server's URL, as `dev` printed it. */
  get natsUrl() {
    return /NATS\s+(nats:\/\/\S+)/.exec(this.output)?.[1];
  }

  /** The server API key `dev` printed last (a new one at each start; every scope). */
  get apiKey() {
    return [...this.output.matchAll(/key (cfk_[0-9a-f]+)/g)].at(-1)?.[1];
  }

  /** A server API call with the dev key: the status and the parsed JSON body. */
  async serverApi(method, path, body) {
    const res = await fetch(`${this.http}/v1/server${path}`, {
      method,
      headers: { authorization: `Bearer ${this.apiKey}` },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  }

  /** The same URL with the gateway role's credentials, from the users file `dev` wrote. */
  get gatewayNatsUrl() {
    const conf = readFileSync(join(this.dir, "nats-auth.conf"), "utf8");
    const password = /user: gateway\s+password: "([^"]+)"/.exec(conf)?.[1];
    return this.natsUrl?.replace("nats://", `nats://gateway:${password}@`);
  }

  async stop() {
    if (this.child.exitCode === null) this.child.kill("SIGTERM");
    await this.exited;
  }

  async restart() {
    await this.stop();
    await this.spawn();
  }

  async close() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A token for `user` from the dev endpoint, valid `ttlSecs`. */
  async token(user, ttlSecs) {
    const res = await fetch(`${this.http}/dev/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(ttlSecs ? { user, ttl_secs: ttlSecs } : { user }),
    });
    if (!res.ok) throw new Error(`token for ${user}: ${res.status} ${await res.text()}`);
    return (await res.json()).token;
  }
}

/**
 * A WebSocket (the `ws` package) whose incoming frames pass `filter(frame, socket)` first: a
 * test stands in for a lossy network with it. Every instance is kept in `sockets`, and every
 * frame the client sent in `sent`.
 */
export function interceptingWebSocket(filter = () => true) {
  const sockets = [];
  const sent = [];
  class Intercepting {
    constructor(url) {
      this.inner = new WebSocket(url);
      sockets.push(this);
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      this.inner.onopen = (e) => this.onopen?.(e);
      this.inner.onclose = (e) => this.onclose?.(e);
      this.inner.onerror = (e) => this.onerror?.(e);
      this.inner.onmessage = (e) => {
        if (filter(JSON.parse(e.data), this)) this.onmessage?.({ data: e.data });
      };
    }
    get readyState() {
      return this.inner.readyState;
    }
    send(data) {
      sent.push(JSON.parse(data));
      this.inner.send(data);
    }
    close(code, reason) {
      this.inner.close(code, reason);
    }
    /** Drops the TCP connection without a close frame, as a network failure does. */
    terminate() {
      this.inner.terminate();
    }
  }
  return { WebSocket: Intercepting, sockets, sent };
}
