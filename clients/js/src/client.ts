/**
 * The connection to Herald over WebSocket: authentication, the connection state machine,
 * reconnects with backoff and full jitter, token refresh before expiry, a watch on a silent
 * link, and requests matched to answers by id. docs/client-guide.md describes the same state
 * machine for clients in other languages.
 */
import { backoffDelay, STABLE_MS, withTimeout, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { HeraldError } from "./errors.js";
import type { PresenceResult, HistoryResult, Publication, ServerFrame, StreamPosition } from "./protocol.js";
import { Subscription, type EventMap, type SubscribeOptions, type SubscriptionLink, type UntypedEvents } from "./subscription.js";

export type ConnectionState = "disconnected" | "connecting" | "connected" | "failed";

/** Why the link ended: the server's close code and reason, or one of the client's own. */
export interface DisconnectInfo {
  code: number;
  reason: string;
  /** Whether the client will reconnect by itself. */
  reconnect: boolean;
  /** Milliseconds until the next attempt, when it will. */
  delay?: number;
}

export interface ConnectedInfo {
  client: string;
  user: string;
  /** The server's heartbeat interval in seconds. */
  heartbeat: number;
  /** When the token expires (Unix seconds), if it does. */
  expiresAt?: number;
}

/**
 * Codes the client itself gives in `disconnected` and `failed` (the server's are 1000-4999 as
 * docs/protocol.md lists them; these never travel on the wire).
 */
export const ClientCode = {
  /** `disconnect()` was called. */
  CLOSED: 1000,
  /** The token getter threw or rejected; retried with backoff. */
  TOKEN_UNAVAILABLE: 3000,
  /** No `connected` frame within the request timeout. */
  CONNECT_TIMEOUT: 3001,
  /** The link went silent and a `ping` got no answer in time. */
  NO_HEARTBEAT: 3002,
  /** Reconnect attempts ran out (`backoff.attempts`). */
  ATTEMPTS_EXHAUSTED: 3003,
} as const;

/** The token: a string, or a function that fetches a fresh one (null: the user is signed out). */
export type TokenSource = string | (() => string | null | Promise<string | null>);

/** The part of the WebSocket interface the client uses (browsers, Bun, Deno, Node 22, `ws`). */
export interface WebSocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** The WebSocket endpoint, for example `wss://rt.example.com/ws`. */
  url: string;
  /**
   * The token. Leave it out where the server's connect hook authenticates the client by its
   * cookie: no `auth` frame is sent then.
   */
  token?: TokenSource;
  /** A WebSocket implementation, where the platform has none (Node 20: `ws`). */
  WebSocket?: WebSocketConstructor;
  backoff?: BackoffOptions;
  /** Milliseconds a request, or a connection attempt, may take (default 10000). */
  timeout?: number;
}

interface ClientEvents {
  state: (state: ConnectionState) => void;
  connecting: () => void;
  connected: (info: ConnectedInfo) => void;
  disconnected: (info: DisconnectInfo) => void;
  failed: (info: DisconnectInfo) => void;
  /** Errors no request waits for: a failed token refresh, an `error` frame without an id. */
  error: (error: HeraldError) => void;
  /** Every publication delivered to any subscription. */
  message: (publication: Publication) => void;
}

/** How `request` sends a command. */
export interface RequestOptions {
  /** Handles the answering frame synchronously (subscribe answers are followed by messages). */
  onFrame?: (frame: ServerFrame) => void;
  /** Milliseconds to wait for the answer (default: the client's `timeout`). */
  timeout?: number;
  /** Sent at once, ahead of the queue and through a rate-limit pause (pings that probe the link). */
  urgent?: boolean;
}

interface Pending {
  resolve: (value: never) => void;
  reject: (error: HeraldError) => void;
  timer?: ReturnType<typeof setTimeout>;
  command: Record<string, unknown>;
  sent: boolean;
  onFrame?: (frame: ServerFrame) => void;
  urgent: boolean;
}

