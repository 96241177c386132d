//! Who is in a channel, and the events that say so as it changes.
//!
//! Presence is kept per channel by the engine, one entry per connection, so that with several
//! nodes any node answers for the whole cluster. Its counts (users and connections) are kept as
//! the entries change, so asking "how many are online on this site" costs the same for ten
//! members as for ten thousand.
//!
//! A [`ChannelEvent`] (join, leave, typing) is the ephemeral sibling of a publication: it goes to
//! the channel's current subscribers on every node, has no offset, never enters history and is not
//! recovered. Like a publication it is encoded at most once per wire format and shared.

use std::sync::Arc;

use crate::channel::ChannelName;
use crate::publication::{Encodings, WireFormat};

/// One connection in a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceMember {
    /// The connection's user.
    pub user: Arc<str>,
    /// The connection's client id.
    pub client: Arc<str>,
    /// When the connection subscribed, milliseconds since the Unix epoch.
    pub joined_at: u64,
}

/// How many are in a channel: distinct users, and connections (a user with two tabs is one user
/// and two connections).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceCounts {
    /// Distinct users.
    pub users: usize,
    /// Connections.
    pub connections: usize,
}

/// What a presence join or leave did: whether the connection's entry was added (or removed) by
/// it, and the channel's counts after it. Both calls are idempotent, so a hub that repeats one
/// learns here that there is nothing to announce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceChange {
    /// False when the connection was already in (for a join) or already out (for a leave).
    pub changed: bool,
    /// The counts after the change.
    pub counts: PresenceCounts,
}

/// A channel's presence: every connection in it, and the counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// Ordered by user, then client.
    pub members: Vec<PresenceMember>,
    /// The counts.
    pub counts: PresenceCounts,
}

/// What a [`ChannelEvent`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A connection subscribed.
    Join,
    /// A connection unsubscribed or went away.
    Leave,
    /// A user is typing.
    Typing,
}

impl EventKind {
    /// The event's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::Typing => "typing",
        }
    }
}

/// An ephemeral event on a channel, for its subscribers other than the connection it is about.
pub struct ChannelEvent {
    /// Join, leave or typing.
    pub kind: EventKind,
    /// The channel it happened on.
    pub channel: ChannelName,
    /// Whom it is about.
    pub user: Arc<str>,
    /// The connection the event is about; it does not receive the event itself.
    pub client: Arc<str>,
    encodings: Encodings,
}

impl ChannelEvent {
    /// An event about `client` of `user` on `channel`.
    pub fn new(kind: EventKind, channel: ChannelName, user: Arc<str>, client: Arc<str>) -> Self {
        ChannelEvent {
            kind,
            channel,
            user,
            client,
            encodings: Encodings::default(),
        }
    }

    /// The event in `format`, encoded the first time it is asked for (see
    /// [`Publication::encoded`](crate::publication::Publication::encoded)).
    pub fn encoded<T>(&self, format: WireFormat, encode: impl Fn(&ChannelEvent) -> T) -> T
    where
        T: Clone + Send + Sync + 'static,
    {
        self.encodings.get_or_encode(format, || encode(self))
    }

    /// An estimate of the bytes this event takes in a connection's queue.
    pub fn queued_size(&self) -> usize {
        self.channel.as_str().len() + self.user.len() + self.client.len() + 64
    }
}

impl std::fmt::Debug for ChannelEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelEvent")
            .field("kind", &self.kind)
            .field("channel", &self.channel)
            .field("user", &self.user)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}
