// Herald's admin page. Plain JavaScript, no framework, no build step: served from the binary.
//
// Every URL is relative to where the page is (…/admin), so that it works when a service nests
// Herald under a prefix. The session is an HttpOnly cookie the script never sees; the CSRF
// token from the sign-in goes with every POST in X-Herald-CSRF. Text from the server is only
// ever set with textContent, never parsed as HTML.
"use strict";

(() => {
  const base = location.pathname.replace(/\/+$/, "") + "/";
  const POLL_MS = 2000;
  const CHART_WINDOW_MS = 10 * 60 * 1000;
  const PAGE_SIZE = 50;
  const FEED_MAX = 200;

  const $ = (selector) => document.querySelector(selector);
  let csrf = "";
  let poller = null;
  let samples = [];
  let channelOffset = 0;
  let channelTotal = 0;
  let watching = null; // { channel, source }

  // === Calls to the admin API ===

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function call(method, path, body) {
    const headers = {};
    if (method !== "GET") {
      headers["content-type"] = "application/json";
      headers["x-herald-csrf"] = csrf;
    }
    const response = await fetch(base + "api/" + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
    const json = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = json.error ?? {};
      const failure = new ApiError(response.status, error.code ?? "", error.message ?? response.statusText);
      if (response.status === 401 && path !== "login" && path !== "session") {
        signedOut("Your session has ended. Sign in again.");
      }
      throw failure;
    }
    return json;
  }

  const enc = encodeURIComponent;

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  let toastTimer = null;
  function toast(message, kind = "info") {
    const box = $("#toast");
    box.textContent = message;
    box.dataset.kind = kind;
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (box.hidden = true), 4000);
  }

  const number = (n) => Number(n).toLocaleString("en-US");
  const counted = (n, noun) => `${number(n)} ${noun}${Number(n) === 1 ? "" : "s"}`;
  const rate = (n) => (n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(1));
  function duration(seconds) {
    const d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }
  const time = (ms) => new Date(ms).toLocaleTimeString("en-GB");

  // === Signing in and out ===

  function signedOut(message = "") {
    csrf = "";
    clearInterval(poller);
    poller = null;
    stopWatching();
    $("#app").hidden = true;
    $("#signin").hidden = false;
    $("#signin-error").textContent = message;
    document.body.dataset.state = "signin";
    $("#secret").focus();
  }

  async function signedIn(session) {
    csrf = session.csrf_token;
    $("#node").textContent = session.node;
    $("#engine").textContent = `${session.engine} engine`;
    $("#signin").hidden = true;
    $("#app").hidden = false;
    document.body.dataset.state = "ready";
    samples = [];
    await refresh();
    await loadChannels();
    clearInterval(poller);
    poller = setInterval(() => {
      refresh().catch(() => {});
      if (!$("#tab-channels").hidden) loadChannels().catch(() => {});
    }, POLL_MS);
  }

  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const secret = $("#secret").value;
    $("#signin-error").textContent = "";
    try {
      const session = await call("POST", "login", { secret });
      $("#secret").value = "";
      await signedIn(session);
    } catch (error) {
      $("#signin-error").textContent = error.status === 401 ? "Wrong API key or password." : error.message;
      document.body.dataset.signin = "refused";
    }
  });

  $("#signout").addEventListener("click", async () => {
    try {
      await call("POST", "logout", {});
    } finally {
      signedOut("Signed out.");
    }
  });

  // === Figures, chart, nodes ===

  async function refresh() {
    const after = samples.length ? samples[samples.length - 1].at : 0;
    const [stats, fresh] = await Promise.all([call("GET", "stats"), call("GET", `samples?after=${after}`)]);
    const node = stats.node;
    $("#fig-connections").textContent = number(node.connections);
    $("#fig-users").textContent = number(node.users);
    $("#fig-channels").textContent = number(node.channels);
    $("#fig-subscriptions").textContent = `${number(node.subscriptions)} subscriptions`;
    $("#fig-in-total").textContent = `${number(node.messages_in)} since start`;
    $("#fig-out-total").textContent = `${number(node.messages_out)} since start`;
    const clustered = stats.cluster.nodes > 1;
    $("#fig-cluster-connections").textContent = clustered ? `${number(stats.cluster.connections)} in the cluster` : "";
    $("#fig-cluster-users").textContent = clustered ? `${number(stats.cluster.users)} in the cluster` : "";
    $("#uptime").textContent = `up ${duration(node.uptime_s)}`;
    document.body.dataset.connections = String(node.connections);

    samples.push(...fresh.samples);
    const since = Date.now() - CHART_WINDOW_MS;
    samples = samples.filter((s) => s.at >= since);
    const last = samples[samples.length - 1];
    $("#fig-in").textContent = last ? rate(last.messages_in_per_s) : "–";
    $("#fig-out").textContent = last ? rate(last.messages_out_per_s) : "–";
    drawChart();
    showNodes(stats);
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    return node;
  }

  function drawChart() {
    const chart = $("#chart");
    const [width, height, top, bottom, left] = [900, 180, 10, 20, 44];
    const end = Date.now();
    const start = end - CHART_WINDOW_MS;
    const peak = Math.max(1, ...samples.map((s) => Math.max(s.messages_in_per_s, s.messages_out_per_s)));
    const scale = niceCeiling(peak);
    const x = (at) => left + ((at - start) / CHART_WINDOW_MS) * (width - left);
    const y = (value) => height - bottom - (value / scale) * (height - top - bottom);
    chart.replaceChildren();
    for (const fraction of [0, 0.5, 1]) {
      const value = scale * fraction;
      chart.append(svg("line", { x1: left, x2: width, y1: y(value), y2: y(value), class: "grid" }));
      const label = svg("text", { x: left - 6, y: y(value) + 4, class: "axis", "text-anchor": "end" });
      label.textContent = Number.isInteger(value) ? number(value) : value.toFixed(1);
      chart.append(label);
    }
    for (let minutesAgo = 10; minutesAgo >= 0; minutesAgo -= 2) {
      const anchor = minutesAgo === 10 ? "start" : minutesAgo === 0 ? "end" : "middle";
      const label = svg("text", { x: x(end - minutesAgo * 60000), y: height - 4, class: "axis", "text-anchor": anchor });
      label.textContent = minutesAgo ? `-${minutesAgo}m` : "now";
      chart.append(label);
    }
    for (const [field, kind] of [["messages_in_per_s", "in"], ["messages_out_per_s", "out"]]) {
      if (samples.length < 2) continue;
      const points = samples.map((s) => `${x(s.at).toFixed(1)},${y(s[field]).toFixed(1)}`).join(" ");
      chart.append(svg("polyline", { points, class: `line ${kind}` }));
    }
    chart.dataset.samples = String(samples.length);
  }

  function niceCeiling(value) {
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 5, 10]) if (value <= step * magnitude) return step * magnitude;
    return 10 * magnitude;
  }

  function showNodes(stats) {
    const rows = stats.nodes.map((n) =>
      el("tr", { class: n.name === stats.node.name ? "self" : "" },
        el("td", { text: n.name }),
        el("td", { class: "num", text: number(n.connections) }),
        el("td", { class: "num", text: number(n.users) }),
        el("td", { class: "num", text: number(n.subscriptions) }),
        el("td", { class: "num", text: number(n.messages_in) }),
        el("td", { class: "num", text: number(n.messages_out) }),
        el("td", { class: "num", text: duration(n.uptime_s) })));
    $("#nodes").replaceChildren(...rows);
  }

  // === Tabs ===

  for (const tab of document.querySelectorAll("[data-tab]")) {
    tab.addEventListener("click", () => {
      for (const other of document.querySelectorAll("[data-tab]")) {
        const selected = other === tab;
        other.setAttribute("aria-selected", String(selected));
        $(`#tab-${other.dataset.tab}`).hidden = !selected;
      }
      if (tab.dataset.tab === "channels") loadChannels().catch(() => {});
    });
  }

  // === Channels ===

  async function loadChannels() {
    const prefix = $("#prefix").value.trim();
    const page = await call("GET", `channels?prefix=${enc(prefix)}&offset=${channelOffset}&limit=${PAGE_SIZE}`);
    if (page.total > 0 && channelOffset >= page.total) {
      channelOffset = Math.max(0, Math.floor((page.total - 1) / PAGE_SIZE) * PAGE_SIZE);
      return loadChannels();
    }
    channelTotal = page.total;
    const rows = page.channels.map((c) =>
      el("tr", { "data-channel": c.channel },
        el("td", {}, el("code", { text: c.channel })),
        el("td", { class: "num", text: number(c.subscribers) }),
        el("td", { class: "num" }, el("button", { class: "quiet small", text: "Inspect", onclick: () => inspect(c.channel) }))));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "3", class: "muted", text: prefix ? "No channel with this prefix here." : "No channel has a subscriber on this node." })));
    $("#channels").replaceChildren(...rows);
    const first = page.total ? channelOffset + 1 : 0;
    const last = channelOffset + page.channels.length;
    $("#page-info").textContent = `${number(first)}–${number(last)} of ${number(page.total)}`;
    $("#prev").disabled = channelOffset === 0;
    $("#next").disabled = last >= page.total;
  }

  let filterTimer = null;
  $("#prefix").addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      channelOffset = 0;
      loadChannels().catch((e) => toast(e.message, "error"));
    }, 200);
  });
  $("#prev").addEventListener("click", () => {
    channelOffset = Math.max(0, channelOffset - PAGE_SIZE);
    loadChannels().catch((e) => toast(e.message, "error"));
  });
  $("#next").addEventListener("click", () => {
    if (channelOffset + PAGE_SIZE < channelTotal) channelOffset += PAGE_SIZE;
    loadChannels().catch((e) => toast(e.message, "error"));
  });
  $("#inspect-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("#inspect-name").value.trim();
    if (name) inspect(name);
  });

  // === The channel inspector ===

  function stopWatching() {
    if (watching) watching.source.close();
    watching = null;
    $("#inspector").hidden = true;
    delete document.body.dataset.watching;
  }

  function inspect(channel) {
    stopWatching();
    $("#inspector").hidden = false;
    $("#insp-channel").textContent = channel;
    $("#insp-status").textContent = "connecting…";
    $("#live").replaceChildren();
    $("#pub-result").textContent = "";
    const source = new EventSource(`${base}api/channels/${enc(channel)}/watch`);
    watching = { channel, source };
    source.addEventListener("watching", () => {
      $("#insp-status").textContent = "watching live: what reaches this channel appears below";
      document.body.dataset.watching = channel;
    });
    source.addEventListener("dropped", (event) => {
      const { dropped } = JSON.parse(event.data);
      $("#insp-status").textContent = `watching live (${number(dropped)} items skipped: the page fell behind)`;
    });
    source.addEventListener("end", () => {
      source.close();
      signedOut("Your session has ended. Sign in again.");
    });
    source.onmessage = (event) => showLive(JSON.parse(event.data));
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) $("#insp-status").textContent = "not watching (refused or closed); inspect again to retry";
      else $("#insp-status").textContent = "reconnecting…";
    };
    loadPresence(channel);
    loadHistory(channel);
  }

  function frameText(frame) {
    if (frame.type === "message") {
      const event = frame.event ? `${frame.event} ` : "";
      return `#${frame.offset} ${event}${JSON.stringify(frame.data)}`;
    }
    if (frame.type === "subscribed") return `stream reset at offset ${frame.offset} (epoch ${frame.epoch})`;
    return `${frame.type}: ${frame.user}${frame.client ? ` (${frame.client})` : ""}`;
  }

  function showLive(frame) {
    const item = el("li", { class: frame.type },
      el("span", { class: "when", text: time(frame.ts ?? Date.now()) }),
      el("span", { class: "what", text: frameText(frame) }));
    if (frame.from) item.append(el("span", { class: "muted small", text: ` from ${frame.from.user}` }));
    const feed = $("#live");
    feed.prepend(item);
    while (feed.children.length > FEED_MAX) feed.lastChild.remove();
    if (frame.type === "join" || frame.type === "leave") loadPresence(watching?.channel);
  }

  async function loadPresence(channel) {
    if (!channel) return;
    const box = $("#presence");
    try {
      const presence = await call("GET", `channels/${enc(channel)}/presence`);
      if (watching?.channel !== channel) return;
      const list = el("ul", { class: "members" }, ...presence.clients.map((m) =>
        el("li", {}, el("strong", { text: m.user }), el("span", { class: "muted", text: ` ${m.client} since ${time(m.joined_at)}` }))));
      box.replaceChildren(el("p", { text: `${counted(presence.users, "user")}, ${counted(presence.connections, "connection")} in the cluster` }), list);
    } catch (error) {
      box.replaceChildren(el("p", { class: "muted", text: error.code === "forbidden" ? "Presence is off for this namespace." : error.message }));
    }
  }

  async function loadHistory(channel) {
    if (!channel) return;
    try {
      const page = await call("GET", `channels/${enc(channel)}/history?limit=20`);
      if (watching?.channel !== channel) return;
      const items = page.publications.slice().reverse().map((p) =>
        el("li", {}, el("span", { class: "when", text: time(p.ts) }), el("span", { class: "what", text: frameText(p) })));
      if (!items.length) items.push(el("li", { class: "muted", text: "Nothing kept (history_size is 0, or nothing was published within history_ttl)." }));
      $("#history").replaceChildren(...items);
    } catch (error) {
      $("#history").replaceChildren(el("li", { class: "muted", text: error.message }));
    }
  }

  $("#history-reload").addEventListener("click", () => loadHistory(watching?.channel));
  $("#insp-close").addEventListener("click", stopWatching);

  $("#publish-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!watching) return;
    let data;
    try {
      data = JSON.parse($("#pub-data").value);
    } catch {
      $("#pub-result").textContent = "The data must be JSON.";
      return;
    }
    const body = { channel: watching.channel, data };
    const name = $("#pub-event").value.trim();
    if (name) body.event = name;
    try {
      const position = await call("POST", "publish", body);
      $("#pub-result").textContent = `published at offset ${position.offset}`;
      loadHistory(watching.channel);
    } catch (error) {
      $("#pub-result").textContent = error.message;
    }
  });

  // === Users ===

  $("#user-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = $("#user-id").value.trim();
    if (id) await lookUp(id);
  });

  async function lookUp(id) {
    const box = $("#user-result");
    try {
      const user = await call("GET", `users/${enc(id)}`);
      const status = user.online
        ? `online: ${number(user.connections)} connection${user.connections === 1 ? "" : "s"} in the cluster, ${number(user.here.length)} on ${user.node}`
        : "offline";
      const rows = user.here.map((c) =>
        el("tr", {}, el("td", {}, el("code", { text: c.client })),
          el("td", {}, ...c.channels.map((channel) => el("button", { class: "chip", text: channel, onclick: () => inspect(channel) })))));
      const reconnect = el("input", { type: "checkbox", id: "allow-reconnect" });
      const disconnect = el("button", {
        class: "danger", text: "Disconnect", id: "disconnect",
        onclick: async () => {
          try {
            await call("POST", "disconnect", { user: user.user, reconnect: reconnect.checked });
            toast(`Disconnected ${user.user} on every node.`);
            setTimeout(() => lookUp(id), 300);
          } catch (error) {
            toast(error.message, "error");
          }
        },
      });
      disconnect.disabled = !user.online;
      box.replaceChildren(
        el("div", { class: "user-head" },
          el("h3", {}, el("code", { text: user.user })),
          el("span", { class: user.online ? "badge on" : "badge", text: status, id: "user-status" }),
          el("span", { class: "spacer" }),
          el("label", { class: "small" }, reconnect, " let the client reconnect"),
          disconnect),
        rows.length
          ? el("table", { class: "list" }, el("thead", {}, el("tr", {}, el("th", { text: "Connection on this node" }), el("th", { text: "Channels" }))), el("tbody", {}, ...rows))
          : el("p", { class: "muted", text: "No connection on this node." }));
    } catch (error) {
      box.replaceChildren(el("p", { class: "error", text: error.message }));
    }
  }

  // === Start ===

  call("GET", "session").then(signedIn, () => signedOut());
})();
