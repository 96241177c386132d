//! [`Lifecycle`]: what the hub tells an observer about this node's users, channels and presence
//! as they change, for whatever reports them elsewhere (the server's webhooks).
//!
//! The hub calls it on *local* edges only: a user's first and last connection on this node, a
//! channel's first and last subscriber on this node, a connection entering or leaving a
//! channel's presence. What these mean for the whole cluster (is the user still connected on
//! another node?) is for the observer to find out through the engine; the hub knows only its
//! node. Every call happens on a client's path, some under the index's locks, so an observer
//! must only note the edge (a push into a bounded queue with `try_send`, a map insert) and
//! return: never block, never await, never call back into the hub. With no observer set, the
//! hub pays one atomic load per edge.

use std::sync::Arc;

use crate::channel::ChannelName;

/// An observer of this node's edges. See the module docs for what an implementation may do.
pub trait Lifecycle: Send + Sync + 'static {
    /// `user` opened its first connection on this node.
    fn user_connected(&self, user: &Arc<str>);

    /// `user`'s last connection on this node ended.
    fn user_disconnected(&self, user: &Arc<str>);

    /// `channel` has its first subscriber on this node (personal channels included).
    fn channel_occupied(&self, channel: &ChannelName);

    /// `channel`'s last subscriber on this node left.
    fn channel_vacated(&self, channel: &ChannelName);

    /// Connection `client` of `user` entered `channel`'s presence (its entry is new in the
    /// engine, so this happens once per connection and channel in the whole cluster).
    fn presence_joined(&self, channel: &ChannelName, user: &Arc<str>, client: &Arc<str>);

    /// Connection `client` of `user` left `channel`'s presence (its entry was in the engine).
    fn presence_left(&self, channel: &ChannelName, user: &Arc<str>, client: &Arc<str>);
}