/**
 * Requests sent and not yet answered, at most. The server refuses commands past its rate limit
 * and closes a connection that keeps sending after `commands_burst` refusals in a row (4008,
 * default burst 20); a window smaller than any sensible burst means the client hears its first
 * refusal before it could have sent that many, and pauses.
 */
const WINDOW = 8;

/** Close codes after which reconnecting cannot help, when no `disconnect` frame said otherwise. */
const FINAL_CODES = [1002, 1007, 4001, 4008, 4009, 4011];

export class HeraldClient extends Emitter<ClientEvents> implements SubscriptionLink {
  state: ConnectionState = "disconnected";
  /** The last `connected` frame's details; kept while reconnecting. */
  info?: ConnectedInfo;
  private ws?: WebSocketLike;
  private subs = new Map<string, Subscription<EventMap>>();
  private pending = new Map<number, Pending>();
  private nextId = 0;
  private attempt = 0;
  private generation = 0;
  private token?: string;
  private tokenFresh = false;
  private serverDisconnect?: DisconnectInfo;
  private lastFrameAt = 0;
  private connectedAt = 0;
  private pinging = false;
  /** Whether this connection's personal `subscribed` frame has come. */
  private personalSeen = false;
  /** Subscribe retries waiting for their delay; cleared with the connection. */
  private retries = new Set<ReturnType<typeof setTimeout>>();
  /** The server's clock minus ours, in milliseconds, measured with a `ping`. */
  private clockOffset = 0;
  /** Requests waiting for the window or for the pause after a `rate_limited` refusal to end. */
  private outbox: Pending[] = [];
  private inFlight = 0;
  private pausedUntil = 0;
  private pauses = 0;
  private timers: Record<"retry" | "connect" | "refresh" | "watch" | "pause", ReturnType<typeof setTimeout> | undefined> = {
    retry: undefined,
    connect: undefined,
    refresh: undefined,
    watch: undefined,
    pause: undefined,
  };
  private readonly timeout: number;
  private readonly WS: WebSocketConstructor;

  constructor(private readonly options: ClientOptions) {
    super();
    this.timeout = options.timeout ?? 10000;
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new Error("no WebSocket on this platform: pass one as options.WebSocket");
    this.WS = WS;
  }

  /** Starts connecting; the client then stays connected until `disconnect()` or `failed`. */
  connect(): void {
    if (this.state === "connecting" || this.state === "connected") return;
    clearTimeout(this.timers.retry);
    this.timers.retry = undefined;
    this.attempt = 0;
    this.listenToPage(true);
    void this.open();
  }

  /** Closes the link for good (until `connect()` again); requests waiting are rejected. */
  disconnect(): void {
    this.teardown(new HeraldError("closed", "the client was closed"), true);
    this.listenToPage(false);
    this.enter("disconnected", { code: ClientCode.CLOSED, reason: "client closed", reconnect: false });
  }

  /**
   * The subscription to `channel`: the existing one, or a new one that subscribes as soon as the
   * client is connected. `E` maps the channel's event names to the types of their data.
   */
  subscribe<E extends EventMap = UntypedEvents>(channel: string, options?: SubscribeOptions): Subscription<E> {
    const existing = this.subs.get(channel);
    if (existing) return existing as unknown as Subscription<E>;
    const sub = new Subscription<EventMap>(channel, this, options);
    this.subs.set(channel, sub);
    if (this.state === "connected") {
      const personal = channel === `user:${this.info?.user}`;
      sub.personal = personal;
      // The server subscribes the personal channel itself on connect. Until its frame has come,
      // the subscription waits for it; one that wants a position of its own is taken back and
      // made again with it (the server refuses `since` on a channel already subscribed).
      if (personal && !this.personalSeen) {
        if (!options?.since && options?.last === undefined) return sub as unknown as Subscription<E>;
        this.request({ type: "unsubscribe", channel }).catch(() => undefined);
      }
      this.sendSubscribe(sub);
    }
    return sub as unknown as Subscription<E>;
  }

  /** The current subscription to `channel`, if any. */
  getSubscription<E extends EventMap = UntypedEvents>(channel: string): Subscription<E> | undefined {
    return this.subs.get(channel) as unknown as Subscription<E> | undefined;
  }

