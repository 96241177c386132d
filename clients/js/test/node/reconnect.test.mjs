// Reconnects against the real server: restarts with durable and memory history, token refresh,
// a token getter that fails, and a thousand clients coming back after a crash.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, connect } from "node:net";
import WebSocket from "ws";
import { HeraldClient, ClientCode } from "herald-client";
import { HeraldServer } from "herald-client/server";
import { Herald, API_KEY, token, eventually, once, unique, sleep } from "../harness.mjs";

/**
 * Publishes `count` numbered messages one after another with the SDK's backend client, whose
 * retries (with one idempotency key per publication) carry it across the restart.
 */
async function publishSequence(server, channel, count, pauseMs) {
  const backend = new HeraldServer({ url: server.http, apiKey: API_KEY, retries: 100, timeout: 2000, backoff: { base: 50, cap: 200 } });
  for (let n = 1; n <= count; n++) {
    await backend.publish(channel, "n", n);
    await sleep(pauseMs);
  }
}

async function restartWhilePublishing({ durable }) {
  const server = await Herald.start({ durable });
  try {
    const channel = unique("room:r");
    const client = new HeraldClient({ url: server.ws, token: token("survivor"), WebSocket, backoff: { base: 200, cap: 1000 } });
    const sub = client.subscribe(channel);
    const seen = [];
    const subscribed = [];
    sub.on("n", (n, p) => seen.push({ n, offset: p.offset }));
    sub.onSubscribed((info) => subscribed.push(info));
    const drops = [];
    client.on("disconnected", (info) => drops.push(info));
    client.connect();
    await sub.ready();
    const count = 60;
    const publishing = publishSequence(server, channel, count, 10);
    await eventually(() => seen.length >= 15, { what: "the first publications" });
    await server.restart({ signal: "SIGTERM", downMs: 500 });
    await publishing;
    await eventually(() => client.state === "connected" && subscribed.length === 2, { what: "the resubscribe" });
    return { seen, subscribed, drops, client, count, sub };
  } finally {
    await server.close();
  }
}

test("a restart with durable history: every publication once, in order", async () => {
  const { seen, subscribed, drops, client, count } = await restartWhilePublishing({ durable: true });
  client.disconnect();
  assert.ok(drops.length >= 1 && drops[0].code === 1012, `dropped with 1012: ${JSON.stringify(drops)}`);
  assert.equal(subscribed[1].resubscribed, true);
  assert.equal(subscribed[1].recovered, true);
  assert.deepEqual(seen.map((s) => s.n), Array.from({ length: count }, (_, i) => i + 1));
  assert.deepEqual(seen.map((s) => s.offset), Array.from({ length: count }, (_, i) => i + 1));
});

test("a restart with memory history: the subscription says recovered:false", async () => {
  const { subscribed, client } = await restartWhilePublishing({ durable: false });
  client.disconnect();
  assert.equal(subscribed[1].resubscribed, true);
  assert.equal(subscribed[1].recovered, false, "the new epoch cannot recover the old one");
});

test("a token valid for a few seconds is refreshed in-band; the connection never closes", async () => {
  const server = await Herald.start();
  try {
    let fetched = 0;
    const client = new HeraldClient({
      url: server.ws,
      WebSocket,
      token: async () => {
        fetched++;
        return token("short", { ttl: 3 });
      },
    });
    const drops = [];
    client.on("disconnected", (info) => drops.push(info));
    client.connect();
    const sub = client.subscribe("news:refresh");
    await sub.ready();
    const firstExpiry = client.info.expiresAt;
    await sleep(7500);
    assert.deepEqual(drops, [], "never disconnected");
    assert.equal(client.state, "connected");
    assert.ok(fetched >= 3, `the getter was asked again (${fetched} times)`);
    assert.ok(client.info.expiresAt > firstExpiry + 3, "the expiry moved on");
    const got = new Promise((done) => sub.on("still", done));
    await server.publish("news:refresh", "here", "still");
    assert.equal(await got, "here");
    client.disconnect();
  } finally {
    await server.close();
  }
});

