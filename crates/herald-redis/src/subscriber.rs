//! The pub/sub links: how a node receives the channels it has subscribers for, and repairs what a
//! dropped link missed.
//!
//! A node keeps a few RESP3 connections for pub/sub, its links. Each channel belongs to one link
//! (by its partition: on one Redis, partition modulo [`LINKS`]; in a Redis Cluster, the link to the
//! master that owns the partition's slot), so each channel's publications arrive on one connection,
//! in the order the publish scripts ran. Subscribe and unsubscribe requests queue on their link's
//! task, which sends whatever has queued as one pipeline, so that subscribing 20,000 channels costs
//! a few dozen round trips rather than 20,000.
//!
//! Pushes are handled where the connection reads them, synchronously: a publication is turned into
//! a [`Publication`] and handed to the hub's sink, which only queues it. Each link tracks, per
//! channel, the last offset it passed on. A publication at or below it is a duplicate and dropped;
//! one beyond the next offset means something was missed.
//!
//! **Gap repair.** When a link's connection drops (or stops answering its pings), every channel it
//! serves is marked as repairing: publications that arrive for it are held. Once the link is back
//! and resubscribed, it reads each channel's history after the last offset it passed on, passes on
//! what it missed, then what it held, in order and without duplicates, and lets live ones through
//! again. Where history no longer covers the gap (trimmed, expired, or the epoch changed), the hub
//! is told through [`NodeSink::reset`] and its subscribers get `recovered: false`.
//!
//! **Redis Cluster.** The links follow the cluster's slots: when a partition's slot moves to
//! another master (a reshard, or a replica promoted after its master failed), its channels move
//! to that master's link with their last offsets, and are subscribed and repaired there like
//! after a reconnect. See [`Subscriber::follow_moves`].
//!
//! **The starting point.** A freshly subscribed channel has passed nothing on yet, so its link
//! reads the channel's last offset right after the subscribe, on the same connection: in RESP3 the
//! reply comes after every push that preceded it, so every publication above that offset is still
//! to arrive, and a later repair knows where to start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_core::engine::HistoryQuery;
use herald_core::presence::ChannelEvent;
use herald_core::publication::Publication;
use herald_core::{ChannelName, HeraldError, StreamPosition};
use parking_lot::{Mutex, RwLock};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::keys::{slot, PARTITIONS};
use crate::wire::{self, Received};
use crate::{unavailable, Shared};

/// Pub/sub links to one Redis.
pub(crate) const LINKS: usize = 4;

/// At most this many subscribe commands in one pipeline.
const BATCH: usize = 512;

/// Publications held for one channel while its gap is repaired; past this the repair gives up on
/// passing them on and resets the channel instead (a link that keeps receiving while its history
/// reads fail for this long is not going to catch up).
const MAX_HELD: usize = 10_000;

/// How often an idle link pings Redis to find out whether it still answers.
const PING_EVERY: Duration = Duration::from_secs(1);

/// One channel on a link.
struct Tracked {
    channel: ChannelName,
    partition: usize,
    /// The last offset passed on to the hub (or the starting point), with its epoch.
    last: Option<(u64, Arc<str>)>,
    /// While a repair runs: the live publications that arrived meanwhile, in order.
    held: Option<Vec<Arc<Publication>>>,
}

enum Request {
    Subscribe(Box<str>, oneshot::Sender<Result<(), HeraldError>>),
    Unsubscribe(Vec<Box<str>>),
    /// Channels moved to this link (their partition's slot moved to its master): subscribe them
    /// and repair what they missed; and the commands subject, if the link now carries it.
    Adopt(Vec<Box<str>>),
    /// How many connections (one per node) Redis has subscribed to a subject, asked on this
    /// link's connection after every subscribe and unsubscribe queued before it was sent.
    Count(Box<str>, oneshot::Sender<Result<bool, HeraldError>>),
}

/// A pub/sub connection and the channels it serves.
struct Link {
    index: usize,
    /// The Redis it connects to: `host:port` of a cluster master, or `None` for `redis_url`.
    address: Option<String>,
    /// Subject → channel. The push handler and the link's task share it; neither holds it across
    /// an `.await`.
    channels: Mutex<HashMap<Box<str>, Tracked>>,
    up: AtomicBool,
    /// Whether this link also carries the cluster commands subject.
    commands: AtomicBool,
    /// Asks for a look at the cluster's slots.
    recheck: Arc<Notify>,
    /// When the link was made, and how long after that its connection last delivered a push
    /// (milliseconds): a link busy reading a backlog of pushes answers its ping late, and is
    /// not dead.
    born: std::time::Instant,
    last_push_ms: AtomicU64,
}

impl Link {
    fn note_push(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        self.last_push_ms.store(now, Ordering::Relaxed);
    }

    /// Whether the connection delivered a push within `window`.
    fn pushed_within(&self, window: Duration) -> bool {
        let now = self.born.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_push_ms.load(Ordering::Relaxed)) <= window.as_millis() as u64
    }
}

/// A link and the queue of its task.
#[derive(Clone)]
struct LinkHandle {
    link: Arc<Link>,
    requests: mpsc::Sender<Request>,
}