  subscriptions(): Subscription<EventMap>[] {
    return [...this.subs.values()];
  }

  publish(channel: string, event: string | undefined, data: unknown): Promise<StreamPosition> {
    return this.request({ type: "publish", channel, event, data });
  }

  presence(channel: string, options: { countsOnly?: boolean } = {}): Promise<PresenceResult> {
    return this.request({ type: "presence", channel, counts_only: options.countsOnly || undefined });
  }

  async history<T = unknown>(channel: string, options: { since?: StreamPosition; limit?: number } = {}): Promise<HistoryResult<T>> {
    const result = await this.request<HistoryResult<T>>({ type: "history", channel, ...options });
    for (const p of result.publications) p.epoch = result.epoch;
    return result;
  }

  /** Round trip to the server; resolves with the server's clock (Unix milliseconds). */
  async ping(): Promise<number> {
    return (await this.request<{ pong: number }>({ type: "ping" })).pong;
  }

  /**
   * Sends a command and resolves with the answer's `result` (or the answering frame for
   * subscribe and unsubscribe). Waits for the connection if there is none yet; rejects with the
   * server's error code, `timeout`, `disconnected` (the link dropped after it was sent) or
   * `closed`.
   */
  request<T>(command: Record<string, unknown>, options: RequestOptions = {}): Promise<T> {
    if (this.state === "failed" || (this.state === "disconnected" && !this.timers.retry))
      return Promise.reject(new HeraldError("closed", "the client is not connected; call connect()"));
    const { onFrame, timeout = this.timeout, urgent = false } = options;
    return new Promise<T>((resolve, reject) => {
      const id = ++this.nextId;
      const entry: Pending = { resolve: resolve as (v: never) => void, reject, command: { ...command, id }, sent: false, onFrame, urgent };
      entry.timer = setTimeout(() => {
        reject(new HeraldError("timeout", `no answer to ${String(command.type)} within ${timeout} ms`));
        // Subscription commands stay registered: a late answer is still applied when it comes.
        if (bound(entry)) return;
        this.pending.delete(id);
        this.outbox = this.outbox.filter((e) => e !== entry);
        if (entry.sent) this.inFlight--;
        this.pump();
      }, timeout);
      this.pending.set(id, entry);
      if (urgent) this.outbox.unshift(entry);
      else this.outbox.push(entry);
      this.pump();
    });
  }

  /** Sends a command that has no answer; false when there is no connection to send it on. */
  send(command: Record<string, unknown>): boolean {
    if (this.state !== "connected" || !this.ws || this.pausedUntil > Date.now()) return false;
    this.ws.send(JSON.stringify(command));
    return true;
  }

  /** Called by a subscription that ended. */
  release(sub: Subscription<EventMap>): void {
    if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
  }

  // ----- the connection -----

  private async open(): Promise<void> {
    const generation = ++this.generation;
    this.enter("connecting");
    let token: string | null | undefined;
    try {
      token = this.options.token === undefined ? undefined : await this.currentToken();
    } catch (error) {
      if (generation === this.generation)
        this.dropped({ code: ClientCode.TOKEN_UNAVAILABLE, reason: `token getter failed: ${describe(error)}`, reconnect: true });
      return;
    }
    if (generation !== this.generation) return;
    if (token === null || token === "") return this.dropped({ code: 4001, reason: "no token: the token getter returned none", reconnect: false });
    this.serverDisconnect = undefined;
    // The personal channel's position (or `last`) goes with the token, and the server
    // recovers it on connect. Before the first connect the user is not known yet, but only the
    // user's own `user:` channel can be subscribed, so any is the personal one.
    const personal = (
      this.info ? this.subs.get(`user:${this.info.user}`) : [...this.subs.values()].find((s) => s.channel.startsWith("user:"))
    )?.connectFields();
    let url = this.options.url;
    if (token === undefined && personal && (personal.since || personal.last !== undefined)) {
      // No `auth` frame (the connect hook authenticates): the position goes in the URL.
      const value = personal.since ? `since=${personal.since.offset}:${encodeURIComponent(personal.since.epoch)}` : `last=${personal.last}`;
      url += `${url.includes("?") ? "&" : "?"}${value}`;
    }
    let ws: WebSocketLike;
    try {
      ws = new this.WS(url);
    } catch (error) {
      // An invalid URL: no retry can fix it.
      return this.dropped({ code: 1006, reason: describe(error), reconnect: false });
    }
    this.ws = ws;
    ws.onopen = () => {
      if (token !== undefined) ws.send(JSON.stringify({ type: "auth", token, ...personal }));
    };
    ws.onmessage = (event) => this.receive(String(event.data));
    ws.onerror = () => {};
    ws.onclose = (event) => {
      if (this.ws === ws) this.closed(event.code, event.reason);
    };
    this.timers.connect = setTimeout(() => {
      if (this.ws === ws && this.state === "connecting")
        this.dropped({ code: ClientCode.CONNECT_TIMEOUT, reason: "no connected frame in time", reconnect: true });
    }, this.timeout);
  }

