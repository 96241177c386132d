//! The hub: this node's sessions, which channels each is subscribed to, and the fan-out.
//!
//! The hub knows nothing of sockets or wire formats. A transport authenticates a connection, calls
//! [`Hub::connect`] to get a [`Session`], forwards the client's commands to it, and writes whatever
//! appears in the session's [`Outbox`]. Publications reach the hub only from the engine (through
//! [`NodeSink`]), so a publication made on any node takes the same path.
//!
//! Join, leave and typing events take the same path as publications (engine, then
//! [`NodeSink::deliver_event`]) and go to every subscriber but the connection they are about.
//! Presence itself lives in the engine, which answers for the whole cluster; the hub enters a
//! session when its subscription takes effect and takes it out when the subscription ends.
//! Where a namespace asks the application's backend, [`Session::subscribe`] and
//! [`Session::publish`] await its [`Hooks`] first, holding no lock.
//!
//! # Layout
//!
//! - `node.rs`: what the node as a whole does for the server API (publish, history, presence,
//!   commands for a user's connections, channel list, figures, the drain).
//! - `session.rs`: one connection's life: connect, subscribe with recovery, publish, typing,
//!   unsubscribe, drop.
//! - `index.rs`: which sessions each channel and each user has on this node.
//! - `fan_out.rs`: a publication or event to every local subscriber, and the pace of large
//!   channels.
//! - `membership.rs`: the engine's view of this node's subscriptions and presence, kept in the
//!   order the index changed.
//! - `commands.rs`: cluster commands carried out on this node's connections.
//! - `lifecycle.rs`: [`Lifecycle`], the observer told of this node's edges (a user's first and
//!   last connection, a channel's first and last subscriber, presence joins and leaves).
//! - `outbox.rs`: the bounded per-connection queue, and who may write to its socket.
//! - `subscribers.rs`, `throttle.rs`: a channel's subscriber set; the typing throttle.
//! - `watch.rs`: watches, a channel's traffic seen by something that is not a connection (the
//!   admin page's inspector), changing no figure and no presence.
//!
//! Locks here are `parking_lot` locks over synchronous sections only, except the channel locks
//! of `membership.rs`, which order awaited engine calls and are taken with no other lock held.

mod commands;
mod fan_out;
mod index;
mod lifecycle;
mod membership;
mod node;
mod outbox;
mod session;
mod subscribers;
mod throttle;
mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

pub use fan_out::DIRECT_WRITE_MAX_SUBSCRIBERS;
pub use lifecycle::Lifecycle;
pub use node::{ChannelInfo, ConnectionInfo, HubSnapshot};
pub use outbox::{DirectWrite, Outbound, Outbox, Written};
pub use session::{Recovery, Session, Subscribed, WeakSession};
pub use watch::{Watch, Watched, MAX_WATCHES};

use crate::channel::{ChannelName, Namespaces};
use crate::engine::{ClusterCommand, Engine, NodeSink};
use crate::hooks::Hooks;
use crate::presence::ChannelEvent;
use crate::publication::{Publication, StreamPosition};
use fan_out::FanOutPace;
use index::Index;
use node::check_event;
use throttle::TypingThrottle;
use watch::Watchers;

/// Longest event name accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 255;

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// A user sends at most one `typing` event per channel in this interval; extra ones are dropped.
pub const TYPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The hub's limits, from configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The namespaces and their policies.
    pub namespaces: Namespaces,
    /// Connections one user may hold on this node.
    pub connections_per_user: usize,
    /// Subscriptions one connection may hold, its personal channel not counted.
    pub subscriptions_per_connection: usize,
    /// The byte bound of each connection's outbox.
    pub outbound_queue_bytes: usize,
    /// How long a publish's idempotency key is remembered.
    pub idempotency_window: std::time::Duration,
}

/// Counters the hub keeps for `/api/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Publications that reached this node from the engine.
    pub publications: AtomicU64,
    /// Publications queued for a subscriber.
    pub deliveries: AtomicU64,
    /// Connections closed as slow consumers: their outgoing queue overflowed (counted here) or
    /// a write to them timed out (counted by the transport).
    pub slow_consumers: AtomicU64,
    /// Ephemeral events (join, leave, typing) that reached this node.
    pub events: AtomicU64,
}

