// The WebSocket client against the real server: connecting, subscriptions, requests, errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { createServer as createHttpServer } from "node:http";
import WebSocket from "ws";
import { HeraldClient, HeraldError, ClientCode } from "herald-client";
import { Herald, token, eventually, once, unique, sleep } from "../harness.mjs";

let server;
before(async () => (server = await Herald.start()));
after(() => server.close());

const clients = [];
function client(user = unique("u"), options = {}) {
  const c = new HeraldClient({ url: server.ws, token: token(user), WebSocket, ...options });
  clients.push(c);
  c.connect();
  return c;
}
after(() => clients.forEach((c) => c.disconnect()));

async function subscribed(c, channel, options) {
  const sub = c.subscribe(channel, options);
  await sub.ready();
  return sub;
}

async function rejectsWith(promise, code) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof HeraldError, `a HeraldError, not ${error}`);
    assert.equal(error.code, code, error.message);
    return true;
  });
}

test("connects, subscribes, and receives a publication with its event handler", async () => {
  const c = client("alice");
  const connected = await once(c, "connected");
  assert.equal(connected.user, "alice");
  assert.equal(c.state, "connected");
  assert.ok(connected.heartbeat >= 1);
  const sub = await subscribed(c, "chat:1");
  assert.equal(sub.state, "subscribed");
  const got = new Promise((done) => sub.on("greeting", (data, pub) => done({ data, pub })));
  const position = await server.publish("chat:1", { text: "hi" }, "greeting");
  const { data, pub } = await got;
  assert.deepEqual(data, { text: "hi" });
  assert.equal(pub.offset, position.offset);
  assert.equal(pub.epoch, position.epoch);
  assert.deepEqual(sub.position, position);
  c.disconnect();
  assert.equal(c.state, "disconnected");
});

test("subscribing twice to a channel gives the same subscription; onMessage sees every event", async () => {
  const c = client();
  const a = c.subscribe("news:2");
  assert.equal(c.subscribe("news:2"), a);
  await a.ready();
  const seen = [];
  a.onMessage((p) => seen.push(p.event ?? null));
  await server.publish("news:2", 1, "one");
  await server.publish("news:2", 2);
  await eventually(() => seen.length === 2, { what: "two publications" });
  assert.deepEqual(seen, ["one", null]);
});

test("publishes from the client: the reply has the position, the message carries from", async () => {
  const c = client("pub");
  const sub = await subscribed(c, "chat:pub");
  const mine = new Promise((done) => sub.on("said", (data, p) => done(p)));
  const position = await sub.publish("said", { text: "hello" });
  const p = await mine;
  assert.equal(p.offset, position.offset);
  assert.equal(p.from.user, "pub");
  assert.equal(p.from.client, c.info.client);
  const again = await c.publish("chat:pub", "said", 2);
  assert.equal(again.offset, position.offset + 1);
});

test("presence lists the connections; countsOnly leaves the list out", async () => {
  const channel = unique("chat:p");
  const a = client("ann");
  const b = client("bob");
  await subscribed(a, channel);
  await subscribed(b, channel);
  const full = await a.getSubscription(channel).presence();
  assert.equal(full.users, 2);
  assert.equal(full.connections, 2);
  assert.deepEqual(full.clients.map((e) => e.user), ["ann", "bob"]);
  const counts = await b.presence(channel, { countsOnly: true });
  assert.deepEqual(counts, { channel, users: 2, connections: 2 });
});

test("join and leave reach the other subscribers", async () => {
  const channel = unique("chat:j");
  const a = client("watcher");
  const sub = await subscribed(a, channel);
  const joined = once(sub, "join");
  const b = client("visitor");
  const theirs = await subscribed(b, channel);
  const join = await joined;
  assert.equal(join.user, "visitor");
  assert.equal(join.client, b.info.client);
  const left = once(sub, "leave");
  await theirs.unsubscribe();
  assert.equal(theirs.state, "unsubscribed");
  assert.equal((await left).user, "visitor");
});

test("typing reaches the others once a second at most", async () => {
  const channel = unique("chat:t");
  const a = client("typist");
  const b = client("reader");
  const mine = await subscribed(a, channel);
  const theirs = await subscribed(b, channel);
  const typing = once(theirs, "typing");
  assert.equal(mine.typing(), true);
  assert.equal(mine.typing(), false, "a second keystroke within the second is not sent");
  assert.deepEqual(await typing, { channel, user: "typist" });
});

test("history pages carry their epoch", async () => {
  const channel = unique("room:h");
  const first = await server.publish(channel, { n: 1 });
  await server.publish(channel, { n: 2 });
  await server.publish(channel, { n: 3 });
  const c = client();
  const newest = await c.history(channel, { limit: 2 });
  assert.deepEqual(newest.publications.map((p) => p.data.n), [2, 3]);
  assert.ok(newest.publications.every((p) => p.epoch === first.epoch));
  const sub = await subscribed(c, channel);
  const after = await sub.history({ since: first });
  assert.equal(after.recovered, true);
  assert.deepEqual(after.publications.map((p) => p.offset), [2, 3]);
});