/// Which links there are, and which link serves each partition.
struct Layout {
    links: Vec<LinkHandle>,
    partition_links: Vec<usize>,
}

impl Layout {
    fn link_of(&self, partition: usize) -> &LinkHandle {
        &self.links[self.partition_links[partition]]
    }
}

/// The node's pub/sub side.
pub(crate) struct Subscriber {
    shared: Arc<Shared>,
    /// Read for every subscribe and unsubscribe; written only when a Redis Cluster's slots moved
    /// (a reshard, a failover), never across an `.await`.
    layout: RwLock<Layout>,
    /// Wakes the cluster layout check early (a link lost its master, or Redis dropped a shard
    /// channel because its slot moved).
    recheck: Arc<Notify>,
}

/// Starts a link's task; `first` hears how its first connection went.
fn start_link(
    shared: &Arc<Shared>,
    recheck: &Arc<Notify>,
    index: usize,
    address: Option<String>,
    commands: bool,
    first: oneshot::Sender<Result<(), HeraldError>>,
) -> LinkHandle {
    let link = Arc::new(Link {
        index,
        address,
        channels: Mutex::default(),
        up: AtomicBool::new(false),
        commands: AtomicBool::new(commands),
        recheck: recheck.clone(),
        born: std::time::Instant::now(),
        last_push_ms: AtomicU64::new(0),
    });
    let (requests, queue) = mpsc::channel(BATCH * 8);
    tokio::spawn(run_link(Arc::downgrade(shared), link.clone(), queue, first));
    LinkHandle { link, requests }
}

