//! The `memory` engine: one node, everything in this process.
//!
//! Each channel that has been published to or subscribed to has a stream: an epoch chosen when
//! the stream is created, the last offset, and the retained history. Publishing takes that
//! stream's own lock, assigns the offset, appends to history and hands the publication to the hub
//! while still holding it, so deliveries of one channel leave in offset order and a history read
//! (which takes the same lock) sees every publication that was not delivered after it. The lock is
//! a plain mutex held only across synchronous work (the hub's fan-out only queues); it is never
//! held across an `.await`.
//!
//! With a durable [`StreamStore`] (`MemoryEngine::with_store`), a publish takes its offset under
//! the stream's lock as above, but is appended to history and delivered only once the store has
//! written it: a writer task writes everything waiting in one batch (one disk sync for many
//! publications), then, in the order the offsets were given, appends each to history and delivers
//! it under its stream's lock, and answers its publisher. Reads see only what is written, so a
//! client never holds a position that a restart could forget.
//!
//! History is trimmed to the namespace's size on every append and to its TTL on every append and
//! read and by a periodic sweep. A stream that has no subscriber on this node and has seen no
//! publication for its TTL is dropped by the sweep, and a later publication starts a new epoch;
//! that keeps memory bounded by the channels in use.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use super::store::{StoreWrite, StreamStore};
use super::{
    new_epoch, ClusterCommand, Engine, HistoryPage, HistoryPolicy, HistoryQuery, IdempotencyKey,
    NodeFigures, NodeSink, PublishRequest,
};
use crate::channel::ChannelName;
use crate::error::HeraldError;
use crate::presence::{ChannelEvent, Presence, PresenceChange, PresenceCounts, PresenceMember};
use crate::publication::{now_millis, Publication, StreamPosition};

/// Idempotency keys remembered per channel; past this the oldest are forgotten early.
pub const MAX_IDEMPOTENCY_KEYS: usize = 10_000;

/// Publications waiting for the durable store; past this, publishing is refused (`unavailable`)
/// until the store catches up.
pub const MAX_PENDING_WRITES: usize = 65_536;

/// One channel's stream.
struct Stream {
    epoch: Arc<str>,
    /// The offset of the last publication in history (written, with a durable store); 0 before
    /// the first. Reads report this.
    last_offset: u64,
    /// The offset the last publication was given; ahead of `last_offset` while publications wait
    /// for the durable store.
    assigned: u64,
    /// The last publication, or when this node's last subscriber left.
    last_active: Instant,
    policy: HistoryPolicy,
    /// Retained publications, oldest first; their offsets end at `last_offset` with no gap.
    history: Retained,
    /// Idempotency keys seen within their window (allocated on first use).
    keys: Option<Box<RecentKeys>>,
    /// Whether this node has subscribers for the channel (the stream is then never swept).
    subscribed: bool,
    /// Set by the sweep when it removes the stream; a publish that finds it set looks again.
    dead: bool,
}

/// A stream's retained publications. Boxed, and only while it holds any: most streams (every
/// connection's personal channel) keep nothing most of the time, and an empty queue inline would
/// cost each of them 24 bytes more.
#[derive(Default)]
#[expect(
    clippy::box_collection,
    reason = "the box is the point: 8 bytes inline instead of an empty deque's 32"
)]
struct Retained(Option<Box<VecDeque<Arc<Publication>>>>);

impl Retained {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    fn front(&self) -> Option<&Arc<Publication>> {
        self.0.as_ref()?.front()
    }

    fn push_back(&mut self, publication: Arc<Publication>) {
        self.0.get_or_insert_default().push_back(publication);
    }

    fn pop_front(&mut self) -> Option<Arc<Publication>> {
        self.0.as_mut()?.pop_front()
    }

    fn range(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = &Arc<Publication>> + '_ {
        self.0.iter().flat_map(move |q| q.range(range.clone()))
    }

    /// Gives the memory back once nothing is kept.
    fn release_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(|q| q.is_empty()) {
            self.0 = None;
        }
    }
}

#[derive(Default)]
struct RecentKeys {
    by_key: HashMap<Box<str>, u64>,
    /// In arrival order: when each key stops counting, and the key.
    expiry: VecDeque<(Instant, Box<str>)>,
}