test("a subscription with last replays the newest publications first, then live ones", async () => {
  const channel = unique("room:l");
  for (let n = 1; n <= 5; n++) await server.publish(channel, n);
  const c = client();
  const sub = c.subscribe(channel, { last: 2 });
  const seen = [];
  sub.onMessage((p) => seen.push(p.data));
  await sub.ready();
  await server.publish(channel, 6);
  await eventually(() => seen.length === 3, { what: "replay and live" });
  assert.deepEqual(seen, [4, 5, 6]);
});

test("refusals reject with the server's code and end the subscription", async () => {
  const c = client();
  const unknown = c.subscribe("nope:1");
  const error = once(unknown, "error");
  await rejectsWith(unknown.ready(), "not_found");
  assert.equal((await error).code, "not_found");
  assert.equal(unknown.state, "unsubscribed");
  assert.equal(c.getSubscription("nope:1"), undefined);
  await rejectsWith(c.subscribe("site:1").ready(), "forbidden");
  await rejectsWith(c.subscribe("bad name").ready(), "bad_request");
  await rejectsWith(c.publish("news:1", "x", 1), "forbidden");
  await rejectsWith(c.presence("news:1"), "forbidden");
  await rejectsWith(c.getSubscription("site:1")?.ready() ?? c.request({ type: "unsubscribe", channel: "chat:none" }), "not_found");
});

test("claims from the token allow a channel", async () => {
  const c = new HeraldClient({ url: server.ws, token: token("site-user", { channels: ["site:7"] }), WebSocket });
  clients.push(c);
  c.connect();
  await subscribed(c, "site:7");
  await rejectsWith(c.subscribe("site:8").ready(), "forbidden");
});

test("the personal channel is there on connect; publications to it reach the client", async () => {
  const c = client("pat");
  await once(c, "connected");
  const personal = c.subscribe("user:pat");
  await personal.ready();
  assert.equal(personal.personal, true);
  const everything = once(c, "message");
  const alert = new Promise((done) => personal.on("alert", done));
  await server.publish("user:pat", { level: "low" }, "alert");
  assert.deepEqual(await alert, { level: "low" });
  assert.equal((await everything).channel, "user:pat");
});

test("the server API's unsubscribe ends the subscription", async () => {
  const c = client("kicked");
  const sub = await subscribed(c, "news:kick");
  const ended = once(sub, "unsubscribed");
  await server.api("POST", "/api/unsubscribe", { user: "kicked", channel: "news:kick" });
  assert.equal((await ended).by, "server");
  assert.equal(sub.state, "unsubscribed");
});

test("a bad token fails for good with 4001", async () => {
  const c = new HeraldClient({ url: server.ws, token: "not-a-jwt", WebSocket });
  clients.push(c);
  const failed = once(c, "failed");
  c.connect();
  const info = await failed;
  assert.equal(info.code, 4001);
  assert.equal(info.reconnect, false);
  assert.equal(c.state, "failed");
  await rejectsWith(c.ping(), "closed");
});

test("disconnect from the server API: reconnect:true comes back and resubscribes, reconnect:false fails", async () => {
  const c = client("bounced", { backoff: { base: 50 } });
  const sub = await subscribed(c, "news:b");
  const dropped = once(c, "disconnected");
  const back = new Promise((done) => sub.onSubscribed((info) => info.resubscribed && done(info)));
  await server.api("POST", "/api/disconnect", { user: "bounced" });
  const info = await dropped;
  assert.equal(info.code, 4013);
  assert.equal(info.reconnect, true);
  assert.ok(info.delay >= 0 && info.delay < 50);
  await back;
  assert.equal(c.state, "connected");
  const failed = once(c, "failed");
  await server.api("POST", "/api/disconnect", { user: "bounced", reconnect: false });
  assert.equal((await failed).code, 4013);
});

test("requests time out, and a link that never says connected is retried", async () => {
  // A TCP server that accepts and never answers: the WebSocket handshake never completes.
  const sockets = [];
  const silent = createServer((socket) => sockets.push(socket));
  await new Promise((ready) => silent.listen(0, "127.0.0.1", ready));
  const c = new HeraldClient({ url: `ws://127.0.0.1:${silent.address().port}/ws`, token: token("x"), WebSocket, timeout: 300, backoff: { base: 10, attempts: 1 } });
  const dropped = once(c, "disconnected");
  const failed = once(c, "failed");
  c.connect();
  const request = c.ping();
  await rejectsWith(request, "timeout");
  assert.equal((await dropped).code, ClientCode.CONNECT_TIMEOUT);
  assert.equal((await failed).code, ClientCode.ATTEMPTS_EXHAUSTED);
  sockets.forEach((s) => s.destroy());
  silent.close();
});