impl Subscriber {
    /// Starts the links; returns once each has connected once (or failed to).
    pub(crate) async fn start(shared: Arc<Shared>) -> Result<Arc<Subscriber>, HeraldError> {
        let (addresses, partition_links) = if shared.cluster {
            cluster_layout(&shared).await?
        } else {
            let partitions = (0..PARTITIONS).map(|p| p % LINKS).collect();
            (vec![None; LINKS], partitions)
        };
        let recheck = Arc::new(Notify::new());
        let mut links = Vec::new();
        let mut started = Vec::new();
        for (index, address) in addresses.into_iter().enumerate() {
            let (first, first_done) = oneshot::channel();
            links.push(start_link(
                &shared,
                &recheck,
                index,
                address,
                index == 0,
                first,
            ));
            started.push(first_done);
        }
        for first in started {
            match first.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(HeraldError::unavailable("redis: a pub/sub link ended")),
            }
        }
        let subscriber = Arc::new(Subscriber {
            shared,
            layout: RwLock::new(Layout {
                links,
                partition_links,
            }),
            recheck,
        });
        if subscriber.shared.cluster {
            tokio::spawn(follow_cluster(Arc::downgrade(&subscriber)));
        }
        Ok(subscriber)
    }

    /// Whether every link is connected.
    pub(crate) fn all_up(&self) -> bool {
        self.links_down() == 0
    }

    /// Links not connected right now.
    pub(crate) fn links_down(&self) -> usize {
        self.layout
            .read()
            .links
            .iter()
            .filter(|l| !l.link.up.load(Ordering::Relaxed))
            .count()
    }

    /// Channels subscribed, over all links.
    pub(crate) fn channel_count(&self) -> usize {
        let layout = self.layout.read();
        layout
            .links
            .iter()
            .map(|l| l.link.channels.lock().len())
            .sum()
    }

    /// Subscribes this node to `channel`; returns once Redis confirmed it.
    pub(crate) async fn subscribe(&self, channel: &ChannelName) -> Result<(), HeraldError> {
        let (subject, partition) = self.shared.keys.subject(channel.as_str());
        let handle = {
            // Entered under the layout's read lock, so that a move of the partition either
            // takes the channel along or happens before and sends it to the new link.
            let layout = self.layout.read();
            let handle = layout.link_of(partition);
            let mut channels = handle.link.channels.lock();
            if channels.contains_key(subject.as_str()) {
                return Ok(());
            }
            if !handle.link.up.load(Ordering::Relaxed) {
                return Err(HeraldError::unavailable(
                    "redis: the pub/sub link is reconnecting",
                ));
            }
            channels.insert(
                subject.clone().into(),
                Tracked {
                    channel: channel.clone(),
                    partition,
                    last: None,
                    held: None,
                },
            );
            handle.clone()
        };
        let (done, confirmed) = oneshot::channel();
        let sent = handle
            .requests
            .send(Request::Subscribe(subject.clone().into(), done))
            .await;
        let result = match sent {
            Ok(()) => match tokio::time::timeout(self.shared.config.timeout * 2, confirmed).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(HeraldError::unavailable("redis: the pub/sub link ended")),
                Err(_) => Err(unavailable("subscribe", "timed out")),
            },
            Err(_) => Err(HeraldError::unavailable("redis: the pub/sub link ended")),
        };
        if result.is_err() {
            let layout = self.layout.read();
            layout
                .link_of(partition)
                .link
                .channels
                .lock()
                .remove(subject.as_str());
        }
        result
    }

    /// Unsubscribes this node from `channel`. Publications stop being passed on at once; the
    /// link tells Redis when it next sends.
    pub(crate) async fn unsubscribe(&self, channel: &ChannelName) {
        let (subject, partition) = self.shared.keys.subject(channel.as_str());
        let handle = {
            let layout = self.layout.read();
            let handle = layout.link_of(partition);
            if handle
                .link
                .channels
                .lock()
                .remove(subject.as_str())
                .is_none()
            {
                return;
            }
            handle.clone()
        };
        // A link that is down resubscribes from its map, where the channel no longer is.
        if let Err(mpsc::error::TrySendError::Full(request)) = handle
            .requests
            .try_send(Request::Unsubscribe(vec![subject.into()]))
        {
            tokio::spawn(async move { handle.requests.send(request).await });
        }
    }

    /// Whether any node is subscribed to `channel` in Redis. Asked on the channel's link, behind
    /// whatever subscribe or unsubscribe this node queued there before, so that the answer
    /// counts this node as its own index stands (an unsubscribe is sent lazily, and a count
    /// asked on another connection could still see it subscribed).
    pub(crate) async fn subscribed_anywhere(
        &self,
        channel: &ChannelName,
    ) -> Result<bool, HeraldError> {
        let (subject, partition) = self.shared.keys.subject(channel.as_str());
        let handle = self.layout.read().link_of(partition).clone();
        if !handle.link.up.load(Ordering::Relaxed) {
            return Err(HeraldError::unavailable(
                "redis: the pub/sub link is reconnecting",
            ));
        }
        let (done, answer) = oneshot::channel();
        let wait = self.shared.config.timeout * 2;
        let asked = tokio::time::timeout(wait, async {
            handle
                .requests
                .send(Request::Count(subject.into(), done))
                .await
                .map_err(|_| HeraldError::unavailable("redis: the pub/sub link ended"))?;
            answer
                .await
                .map_err(|_| HeraldError::unavailable("redis: the pub/sub link ended"))?
        })
        .await;
        asked.unwrap_or_else(|_| Err(unavailable("subscriber count", "timed out")))
    }

    /// Reads the cluster's slots and, where a partition's master changed, moves its channels to
    /// the link of the new master (started if needed), which subscribes them and repairs what
    /// they missed; links left without a partition are closed.
    async fn follow_moves(&self) -> Result<(), HeraldError> {
        let (addresses, mapping) = cluster_layout(&self.shared).await?;
        let mut adopted: Vec<(LinkHandle, Vec<Box<str>>)> = Vec::new();
        let mut released: Vec<(LinkHandle, Vec<Box<str>>)> = Vec::new();
        {
            let mut layout = self.layout.write();
            for partition in 0..PARTITIONS {
                let wanted = &addresses[mapping[partition]];
                let from = layout.partition_links[partition];
                if layout.links[from].link.address == *wanted {
                    continue;
                }
                let to = match layout.links.iter().position(|l| l.link.address == *wanted) {
                    Some(to) => to,
                    None => {
                        let index = layout.links.iter().map(|l| l.link.index).max().unwrap_or(0);
                        // Its first connection is not waited for: until it is up, the node is
                        // not ready and subscribes to its partitions are refused.
                        let (first, _) = oneshot::channel();
                        let handle = start_link(
                            &self.shared,
                            &self.recheck,
                            index + 1,
                            wanted.clone(),
                            false,
                            first,
                        );
                        layout.links.push(handle);
                        layout.links.len() - 1
                    }
                };
                let moved: Vec<(Box<str>, Tracked)> = {
                    let mut channels = layout.links[from].link.channels.lock();
                    let subjects: Vec<Box<str>> = channels
                        .iter()
                        .filter(|(_, t)| t.partition == partition)
                        .map(|(s, _)| s.clone())
                        .collect();
                    subjects
                        .into_iter()
                        .filter_map(|s| channels.remove(&s).map(|t| (s, t)))
                        .collect()
                };
                let subjects: Vec<Box<str>> = moved.iter().map(|(s, _)| s.clone()).collect();
                {
                    let mut channels = layout.links[to].link.channels.lock();
                    for (subject, mut tracked) in moved {
                        // Held until the new link has subscribed and read what was missed.
                        tracked.held.get_or_insert_with(Vec::new);
                        channels.insert(subject, tracked);
                    }
                }
                tracing::info!(
                    partition,
                    from = ?layout.links[from].link.address,
                    to = ?wanted,
                    channels = subjects.len(),
                    "redis cluster: partition moved"
                );
                layout.partition_links[partition] = to;
                if !subjects.is_empty() {
                    released.push((layout.links[from].clone(), subjects.clone()));
                    adopted.push((layout.links[to].clone(), subjects));
                }
            }
            // Close links that serve no partition any more; one that carried the commands
            // subject hands it to the first link left.
            let used: Vec<bool> = (0..layout.links.len())
                .map(|i| layout.partition_links.contains(&i))
                .collect();
            if used.iter().any(|u| !u) {
                let mut renumber = vec![0; layout.links.len()];
                let mut kept = Vec::new();
                let mut commands_lost = false;
                for (i, handle) in layout.links.drain(..).enumerate() {
                    if used[i] {
                        renumber[i] = kept.len();
                        kept.push(handle);
                    } else {
                        commands_lost |= handle.link.commands.swap(false, Ordering::Relaxed);
                        tracing::info!(address = ?handle.link.address, "redis cluster: link closed");
                    }
                }
                for link in &mut layout.partition_links {
                    *link = renumber[*link];
                }
                layout.links = kept;
                if commands_lost {
                    if let Some(first) = layout.links.first() {
                        first.link.commands.store(true, Ordering::Relaxed);
                        adopted.push((first.clone(), Vec::new()));
                    }
                }
            }
        }
        for (handle, subjects) in released {
            let _ = handle.requests.try_send(Request::Unsubscribe(subjects));
        }
        for (handle, subjects) in adopted {
            let _ = handle.requests.send(Request::Adopt(subjects)).await;
        }
        Ok(())
    }
}

