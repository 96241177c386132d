// A Vue page for the browser tests, written with render functions (no SFC compiler). Chat
// components that use one channel come and go on command, their channel can be switched, and
// `window.harness` lets the test drive them and look inside the client.
import { createApp, defineComponent, h, onMounted, onUnmounted, reactive, ref, watch, type Component } from "vue";
import { HeraldClient, type Subscription } from "herald-client";
import { createHerald, provideHerald, useChannel, useConnectionState, useHerald, usePresence } from "herald-client/vue";

const params = new URLSearchParams(location.search);
const client = new HeraldClient({ url: params.get("ws")!, token: params.get("token")! });
// Counts the commands that reach the server.
const sent = { subscribe: 0, unsubscribe: 0 };
const request = client.request.bind(client);
client.request = (command, ...rest) => {
  if (command.type === "subscribe" || command.type === "unsubscribe") sent[command.type]++;
  return request(command, ...rest);
};
client.connect();

type ChatEvents = { msg: { text: string } };

/** What the test can change: how many chats are mounted, their channel, the presence shown. */
const view = reactive({ chats: 0, channel: params.get("channel")!, presence: null as string | null });

/** Chats mounted and not yet unmounted. */
let mountedChats = 0;

/** Shows each `msg` of the chosen channel; marked ready once its subscription is. */
const Chat = defineComponent({
  setup() {
    const lines = ref<string[]>([]);
    // A getter: the chat follows `view.channel`.
    const subscription = useChannel<ChatEvents, "msg">(() => view.channel, "msg", (data) => lines.value.push(data.text));
    const ready = ref(false);
    watch(
      subscription,
      (sub, _, onCleanup) => {
        ready.value = false;
        let live = true;
        onCleanup(() => (live = false));
        sub?.ready().then(
          () => live && (ready.value = true),
          () => undefined,
        );
      },
      { immediate: true },
    );
    onMounted(() => mountedChats++);
    onUnmounted(() => mountedChats--);
    return () =>
      h(
        "ul",
        { class: "chat", "data-ready": ready.value ? "yes" : undefined, "data-channel": subscription.value?.channel },
        lines.value.map((line) => h("li", line)),
      );
  },
});

const Presence = defineComponent({
  props: { channel: { type: String, required: true } },
  setup(props) {
    const { users, connections, clients, loading, error } = usePresence(() => props.channel);
    return () =>
      h(
        "p",
        {
          id: "presence",
          "data-loading": String(loading.value),
          "data-users": users.value,
          "data-connections": connections.value,
          "data-error": error.value?.code,
        },
        clients.value?.map((c) => c.user).join(","),
      );
  },
});

const App = defineComponent({
  setup() {
    const state = useConnectionState();
    return () => [
      h("output", { id: "state" }, state.value),
      ...Array.from({ length: view.chats }, (_, i) => h(Chat, { key: i })),
      view.presence ? h(Presence, { channel: view.presence }) : null,
    ];
  },
});

createApp(App).use(createHerald(client)).mount("#app");

/** Resolves once `done()` holds, checking after every task. */
async function until(done: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 5000;
  while (!done()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/** Mounts `root` in a detached app of its own; resolves with its text, or what it threw. */
async function mountAlone(root: Component): Promise<string> {
  const host = document.createElement("div");
  document.body.append(host);
  const app = createApp(root);
  let thrown: string | undefined;
  app.config.errorHandler = (error) => {
    thrown = error instanceof Error ? error.message : String(error);
  };
  // A setup that threw leaves its component without a render function, which Vue then warns of.
  app.config.warnHandler = (message) => {
    if (thrown === undefined) console.warn(`[Vue warn]: ${message}`);
  };
  app.mount(host);
  await until(() => thrown !== undefined || host.textContent !== "", "the app to render");
  const result = thrown ?? host.textContent!;
  app.unmount();
  host.remove();
  return result;
}

let marked: Subscription | undefined;
let other: HeraldClient | undefined;

const harness = {
  client,
  /**
   * Mounts `count` chats (0: unmounts them all) and resolves when they are rendered and
   * subscribed (or unmounted), with what the client then holds.
   */
  async show(count: number) {
    view.chats = count;
    await until(
      () => mountedChats === count && document.querySelectorAll(`.chat[data-ready][data-channel="${view.channel}"]`).length === count,
      `${count} subscribed chats`,
    );
    return harness.report();
  },
  /** Switches the chats to `channel`, resolving when they are subscribed to it. */
  async setChannel(channel: string) {
    view.channel = channel;
    return harness.show(view.chats);
  },
  /** The client's subscriptions (but the personal channel the server gives every connection). */
  report() {
    const sub = client.getSubscription(view.channel);
    return {
      subscriptions: client.subscriptions().filter((s) => !s.personal).map((s) => s.channel),
      state: sub?.state ?? null,
      handlers: sub?.listenerCount() ?? 0,
      ...sent,
    };
  },
  /** Remembers the channel's subscription, to tell later whether it is still the same. */
  mark() {
    marked = client.getSubscription(view.channel);
    return marked !== undefined;
  },
  /** The remembered subscription's state and handlers. */
  marked() {
    return { same: marked !== undefined && marked === client.getSubscription(view.channel), state: marked?.state, handlers: marked?.listenerCount() };
  },
  showPresence(presence: string | null) {
    view.presence = presence;
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
  /** A component that calls `useHerald()` in an app without the plugin or a provider. */
  orphan() {
    return mountAlone(
      defineComponent({
        setup() {
          useHerald();
          return () => h("p", "rendered");
        },
      }),
    );
  },
  /** A root that calls `provideHerald` and a child that shows the connection state. */
  provided() {
    const Child = defineComponent({
      setup() {
        const state = useConnectionState();
        return () => h("p", state.value);
      },
    });
    return mountAlone(
      defineComponent({
        setup() {
          provideHerald(client);
          return () => h(Child);
        },
      }),
    );
  },
};
(window as unknown as { harness: typeof harness }).harness = harness;
document.body.setAttribute("data-page", "ready");
