//! The engine interface: the only way the hub reaches beyond this node.
//!
//! An engine assigns each publication its place in the channel's stream (offset and epoch) and
//! delivers it to every node that has subscribers for the channel, this one included, through the
//! [`NodeSink`] the hub attached. Commands that must reach connections on every node (disconnect a
//! user, unsubscribe a user) travel the same way as [`ClusterCommand`]s.
//!
//! The `memory` engine does all of this in-process. A Redis engine fits the same trait: `publish`
//! becomes an offset increment plus a `PUBLISH`, `node_subscribe` a `SUBSCRIBE`, and the sink is fed
//! from the pub/sub connection. The hub does not change.

pub mod memory;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::error::HeraldError;
use crate::publication::{Publication, Publisher, StreamPosition};

pub use memory::MemoryEngine;

/// What the hub asks an engine to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub channel: ChannelName,
    pub event: Option<Box<str>>,
    pub data: Box<RawValue>,
    pub from: Option<Publisher>,
    /// How long the channel's stream (its offsets and, later, its history) outlives its last
    /// publication.
    pub stream_ttl: Duration,
}

/// A command for the connections of a user, wherever they are connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterCommand {
    DisconnectUser {
        user: Arc<str>,
        reconnect: bool,
    },
    UnsubscribeUser {
        user: Arc<str>,
        channel: ChannelName,
    },
}

/// Where an engine delivers what reaches this node. Implemented by the hub.
///
/// Both calls are synchronous and must not block: they only queue bytes for connections.
pub trait NodeSink: Send + Sync + 'static {
    fn deliver(&self, publication: Arc<Publication>);
    fn command(&self, command: ClusterCommand);
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

    /// The channel's current position, if it has a stream.
    async fn position(&self, channel: &ChannelName) -> Result<Option<StreamPosition>, HeraldError>;

    /// This node has its first local subscriber for `channel`: start receiving its publications.
    async fn node_subscribe(&self, channel: &ChannelName) -> Result<(), HeraldError>;

    /// This node has lost its last local subscriber for `channel`.
    async fn node_unsubscribe(&self, channel: &ChannelName) -> Result<(), HeraldError>;

    /// Runs `command` on every node, this one included.
    async fn broadcast_command(&self, command: ClusterCommand) -> Result<(), HeraldError>;

    /// Whether the engine can serve requests now (`/ready`).
    async fn ready(&self) -> Result<(), HeraldError>;
}
