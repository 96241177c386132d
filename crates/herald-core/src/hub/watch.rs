//! Watches: a channel's live traffic seen from outside, by something that is not a connection
//! (the admin page's channel inspector).
//!
//! A [`Watch`] is not a [`Session`](super::Session): it is in no user's list, holds no
//! subscription in the index and enters no presence, so the node's figures (connections, users,
//! channels, subscribers) and what clients see (presence, join and leave) are exactly what they
//! would be without it. It receives what the channel's subscribers here receive (publications,
//! join, leave and typing events, and resets) after the fan-out to them, from a bounded queue: a
//! watcher that falls behind loses the items that did not fit, counted, and never slows the
//! fan-out. While a channel is watched, the node stays subscribed to it in the engine (see
//! `membership.rs`), so that a watch on a channel with no subscriber here still sees it.
//!
//! The watchers live in one map under a lock of their own, taken alone and never while a shard
//! lock is held; the fan-out reads an atomic count first, so that a node nobody watches pays one
//! relaxed load per publication.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::channel::ChannelName;
use crate::error::{ErrorCode, HeraldError};
use crate::presence::ChannelEvent;
use crate::publication::{Publication, StreamPosition};

use super::Hub;

/// Watches a node holds at once, over every channel; the next one is refused with
/// `limit_exceeded`.
pub const MAX_WATCHES: usize = 64;

/// Items a watch's queue holds before it drops the newest.
const WATCH_QUEUE: usize = 1024;

/// What a watch sees of its channel.
#[derive(Debug, Clone)]
pub enum Watched {
    /// A publication that reached this node.
    Publication(Arc<Publication>),
    /// A join, leave or typing event.
    Event(Arc<ChannelEvent>),
    /// The engine lost part of the channel's stream for this node; it continues at this
    /// position (subscribers get `subscribed` with `recovered: false`).
    Reset(StreamPosition),
}

/// One watcher in the hub's map.
struct Watcher {
    id: u64,
    queue: mpsc::Sender<Watched>,
    dropped: Arc<AtomicU64>,
}

/// Every watch on this node, by channel.
#[derive(Default)]
pub(super) struct Watchers {
    channels: Mutex<HashMap<ChannelName, Vec<Watcher>>>,
    /// The watches in `channels`, read without its lock.
    count: AtomicUsize,
    next_id: AtomicU64,
}

impl Watchers {
    /// Whether `channel` has a watcher.
    pub(super) fn watches(&self, channel: &ChannelName) -> bool {
        self.count.load(Ordering::Relaxed) > 0 && self.channels.lock().contains_key(channel)
    }