/// How often a node compares its links with the Redis Cluster's slots.
const CLUSTER_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Follows slot moves of a Redis Cluster for as long as the subscriber lives: every
/// [`CLUSTER_CHECK_EVERY`], and at once when a link asks.
async fn follow_cluster(subscriber: Weak<Subscriber>) {
    let recheck = match subscriber.upgrade() {
        Some(s) => s.recheck.clone(),
        None => return,
    };
    loop {
        let _ = tokio::time::timeout(CLUSTER_CHECK_EVERY, recheck.notified()).await;
        let Some(subscriber) = subscriber.upgrade() else {
            return;
        };
        if let Err(e) = subscriber.follow_moves().await {
            tracing::warn!(error = %e, "redis cluster: cannot read the slots");
        }
        drop(subscriber);
        // A burst of reasons to look again is one look.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens a RESP3 connection for `link` whose pushes go to [`on_push`]; `gone` is notified when it
/// drops.
async fn connect(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    gone: Arc<Notify>,
) -> Result<MultiplexedConnection, HeraldError> {
    // A cluster master takes the seed's credentials.
    let seed = shared
        .config
        .cluster_nodes
        .first()
        .unwrap_or(&shared.config.url);
    let seed = seed
        .as_str()
        .into_connection_info()
        .map_err(|e| unavailable("redis_url", e))?;
    let scheme = if shared
        .config
        .cluster_nodes
        .first()
        .is_some_and(|seed| seed.starts_with("rediss://"))
    {
        "rediss"
    } else {
        "redis"
    };
    let info = match &link.address {
        Some(address) => format!("{scheme}://{address}")
            .as_str()
            .into_connection_info()
            .map_err(|e| unavailable("cluster node address", e))?,
        None => seed.clone(),
    };
    let settings = seed
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))
        .map_err(|e| unavailable("redis_url", e))?;
    let weak = Arc::downgrade(shared);
    let on = link.clone();
    let cluster = shared.cluster;
    let handler = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
        if push.kind == PushKind::Disconnection {
            gone.notify_one();
        } else if cluster && push.kind == PushKind::SUnsubscribe && dropped_by_redis(&on, &push) {
            // Redis dropped a shard channel we still serve: its slot moved. The connection may
            // take this push for a reply, so it is replaced, and the slots are read again.
            gone.notify_one();
            on.recheck.notify_one();
        } else if let Some(shared) = weak.upgrade() {
            on.note_push();
            on_push(&shared, &on, push);
        }
        Ok(())
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(shared.config.timeout))
        .set_response_timeout(Some(shared.config.timeout))
        .set_push_sender(handler);
    tokio::time::timeout(
        shared.config.timeout * 2,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| unavailable("pub/sub connect", "timed out"))?
    .map_err(|e| unavailable("pub/sub connect", e))
}

/// Whether a `sunsubscribe` push is about a channel the link still serves (so Redis dropped it,
/// rather than confirming an unsubscribe the link sent).
fn dropped_by_redis(link: &Link, push: &PushInfo) -> bool {
    match push.data.first() {
        Some(Value::BulkString(subject)) => std::str::from_utf8(subject)
            .is_ok_and(|subject| link.channels.lock().contains_key(subject)),
        _ => false,
    }
}

