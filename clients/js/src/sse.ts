/**
 * herald-client/sse: Herald's Server-Sent Events stream (docs/protocol.md, "Server-Sent Events")
 * for pages that only receive, such as a notification bell or a dashboard, behind the same event
 * API as the WebSocket client.
 *
 * ```ts
 * const stream = new HeraldEventSource({ url: "/sse", channels: ["room:1"], token: () => fetchToken() });
 * stream.channel("room:1").on("note", (data) => render(data));
 * stream.connect();
 * ```
 *
 * The helper never lets `EventSource` reconnect by itself: its retry would send the same URL,
 * with a token that may have expired, and every page a node dropped would come back at once.
 * Whenever the stream ends (the server's `disconnect` event, an HTTP error, a broken link), the
 * helper closes it and, after a backoff delay with full jitter, opens a new one with a fresh
 * token and `last_event_id` set to the last event id it saw; the server then replays each
 * channel from there. Publications are also filtered by their offset in each channel, so the
 * application sees each one once and in order.
 */
import { backoffDelay, STABLE_MS, withTimeout, type BackoffOptions } from "./backoff.js";
import { ClientCode, type ConnectedInfo, type ConnectionState, type DisconnectInfo, type TokenSource } from "./client.js";
import { Emitter } from "./emitter.js";
import { HeraldError } from "./errors.js";
import type { Publication, ServerFrame, StreamPosition } from "./protocol.js";
import { ChannelHandlers, type EventMap, type UntypedEvents } from "./channel.js";

export { HeraldError } from "./errors.js";
export type { BackoffOptions } from "./backoff.js";
export type { ConnectedInfo, ConnectionState, DisconnectInfo, TokenSource } from "./client.js";
export type { EventMap, SubscribedInfo, UnsubscribedInfo, UntypedEvents } from "./channel.js";
export type { PresenceEvent, Publication, StreamPosition, TypingEvent } from "./protocol.js";

/** The part of the `EventSource` interface the helper uses. */
export interface EventSourceLike {
  readonly readyState: number;
  onerror: ((event: unknown) => void) | null;
  addEventListener(type: string, listener: (event: { data: string; lastEventId: string }) => void): void;
  close(): void;
}
export type EventSourceConstructor = new (url: string) => EventSourceLike;

export interface EventSourceOptions {
  /** The SSE endpoint, for example `https://rt.example.com/sse` or `/sse`. */
  url: string;
  /** The channels to receive; the user's personal channel comes without asking. */
  channels: string[];
  /**
   * The token, sent as `?token=`. A function is called for every new stream, so that one that
   * expired is replaced. Leave it out when the backend's connect hook authenticates the page.
   */
  token?: TokenSource;
  /** An `EventSource` implementation, where the platform has none. */
  EventSource?: EventSourceConstructor;
  backoff?: BackoffOptions;
  /** An event id saved earlier (`position`), to resume from on the first stream. */
  lastEventId?: string;
}

interface SourceEvents {
  state: (state: ConnectionState) => void;
  connecting: () => void;
  connected: (info: ConnectedInfo) => void;
  disconnected: (info: DisconnectInfo) => void;
  failed: (info: DisconnectInfo) => void;
  /** A token getter that threw. */
  error: (error: HeraldError) => void;
  /** Every publication, on any channel. */
  message: (publication: Publication) => void;
}

/** One channel of the stream: its handlers, and its position for deduplication. */
export class EventSourceChannel<E extends EventMap = UntypedEvents> extends ChannelHandlers<E> {
  private subscribedOnce = false;

  constructor(
    channel: string,
    private pos?: StreamPosition,
  ) {
    super(channel);
  }

  /** The position of the last publication handled. */
  get position(): StreamPosition | undefined {
    return this.pos && { ...this.pos };
  }

  // ----- called by HeraldEventSource -----

