// socket.io-client, unmodified from the npm registry, against the real server at /socket.io/:
// each transport, seed 002's dashboard code against a config with its event map, the built-in
// events' acks, refused tokens, and a Socket.IO client beside a native /ws client.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { io } from "socket.io-client";
import { HeraldClient } from "herald-client";
import { Herald, token, eventually, unique } from "../harness.mjs";

// Seed 002's event map: the plant dashboard's own events, onto Herald's commands.
const SOCKETIO = `
namespaces = ["/", "/ws"]
[[socketio.event]]
name = "subscribe:site"
subscribe = "site:{siteId}"
reply = "subscribed"
[[socketio.event]]
name = "subscribe:alarms"
subscribe = "alarms:all"
[[socketio.event]]
name = "subscribe:notifications"
[[socketio.event]]
name = "ping"
reply = "pong"
`;

const ALARMS = `
[[namespace]]
name = "alarms"
`;

let server;
before(async () => (server = await Herald.start({ socketio: SOCKETIO, namespaces: ALARMS })));
after(() => server.close());

const sockets = [];
/** A socket.io-client socket for `user` on `namespace` (connects at once). */
function connect(user, { namespace = "/", ...options } = {}) {
  const socket = io(`${server.http}${namespace}`, {
    auth: { token: token(user, { channels: ["site:*"] }) },
    reconnection: false,
    forceNew: true,
    ...options,
  });
  sockets.push(socket);
  return socket;
}
after(() => sockets.forEach((s) => s.close()));

/** The next `event` on `socket`, with its arguments. */
function next(socket, event, ms = 5000) {
  return new Promise((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`no ${event} within ${ms} ms`)), ms);
    socket.once(event, (...args) => {
      clearTimeout(timer);
      done(args);
    });
  });
}

async function connected(socket) {
  const [hello] = await next(socket, "connected");
  assert.ok(socket.connected);
  return hello;
}

for (const [name, options] of [
  ["long-polling only", { transports: ["polling"] }],
  ["WebSocket only", { transports: ["websocket"] }],
  ["long-polling upgraded to WebSocket", {}],
]) {
  test(`${name}: connected, then the personal channel's and a subscribed channel's publications`, async () => {
    const user = unique("sio");
    const socket = connect(user, options);
    const hello = await connected(socket);
    assert.equal(hello.user, user);
    assert.ok(hello.client);
    if (!options.transports) {
      await eventually(() => socket.io.engine.transport.name === "websocket", { what: "the upgrade" });
    }
    assert.equal(socket.io.engine.transport.name, options.transports?.[0] ?? "websocket");
    const personal = next(socket, "notification:new");
    await server.publish(`user:${user}`, { title: "hello" }, "notification:new");
    const [data, meta] = await personal;
    assert.deepEqual(data, { title: "hello" });
    assert.equal(meta.channel, `user:${user}`);

    const channel = unique("chat:");
    const ack = await socket.emitWithAck("subscribe", channel);
    assert.equal(ack.ok, true);
    assert.equal(ack.channel, channel);
    const got = [];
    socket.on("message", (data, meta) => got.push([data.n, meta.offset]));
    for (let n = 1; n <= 20; n++) await server.publish(channel, { n });
    await eventually(() => got.length === 20, { what: "20 publications" });
    assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => [i + 1, i + 1]));
  });
}