/// Handles one push of a link's connection, on the connection's reader.
fn on_push(shared: &Arc<Shared>, link: &Arc<Link>, push: PushInfo) {
    if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
        return;
    }
    let (Some(Value::BulkString(subject)), Some(Value::BulkString(payload))) =
        (push.data.first(), push.data.get(1))
    else {
        return;
    };
    let Some(sink) = shared.sink.get() else {
        return;
    };
    let Ok(subject) = std::str::from_utf8(subject) else {
        return;
    };
    if link.commands.load(Ordering::Relaxed) && subject == shared.keys.commands() {
        if let Some(command) = wire::received_command(payload) {
            sink.command(command);
        }
        return;
    }
    let mut channels = link.channels.lock();
    let Some(tracked) = channels.get_mut(subject) else {
        return;
    };
    match wire::received(payload) {
        Some(Received::Publication {
            offset,
            epoch,
            ts,
            body,
        }) => {
            let epoch: Arc<str> = match &tracked.last {
                Some((_, e)) if **e == *epoch => e.clone(),
                _ => epoch.into(),
            };
            let Some(publication) =
                wire::publication(tracked.channel.clone(), offset, epoch, ts, body)
            else {
                return;
            };
            let publication = Arc::new(publication);
            if let Some(held) = &mut tracked.held {
                held.push(publication);
                return;
            }
            match &tracked.last {
                Some((last, e)) if *e == publication.epoch => {
                    if offset <= *last {
                        return;
                    }
                    if offset > *last + 1 {
                        // Something was missed on a live link: repair this channel.
                        tracked.held = Some(vec![publication]);
                        let subject: Box<str> = subject.into();
                        spawn_repair(shared, link, vec![subject]);
                        return;
                    }
                }
                Some(_) if offset != 1 => {
                    tracked.held = Some(vec![publication]);
                    spawn_repair(shared, link, vec![subject.into()]);
                    return;
                }
                _ => {}
            }
            tracked.last = Some((offset, publication.epoch.clone()));
            sink.deliver(publication);
        }
        Some(Received::Event(kind, user, client)) => {
            let event =
                ChannelEvent::new(kind, tracked.channel.clone(), user.into(), client.into());
            sink.deliver_event(Arc::new(event));
        }
        None => {}
    }
}

/// Repairs `subjects` of `link` in the background, after `delay`.
fn spawn_repair(shared: &Arc<Shared>, link: &Arc<Link>, subjects: Vec<Box<str>>) {
    spawn_repair_after(
        Arc::downgrade(shared),
        link.clone(),
        subjects,
        Duration::ZERO,
    );
}

fn spawn_repair_after(
    shared: Weak<Shared>,
    link: Arc<Link>,
    subjects: Vec<Box<str>>,
    delay: Duration,
) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if let Some(shared) = shared.upgrade() {
            repair(&shared, &link, subjects).await;
        }
    });
}