impl RecentKeys {
    fn expire(&mut self, now: Instant) {
        while let Some((until, _)) = self.expiry.front() {
            if *until > now && self.expiry.len() <= MAX_IDEMPOTENCY_KEYS {
                break;
            }
            if let Some((_, key)) = self.expiry.pop_front() {
                self.by_key.remove(&key);
            }
        }
    }
}

impl Stream {
    fn new(policy: HistoryPolicy) -> Stream {
        Stream {
            epoch: new_epoch().into(),
            last_offset: 0,
            assigned: 0,
            last_active: Instant::now(),
            policy,
            history: Retained::default(),
            keys: None,
            subscribed: false,
            dead: false,
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.last_offset,
            epoch: self.epoch.to_string(),
        }
    }

    /// Drops what the policy no longer keeps: past the size, or older than the TTL.
    fn trim(&mut self, now_ms: u64) {
        while self.history.len() > self.policy.size {
            self.history.pop_front();
        }
        let ttl_ms = self.policy.ttl.as_millis() as u64;
        while self
            .history
            .front()
            .is_some_and(|p| now_ms.saturating_sub(p.ts) >= ttl_ms)
        {
            self.history.pop_front();
        }
        self.history.release_if_empty();
    }

    /// The offset an earlier publish with this key got, if it is within its window.
    fn published_with(&mut self, key: &IdempotencyKey, now: Instant) -> Option<u64> {
        let keys = self.keys.as_mut()?;
        keys.expire(now);
        keys.by_key.get(&key.key).copied()
    }

    fn remember(&mut self, key: IdempotencyKey, offset: u64, now: Instant) {
        let keys = self.keys.get_or_insert_with(Default::default);
        keys.expiry.push_back((now + key.window, key.key.clone()));
        keys.by_key.insert(key.key, offset);
        keys.expire(now);
    }

    /// Gives a publication the stream's next offset (and remembers its idempotency key). It is
    /// not in history until [`Stream::commit`].
    fn assign(&mut self, request: PublishRequest) -> Arc<Publication> {
        let now = Instant::now();
        self.assigned += 1;
        self.last_active = now;
        self.policy = request.history;
        let publication = Arc::new(Publication::new(
            request.channel,
            request.event,
            request.data,
            (self.assigned, self.epoch.clone()),
            request.from,
        ));
        if let Some(key) = request.idempotency {
            self.remember(key, self.assigned, now);
        }
        publication
    }

    /// Appends an assigned publication to history; the caller delivers it, still holding the lock.
    fn commit(&mut self, publication: &Arc<Publication>) {
        self.last_offset = publication.offset;
        if self.policy.size > 0 {
            self.history.push_back(publication.clone());
        }
        self.trim(publication.ts);
    }

    /// Reads history as `query` asks.
    fn read(&mut self, query: &HistoryQuery) -> HistoryPage {
        self.trim(now_millis());
        let position = self.position();
        let first_kept = self.last_offset + 1 - self.history.len() as u64;
        let (skip, complete) = match &query.since {
            None => (self.history.len(), true),
            Some(since) => {
                let complete = since.epoch.as_str() == &*self.epoch
                    && since.offset <= self.last_offset
                    && since.offset + 1 >= first_kept;
                // Publications after `since` that are still kept.
                let after = since.offset.saturating_add(1).max(first_kept);
                let skip = (after - first_kept).min(self.history.len() as u64) as usize;
                if complete {
                    (skip, true)
                } else {
                    (self.history.len(), false)
                }
            }
        };
        let publications = match (&query.since, query.limit) {
            // The newest `limit`.
            (None, limit) => {
                let n = limit.unwrap_or(self.history.len()).min(self.history.len());
                self.history
                    .range(self.history.len() - n..self.history.len())
                    .cloned()
                    .collect()
            }
            (Some(_), limit) => {
                let end = limit.map_or(self.history.len(), |l| {
                    skip.saturating_add(l).min(self.history.len())
                });
                self.history.range(skip..end).cloned().collect()
            }
        };
        HistoryPage {
            publications,
            position,
            complete,
        }
    }
}

