// The backend client against the real server: every API route, errors by code, and retries that
// never double a publication (a proxy between the client and herald loses or refuses answers).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, request } from "node:http";
import WebSocket from "ws";
import { HeraldClient } from "herald-client";
import { HeraldServer, HeraldError } from "herald-client/server";
import { Herald, API_KEY, token, once, unique } from "../harness.mjs";

let server, api;
before(async () => {
  server = await Herald.start();
  api = backend(server.http);
});
after(() => server.close());

/** A HeraldServer with short backoff windows, so that retries take milliseconds. */
function backend(url, options = {}) {
  return new HeraldServer({ url, apiKey: API_KEY, backoff: { base: 20, cap: 100 }, ...options });
}

/** A connected WebSocket client subscribed to `channel`. */
async function subscriber(user, channel) {
  const c = new HeraldClient({ url: server.ws, token: token(user), WebSocket, backoff: { base: 60000 } });
  c.connect();
  await c.subscribe(channel).ready();
  return c;
}

async function rejection(promise) {
  const error = await promise.then(
    () => assert.fail("expected a rejection"),
    (e) => e,
  );
  assert.ok(error instanceof HeraldError, `not a HeraldError: ${error}`);
  return error;
}

/**
 * An HTTP proxy in front of herald. `plan(n)` decides the fate of the n-th request (from 1):
 * "forward" (the default), "drop" (forwarded to herald, but the client's socket is destroyed
 * instead of answering), "late" (forwarded, answered after 400 ms) or "503" (not forwarded).
 */
async function proxy(plan = () => "forward") {
  const seen = [];
  const http = createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const action = plan(seen.push({ method: req.method, url: req.url, body: body.toString() })) ?? "forward";
      if (action === "503") {
        res.writeHead(503, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { code: "unavailable", message: "the proxy refused" } }));
        return;
      }
      const upstream = request(`${server.http}${req.url}`, { method: req.method, headers: req.headers }, (answer) => {
        const parts = [];
        answer.on("data", (part) => parts.push(part));
        answer.on("end", () => {
          if (action === "drop") return req.socket.destroy();
          const reply = () => res.writeHead(answer.statusCode, answer.headers).end(Buffer.concat(parts));
          if (action === "late") setTimeout(reply, 400);
          else reply();
        });
      });
      upstream.end(body);
    });
  });
  await new Promise((ready) => http.listen(0, "127.0.0.1", ready));
  return {
    url: `http://127.0.0.1:${http.address().port}`,
    /** The requests that reached the proxy, in order. */
    seen,
    close() {
      http.closeAllConnections();
      return new Promise((done) => http.close(done));
    },
  };
}

/** The channel's whole history, as `[offset, data]` pairs. */
async function stored(channel) {
  const { publications } = await api.history(channel);
  return publications.map((p) => [p.offset, p.data]);
}

test("publish answers the position, and history then holds the publication with its epoch", async () => {
  const channel = unique("room:");
  const first = await api.publish(channel, "note", { n: 1 });
  const second = await api.publish(channel, undefined, { n: 2 });
  assert.equal(first.offset, 1);
  assert.equal(second.offset, 2);
  assert.equal(second.epoch, first.epoch);
  const history = await api.history(channel);
  assert.equal(history.offset, 2);
  assert.deepEqual(
    history.publications.map((p) => [p.offset, p.event, p.data, p.epoch]),
    [
      [1, "note", { n: 1 }, first.epoch],
      [2, undefined, { n: 2 }, first.epoch],
    ],
  );
  const page = await api.history(channel, { since: 1, epoch: first.epoch, limit: 1 });
  assert.equal(page.recovered, true);
  assert.deepEqual(page.publications.map((p) => p.offset), [2]);
  const stale = await api.history(channel, { since: 1, epoch: "another" });
  assert.equal(stale.recovered, false);
});

test("a publish with the caller's idempotency key is stored once", async () => {
  const channel = unique("room:");
  const first = await api.publish(channel, "order", { id: 17 }, { idempotencyKey: "order-17" });
  const again = await api.publish(channel, "order", { id: 17 }, { idempotencyKey: "order-17" });
  assert.deepEqual(again, first);
  assert.deepEqual(await stored(channel), [[1, { id: 17 }]]);
});