  private async currentToken(): Promise<string | null> {
    const source = this.options.token;
    if (typeof source === "string") return source;
    const expires = this.info?.expiresAt;
    if (this.token && !(expires && expires * 1000 <= this.serverNow())) {
      this.tokenFresh = false;
      return this.token;
    }
    this.token = (await this.fetchToken()) ?? undefined;
    this.tokenFresh = true;
    return this.token ?? null;
  }

  /** Asks the token getter, within the request timeout: a getter that hangs counts as failing. */
  private fetchToken(): Promise<string | null> {
    return withTimeout(this.options.token as () => string | null | Promise<string | null>, this.timeout);
  }

  /** Our estimate of the server's clock, for comparing with `expires_at`. */
  private serverNow(): number {
    return Date.now() + this.clockOffset;
  }

  private receive(text: string): void {
    let frame: ServerFrame;
    try {
      frame = JSON.parse(text) as ServerFrame;
    } catch {
      return;
    }
    this.lastFrameAt = Date.now();
    const channel = frame.channel as string;
    const pending = frame.id !== undefined ? this.pending.get(frame.id as number) : undefined;
    // An answer nobody waits for any more (its request timed out, or belonged to an earlier
    // connection) changes nothing.
    if (frame.id !== undefined && !pending) return;
    switch (frame.type) {
      case "connected":
        return this.connected(frame);
      case "message": {
        const publication = this.subs.get(channel)?.deliver(frame);
        if (publication) this.emit("message", publication);
        return;
      }
      case "join":
      case "leave":
      case "typing":
        return this.subs.get(channel)?.ephemeral(frame);
      case "disconnect":
        this.serverDisconnect = { code: frame.code as number, reason: frame.reason as string, reconnect: frame.reconnect !== false };
        return;
      case "error": {
        const error = new HeraldError(frame.code as string, frame.message as string);
        if (error.code === "rate_limited") this.pause();
        if (pending) return this.settle(frame, pending, error);
        return this.emit("error", error);
      }
      case "subscribed": {
        if (pending) return this.settle(frame, pending);
        // Without an id: the personal channel the server subscribed on connect, or a gap notice.
        const personal = channel === `user:${this.info?.user}`;
        if (personal) this.personalSeen = true;
        let sub = this.subs.get(channel);
        if (!sub && personal) this.subs.set(channel, (sub = new Subscription(channel, this)));
        if (sub && personal) sub.personal = true;
        // One whose own subscribe is on its way takes only that answer: this frame is about the
        // subscription before it.
        if (sub?.asking) return;
        return sub?.subscribed(frame);
      }
      case "unsubscribed":
        if (pending) return this.settle(frame, pending);
        return this.subs.get(channel)?.end({ channel, by: "server" });
      case "reply":
        if (pending) this.settle(frame, pending);
    }
  }