  /** @internal A `subscribed` event. Recovered: the missed publications follow, after ours. */
  subscribed(frame: ServerFrame): void {
    const position = { offset: frame.offset as number, epoch: frame.epoch as string };
    const recovered = frame.recovered as boolean | undefined;
    if (recovered === true && this.pos) this.pos.epoch = position.epoch;
    else this.pos = position;
    const resubscribed = this.subscribedOnce;
    this.subscribedOnce = true;
    this.lifecycle.emit("subscribed", { channel: this.channel, ...position, recovered, resubscribed });
  }

  /** @internal A publication; returns it as delivered, or undefined when it was seen already. */
  deliver(frame: ServerFrame): Publication | undefined {
    const offset = frame.offset as number;
    if (!this.pos || offset <= this.pos.offset) return undefined;
    this.pos.offset = offset;
    return this.dispatch(frame, this.pos.epoch);
  }

  /** @internal The server API removed the user from the channel; later streams leave it out. */
  unsubscribed(): void {
    this.lifecycle.emit("unsubscribed", { channel: this.channel, by: "server" });
  }
}

/** EventSource's readyState once it has given up (an HTTP error, or `close()`). */
const CLOSED = 2;

/** How long a token getter may take before the attempt counts as failed. */
const TOKEN_TIMEOUT_MS = 10000;

export class HeraldEventSource extends Emitter<SourceEvents> {
  state: ConnectionState = "disconnected";
  /** The last event id: the stream's position on every channel, to save and resume from. */
  position?: string;
  private source?: EventSourceLike;
  private channels = new Map<string, EventSourceChannel<EventMap>>();
  private requested: Set<string>;
  private attempt = 0;
  private connectedAt = 0;
  private generation = 0;
  private retry?: ReturnType<typeof setTimeout>;
  private readonly ES: EventSourceConstructor;

  constructor(private readonly options: EventSourceOptions) {
    super();
    const ES = options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
    if (!ES) throw new Error("no EventSource on this platform: pass one as options.EventSource");
    this.ES = ES;
    this.requested = new Set(options.channels);
    this.position = options.lastEventId;
    // Its entries are `<channel>:<offset>:<epoch>`: where each channel's filter starts, since the
    // stream replays what came after.
    for (const entry of options.lastEventId?.split(",") ?? []) {
      const match = /^(.+):(\d+):([^:]+)$/.exec(entry);
      if (match) this.channels.set(match[1], new EventSourceChannel(match[1], { offset: Number(match[2]), epoch: match[3] }));
    }
  }

  /** The channel's handlers (any channel the stream carries, the personal one included). */
  channel<E extends EventMap = EventMap>(name: string): EventSourceChannel<E> {
    let channel = this.channels.get(name);
    if (!channel) this.channels.set(name, (channel = new EventSourceChannel(name)));
    return channel as unknown as EventSourceChannel<E>;
  }

  /** Opens the stream; it then stays open, reopened as needed, until `close()` or `failed`. */
  connect(): void {
    if (this.state === "connecting" || this.state === "connected") return;
    clearTimeout(this.retry);
    this.attempt = 0;
    void this.open();
  }

  /** Closes the stream for good (until `connect()` again). */
  close(): void {
    this.generation++;
    clearTimeout(this.retry);
    this.retry = undefined;
    this.closeSource();
    this.enter("disconnected", { code: ClientCode.CLOSED, reason: "client closed", reconnect: false });
  }

