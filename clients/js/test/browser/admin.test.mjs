// The admin page, served by the real binary, in headless Chromium: signing in (and a wrong
// password refused), the connection count following a client, watching a channel, publishing
// from the page to the page and to a real WebSocket client, disconnecting a user from the page,
// and the admin API refusing requests without the session cookie or with a forged CSRF token.
//
// With HERALD_SCREENSHOTS=<dir> (relative to the repository, e.g. docs/images), the test also
// writes the documentation's screenshots there (admin-*.png, 1280x800), after some traffic so
// that the chart and the lists have something to show.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { resolve } from "node:path";
import WebSocket from "ws";
import { HeraldClient } from "herald-client";
import { Herald, token, unique, sleep } from "../harness.mjs";
import { launchBrowser } from "./browser.mjs";

const PASSWORD = "admin-page-test-password";
const root = new URL("../../../../", import.meta.url).pathname;
const shots = process.env.HERALD_SCREENSHOTS ? resolve(root, process.env.HERALD_SCREENSHOTS) : null;

let server, browser;
const clients = [];
before(async () => {
  server = await Herald.start({ top: 'node_name = "herald-1"', admin: `password = "${PASSWORD}"` });
  browser = await launchBrowser();
  if (shots) mkdirSync(shots, { recursive: true });
});
after(async () => {
  clients.forEach((c) => c.disconnect());
  await browser?.close();
  await server?.close();
});

function client(user) {
  const c = new HeraldClient({ url: server.ws, token: token(user), WebSocket });
  clients.push(c);
  c.connect();
  return c;
}

/** A fresh browser context (no cookie) on the admin page, at the docs' viewport. */
async function openPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => assert.fail(`page error: ${error.message}`));
  await page.goto(`${server.http}/admin`);
  await page.waitForSelector("body[data-state=signin]", { state: "attached" });
  return page;
}

async function signIn(page, secret = PASSWORD) {
  await page.fill("#secret", secret);
  await page.click("#signin-form button[type=submit]");
}

async function screenshot(page, name) {
  if (shots) await page.screenshot({ path: resolve(shots, `admin-${name}.png`) });
}

/** The first `disconnected` or `failed` of a client, with the server's close code. */
function closeOf(c) {
  return new Promise((done) => {
    const offs = [];
    const seen = (info) => {
      offs.forEach((off) => off());
      done(info);
    };
    offs.push(c.on("disconnected", seen), c.on("failed", seen));
  });
}

/** Clients, channels and a varying publish rate for the screenshots' chart and lists. */
async function traffic(seconds) {
  for (let i = 0; i < 24; i++) {
    const c = client(`reader-${i}`);
    c.subscribe(`chat:room-${i % 6}`);
    c.subscribe(`news:${["sport", "world", "tech"][i % 3]}`);
    if (i % 4 === 0) c.subscribe(`room:game-${i}`);
  }
  const end = Date.now() + seconds * 1000;
  let tick = 0;
  while (Date.now() < end) {
    const burst = 2 + Math.round(6 * (1 + Math.sin(tick++ / 4)));
    await Promise.all(Array.from({ length: burst }, (_, n) => server.publish(`chat:room-${n % 6}`, { text: `message ${tick}.${n}` }, "chat")));
    await sleep(250);
  }
}

test("a wrong password is refused", async () => {
  const page = await openPage();
  await screenshot(page, "signin");
  await signIn(page, "not-the-password-at-all");
  await page.waitForSelector("body[data-signin=refused]", { state: "attached" });
  assert.equal(await page.textContent("#signin-error"), "Wrong API key or password.");
  assert.equal(await page.getAttribute("body", "data-state"), "signin");
  assert.equal((await page.context().cookies()).length, 0, "no session cookie");
  await page.context().close();
});

