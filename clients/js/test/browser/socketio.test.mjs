// socket.io-client in headless Chromium: seed 002's dashboard page, unmodified, connects to
// Herald (long-polling from another origin, then the upgrade to WebSocket), subscribes through
// the operator's event map and shows a publication in the DOM.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Herald, token } from "../harness.mjs";
import { launchBrowser, servePages } from "./browser.mjs";

let server, pages, browser;
before(async () => {
  server = await Herald.start({
    socketio: `namespaces = ["/ws"]
[[socketio.event]]
name = "subscribe:site"
subscribe = "site:{siteId}"
reply = "subscribed"`,
  });
  pages = await servePages({ socketio: new URL("./pages/socketio.ts", import.meta.url).pathname });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await pages?.close();
  await server?.close();
});

test("seed 002's socket.io-client page shows an alarm in the DOM", async () => {
  const page = await browser.newPage();
  const query = new URLSearchParams({ server: server.http, token: token("operator", { channels: ["site:1"] }) });
  await page.goto(`${pages.base}/socketio.html?${query}`);
  await page.waitForSelector("body[data-subscribed=yes]", { state: "attached" });
  await page.waitForSelector("body[data-transport=websocket]", { state: "attached" });
  await server.publish("site:1", { title: "Silo 3 below 10%" }, "alarm:new");
  await page.waitForSelector("#alarms li");
  assert.equal(await page.textContent("#alarms li"), "Silo 3 below 10%");
  await page.close();
});