test("seed 002's dashboard code runs unchanged against the event map", async () => {
  const user = unique("operator");
  // The dashboard's own code: io('ws://host/ws', {auth: {token}}) and its events.
  const socket = io(`${server.ws.replace(/\/ws$/, "")}/ws`, { auth: { token: token(user, { channels: ["site:*"] }) }, reconnection: false, forceNew: true });
  sockets.push(socket);
  const hello = await next(socket, "connected");
  assert.equal(hello[0].user, user);

  const subscribed = next(socket, "subscribed");
  socket.emit("subscribe:site", { siteId: 1 });
  const [site] = await subscribed;
  assert.equal(site.channel, "site:1");

  socket.emit("subscribe:alarms");
  socket.emit("subscribe:notifications");
  await eventually(async () => (await server.subscribers("alarms:all")) > 0, { what: "the alarms subscription" });

  const production = next(socket, "production:update");
  await server.publish("site:1", { batch: 7, volume: 12.5 }, "production:update");
  assert.deepEqual((await production)[0], { batch: 7, volume: 12.5 });

  const alarm = next(socket, "alarm:new");
  await server.publish("alarms:all", { title: "Silo 3 low" }, "alarm:new");
  assert.deepEqual((await alarm)[0], { title: "Silo 3 low" });

  const notification = next(socket, "notification:new");
  await server.publish(`user:${user}`, { text: "shift starts" }, "notification:new");
  assert.deepEqual((await notification)[0], { text: "shift starts" });

  const pong = next(socket, "pong");
  socket.emit("ping");
  const [{ ts }] = await pong;
  assert.ok(Math.abs(ts - Date.now()) < 60_000);

  // Another site's updates are not this operator's.
  const other = next(socket, "production:update", 300).then(
    () => assert.fail("received another site's update"),
    () => {},
  );
  await server.publish("site:2", { batch: 1 }, "production:update");
  await other;
});

test("built-in events answer through acks, errors included", async () => {
  const user = unique("acker");
  // No channel grants: the "site" namespace needs them.
  const socket = connect(user, { auth: { token: token(user) } });
  await connected(socket);
  const channel = unique("chat:");

  const forbidden = await socket.emitWithAck("subscribe", { channel: "site:9" });
  assert.equal(forbidden.error.code, "forbidden");
  assert.ok(forbidden.error.message);
  const bad = await socket.emitWithAck("subscribe", { channel: "" });
  assert.equal(bad.error.code, "bad_request");
  const unknown = await socket.emitWithAck("launch:rocket", {});
  assert.equal(unknown.error.code, "bad_request");
  assert.match(unknown.error.message, /unknown event/);

  assert.equal((await socket.emitWithAck("subscribe", channel)).ok, true);
  const published = await socket.emitWithAck("publish", { channel, event: "said", data: { text: "hi" } });
  assert.equal(published.ok, true);
  assert.equal(published.offset, 1);
  const history = await socket.emitWithAck("history", { channel });
  assert.equal(history.ok, true);
  assert.deepEqual(history.publications.map((p) => p.data), [{ text: "hi" }]);
  const presence = await socket.emitWithAck("presence", { channel });
  assert.equal(presence.ok, true);
  assert.equal(presence.users, 1);
  const typing = await socket.emitWithAck("typing", channel);
  assert.deepEqual(typing, { ok: true, sent: true });
  assert.deepEqual(await socket.emitWithAck("unsubscribe", channel), { ok: true, channel });

  // Without an ack, a failure comes back as an `error` event naming the event.
  const error = next(socket, "error");
  socket.emit("subscribe", { channel: "site:9" });
  const [{ error: detail }] = await error;
  assert.equal(detail.code, "forbidden");
  assert.equal(detail.event, "subscribe");
});

test("a refused token is a connect_error with its code; an unknown namespace too", async () => {
  for (const transports of [["polling"], ["websocket"]]) {
    const socket = connect("nobody", { transports, auth: { token: "not-a-jwt" } });
    const [error] = await next(socket, "connect_error");
    assert.equal(error.data.code, "unauthorized");
    assert.ok(!socket.connected);

    const expired = connect("late", { transports, auth: { token: token("late", { ttl: -10 }) } });
    const [late] = await next(expired, "connect_error");
    assert.equal(late.data.code, "unauthorized");

    const lost = connect("lost", { transports, namespace: "/nowhere" });
    const [invalid] = await next(lost, "connect_error");
    assert.equal(invalid.message, "Invalid namespace");
  }
});