/// What every clone of a [`Hub`] shares.
struct HubShared {
    config: HubConfig,
    engine: Arc<dyn Engine>,
    /// The backend's hooks, where namespaces ask it.
    hooks: Option<Arc<dyn Hooks>>,
    /// Told of this node's edges (users, channels, presence), once set.
    lifecycle: OnceLock<Arc<dyn Lifecycle>>,
    typing: TypingThrottle,
    /// Which sessions each channel and each user has here.
    index: Index,
    /// Orders each channel's node-subscription and presence calls to the engine.
    channel_locks: membership::ChannelLocks,
    /// The pace of each channel larger than [`DIRECT_WRITE_MAX_SUBSCRIBERS`].
    pace: Mutex<HashMap<ChannelName, FanOutPace>>,
    next_session: AtomicU64,
    stats: HubStats,
    /// Set by `disconnect_all`: connections that finish authenticating afterwards are refused.
    draining: AtomicBool,
    /// The channels watched from outside (the admin page's inspector), with their queues.
    watchers: Watchers,
}

/// The node's hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<HubShared>,
}

// === impl Hub ===

impl Hub {
    /// Creates the hub and attaches it to `engine`.
    pub fn new(config: HubConfig, engine: Arc<dyn Engine>) -> Hub {
        Hub::with_hooks(config, engine, None)
    }

    /// Creates the hub, attached to `engine`, asking `hooks` where a namespace says so
    /// (`subscribe = "proxy"`, `publish_proxy`).
    pub fn with_hooks(
        config: HubConfig,
        engine: Arc<dyn Engine>,
        hooks: Option<Arc<dyn Hooks>>,
    ) -> Hub {
        let shared = Arc::new(HubShared {
            config,
            engine: engine.clone(),
            hooks,
            lifecycle: OnceLock::new(),
            typing: TypingThrottle::new(TYPING_INTERVAL),
            index: Index::new(),
            channel_locks: membership::ChannelLocks::new(),
            pace: Mutex::default(),
            next_session: AtomicU64::new(1),
            stats: HubStats::default(),
            draining: AtomicBool::new(false),
            watchers: Watchers::default(),
        });
        engine.attach(Arc::new(HubSink(Arc::downgrade(&shared))));
        Hub { shared }
    }

    /// Sets the observer of this node's edges (see [`Lifecycle`]). Only the first call takes
    /// effect; returns whether this one did.
    pub fn set_lifecycle(&self, lifecycle: Arc<dyn Lifecycle>) -> bool {
        self.shared.lifecycle.set(lifecycle).is_ok()
    }

    /// The observer of this node's edges, if one is set.
    fn lifecycle(&self) -> Option<&Arc<dyn Lifecycle>> {
        self.shared.lifecycle.get()
    }

    /// A handle on this hub that does not keep it alive, for tasks that serve it but should end
    /// with it.
    pub fn downgrade(&self) -> WeakHub {
        WeakHub(Arc::downgrade(&self.shared))
    }

    /// The engine this hub is attached to.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.shared.engine
    }

    /// The configured namespaces and their policies.
    pub fn namespaces(&self) -> &Namespaces {
        &self.shared.config.namespaces
    }

    /// The hub's counters.
    pub fn stats(&self) -> &HubStats {
        &self.shared.stats
    }
}

/// A [`Hub`] that may be gone (see [`Hub::downgrade`]).
#[derive(Clone)]
pub struct WeakHub(std::sync::Weak<HubShared>);

impl WeakHub {
    /// The hub, if it still lives.
    pub fn upgrade(&self) -> Option<Hub> {
        self.0.upgrade().map(|shared| Hub { shared })
    }
}

/// The engine's way back into the hub. Holds the hub weakly so that dropping the hub frees it.
struct HubSink(std::sync::Weak<HubShared>);

impl NodeSink for HubSink {
    fn deliver(&self, publication: Arc<Publication>) {
        if let Some(shared) = self.0.upgrade() {
            Hub { shared }.fan_out(publication);
        }
    }

    fn deliver_event(&self, event: Arc<ChannelEvent>) {
        if let Some(shared) = self.0.upgrade() {
            Hub { shared }.fan_out_event(event);
        }
    }

    fn command(&self, command: ClusterCommand) {
        if let Some(shared) = self.0.upgrade() {
            Hub { shared }.run_command(command);
        }
    }

