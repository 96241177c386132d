// A React page for the browser tests, rendered under StrictMode (so every effect mounts, unmounts
// and mounts again). Chat components that use one channel come and go on command, and
// `window.harness` lets the test drive them and look inside the client.
import { Component, StrictMode, useEffect, useState, type ReactNode } from "react";
import { createRoot } from "react-dom/client";
import { HeraldClient, type Subscription } from "herald-client";
import { HeraldProvider, useChannel, useConnectionState, useHerald, usePresence } from "herald-client/react";

const params = new URLSearchParams(location.search);
const channel = params.get("channel")!;
const client = new HeraldClient({ url: params.get("ws")!, token: params.get("token")!, backoff: { base: 200, cap: 1000 } });
// Counts the commands that reach the server: StrictMode's second mount must not cost a subscribe.
const sent = { subscribe: 0, unsubscribe: 0 };
const request = client.request.bind(client);
client.request = (command, ...rest) => {
  if (command.type === "subscribe" || command.type === "unsubscribe") sent[command.type]++;
  return request(command, ...rest);
};
client.connect();

type ChatEvents = { msg: { text: string } };

/** What the test can change: how many chats are mounted, their label, the presence shown. */
interface View {
  chats: number;
  label: string;
  presence: string | null;
}
let setView: (change: (view: View) => View) => void = () => {
  throw new Error("not rendered yet");
};

/**
 * Chats whose effects have run and not been cleaned up. React removes an unmounted component's
 * DOM before it runs its effects' cleanups, so the DOM alone does not say they have run.
 */
let mountedChats = 0;

/** Shows each `msg` of the channel; marked ready once its subscription is. */
function Chat({ label }: { label: string }) {
  useEffect(() => {
    mountedChats++;
    return () => {
      mountedChats--;
    };
  }, []);
  const [lines, setLines] = useState<string[]>([]);
  // An inline handler that reads the newest `label`: the hook must call the newest one.
  const subscription = useChannel<ChatEvents, "msg">(channel, "msg", (data) => setLines((old) => [...old, label + data.text]));
  const [ready, setReady] = useState(false);
  useEffect(() => {
    let live = true;
    subscription?.ready().then(
      () => live && setReady(true),
      () => undefined,
    );
    return () => {
      live = false;
    };
  }, [subscription]);
  return (
    <ul className="chat" data-ready={ready ? "yes" : undefined}>
      {lines.map((line, i) => (
        <li key={i}>{line}</li>
      ))}
    </ul>
  );
}

function Presence({ channel }: { channel: string }) {
  const { users, connections, clients, loading, error } = usePresence(channel);
  return (
    <p id="presence" data-loading={String(loading)} data-users={users} data-connections={connections} data-error={error?.code}>
      {clients?.map((c) => c.user).join(",")}
    </p>
  );
}

function App() {
  const [view, update] = useState<View>({ chats: 0, label: "", presence: null });
  setView = update;
  const state = useConnectionState();
  return (
    <>
      <output id="state">{state}</output>
      {Array.from({ length: view.chats }, (_, i) => (
        <Chat key={i} label={view.label} />
      ))}
      {view.presence && <Presence channel={view.presence} />}
    </>
  );
}

/** Catches what a component throws while rendering, to show it. */
class Boundary extends Component<{ children: ReactNode }, { error?: Error }> {
  state: { error?: Error } = {};
  static getDerivedStateFromError(error: Error) {
    return { error };
  }
  render() {
    return this.state.error ? <p id="caught">{this.state.error.message}</p> : this.props.children;
  }
}

function Orphan() {
  useHerald();
  return null;
}

createRoot(document.getElementById("app")!).render(
  <StrictMode>
    <HeraldProvider client={client}>
      <App />
    </HeraldProvider>
  </StrictMode>,
);

/** Resolves once `done()` holds, checking after every task. */
async function until(done: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 5000;
  while (!done()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

let marked: Subscription | undefined;
let other: HeraldClient | undefined;

const harness = {
  client,
  /**
   * Mounts `count` chats (0: unmounts them all) and resolves when they are rendered and
   * subscribed (or their effects cleaned up), with what the client then holds.
   */
  async show(count: number) {
    setView((view) => ({ ...view, chats: count }));
    await until(
      () => mountedChats === count && document.querySelectorAll(".chat").length === count && document.querySelectorAll(".chat[data-ready]").length === count,
      `${count} subscribed chats`,
    );
    return harness.report();
  },
  /** The client's subscriptions (but the personal channel the server gives every connection). */
  report() {
    const sub = client.getSubscription(channel);
    return {
      subscriptions: client.subscriptions().filter((s) => !s.personal).map((s) => s.channel),
      state: sub?.state ?? null,
      handlers: sub?.listenerCount() ?? 0,
      ...sent,
    };
  },
  setLabel(label: string) {
    setView((view) => ({ ...view, label }));
  },
  /** Remembers the channel's subscription, to tell later whether it is still the same. */
  mark() {
    marked = client.getSubscription(channel);
    return marked !== undefined;
  },
  /** The remembered subscription's state and handlers. */
  marked() {
    return { same: marked !== undefined && marked === client.getSubscription(channel), state: marked?.state, handlers: marked?.listenerCount() };
  },
  showPresence(presence: string | null) {
    setView((view) => ({ ...view, presence }));
  },
  /** Another connection (as `token`) subscribes to `presence`. */
  async join(presence: string, token: string) {
    other = new HeraldClient({ url: params.get("ws")!, token });
    other.connect();
    await other.subscribe(presence).ready();
  },
  leave() {
    other?.disconnect();
  },
  /** Renders a component that calls `useHerald()` with no provider; resolves with what it threw. */
  async orphan() {
    const host = document.createElement("div");
    document.body.append(host);
    const orphanRoot = createRoot(host);
    orphanRoot.render(
      <Boundary>
        <Orphan />
      </Boundary>,
    );
    await until(() => host.querySelector("#caught") !== null, "the error boundary");
    const message = host.textContent;
    orphanRoot.unmount();
    host.remove();
    return message;
  },
};
(window as unknown as { harness: typeof harness }).harness = harness;
document.body.setAttribute("data-page", "ready");
