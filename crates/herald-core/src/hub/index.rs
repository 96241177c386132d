//! The hub's two indexes: which sessions each channel has on this node, and which sessions each
//! user has.
//!
//! The fan-out reads the channel index for every publication, so it is split into shards, each a
//! `parking_lot` read-write lock over a map, and the common case (a personal channel with one
//! subscriber) costs no map of its own ([`Subscribers`](super::subscribers::Subscribers)). A
//! session's own list of channels and the channel index are changed together, under the session's
//! lock and then the shard's, so the two never disagree. Nothing here awaits or talks to the
//! engine: `membership.rs` brings the engine in line with what these indexes say.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::channel::ChannelName;
use crate::error::{CloseCode, Disconnect};

use super::session::SessionInner;
use super::subscribers;
use super::ChannelInfo;

/// How many shards the channel index is split into.
const CHANNEL_SHARDS: usize = 64;

/// The subscribers of one channel on this node, by session id.
pub(super) type Subscribers = subscribers::Subscribers<SessionInner>;

/// One shard of the channel index.
pub(super) type Shard = RwLock<HashMap<ChannelName, Subscribers>>;

/// This node's sessions by channel and by user.
pub(super) struct Index {
    channels: Box<[Shard]>,
    users: Mutex<HashMap<Arc<str>, Vec<Arc<SessionInner>>>>,
    /// Sessions registered (the users map's entries, counted without its lock).
    sessions: AtomicUsize,
    /// Subscriptions held, personal channels included.
    subscriptions: AtomicUsize,
}

/// What removing a subscription did.
pub(super) struct Removed {
    /// The channel has no subscriber left on this node (its entry is gone).
    pub(super) emptied: bool,
}

impl Index {
    pub(super) fn new() -> Index {
        Index {
            channels: (0..CHANNEL_SHARDS).map(|_| RwLock::default()).collect(),
            users: Mutex::default(),
            sessions: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
        }
    }

    /// The shard that holds `channel`.
    pub(super) fn shard(&self, channel: &ChannelName) -> &Shard {
        let mut hasher = DefaultHasher::new();
        channel.hash(&mut hasher);
        &self.channels[hasher.finish() as usize % self.channels.len()]
    }

    /// Whether `channel` has a subscriber on this node.
    pub(super) fn has_subscribers(&self, channel: &ChannelName) -> bool {
        self.shard(channel).read().contains_key(channel)
    }