test("a token getter that throws: disconnected with 3000 and retried, then failed when attempts run out", async () => {
  const server = await Herald.start();
  try {
    let calls = 0;
    const client = new HeraldClient({
      url: server.ws,
      WebSocket,
      backoff: { base: 20, attempts: 2 },
      token: async () => {
        calls++;
        throw new Error("auth service down");
      },
    });
    const states = [];
    client.on("state", (s) => states.push(s));
    const drops = [];
    client.on("disconnected", (info) => drops.push(info));
    const failed = once(client, "failed");
    client.connect();
    const info = await failed;
    assert.equal(info.code, ClientCode.ATTEMPTS_EXHAUSTED);
    assert.equal(calls, 3, "the first try and two retries");
    assert.deepEqual(drops.map((d) => d.code), [ClientCode.TOKEN_UNAVAILABLE, ClientCode.TOKEN_UNAVAILABLE]);
    assert.match(drops[0].reason, /auth service down/);
    assert.deepEqual(states, ["connecting", "disconnected", "connecting", "disconnected", "connecting", "failed"]);
  } finally {
    await server.close();
  }
});

test("a getter that fails at refresh time: an error event, then 4002, then the documented retries", async () => {
  const server = await Herald.start();
  try {
    let calls = 0;
    const client = new HeraldClient({
      url: server.ws,
      WebSocket,
      backoff: { base: 20, attempts: 2 },
      token: async () => {
        if (calls++ === 0) return token("brief", { ttl: 2 });
        throw new Error("signed out elsewhere");
      },
    });
    const errors = [];
    client.on("error", (e) => errors.push(e));
    const drops = [];
    client.on("disconnected", (info) => drops.push(info));
    client.connect();
    const failed = await once(client, "failed", 8000);
    assert.ok(errors.length >= 1 && /signed out elsewhere/.test(errors[0].message), "the refresh failure is reported");
    assert.equal(drops[0].code, 4002, "the server closed the expired connection");
    // The reconnect after 4002 asks the getter, which fails again: retried, then given up.
    assert.deepEqual(drops.map((d) => d.code), [4002, ClientCode.TOKEN_UNAVAILABLE]);
    assert.equal(failed.code, ClientCode.ATTEMPTS_EXHAUSTED);
  } finally {
    await server.close();
  }
});

test("a getter that returns null ends in failed with 4001", async () => {
  const server = await Herald.start();
  try {
    const client = new HeraldClient({ url: server.ws, WebSocket, token: async () => null });
    const failed = once(client, "failed");
    client.connect();
    const info = await failed;
    assert.equal(info.code, 4001);
    assert.equal(info.reconnect, false);
  } finally {
    await server.close();
  }
});

test("1,000 clients reconnecting after a crash spread over the backoff window", async () => {
  const server = await Herald.start();
  const clients = [];
  try {
    const backoff = { base: 500, cap: 4000 };
    for (let i = 0; i < 1000; i++) {
      const c = new HeraldClient({ url: server.ws, token: token(`herd${i}`), WebSocket, backoff });
      c.subscribe("news:herd");
      c.connect();
      clients.push(c);
    }
    await eventually(() => clients.every((c) => c.state === "connected"), { ms: 30000, what: "1,000 connections" });
    await eventually(async () => (await server.subscribers("news:herd")) === 1000, { ms: 30000, what: "1,000 subscribers" });

    const reconnectedAt = new Array(clients.length);
    let attempts = 0;
    clients.forEach((c, i) => {
      c.on("connected", () => (reconnectedAt[i] ??= Date.now()));
      c.on("connecting", () => attempts++);
    });
    const failures = [];
    clients.forEach((c) => c.on("failed", (info) => failures.push(info)));
    await server.stop("SIGKILL");
    const down = Date.now();
    await sleep(1000);
    await server.restart({ downMs: 0 });
    const up = Date.now();
    await eventually(() => clients.every((c) => c.state === "connected"), { ms: 30000, what: "every client back" });
    await eventually(async () => (await server.subscribers("news:herd")) === 1000, { ms: 30000, what: "every subscription back" });

    assert.deepEqual(failures, [], "none gave up");
    const delays = reconnectedAt.map((t) => t - up).sort((a, b) => a - b);
    const bucketMs = 250;
    const histogram = new Map();
    for (const d of delays) {
      const bucket = Math.floor(d / bucketMs) * bucketMs;
      histogram.set(bucket, (histogram.get(bucket) ?? 0) + 1);
    }
    const lines = [...histogram].map(([from, n]) => `${String(from).padStart(5)}-${String(from + bucketMs).padEnd(5)} ms ${String(n).padStart(4)} ${"#".repeat(Math.ceil(n / 10))}`);
    console.log(`reconnects after the server came back (down ${up - down} ms, ${attempts} attempts in all):\n${lines.join("\n")}`);
    const quantile = (q) => delays[Math.floor(q * (delays.length - 1))];
    console.log(`p10 ${quantile(0.1)} ms, p50 ${quantile(0.5)} ms, p90 ${quantile(0.9)} ms, max ${quantile(1)} ms`);
    // Full jitter spreads the herd: no quarter second takes half of the clients,
    // and the reconnects are spread over more than a second.
    assert.ok(Math.max(...histogram.values()) < 450, `the busiest ${bucketMs} ms took ${Math.max(...histogram.values())}`);
    assert.ok(quantile(0.9) - quantile(0.1) > 1000, "spread over more than a second");
  } finally {
    clients.forEach((c) => c.disconnect());
    await server.close();
  }
});

