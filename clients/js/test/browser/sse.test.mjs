// The SSE helper: in headless Chromium against the real server, a page resumes a dropped stream
// with its last event id and a fresh token, and shows every publication once and in order; in
// Node, with a scripted EventSource, the filtering by offset and the end of a stream that must
// not come back.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { HeraldEventSource } from "herald-client/sse";
import { Herald, token, unique, sleep } from "../harness.mjs";
import { launchBrowser, servePages } from "./browser.mjs";

let server, pages, browser;
before(async () => {
  server = await Herald.start();
  pages = await servePages({ sse: new URL("./pages/sse.ts", import.meta.url).pathname });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await pages?.close();
  await server?.close();
});

/**
 * Opens the page for `user` on `channel`. `tokens` answers each of the page's token requests
 * (by call number, from 1); the page waits for it, so the test decides when a stream opens.
 */
async function open(user, channel, tokens = () => token(user)) {
  const page = await browser.newPage();
  let calls = 0;
  await page.exposeFunction("freshToken", () => tokens(++calls));
  const query = new URLSearchParams({ sse: `${server.http}/sse`, channel });
  await page.goto(`${pages.base}/sse.html?${query}`);
  return page;
}

const feed = (page) => page.$$eval("#feed li", (items) => items.map((li) => [Number(li.dataset.offset), li.textContent]));
const notes = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => [from + i, `n${from + i}`]);

async function publish(channel, from, to) {
  for (let n = from; n <= to; n++) await server.publish(channel, { text: `n${n}` }, "note");
}

test("a stream the server dropped resumes with last_event_id: every publication once, in order", async () => {
  const user = unique("reader");
  const channel = unique("room:");
  let release;
  const away = new Promise((resume) => (release = resume));
  const page = await open(user, channel, async (call) => {
    if (call === 2) await away;
    return token(user);
  });
  await page.waitForSelector("body[data-state=connected][data-subscribed='1']", { state: "attached" });
  await publish(channel, 1, 3);
  await page.waitForFunction(() => document.querySelectorAll("#feed li").length === 3);

  await server.api("POST", "/api/disconnect", { user });
  await page.waitForSelector("body[data-drops='1'][data-code='4013']", { state: "attached" });
  await publish(channel, 4, 6); // while the page waits for its token, with no stream open
  release();
  await page.waitForSelector("body[data-state=connected][data-subscribed='2']", { state: "attached" });
  await page.waitForFunction(() => document.querySelectorAll("#feed li").length === 6);
  await publish(channel, 7, 7);
  await page.waitForFunction(() => document.querySelectorAll("#feed li").length === 7);
  await sleep(200); // time for a duplicate to show, were there one
  assert.deepEqual(await feed(page), notes(1, 7));
  assert.equal(await page.getAttribute("body", "data-recovered"), "true");

  const opened = (await page.evaluate(() => window.opened)).map((url) => new URL(url).searchParams);
  assert.equal(opened.length, 2);
  assert.equal(opened[0].get("last_event_id"), null);
  const resumedFrom = opened[1].get("last_event_id");
  assert.match(resumedFrom, new RegExp(`${channel}:3:`), "resumed from the third publication");
  assert.ok(opened[1].get("token"));
  await page.close();
});

test("a token refused at the HTTP level is replaced by a fresh one from the getter", async () => {
  const user = unique("reader");
  const channel = unique("room:");
  const page = await open(user, channel, (call) => token(user, { ttl: call === 1 ? -60 : 3600 }));
  await page.waitForSelector("body[data-state=connected]", { state: "attached" });
  assert.equal(await page.getAttribute("body", "data-drops"), "1");
  await publish(channel, 1, 2);
  await page.waitForFunction(() => document.querySelectorAll("#feed li").length === 2);
  assert.deepEqual(await feed(page), notes(1, 2));
  assert.equal((await page.evaluate(() => window.opened)).length, 2);
  await page.close();
});

/** An EventSource the test drives: `emit(type, frame, id)` dispatches one event. */
class ScriptedEventSource {
  static last;
  readyState = 1;
  onerror = null;
  listeners = {};
  constructor(url) {
    this.url = url;
    ScriptedEventSource.last = this;
  }
  addEventListener(type, listener) {
    (this.listeners[type] ??= []).push(listener);
  }
  close() {
    this.readyState = 2;
  }
  emit(type, frame, id = "") {
    for (const listener of this.listeners[type] ?? []) listener({ data: JSON.stringify(frame), lastEventId: id });
  }
}

test("publications already seen are filtered out, and reconnect:false fails for good", async () => {
  const stream = new HeraldEventSource({ url: "http://herald/sse?x=1", channels: ["room:1"], token: "t", EventSource: ScriptedEventSource });
  const seen = [];
  stream.channel("room:1").onMessage((p) => seen.push([p.offset, p.epoch]));
  stream.connect();
  await sleep(0);
  const source = ScriptedEventSource.last;
  assert.equal(source.url, "http://herald/sse?x=1&channel=room%3A1&token=t");
  source.emit("connected", { type: "connected", client: "c1", user: "u" });
  source.emit("subscribed", { type: "subscribed", channel: "room:1", offset: 4, epoch: "e1" }, "room:1:4:e1");
  assert.equal(stream.state, "connected");
  for (const offset of [5, 6, 5, 4, 7]) source.emit("message", { type: "message", channel: "room:1", data: offset, offset }, `room:1:${offset}:e1`);
  assert.deepEqual(seen, [
    [5, "e1"],
    [6, "e1"],
    [7, "e1"],
  ]);
  assert.equal(stream.position, "room:1:7:e1");

  const failed = new Promise((done) => stream.on("failed", done));
  source.emit("disconnect", { type: "disconnect", code: 4013, reason: "disconnected by the server API", reconnect: false });
  assert.equal((await failed).code, 4013);
  assert.equal(stream.state, "failed");
  assert.equal(source.readyState, 2, "the EventSource was closed");
  await sleep(50);
  assert.equal(ScriptedEventSource.last, source, "no new stream");
});

test("a saved event id resumes the first stream, and the replayed publications are shown", async () => {
  const saved = "user:u:2:eu,room:a:b:4:e1";
  const stream = new HeraldEventSource({ url: "/sse", channels: ["room:a:b"], token: "t", EventSource: ScriptedEventSource, lastEventId: saved });
  const seen = [];
  stream.on("message", (p) => seen.push([p.channel, p.offset]));
  stream.connect();
  const source = ScriptedEventSource.last;
  assert.equal(new URL(source.url, "http://x").searchParams.get("last_event_id"), saved);
  source.emit("connected", { type: "connected", client: "c1", user: "u" });
  source.emit("subscribed", { type: "subscribed", channel: "user:u", offset: 2, epoch: "eu", recovered: true });
  source.emit("subscribed", { type: "subscribed", channel: "room:a:b", offset: 6, epoch: "e1", recovered: true }, "user:u:2:eu,room:a:b:4:e1");
  for (const offset of [5, 6]) source.emit("message", { type: "message", channel: "room:a:b", data: offset, offset }, `user:u:2:eu,room:a:b:${offset}:e1`);
  assert.deepEqual(seen, [
    ["room:a:b", 5],
    ["room:a:b", 6],
  ]);
  assert.equal(stream.position, "user:u:2:eu,room:a:b:6:e1");
  stream.close();
  assert.equal(stream.state, "disconnected");
});