  private async open(): Promise<void> {
    const generation = ++this.generation;
    this.enter("connecting");
    const query = new URLSearchParams();
    for (const channel of this.requested) query.append("channel", channel);
    try {
      const getter = this.options.token;
      const token = typeof getter === "function" ? await withTimeout(getter, TOKEN_TIMEOUT_MS) : getter;
      if (generation !== this.generation) return;
      if (token === null || token === "") return this.dropped({ code: 4001, reason: "no token: the token getter returned none", reconnect: false });
      if (token !== undefined) query.set("token", token);
    } catch (error) {
      if (generation !== this.generation) return;
      this.emit("error", new HeraldError("refresh_failed", `token getter failed: ${describe(error)}`));
      return this.dropped({ code: ClientCode.TOKEN_UNAVAILABLE, reason: `token getter failed: ${describe(error)}`, reconnect: true });
    }
    if (this.position) query.set("last_event_id", this.position);
    const url = `${this.options.url}${this.options.url.includes("?") ? "&" : "?"}${query}`;
    let source: EventSourceLike;
    try {
      source = new this.ES(url);
    } catch (error) {
      // An invalid URL: no retry can fix it.
      return this.dropped({ code: 1006, reason: describe(error), reconnect: false });
    }
    this.source = source;
    const listen = (type: string, handle: (frame: ServerFrame) => void) =>
      source.addEventListener(type, (event) => {
        if (this.source !== source) return;
        if (event.lastEventId) this.position = event.lastEventId;
        let frame: ServerFrame;
        try {
          frame = JSON.parse(event.data) as ServerFrame;
        } catch {
          return;
        }
        handle(frame);
      });
    listen("message", (frame) => {
      const publication = this.channels.get(frame.channel as string)?.deliver(frame);
      if (publication) this.emit("message", publication);
    });
    listen("connected", (frame) => {
      this.connectedAt = Date.now();
      const info: ConnectedInfo = {
        client: frame.client as string,
        user: frame.user as string,
        heartbeat: frame.heartbeat_s as number,
        expiresAt: frame.expires_at as number | undefined,
      };
      this.enter("connected", info);
    });
    // Every channel gets an object, so that positions are kept even for one without handlers.
    listen("subscribed", (frame) => this.channel(frame.channel as string).subscribed(frame));
    for (const type of ["join", "leave", "typing"]) listen(type, (frame) => this.channels.get(frame.channel as string)?.ephemeral(frame));
    listen("unsubscribed", (frame) => {
      this.requested.delete(frame.channel as string);
      this.channels.get(frame.channel as string)?.unsubscribed();
    });
    listen("disconnect", (frame) =>
      this.dropped({ code: frame.code as number, reason: frame.reason as string, reconnect: frame.reconnect !== false }),
    );
    source.onerror = () => {
      if (this.source !== source) return;
      const refused = source.readyState === CLOSED;
      this.dropped({ code: 1006, reason: refused ? "the stream was refused" : "the stream was interrupted", reconnect: true });
    };
  }

  /** The stream is gone: close it, then open a new one after a backoff delay, or fail. */
  private dropped(info: DisconnectInfo): void {
    this.closeSource();
    // As for the WebSocket client: only a stream that lasted starts the backoff again.
    if (this.connectedAt && Date.now() - this.connectedAt > STABLE_MS) this.attempt = 0;
    this.connectedAt = 0;
    if (!info.reconnect) return this.fail(info);
    const limit = this.options.backoff?.attempts ?? Infinity;
    if (this.attempt >= limit)
      return this.fail({ code: ClientCode.ATTEMPTS_EXHAUSTED, reason: `gave up after ${this.attempt} attempts (last: ${info.reason || info.code})`, reconnect: false });
    info.delay = backoffDelay(this.attempt++, this.options.backoff);
    const generation = this.generation;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      if (generation === this.generation) void this.open();
    }, info.delay);
    this.enter("disconnected", info);
  }

  private fail(info: DisconnectInfo): void {
    this.generation++;
    this.enter("failed", { ...info, reconnect: false });
  }

  private closeSource(): void {
    const source = this.source;
    this.source = undefined;
    if (!source) return;
    source.onerror = null;
    source.close();
  }

  private enter(state: ConnectionState, detail?: DisconnectInfo | ConnectedInfo): void {
    this.state = state;
    this.emit("state", state);
    if (state === "connected") this.emit("connected", detail as ConnectedInfo);
    else if (state === "connecting") this.emit("connecting");
    else this.emit(state, detail as DisconnectInfo);
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