test("broadcast and batch answer one result per item, errors included", async () => {
  const [a, b] = [unique("room:"), unique("room:")];
  const results = await api.broadcast([a, b, "bad name", "nowhere:1"], "alarm", { level: 3 });
  assert.deepEqual(
    results.map((r) => [r.channel, r.offset ?? r.error.code]),
    [
      [a, 1],
      [b, 1],
      ["bad name", "bad_request"],
      ["nowhere:1", "not_found"],
    ],
  );
  assert.equal(typeof results[0].epoch, "string");
  const batch = await api.batch([
    { channel: a, event: "edit", data: 1 },
    { channel: b, data: 2, idempotencyKey: "b-2" },
    { channel: b, data: 2, idempotencyKey: "b-2" },
    { channel: "bad name", data: 3 },
  ]);
  assert.deepEqual(
    batch.map((r) => r.offset ?? r.error.code),
    [2, 2, 2, "bad_request"],
  );
  assert.deepEqual(await stored(b), [
    [1, { level: 3 }],
    [2, 2],
  ]);
});

test("presence, user, channels and stats describe a connected subscriber", async () => {
  const channel = unique("chat:");
  const c = await subscriber("ann@example.com", channel);
  try {
    const presence = await api.presence(channel);
    assert.equal(presence.users, 1);
    assert.equal(presence.connections, 1);
    assert.equal(presence.clients[0].user, "ann@example.com");
    assert.equal(presence.clients[0].client, c.info.client);
    const counts = await api.presence(channel, { countsOnly: true });
    assert.deepEqual(counts, { channel, users: 1, connections: 1 });
    assert.deepEqual(await api.user("ann@example.com"), { user: "ann@example.com", online: true, connections: 1 });
    assert.deepEqual(await api.user("nobody"), { user: "nobody", online: false, connections: 0 });
    assert.deepEqual(await api.channels(channel), [{ channel, subscribers: 1 }]);
    assert.ok((await api.channels()).some((entry) => entry.channel === channel));
    const stats = await api.stats();
    assert.equal(stats.engine, "memory");
    assert.ok(stats.node.connections >= 1);
    assert.equal(stats.cluster.nodes, 1);
  } finally {
    c.disconnect();
  }
});

test("unsubscribe ends the user's subscription", async () => {
  const channel = unique("room:");
  const c = await subscriber(unique("u"), channel);
  const ended = new Promise((done) => c.getSubscription(channel).onUnsubscribed(done));
  await api.unsubscribe(c.info.user, channel);
  assert.deepEqual(await ended, { channel, by: "server" });
  c.disconnect();
});

test("disconnect closes the user's connections with 4013, and reconnect:false keeps them away", async () => {
  const user = unique("u");
  const c = await subscriber(user, unique("room:"));
  const dropped = once(c, "disconnected");
  await api.disconnect(user);
  const info = await dropped;
  assert.equal(info.code, 4013);
  assert.equal(info.reconnect, true);
  c.disconnect();

  const d = await subscriber(user, unique("room:"));
  const failed = once(d, "failed");
  await api.disconnect(user, { reconnect: false });
  assert.equal((await failed).code, 4013);
  assert.equal(d.state, "failed");
});

test("errors reject with the server's code and status", async () => {
  const bad = await rejection(api.publish("bad name", undefined, 1));
  assert.equal(bad.code, "bad_request");
  assert.equal(bad.status, 400);
  assert.match(bad.message, /channel name/);
  const unknown = await rejection(api.history("nowhere:1"));
  assert.equal(unknown.code, "not_found");
  assert.equal(unknown.status, 404);
  const forbidden = await rejection(api.presence(unique("room:")));
  assert.equal(forbidden.code, "forbidden");
  assert.equal(forbidden.status, 403);
});