    /// Hands `item` to every watcher of `channel`; one whose queue is full loses it, counted.
    pub(super) fn offer(&self, channel: &ChannelName, item: impl FnOnce() -> Watched) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let channels = self.channels.lock();
        let Some(watchers) = channels.get(channel) else {
            return;
        };
        let item = item();
        for watcher in watchers {
            if watcher.queue.try_send(item.clone()).is_err() {
                watcher.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn add(
        &self,
        channel: &ChannelName,
    ) -> Result<(u64, mpsc::Receiver<Watched>, Arc<AtomicU64>), HeraldError> {
        let mut channels = self.channels.lock();
        if self.count.load(Ordering::Relaxed) >= MAX_WATCHES {
            return Err(HeraldError::new(
                ErrorCode::LimitExceeded,
                format!("at most {MAX_WATCHES} channels are watched at once on a node"),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (queue, receiver) = mpsc::channel(WATCH_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        channels.entry(channel.clone()).or_default().push(Watcher {
            id,
            queue,
            dropped: dropped.clone(),
        });
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok((id, receiver, dropped))
    }

    fn remove(&self, channel: &ChannelName, id: u64) {
        let mut channels = self.channels.lock();
        if let Some(watchers) = channels.get_mut(channel) {
            let before = watchers.len();
            watchers.retain(|w| w.id != id);
            if watchers.len() < before {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            if watchers.is_empty() {
                channels.remove(channel);
            }
        }
    }
}

// === impl Hub ===

impl Hub {
    /// Starts watching `channel` (a name its namespaces know): what reaches its subscribers here
    /// from now on is also queued for the returned [`Watch`], which changes nothing the node
    /// counts or clients see. Returns once the node is subscribed to the channel in the engine.
    /// `limit_exceeded` past [`MAX_WATCHES`].
    pub async fn watch(&self, channel: &ChannelName) -> Result<Watch, HeraldError> {
        self.namespaces().policy(channel)?;
        let (id, receiver, dropped) = self.shared.watchers.add(channel)?;
        let watch = Watch {
            hub: self.clone(),
            channel: channel.clone(),
            id,
            receiver,
            dropped,
        };
        // On failure the watch is dropped, which takes it out again.
        self.sync_node_subscription(channel).await?;
        Ok(watch)
    }
}

// === impl Watch ===

/// A channel being watched. Dropping it stops the watch (and, if nothing else here needs the
/// channel, the node's subscription to it).
pub struct Watch {
    hub: Hub,
    channel: ChannelName,
    id: u64,
    receiver: mpsc::Receiver<Watched>,
    dropped: Arc<AtomicU64>,
}

impl Watch {
    /// The channel watched.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// The next item; `None` only if the hub is gone.
    pub async fn next(&mut self) -> Option<Watched> {
        self.receiver.recv().await
    }

    /// Takes the items that are queued now, without waiting.
    pub fn try_next(&mut self) -> Option<Watched> {
        self.receiver.try_recv().ok()
    }

    /// How many items this watch lost because its queue was full, since it started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.hub.shared.watchers.remove(&self.channel, self.id);
        self.hub.spawn_sync_node_subscription(&self.channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{Identity, NamespacePolicy, Namespaces, SubscribePolicy};
    use crate::engine::MemoryEngine;
    use crate::hub::{HubConfig, Recovery};
    use serde_json::value::RawValue;

    fn hub() -> Hub {
        let mut policy = NamespacePolicy::new("chat", SubscribePolicy::Public);
        policy.presence = true;
        policy.join_leave = true;
        let config = HubConfig {
            namespaces: Namespaces::new([policy]),
            connections_per_user: 4,
            subscriptions_per_connection: 4,
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

    #[tokio::test]
    async fn a_watch_sees_publications_and_events_and_changes_no_figure() {
        let hub = hub();
        let mut watch = hub.watch(&ch("chat:1")).await.expect("watch");
        let before = hub.snapshot();
        assert_eq!((before.connections, before.channels), (0, 0));
        hub.publish(ch("chat:1"), None, data(), None)
            .await
            .expect("publish");
        let Some(Watched::Publication(p)) = watch.next().await else {
            panic!("a publication")
        };
        assert_eq!(p.offset, 1);
        let (alice, _) = hub
            .connect(Identity::new("alice"), Recovery::Live)
            .await
            .expect("connect");
        alice
            .subscribe(&ch("chat:1"), Recovery::Live)
            .await
            .expect("subscribe");
        let Some(Watched::Event(join)) = watch.next().await else {
            panic!("a join")
        };
        assert_eq!(&*join.user, "alice");
        let presence = hub.presence(&ch("chat:1"), true).await.expect("presence");
        assert_eq!(presence.counts.connections, 1, "the watch is not present");
        assert_eq!(hub.channels("chat:")[0].subscribers, 1);
        assert!(watch.try_next().is_none());
        assert_eq!(watch.dropped(), 0);
    }

    #[tokio::test]
    async fn watches_are_bounded_and_dropping_one_frees_its_place() {
        let hub = hub();
        let mut watches = Vec::new();
        for i in 0..MAX_WATCHES {
            watches.push(hub.watch(&ch(&format!("chat:{i}"))).await.expect("watch"));
        }
        let refused = hub.watch(&ch("chat:x")).await.err().expect("refused");
        assert_eq!(refused.code, ErrorCode::LimitExceeded);
        watches.pop();
        hub.watch(&ch("chat:x")).await.expect("room again");
        let unknown = hub.watch(&ch("nowhere:1")).await.err().expect("unknown");
        assert_eq!(unknown.code, ErrorCode::NotFound);
    }
}
