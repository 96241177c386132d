//! A session: one client connection as the hub knows it, from [`Hub::connect`] until the
//! [`Session`] is dropped.
//!
//! The transport holds the [`Session`] and calls it for each client command. Subscribing is
//! where most of the hub's rules meet: the namespace's policy (or the backend's subscribe hook),
//! the subscription limit, then [`Session::attach`], the recovery: it starts holding the
//! channel's live messages in the outbox, joins the channel, reads history, and queues what
//! history returned and the held messages after it (the one place that joins history and live).
//! Only then does the connection enter the channel's presence. Dropping the session takes it out
//! of every index at once and out of the engine's presence in the background.
//!
//! A session's parts shared with the indexes and the fan-out live in [`SessionInner`]; the
//! heartbeat sweep holds a [`WeakSession`], which does not keep a closed connection alive.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use serde_json::value::RawValue;

use crate::channel::{ChannelName, Identity, SubscribePolicy};
use crate::engine::{HistoryPage, HistoryQuery};
use crate::error::{Disconnect, ErrorCode, HeraldError};
use crate::hooks::{Caller, Hooks, PublishCheck, SubscribeCheck};
use crate::presence::{ChannelEvent, EventKind, Presence};
use crate::publication::{Publisher, StreamPosition};

use super::outbox::{Outbound, Outbox, Pushed};
use super::{check_event, Hub, HubStats};
use std::sync::atomic::Ordering;

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
    /// The channel.
    pub channel: ChannelName,
    /// The channel's position when the subscription began; publications after it follow.
    pub position: StreamPosition,
    /// With [`Recovery::Since`]: whether every missed publication follows (false: history no
    /// longer had them, or the epoch changed, and the client should reload its state).
    pub recovered: Option<bool>,
}

/// The parts of a session that the hub's indexes and the fan-out share.
pub(super) struct SessionInner {
    pub(super) id: u64,
    /// The id the server gave the connection (sent in `connected`, the key of its presence).
    pub(super) client: Arc<str>,
    identity: Mutex<Identity>,
    pub(super) user: Arc<str>,
    pub(super) outbox: Outbox,
    /// The channels this connection is subscribed to. A list: a connection has a few, and a set
    /// would cost an allocation several times their size.
    pub(super) subscriptions: Mutex<Vec<ChannelName>>,
}

impl SessionInner {
    pub(super) fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.subscriptions.lock().contains(channel)
    }

    /// Queues `item` (or writes it to the idle socket, where `direct`); returns whether it was
    /// taken. A queue that overflows closes the connection and is counted as a slow consumer.
    /// The caller counts deliveries, so that a fan-out adds to the shared counter once, not
    /// once per subscriber.
    pub(super) fn deliver(&self, item: Outbound, direct: bool, stats: &HubStats) -> bool {
        match self.outbox.push_or_write(item, direct) {
            Pushed::Queued | Pushed::Written => true,
            Pushed::Overflowed => {
                stats
                    .slow_consumers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(client = %self.client, user = %self.user, "slow consumer: closing");
                false
            }
            // Already delivered by the channel's recovery: not a delivery of its own.
            Pushed::Closed | Pushed::Covered => false,
        }
    }
}

/// A session that may be gone: what keeps time for many connections holds this instead of the
/// [`Session`], so that a closed connection is freed at once.
#[derive(Clone)]
pub struct WeakSession(Weak<SessionInner>);

impl WeakSession {
    /// Runs `f` on the session's outbox, if the session still lives.
    pub fn outbox<T>(&self, f: impl FnOnce(&Outbox) -> T) -> Option<T> {
        self.0.upgrade().map(|inner| f(&inner.outbox))
    }

    /// Whether the session still lives.
    pub fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    pub(super) fn upgrade(&self) -> Option<Arc<SessionInner>> {
        self.0.upgrade()
    }
}

// === impl Hub ===

impl Hub {
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
        let inner = Arc::new(SessionInner {
            id,
            client: new_client_id(id).into(),
            user: identity.user.clone(),
            identity: Mutex::new(identity),
            outbox: Outbox::new(shared.config.outbound_queue_bytes),
            subscriptions: Mutex::default(),
        });
        shared.index.register(
            &inner,
            shared.config.connections_per_user,
            &shared.draining,
            |user, count| {
                shared.engine.user_connections_changed(user, count);
                if count == 1 {
                    if let Some(lifecycle) = shared.lifecycle.get() {
                        lifecycle.user_connected(user);
                    }
                }
            },
        )?;
        let session = Session {
            hub: self.clone(),
            inner,
        };
        let mut subscribed = None;
        if let Some(channel) = ChannelName::personal(&session.inner.user) {
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
}

fn new_client_id(session: u64) -> String {
    let salt: u32 = rand::random();
    format!("{session:x}-{salt:08x}")
}

// === impl Session ===

/// A connection registered with the hub. Dropping it removes the connection everywhere.
pub struct Session {
    hub: Hub,
    inner: Arc<SessionInner>,
}

impl Session {
    /// The id the server gave this connection (sent in `connected`).
    pub fn client_id(&self) -> &Arc<str> {
        &self.inner.client
    }

