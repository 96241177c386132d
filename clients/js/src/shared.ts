/**
 * What the React and Vue bindings have in common: a count of the components that use each
 * channel, and the presence tracking behind `usePresence`.
 *
 * A client keeps one `Subscription` per channel, so two components that both call
 * `client.subscribe("chat:1")` get the same object, and the first to call `unsubscribe()` would
 * end it for the other. The bindings therefore never unsubscribe directly: they `acquire` the
 * channel, add their own handlers, and on the way out remove those handlers and `release` it.
 * The subscription ends when its last user releases it.
 *
 * The end is put off to a microtask, so that a component that unmounts and mounts again in one
 * go (React's StrictMode does exactly that in development; so does a list that moves an item)
 * keeps its subscription instead of unsubscribing and subscribing again on the server.
 */
import type { HeraldClient } from "./client.js";
import type { HeraldError } from "./errors.js";
import type { PresenceEntry, PresenceResult } from "./protocol.js";
import type { EventMap, Subscription, UntypedEvents } from "./subscription.js";

interface Entry {
  subscription: Subscription<EventMap>;
  users: number;
  /** False when the application subscribed the channel itself: then it is the one to end it. */
  owned: boolean;
}

/** One hold on a channel's subscription. */
export interface Lease<E extends EventMap = UntypedEvents> {
  readonly subscription: Subscription<E>;
  /** Lets go of the subscription; calling it again does nothing. */
  release(): void;
}

const registries = new WeakMap<HeraldClient, Map<string, Entry>>();

/**
 * The subscription to `channel`, shared with every other user of it, held until `release()`.
 * A subscription the application made itself (`client.subscribe`) is shared too, but left
 * subscribed when the last component releases it.
 */
export function acquire<E extends EventMap = UntypedEvents>(client: HeraldClient, channel: string): Lease<E> {
  let registry = registries.get(client);
  if (!registry) registries.set(client, (registry = new Map()));
  let entry = registry.get(channel);
  // One the server ended (or refused) is not handed out again; its holders keep their lease on
  // it, and their releases no longer count for the channel.
  if (!entry || entry.subscription.state === "unsubscribed") {
    const existing = client.getSubscription(channel);
    entry = { subscription: existing ?? client.subscribe(channel), users: 0, owned: !existing };
    registry.set(channel, entry);
  }
  entry.users++;
  const held = entry;
  const channels = registry;
  let released = false;
  return {
    subscription: held.subscription as unknown as Subscription<E>,
    release() {
      if (released) return;
      released = true;
      if (--held.users > 0) return;
      queueMicrotask(() => {
        if (held.users > 0 || channels.get(channel) !== held) return;
        channels.delete(channel);
        // The personal channel stays: the server subscribes every connection to it anyway.
        if (!held.owned || held.subscription.personal) return;
        // The subscription has ended on this side either way; a lost answer changes nothing.
        held.subscription.unsubscribe().catch(() => undefined);
      });
    },
  };
}

/** A channel's presence as the bindings show it. */
export interface PresenceSnapshot {
  /** Distinct users in the channel. */
  users: number;
  /** Connections in the channel (a user with two tabs counts twice). */
  connections: number;
  /** One entry per connection; undefined with `countsOnly`, or before the first answer. */
  clients: PresenceEntry[] | undefined;
  /** The last failure: the subscription or a presence request was refused. */
  error: HeraldError | undefined;
  /** True until the first answer (or failure). */
  loading: boolean;
}

export interface PresenceOptions {
  /** Ask only for the counts: as cheap in a channel of thousands as in one of ten. */
  countsOnly?: boolean;
}

export const INITIAL_PRESENCE: PresenceSnapshot = Object.freeze({
  users: 0,
  connections: 0,
  clients: undefined,
  error: undefined,
  loading: true,
});

/** How long join and leave events are gathered before presence is asked for again. */
const PRESENCE_COALESCE_MS = 100;

/**
 * Keeps `update` told of a subscribed channel's presence: asked once subscribed, again each time
 * the subscription is restored (join and leave events are not replayed after a reconnect), and
 * again shortly after joins and leaves, a burst of them costing one request. Namespaces without
 * `join_leave` send no such events, so there presence is read once per subscribe. Returns a
 * function that stops it and removes every handler it added.
 */
export function trackPresence(
  subscription: Subscription<EventMap>,
  options: PresenceOptions,
  update: (snapshot: PresenceSnapshot) => void,
): () => void {
  let snapshot = INITIAL_PRESENCE;
  let stopped = false;
  let asked = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const set = (next: Partial<PresenceSnapshot>) => {
    snapshot = { ...snapshot, ...next, loading: false };
    update(snapshot);
  };
  const fetch = () => {
    clearTimeout(timer);
    timer = undefined;
    // Only the newest request's answer counts: an older one may be out of date.
    const request = ++asked;
    subscription.presence({ countsOnly: options.countsOnly }).then(
      (result: PresenceResult) => {
        if (stopped || request !== asked) return;
        set({ users: result.users, connections: result.connections, clients: result.clients, error: undefined });
      },
      (error: HeraldError) => {
        // A dropped link is followed by a resubscribe, which asks again.
        if (stopped || request !== asked || error.code === "disconnected") return;
        set({ error });
      },
    );
  };
  const soon = () => {
    if (timer === undefined) timer = setTimeout(fetch, PRESENCE_COALESCE_MS);
  };
  const offs = [
    subscription.onSubscribed(fetch),
    subscription.onJoin(soon),
    subscription.onLeave(soon),
    subscription.onError((error) => set({ error })),
  ];
  if (subscription.state === "subscribed") fetch();
  return () => {
    stopped = true;
    clearTimeout(timer);
    for (const off of offs) off();
  };
}
