/**
 * herald-client/vue: composables for Vue 3.3 and later.
 *
 * ```ts
 * const client = new HeraldClient({ url, token: fetchToken });
 * client.connect();
 * createApp(App).use(createHerald(client)).mount("#app");
 *
 * // in a component's setup():
 * const room = computed(() => `chat:${props.room}`);
 * const lines = ref<string[]>([]);
 * useChannel<ChatEvents, "msg">(room, "msg", (data) => lines.value.push(data.text));
 * const { users } = usePresence(room, { countsOnly: true });
 * ```
 *
 * The composables subscribe when called (in `setup`, or in any effect scope) and let go when
 * their scope is disposed, which for a component is when it unmounts. Components that use one
 * channel share its subscription (see shared.ts), so each can come and go without ending the
 * others'.
 */
import {
  inject,
  onScopeDispose,
  provide,
  shallowRef,
  toValue,
  watch,
  type App,
  type InjectionKey,
  type MaybeRefOrGetter,
  type Ref,
  type ShallowRef,
} from "vue";
import type { ConnectionState, HeraldClient } from "./client.js";
import type { HeraldError } from "./errors.js";
import type { PresenceEntry, Publication } from "./protocol.js";
import { acquire, INITIAL_PRESENCE, trackPresence, type Lease, type PresenceOptions, type PresenceSnapshot } from "./shared.js";
import type { EventMap, Subscription, UntypedEvents } from "./subscription.js";

export type { PresenceOptions } from "./shared.js";

/** The key the client is provided under; `useHerald()` injects it. */
export const heraldKey: InjectionKey<HeraldClient> = Symbol("herald");

/**
 * Makes `client` available to the composables of the calling component's descendants (call it
 * in the root component's `setup`). The application still decides when to `connect()` it.
 */
export function provideHerald(client: HeraldClient): HeraldClient {
  provide(heraldKey, client);
  return client;
}

/** A plugin that makes `client` available to the whole app: `app.use(createHerald(client))`. */
export function createHerald(client: HeraldClient): { install(app: App): void } {
  return {
    install(app: App) {
      app.provide(heraldKey, client);
    },
  };
}

/** The client given to `createHerald` or `provideHerald`; call it in `setup`. */
export function useHerald(): HeraldClient {
  const client = inject(heraldKey, null);
  if (!client)
    throw new Error("useHerald: no Herald client here; install it with app.use(createHerald(client)) or provideHerald(client) in an ancestor");
  return client;
}

type ChannelSource = MaybeRefOrGetter<string | null | undefined>;

/**
 * Holds the channel `source` names, through `start`, for as long as the current scope lives:
 * when the name changes, the old one is let go before the new one is taken, and nothing is held
 * while it is empty.
 */
function holdChannel(source: ChannelSource, start: (lease: Lease) => () => void): void {
  const client = useHerald();
  let stop: (() => void) | undefined;
  const end = () => {
    stop?.();
    stop = undefined;
  };
  watch(
    () => toValue(source),
    (channel) => {
      end();
      if (!channel) return;
      const lease = acquire(client, channel);
      const undo = start(lease);
      stop = () => {
        undo();
        lease.release();
      };
    },
    { immediate: true },
  );
  onScopeDispose(end);
}

/**
 * Subscribes to `channel` (a string, a ref or a getter) for the life of the current scope, and
 * calls `handler` with each publication named `event` (`null` or `"*"`: every publication).
 * When `channel` changes, the old channel is let go and the new one subscribed; an empty one
 * subscribes to nothing.
 *
 * Returns a ref to the subscription (shared with the other users of the channel; leave ending
 * it to the composables).
 */
export function useChannel<E extends EventMap = UntypedEvents>(
  channel: ChannelSource,
  event: null | "*",
  handler: (data: E[keyof E], publication: Publication<E[keyof E]>) => void,
): Readonly<ShallowRef<Subscription<E> | undefined>>;
export function useChannel<E extends EventMap = UntypedEvents, K extends keyof E & string = keyof E & string>(
  channel: ChannelSource,
  event: K,
  handler: (data: E[K], publication: Publication<E[K]>) => void,
): Readonly<ShallowRef<Subscription<E> | undefined>>;
export function useChannel(
  channel: ChannelSource,
  event: string | null,
  handler: (data: unknown, publication: Publication) => void,
): Readonly<ShallowRef<Subscription | undefined>> {
  const subscription = shallowRef<Subscription>();
  holdChannel(channel, ({ subscription: sub }) => {
    subscription.value = sub;
    // A handler of its own even when `handler` is shared: the emitter keeps one of each function.
    const off =
      event === null || event === "*"
        ? sub.onMessage((publication) => handler(publication.data, publication))
        : sub.on(event, (data, publication) => handler(data, publication));
    return () => {
      off();
      subscription.value = undefined;
    };
  });
  return subscription;
}

/** `usePresence`'s answer: each field a ref that follows the channel's presence. */
export interface PresenceRefs {
  users: Readonly<Ref<number>>;
  connections: Readonly<Ref<number>>;
  clients: Readonly<Ref<PresenceEntry[] | undefined>>;
  error: Readonly<Ref<HeraldError | undefined>>;
  loading: Readonly<Ref<boolean>>;
}

/**
 * The presence of `channel` (a string, a ref or a getter) as refs: read once subscribed, again
 * after joins and leaves (gathered for 100 ms, in namespaces with `join_leave`) and after every
 * resubscribe. A change of channel starts again from `loading`.
 */
export function usePresence(channel: ChannelSource, options: PresenceOptions = {}): PresenceRefs {
  const refs = {
    users: shallowRef(INITIAL_PRESENCE.users),
    connections: shallowRef(INITIAL_PRESENCE.connections),
    clients: shallowRef(INITIAL_PRESENCE.clients),
    error: shallowRef(INITIAL_PRESENCE.error),
    loading: shallowRef(INITIAL_PRESENCE.loading),
  };
  const show = (snapshot: PresenceSnapshot) => {
    refs.users.value = snapshot.users;
    refs.connections.value = snapshot.connections;
    refs.clients.value = snapshot.clients;
    refs.error.value = snapshot.error;
    refs.loading.value = snapshot.loading;
  };
  holdChannel(channel, ({ subscription }) => {
    const stop = trackPresence(subscription, options, show);
    return () => {
      stop();
      show(INITIAL_PRESENCE);
    };
  });
  return refs;
}

/** The client's connection state as a ref. */
export function useConnectionState(): Readonly<Ref<ConnectionState>> {
  const client = useHerald();
  const state = shallowRef(client.state);
  onScopeDispose(client.on("state", (next) => (state.value = next)));
  return state;
}
