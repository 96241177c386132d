/**
 * herald-client/react: hooks for React 18 and 19.
 *
 * ```tsx
 * const client = new HeraldClient({ url, token: fetchToken });
 * client.connect();
 * root.render(<HeraldProvider client={client}><App /></HeraldProvider>);
 *
 * function Chat({ room }: { room: string }) {
 *   const [lines, setLines] = useState<string[]>([]);
 *   useChannel<ChatEvents, "msg">(`chat:${room}`, "msg", (data) => setLines((l) => [...l, data.text]));
 *   const { users } = usePresence(`chat:${room}`, { countsOnly: true });
 *   ...
 * }
 * ```
 *
 * Subscribing is a side effect, so it happens in effects, never while rendering: a render React
 * throws away must not leave a subscription behind. Components that use one channel share its
 * subscription (see shared.ts), so they can mount and unmount in any order, StrictMode's double
 * mount included, without ending each other's.
 */
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useLayoutEffect,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactElement,
  type ReactNode,
} from "react";
import type { ConnectionState, HeraldClient } from "./client.js";
import type { Publication } from "./protocol.js";
import { acquire, INITIAL_PRESENCE, trackPresence, type PresenceOptions, type PresenceSnapshot } from "./shared.js";
import type { EventMap, Subscription, UntypedEvents } from "./subscription.js";

export type { PresenceOptions, PresenceSnapshot } from "./shared.js";

const HeraldContext = createContext<HeraldClient | null>(null);
HeraldContext.displayName = "HeraldContext";

export interface HeraldProviderProps {
  client: HeraldClient;
  children?: ReactNode;
}

/**
 * Makes `client` available to the hooks below it. The application still decides when to
 * `connect()` and `disconnect()` it; the provider only passes it down.
 */
export function HeraldProvider({ client, children }: HeraldProviderProps): ReactElement {
  return createElement(HeraldContext.Provider, { value: client }, children);
}

/** The client of the nearest `HeraldProvider`. */
export function useHerald(): HeraldClient {
  const client = useContext(HeraldContext);
  if (!client) throw new Error("useHerald: no HeraldProvider above this component; wrap the tree in <HeraldProvider client={client}>");
  return client;
}

// useLayoutEffect warns when rendered on a server in React 18; there it has nothing to do anyway.
const useIsomorphicLayoutEffect = typeof document !== "undefined" ? useLayoutEffect : useEffect;

/**
 * Subscribes to `channel` while the component is mounted and calls `handler` with each
 * publication named `event` (`null` or `"*"`: every publication). The newest `handler` is
 * always the one called, so it may be an inline function: changing it does not resubscribe.
 * Changing `channel` or `event` does. A `channel` of `null` or `undefined` subscribes to nothing
 * (for a channel not known yet, since hooks cannot be called conditionally).
 *
 * Returns the subscription (shared with the other components on the channel; leave ending it to
 * the hooks), or undefined until the first effect has run.
 */
export function useChannel<E extends EventMap = UntypedEvents>(
  channel: string | null | undefined,
  event: null | "*",
  handler: (data: E[keyof E], publication: Publication<E[keyof E]>) => void,
): Subscription<E> | undefined;
export function useChannel<E extends EventMap = UntypedEvents, K extends keyof E & string = keyof E & string>(
  channel: string | null | undefined,
  event: K,
  handler: (data: E[K], publication: Publication<E[K]>) => void,
): Subscription<E> | undefined;
export function useChannel(
  channel: string | null | undefined,
  event: string | null,
  handler: (data: unknown, publication: Publication) => void,
): Subscription | undefined {
  const client = useHerald();
  const latest = useRef(handler);
  useIsomorphicLayoutEffect(() => {
    latest.current = handler;
  });
  const [subscription, setSubscription] = useState<Subscription>();
  useEffect(() => {
    if (!channel) return;
    const lease = acquire(client, channel);
    const sub = lease.subscription;
    const off =
      event === null || event === "*"
        ? sub.onMessage((publication) => latest.current(publication.data, publication))
        : sub.on(event, (data, publication) => latest.current(data, publication));
    setSubscription(sub);
    return () => {
      off();
      lease.release();
    };
  }, [client, channel, event]);
  // Until the effect for a new channel has run, the state still holds the old one's.
  return channel && subscription?.channel === channel ? subscription : undefined;
}

/**
 * The presence of `channel`, kept current while the component is mounted: read once
 * subscribed, again after joins and leaves (gathered for 100 ms, in namespaces with
 * `join_leave`) and after every resubscribe. `loading` is true until the first answer.
 */
export function usePresence(channel: string | null | undefined, options: PresenceOptions = {}): PresenceSnapshot {
  const client = useHerald();
  const countsOnly = options.countsOnly ?? false;
  // The snapshot is kept with what it describes, so that a change of channel shows `loading`
  // at once instead of the previous channel's presence for a render.
  const key = `${countsOnly}:${channel}`;
  const [state, setState] = useState<{ key: string; snapshot: PresenceSnapshot }>();
  useEffect(() => {
    if (!channel) return;
    const lease = acquire(client, channel);
    const stop = trackPresence(lease.subscription, { countsOnly }, (snapshot) => setState({ key, snapshot }));
    return () => {
      stop();
      lease.release();
    };
  }, [client, channel, countsOnly, key]);
  return channel && state?.key === key ? state.snapshot : INITIAL_PRESENCE;
}

/** The client's connection state; the component renders again each time it changes. */
export function useConnectionState(): ConnectionState {
  const client = useHerald();
  const subscribe = useCallback((onChange: () => void) => client.on("state", onChange), [client]);
  const read = () => client.state;
  return useSyncExternalStore(subscribe, read, read);
}