/// The in-process engine. Cheap to share (`Arc`).
pub struct MemoryEngine {
    /// The hub, once attached.
    sink: OnceLock<Arc<dyn NodeSink>>,
    /// Channel streams. The outer lock is held only to find or create a stream.
    streams: Mutex<HashMap<ChannelName, Arc<Mutex<Stream>>>>,
    /// The durable store and its write queue, when history is kept on disk.
    durable: Option<Durable>,
    /// Presence of the channels that have any, each with its counts kept up to date.
    presence: Mutex<HashMap<ChannelName, ChannelPresence>>,
    /// This node's figures, as last announced: the whole node registry of a single node.
    announced: Mutex<Option<NodeFigures>>,
    /// The keys of [`Engine::mark_reported`] last reported present (absent ones are removed).
    reported: Mutex<HashSet<Box<str>>>,
}

/// One channel's presence: its connections, and how many each user has.
#[derive(Default)]
struct ChannelPresence {
    members: HashMap<Arc<str>, PresenceMember>,
    users: HashMap<Arc<str>, u32>,
}

impl ChannelPresence {
    fn counts(&self) -> PresenceCounts {
        PresenceCounts {
            users: self.users.len(),
            connections: self.members.len(),
        }
    }
}

/// A durable store with the queue of what waits to be written.
struct Durable {
    store: Arc<dyn StreamStore>,
    queue: Mutex<VecDeque<Pending>>,
    /// Wakes the writer task.
    queued: Notify,
    /// Set when a write failed: the store can no longer be trusted to hold what it is given, so
    /// publishing is refused from then on (a restart reloads what was written).
    failed: OnceLock<String>,
}

/// A write waiting for the store, with what to do once it is written.
struct Pending {
    write: StoreWrite,
    commit: Option<Commit>,
}

/// A publication to append and deliver once written, and its waiting publisher.
struct Commit {
    stream: Arc<Mutex<Stream>>,
    publication: Arc<Publication>,
    done: oneshot::Sender<()>,
}

impl Durable {
    /// Refuses a publish when the store failed or is too far behind.
    fn admit(&self) -> Result<(), HeraldError> {
        if let Some(reason) = self.failed.get() {
            return Err(HeraldError::unavailable(format!(
                "the history store failed ({reason}); restart the server"
            )));
        }
        if self.queue.lock().len() >= MAX_PENDING_WRITES {
            return Err(HeraldError::unavailable(
                "the history store is behind; retry shortly",
            ));
        }
        Ok(())
    }

    fn enqueue(&self, pending: Pending) {
        self.queue.lock().push_back(pending);
        self.queued.notify_one();
    }
}

/// What a publish found under its stream's lock.
enum Published {
    /// Done: delivered, or a repeat of an earlier publish.
    Done(StreamPosition),
    /// Waiting for the durable store to write it.
    Writing(oneshot::Receiver<()>, StreamPosition),
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    /// An engine that keeps everything in memory (nothing survives a restart).
    pub fn new() -> Self {
        MemoryEngine {
            sink: OnceLock::new(),
            streams: Mutex::new(HashMap::new()),
            durable: None,
            presence: Mutex::default(),
            announced: Mutex::default(),
            reported: Mutex::default(),
        }
    }

    /// An engine whose streams are kept in `store`: everything stored is loaded now (history older
    /// than its namespace's TTL is left out), and from then on every change is written there
    /// before it is visible. `policy_of` gives each channel's history policy. Call
    /// [`MemoryEngine::spawn_writer`] once a runtime is running.
    pub fn with_store(
        store: Arc<dyn StreamStore>,
        policy_of: impl Fn(&ChannelName) -> Option<HistoryPolicy>,
    ) -> Result<MemoryEngine, HeraldError> {
        let now_ms = now_millis();
        let now = Instant::now();
        let mut streams = HashMap::new();
        for stored in store.load()? {
            // A channel whose namespace is no longer configured is not served; it is dropped from
            // the store by the first sweep.
            let policy = policy_of(&stored.channel).unwrap_or(HistoryPolicy {
                size: 0,
                ttl: Duration::ZERO,
            });
            let epoch: Arc<str> = stored.epoch.into();
            let mut stream = Stream::new(policy);
            stream.epoch = epoch.clone();
            stream.last_offset = stored.last_offset;
            stream.assigned = stored.last_offset;
            for p in stored.publications {
                if let Some((key, until_ms)) = p.idempotency {
                    if until_ms > now_ms {
                        let window = Duration::from_millis(until_ms - now_ms);
                        stream.remember(IdempotencyKey { key, window }, p.offset, now);
                    }
                }
                let publication = Publication::restored(
                    stored.channel.clone(),
                    p.event,
                    p.data,
                    (p.offset, epoch.clone()),
                    p.from,
                    p.ts,
                );
                if policy.size > 0 {
                    stream.history.push_back(Arc::new(publication));
                }
            }
            stream.trim(now_ms);
            streams.insert(stored.channel, Arc::new(Mutex::new(stream)));
        }
        Ok(MemoryEngine {
            sink: OnceLock::new(),
            streams: Mutex::new(streams),
            durable: Some(Durable {
                store,
                queue: Mutex::new(VecDeque::new()),
                queued: Notify::new(),
                failed: OnceLock::new(),
            }),
            presence: Mutex::default(),
            announced: Mutex::default(),
            reported: Mutex::default(),
        })
    }