/// A link's task: connect, resubscribe and repair, then serve requests until the connection
/// drops or stops answering; again, for as long as the engine lives.
async fn run_link(
    shared: Weak<Shared>,
    link: Arc<Link>,
    mut requests: mpsc::Receiver<Request>,
    first: oneshot::Sender<Result<(), HeraldError>>,
) {
    // A link started while the node runs (for a new master) has nobody waiting for its first
    // connection, and keeps trying.
    let mut first = Some(first).filter(|f| !f.is_closed());
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(engine) = shared.upgrade() else {
            return;
        };
        if requests.is_closed() && requests.is_empty() {
            // The link no longer serves any partition.
            return;
        }
        let gone = Arc::new(Notify::new());
        let connection = match connect(&engine, &link, gone.clone()).await {
            Ok(c) => c,
            Err(e) => {
                if let Some(first) = first.take() {
                    let _ = first.send(Err(e));
                    return;
                }
                tracing::warn!(link = link.index, error = %e, "redis pub/sub link down");
                drop(engine);
                // A master that cannot be reached may have failed over.
                link.recheck.notify_one();
                // Refuse what queued meanwhile rather than keep it waiting.
                while let Ok(request) = requests.try_recv() {
                    fn reconnecting<T>() -> Result<T, HeraldError> {
                        Err(HeraldError::unavailable(
                            "redis: the pub/sub link is reconnecting",
                        ))
                    }
                    match request {
                        Request::Subscribe(_, done) => {
                            let _ = done.send(reconnecting());
                        }
                        Request::Count(_, done) => {
                            let _ = done.send(reconnecting());
                        }
                        Request::Unsubscribe(_) | Request::Adopt(_) => {}
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let mut connection = connection;
        if let Err(e) = restore(&engine, &link, &mut connection).await {
            tracing::warn!(link = link.index, error = %e, "redis pub/sub resubscribe failed");
            if let Some(first) = first.take() {
                let _ = first.send(Err(e));
                return;
            }
            // In a cluster, a slot may have moved away (MOVED): look before trying again.
            link.recheck.notify_one();
            drop(engine);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        }
        link.up.store(true, Ordering::Relaxed);
        if let Some(first) = first.take() {
            let _ = first.send(Ok(()));
        } else {
            engine.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(link = link.index, "redis pub/sub link back");
        }
        drop(engine);
        let ended = serve(&shared, &link, &mut connection, &mut requests, &gone).await;
        link.up.store(false, Ordering::Relaxed);
        match ended {
            Ended::Closed => return,
            Ended::Lost(why) => {
                tracing::warn!(link = link.index, why, "redis pub/sub link lost");
                // From now on, publications of every channel here wait for the repair.
                for tracked in link.channels.lock().values_mut() {
                    tracked.held.get_or_insert_with(Vec::new);
                }
            }
        }
    }
}

enum Ended {
    /// The engine is gone.
    Closed,
    /// The connection dropped or stopped answering.
    Lost(&'static str),
}

/// Serves subscribe and unsubscribe requests on a connected link and pings it when idle.
async fn serve(
    shared: &Weak<Shared>,
    link: &Arc<Link>,
    connection: &mut MultiplexedConnection,
    requests: &mut mpsc::Receiver<Request>,
    gone: &Notify,
) -> Ended {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gone.notified() => return Ended::Lost("connection closed"),
            _ = ping.tick() => {
                let Some(engine) = shared.upgrade() else { return Ended::Closed };
                let timeout = engine.config.timeout;
                drop(engine);
                let pong = tokio::time::timeout(
                    timeout,
                    redis::cmd("PING").query_async::<Value>(connection),
                )
                .await;
                // A ping stuck behind a backlog of pushes is late, not lost.
                if !matches!(pong, Ok(Ok(_))) && !link.pushed_within(timeout) {
                    return Ended::Lost("ping unanswered");
                }
            }
            request = requests.recv() => {
                let Some(request) = request else { return Ended::Closed };
                let mut batch = vec![request];
                while batch.len() < BATCH {
                    match requests.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let Some(engine) = shared.upgrade() else { return Ended::Closed };
                if let Err(e) = run_batch(&engine, link, connection, batch).await {
                    tracing::warn!(link = link.index, error = %e, "redis pub/sub request failed");
                    link.recheck.notify_one();
                    // Late behind a backlog of pushes: those subscribes failed, the link lives.
                    if link.pushed_within(engine.config.timeout) {
                        continue;
                    }
                    return Ended::Lost("request failed");
                }
            }
        }
    }
}

/// Sends a batch of requests, in order, as one pipeline; then reads the starting point of each
/// newly subscribed channel on the same connection.
async fn run_batch(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    connection: &mut MultiplexedConnection,
    batch: Vec<Request>,
) -> Result<(), HeraldError> {
    let subscribe = if shared.cluster {
        "SSUBSCRIBE"
    } else {
        "SUBSCRIBE"
    };
    let unsubscribe = if shared.cluster {
        "SUNSUBSCRIBE"
    } else {
        "UNSUBSCRIBE"
    };
    let mut pipe = redis::pipe();
    let mut waiting = Vec::new();
    let mut adopted = Vec::new();
    for request in &batch {
        match request {
            Request::Subscribe(subject, _) => {
                pipe.cmd(subscribe).arg(&**subject).ignore();
            }
            Request::Unsubscribe(subjects) => {
                for subject in subjects {
                    pipe.cmd(unsubscribe).arg(&**subject).ignore();
                }
            }
            Request::Adopt(subjects) => {
                if link.commands.load(Ordering::Relaxed) {
                    pipe.cmd("SUBSCRIBE").arg(shared.keys.commands()).ignore();
                }
                for subject in subjects {
                    pipe.cmd(subscribe).arg(&**subject).ignore();
                }
            }
            Request::Count(..) => {}
        }
    }
    let result = if pipe.is_empty() {
        // Only counts were asked.
        Ok(())
    } else {
        let sent =
            tokio::time::timeout(shared.config.timeout, pipe.query_async::<()>(connection)).await;
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable("subscribe", e)),
            Err(_) => Err(unavailable("subscribe", "timed out")),
        }
    };
    let mut confirmations = Vec::new();
    let mut counts = Vec::new();
    for request in batch {
        match request {
            Request::Subscribe(subject, done) => {
                waiting.push(subject);
                confirmations.push(done);
            }
            Request::Adopt(subjects) => adopted.extend(subjects),
            Request::Unsubscribe(_) => {}
            Request::Count(subject, done) => counts.push((subject, done)),
        }
    }
    // A subscribe is confirmed only once its starting point is known: were the connection to
    // drop before, a channel without one could not be repaired.
    let result = match result {
        Ok(()) => starting_points(shared, link, connection, &waiting).await,
        Err(e) => Err(e),
    };
    for done in confirmations {
        let _ = done.send(result.clone());
    }
    if !counts.is_empty() {
        // After the pipeline, so that Redis has taken every change of this node queued before.
        let counted = match &result {
            Ok(()) => {
                let subjects: Vec<&str> = counts.iter().map(|(subject, _)| &**subject).collect();
                count_subscribers(shared, connection, &subjects).await
            }
            Err(e) => Err(e.clone()),
        };
        for (subject, done) in counts {
            let answer = match &counted {
                Ok(found) => Ok(found.get(&*subject).is_some_and(|n| *n > 0)),
                Err(e) => Err(e.clone()),
            };
            let _ = done.send(answer);
        }
    }
    if result.is_ok() && !adopted.is_empty() {
        spawn_repair(shared, link, adopted);
    }
    result
}

/// `PUBSUB NUMSUB` (`SHARDNUMSUB` in a Redis Cluster) of the subjects asked about, on the link's
/// own connection: subject → subscribed connections.
async fn count_subscribers(
    shared: &Shared,
    connection: &mut MultiplexedConnection,
    subjects: &[&str],
) -> Result<HashMap<String, i64>, HeraldError> {
    let mut command = redis::cmd("PUBSUB");
    command.arg(if shared.cluster {
        "SHARDNUMSUB"
    } else {
        "NUMSUB"
    });
    for subject in subjects {
        command.arg(*subject);
    }
    let reply = tokio::time::timeout(
        shared.config.timeout,
        command.query_async::<Value>(connection),
    )
    .await
    .map_err(|_| unavailable("subscriber count", "timed out"))?
    .map_err(|e| unavailable("subscriber count", e))?;
    // A flat array of subject and count (RESP2), or a map (RESP3).
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Array(items) => {
            let mut items = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(subject), Some(count)) = (items.next(), items.next()) {
                pairs.push((subject, count));
            }
            pairs
        }
        Value::Map(pairs) => pairs,
        other => return Err(unavailable("subscriber count", format!("{other:?}"))),
    };
    Ok(pairs
        .into_iter()
        .filter_map(|(subject, count)| {
            let subject = redis::from_redis_value::<String>(subject).ok()?;
            let count = redis::from_redis_value::<i64>(count).ok()?;
            Some((subject, count))
        })
        .collect())
}

