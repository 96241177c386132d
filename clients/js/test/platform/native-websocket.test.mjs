// The client on the platform's own WebSocket, with nothing passed in: run by `npm test` under
// Node's built-in WebSocket (`--experimental-websocket` on Node 20, on by default from 22), as
// browsers, Bun and Deno provide it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HeraldClient } from "herald-client";
import { Herald, token, once } from "../harness.mjs";

test("connects, recovers and receives with the global WebSocket", { timeout: 20000, skip: typeof globalThis.WebSocket !== "function" && "no global WebSocket" }, async () => {
  const server = await Herald.start();
  try {
    const client = new HeraldClient({ url: server.ws, token: token("native"), backoff: { base: 50 } });
    const sub = client.subscribe("room:native");
    const seen = [];
    sub.on("n", (n) => seen.push(n));
    client.connect();
    await sub.ready();
    await server.publish("room:native", 1, "n");
    const back = once(sub, "subscribed");
    await server.api("POST", "/api/disconnect", { user: "native" });
    await server.publish("room:native", 2, "n");
    assert.equal((await back).recovered, true);
    const last = new Promise((done) => sub.on("n", (n) => n === 3 && done()));
    await server.publish("room:native", 3, "n");
    await last;
    assert.deepEqual(seen, [1, 2, 3]);
    client.disconnect();
  } finally {
    await server.close();
  }
});