  private settle(frame: ServerFrame, pending: Pending, error?: HeraldError): void {
    this.pending.delete(frame.id as number);
    clearTimeout(pending.timer);
    this.inFlight--;
    if (error?.code !== "rate_limited") this.pauses = 0;
    this.pump();
    pending.onFrame?.(frame);
    if (error) pending.reject(error);
    else pending.resolve((frame.type === "reply" ? frame.result : frame) as never);
  }

  private connected(frame: ServerFrame): void {
    clearTimeout(this.timers.connect);
    this.connectedAt = Date.now();
    const info: ConnectedInfo = {
      client: frame.client as string,
      user: frame.user as string,
      heartbeat: (frame.heartbeat_s as number) || 25,
      expiresAt: frame.expires_at as number | undefined,
    };
    this.info = info;
    // The queue, in order: the clock measurement, restored subscriptions, the requests that
    // waited for the connection, then what the `connected` handlers ask for.
    this.state = "connected";
    this.personalSeen = false;
    const waiting = this.outbox;
    this.outbox = [];
    const generation = this.generation;
    if (info.expiresAt && typeof this.options.token === "function")
      void this.measureClock().then(() => generation === this.generation && this.scheduleRefresh());
    const personal = `user:${info.user}`;
    for (const sub of this.subs.values()) {
      if (sub.channel === personal) sub.personal = true;
      else this.sendSubscribe(sub);
    }
    this.outbox.push(...waiting);
    this.enter("connected", info);
    // A handler may have disconnected the client already.
    if (generation !== this.generation) return;
    this.pump();
    this.watch();
  }

  /** Measures the offset between the server's clock and ours (refresh times are the server's). */
  private async measureClock(): Promise<void> {
    const generation = this.generation;
    try {
      const sent = Date.now();
      const { pong } = await this.request<{ pong: number }>({ type: "ping" }, { urgent: true });
      if (generation === this.generation) this.clockOffset = pong - (sent + Date.now()) / 2;
    } catch {
      // keep the last estimate
    }
  }

  /**
   * Sends `subscribe` and acts on its answer when it comes, however late: the request's own
   * timeout only gives up waiting, the server still answers. Refusals end the subscription; a
   * rate limit is asked again behind the paused queue, a hook that could not answer after
   * growing delays, while this connection lasts. After a drop the reconnect subscribes again.
   */
  private sendSubscribe(sub: Subscription<EventMap>, retries = 0): void {
    const generation = this.generation;
    sub.asking = true;
    const onFrame = (frame: ServerFrame) => {
      sub.asking = false;
      if (frame.type === "subscribed") return sub.subscribed(frame);
      if (frame.type !== "error" || this.subs.get(sub.channel) !== sub) return;
      const error = new HeraldError(frame.code as string, frame.message as string);
      if (error.code !== "unavailable" && error.code !== "rate_limited") return sub.refused(error);
      // A rate limit already holds the whole queue back (see `pause`): ask again behind it.
      if (error.code === "rate_limited") return this.sendSubscribe(sub, retries);
      const timer = setTimeout(() => {
        this.retries.delete(timer);
        const current = generation === this.generation && this.state === "connected";
        if (current && this.subs.get(sub.channel) === sub && sub.state === "subscribing") this.sendSubscribe(sub, retries + 1);
      }, backoffDelay(retries, this.options.backoff));
      this.retries.add(timer);
    };
    this.request<ServerFrame>(sub.subscribeCommand(), { onFrame }).catch(() => undefined);
  }


  /** Sends what the window and the rate-limit pause allow, in order. */
  private pump(): void {
    if (this.state !== "connected" || !this.ws) return;
    const wait = this.pausedUntil - Date.now();
    // After a refusal, one command at a time until one is taken.
    const window = this.pauses > 0 ? 1 : WINDOW;
    while (this.outbox.length > 0 && (this.outbox[0].urgent || (wait <= 0 && this.inFlight < window))) {
      const entry = this.outbox.shift()!;
      entry.sent = true;
      this.inFlight++;
      this.ws.send(JSON.stringify(entry.command));
    }
    if (wait > 0 && this.outbox.length > 0)
      this.timers.pause ??= setTimeout(() => {
        this.timers.pause = undefined;
        this.pump();
      }, wait);
  }