test("a getter that returns null at refresh time closes the connection and fails with 4001", async () => {
  const server = await Herald.start();
  try {
    let calls = 0;
    const client = new HeraldClient({ url: server.ws, WebSocket, token: async () => (calls++ === 0 ? token("leaving", { ttl: 2 }) : null) });
    const sub = client.subscribe("news:leaving");
    client.connect();
    await sub.ready();
    const failed = await once(client, "failed", 5000);
    assert.equal(failed.code, 4001);
    await eventually(async () => (await server.subscribers("news:leaving")) === 0, { what: "the socket closed" });
    await sleep(2500); // past the token's expiry: nothing brings the client back
    assert.equal(client.state, "failed");
  } finally {
    await server.close();
  }
});

test("a device clock two hours ahead still refreshes once per token lifetime", async () => {
  const server = await Herald.start();
  const realNow = Date.now;
  try {
    let fetched = 0;
    const issue = () => {
      fetched++;
      // Signed by the backend, whose clock is right.
      Date.now = realNow;
      const t = token("skewed", { ttl: 4 });
      Date.now = () => realNow() + 2 * 3600 * 1000;
      return t;
    };
    Date.now = () => realNow() + 2 * 3600 * 1000;
    const client = new HeraldClient({ url: server.ws, WebSocket, token: async () => issue() });
    const drops = [];
    client.on("disconnected", (info) => drops.push(info));
    client.connect();
    await once(client, "connected");
    await sleep(6000);
    assert.deepEqual(drops, []);
    // One token to connect, then one refresh every two to three seconds: not one a second.
    assert.ok(fetched >= 2 && fetched <= 5, `the getter was asked ${fetched} times`);
    client.disconnect();
  } finally {
    Date.now = realNow;
    await server.close();
  }
});

test("a link that goes silent is found out with a ping and replaced", async () => {
  const server = await Herald.start({ limits: 'heartbeat_interval = "1s"' });
  // A TCP relay in front of the server that can stop passing bytes, as a dead NAT entry or a
  // suspended laptop's Wi-Fi does: neither end sees a close.
  let frozen = false;
  const links = [];
  const relay = createServer((inbound) => {
    const outbound = connect(server.port, "127.0.0.1");
    links.push(inbound, outbound);
    inbound.on("data", (chunk) => frozen || outbound.write(chunk));
    outbound.on("data", (chunk) => frozen || inbound.write(chunk));
    inbound.on("error", () => outbound.destroy());
    outbound.on("error", () => inbound.destroy());
    inbound.on("close", () => outbound.destroy());
    outbound.on("close", () => inbound.destroy());
  });
  await new Promise((ready) => relay.listen(0, "127.0.0.1", ready));
  try {
    const client = new HeraldClient({ url: `ws://127.0.0.1:${relay.address().port}/ws`, token: token("sleeper"), WebSocket, backoff: { base: 100 } });
    const sub = client.subscribe("news:sleep");
    client.connect();
    await sub.ready();
    const dropped = once(client, "disconnected", 8000);
    frozen = true;
    const info = await dropped;
    assert.equal(info.code, ClientCode.NO_HEARTBEAT);
    frozen = false;
    const back = await once(sub, "subscribed", 8000);
    assert.equal(back.resubscribed, true);
    client.disconnect();
  } finally {
    links.forEach((s) => s.destroy());
    relay.close();
    await server.close();
  }
});
