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
//! Fan-out holds a shard's read lock while it pushes an `Arc` of the publication into each
//! subscriber's outbox; it never awaits and never serialises. Locks here are `parking_lot` locks
//! over synchronous sections only.

mod membership;
mod outbox;
mod subscribers;
mod throttle;

use std::collections::hash_map::DefaultHasher;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde_json::value::RawValue;

pub use outbox::{DirectWrite, Outbound, Outbox, Pushed, Written};

use crate::channel::{ChannelName, Identity, NamespacePolicy, Namespaces, SubscribePolicy};
use crate::engine::{
    ClusterCommand, Engine, HistoryPage, HistoryQuery, IdempotencyKey, NodeSink, PublishRequest,
};
use crate::error::{CloseCode, Disconnect, ErrorCode, HeraldError};
use crate::hooks::{Caller, Hooks, PublishCheck, SubscribeCheck};
use crate::presence::{ChannelEvent, EventKind, Presence};
use crate::publication::{Publication, Publisher, StreamPosition};
use throttle::TypingThrottle;

const CHANNEL_SHARDS: usize = 64;

/// Longest event name accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 255;

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// A user sends at most one `typing` event per channel in this interval; extra ones are dropped.
pub const TYPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The hub's limits, from configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub namespaces: Namespaces,
    pub connections_per_user: usize,
    pub subscriptions_per_connection: usize,
    pub outbound_queue_bytes: usize,
    /// How long a publish's idempotency key is remembered.
    pub idempotency_window: std::time::Duration,
}

/// Where a new subscription starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Recovery {
    /// At the channel's current position: only publications after the subscribe.
    #[default]
    Live,
    /// Right after this position: everything published since, if history still has it.
    Since(StreamPosition),
    /// With the newest `n` publications from history first.
    Last(usize),
}

/// A subscription that took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub channel: ChannelName,
    /// The channel's position when the subscription began; publications after it follow.
    pub position: StreamPosition,
    /// With [`Recovery::Since`]: whether every missed publication follows (false: history no
    /// longer had them, or the epoch changed, and the client should reload its state).
    pub recovered: Option<bool>,
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

/// The subscribers of one channel on this node, by session id.
type Subscribers = subscribers::Subscribers<SessionCore>;

struct HubShared {
    config: HubConfig,
    engine: Arc<dyn Engine>,
    /// The backend's hooks, where namespaces ask it.
    hooks: Option<Arc<dyn Hooks>>,
    typing: TypingThrottle,
    /// Orders each channel's node-subscription and presence calls to the engine.
    channel_locks: membership::ChannelLocks,
    channels: Vec<RwLock<HashMap<ChannelName, Subscribers>>>,
    /// The pace of each channel larger than [`DIRECT_WRITE_MAX_SUBSCRIBERS`].
    pace: Mutex<HashMap<ChannelName, FanOutPace>>,
    users: Mutex<HashMap<Arc<str>, Vec<Arc<SessionCore>>>>,
    sessions: AtomicUsize,
    subscriptions: AtomicUsize,
    next_session: AtomicU64,
    stats: HubStats,
    /// Set by `disconnect_all`: connections that finish authenticating afterwards are refused.
    draining: std::sync::atomic::AtomicBool,
}

/// The node's hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<HubShared>,
}

/// What the hub keeps of a connection.
/// Channels with up to this many subscribers are always written directly to idle sockets
/// (personal channels, rooms). A larger channel is written directly only while its passes do not
/// overlap, with an eighth to spare ([`FanOutPace`]); past that its publications go through the
/// connections' queues, where those that arrive during a pass reach each socket together, in one
/// write. Direct writes cost one `send` per subscriber inside the pass, so without the queues the
/// pass itself would be the ceiling (about 10,000 sends per publication).
pub const DIRECT_WRITE_MAX_SUBSCRIBERS: usize = 1024;

/// How busy a large channel's fan-out keeps the node: when its last pass started, and how long
/// its last direct pass took.
#[derive(Clone, Copy)]
struct FanOutPace {
    last_start: Instant,
    direct_pass: Duration,
}