  /** The server refused a command for its rate: send nothing more for a while. */
  private pause(): void {
    this.pausedUntil = Date.now() + backoffDelay(this.pauses++, { base: 1000, cap: 10000 }) + 500;
  }

  private closed(code: number, reason: string): void {
    const told = this.serverDisconnect;
    const info: DisconnectInfo = told ?? { code, reason, reconnect: !FINAL_CODES.includes(code) };
    // A rejected token that was not fetched for this attempt may just be stale: one fresh try.
    if (info.code === 4001 && typeof this.options.token === "function" && !this.tokenFresh) {
      this.token = undefined;
      info.reconnect = true;
    }
    if (info.code === 4002) this.token = undefined;
    this.dropped({ ...info });
  }

  /** The link is gone: clean up, then reconnect after a backoff delay or fail. */
  private dropped(info: DisconnectInfo): void {
    this.teardown(new HeraldError("disconnected", `the connection dropped: ${info.reason || info.code}`), false);
    // A connection that lasted starts the backoff again; one dropped at once keeps counting, so
    // a server that accepts and then closes is not hammered.
    if (this.connectedAt && Date.now() - this.connectedAt > STABLE_MS) this.attempt = 0;
    this.connectedAt = 0;
    const limit = this.options.backoff?.attempts ?? Infinity;
    if (!info.reconnect) return this.fail(info);
    if (this.attempt >= limit) {
      return this.fail({ code: ClientCode.ATTEMPTS_EXHAUSTED, reason: `gave up after ${this.attempt} attempts (last: ${info.reason || info.code})`, reconnect: false });
    }
    info.delay = backoffDelay(this.attempt++, this.options.backoff);
    const generation = this.generation;
    this.timers.retry = setTimeout(() => {
      this.timers.retry = undefined;
      if (generation === this.generation) void this.open();
    }, info.delay);
    this.enter("disconnected", info);
  }

  private fail(info: DisconnectInfo): void {
    this.teardown(new HeraldError("closed", `the client failed: ${info.reason || info.code}`), true);
    this.listenToPage(false);
    this.enter("failed", { ...info, reconnect: false });
  }

  /**
   * Ends the current connection: everything it started (timers, async work, answers still
   * awaited) is let go, and the subscriptions wait to be restored on the next one.
   */
  private teardown(error: HeraldError, queuedToo: boolean): void {
    this.generation++;
    this.closeLink(1000, "");
    this.stopTimers();
    this.rejectAll(error, queuedToo);
    for (const sub of this.subs.values()) sub.interrupted();
  }

  private closeLink(code: number, reason: string): void {
    const ws = this.ws;
    this.ws = undefined;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    try {
      if (ws.readyState <= 1) ws.close(code, reason);
    } catch {
      // already closing
    }
  }

  private enter(state: ConnectionState, detail?: DisconnectInfo | ConnectedInfo): void {
    this.state = state;
    this.emit("state", state);
    if (this.state !== state) return; // a handler moved the client on already
    if (state === "connected") this.emit("connected", detail as ConnectedInfo);
    else if (state === "connecting") this.emit("connecting");
    else this.emit(state, detail as DisconnectInfo);
  }

  private rejectAll(error: HeraldError, queuedToo: boolean): void {
    for (const [id, entry] of this.pending) {
      // Other requests waiting to be sent wait for the next connection.
      if (!entry.sent && !queuedToo && !bound(entry)) continue;
      clearTimeout(entry.timer);
      this.pending.delete(id);
      entry.reject(error);
    }
    this.outbox = queuedToo ? [] : this.outbox.filter((entry) => !bound(entry));
    this.inFlight = 0;
    this.pausedUntil = 0;
    this.pauses = 0;
  }

  private stopTimers(): void {
    for (const key of Object.keys(this.timers) as (keyof typeof this.timers)[]) {
      clearTimeout(this.timers[key]);
      this.timers[key] = undefined;
    }
    for (const timer of this.retries) clearTimeout(timer);
    this.retries.clear();
    this.pinging = false;
  }

