// The WebSocket client against the real server: connecting, subscriptions, requests, errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { HeraldClient, HeraldError } from "herald-client";
import { Herald, token, eventually, once, unique, sleep } from "../harness.mjs";

let server;
before(async () => (server = await Herald.start()));
after(() => server.close());

function client(user = unique("u"), options = {}) {
  const c = new HeraldClient({ url: server.ws, token: token(user), WebSocket, ...options });
  c.connect();
  return c;
}

test("connects, subscribes, and receives a publication with its event handler", async () => {
  const c = client("alice");
  const connected = await once(c, "connected");
  assert.equal(connected.user, "alice");
  assert.equal(c.state, "connected");
  const sub = c.subscribe("chat:1");
  await sub.ready();
  const got = new Promise((done) => sub.on("greeting", (data, pub) => done({ data, pub })));
  const position = await server.publish("chat:1", { text: "hi" }, "greeting");
  const { data, pub } = await got;
  assert.deepEqual(data, { text: "hi" });
  assert.equal(pub.offset, position.offset);
  assert.equal(pub.epoch, position.epoch);
  c.disconnect();
  assert.equal(c.state, "disconnected");
});