    /// Registers `session` under its user, unless the node is draining (1012) or the user holds
    /// `per_user` sessions already (4011). The draining flag is read under the users lock, which
    /// the drain takes after setting it: a session is either in its user's list or refused.
    /// Tells `counted` the user's connections on this node after the change, while the list is
    /// still locked, so that counts reach it in the order they changed.
    pub(super) fn register(
        &self,
        session: &Arc<SessionInner>,
        per_user: usize,
        draining: &AtomicBool,
        counted: impl FnOnce(&Arc<str>, usize),
    ) -> Result<(), Disconnect> {
        let mut users = self.users.lock();
        if draining.load(Ordering::SeqCst) {
            return Err(Disconnect::new(
                CloseCode::ServerRestarting,
                "server restarting",
            ));
        }
        let sessions = users.entry(session.user.clone()).or_default();
        if sessions.len() >= per_user {
            if sessions.is_empty() {
                users.remove(&session.user);
            }
            return Err(Disconnect::new(
                CloseCode::TooManyConnections,
                format!("user already has {per_user} connections on this node"),
            ));
        }
        sessions.push(session.clone());
        counted(&session.user, sessions.len());
        self.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes `session` out of its user's list; tells `counted` as [`Index::register`] does.
    pub(super) fn unregister(
        &self,
        session: &SessionInner,
        counted: impl FnOnce(&Arc<str>, usize),
    ) {
        let mut users = self.users.lock();
        if let Some(sessions) = users.get_mut(&session.user) {
            sessions.retain(|s| s.id != session.id);
            counted(&session.user, sessions.len());
            if sessions.is_empty() {
                users.remove(&session.user);
            }
        }
        drop(users);
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Adds `session` to `channel`'s subscribers. Returns `None` if it was subscribed already,
    /// otherwise whether it is the channel's first subscriber on this node.
    pub(super) fn add_subscription(
        &self,
        session: &Arc<SessionInner>,
        channel: &ChannelName,
    ) -> Option<bool> {
        // The session's list stays locked while the shard is updated, so that the list and the
        // index never disagree (lock order: session list, then shard; nothing takes them the
        // other way round).
        let mut subscriptions = session.subscriptions.lock();
        if subscriptions.contains(channel) {
            return None;
        }
        subscriptions.push(channel.clone());
        let mut shard = self.shard(channel).write();
        let first = match shard.entry(channel.clone()) {
            Entry::Occupied(mut subscribers) => {
                subscribers.get_mut().insert(session.id, session.clone());
                false
            }
            Entry::Vacant(entry) => {
                entry.insert(Subscribers::one(session.id, session.clone()));
                true
            }
        };
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
        Some(first)
    }

    /// Takes `session` out of `channel`'s subscribers; `None` if it was not subscribed.
    pub(super) fn remove_subscription(
        &self,
        session: &SessionInner,
        channel: &ChannelName,
    ) -> Option<Removed> {
        let mut subscriptions = session.subscriptions.lock();
        let at = subscriptions.iter().position(|c| c == channel)?;
        subscriptions.swap_remove(at);
        let mut shard = self.shard(channel).write();
        let emptied = shard
            .get_mut(channel)
            .is_some_and(|subscribers| subscribers.remove(session.id));
        if emptied {
            shard.remove(channel);
        }
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        Some(Removed { emptied })
    }

    /// The sessions `user` holds on this node.
    pub(super) fn sessions_of(&self, user: &str) -> Vec<Arc<SessionInner>> {
        self.users.lock().get(user).cloned().unwrap_or_default()
    }

    /// Every session on this node.
    pub(super) fn all_sessions(&self) -> Vec<Arc<SessionInner>> {
        self.users.lock().values().flatten().cloned().collect()
    }

    /// How many sessions `user` holds on this node.
    pub(super) fn user_connections(&self, user: &str) -> usize {
        self.users.lock().get(user).map_or(0, Vec::len)
    }

    /// Channels whose name starts with `prefix`, with their subscriber counts, sorted by name.
    pub(super) fn channels(&self, prefix: &str) -> Vec<ChannelInfo> {
        let mut out: Vec<ChannelInfo> = self
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

    /// Sessions, users, channels and subscriptions on this node, and the bytes waiting in the
    /// sessions' outboxes.
    pub(super) fn counts(&self) -> IndexCounts {
        let (users, queued_bytes) = {
            let users = self.users.lock();
            let queued = users
                .values()
                .flatten()
                .map(|session| session.outbox.queued_bytes())
                .sum();
            (users.len(), queued)
        };
        IndexCounts {
            sessions: self.sessions.load(Ordering::Relaxed),
            users,
            channels: self.channels.iter().map(|shard| shard.read().len()).sum(),
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
            queued_bytes,
        }
    }
}

/// What [`Index::counts`] reads.
pub(super) struct IndexCounts {
    pub(super) sessions: usize,
    pub(super) users: usize,
    pub(super) channels: usize,
    pub(super) subscriptions: usize,
    pub(super) queued_bytes: usize,
}

// === impl Hub ===

impl super::Hub {
    /// Adds `session` to `channel`'s subscribers; false if it was subscribed already. Tells the
    /// [`Lifecycle`](super::Lifecycle) observer when the channel had no subscriber here before.
    pub(super) fn add_subscription(
        &self,
        session: &Arc<SessionInner>,
        channel: &ChannelName,
    ) -> bool {
        match self.shared.index.add_subscription(session, channel) {
            Some(first) => {
                if first {
                    if let Some(lifecycle) = self.lifecycle() {
                        lifecycle.channel_occupied(channel);
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Takes `session` out of `channel`'s subscribers; false if it was not subscribed.
    pub(super) fn remove_subscription(
        &self,
        session: &SessionInner,
        channel: &ChannelName,
    ) -> bool {
        match self.shared.index.remove_subscription(session, channel) {
            Some(removed) => {
                if removed.emptied {
                    self.forget_pace(channel);
                    if let Some(lifecycle) = self.lifecycle() {
                        lifecycle.channel_vacated(channel);
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Whether `channel` has a subscriber on this node.
    pub fn has_subscribers(&self, channel: &ChannelName) -> bool {
        self.shared.index.has_subscribers(channel)
    }
}