impl FanOutPace {
    /// Direct writes while the time between passes is at least a direct pass and an eighth
    /// (always for a channel's first pass): passes that would overlap go through the queues.
    fn allows_direct(pace: Option<FanOutPace>, now: Instant) -> bool {
        pace.is_none_or(|pace| now.duration_since(pace.last_start) >= pace.direct_pass * 9 / 8)
    }

    /// The pace after a pass that began at `started`, written directly or not. The estimate of a
    /// direct pass falls slowly (by an eighth a pass): a pass that was short because most sockets
    /// were busy must not reopen direct writes at once.
    fn after(previous: Option<FanOutPace>, started: Instant, direct: bool) -> FanOutPace {
        let previous = previous.map_or(Duration::ZERO, |pace| pace.direct_pass);
        FanOutPace {
            last_start: started,
            direct_pass: if direct {
                started.elapsed().max(previous * 7 / 8)
            } else {
                previous
            },
        }
    }
}

/// Subscribers whose queues a fan-out loads into the cache before pushing to them (see
/// [`Outbox::warm`]).
const FAN_OUT_CHUNK: usize = 16;

pub struct SessionCore {
    id: u64,
    client: Arc<str>,
    identity: Mutex<Identity>,
    user: Arc<str>,
    outbox: Outbox,
    /// The channels this connection is subscribed to. A list: a connection has a few, and a set
    /// would cost an allocation several times their size.
    subscriptions: Mutex<Vec<ChannelName>>,
}

impl SessionCore {
    fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.subscriptions.lock().contains(channel)
    }

    /// Queues `item`; returns whether it was queued. The caller counts deliveries, so that a
    /// fan-out adds to the shared counter once, not once per subscriber.
    fn deliver(&self, item: Outbound, direct: bool, stats: &HubStats) -> bool {
        match self.outbox.push_or_write(item, direct) {
            Pushed::Queued | Pushed::Written => true,
            Pushed::Overflowed => {
                stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(client = %self.client, user = %self.user, "slow consumer: closing");
                false
            }
            Pushed::Closed => false,
        }
    }
}

/// One channel's entry in `GET /api/channels`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelInfo {
    pub channel: ChannelName,
    pub subscribers: usize,
}

