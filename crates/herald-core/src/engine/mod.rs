//! The engine interface: the only way the hub reaches beyond this node.
//!
//! An engine assigns each publication its place in the channel's stream (offset and epoch) and
//! delivers it to every node that has subscribers for the channel, this one included, through the
//! [`NodeSink`] the hub attached. Commands that must reach connections on every node (disconnect a
//! user, unsubscribe a user) travel the same way as [`ClusterCommand`]s.
//!
//! An engine also keeps each channel's history (the last publications, bounded by the namespace's
//! size and TTL) and answers reads of it. Reads and deliveries are ordered against each other, so
//! that the hub can recover a subscriber with no gap and no duplicate: it starts holding the
//! channel's live deliveries for the session, reads history, and releases the held ones that came
//! after what the read returned (see `hub::outbox`).
//!
//! Presence lives in the engine too (one entry per subscribed connection, with counts kept as
//! entries change), so that any node can answer for the whole cluster, and so do the ephemeral
//! channel events (join, leave, typing): delivered like publications, but with no offset and no
//! history.
//!
//! The `memory` engine does all of this in-process. The Redis engine (crate `herald-redis`) fits
//! the same trait: `publish` becomes a script that takes the next offset and `PUBLISH`es,
//! `node_subscribe` a `SUBSCRIBE`, and the sink is fed from the pub/sub connection. The hub did
//! not change.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod memory;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::error::HeraldError;
use crate::presence::{ChannelEvent, Presence, PresenceChange, PresenceCounts, PresenceMember};
use crate::publication::{Publication, Publisher, StreamPosition};

pub use memory::MemoryEngine;

/// A new stream's epoch: ten random hex digits, so that a position from a lost stream is never
/// taken for one of its successor.
pub fn new_epoch() -> String {
    let n: u64 = rand::random();
    format!("{:010x}", n & 0xff_ffff_ffff)
}

/// How much of a channel's stream is kept, from its namespace: at most `size` publications, none
/// older than `ttl`. A stream itself (its epoch and last offset) lives while this node has
/// subscribers for it and for `ttl` after its last publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// At most this many publications.
    pub size: usize,
    /// None older than this.
    pub ttl: Duration,
}

/// A publish that the publisher may retry: within `window`, a second publish to the same channel
/// with the same key returns the first one's position and stores nothing.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The publisher's key (at most `MAX_IDEMPOTENCY_KEY_BYTES`).
    pub key: Box<str>,
    /// How long the key is remembered.
    pub window: Duration,
}

/// What the hub asks an engine to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Where to publish.
    pub channel: ChannelName,
    /// The event name, if any.
    pub event: Option<Box<str>>,
    /// The payload, kept as the JSON text it arrived as.
    pub data: Box<RawValue>,
    /// The client that published, for client publications.
    pub from: Option<Publisher>,
    /// How much of the channel's stream to keep.
    pub history: HistoryPolicy,
    /// Present when the publisher may retry.
    pub idempotency: Option<IdempotencyKey>,
}

/// Which part of a channel's history to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Publications after this position; without it, the newest ones.
    pub since: Option<StreamPosition>,
    /// At most this many (the oldest ones after `since`, or the newest ones without it).
    pub limit: Option<usize>,
}

impl HistoryQuery {
    /// Reads no publications, only the stream's position.
    pub fn position() -> HistoryQuery {
        HistoryQuery {
            since: None,
            limit: Some(0),
        }
    }
}

/// What a history read found.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Oldest first, gapless.
    pub publications: Vec<Arc<Publication>>,
    /// The stream's position when it was read (its last offset).
    pub position: StreamPosition,
    /// With `since`: whether history still held everything after it (same epoch, nothing
    /// trimmed, not ahead of the stream). Without `since`: always true.
    pub complete: bool,
}

/// A command for the connections of a user, wherever they are connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterCommand {
    /// Close every connection of `user`.
    DisconnectUser {
        /// Whose connections.
        user: Arc<str>,
        /// Whether the clients are told to reconnect.
        reconnect: bool,
    },
    /// Unsubscribe every connection of `user` from `channel`.
    UnsubscribeUser {
        /// Whose connections.
        user: Arc<str>,
        /// The channel they leave.
        channel: ChannelName,
    },
}

/// Where an engine delivers what reaches this node. Implemented by the hub.
///
/// Both calls are synchronous and must not block: they only queue bytes for connections.
pub trait NodeSink: Send + Sync + 'static {
    /// A publication for the channel's subscribers on this node, in offset order per channel.
    fn deliver(&self, publication: Arc<Publication>);
    /// An ephemeral event for the channel's subscribers (join, leave, typing).
    fn deliver_event(&self, event: Arc<ChannelEvent>);
    /// A command for the connections on this node.
    fn command(&self, command: ClusterCommand);
    /// The engine lost part of the channel's stream for this node (its link to the other nodes
    /// was down for longer than history covers, or the stream started a new epoch): the channel's
    /// subscribers here are told that they missed publications and where the stream is now, and
    /// deliveries continue after `position`.
    fn reset(&self, channel: &ChannelName, position: StreamPosition);
}

/// What an engine that spans nodes has been through since it started, for `/metrics`. A
/// single-node engine reports zeros.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Times a link to the other nodes came back after losing its connection.
    pub link_reconnects: u64,
    /// Links to the other nodes that are down right now.
    pub links_down: u64,
    /// Publications missed while a link was down and delivered from history afterwards.
    pub repaired_publications: u64,
    /// Times a channel's subscribers were told `recovered: false` because history no longer
    /// held what a link missed.
    pub stream_resets: u64,
}