    /// Starts the task that writes to the durable store (if there is one) until the engine is
    /// dropped.
    pub fn spawn_writer(self: &Arc<Self>) {
        if self.durable.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(engine) = weak.upgrade() else { break };
                let Some(durable) = &engine.durable else {
                    break;
                };
                let batch: Vec<Pending> = durable.queue.lock().drain(..).collect();
                if batch.is_empty() {
                    // Waits at most a second holding the engine, so that dropping it ends the task.
                    let _ = tokio::time::timeout(Duration::from_secs(1), durable.queued.notified())
                        .await;
                    continue;
                }
                engine.write_batch(batch).await;
            }
        });
    }

    /// Writes one batch to the store, then appends and delivers its publications in order.
    ///
    /// After a write failed, nothing more is written: a later batch would store offsets after
    /// the lost ones, a gap that readers assume impossible. Its publishers (admitted before the
    /// failure was known) are answered `unavailable`, like those of the failed batch.
    async fn write_batch(&self, batch: Vec<Pending>) {
        let Some(durable) = &self.durable else { return };
        if durable.failed.get().is_some() {
            // Dropping the commits answers their publishers with `unavailable`.
            return;
        }
        let (writes, commits): (Vec<StoreWrite>, Vec<Option<Commit>>) =
            batch.into_iter().map(|p| (p.write, p.commit)).unzip();
        let store = durable.store.clone();
        let written = tokio::task::spawn_blocking(move || store.write(&writes)).await;
        let failure = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.message),
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = failure {
            tracing::error!(error = %reason, "history store write failed; publishing is refused from now on");
            let _ = durable.failed.set(reason);
            // Dropping the commits answers their publishers with `unavailable`.
            return;
        }
        let sink = self.sink.get();
        for commit in commits.into_iter().flatten() {
            let mut stream = commit.stream.lock();
            stream.commit(&commit.publication);
            if let Some(sink) = sink {
                sink.deliver(commit.publication);
            }
            drop(stream);
            let _ = commit.done.send(());
        }
    }

    /// Starts the sweep that trims history and drops streams idle past their TTL, every `every`,
    /// until the engine is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(engine) = weak.upgrade() else { break };
                engine.sweep(Instant::now());
            }
        });
    }

    /// Trims every stream's history to its TTL and drops every stream that has no subscriber here
    /// and whose last publication is older than its TTL. A stream that is busy (a publish holds
    /// it) is kept until the next sweep, so the map lock never waits on one.
    pub fn sweep(&self, now: Instant) {
        let now_ms = now_millis();
        let mut dropped = Vec::new();
        self.streams
            .lock()
            .retain(|channel, stream| match stream.try_lock() {
                Some(mut s) => {
                    s.trim(now_ms);
                    let idle = now.duration_since(s.last_active) >= s.policy.ttl;
                    if !s.subscribed && idle && s.assigned == s.last_offset {
                        s.dead = true;
                        dropped.push(channel.clone());
                        false
                    } else {
                        true
                    }
                }
                None => true,
            });
        if let Some(durable) = &self.durable {
            for channel in dropped {
                durable.enqueue(Pending {
                    write: StoreWrite::Dropped { channel },
                    commit: None,
                });
            }
        }
    }

    /// How many channel streams are held.
    pub fn stream_count(&self) -> usize {
        self.streams.lock().len()
    }

    /// Runs `f` on the channel's stream, creating it (with `policy`) if there is none.
    fn with_stream<T>(
        &self,
        channel: &ChannelName,
        policy: HistoryPolicy,
        f: impl FnOnce(&Arc<Mutex<Stream>>, &mut Stream) -> T,
    ) -> T {
        // A stream the sweep removed between the look-up and the lock is dead: look again (the
        // sweep only removes streams nobody holds, and a new one is never dead).
        loop {
            let stream = self
                .streams
                .lock()
                .entry(channel.clone())
                .or_insert_with(|| {
                    let stream = Stream::new(policy);
                    if let Some(durable) = &self.durable {
                        durable.enqueue(Pending {
                            write: StoreWrite::Created {
                                channel: channel.clone(),
                                epoch: stream.epoch.clone(),
                            },
                            commit: None,
                        });
                    }
                    Arc::new(Mutex::new(stream))
                })
                .clone();
            let mut guard = stream.lock();
            if !guard.dead {
                return f(&stream, &mut guard);
            }
        }
    }

    fn sink(&self) -> Result<&Arc<dyn NodeSink>, HeraldError> {
        self.sink
            .get()
            .ok_or_else(|| HeraldError::unavailable("engine is not attached to a hub"))
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn attach(&self, sink: Arc<dyn NodeSink>) {
        // Attaching twice keeps the first hub; a second hub on one engine is a programming error
        // that the hub constructor prevents.
        let _ = self.sink.set(sink);
    }

    async fn publish(&self, request: PublishRequest) -> Result<StreamPosition, HeraldError> {
        let sink = self.sink()?;
        let channel = request.channel.clone();
        let published = self.with_stream(&channel, request.history, |handle, stream| {
            // A store that failed answers nothing, repeats included: their first publish may be
            // among the lost.
            if let Some(durable) = &self.durable {
                durable.admit()?;
            }
            if let Some(key) = &request.idempotency {
                if let Some(offset) = stream.published_with(key, Instant::now()) {
                    if offset > stream.last_offset {
                        // Assigned, not yet written: the first publish has not been answered.
                        return Err(HeraldError::unavailable(
                            "a publish with this idempotency key is still being written; retry",
                        ));
                    }
                    return Ok(Published::Done(StreamPosition {
                        offset,
                        epoch: stream.epoch.to_string(),
                    }));
                }
            }
            let Some(durable) = &self.durable else {
                let publication = stream.assign(request);
                stream.commit(&publication);
                // Delivered under the stream's lock so that deliveries leave in offset order.
                sink.deliver(publication);
                return Ok(Published::Done(stream.position()));
            };
            let idempotency = request
                .idempotency
                .as_ref()
                .map(|k| (k.key.clone(), now_millis() + k.window.as_millis() as u64));
            let publication = stream.assign(request);
            let position = StreamPosition {
                offset: publication.offset,
                epoch: stream.epoch.to_string(),
            };
            let first_kept = (publication.offset + 1)
                .saturating_sub(stream.policy.size as u64)
                .max(1);
            let (done, written) = oneshot::channel();
            // Queued under the stream's lock, so the writer sees each channel's publications in
            // offset order.
            durable.enqueue(Pending {
                write: StoreWrite::Appended {
                    publication: publication.clone(),
                    first_kept,
                    idempotency,
                },
                commit: Some(Commit {
                    stream: handle.clone(),
                    publication,
                    done,
                }),
            });
            Ok(Published::Writing(written, position))
        })?;
        match published {
            Published::Done(position) => Ok(position),
            Published::Writing(written, position) => {
                written.await.map(|()| position).map_err(|_| {
                    HeraldError::unavailable("the history store could not write the publication")
                })
            }
        }
    }

    async fn history(
        &self,
        channel: &ChannelName,
        policy: HistoryPolicy,
        query: HistoryQuery,
    ) -> Result<HistoryPage, HeraldError> {
        Ok(self.with_stream(channel, policy, |_, stream| {
            stream.policy = policy;
            stream.read(&query)
        }))
    }

    async fn node_subscribe(&self, channel: &ChannelName) -> Result<(), HeraldError> {
        // Created with an empty policy if new; the subscribe's history read that follows sets it.
        let policy = HistoryPolicy {
            size: 0,
            ttl: Duration::ZERO,
        };
        self.with_stream(channel, policy, |_, stream| stream.subscribed = true);
        Ok(())
    }

    async fn node_unsubscribe(&self, channel: &ChannelName) -> Result<(), HeraldError> {
        // The map's lock is released before the stream's is taken: the map never waits on a
        // stream.
        let stream = self.streams.lock().get(channel).cloned();
        if let Some(stream) = stream {
            let mut s = stream.lock();
            s.subscribed = false;
            // The stream's TTL counts from now, so that a client that just left can recover.
            s.last_active = Instant::now();
        }
        Ok(())
    }

    async fn presence_join(
        &self,
        channel: &ChannelName,
        member: PresenceMember,
    ) -> Result<PresenceChange, HeraldError> {
        let mut all = self.presence.lock();
        let presence = all.entry(channel.clone()).or_default();
        // A connection already present keeps its entry (and so when it joined).
        let changed = match presence.members.entry(member.client.clone()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(entry) => {
                *presence.users.entry(member.user.clone()).or_default() += 1;
                entry.insert(member);
                true
            }
        };
        Ok(PresenceChange {
            changed,
            counts: presence.counts(),
        })
    }

    async fn presence_leave(
        &self,
        channel: &ChannelName,
        client: &str,
    ) -> Result<PresenceChange, HeraldError> {
        let mut all = self.presence.lock();
        let Some(presence) = all.get_mut(channel) else {
            return Ok(PresenceChange::default());
        };
        let removed = presence.members.remove(client);
        if let Some(member) = &removed {
            if let Some(n) = presence.users.get_mut(&member.user) {
                *n -= 1;
                if *n == 0 {
                    presence.users.remove(&member.user);
                }
            }
        }
        let counts = presence.counts();
        if counts.connections == 0 {
            all.remove(channel);
        }
        Ok(PresenceChange {
            changed: removed.is_some(),
            counts,
        })
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Presence, HeraldError> {
        let all = self.presence.lock();
        let Some(presence) = all.get(channel) else {
            return Ok(Presence::default());
        };
        let counts = presence.counts();
        let mut members: Vec<PresenceMember> = presence.members.values().cloned().collect();
        drop(all);
        members.sort_by(|a, b| (&a.user, &a.client).cmp(&(&b.user, &b.client)));
        Ok(Presence { members, counts })
    }

    async fn presence_counts(&self, channel: &ChannelName) -> Result<PresenceCounts, HeraldError> {
        Ok(self
            .presence
            .lock()
            .get(channel)
            .map(ChannelPresence::counts)
            .unwrap_or_default())
    }

    async fn publish_event(&self, event: ChannelEvent) -> Result<(), HeraldError> {
        self.sink()?.deliver_event(Arc::new(event));
        Ok(())
    }

    async fn broadcast_command(&self, command: ClusterCommand) -> Result<(), HeraldError> {
        self.sink()?.command(command);
        Ok(())
    }

    async fn announce(&self, figures: NodeFigures) -> Result<(), HeraldError> {
        *self.announced.lock() = Some(figures);
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeFigures>, HeraldError> {
        Ok(self.announced.lock().iter().cloned().collect())
    }

    async fn channel_subscribed_anywhere(
        &self,
        channel: &ChannelName,
    ) -> Result<bool, HeraldError> {
        // The map's lock is released before the stream's is taken, as in `node_unsubscribe`.
        let stream = self.streams.lock().get(channel).cloned();
        Ok(stream.is_some_and(|stream| stream.lock().subscribed))
    }

    async fn mark_reported(&self, key: &str, present: bool) -> Result<bool, HeraldError> {
        let mut reported = self.reported.lock();
        Ok(if present {
            reported.insert(key.into())
        } else {
            reported.remove(key)
        })
    }

    async fn ready(&self) -> Result<(), HeraldError> {
        if let Some(reason) = self.durable.as_ref().and_then(|d| d.failed.get()) {
            return Err(HeraldError::unavailable(format!(
                "the history store failed: {reason}"
            )));
        }
        self.sink().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, u64)>>);
    impl NodeSink for Collect {
        fn deliver(&self, p: Arc<Publication>) {
            self.0.lock().push((p.channel.to_string(), p.offset));
        }
        fn deliver_event(&self, _: Arc<ChannelEvent>) {}
        fn command(&self, _: ClusterCommand) {}
        fn reset(&self, _: &ChannelName, _: StreamPosition) {}
    }

    fn policy(size: usize, ttl: Duration) -> HistoryPolicy {
        HistoryPolicy { size, ttl }
    }

    fn request(channel: &str, ttl: Duration) -> PublishRequest {
        PublishRequest {
            channel: ChannelName::parse(channel).expect("channel"),
            event: None,
            data: RawValue::from_string("1".into()).expect("json"),
            from: None,
            history: policy(10, ttl),
            idempotency: None,
        }
    }

    fn attached() -> (MemoryEngine, Arc<Collect>) {
        let engine = MemoryEngine::new();
        let sink = Arc::new(Collect::default());
        engine.attach(sink.clone());
        (engine, sink)
    }

    fn offsets(page: &HistoryPage) -> Vec<u64> {
        page.publications.iter().map(|p| p.offset).collect()
    }

    #[tokio::test]
    async fn offsets_are_gapless_per_channel_and_epochs_change_after_a_sweep() {
        let (engine, sink) = attached();
        let ttl = Duration::from_secs(60);
        let a1 = engine.publish(request("a:1", ttl)).await.expect("publish");
        let a2 = engine.publish(request("a:1", ttl)).await.expect("publish");
        let b1 = engine.publish(request("b:1", ttl)).await.expect("publish");
        assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
        assert_eq!(a1.epoch, a2.epoch);
        assert_eq!(sink.0.lock().len(), 3);

        engine.sweep(Instant::now() + Duration::from_secs(61));
        assert_eq!(engine.stream_count(), 0);
        let a3 = engine.publish(request("a:1", ttl)).await.expect("publish");
        assert_eq!(a3.offset, 1);
        assert_ne!(a3.epoch, a1.epoch);
    }

    #[tokio::test]
    async fn a_subscribed_stream_outlives_its_ttl() {
        let (engine, _) = attached();
        let ch = ChannelName::parse("a:1").expect("channel");
        engine.node_subscribe(&ch).await.expect("subscribe");
        let p = engine
            .publish(request("a:1", Duration::from_secs(1)))
            .await
            .expect("publish");
        engine.sweep(Instant::now() + Duration::from_secs(5));
        assert_eq!(engine.stream_count(), 1);
        engine.node_unsubscribe(&ch).await.expect("unsubscribe");
        engine.sweep(Instant::now() + Duration::from_secs(5));
        assert_eq!(engine.stream_count(), 0);
        let again = engine
            .publish(request("a:1", Duration::from_secs(1)))
            .await
            .expect("publish");
        assert_ne!(again.epoch, p.epoch);
    }

    #[tokio::test]
    async fn history_expires_with_its_ttl() {
        let (engine, _) = attached();
        let ch = ChannelName::parse("a:1").expect("channel");
        let ttl = Duration::from_millis(100);
        engine.publish(request("a:1", ttl)).await.expect("publish");
        tokio::time::sleep(Duration::from_millis(150)).await;
        engine.publish(request("a:1", ttl)).await.expect("publish");
        let page = engine
            .history(&ch, policy(10, ttl), HistoryQuery::default())
            .await
            .expect("read");
        assert_eq!(offsets(&page), [2]);
        tokio::time::sleep(Duration::from_millis(150)).await;
        engine.sweep(Instant::now());
        let page = engine
            .history(&ch, policy(10, ttl), HistoryQuery::default())
            .await
            .expect("read");
        assert!(page.publications.is_empty());
    }
}

#[cfg(test)]
mod durable_tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    use super::*;
    use crate::engine::store::StoredStream;
    use serde_json::value::RawValue;

    /// A store that keeps the offsets it was given, and fails one write when told to, after
    /// waiting for the test's go-ahead (so that the test can publish while that write is on).
    #[derive(Default)]
    struct FailingStore {
        written: Mutex<Vec<u64>>,
        fail_next: AtomicBool,
        /// Told when the failing write has started; then waits for the go-ahead.
        started: Mutex<Option<mpsc::Sender<()>>>,
        go_ahead: Mutex<Option<mpsc::Receiver<()>>>,
    }

    impl StreamStore for FailingStore {
        fn load(&self) -> Result<Vec<StoredStream>, HeraldError> {
            Ok(Vec::new())
        }

        fn write(&self, batch: &[StoreWrite]) -> Result<(), HeraldError> {
            if self.fail_next.swap(false, Ordering::SeqCst) {
                if let Some(started) = self.started.lock().take() {
                    let _ = started.send(());
                }
                let go_ahead = self.go_ahead.lock().take();
                if let Some(go_ahead) = go_ahead {
                    let _ = go_ahead.recv();
                }
                return Err(HeraldError::unavailable("disk full"));
            }
            let mut written = self.written.lock();
            for write in batch {
                if let StoreWrite::Appended { publication, .. } = write {
                    written.push(publication.offset);
                }
            }
            Ok(())
        }
    }

    struct Delivered(Mutex<Vec<u64>>);

    impl NodeSink for Delivered {
        fn deliver(&self, publication: Arc<Publication>) {
            self.0.lock().push(publication.offset);
        }
        fn deliver_event(&self, _: Arc<ChannelEvent>) {}
        fn command(&self, _: ClusterCommand) {}
        fn reset(&self, _: &ChannelName, _: StreamPosition) {}
    }

    fn request() -> PublishRequest {
        PublishRequest {
            channel: ChannelName::parse("chat:1").expect("channel"),
            event: None,
            data: RawValue::from_string("1".into()).expect("json"),
            from: None,
            history: HistoryPolicy {
                size: 10,
                ttl: Duration::from_secs(60),
            },
            idempotency: None,
        }
    }

    /// After a failed write nothing more is written or acknowledged, not even publications that
    /// were admitted while that write was on: the next batch would otherwise store offsets after
    /// the lost ones, a gap that every reader assumes impossible.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_failed_write_nothing_more_is_written_or_acknowledged() {
        let store = Arc::new(FailingStore::default());
        let engine =
            Arc::new(MemoryEngine::with_store(store.clone(), |_| None).expect("empty store loads"));
        let delivered = Arc::new(Delivered(Mutex::default()));
        engine.attach(delivered.clone());
        engine.spawn_writer();
        let first = engine.publish(request()).await.expect("first publish");
        assert_eq!(first.offset, 1);

        let (started_tx, started) = mpsc::channel();
        let (go_ahead, go_ahead_rx) = mpsc::channel();
        *store.started.lock() = Some(started_tx);
        *store.go_ahead.lock() = Some(go_ahead_rx);
        store.fail_next.store(true, Ordering::SeqCst);

        let lost = tokio::spawn({
            let engine = engine.clone();
            async move { engine.publish(request()).await }
        });
        tokio::task::spawn_blocking(move || started.recv())
            .await
            .expect("join")
            .expect("the failing write starts");
        // Admitted while the failing write is on; queued for the next batch.
        let behind = tokio::spawn({
            let engine = engine.clone();
            async move { engine.publish(request()).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        go_ahead.send(()).expect("store waits");

        let lost = lost.await.expect("join");
        assert!(lost.is_err(), "the failed write is not acknowledged");
        let behind = behind.await.expect("join");
        assert!(
            behind.is_err(),
            "a publication behind the failed write is not acknowledged: {behind:?}"
        );
        let after = engine.publish(request()).await;
        assert!(after.is_err(), "publishing is refused until restart");
        assert!(engine.ready().await.is_err());

        // Give a writer that went on the time to write.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            *store.written.lock(),
            [1],
            "nothing written after the failure"
        );
        assert_eq!(
            *delivered.0.lock(),
            [1],
            "nothing delivered after the failure"
        );
        let policy = request().history;
        let channel = request().channel;
        let page = engine
            .history(&channel, policy, HistoryQuery::default())
            .await
            .expect("history");
        assert_eq!(page.position.offset, 1);
        assert_eq!(page.publications.len(), 1);
    }
}

#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use crate::engine::{Engine, MemoryEngine};

    crate::engine_conformance_tests!(async { Arc::new(MemoryEngine::new()) as Arc<dyn Engine> });
}
