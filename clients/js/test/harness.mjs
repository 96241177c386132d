// Test harness: starts the real `herald` binary with a test configuration, signs tokens, calls
// the HTTP API. Every test talks to a real server over real sockets.
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

const here = new URL(".", import.meta.url).pathname;
export const BIN = process.env.HERALD_BIN ?? resolve(here, "../../../target/debug/herald");
export const SECRET = "js-sdk-test-secret-0123456789abcdef";
export const API_KEY = "js-sdk-test-api-key-0123456789";

/** An HS256 JWT for `sub`, valid for `ttl` seconds (negative: already expired). */
export function token(sub, { ttl = 3600, channels } = {}) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + ttl };
  if (channels) claims.channels = channels;
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

/** The namespaces every test server has. */
const NAMESPACES = `
[[namespace]]
name = "chat"
publish = true
presence = true
join_leave = true
typing = true
history_size = 100
history_ttl = "1h"

[[namespace]]
name = "room"
publish = true
history_size = 10000
history_ttl = "1h"

[[namespace]]
name = "news"

[[namespace]]
name = "site"
subscribe = "claims"
`;

export class Herald {
  /**
   * Starts `herald serve`. Options: `top` (top-level TOML keys), `limits` (lines for
   * [limits]), `admin` (lines for [admin]), `socketio` (lines for [socketio], its
   * [[socketio.event]] tables after them), `namespaces` (more [[namespace]] tables), `durable` (history on disk, kept across restarts),
   * `port`.
   */
  static async start(options = {}) {
    const server = new Herald(options);
    await server.launch(options.port ?? 0);
    return server;
  }

  constructor(options) {
    this.options = options;
    this.dir = mkdtempSync(join(tmpdir(), "herald-js-"));
    this.exits = 0;
  }

  get http() {
    return `http://127.0.0.1:${this.port}`;
  }
  get ws() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  config(port) {
    const { top = "", limits = "", admin = "", socketio = "", namespaces = "", durable = false } = this.options;
    return `listen = "127.0.0.1:${port}"
allowed_origins = ["*"]
${durable ? `history_store = "disk"\ndata_dir = "${join(this.dir, "data")}"` : ""}
${top}
[auth]
jwt_secret = "${SECRET}"
jwt_leeway = "0s"
[api]
keys = ["${API_KEY}"]
[limits]
connections_per_ip_per_second = 100000
connections_per_user = 1000
shutdown_drain = "200ms"
${limits}
[admin]
${admin}
[socketio]
${socketio}
${NAMESPACES}
${namespaces}`;
  }

  async launch(port) {
    const path = join(this.dir, "herald.toml");
    writeFileSync(path, this.config(port));
    // Herald refuses HERALD_* variables it does not know (such as the tests' HERALD_BIN), and
    // the test configuration is the file alone.
    const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("HERALD_")));
    const child = spawn(BIN, ["serve", "--config", path], {
      env: { ...env, HERALD_LOG: process.env.HERALD_LOG ?? "herald=info" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    this.child = child;
    this.exited = new Promise((done) => child.once("exit", done));
    const lines = createInterface({ input: child.stdout });
    const address = await new Promise((found, fail) => {
      const timer = setTimeout(() => fail(new Error("herald did not start within 10 s")), 10000);
      lines.on("line", (line) => {
        if (process.env.HERALD_ECHO) console.error(`herald: ${line}`);
        const match = /address=(\S+)/.exec(line);
        if (match) {
          clearTimeout(timer);
          found(match[1]);
        }
      });
      child.once("exit", (code) => fail(new Error(`herald exited with ${code} before listening`)));
    });
    this.port = Number(address.split(":").pop());
  }

  /** Stops the server: SIGTERM (graceful, clients get 1012) or SIGKILL (a crash). */
  async stop(signal = "SIGTERM") {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    await this.exited;
  }

  /** Stops, waits `downMs`, and starts again on the same port with the same data. */
  async restart({ signal = "SIGTERM", downMs = 300 } = {}) {
    await this.stop(signal);
    await sleep(downMs);
    for (let tries = 0; ; tries++) {
      try {
        return await this.launch(this.port);
      } catch (error) {
        if (tries >= 20) throw error;
        await sleep(100); // the port may still be held for a moment
      }
    }
  }

  async close() {
    await this.stop("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }

  async api(method, path, body) {
    const response = await fetch(`${this.http}${path}`, {
      method,
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await response.json();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
    return json;
  }

  publish(channel, data, event) {
    return this.api("POST", "/api/publish", { channel, event, data });
  }

  /** This node's subscriber count for `channel`. */
  async subscribers(channel) {
    const { channels } = await this.api("GET", `/api/channels?prefix=${encodeURIComponent(channel)}`);
    return channels.find((c) => c.channel === channel)?.subscribers ?? 0;
  }
}

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

/** Polls `check` until it returns a truthy value, or fails after `ms`. */
export async function eventually(check, { ms = 5000, what = "condition" } = {}) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Resolves with the first `event` of `target` (a client's `on(event)`, or a subscription's
 * `onJoin`-style method), or rejects after `ms`.
 */
export function once(target, event, ms = 5000) {
  const method = `on${event[0].toUpperCase()}${event.slice(1)}`;
  const listen = typeof target[method] === "function" ? (f) => target[method](f) : (f) => target.on(event, f);
  return new Promise((done, fail) => {
    const timer = setTimeout(() => {
      off();
      fail(new Error(`no ${event} within ${ms} ms`));
    }, ms);
    const off = listen((...args) => {
      clearTimeout(timer);
      off();
      done(args.length > 1 ? args : args[0]);
    });
  });
}

export const unique = (prefix) => `${prefix}${randomBytes(4).toString("hex")}`;
