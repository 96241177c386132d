//! Keeps the engine's view of this node's subscriptions in step with the hub's index.
//!
//! Two things follow a connection's subscriptions into the engine: the node's own subscription
//! to the channel (a node receives a channel's publications only while it has local
//! subscribers or watches, `watch.rs`) and the connection's entry in the channel's presence,
//! with the join and leave events that announce it. Each is an engine call that awaits (on Redis, a round trip), and some
//! start where nothing may wait (a session dropped, the server API unsubscribing a user), so they
//! run in the background. Replayed in whatever order their tasks happened to run, a quick
//! unsubscribe + subscribe could end with the leave after the join, or with the node
//! unsubscribed under a live subscriber.
//!
//! So the calls for one channel run one at a time, under the channel's [`ChannelLocks`] lock,
//! and none of them replays what happened: each reads the index as it is *now* and tells the
//! engine that state, through calls the engine makes idempotent. A call that comes late finds
//! nothing left to change; the last one always leaves the engine agreeing with the index. These
//! locks are the only ones held across an `.await` (they exist to order awaited engine calls),
//! and they are always taken with no other lock held.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};

use crate::channel::ChannelName;
use crate::error::HeraldError;
use crate::presence::{ChannelEvent, EventKind, PresenceMember};
use crate::publication::now_millis;

use super::session::SessionInner;
use super::Hub;

/// How many locks the channels are spread over. Two channels that share one wait for each
/// other's engine calls, so there are enough that this is rare even with a remote engine.
const CHANNEL_LOCKS: usize = 1024;

/// The locks that order the engine calls of each channel (see the module doc).
pub(super) struct ChannelLocks(Box<[tokio::sync::Mutex<()>]>);

impl ChannelLocks {
    pub(super) fn new() -> ChannelLocks {
        ChannelLocks((0..CHANNEL_LOCKS).map(|_| Default::default()).collect())
    }

    fn of(&self, channel: &ChannelName) -> &tokio::sync::Mutex<()> {
        let mut hasher = DefaultHasher::new();
        channel.hash(&mut hasher);
        &self.0[hasher.finish() as usize % self.0.len()]
    }
}

// === impl Hub ===

impl Hub {
    /// Tells the engine whether this node needs `channel`, as the index says now: subscribed
    /// while the channel has a local subscriber, unsubscribed once it has none.
    pub(super) async fn sync_node_subscription(
        &self,
        channel: &ChannelName,
    ) -> Result<(), HeraldError> {
        let _ordered = self.shared.channel_locks.of(channel).lock().await;
        self.tell_node_subscription(channel).await
    }

    /// Puts `session` in `channel`'s presence, if it is still subscribed and the namespace keeps
    /// presence, and announces the join if the entry is new.
    pub(super) async fn sync_presence(&self, channel: &ChannelName, session: &Arc<SessionInner>) {
        let _ordered = self.shared.channel_locks.of(channel).lock().await;
        self.tell_presence(channel, &Member::of(session)).await;
    }

    /// After `session`'s subscription to `channel` ended: takes it out of the channel's presence
    /// (announcing the leave) and unsubscribes the node if nobody else here needs the channel.
    pub(super) async fn sync_after_leave(
        &self,
        channel: &ChannelName,
        session: &Arc<SessionInner>,
    ) {
        self.sync_member_after_leave(channel, &Member::of(session))
            .await;
    }

    /// [`Hub::sync_after_leave`] in the background, for callers that may not wait (a session
    /// being dropped, a cluster command). The task holds the session weakly, so that a dropped
    /// session is gone at once.
    pub(super) fn spawn_sync_after_leave(
        &self,
        channel: &ChannelName,
        session: &Arc<SessionInner>,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (hub, channel, member) = (self.clone(), channel.clone(), Member::of(session));
        runtime.spawn(async move { hub.sync_member_after_leave(&channel, &member).await });
    }

    async fn sync_member_after_leave(&self, channel: &ChannelName, member: &Member) {
        let _ordered = self.shared.channel_locks.of(channel).lock().await;
        self.tell_presence(channel, member).await;
        if let Err(e) = self.tell_node_subscription(channel).await {
            tracing::warn!(channel = %channel, error = %e, "engine unsubscribe failed");
        }
    }

    /// [`Hub::sync_node_subscription`] in the background, for a watch being dropped.
    pub(super) fn spawn_sync_node_subscription(&self, channel: &ChannelName) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (hub, channel) = (self.clone(), channel.clone());
        runtime.spawn(async move {
            if let Err(e) = hub.sync_node_subscription(&channel).await {
                tracing::warn!(channel = %channel, error = %e, "engine unsubscribe failed");
            }
        });
    }

    /// Under the channel's lock: the node's subscription as the index and the watches say now
    /// (a watched channel stays subscribed without a subscriber here).
    async fn tell_node_subscription(&self, channel: &ChannelName) -> Result<(), HeraldError> {
        let engine = &self.shared.engine;
        if self.has_subscribers(channel) || self.shared.watchers.watches(channel) {
            engine.node_subscribe(channel).await
        } else {
            engine.node_unsubscribe(channel).await
        }
    }

    /// Under the channel's lock: `session`'s presence entry as its subscriptions say now, with
    /// the join or leave announced where the entry changed, the namespace asks for it, and the
    /// channel is small enough. A presence that cannot be written is logged, not refused: the
    /// subscription itself works.
    async fn tell_presence(&self, channel: &ChannelName, member: &Member) {
        let Ok(policy) = self.namespaces().policy(channel) else {
            return;
        };
        if !policy.presence {
            return;
        }
        let engine = &self.shared.engine;
        let present = member
            .session
            .upgrade()
            .is_some_and(|session| session.is_subscribed(channel));
        let change = if present {
            let entry = PresenceMember {
                user: member.user.clone(),
                client: member.client.clone(),
                joined_at: now_millis(),
            };
            engine.presence_join(channel, entry).await
        } else {
            engine.presence_leave(channel, &member.client).await
        };
        let change = match change {
            Ok(change) => change,
            Err(e) => {
                tracing::warn!(channel = %channel, error = %e, present, "presence update failed");
                return;
            }
        };
        if change.changed {
            if let Some(lifecycle) = self.lifecycle() {
                if present {
                    lifecycle.presence_joined(channel, &member.user, &member.client);
                } else {
                    lifecycle.presence_left(channel, &member.user, &member.client);
                }
            }
        }
        // A leave is judged by the count before it, so that a join and its leave are announced
        // or suppressed together.
        let members = change.counts.connections + usize::from(!present);
        if !change.changed || !policy.join_leave || members > policy.join_leave_max_members {
            return;
        }
        let kind = if present {
            EventKind::Join
        } else {
            EventKind::Leave
        };
        let event = ChannelEvent::new(
            kind,
            channel.clone(),
            member.user.clone(),
            member.client.clone(),
        );
        if let Err(e) = engine.publish_event(event).await {
            tracing::warn!(channel = %channel, error = %e, "join or leave event failed");
        }
    }
}

/// The connection a presence change is about. The session is held weakly: one that was dropped
/// is in no channel.
struct Member {
    session: Weak<SessionInner>,
    user: Arc<str>,
    client: Arc<str>,
}

impl Member {
    fn of(session: &Arc<SessionInner>) -> Member {
        Member {
            session: Arc::downgrade(session),
            user: session.user.clone(),
            client: session.client.clone(),
        }
    }
}