test("a Socket.IO client and a native /ws client on one channel get the same publications in the same order", async () => {
  const channel = unique("room:");
  const socket = connect(unique("sio"));
  await connected(socket);
  assert.equal((await socket.emitWithAck("subscribe", channel)).ok, true);
  const native = new HeraldClient({ url: server.ws, token: token(unique("native")), WebSocket });
  native.connect();
  const sub = native.subscribe(channel);
  await sub.ready();

  const viaSocketIo = [];
  const viaNative = [];
  socket.on("tick", (data, meta) => viaSocketIo.push([data.n, meta.offset]));
  sub.on("tick", (data, pub) => viaNative.push([data.n, pub.offset]));
  await Promise.all(Array.from({ length: 50 }, (_, n) => server.publish(channel, { n }, "tick")));
  await eventually(() => viaSocketIo.length === 50 && viaNative.length === 50, { what: "50 publications on both" });
  assert.deepEqual(viaSocketIo, viaNative);
  assert.deepEqual(viaNative.map(([, offset]) => offset), Array.from({ length: 50 }, (_, i) => i + 1));
  native.disconnect();
});

test("the server's disconnect reaches the client with its code", async () => {
  const user = unique("kicked");
  const socket = connect(user, { transports: ["websocket"] });
  await connected(socket);
  const notice = next(socket, "herald:disconnect");
  const closed = next(socket, "disconnect");
  await server.api("POST", "/api/disconnect", { user });
  const [body] = await notice;
  assert.equal(body.code, 4013);
  const [reason] = await closed;
  assert.ok(reason);
});

test("after a server restart (disk store), socket.io-client recovers: what it missed, once, in order", async () => {
  const durable = await Herald.start({ durable: true, socketio: SOCKETIO, namespaces: ALARMS });
  try {
    const user = unique("resume");
    const socket = io(durable.http, {
      auth: { token: token(user) },
      transports: ["websocket"],
      reconnectionDelay: 1500,
      reconnectionDelayMax: 1500,
      randomizationFactor: 0,
    });
    sockets.push(socket);
    await next(socket, "connected");
    assert.equal(socket.recovered, false);
    const channel = unique("room:");
    assert.equal((await socket.emitWithAck("subscribe", channel)).ok, true);
    const got = [];
    const personal = [];
    socket.on("note", (data) => got.push(data.n));
    socket.on("notification:new", (data) => personal.push(data.n));
    for (let n = 1; n <= 3; n++) await durable.publish(channel, { n }, "note");
    await eventually(() => got.length === 3, { what: "the first three" });

    const back = next(socket, "connected", 10_000);
    await durable.restart();
    // While the client waits to reconnect: on its channel and on its personal channel.
    for (let n = 4; n <= 6; n++) await durable.publish(channel, { n }, "note");
    await durable.publish(`user:${user}`, { n: 7 }, "notification:new");
    await back;
    await eventually(() => got.length >= 6 && personal.length >= 1, { what: "what was missed" });
    assert.equal(socket.recovered, true);
    for (let n = 8; n <= 9; n++) await durable.publish(channel, { n }, "note");
    await eventually(() => got.length >= 8, { what: "live again" });
    // Each channel in its order, each publication once.
    assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 8, 9]);
    assert.deepEqual(personal, [7]);
    socket.close();
  } finally {
    await durable.close();
  }
});

test("a client whose history is gone is told so: socket.recovered stays false", async () => {
  // Memory history: a restart begins every stream again, in a new epoch.
  const volatile = await Herald.start({ socketio: SOCKETIO, namespaces: ALARMS });
  try {
    const user = unique("fresh");
    const socket = io(volatile.http, {
      auth: { token: token(user) },
      transports: ["websocket"],
      reconnectionDelay: 300,
      randomizationFactor: 0,
    });
    sockets.push(socket);
    await next(socket, "connected");
    const channel = unique("room:");
    await socket.emitWithAck("subscribe", channel);
    const first = next(socket, "note");
    await volatile.publish(channel, { n: 1 }, "note");
    await first;
    const back = next(socket, "connected", 10_000);
    await volatile.restart();
    await back;
    assert.equal(socket.recovered, false);
    socket.close();
  } finally {
    await volatile.close();
  }
});