  // ----- token refresh -----

  private scheduleRefresh(retry = false): void {
    clearTimeout(this.timers.refresh);
    const expires = this.info?.expiresAt;
    if (!expires || typeof this.options.token !== "function") return;
    const remaining = expires * 1000 - this.serverNow();
    // A third of what is left, at most a minute, before expiry; a failed refresh is retried
    // sooner, until the server closes the connection with 4002.
    const delay = retry ? Math.min(5000, remaining / 4) : remaining - Math.min(60000, remaining / 3);
    if (retry && remaining <= 0) return;
    this.timers.refresh = setTimeout(() => void this.refresh(), Math.max(1000, delay));
  }

  private async refresh(): Promise<void> {
    const generation = this.generation;
    try {
      const token = await this.fetchToken();
      if (generation !== this.generation) return;
      if (!token) return this.fail({ code: 4001, reason: "no token: the token getter returned none", reconnect: false });
      const result = await this.request<{ expires_at: number }>({ type: "refresh", token });
      if (generation !== this.generation || !this.info) return;
      this.token = token;
      this.info.expiresAt = result.expires_at;
      this.scheduleRefresh();
    } catch (error) {
      if (generation !== this.generation) return;
      this.emit("error", error instanceof HeraldError ? error : new HeraldError("refresh_failed", `token getter failed: ${describe(error)}`));
      this.scheduleRefresh(true);
    }
  }

  // ----- a silent link -----

  /**
   * Browsers answer the server's WebSocket pings without showing them, so a dead link can look
   * like a quiet one. When nothing has arrived for longer than the heartbeat interval, the
   * client sends a `ping` command; no answer in time closes the link and reconnects.
   */
  private watch(): void {
    const interval = (this.info?.heartbeat ?? 25) * 1000;
    this.timers.watch = setTimeout(() => {
      this.checkLink(interval);
      if (this.state === "connected") this.watch();
    }, interval / 2);
  }

  private checkLink(silence: number): void {
    if (this.state !== "connected" || this.pinging || Date.now() - this.lastFrameAt < silence) return;
    this.pinging = true;
    const generation = this.generation;
    const sent = Date.now();
    const timeout = Math.min(this.timeout, (this.info?.heartbeat ?? 25) * 1000);
    this.request({ type: "ping" }, { timeout, urgent: true }).then(
      () => (this.pinging = false),
      (error: HeraldError) => {
        this.pinging = false;
        // Any frame that arrived meanwhile shows the link is alive.
        if (error.code === "timeout" && generation === this.generation && this.lastFrameAt < sent)
          this.dropped({ code: ClientCode.NO_HEARTBEAT, reason: "no answer to ping", reconnect: true });
      },
    );
  }

  // ----- the page: online and visibility -----

  private readonly wake = (): void => {
    const doc = (globalThis as { document?: { visibilityState?: string } }).document;
    if (doc?.visibilityState === "hidden") return;
    if (this.state === "disconnected" && this.timers.retry) {
      clearTimeout(this.timers.retry);
      this.timers.retry = undefined;
      void this.open();
    } else this.checkLink(0);
  };

  private listenToPage(on: boolean): void {
    const g = globalThis as {
      addEventListener?: (type: string, f: () => void) => void;
      removeEventListener?: (type: string, f: () => void) => void;
      document?: { addEventListener(type: string, f: () => void): void; removeEventListener(type: string, f: () => void): void };
    };
    if (!g.addEventListener || !g.removeEventListener || !g.document) return;
    const method = on ? "addEventListener" : "removeEventListener";
    g[method]!("online", this.wake);
    g.document[method]("visibilitychange", this.wake);
  }
}

/**
 * Subscribe, unsubscribe and refresh belong to the connection they were sent on: after a drop the
 * client restores subscriptions itself, and a stale command would undo a newer one.
 */
function bound(entry: Pending): boolean {
  return entry.command.type === "subscribe" || entry.command.type === "unsubscribe" || entry.command.type === "refresh";
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
