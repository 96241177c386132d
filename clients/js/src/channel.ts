/**
 * What a channel looks like to the application, whichever transport carries it: typed handlers
 * for its publications and its events, and the one place a `message` frame becomes a
 * `Publication`. `Subscription` (WebSocket) and `EventSourceChannel` (Server-Sent Events) build
 * on it, each with its own rules for position and state.
 */
import { Emitter } from "./emitter.js";
import type { HeraldError } from "./errors.js";
import type { PresenceEvent, Publication, ServerFrame, StreamPosition, TypingEvent } from "./protocol.js";

/**
 * A map of a channel's event names to the type of their `data`, for example
 * `{ TELEMETRY: { t: number }; ALERT: { level: string } }` (an interface works too).
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type EventMap = Record<string, any>;

/** The event map of a channel whose events the application has not typed. */
export type UntypedEvents = Record<string, unknown>;

export interface SubscribedInfo extends StreamPosition {
  channel: string;
  /**
   * Only when the client asked for missed publications. `false`: history no longer holds them;
   * the application should reload the channel's state from its backend.
   */
  recovered?: boolean;
  /** True when this restores the subscription after a reconnect (or a gap the server saw). */
  resubscribed: boolean;
}

export interface UnsubscribedInfo {
  channel: string;
  /** Who ended it: the application, the server (`POST /api/unsubscribe`), or a refusal. */
  by: "client" | "server" | "error";
  error?: HeraldError;
}

export interface ChannelEvents<E extends EventMap> {
  message: (publication: Publication<E[keyof E]>) => void;
  subscribed: (info: SubscribedInfo) => void;
  unsubscribed: (info: UnsubscribedInfo) => void;
  error: (error: HeraldError) => void;
  join: (event: PresenceEvent) => void;
  leave: (event: PresenceEvent) => void;
  typing: (event: TypingEvent) => void;
}

export class ChannelHandlers<E extends EventMap = UntypedEvents> {
  protected lifecycle = new Emitter<ChannelEvents<E>>();
  private events = new Emitter<Record<string, (data: unknown, publication: Publication) => void>>();

  constructor(readonly channel: string) {}

  /** Handles publications with this event name; returns a function that removes the handler. */
  on<K extends keyof E & string>(event: K, handler: (data: E[K], publication: Publication<E[K]>) => void): () => void {
    return this.events.on(event, handler as (data: unknown, publication: Publication) => void);
  }

  /** Handles every publication, whatever its event name. */
  onMessage(handler: ChannelEvents<E>["message"]): () => void {
    return this.lifecycle.on("message", handler);
  }
  /** Each subscribe's answer; after a reconnect or resume, `recovered` says whether nothing was lost. */
  onSubscribed(handler: ChannelEvents<E>["subscribed"]): () => void {
    return this.lifecycle.on("subscribed", handler);
  }
  onUnsubscribed(handler: ChannelEvents<E>["unsubscribed"]): () => void {
    return this.lifecycle.on("unsubscribed", handler);
  }
  onJoin(handler: ChannelEvents<E>["join"]): () => void {
    return this.lifecycle.on("join", handler);
  }
  onLeave(handler: ChannelEvents<E>["leave"]): () => void {
    return this.lifecycle.on("leave", handler);
  }
  onTyping(handler: ChannelEvents<E>["typing"]): () => void {
    return this.lifecycle.on("typing", handler);
  }

  /** Handlers registered, all kinds together (for leak checks). */
  listenerCount(): number {
    return this.lifecycle.listenerCount() + this.events.listenerCount();
  }

  /** @internal A `join`, `leave` or `typing` frame. */
  ephemeral(frame: ServerFrame): void {
    const type = frame.type as "join" | "leave" | "typing";
    const { user, client } = frame as unknown as PresenceEvent;
    if (type === "typing") this.lifecycle.emit("typing", { channel: this.channel, user });
    else this.lifecycle.emit(type, { channel: this.channel, user, client });
  }

  /** Turns a `message` frame into a publication and hands it to the handlers. */
  protected dispatch(frame: ServerFrame, epoch: string): Publication {
    const publication: Publication = {
      channel: this.channel,
      event: frame.event as string | undefined,
      data: frame.data,
      offset: frame.offset as number,
      epoch,
      ts: frame.ts as number,
      from: frame.from as Publication["from"],
    };
    this.lifecycle.emit("message", publication as Publication<E[keyof E]>);
    if (publication.event !== undefined) this.events.emit(publication.event, publication.data, publication);
    return publication;
  }
}