test("a request sent while connecting waits for the connection", async () => {
  const c = new HeraldClient({ url: server.ws, token: token("early"), WebSocket });
  clients.push(c);
  c.connect();
  assert.equal(c.state, "connecting");
  assert.equal(typeof (await c.ping()), "number");
});

test("a saved position of the personal channel is recovered on the first connect", async () => {
  const first = await server.publish("user:away", { n: 1 }, "note");
  await server.publish("user:away", { n: 2 }, "note");
  await server.publish("user:away", { n: 3 }, "note");
  const c = new HeraldClient({ url: server.ws, token: token("away"), WebSocket });
  clients.push(c);
  const personal = c.subscribe("user:away", { since: first });
  const seen = [];
  personal.on("note", (data) => seen.push(data.n));
  const info = once(personal, "subscribed");
  c.connect();
  assert.equal((await info).recovered, true);
  await eventually(() => seen.length === 2, { what: "the two missed" });
  assert.deepEqual(seen, [2, 3]);
});

test("restoring more subscriptions than the server's burst is paced, never closed with 4008, none left behind", async () => {
  const strict = await Herald.start({ limits: "commands_burst = 20\ncommands_per_minute = 600" });
  try {
    // A short request timeout: many subscribes wait in the queue longer than that, and their
    // answers, refusals included, still count when they come.
    const c = new HeraldClient({ url: strict.ws, token: token("many"), WebSocket, timeout: 500 });
    const subs = Array.from({ length: 60 }, (_, i) => c.subscribe(`news:many${i}`));
    const errors = [];
    subs.forEach((s) => s.onError((e) => errors.push(e)));
    const failed = [];
    c.on("failed", (info) => failed.push(info));
    c.connect();
    await Promise.all(subs.map((s) => s.ready()));
    assert.deepEqual(failed, []);
    assert.deepEqual(errors, []);
    assert.equal(c.state, "connected");
    await eventually(async () => (await strict.subscribers("news:many59")) === 1, { what: "the last one on the server" });
    c.disconnect();
  } finally {
    await strict.close();
  }
});

test("without a token the server's connect hook decides, by the request's cookie", async () => {
  const hook = createHttpServer((req, res) => {
    // Herald forwards the request's cookie to the hook as a header.
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(req.headers.cookie === "session=s1" ? { allow: true, user: "cookie-user" } : { allow: false }));
    });
  });
  await new Promise((ready) => hook.listen(0, "127.0.0.1", ready));
  const hooked = await Herald.start({ top: `[proxy]\nconnect_url = "http://127.0.0.1:${hook.address().port}/connect"\n` });
  try {
    // A browser sends the page's cookie by itself; here the `ws` package is given it.
    class CookieWebSocket extends WebSocket {
      constructor(url) {
        super(url, { headers: { cookie: "session=s1" } });
      }
    }
    const c = new HeraldClient({ url: hooked.ws, WebSocket: CookieWebSocket });
    c.connect();
    const info = await once(c, "connected");
    assert.equal(info.user, "cookie-user");
    assert.equal(info.expiresAt, undefined);
    await c.subscribe("news:hooked").ready();
    c.disconnect();
  } finally {
    await hooked.close();
    hook.close();
  }
});

test("disconnect() and connect() again restore every subscription, one still on its way too", async () => {
  const c = client("again");
  const settled = await subscribed(c, "room:again1");
  const missed = [];
  settled.on("n", (n) => missed.push(n));
  const onItsWay = c.subscribe("room:again2");
  c.disconnect(); // before room:again2's answer could arrive
  assert.equal(settled.state, "subscribing");
  assert.equal(onItsWay.state, "subscribing");
  await server.publish("room:again1", 1, "n");
  const restored = once(settled, "subscribed");
  c.connect();
  const info = await restored;
  assert.equal(info.resubscribed, true);
  assert.equal(info.recovered, true);
  await onItsWay.ready();
  await eventually(() => missed.length === 1, { what: "the publication made while disconnected" });
  await eventually(async () => (await server.subscribers("room:again2")) === 1, { what: "the second subscription" });
});

test("the personal channel subscribed with a position in a connected handler recovers it", async () => {
  const first = await server.publish("user:late", 1, "n");
  await server.publish("user:late", 2, "n");
  await server.publish("user:late", 3, "n");
  const c = new HeraldClient({ url: server.ws, token: token("late"), WebSocket });
  clients.push(c);
  const seen = [];
  let personal;
  c.on("connected", () => {
    personal = c.subscribe("user:late", { since: first });
    personal.on("n", (n) => seen.push(n));
  });
  c.connect();
  await eventually(() => personal?.state === "subscribed", { what: "the personal subscription" });
  await server.publish("user:late", 4, "n");
  await eventually(() => seen.length === 3, { what: "recovered and live" });
  assert.deepEqual(seen, [2, 3, 4]);
  assert.equal(personal.state, "subscribed");
});