/// A node's figures, as the node registry lists them for `GET /api/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFigures {
    /// The node's name (`node_name`).
    pub name: String,
    /// Connections open.
    pub connections: u64,
    /// Distinct users among them.
    pub users: u64,
    /// Subscriptions held.
    pub subscriptions: u64,
    /// Messages received from clients and publishers.
    pub messages_in: u64,
    /// Messages sent to clients.
    pub messages_out: u64,
    /// Seconds since the node started.
    pub uptime_s: u64,
}

/// The interface between the hub and the rest of the cluster.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// A short name for logs and `/api/stats` (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Connects the engine to this node's hub. Called once, before anything else.
    fn attach(&self, sink: Arc<dyn NodeSink>);

    /// Places the publication in its channel's stream and delivers it to every node with
    /// subscribers. Returns its position once it is stored.
    async fn publish(&self, request: PublishRequest) -> Result<StreamPosition, HeraldError>;

    /// Reads the channel's history, creating its stream (and so fixing its epoch) if it has none.
    /// The read is consistent with deliveries: every publication is either in the page or
    /// delivered to the sink after the read.
    async fn history(
        &self,
        channel: &ChannelName,
        policy: HistoryPolicy,
        query: HistoryQuery,
    ) -> Result<HistoryPage, HeraldError>;

    /// This node has local subscribers for `channel`: receive its publications. Idempotent; the
    /// hub calls it before every subscription's history read (so a subscriber's read never
    /// precedes the node's subscription) and orders it against `node_unsubscribe` per channel.
    async fn node_subscribe(&self, channel: &ChannelName) -> Result<(), HeraldError>;

    /// This node had no local subscriber left for `channel` when the hub looked. Idempotent. A
    /// subscriber may arrive while it runs: its own `node_subscribe` follows, in order, before
    /// that subscriber reads history, so the engine always ends as the index is.
    async fn node_unsubscribe(&self, channel: &ChannelName) -> Result<(), HeraldError>;

    /// Puts a connection in the channel's presence (or refreshes its entry); says whether it was
    /// new, with the channel's counts after it. The hub calls presence changes for one channel
    /// one at a time, in the order its subscriptions changed.
    async fn presence_join(
        &self,
        channel: &ChannelName,
        member: PresenceMember,
    ) -> Result<PresenceChange, HeraldError>;

    /// Takes a connection out of the channel's presence; says whether it was there, with the
    /// channel's counts after it.
    async fn presence_leave(
        &self,
        channel: &ChannelName,
        client: &str,
    ) -> Result<PresenceChange, HeraldError>;

    /// Everyone in the channel.
    async fn presence(&self, channel: &ChannelName) -> Result<Presence, HeraldError>;

    /// How many are in the channel, without listing them.
    async fn presence_counts(&self, channel: &ChannelName) -> Result<PresenceCounts, HeraldError>;

    /// Delivers an ephemeral event to the channel's subscribers on every node.
    async fn publish_event(&self, event: ChannelEvent) -> Result<(), HeraldError>;

    /// Runs `command` on every node, this one included.
    async fn broadcast_command(&self, command: ClusterCommand) -> Result<(), HeraldError>;

    /// Whether the engine can serve requests now (`/ready`).
    async fn ready(&self) -> Result<(), HeraldError>;

    /// Announces this node and its figures to the node registry. The server calls it every few
    /// seconds; a node that stops announcing leaves the registry after a few missed beats.
    async fn announce(&self, figures: NodeFigures) -> Result<(), HeraldError>;

    /// Every live node's last announced figures, this node's included.
    async fn nodes(&self) -> Result<Vec<NodeFigures>, HeraldError>;

    /// `user` now has `on_this_node` connections on this node. Called by the hub as connections
    /// come and go; it must not block. Engines that span nodes keep a cluster-wide count from it.
    fn user_connections_changed(&self, user: &Arc<str>, on_this_node: usize) {
        let _ = (user, on_this_node);
    }

    /// Whether a live publication may reach the node after a history read on this node already
    /// returned it: live deliveries that travel on a link of their own, which a read on another
    /// link can overtake. The hub then drops such late copies on each recovered subscription.
    /// False where reads and live deliveries are ordered (the memory engine).
    fn live_may_trail_reads(&self) -> bool {
        false
    }

    /// What the engine's links to the other nodes have been through.
    fn counters(&self) -> EngineCounters {
        EngineCounters::default()
    }

    /// How many connections `user` has on every node, or `None` when this node's count is the
    /// answer (a single-node engine). This node's share is its latest count, as last given to
    /// [`Engine::user_connections_changed`], even where the engine writes it out later.
    async fn user_connections(&self, user: &str) -> Result<Option<usize>, HeraldError> {
        let _ = user;
        Ok(None)
    }

    /// Whether other nodes share this engine's state, so that what this node sees of users and
    /// channels is only its part. False for a single-node engine.
    fn spans_nodes(&self) -> bool {
        false
    }

    /// Whether any node, this one included, is subscribed to `channel` (has called
    /// [`Engine::node_subscribe`] and not [`Engine::node_unsubscribe`] since), as the engine sees
    /// it after every earlier subscription change of this node took effect.
    async fn channel_subscribed_anywhere(&self, channel: &ChannelName)
        -> Result<bool, HeraldError>;

    /// Records, once for the whole cluster, whether the thing named `key` was last reported
    /// present (`true`) or absent, and says whether this call changed it: of several nodes that
    /// set the same state at once, exactly one is told `true`. An absent key is not stored, so
    /// what this keeps follows what is present. Keys are the caller's (the server's webhooks use
    /// `u:<user>` and `c:<channel>`).
    async fn mark_reported(&self, key: &str, present: bool) -> Result<bool, HeraldError>;
}