    /// The connection's user.
    pub fn user(&self) -> &Arc<str> {
        &self.inner.user
    }

    /// The connection's outbox, which its transport writes out.
    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// A handle on this session that does not keep it alive, for whatever keeps time for many
    /// connections at once (the WebSocket transport's heartbeat sweep).
    pub fn downgrade(&self) -> WeakSession {
        WeakSession(Arc::downgrade(&self.inner))
    }

    /// Replaces the connection's identity (after a token refresh for the same user). The headers
    /// kept for the backend's hooks stay those of the connection's request.
    pub fn set_identity(&self, mut identity: Identity) {
        let mut current = self.inner.identity.lock();
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
            let identity = self.inner.identity.lock().clone();
            self.hub.namespaces().check_subscribe(&identity, channel)?;
        }
        let personal = ChannelName::personal(&self.inner.user);
        if personal.as_ref() != Some(channel) {
            // The personal channel is not counted against the limit.
            let subs = self.inner.subscriptions.lock();
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
        self.inner.is_subscribed(channel)
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
            user: self.inner.user.clone(),
            client: self.inner.client.clone(),
            headers: self.inner.identity.lock().forwarded_headers.clone(),
        }
    }

    /// May this connection read `channel` (history, presence)? Yes if subscribed to it or if its
    /// namespace's policy would let it subscribe.
    fn check_read(&self, channel: &ChannelName) -> Result<(), HeraldError> {
        if self.is_subscribed(channel) {
            return Ok(());
        }
        let identity = self.inner.identity.lock().clone();
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
        if self.inner.subscriptions.lock().contains(channel) {
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
        let outbox = &self.inner.outbox;
        if !outbox.begin_recovery(channel) {
            return Err(HeraldError::unavailable(
                "another subscribe is in progress on this connection",
            ));
        }
        self.hub.add_subscription(&self.inner, channel);
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
                if self.hub.remove_subscription(&self.inner, channel) {
                    // In the background, so that it still runs if this subscribe is cancelled
                    // (an SSE request whose client went away); the engine ends as the index is
                    // whatever runs first.
                    self.hub.spawn_sync_after_leave(channel, &self.inner);
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
        outbox.finish_recovery(missed, &page.position, hub.engine.live_may_trail_reads());
        if namespace.presence {
            self.hub.sync_presence(channel, &self.inner).await;
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
    /// per channel per [`TYPING_INTERVAL`](super::TYPING_INTERVAL)).
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
            .admit(&self.inner.user, channel, tokio::time::Instant::now())
        {
            return Ok(false);
        }
        let event = ChannelEvent::new(
            EventKind::Typing,
            channel.clone(),
            self.inner.user.clone(),
            self.inner.client.clone(),
        );
        shared.engine.publish_event(event).await?;
        Ok(true)
    }

    /// Unsubscribes; `not_found` if the connection was not subscribed. Returns once the
    /// connection has left the channel's presence and the engine knows whether this node still
    /// needs the channel, so that a subscribe sent after it takes effect after it.
    pub async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), HeraldError> {
        if !self.hub.remove_subscription(&self.inner, channel) {
            return Err(HeraldError::not_found(format!(
                "not subscribed to {channel}"
            )));
        }
        self.hub.sync_after_leave(channel, &self.inner).await;
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
            user: self.inner.user.clone(),
            client: self.inner.client.clone(),
        };
        self.hub
            .publish_with(&policy, channel, event, data, Some(from), None)
            .await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let channels: Vec<ChannelName> = self.inner.subscriptions.lock().clone();
        for channel in &channels {
            self.hub.remove_subscription(&self.inner, channel);
            self.hub.spawn_sync_after_leave(channel, &self.inner);
        }
        let shared = &self.hub.shared;
        shared.index.unregister(&self.inner, |user, count| {
            shared.engine.user_connections_changed(user, count);
            if count == 0 {
                if let Some(lifecycle) = shared.lifecycle.get() {
                    lifecycle.user_disconnected(user);
                }
            }
        });
    }
}
