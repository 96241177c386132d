// Type-level tests of herald-client/react and herald-client/vue through the package's exports
// map: the event map types each handler's data, and wrong names or types do not compile.
// `npm run typecheck` compiles them; nothing runs them.
import { createApp, ref } from "vue";
import type { ConnectionState, HeraldClient, HeraldError, PresenceEntry, Publication, Subscription } from "herald-client";
import * as R from "herald-client/react";
import * as V from "herald-client/vue";

type Chat = { msg: { text: string }; typing: { user: string } };

/** Compiles only when `A` and `B` are the same type. */
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
declare function same<A, B>(proof: Equal<A, B>): void;

// Hooks may only run inside components; these functions are only ever compiled.
export function react(client: HeraldClient) {
  R.HeraldProvider({ client, children: null });
  const herald: HeraldClient = R.useHerald();

  const chat = R.useChannel<Chat, "msg">("chat:1", "msg", (data, publication) => {
    same<typeof data, { text: string }>(true);
    same<typeof publication, Publication<{ text: string }>>(true);
  });
  same<typeof chat, Subscription<Chat> | undefined>(true);
  // @ts-expect-error a `msg` has no `user`
  R.useChannel<Chat, "msg">("chat:1", "msg", (data) => data.user);
  // @ts-expect-error not an event of Chat
  R.useChannel<Chat, "nope">("chat:1", "nope", () => undefined);
  // Every publication: the data is any of the channel's.
  R.useChannel<Chat>("chat:1", "*", (data) => same<typeof data, Chat[keyof Chat]>(true));
  R.useChannel("chat:1", null, (data) => same<typeof data, unknown>(true));
  // No channel yet: nothing is subscribed.
  R.useChannel(null, "msg", () => undefined);

  const presence = R.usePresence("chat:1", { countsOnly: true });
  same<typeof presence.users, number>(true);
  same<typeof presence.clients, PresenceEntry[] | undefined>(true);
  same<typeof presence.error, HeraldError | undefined>(true);
  same<ReturnType<typeof R.useConnectionState>, ConnectionState>(true);
  return herald;
}

export function vue(client: HeraldClient) {
  createApp({}).use(V.createHerald(client));
  V.provideHerald(client);
  const herald: HeraldClient = V.useHerald();

  const channel = ref("chat:1");
  const chat = V.useChannel<Chat, "msg">(channel, "msg", (data) => same<typeof data, { text: string }>(true));
  same<typeof chat.value, Subscription<Chat> | undefined>(true);
  // @ts-expect-error the composable owns the ref
  chat.value = undefined;
  // @ts-expect-error a `msg` has no `user`
  V.useChannel<Chat, "msg">(channel, "msg", (data) => data.user);
  V.useChannel(() => `chat:${channel.value}`, "*", (data) => same<typeof data, unknown>(true));
  V.useChannel(null, null, () => undefined);

  const { users, clients, loading } = V.usePresence(channel);
  same<typeof users.value, number>(true);
  same<typeof clients.value, PresenceEntry[] | undefined>(true);
  same<typeof loading.value, boolean>(true);
  const state = V.useConnectionState();
  same<typeof state.value, ConnectionState>(true);
  // @ts-expect-error the state follows the client; it is not set from outside
  state.value = "connected";
  return herald;
}