test("a publish whose answer was lost is retried with the same key and stored once", async () => {
  const p = await proxy((n) => (n === 1 ? "drop" : "forward"));
  try {
    const channel = unique("room:");
    const position = await backend(p.url).publish(channel, "note", { text: "once" });
    assert.equal(p.seen.length, 2);
    assert.equal(p.seen[0].body, p.seen[1].body, "the retry is the same request, key included");
    assert.ok(JSON.parse(p.seen[0].body).idempotency_key);
    assert.equal(position.offset, 1);
    assert.deepEqual(await stored(channel), [[1, { text: "once" }]]);
  } finally {
    await p.close();
  }
});

test("a publish that timed out is retried and stored once", async () => {
  const p = await proxy((n) => (n === 1 ? "late" : "forward"));
  try {
    const channel = unique("room:");
    await api.publish(channel, undefined, "before");
    const position = await backend(p.url, { timeout: 200 }).publish(channel, undefined, "slow");
    assert.equal(p.seen.length, 2);
    assert.equal(position.offset, 2);
    assert.deepEqual(await stored(channel), [
      [1, "before"],
      [2, "slow"],
    ]);
  } finally {
    await p.close();
  }
});

test("a 503 is retried; retries that run out reject with the last error", async () => {
  const p = await proxy((n) => (n === 1 ? "503" : "forward"));
  try {
    const channel = unique("room:");
    const position = await backend(p.url).publish(channel, undefined, "after a 503");
    assert.equal(p.seen.length, 2);
    assert.equal(position.offset, 1);
    assert.deepEqual(await stored(channel), [[1, "after a 503"]]);
  } finally {
    await p.close();
  }
  const down = await proxy(() => "503");
  try {
    const error = await rejection(backend(down.url, { retries: 2 }).stats());
    assert.equal(error.code, "unavailable");
    assert.equal(error.status, 503);
    assert.equal(down.seen.length, 3);
  } finally {
    await down.close();
  }
});

test("a 400 or a 401 is not retried", async () => {
  const p = await proxy();
  try {
    const bad = await rejection(backend(p.url).publish("bad name", undefined, 1));
    assert.equal(bad.code, "bad_request");
    assert.equal(p.seen.length, 1);
    const denied = await rejection(backend(p.url, { apiKey: "not-the-key" }).stats());
    assert.equal(denied.code, "unauthorized");
    assert.equal(denied.status, 401);
    assert.equal(p.seen.length, 2);
  } finally {
    await p.close();
  }
});

test("a broadcast and a batch whose answers were lost are retried and stored once", async () => {
  const p = await proxy((n) => (n === 1 || n === 3 ? "drop" : "forward"));
  try {
    const [a, b] = [unique("room:"), unique("room:")];
    const results = await backend(p.url).broadcast([a, b], "alarm", "fire");
    assert.equal(p.seen.length, 2);
    assert.deepEqual(
      results.map((r) => [r.channel, r.offset]),
      [
        [a, 1],
        [b, 1],
      ],
    );
    const batch = await backend(p.url).batch([
      { channel: a, data: "one" },
      { channel: a, data: "two" },
    ]);
    assert.equal(p.seen.length, 4);
    assert.deepEqual(
      batch.map((r) => r.offset),
      [2, 3],
    );
    assert.deepEqual(await stored(a), [
      [1, "fire"],
      [2, "one"],
      [3, "two"],
    ]);
    assert.deepEqual(await stored(b), [[1, "fire"]]);
  } finally {
    await p.close();
  }
});

test("a network failure rejects with disconnected once the retries run out", async () => {
  const p = await proxy();
  const url = p.url;
  await p.close(); // nothing listens there any more
  const error = await rejection(backend(url, { retries: 1 }).stats());
  assert.equal(error.code, "disconnected");
  assert.equal(error.status, undefined);
});

test("an injected fetch is used, and path segments are encoded", async () => {
  const urls = [];
  const fetch = (url, init) => {
    urls.push(url);
    return globalThis.fetch(url, init);
  };
  const c = new HeraldServer({ url: `${server.http}/`, apiKey: API_KEY, fetch });
  assert.deepEqual(await c.user("a b/c?d"), { user: "a b/c?d", online: false, connections: 0 });
  assert.deepEqual(urls, [`${server.http}/api/users/a%20b%2Fc%3Fd`]);
});
