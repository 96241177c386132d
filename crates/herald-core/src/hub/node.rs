//! What the node as a whole does for the server API: publish (with idempotency keys), read a
//! channel's history and presence, act on a user's connections on every node, list channels, and
//! drain the node on shutdown. None of it checks a client's permissions: the API is the
//! backend's, and a client's own requests go through its [`Session`](super::Session).

use std::sync::atomic::Ordering;

use serde_json::value::RawValue;

use crate::channel::{ChannelName, NamespacePolicy};
use crate::engine::{ClusterCommand, HistoryPage, HistoryQuery, IdempotencyKey, PublishRequest};
use crate::error::{Disconnect, HeraldError};
use crate::presence::Presence;
use crate::publication::{Publisher, StreamPosition};

use super::{Hub, MAX_EVENT_BYTES, MAX_IDEMPOTENCY_KEY_BYTES};

/// One channel's entry in `GET /api/channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The channel.
    pub channel: ChannelName,
    /// Its subscribers on this node.
    pub subscribers: usize,
}

/// One connection of a user on this node, as the admin page's user look-up shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The id the server gave the connection.
    pub client: std::sync::Arc<str>,
    /// The channels it is subscribed to, its personal channel included, sorted.
    pub channels: Vec<ChannelName>,
}

/// Node-wide figures.
#[derive(Debug, Clone)]
pub struct HubSnapshot {
    /// Connections registered.
    pub connections: usize,
    /// Distinct users among them.
    pub users: usize,
    /// Channels with a subscriber.
    pub channels: usize,
    /// Subscriptions held, personal channels included.
    pub subscriptions: usize,
    /// Publications that reached this node.
    pub publications: u64,
    /// Publications queued for (or written to) a subscriber.
    pub deliveries: u64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
    /// Join, leave and typing events that reached this node.
    pub events: u64,
    /// Bytes waiting in connections' outboxes right now.
    pub queued_bytes: usize,
}

// === impl Hub ===

impl Hub {
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

    pub(super) async fn publish_with(
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
        self.shared.index.channels(prefix)
    }

    /// How many connections `user` holds on this node.
    pub fn user_connections(&self, user: &str) -> usize {
        self.shared.index.user_connections(user)
    }

    /// The connections `user` holds on this node, each with its channels.
    pub fn user_sessions(&self, user: &str) -> Vec<ConnectionInfo> {
        self.shared
            .index
            .sessions_of(user)
            .iter()
            .map(|session| {
                let mut channels = session.subscriptions.lock().clone();
                channels.sort();
                ConnectionInfo {
                    client: session.client.clone(),
                    channels,
                }
            })
            .collect()
    }

    /// How many connections `user` holds on every node (with a single-node engine, this node's
    /// count).
    pub async fn user_connections_everywhere(&self, user: &str) -> Result<usize, HeraldError> {
        match self.shared.engine.user_connections(user).await? {
            Some(count) => Ok(count),
            None => Ok(self.user_connections(user)),
        }
    }

    /// Node-wide figures.
    pub fn snapshot(&self) -> HubSnapshot {
        let s = &self.shared;
        let counts = s.index.counts();
        HubSnapshot {
            connections: counts.sessions,
            users: counts.users,
            channels: counts.channels,
            subscriptions: counts.subscriptions,
            publications: s.stats.publications.load(Ordering::Relaxed),
            deliveries: s.stats.deliveries.load(Ordering::Relaxed),
            slow_consumers: s.stats.slow_consumers.load(Ordering::Relaxed),
            events: s.stats.events.load(Ordering::Relaxed),
            queued_bytes: counts.queued_bytes,
        }
    }

    /// Asks every connection on this node to close with `disconnect`, spreading the closes evenly
    /// over `window` so that clients do not all reconnect at the same instant.
    pub async fn disconnect_all(&self, disconnect: Disconnect, window: std::time::Duration) {
        // From now on, connections that finish authenticating are refused with 1012.
        self.shared.draining.store(true, Ordering::SeqCst);
        let sessions = self.shared.index.all_sessions();
        let count = sessions.len() as u32;
        let start = tokio::time::Instant::now();
        for (i, session) in sessions.into_iter().enumerate() {
            // Each close at its own instant in the window (sleeping `window / n` each time would
            // round up to a millisecond apiece and overrun the window past 1,000 connections).
            tokio::time::sleep_until(start + window * i as u32 / count).await;
            session.outbox.close(disconnect.clone());
        }
    }
}

/// An event name must be at most [`MAX_EVENT_BYTES`].
pub(super) fn check_event(event: Option<&str>) -> Result<(), HeraldError> {
    if event.is_some_and(|e| e.len() > MAX_EVENT_BYTES) {
        return Err(HeraldError::bad_request(format!(
            "event name longer than {MAX_EVENT_BYTES} bytes"
        )));
    }
    Ok(())
}