/// Reads the last offset of each of `subjects` on the link's own connection and makes it the
/// channel's starting point where it has none (see the module docs for why this is exact).
async fn starting_points(
    shared: &Shared,
    link: &Link,
    connection: &mut MultiplexedConnection,
    subjects: &[Box<str>],
) -> Result<(), HeraldError> {
    for chunk in subjects.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for subject in chunk {
            let channel = shared.keys.channel_of_subject(subject).unwrap_or_default();
            let name = ChannelName::parse(channel).map_err(|e| unavailable("subject", e))?;
            let keys = shared.keys.channel(&name);
            pipe.cmd("HMGET").arg(keys.stream).arg("e").arg("o");
        }
        let positions: Vec<(Option<String>, Option<u64>)> =
            tokio::time::timeout(shared.config.timeout, pipe.query_async(connection))
                .await
                .map_err(|_| unavailable("starting points", "timed out"))?
                .map_err(|e| unavailable("starting points", e))?;
        let mut channels = link.channels.lock();
        for (subject, position) in chunk.iter().zip(positions) {
            let Some(tracked) = channels.get_mut(&**subject) else {
                continue;
            };
            let (Some(epoch), Some(offset)) = position else {
                // No stream yet: everything from its first publication is to come, in whatever
                // epoch it gets (an empty epoch stands for that).
                tracked.last.get_or_insert_with(|| (0, Arc::from("")));
                continue;
            };
            match &tracked.last {
                None => tracked.last = Some((offset, epoch.into())),
                Some((last, e)) if **e == *epoch && *last < offset => {
                    tracked.last = Some((offset, e.clone()));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// After a (re)connect: subscribes every channel the link serves, then repairs each one's gap.
async fn restore(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    connection: &mut MultiplexedConnection,
) -> Result<(), HeraldError> {
    if link.commands.load(Ordering::Relaxed) {
        tokio::time::timeout(
            shared.config.timeout,
            redis::cmd("SUBSCRIBE")
                .arg(shared.keys.commands())
                .query_async::<()>(connection),
        )
        .await
        .map_err(|_| unavailable("subscribe", "timed out"))?
        .map_err(|e| unavailable("subscribe", e))?;
    }
    let subjects: Vec<Box<str>> = link.channels.lock().keys().cloned().collect();
    if subjects.is_empty() {
        return Ok(());
    }
    let subscribe = if shared.cluster {
        "SSUBSCRIBE"
    } else {
        "SUBSCRIBE"
    };
    for chunk in subjects.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for subject in chunk {
            pipe.cmd(subscribe).arg(&**subject).ignore();
        }
        tokio::time::timeout(shared.config.timeout, pipe.query_async::<()>(connection))
            .await
            .map_err(|_| unavailable("resubscribe", "timed out"))?
            .map_err(|e| unavailable("resubscribe", e))?;
    }
    tracing::debug!(link = link.index, channels = subjects.len(), "resubscribed");
    spawn_repair(shared, link, subjects);
    Ok(())
}

/// Repairs the gap of each of `subjects`: reads what it missed after the last offset passed on,
/// passes that on and then what was held, or resets the channel where history cannot say.
async fn repair(shared: &Arc<Shared>, link: &Arc<Link>, subjects: Vec<Box<str>>) {
    for chunk in subjects.chunks(BATCH) {
        let reads = chunk.iter().filter_map(|subject| {
            let (channel, since) = {
                let mut channels = link.channels.lock();
                let tracked = channels.get_mut(&**subject)?;
                tracked.held.get_or_insert_with(Vec::new);
                (tracked.channel.clone(), tracked.last.clone())
            };
            Some(async move {
                let keys = shared.keys.channel(&channel);
                let query = match &since {
                    Some((offset, epoch)) => HistoryQuery {
                        since: Some(StreamPosition {
                            offset: *offset,
                            epoch: epoch.to_string(),
                        }),
                        limit: None,
                    },
                    None => HistoryQuery::position(),
                };
                let page = shared
                    .read_history(&channel, &keys, Duration::ZERO, &query, true)
                    .await;
                (subject, since.is_some(), page)
            })
        });
        // Read together: each is a round trip, and the connection pipelines them.
        let pages = futures_util::future::join_all(reads).await;
        let mut failed = Vec::new();
        for (subject, had_start, page) in pages {
            match page {
                Ok(page) => finish_repair(shared, link, subject, had_start, page),
                Err(e) => {
                    tracing::warn!(%subject, error = %e, "gap repair failed; retrying");
                    failed.push(subject.clone());
                }
            }
        }
        if !failed.is_empty() {
            let again = Duration::from_secs(1);
            spawn_repair_after(Arc::downgrade(shared), link.clone(), failed, again);
        }
    }
}

/// Passes on what a repair read found and what was held meanwhile, under the link's lock so that
/// nothing live overtakes it.
fn finish_repair(
    shared: &Shared,
    link: &Link,
    subject: &str,
    had_start: bool,
    page: herald_core::engine::HistoryPage,
) {
    let Some(sink) = shared.sink.get() else {
        return;
    };
    let mut channels = link.channels.lock();
    let Some(tracked) = channels.get_mut(subject) else {
        return;
    };
    let held = tracked.held.take().unwrap_or_default();
    let epoch: Arc<str> = page.position.epoch.as_str().into();
    let overflowed = held.len() >= MAX_HELD;
    // The held publications may start right after the last one passed on: then nothing was
    // missed, whatever history keeps (a channel without history included).
    let held_follows = match (&tracked.last, held.first()) {
        (Some((offset, e)), Some(first)) => {
            (e.is_empty() || *e == first.epoch) && first.offset == offset + 1
        }
        _ => false,
    };
    if had_start && held_follows && !overflowed {
        let (offset, e) = (held[0].offset - 1, held[0].epoch.clone());
        tracked.last = Some((offset, e));
    } else if had_start && (!page.complete || overflowed) {
        // Subscribers are told where the stream is, just before the first held publication
        // of its epoch when there is one, so that the held ones still reach them.
        let mut position = page.position.clone();
        if let Some(first) = held.iter().find(|p| *p.epoch == *position.epoch) {
            position.offset = position.offset.min(first.offset - 1);
        }
        shared.counters.resets.fetch_add(1, Ordering::Relaxed);
        tracing::info!(channel = %tracked.channel, "gap not in history: subscribers reset");
        sink.reset(&tracked.channel, position.clone());
        tracked.last = Some((position.offset, epoch.clone()));
    } else if had_start {
        for publication in page.publications {
            let newer = tracked
                .last
                .as_ref()
                .is_none_or(|(o, _)| publication.offset > *o);
            if newer {
                tracked.last = Some((publication.offset, epoch.clone()));
                shared.counters.repaired.fetch_add(1, Ordering::Relaxed);
                sink.deliver(publication);
            }
        }
        // Caught up to the stream's position (and, for a channel that had no stream yet when
        // it was subscribed, now knows its epoch).
        match &tracked.last {
            Some((o, e)) if *e == epoch && *o >= page.position.offset => {}
            _ => tracked.last = Some((page.position.offset, epoch.clone())),
        }
    } else if tracked.last.is_none() {
        tracked.last = Some((page.position.offset, epoch.clone()));
    }
    for publication in held {
        let newer = match &tracked.last {
            Some((o, e)) => *e == publication.epoch && publication.offset > *o,
            None => true,
        };
        // Without a starting point, whatever was held came live after the subscribe: the hub
        // wants all of it (its subscribers' own reads decide what each of them still needs).
        if newer || !had_start {
            tracked.last = Some((publication.offset, publication.epoch.clone()));
            sink.deliver(publication);
        }
    }
}

/// In a Redis Cluster: one link per master that owns a partition's slot, and each partition's
/// link, from `CLUSTER SLOTS`.
async fn cluster_layout(shared: &Shared) -> Result<(Vec<Option<String>>, Vec<usize>), HeraldError> {
    let ranges: Vec<Value> = shared
        .run("cluster slots", |mut c| async move {
            redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await
        })
        .await?;
    // Each range: [first slot, last slot, [host, port, id, ...] of its master, replicas...].
    let mut owners: Vec<(u16, u16, String)> = Vec::new();
    for range in &ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let host = match master.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            continue;
        };
        owners.push((*first as u16, *last as u16, format!("{host}:{port}")));
    }
    let mut addresses: Vec<Option<String>> = Vec::new();
    let mut partition_links = Vec::with_capacity(PARTITIONS);
    for partition in 0..PARTITIONS {
        let slot = slot(shared.keys.tag(partition).as_bytes());
        let owner = owners
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, address)| address.clone())
            .ok_or_else(|| unavailable("cluster slots", format!("slot {slot} has no master")))?;
        let index = match addresses.iter().position(|a| a.as_deref() == Some(&owner)) {
            Some(index) => index,
            None => {
                addresses.push(Some(owner));
                addresses.len() - 1
            }
        };
        partition_links.push(index);
    }
    Ok((addresses, partition_links))
}
