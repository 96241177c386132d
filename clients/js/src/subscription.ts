/**
 * A subscription to one channel, as an object the application keeps. It outlives reconnects:
 * the client restores it on every new connection with `since` its last offset, so its
 * handlers see each publication once and in order, or a `subscribed` event with
 * `recovered: false` when history could not fill the gap.
 */
import { ChannelHandlers, type ChannelEvents, type EventMap, type UnsubscribedInfo, type UntypedEvents } from "./channel.js";
import { HeraldError } from "./errors.js";
import type { HistoryResult, PresenceResult, Publication, ServerFrame, StreamPosition } from "./protocol.js";

export type { EventMap, SubscribedInfo, UnsubscribedInfo, UntypedEvents } from "./channel.js";


export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed";

export interface SubscribeOptions {
  /** Start after this position (for example one the application saved): missed ones first. */
  since?: StreamPosition;
  /** Replay the newest `last` publications history holds before live ones. */
  last?: number;
  /** Resubscribe with `since` after a reconnect (default true). */
  recover?: boolean;
}


/** What a subscription needs from its client; implemented by `HeraldClient`. */
export interface SubscriptionLink {
  readonly state: string;
  request<T>(command: Record<string, unknown>): Promise<T>;
  send(command: Record<string, unknown>): boolean;
  release(subscription: Subscription<EventMap>): void;
}

const TYPING_INTERVAL_MS = 1000;

export class Subscription<E extends EventMap = UntypedEvents> extends ChannelHandlers<E> {
  private pos?: StreamPosition;
  private replayLast?: number;
  /** While a `last` replay runs: the offset below which publications were already handled. */
  private replayFloor?: number;
  private waiters: { resolve: () => void; reject: (e: HeraldError) => void }[] = [];
  private lastTyping = 0;
  private subscribedOnce = false;
  /** True for the user's personal channel, which the server subscribes on connect. */
  personal = false;
  /** @internal True while a `subscribe` of this object's is waiting for its answer. */
  asking = false;
  state: SubscriptionState = "subscribing";

  constructor(
    channel: string,
    private link: SubscriptionLink,
    private options: SubscribeOptions = {},
  ) {
    super(channel);
    this.pos = options.since && { ...options.since };
    this.replayLast = options.last;
  }

  /** The position of the last publication handled, to save and pass as `since` later. */
  get position(): StreamPosition | undefined {
    return this.pos && { ...this.pos };
  }

  /** The server refused the subscription (`forbidden`, `not_found`, ...). */
  onError(handler: ChannelEvents<E>["error"]): () => void {
    return this.lifecycle.on("error", handler);
  }