test("signs in, follows the connections, watches a channel, publishes, and disconnects a user", async () => {
  // For the screenshots: traffic from 20 s before the first one until after the last.
  const busy = shots ? traffic(40) : null;
  if (shots) await sleep(20000);
  const page = await openPage();
  await signIn(page);
  await page.waitForSelector("body[data-state=ready]", { state: "attached" });
  const cookie = (await page.context().cookies()).find((c) => c.name === "herald_admin");
  assert.ok(cookie, "the session cookie");
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");
  assert.equal(cookie.path, "/admin");
  assert.equal(await page.evaluate(() => document.cookie), "", "invisible to scripts");

  // The connection count follows a client that connects.
  await page.waitForSelector("body[data-connections]", { state: "attached" });
  const before = Number(await page.getAttribute("body", "data-connections"));
  const user = unique("alice-");
  const channel = unique("chat:lobby-");
  const alice = client(user);
  const sub = alice.subscribe(channel);
  await sub.ready();
  await page.waitForFunction((n) => document.querySelector("#fig-connections").textContent === String(n), before + 1);

  // The channel appears in the list, filtered by its prefix; the inspector watches it.
  await page.fill("#prefix", channel);
  const row = page.locator(`tr[data-channel="${channel}"]`);
  await row.waitFor();
  assert.equal(await row.locator("td.num").first().textContent(), "1");
  if (shots) {
    await page.fill("#prefix", "");
    await page.waitForFunction(() => document.querySelectorAll("#channels tr[data-channel]").length > 1);
    await page.waitForFunction(() => Number(document.querySelector("#chart").dataset.samples) >= 8);
    await screenshot(page, "overview");
  }
  await page.fill("#prefix", channel);
  await row.locator("button").click();
  await page.waitForSelector(`body[data-watching="${channel}"]`, { state: "attached" });

  // Publish from the page: it arrives in the page's live feed and at the WebSocket client.
  const received = new Promise((done) => sub.onMessage((p) => done(p)));
  await page.fill("#pub-event", "note");
  await page.fill("#pub-data", '{"text": "hello from the admin page"}');
  await page.click("#publish-form button[type=submit]");
  await page.waitForSelector("#live li.message >> text=hello from the admin page");
  const publication = await received;
  assert.deepEqual(publication.data, { text: "hello from the admin page" });
  assert.equal(publication.event, "note");
  assert.match(await page.textContent("#pub-result"), /published at offset 1/);
  await page.waitForSelector("#history li >> text=hello from the admin page");
  assert.match(await page.textContent("#presence"), /1 user, 1 connection in the cluster/);
  await screenshot(page, "inspector");
  // The watch itself is no connection.
  assert.equal(await page.textContent("#fig-connections"), String(before + 1));

  // Look the user up and disconnect them: the client sees the close.
  await page.click("#insp-close");
  await page.click("[data-tab=users]");
  await page.fill("#user-id", user);
  await page.click("#user-form button[type=submit]");
  await page.waitForSelector("#user-status >> text=online");
  assert.match(await page.textContent("#user-result"), new RegExp(channel));
  await screenshot(page, "users");
  const closed = closeOf(alice);
  await page.click("#disconnect");
  const info = await closed;
  assert.equal(info.code, 4013, "disconnected by the server API");
  await page.waitForSelector("#user-status >> text=offline");
  await page.waitForFunction((n) => document.querySelector("#fig-connections").textContent === String(n), before);

  if (shots) {
    await page.click("[data-tab=nodes]");
    await page.waitForSelector("#nodes tr");
    await screenshot(page, "nodes");
    await busy;
  }

  // Signing out ends the session: the cookie no longer opens the API.
  await page.click("#signout");
  await page.waitForSelector("body[data-state=signin]", { state: "attached" });
  const status = await page.evaluate(async () => (await fetch("admin/api/stats")).status);
  assert.equal(status, 401);
  await page.context().close();
});

test("the admin API refuses a request without the session cookie or with a forged CSRF token", async () => {
  const page = await openPage();
  const post = (headers) =>
    page.evaluate(
      async ([headers]) => {
        const response = await fetch("admin/api/publish", {
          method: "POST",
          headers: { "content-type": "application/json", ...headers },
          body: JSON.stringify({ channel: "chat:csrf", data: { n: 1 } }),
        });
        return [response.status, (await response.json()).error?.code ?? "none"];
      },
      [headers],
    );
  // No session cookie: refused, reads and writes alike.
  assert.equal(await page.evaluate(async () => (await fetch("admin/api/stats")).status), 401);
  assert.deepEqual(await post({}), [401, "unauthorized"]);

  await signIn(page);
  await page.waitForSelector("body[data-state=ready]", { state: "attached" });
  // With the cookie but without the token, or with a forged one: refused.
  assert.deepEqual(await post({}), [403, "forbidden"]);
  assert.deepEqual(await post({ "x-herald-csrf": "forged-token" }), [403, "forbidden"]);
  // The page's own token passes (read from the session, as the page does after a reload).
  const csrf = await page.evaluate(async () => (await (await fetch("admin/api/session")).json()).csrf_token);
  assert.deepEqual(await post({ "x-herald-csrf": csrf }), [200, "none"]);
  await page.context().close();
});