    fn reset(&self, channel: &ChannelName, position: StreamPosition) {
        if let Some(shared) = self.0.upgrade() {
            Hub { shared }.fan_out_reset(channel, position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{Identity, NamespacePolicy, SubscribePolicy};
    use crate::engine::MemoryEngine;
    use crate::error::{CloseCode, ErrorCode};
    use serde_json::value::RawValue;

    /// A hub on `engine` with `policy` as its one namespace.
    fn hub_with(
        policy: NamespacePolicy,
        per_user: usize,
        subscriptions: usize,
        engine: Arc<MemoryEngine>,
    ) -> Hub {
        let config = HubConfig {
            namespaces: Namespaces::new([policy]),
            connections_per_user: per_user,
            subscriptions_per_connection: subscriptions,
            outbound_queue_bytes: 1 << 20,
            idempotency_window: std::time::Duration::from_secs(60),
        };
        Hub::new(config, engine)
    }

    fn hub(per_user: usize) -> Hub {
        let policy = NamespacePolicy::new("chat", SubscribePolicy::Public);
        hub_with(policy, per_user, 2, Arc::new(MemoryEngine::new()))
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).expect("channel")
    }

    fn data() -> Box<RawValue> {
        RawValue::from_string(r#"{"n":1}"#.into()).expect("json")
    }

    async fn connect(hub: &Hub, identity: Identity) -> Session {
        hub.connect(identity, Recovery::Live)
            .await
            .map(|(session, _)| session)
            .expect("connect")
    }

    fn drain(session: &Session) -> Vec<u64> {
        let mut batch = Vec::new();
        session.outbox().take(&mut batch);
        batch
            .into_iter()
            .filter_map(|o| match o {
                Outbound::Publication(p) => Some(p.offset),
                Outbound::Event(_)
                | Outbound::Unsubscribed(_)
                | Outbound::Resubscribed(_)
                | Outbound::Heartbeat => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn publications_reach_subscribers_only() {
        let hub = hub(4);
        let a = connect(&hub, Identity::new("a")).await;
        let b = connect(&hub, Identity::new("b")).await;
        a.subscribe(&ch("chat:1"), Recovery::Live)
            .await
            .expect("subscribe");
        hub.publish(ch("chat:1"), None, data(), None)
            .await
            .expect("publish");
        hub.publish(ch("chat:1"), None, data(), None)
            .await
            .expect("publish");
        assert_eq!(drain(&a), [1, 2]);
        assert!(drain(&b).is_empty());
        a.unsubscribe(&ch("chat:1")).await.expect("unsubscribe");
        hub.publish(ch("chat:1"), None, data(), None)
            .await
            .expect("publish");
        assert!(drain(&a).is_empty());
    }

    #[tokio::test]
    async fn personal_channel_is_automatic_and_limits_hold() {
        let hub = hub(2);
        let a1 = connect(&hub, Identity::new("a")).await;
        let _a2 = connect(&hub, Identity::new("a")).await;
        let refused = hub
            .connect(Identity::new("a"), Recovery::Live)
            .await
            .map(|(s, _)| s)
            .err()
            .expect("refused");
        assert_eq!(refused.code, CloseCode::TooManyConnections);

        hub.publish(ch("user:a"), None, data(), None)
            .await
            .expect("publish");
        assert_eq!(drain(&a1), [1]);

        a1.subscribe(&ch("chat:1"), Recovery::Live)
            .await
            .expect("1st");
        a1.subscribe(&ch("chat:2"), Recovery::Live)
            .await
            .expect("2nd");
        let err = a1
            .subscribe(&ch("chat:3"), Recovery::Live)
            .await
            .expect_err("3rd");
        assert_eq!(err.code, ErrorCode::LimitExceeded);
    }

    /// The node stays subscribed to a channel it has a subscriber for, however the unsubscribes
    /// and subscribes of its connections interleave: its stream is never swept under a live
    /// subscriber, so the next publication keeps the epoch the subscriber was given.
    #[tokio::test]
    async fn a_resubscribe_right_after_an_unsubscribe_keeps_the_node_subscribed() {
        let mut policy = NamespacePolicy::new("chat", SubscribePolicy::Public);
        policy.history_ttl = std::time::Duration::from_secs(1);
        let engine = Arc::new(MemoryEngine::new());
        let hub = hub_with(policy, 4, 4, engine.clone());
        let a = connect(&hub, Identity::new("a")).await;
        let channel = ch("chat:1");
        a.subscribe(&channel, Recovery::Live)
            .await
            .expect("subscribe");
        // The server API's unsubscribe (whose engine calls run in the background), then the
        // client's own unsubscribe and subscribe, each followed at once by a subscribe.
        hub.unsubscribe_user("a", channel.clone())
            .await
            .expect("unsubscribe");
        let first = a.subscribe(&channel, Recovery::Live).await.expect("again");
        a.unsubscribe(&channel).await.expect("unsubscribe");
        let second = a.subscribe(&channel, Recovery::Live).await.expect("again");
        assert_eq!(first.position.epoch, second.position.epoch);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        engine.sweep(std::time::Instant::now() + std::time::Duration::from_secs(5));
        let published = hub
            .publish(channel.clone(), None, data(), None)
            .await
            .expect("publish");
        assert_eq!(published.epoch, second.position.epoch, "stream kept");
        assert_eq!(published.offset, second.position.offset + 1);
    }

    /// One `typing` per user per channel per [`TYPING_INTERVAL`], on tokio's clock.
    #[tokio::test(start_paused = true)]
    async fn typing_is_throttled_per_user_and_channel() {
        let mut policy = NamespacePolicy::new("chat", SubscribePolicy::Public);
        policy.typing = true;
        let hub = hub_with(policy, 4, 4, Arc::new(MemoryEngine::new()));
        let a = connect(&hub, Identity::new("a")).await;
        let a2 = connect(&hub, Identity::new("a")).await;
        let b = connect(&hub, Identity::new("b")).await;
        for session in [&a, &a2, &b] {
            for channel in ["chat:1", "chat:2"] {
                session
                    .subscribe(&ch(channel), Recovery::Live)
                    .await
                    .expect("subscribe");
            }
        }
        assert!(a.typing(&ch("chat:1")).await.expect("typing"));
        assert!(!a.typing(&ch("chat:1")).await.expect("typing"), "throttled");
        assert!(
            !a2.typing(&ch("chat:1")).await.expect("typing"),
            "per user, not per connection"
        );
        assert!(
            a.typing(&ch("chat:2")).await.expect("typing"),
            "per channel"
        );
        assert!(b.typing(&ch("chat:1")).await.expect("typing"), "per user");
        tokio::time::advance(TYPING_INTERVAL - std::time::Duration::from_millis(1)).await;
        assert!(!a.typing(&ch("chat:1")).await.expect("typing"));
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        assert!(
            a.typing(&ch("chat:1")).await.expect("typing"),
            "after the interval"
        );
    }

    /// Every edge the hub reported, in order.
    #[derive(Default)]
    struct Edges(parking_lot::Mutex<Vec<String>>);

    impl Edges {
        fn note(&self, edge: String) {
            self.0.lock().push(edge);
        }

        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock())
        }
    }

    impl Lifecycle for Edges {
        fn user_connected(&self, user: &Arc<str>) {
            self.note(format!("+user {user}"));
        }
        fn user_disconnected(&self, user: &Arc<str>) {
            self.note(format!("-user {user}"));
        }
        fn channel_occupied(&self, channel: &ChannelName) {
            self.note(format!("+channel {channel}"));
        }
        fn channel_vacated(&self, channel: &ChannelName) {
            self.note(format!("-channel {channel}"));
        }
        fn presence_joined(&self, channel: &ChannelName, user: &Arc<str>, _: &Arc<str>) {
            self.note(format!("+presence {channel} {user}"));
        }
        fn presence_left(&self, channel: &ChannelName, user: &Arc<str>, _: &Arc<str>) {
            self.note(format!("-presence {channel} {user}"));
        }
    }

    /// The observer hears of first and last connections and subscribers on this node only, and
    /// of each presence entry once.
    #[tokio::test]
    async fn the_lifecycle_observer_hears_of_local_edges() {
        let mut policy = NamespacePolicy::new("chat", SubscribePolicy::Public);
        policy.presence = true;
        let hub = hub_with(policy, 4, 4, Arc::new(MemoryEngine::new()));
        let edges = Arc::new(Edges::default());
        assert!(hub.set_lifecycle(edges.clone()));
        assert!(!hub.set_lifecycle(Arc::new(Edges::default())), "set once");
        let a1 = connect(&hub, Identity::new("a")).await;
        let a2 = connect(&hub, Identity::new("a")).await;
        assert_eq!(edges.take(), ["+user a", "+channel user:a"]);
        a1.subscribe(&ch("chat:1"), Recovery::Live)
            .await
            .expect("subscribe");
        a2.subscribe(&ch("chat:1"), Recovery::Live)
            .await
            .expect("subscribe");
        assert_eq!(
            edges.take(),
            [
                "+channel chat:1",
                "+presence chat:1 a",
                "+presence chat:1 a"
            ]
        );
        a1.unsubscribe(&ch("chat:1")).await.expect("unsubscribe");
        assert_eq!(edges.take(), ["-presence chat:1 a"]);
        drop(a1);
        assert!(edges.take().is_empty(), "a still has a2");
        drop(a2);
        // The presence leave runs in the background.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let mut last = edges.take();
        last.sort();
        assert_eq!(
            last,
            [
                "-channel chat:1",
                "-channel user:a",
                "-presence chat:1 a",
                "-user a"
            ]
        );
    }

    #[tokio::test]
    async fn dropping_a_session_cleans_every_index() {
        let hub = hub(4);
        let a = connect(&hub, Identity::new("a")).await;
        a.subscribe(&ch("chat:1"), Recovery::Live)
            .await
            .expect("subscribe");
        assert_eq!(hub.snapshot().subscriptions, 2);
        drop(a);
        let snap = hub.snapshot();
        assert_eq!(
            (
                snap.connections,
                snap.users,
                snap.channels,
                snap.subscriptions
            ),
            (0, 0, 0, 0)
        );
    }
}