  /** Resolves once subscribed; rejects if the server refuses or the subscription ends first. */
  ready(): Promise<void> {
    if (this.state === "subscribed") return Promise.resolve();
    if (this.state === "unsubscribed")
      return Promise.reject(new HeraldError("unsubscribed", `not subscribed to ${this.channel}`));
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  publish<K extends keyof E & string>(event: K, data: E[K]): Promise<StreamPosition> {
    return this.link.request({ type: "publish", channel: this.channel, event, data });
  }

  presence(options: { countsOnly?: boolean } = {}): Promise<PresenceResult> {
    return this.link.request({ type: "presence", channel: this.channel, counts_only: options.countsOnly || undefined });
  }

  /** A page of history: the newest `limit`, or up to `limit` after `since`. */
  async history(options: { since?: StreamPosition; limit?: number } = {}): Promise<HistoryResult<E[keyof E]>> {
    const result = await this.link.request<HistoryResult<E[keyof E]>>({
      type: "history",
      channel: this.channel,
      since: options.since,
      limit: options.limit,
    });
    for (const p of result.publications) p.epoch = result.epoch;
    return result;
  }

  /**
   * Tells the others this user is typing. Call it on every keystroke: at most one frame a
   * second leaves the client (the server passes on at most one a second anyway). Returns
   * whether a frame was sent.
   */
  typing(): boolean {
    const now = Date.now();
    if (this.state !== "subscribed" || now - this.lastTyping < TYPING_INTERVAL_MS) return false;
    if (!this.link.send({ type: "typing", channel: this.channel })) return false;
    this.lastTyping = now;
    return true;
  }

  /** Ends the subscription; its handlers get no more events. */
  unsubscribe(): Promise<void> {
    if (this.state === "unsubscribed") return Promise.resolve();
    const wasSubscribing = this.state === "subscribing";
    this.end({ channel: this.channel, by: "client" });
    // Without a connection there is nothing to undo: the next one will not subscribe it.
    if (this.link.state !== "connected") return Promise.resolve();
    const sent = this.link.request<ServerFrame>({ type: "unsubscribe", channel: this.channel });
    // A subscribe still on its way (or never sent) makes `not_found` a normal answer.
    return sent.then(
      () => undefined,
      (e: HeraldError) => {
        if (!(wasSubscribing && e.code === "not_found") && e.code !== "disconnected" && e.code !== "closed") throw e;
      },
    );
  }

  // ----- called by the client -----

  /** The `subscribe` command to send on a new connection. */
  subscribeCommand(): Record<string, unknown> {
    return { type: "subscribe", channel: this.channel, ...this.connectFields() };
  }

  /** Where to start: `since` the position to recover, or `last` for the first subscribe. */
  connectFields(): { since?: StreamPosition; last?: number } {
    if (this.pos && (this.options.recover !== false || !this.subscribedOnce)) return { since: { ...this.pos } };
    if (this.replayLast !== undefined && !this.subscribedOnce) return { last: this.replayLast };
    return {};
  }

  /** Applies a `subscribed` frame: an answer, the personal channel's, or a gap notice. */
  subscribed(frame: ServerFrame): void {
    if (this.state === "unsubscribed") return;
    if (this.state === "subscribed" && frame.id !== undefined) return; // an answer already applied
    const position = { offset: frame.offset as number, epoch: frame.epoch as string };
    const recovered = frame.recovered as boolean | undefined;
    if (recovered === true && this.pos) this.pos.epoch = position.epoch;
    else this.pos = position;
    // The newest `last` publications, all at or below the position, follow this frame.
    if (this.replayLast !== undefined && !this.subscribedOnce && recovered === undefined)
      this.replayFloor = Math.max(0, position.offset - this.replayLast);
    const resubscribed = this.subscribedOnce;
    this.subscribedOnce = true;
    this.state = "subscribed";
    this.lifecycle.emit("subscribed", { channel: this.channel, ...position, recovered, resubscribed });
    for (const w of this.waiters.splice(0)) w.resolve();
  }

  /** The link dropped: the subscription waits to be restored. */
  interrupted(): void {
    if (this.state === "subscribed") this.state = "subscribing";
    this.asking = false;
    this.replayFloor = undefined;
  }

  /** The server refused the subscribe. */
  refused(error: HeraldError): void {
    if (this.state === "unsubscribed") return;
    this.lifecycle.emit("error", error);
    this.end({ channel: this.channel, by: "error", error });
  }

  /** A publication frame; returns it as delivered, or undefined when it is not for us now. */
  deliver(frame: ServerFrame): Publication | undefined {
    if (this.state !== "subscribed" || !this.pos) return undefined;
    const offset = frame.offset as number;
    if (offset <= (this.replayFloor ?? this.pos.offset)) return undefined; // already handled
    if (this.replayFloor !== undefined) this.replayFloor = offset < this.pos.offset ? offset : undefined;
    this.pos.offset = Math.max(this.pos.offset, offset);
    return this.dispatch(frame, this.pos.epoch);
  }

  /** A `join`, `leave` or `typing` frame, while subscribed. */
  ephemeral(frame: ServerFrame): void {
    if (this.state === "subscribed") super.ephemeral(frame);
  }

  /** Ended by the application, the server or a refusal. */
  end(info: UnsubscribedInfo): void {
    if (this.state === "unsubscribed") return;
    this.state = "unsubscribed";
    this.link.release(this as unknown as Subscription<EventMap>);
    const error = info.error ?? new HeraldError("unsubscribed", `unsubscribed from ${this.channel}`);
    for (const w of this.waiters.splice(0)) w.reject(error);
    this.lifecycle.emit("unsubscribed", info);
  }
}