/// Node-wide figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HubSnapshot {
    pub connections: usize,
    pub users: usize,
    pub channels: usize,
    pub subscriptions: usize,
    pub publications: u64,
    pub deliveries: u64,
    pub slow_consumers: u64,
    /// Join, leave and typing events that reached this node.
    pub events: u64,
    /// Bytes waiting in connections' outboxes right now.
    pub queued_bytes: usize,
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
            typing: TypingThrottle::new(TYPING_INTERVAL),
            channel_locks: membership::ChannelLocks::new(),
            channels: (0..CHANNEL_SHARDS).map(|_| RwLock::default()).collect(),
            pace: Mutex::default(),
            users: Mutex::default(),
            sessions: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            next_session: AtomicU64::new(1),
            stats: HubStats::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        engine.attach(Arc::new(HubSink(Arc::downgrade(&shared))));
        Hub { shared }
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.shared.engine
    }

    pub fn namespaces(&self) -> &Namespaces {
        &self.shared.config.namespaces
    }

    pub fn stats(&self) -> &HubStats {
        &self.shared.stats
    }

    /// Queues `item` for the session behind `outbox` (or writes it to its idle socket) as the
    /// fan-out would: a queue that overflows closes the connection and is counted as a slow
    /// consumer. Returns whether the item was taken.
    pub fn deliver_to(&self, outbox: &OutboxRef, item: Outbound) -> bool {
        outbox.0.deliver(item, true, &self.shared.stats)
    }

    /// Registers a connection for `identity` and subscribes it to the user's personal channel,
    /// starting where `personal` says (so that a client coming back gets what it missed while
    /// away). Returns the personal subscription too, when there is one.
    ///
    /// Refused with 4011 when the user already holds `connections_per_user` connections here.
    pub async fn connect(
        &self,
        identity: Identity,
        personal: Recovery,
    ) -> Result<(Session, Option<Subscribed>), Disconnect> {
        let shared = &self.shared;
        let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
        let core = Arc::new(SessionCore {
            id,
            client: new_client_id(id).into(),
            user: identity.user.clone(),
            identity: Mutex::new(identity),
            outbox: Outbox::new(shared.config.outbound_queue_bytes),
            subscriptions: Mutex::default(),
        });
        {
            let mut users = shared.users.lock();
            // Checked under the users lock, which `disconnect_all` takes after setting the flag:
            // a connection is either in its list or refused here.
            if shared.draining.load(Ordering::SeqCst) {
                return Err(Disconnect::new(
                    CloseCode::ServerRestarting,
                    "server restarting",
                ));
            }
            let sessions = users.entry(core.user.clone()).or_default();
            if sessions.len() >= shared.config.connections_per_user {
                if sessions.is_empty() {
                    users.remove(&core.user);
                }
                return Err(Disconnect::new(
                    CloseCode::TooManyConnections,
                    format!(
                        "user already has {} connections on this node",
                        shared.config.connections_per_user
                    ),
                ));
            }
            sessions.push(core.clone());
        }
        shared.sessions.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            hub: self.clone(),
            core,
        };
        let mut subscribed = None;
        if let Some(channel) = ChannelName::personal(&session.core.user) {
            // The personal channel does not count against the subscription limit, and the engine
            // failing is logged rather than refusing the connection.
            match session.attach(&channel, personal).await {
                Ok(s) => subscribed = Some(s),
                Err(e) => {
                    tracing::warn!(channel = %channel, error = %e, "personal subscribe failed")
                }
            }
        }
        Ok((session, subscribed))
    }

    /// Reads a channel's history on behalf of the server API (no permission check).
    pub async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<HistoryPage, HeraldError> {
        let policy = self.shared.config.namespaces.policy(channel)?.history();
        self.shared.engine.history(channel, policy, query).await
    }

    /// A channel's presence (or, with `counts_only`, only its counts, which cost O(1)), on behalf
    /// of the server API; `forbidden` where the namespace keeps none.
    pub async fn presence(
        &self,
        channel: &ChannelName,
        counts_only: bool,
    ) -> Result<Presence, HeraldError> {
        let policy = self.shared.config.namespaces.policy(channel)?;
        if !policy.presence {
            return Err(HeraldError::forbidden(format!(
                "presence is off for namespace {:?}",
                policy.name
            )));
        }
        let engine = &self.shared.engine;
        if counts_only {
            let counts = engine.presence_counts(channel).await?;
            return Ok(Presence {
                members: Vec::new(),
                counts,
            });
        }
        engine.presence(channel).await
    }

    /// Publishes on behalf of the server API (no subscribe check, no `from`). With an
    /// idempotency key, a retry within the configured window returns the first position and
    /// publishes nothing.
    pub async fn publish(
        &self,
        channel: ChannelName,
        event: Option<String>,
        data: Box<RawValue>,
        idempotency_key: Option<String>,
    ) -> Result<StreamPosition, HeraldError> {
        let policy = self.shared.config.namespaces.policy(&channel)?.clone();
        if idempotency_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_BYTES)
        {
            return Err(HeraldError::bad_request(format!(
                "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes"
            )));
        }
        let idempotency = idempotency_key.map(|key| IdempotencyKey {
            key: key.into_boxed_str(),
            window: self.shared.config.idempotency_window,
        });
        self.publish_with(&policy, channel, event, data, None, idempotency)
            .await
    }

    async fn publish_with(
        &self,
        policy: &NamespacePolicy,
        channel: ChannelName,
        event: Option<String>,
        data: Box<RawValue>,
        from: Option<Publisher>,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<StreamPosition, HeraldError> {
        check_event(event.as_deref())?;
        self.shared
            .engine
            .publish(PublishRequest {
                channel,
                event: event.map(String::into_boxed_str),
                data,
                from,
                history: policy.history(),
                idempotency,
            })
            .await
    }

    /// Disconnects every connection of `user` on every node.
    pub async fn disconnect_user(&self, user: &str, reconnect: bool) -> Result<(), HeraldError> {
        self.shared
            .engine
            .broadcast_command(ClusterCommand::DisconnectUser {
                user: user.into(),
                reconnect,
            })
            .await
    }

    /// Unsubscribes every connection of `user` from `channel` on every node.
    pub async fn unsubscribe_user(
        &self,
        user: &str,
        channel: ChannelName,
    ) -> Result<(), HeraldError> {
        self.shared
            .engine
            .broadcast_command(ClusterCommand::UnsubscribeUser {
                user: user.into(),
                channel,
            })
            .await
    }

    /// Active channels on this node whose name starts with `prefix`, with subscriber counts.
    pub fn channels(&self, prefix: &str) -> Vec<ChannelInfo> {
        let mut out: Vec<ChannelInfo> = self
            .shared
            .channels
            .iter()
            .flat_map(|shard| {
                shard
                    .read()
                    .iter()
                    .filter(|(name, _)| name.as_str().starts_with(prefix))
                    .map(|(name, subs)| ChannelInfo {
                        channel: name.clone(),
                        subscribers: subs.len(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        out
    }

    /// How many connections `user` holds on this node.
    pub fn user_connections(&self, user: &str) -> usize {
        self.shared.users.lock().get(user).map_or(0, Vec::len)
    }

    /// Node-wide figures.
    pub fn snapshot(&self) -> HubSnapshot {
        let s = &self.shared;
        let (users, queued_bytes) = {
            let users = s.users.lock();
            let queued = users
                .values()
                .flatten()
                .map(|session| session.outbox.queued_bytes())
                .sum();
            (users.len(), queued)
        };
        HubSnapshot {
            connections: s.sessions.load(Ordering::Relaxed),
            users,
            channels: s.channels.iter().map(|shard| shard.read().len()).sum(),
            subscriptions: s.subscriptions.load(Ordering::Relaxed),
            publications: s.stats.publications.load(Ordering::Relaxed),
            deliveries: s.stats.deliveries.load(Ordering::Relaxed),
            slow_consumers: s.stats.slow_consumers.load(Ordering::Relaxed),
            events: s.stats.events.load(Ordering::Relaxed),
            queued_bytes,
        }
    }

    /// Asks every connection on this node to close with `disconnect`, spreading the closes evenly
    /// over `window` so that clients do not all reconnect at the same instant.
    pub async fn disconnect_all(&self, disconnect: Disconnect, window: std::time::Duration) {
        // From now on, connections that finish authenticating are refused with 1012.
        self.shared.draining.store(true, Ordering::SeqCst);
        let sessions: Vec<Arc<SessionCore>> = self
            .shared
            .users
            .lock()
            .values()
            .flatten()
            .cloned()
            .collect();
        let count = sessions.len() as u32;
        let start = tokio::time::Instant::now();
        for (i, session) in sessions.into_iter().enumerate() {
            // Each close at its own instant in the window (sleeping `window / n` each time would
            // round up to a millisecond apiece and overrun the window past 1,000 connections).
            tokio::time::sleep_until(start + window * i as u32 / count).await;
            session.outbox.close(disconnect.clone());
        }
    }

    fn shard(&self, channel: &ChannelName) -> &RwLock<HashMap<ChannelName, Subscribers>> {
        let mut hasher = DefaultHasher::new();
        channel.hash(&mut hasher);
        &self.shared.channels[hasher.finish() as usize % CHANNEL_SHARDS]
    }

    /// Fans `publication` out to this node's subscribers of its channel.
    fn fan_out(&self, publication: Arc<Publication>) {
        let stats = &self.shared.stats;
        stats.publications.fetch_add(1, Ordering::Relaxed);
        self.fan_out_items(&publication.channel, |_| {
            Some(Outbound::Publication(publication.clone()))
        });
    }

    /// Fans an ephemeral event out to this node's subscribers of its channel, except the
    /// connection it is about.
    fn fan_out_event(&self, event: Arc<ChannelEvent>) {
        self.shared.stats.events.fetch_add(1, Ordering::Relaxed);
        self.fan_out_items(&event.channel, |session| {
            (*session.client != *event.client).then(|| Outbound::Event(event.clone()))
        });
    }

    /// Queues `item_for(subscriber)` for each of this node's subscribers of `channel`.
    fn fan_out_items(
        &self,
        channel: &ChannelName,
        item_for: impl Fn(&SessionCore) -> Option<Outbound>,
    ) {
        let stats = &self.shared.stats;
        let shard = self.shard(channel).read();
        if let Some(subscribers) = shard.get(channel) {
            let large = subscribers.len() > DIRECT_WRITE_MAX_SUBSCRIBERS;
            let started = Instant::now();
            let pace = large
                .then(|| self.shared.pace.lock().get(channel).copied())
                .flatten();
            let direct = FanOutPace::allows_direct(pace, started);
            let mut queued = 0;
            let mut chunk: [Option<&SessionCore>; FAN_OUT_CHUNK] = [None; FAN_OUT_CHUNK];
            let mut subscribers = subscribers.iter();
            loop {
                let mut filled = 0;
                for (slot, session) in chunk.iter_mut().zip(subscribers.by_ref()) {
                    // Start loading this subscriber's queue into the cache now, so that the
                    // misses of a whole chunk overlap instead of stalling one push at a time.
                    session.outbox.warm();
                    *slot = Some(session);
                    filled += 1;
                }
                for session in chunk[..filled].iter().flatten() {
                    if let Some(item) = item_for(session) {
                        queued += u64::from(session.deliver(item, direct, stats));
                    }
                }
                if filled < FAN_OUT_CHUNK {
                    break;
                }
            }
            stats.deliveries.fetch_add(queued, Ordering::Relaxed);
            if large {
                let pace = FanOutPace::after(pace, started, direct);
                self.shared.pace.lock().insert(channel.clone(), pace);
            }
        }
    }

    fn sessions_of(&self, user: &str) -> Vec<Arc<SessionCore>> {
        self.shared
            .users
            .lock()
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    fn run_command(&self, command: ClusterCommand) {
        match command {
            ClusterCommand::DisconnectUser { user, reconnect } => {
                for session in self.sessions_of(&user) {
                    let mut d = Disconnect::new(
                        CloseCode::DisconnectedByApi,
                        "disconnected by the server API",
                    );
                    d.reconnect = reconnect;
                    session.outbox.close(d);
                }
            }
            ClusterCommand::UnsubscribeUser { user, channel } => {
                for core in self.sessions_of(&user) {
                    let session = SessionRef {
                        hub: self,
                        core: &core,
                    };
                    if session.remove_subscription(&channel) {
                        let stats = &self.shared.stats;
                        if core.deliver(Outbound::Unsubscribed(channel.clone()), true, stats) {
                            stats.deliveries.fetch_add(1, Ordering::Relaxed);
                        }
                        self.spawn_sync_after_leave(&channel, &core);
                    }
                }
            }
        }
    }

    /// Whether `channel` has a subscriber on this node.
    fn has_subscribers(&self, channel: &ChannelName) -> bool {
        self.shard(channel).read().contains_key(channel)
    }
}

/// An event name must be at most [`MAX_EVENT_BYTES`].
fn check_event(event: Option<&str>) -> Result<(), HeraldError> {
    if event.is_some_and(|e| e.len() > MAX_EVENT_BYTES) {
        return Err(HeraldError::bad_request(format!(
            "event name longer than {MAX_EVENT_BYTES} bytes"
        )));
    }
    Ok(())
}

fn new_client_id(session: u64) -> String {
    let salt: u32 = rand::random();
    format!("{session:x}-{salt:08x}")
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
}

// === impl Session ===

/// Borrowed view used where only index bookkeeping is needed.
struct SessionRef<'a> {
    hub: &'a Hub,
    core: &'a Arc<SessionCore>,
}

impl SessionRef<'_> {
    /// Adds the session to `channel`'s subscribers. Returns whether it is the channel's first
    /// subscriber on this node. Does nothing if already subscribed.
    fn add(&self, channel: &ChannelName) -> Option<bool> {
        // The session's set stays locked while the shard is updated, so that the set and the
        // index never disagree (lock order: session set, then shard; nothing takes them the
        // other way round).
        let mut subscriptions = self.core.subscriptions.lock();
        if subscriptions.contains(channel) {
            return None;
        }
        subscriptions.push(channel.clone());
        let mut shard = self.hub.shard(channel).write();
        let first = match shard.entry(channel.clone()) {
            Entry::Occupied(mut subscribers) => {
                subscribers
                    .get_mut()
                    .insert(self.core.id, self.core.clone());
                false
            }
            Entry::Vacant(entry) => {
                entry.insert(Subscribers::one(self.core.id, self.core.clone()));
                true
            }
        };
        self.hub
            .shared
            .subscriptions
            .fetch_add(1, Ordering::Relaxed);
        Some(first)
    }

    fn remove_subscription(&self, channel: &ChannelName) -> bool {
        let mut subscriptions = self.core.subscriptions.lock();
        let Some(at) = subscriptions.iter().position(|c| c == channel) else {
            return false;
        };
        subscriptions.swap_remove(at);
        let mut shard = self.hub.shard(channel).write();
        if let Some(subscribers) = shard.get_mut(channel) {
            if subscribers.remove(self.core.id) {
                shard.remove(channel);
                self.hub.shared.pace.lock().remove(channel);
            }
        }
        self.hub
            .shared
            .subscriptions
            .fetch_sub(1, Ordering::Relaxed);
        true
    }
}

/// A weak reference to a session's outbox (see [`Session::outbox_handle`]).
#[derive(Clone)]
pub struct OutboxHandle(std::sync::Weak<SessionCore>);

impl OutboxHandle {
    /// The outbox, while its session lives.
    pub fn get(&self) -> Option<OutboxRef> {
        self.0.upgrade().map(OutboxRef)
    }

    /// Whether the session still lives.
    pub fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// A session's outbox, held for a moment through an [`OutboxHandle`].
pub struct OutboxRef(Arc<SessionCore>);

impl std::ops::Deref for OutboxRef {
    type Target = Outbox;

    fn deref(&self) -> &Outbox {
        &self.0.outbox
    }
}

/// A connection registered with the hub. Dropping it removes the connection everywhere.
pub struct Session {
    hub: Hub,
    core: Arc<SessionCore>,
}

impl Session {
    /// The id the server gave this connection (sent in `connected`).
    pub fn client_id(&self) -> &Arc<str> {
        &self.core.client
    }

    pub fn user(&self) -> &Arc<str> {
        &self.core.user
    }

    pub fn outbox(&self) -> &Outbox {
        &self.core.outbox
    }

    /// A handle on this session's outbox that does not keep the session alive, for whatever
    /// keeps time for many connections at once (the WebSocket transport's heartbeat sweep).
    pub fn outbox_handle(&self) -> OutboxHandle {
        OutboxHandle(Arc::downgrade(&self.core))
    }

    /// Replaces the connection's identity (after a token refresh for the same user). The headers
    /// kept for the backend's hooks stay those of the connection's request.
    pub fn set_identity(&self, mut identity: Identity) {
        let mut current = self.core.identity.lock();
        identity.forwarded_headers = current.forwarded_headers.take();
        *current = identity;
    }

    /// Subscribes after checking the namespace policy (asking the backend's subscribe hook where
    /// the namespace says so) and the subscription limit, starting where `recovery` says.
    /// Publications the recovery finds are queued before any live one, with no gap and no
    /// duplicate between them.
    pub async fn subscribe(
        &self,
        channel: &ChannelName,
        recovery: Recovery,
    ) -> Result<Subscribed, HeraldError> {
        let policy = self.hub.namespaces().policy(channel)?.clone();
        let ask_backend =
            policy.subscribe == SubscribePolicy::Proxy && !self.is_subscribed(channel);
        if policy.subscribe != SubscribePolicy::Proxy {
            let identity = self.core.identity.lock().clone();
            self.hub.namespaces().check_subscribe(&identity, channel)?;
        }
        let personal = ChannelName::personal(&self.core.user);
        if personal.as_ref() != Some(channel) {
            // The personal channel is not counted against the limit.
            let subs = self.core.subscriptions.lock();
            let limit = self.hub.shared.config.subscriptions_per_connection;
            let counted =
                subs.len() - usize::from(personal.as_ref().is_some_and(|p| subs.contains(p)));
            if !subs.contains(channel) && counted >= limit {
                return Err(HeraldError::new(
                    ErrorCode::LimitExceeded,
                    format!("at most {limit} subscriptions per connection"),
                ));
            }
        }
        if ask_backend {
            let hooks = self.hooks()?;
            let check = SubscribeCheck {
                caller: self.caller(),
                channel: channel.clone(),
            };
            hooks.subscribe(check).await?;
        }
        self.attach(channel, recovery).await
    }

    fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.core.is_subscribed(channel)
    }

    fn hooks(&self) -> Result<&Arc<dyn Hooks>, HeraldError> {
        self.hub
            .shared
            .hooks
            .as_ref()
            .ok_or_else(|| HeraldError::unavailable("no backend hooks are configured"))
    }

    /// The connection, as the backend's hooks see it.
    fn caller(&self) -> Caller {
        Caller {
            user: self.core.user.clone(),
            client: self.core.client.clone(),
            headers: self.core.identity.lock().forwarded_headers.clone(),
        }
    }

    /// May this connection read `channel` (history, presence)? Yes if subscribed to it or if its
    /// namespace's policy would let it subscribe.
    fn check_read(&self, channel: &ChannelName) -> Result<(), HeraldError> {
        if self.is_subscribed(channel) {
            return Ok(());
        }
        let identity = self.core.identity.lock().clone();
        self.hub
            .namespaces()
            .check_subscribe(&identity, channel)
            .map(|_| ())
    }

    /// Subscribes (no permission check) and runs the recovery: hold the channel's live
    /// publications, join the channel, read history, then queue what history returned and the
    /// held publications that came after it.
    async fn attach(
        &self,
        channel: &ChannelName,
        recovery: Recovery,
    ) -> Result<Subscribed, HeraldError> {
        let hub = &self.hub.shared;
        let namespace = hub.config.namespaces.policy(channel)?.clone();
        let policy = namespace.history();
        let query = match &recovery {
            Recovery::Live => HistoryQuery::position(),
            Recovery::Since(position) => HistoryQuery {
                since: Some(position.clone()),
                limit: None,
            },
            Recovery::Last(n) => HistoryQuery {
                since: None,
                limit: Some(*n),
            },
        };
        if self.core.subscriptions.lock().contains(channel) {
            if recovery != Recovery::Live {
                return Err(HeraldError::bad_request(format!(
                    "already subscribed to {channel}; unsubscribe first to recover"
                )));
            }
            let page = hub.engine.history(channel, policy, query).await?;
            return Ok(Subscribed {
                channel: channel.clone(),
                position: page.position,
                recovered: None,
            });
        }
        let outbox = &self.core.outbox;
        if !outbox.begin_recovery(channel) {
            return Err(HeraldError::unavailable(
                "another subscribe is in progress on this connection",
            ));
        }
        let session = SessionRef {
            hub: &self.hub,
            core: &self.core,
        };
        session.add(channel);
        // Awaited even when others here are subscribed already: the node's subscription may still
        // be on its way, and this read must not come before it.
        let read = match self.hub.sync_node_subscription(channel).await {
            Ok(()) => hub.engine.history(channel, policy, query).await,
            Err(e) => Err(e),
        };
        let page = match read {
            Ok(page) => page,
            Err(e) => {
                outbox.abort_recovery();
                if session.remove_subscription(channel) {
                    self.hub.sync_after_leave(channel, &self.core).await;
                }
                return Err(e);
            }
        };
        let recovered = match recovery {
            Recovery::Since(_) => Some(page.complete),
            Recovery::Live | Recovery::Last(_) => None,
        };
        let missed = if page.complete {
            page.publications
        } else {
            Vec::new()
        };
        outbox.finish_recovery(missed, &page.position);
        if namespace.presence {
            self.hub.sync_presence(channel, &self.core).await;
        }
        Ok(Subscribed {
            channel: channel.clone(),
            position: page.position,
            recovered,
        })
    }

    /// Reads a channel's history, where this connection may subscribe to it.
    pub async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<HistoryPage, HeraldError> {
        self.check_read(channel)?;
        self.hub.history(channel, query).await
    }

    /// The channel's presence (or only its counts), where this connection may read the channel
    /// and its namespace keeps presence.
    pub async fn presence(
        &self,
        channel: &ChannelName,
        counts_only: bool,
    ) -> Result<Presence, HeraldError> {
        self.check_read(channel)?;
        self.hub.presence(channel, counts_only).await
    }

    /// Tells the channel's other subscribers that this user is typing. Needs a subscription and
    /// a namespace with typing on. Returns false when the throttle dropped it (at most one per user
    /// per channel per [`TYPING_INTERVAL`]).
    pub async fn typing(&self, channel: &ChannelName) -> Result<bool, HeraldError> {
        let policy = self.hub.namespaces().policy(channel)?;
        if !policy.typing {
            return Err(HeraldError::forbidden(format!(
                "typing is off for namespace {:?}",
                policy.name
            )));
        }
        if !self.is_subscribed(channel) {
            return Err(HeraldError::forbidden(format!(
                "subscribe to {channel} before sending typing"
            )));
        }
        let shared = &self.hub.shared;
        if !shared
            .typing
            .admit(&self.core.user, channel, std::time::Instant::now())
        {
            return Ok(false);
        }
        let event = ChannelEvent::new(
            EventKind::Typing,
            channel.clone(),
            self.core.user.clone(),
            self.core.client.clone(),
        );
        shared.engine.publish_event(event).await?;
        Ok(true)
    }

    /// Unsubscribes; `not_found` if the connection was not subscribed. Returns once the
    /// connection has left the channel's presence and the engine knows whether this node still
    /// needs the channel, so that a subscribe sent after it takes effect after it.
    pub async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), HeraldError> {
        let session = SessionRef {
            hub: &self.hub,
            core: &self.core,
        };
        if !session.remove_subscription(channel) {
            return Err(HeraldError::not_found(format!(
                "not subscribed to {channel}"
            )));
        }
        self.hub.sync_after_leave(channel, &self.core).await;
        Ok(())
    }

    /// Publishes on behalf of this client, where the namespace allows clients to publish: after
    /// the backend's publish hook allowed it (and perhaps replaced its data) where the namespace
    /// asks the backend, otherwise where the client may read the channel.
    pub async fn publish(
        &self,
        channel: ChannelName,
        event: Option<String>,
        data: Box<RawValue>,
    ) -> Result<StreamPosition, HeraldError> {
        let policy = self.hub.shared.config.namespaces.policy(&channel)?.clone();
        if !policy.publish {
            return Err(HeraldError::forbidden(format!(
                "clients may not publish to namespace {:?}",
                policy.name
            )));
        }
        check_event(event.as_deref())?;
        let data = if policy.publish_proxy {
            let check = PublishCheck {
                caller: self.caller(),
                channel: channel.clone(),
                event: event.clone(),
                data,
            };
            let original = check.data.clone();
            self.hooks()?.publish(check).await?.unwrap_or(original)
        } else {
            self.check_read(&channel)?;
            data
        };
        let from = Publisher {
            user: self.core.user.clone(),
            client: self.core.client.clone(),
        };
        self.hub
            .publish_with(&policy, channel, event, data, Some(from), None)
            .await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let channels: Vec<ChannelName> = self.core.subscriptions.lock().iter().cloned().collect();
        let view = SessionRef {
            hub: &self.hub,
            core: &self.core,
        };
        for channel in &channels {
            view.remove_subscription(channel);
            self.hub.spawn_sync_after_leave(channel, &self.core);
        }
        let shared = &self.hub.shared;
        let mut users = shared.users.lock();
        if let Some(sessions) = users.get_mut(&self.core.user) {
            sessions.retain(|s| s.id != self.core.id);
            if sessions.is_empty() {
                users.remove(&self.core.user);
            }
        }
        drop(users);
        shared.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{NamespacePolicy, SubscribePolicy};
    use crate::engine::MemoryEngine;

    fn hub(per_user: usize) -> Hub {
        let config = HubConfig {
            namespaces: Namespaces::new([NamespacePolicy::new("chat", SubscribePolicy::Public)]),
            connections_per_user: per_user,
            subscriptions_per_connection: 2,
            outbound_queue_bytes: 1 << 20,
            idempotency_window: std::time::Duration::from_secs(60),
        };
        Hub::new(config, Arc::new(MemoryEngine::new()))
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
                Outbound::Event(_) | Outbound::Unsubscribed(_) | Outbound::Heartbeat => None,
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
        let config = HubConfig {
            namespaces: Namespaces::new([policy]),
            connections_per_user: 4,
            subscriptions_per_connection: 4,
            outbound_queue_bytes: 1 << 20,
            idempotency_window: std::time::Duration::from_secs(60),
        };
        let engine = Arc::new(MemoryEngine::new());
        let hub = Hub::new(config, engine.clone());
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
