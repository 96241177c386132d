//! The `redis` engine: any number of Herald nodes on one Redis (or a Redis Cluster) behave as one
//! server.
//!
//! Redis holds everything the nodes share: each channel's stream (epoch and last offset), its
//! history, idempotency keys, presence, the users' connection counts and the node registry (see
//! [`keys`] for the layout). Each publish is one Lua script that assigns the next offset, appends
//! to history, trims it by size and age, records the idempotency key and publishes on the
//! channel's subject, all in one atomic step: two nodes publishing to one channel never share or
//! skip an offset, and every node receives a channel's publications in offset order.
//!
//! A node subscribes to a channel's subject only while it has local subscribers, through a few
//! pub/sub links (the `subscriber` module) that batch their subscribe commands, notice when their
//! connection drops or hangs, and, once back, repair the gap from history for every channel they
//! serve before passing live publications on again.
//!
//! Why redis-rs: it is the Rust client the Redis project maintains; its multiplexed connection
//! pipelines concurrent calls from many tasks over one socket (so publishes from many clients
//! share round trips without a pool), it speaks RESP3 (so one link carries pub/sub pushes and
//! ordinary replies in order, which the gap repair relies on), and it has a connection manager
//! that reconnects by itself and a Redis Cluster client that follows slot moves. Every call runs
//! under a time-out, so a hung Redis answers `unavailable` instead of holding a client.

#![warn(missing_docs, unreachable_pub)]

pub mod keys;
mod subscriber;
#[cfg(feature = "testing")]
pub mod testing;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::engine::{
    new_epoch, ClusterCommand, Engine, EngineCounters, HistoryPage, HistoryPolicy, HistoryQuery,
    NodeFigures, NodeSink, PublishRequest,
};
use herald_core::presence::{
    ChannelEvent, Presence, PresenceChange, PresenceCounts, PresenceMember,
};
use herald_core::publication::now_millis;
use herald_core::{ChannelName, HeraldError, StreamPosition};
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use keys::{ChannelKeys, Keys, PARTITIONS};
use subscriber::Subscriber;

/// How long a stream (its epoch and last offset) outlives its last publication or read, at least.
/// A client that comes back within it with a position the history no longer covers is told
/// `recovered: false` rather than given a new epoch for no reason.
pub const STREAM_TTL: Duration = Duration::from_secs(24 * 3600);

/// How often a node announces itself; it leaves the registry after three missed beats.
pub const NODE_BEAT: Duration = Duration::from_secs(3);

/// How the engine reaches Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// One Redis: `redis://[user:password@]host:port[/db]` (the client is built without TLS).
    pub url: String,
    /// Redis Cluster seed nodes; when not empty they win over `url`.
    pub cluster_nodes: Vec<String>,
    /// What every key and pub/sub subject starts with.
    pub prefix: String,
    /// This node's name in the registry.
    pub node_name: String,
    /// How long a presence entry lives after its node last refreshed it: how long a killed
    /// node's connections stay in presence.
    pub presence_ttl: Duration,
    /// The longest any Redis call may take before it fails with `unavailable`.
    pub timeout: Duration,
}

impl RedisConfig {
    /// A configuration for one Redis at `url` with the defaults.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            cluster_nodes: Vec::new(),
            prefix: "herald".into(),
            node_name: "herald".into(),
            presence_ttl: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
        }
    }
}

/// The connection ordinary commands go through: one multiplexed connection to a single Redis
/// (reconnected by the manager), or the cluster client, which routes each command by its keys'
/// slot.
#[derive(Clone)]
enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

struct Scripts {
    publish: Script,
    history: Script,
    presence: Script,
    nodes: Script,
}

/// What the engine and its pub/sub links share.
pub(crate) struct Shared {
    config: RedisConfig,
    keys: Keys,
    commands: Commands,
    cluster: bool,
    scripts: Scripts,
    sink: OnceLock<Arc<dyn NodeSink>>,
    /// This process's id in the registry and in users' connection counts: the name, made unique,
    /// so that a restarted node never inherits its previous life's counts.
    node_id: String,
    /// This node's presence in Redis, one entry per partition ([`PARTITIONS`]), so that a
    /// refresh reads the channels of its partition and no others.
    presence: Vec<Mutex<LocalPresence>>,
    /// Users' connection counts on this node, and which changed since the last flush.
    users: Mutex<Users>,
    users_changed: Arc<Notify>,
    /// What the pub/sub links have been through.
    counters: Counters,
}

/// What the pub/sub links have been through, for metrics and tests.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) reconnects: AtomicU64,
    pub(crate) repaired: AtomicU64,
    pub(crate) resets: AtomicU64,
}

/// The presence this node keeps in Redis for the channels of one partition.
#[derive(Default)]
struct LocalPresence {
    /// The entries this node put in Redis (channel → client → member), refreshed every third of
    /// the presence TTL so that they expire only when this node is gone.
    entries: HashMap<ChannelName, HashMap<Arc<str>, PresenceMember>>,
    /// Leaves Redis did not take (it was down, or too busy to answer in time, as when every
    /// client of a node disconnects at once): retried with their channel's refresh, so that the
    /// entries go well before they would expire.
    unsent_leaves: HashMap<ChannelName, Vec<Arc<str>>>,
}

/// This node's users, as the hub reported them.
#[derive(Default)]
struct Users {
    /// Connections per user on this node (users with none are left out).
    counts: HashMap<Arc<str>, usize>,
    /// Users whose count is not written yet.
    dirty: HashSet<Arc<str>>,
    /// The link reconnects seen at the last flush: after one, Redis may have restarted empty,
    /// so every count is written again.
    reconnects: u64,
}

/// The Redis engine. Cheap to clone.
#[derive(Clone)]
pub struct RedisEngine {
    shared: Arc<Shared>,
    subscriber: Arc<Subscriber>,
}

/// `unavailable`, naming what failed.
fn unavailable(what: &str, e: impl std::fmt::Display) -> HeraldError {
    HeraldError::unavailable(format!("redis: {what}: {e}"))
}

impl Shared {
    /// Runs `call` on the command connection, failing with `unavailable` after the time-out.
    async fn run<T, F>(
        &self,
        what: &str,
        call: impl FnOnce(Commands) -> F,
    ) -> Result<T, HeraldError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.config.timeout, call(self.commands.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(unavailable(what, e)),
            Err(_) => Err(unavailable(what, "timed out")),
        }
    }

    fn publish_command(&self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Reads a channel's history with the history script.
    async fn read_history(
        &self,
        channel: &ChannelName,
        keys: &ChannelKeys,
        ttl: Duration,
        query: &HistoryQuery,
        seen_by_this_node: bool,
    ) -> Result<HistoryPage, HeraldError> {
        let (since, since_epoch) = match &query.since {
            // A node that subscribed before the stream existed: any epoch is the one it waits for.
            Some(p) if p.epoch.is_empty() && seen_by_this_node => (p.offset as i64, "*"),
            Some(p) => (p.offset as i64, p.epoch.as_str()),
            None => (-1, ""),
        };
        let limit = query.limit.map_or(-1, |l| l as i64);
        let mut invocation = self.scripts.history.prepare_invoke();
        invocation
            .key(&keys.stream)
            .key(&keys.history)
            .arg(since)
            .arg(since_epoch)
            .arg(limit)
            .arg(ttl.as_millis() as u64)
            .arg(now_millis())
            .arg(new_epoch())
            .arg(STREAM_TTL.as_millis() as u64)
            .arg(if seen_by_this_node { "1" } else { "0" });
        let (epoch, top, complete, flat): (String, u64, u8, Vec<String>) = self
            .run("history", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        let epoch: Arc<str> = epoch.into();
        let mut publications = Vec::with_capacity(flat.len() / 3);
        for entry in flat.chunks_exact(3) {
            let (Ok(offset), Ok(ts)) = (entry[0].parse(), entry[1].parse()) else {
                continue;
            };
            if let Some(p) =
                wire::publication(channel.clone(), offset, epoch.clone(), ts, &entry[2])
            {
                publications.push(Arc::new(p));
            }
        }
        Ok(HistoryPage {
            publications,
            position: StreamPosition {
                offset: top,
                epoch: epoch.to_string(),
            },
            complete: complete == 1,
        })
    }

    /// Runs the presence script on a channel.
    async fn presence_op(
        &self,
        channel: &ChannelName,
        op: &str,
        args: &[&str],
    ) -> Result<(usize, PresenceCounts, Vec<String>), HeraldError> {
        let keys = self.keys.channel(channel);
        let mut invocation = self.scripts.presence.prepare_invoke();
        invocation
            .key(&keys.presence_clients)
            .key(&keys.presence_users)
            .key(&keys.presence_expiry)
            .arg(op)
            .arg(now_millis())
            .arg(self.config.presence_ttl.as_millis() as u64);
        for arg in args {
            invocation.arg(*arg);
        }
        let reply: Vec<Value> = self
            .run("presence", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        let int = |i: usize| match reply.get(i) {
            Some(Value::Int(n)) => *n as usize,
            _ => 0,
        };
        let members = match reply.get(3) {
            Some(v) => redis::from_redis_value_ref::<Vec<String>>(v)
                .map_err(|e| unavailable("presence", e))?,
            None => Vec::new(),
        };
        let counts = PresenceCounts {
            users: int(1),
            connections: int(2),
        };
        Ok((int(0), counts, members))
    }

    /// This node's presence for `channel`'s partition.
    fn local_presence(&self, channel: &ChannelName) -> &Mutex<LocalPresence> {
        &self.presence[self.keys.partition(channel.as_str())]
    }

    /// Puts this node's presence entries in channels of `partition` back (and pushes their
    /// expiry on), channel by channel, and retries the partition's leaves Redis did not take.
    async fn refresh_presence(&self, partition: usize) {
        let Some(local) = self.presence.get(partition) else {
            return;
        };
        let (entries, unsent): (Vec<(ChannelName, Vec<PresenceMember>)>, _) = {
            let mut local = local.lock();
            let entries = local
                .entries
                .iter()
                .map(|(c, members)| (c.clone(), members.values().cloned().collect()))
                .collect();
            (entries, std::mem::take(&mut local.unsent_leaves))
        };
        let mut refreshes = Vec::new();
        for (channel, members) in &entries {
            for chunk in members.chunks(256) {
                let args: Vec<String> = chunk
                    .iter()
                    .flat_map(|m| {
                        [
                            m.client.to_string(),
                            m.user.to_string(),
                            m.joined_at.to_string(),
                        ]
                    })
                    .collect();
                refreshes.push(async move {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    if let Err(e) = self.presence_op(channel, "refresh", &args).await {
                        tracing::warn!(%channel, error = %e, "presence refresh failed");
                    }
                });
            }
        }
        // A few hundred at a time: the connection pipelines them, and Redis is not flooded.
        let mut refreshes = refreshes.into_iter();
        loop {
            let batch: Vec<_> = refreshes.by_ref().take(256).collect();
            if batch.is_empty() {
                break;
            }
            futures_util::future::join_all(batch).await;
        }
        // A connection that left while the refresh ran may have been put back by it: take it
        // out again.
        let gone: Vec<(ChannelName, Arc<str>)> = {
            let local = local.lock();
            entries
                .iter()
                .flat_map(|(channel, members)| {
                    let here = local.entries.get(channel);
                    members
                        .iter()
                        .filter(move |m| here.is_none_or(|h| !h.contains_key(&m.client)))
                        .map(move |m| (channel.clone(), m.client.clone()))
                })
                .collect()
        };
        let retried = unsent
            .into_iter()
            .flat_map(|(channel, clients)| clients.into_iter().map(move |c| (channel.clone(), c)));
        for (channel, client) in gone.into_iter().chain(retried) {
            // A failure is logged and kept for the next refresh.
            let _ = self.leave_or_retry_later(&channel, &client).await;
        }
    }

    /// Takes `client` out of `channel`'s presence in Redis; if Redis does not answer, the leave is
    /// kept to be retried with the channel's next refresh.
    async fn leave_or_retry_later(
        &self,
        channel: &ChannelName,
        client: &Arc<str>,
    ) -> Result<(usize, PresenceCounts), HeraldError> {
        match self.presence_op(channel, "leave", &[client]).await {
            Ok((changed, counts, _)) => Ok((changed, counts)),
            Err(e) => {
                tracing::warn!(%channel, error = %e, "presence leave failed; retried with the next refresh");
                self.local_presence(channel)
                    .lock()
                    .unsent_leaves
                    .entry(channel.clone())
                    .or_default()
                    .push(client.clone());
                Err(e)
            }
        }
    }

    /// Writes the users' connection counts that changed since the last flush.
    async fn flush_users(&self) -> Result<(), HeraldError> {
        let changed: Vec<(Arc<str>, usize)> = {
            let mut users = self.users.lock();
            let reconnects = self.counters.reconnects.load(Ordering::Relaxed);
            if users.reconnects != reconnects {
                users.reconnects = reconnects;
                let all: Vec<Arc<str>> = users.counts.keys().cloned().collect();
                users.dirty.extend(all);
            }
            let dirty = std::mem::take(&mut users.dirty);
            dirty
                .into_iter()
                .map(|user| {
                    let count = users.counts.get(&user).copied().unwrap_or(0);
                    (user, count)
                })
                .collect()
        };
        if changed.is_empty() {
            return Ok(());
        }
        // One command per user, sent together: the connection pipelines them, and in a cluster
        // each goes to its own slot's master.
        let writes = changed.iter().map(|(user, count)| {
            let mut command = redis::cmd(if *count == 0 { "HDEL" } else { "HSET" });
            command.arg(self.keys.user(user)).arg(&self.node_id);
            if *count > 0 {
                command.arg(*count);
            }
            self.run("users", |mut c| async move {
                command.query_async::<()>(&mut c).await
            })
        });
        let result = futures_util::future::join_all(writes)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, HeraldError>>()
            .map(|_| ());
        if result.is_err() {
            // Written again at the next flush, with the count of that moment.
            let mut users = self.users.lock();
            users
                .dirty
                .extend(changed.into_iter().map(|(user, _)| user));
        }
        result
    }

    async fn nodes_op(&self, op: &str, args: &[String]) -> Result<Vec<String>, HeraldError> {
        let mut invocation = self.scripts.nodes.prepare_invoke();
        invocation
            .key(self.keys.live_nodes())
            .arg(op)
            .arg(now_millis())
            .arg(self.keys.node_prefix());
        for arg in args {
            invocation.arg(arg);
        }
        self.run("nodes", |mut c| async move {
            invocation.invoke_async(&mut c).await
        })
        .await
    }
}

/// A node's figures as the registry keeps them.
#[derive(Serialize, Deserialize)]
struct Figures {
    name: String,
    connections: u64,
    users: u64,
    subscriptions: u64,
    messages_in: u64,
    messages_out: u64,
    uptime_s: u64,
}

impl RedisEngine {
    /// Connects to Redis (or the Redis Cluster) of `config` and starts the pub/sub links and the
    /// upkeep tasks (presence refresh, user counts). Fails when Redis cannot be reached now; once
    /// started, the engine rides out Redis outages by itself.
    pub async fn connect(config: RedisConfig) -> Result<RedisEngine, HeraldError> {
        let cluster = !config.cluster_nodes.is_empty();
        let commands = if cluster {
            let client = redis::cluster::ClusterClientBuilder::new(config.cluster_nodes.clone())
                .connection_timeout(config.timeout)
                .response_timeout(config.timeout)
                .build()
                .map_err(|e| unavailable("cluster configuration", e))?;
            let connection = tokio::time::timeout(config.timeout, client.get_async_connection())
                .await
                .map_err(|_| unavailable("connecting to the cluster", "timed out"))?
                .map_err(|e| unavailable("connecting to the cluster", e))?;
            Commands::Cluster(connection)
        } else {
            let client = redis::Client::open(config.url.as_str())
                .map_err(|e| unavailable("redis_url", e))?;
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            let connection = tokio::time::timeout(
                config.timeout * 2,
                client.get_connection_manager_with_config(manager),
            )
            .await
            .map_err(|_| unavailable("connecting", "timed out"))?
            .map_err(|e| unavailable("connecting", e))?;
            Commands::Single(connection)
        };
        let node_id = format!("{}.{}", config.node_name, new_epoch());
        let shared = Arc::new(Shared {
            keys: Keys::new(&config.prefix),
            commands,
            cluster,
            scripts: Scripts {
                publish: Script::new(include_str!("lua/publish.lua")),
                history: Script::new(include_str!("lua/history.lua")),
                presence: Script::new(include_str!("lua/presence.lua")),
                nodes: Script::new(include_str!("lua/nodes.lua")),
            },
            sink: OnceLock::new(),
            node_id,
            presence: (0..PARTITIONS).map(|_| Mutex::default()).collect(),
            users: Mutex::default(),
            users_changed: Arc::default(),
            counters: Counters::default(),
            config,
        });
        shared
            .run("ping", |mut c| async move {
                redis::cmd("PING").query_async::<()>(&mut c).await
            })
            .await?;
        let subscriber = Subscriber::start(shared.clone()).await?;
        let engine = RedisEngine { shared, subscriber };
        engine.spawn_upkeep();
        Ok(engine)
    }

    /// This node's id in the registry.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.shared.keys
    }

    /// Whether every pub/sub link is connected and subscribed.
    pub fn links_up(&self) -> bool {
        self.subscriber.all_up()
    }

    /// How many channels this node is subscribed to in Redis.
    pub fn subscribed_channels(&self) -> usize {
        self.subscriber.channel_count()
    }

    /// The tasks that keep this node's presence entries and user counts alive in Redis. They hold
    /// the engine weakly and end with it.
    fn spawn_upkeep(&self) {
        // Every entry is refreshed once every third of the TTL, one partition of channels at a
        // time: Redis sees an even trickle of refreshes, not every entry of every node at once
        // (at 100,000 entries that burst kept Redis busy for seconds, and publications waited
        // behind it).
        let weak = Arc::downgrade(&self.shared);
        let every = self.shared.config.presence_ttl / 3 / PARTITIONS as u32;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            for partition in (0..PARTITIONS).cycle() {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.refresh_presence(partition).await;
            }
        });
        let weak = Arc::downgrade(&self.shared);
        let changed = self.shared.users_changed.clone();
        tokio::spawn(async move {
            loop {
                // Counts that change together are written together.
                let _ = tokio::time::timeout(Duration::from_secs(5), changed.notified()).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let Some(shared) = weak.upgrade() else { return };
                if shared.flush_users().await.is_err() {
                    drop(shared);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }
}

#[async_trait]
impl Engine for RedisEngine {
    /// Publications arrive on the pub/sub links; history is read on the command connection.
    fn live_may_trail_reads(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn attach(&self, sink: Arc<dyn NodeSink>) {
        let _ = self.shared.sink.set(sink);
    }

    async fn publish(&self, request: PublishRequest) -> Result<StreamPosition, HeraldError> {
        let shared = &self.shared;
        let keys = shared.keys.channel(&request.channel);
        let body = wire::publication_body(
            request.event.as_deref(),
            &request.data,
            request.from.as_ref(),
        );
        let mut invocation = shared.scripts.publish.prepare_invoke();
        invocation.key(&keys.stream).key(&keys.history);
        if let Some(key) = &request.idempotency {
            invocation.key(format!("{}{}", keys.idempotency_prefix, key.key));
        }
        invocation
            .arg(&keys.subject)
            .arg(body)
            .arg(now_millis())
            .arg(request.history.size)
            .arg(request.history.ttl.as_millis() as u64)
            .arg(new_epoch())
            .arg(STREAM_TTL.max(request.history.ttl).as_millis() as u64)
            .arg(
                request
                    .idempotency
                    .as_ref()
                    .map_or(0, |k| k.window.as_millis().max(1) as u64),
            )
            .arg(shared.publish_command());
        let (offset, epoch): (u64, String) = shared
            .run("publish", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(StreamPosition { offset, epoch })
    }

    async fn history(
        &self,
        channel: &ChannelName,
        policy: HistoryPolicy,
        query: HistoryQuery,
    ) -> Result<HistoryPage, HeraldError> {
        let keys = self.shared.keys.channel(channel);
        self.shared
            .read_history(channel, &keys, policy.ttl, &query, false)
            .await
    }

    async fn node_subscribe(&self, channel: &ChannelName) -> Result<(), HeraldError> {
        self.subscriber.subscribe(channel).await
    }

    async fn node_unsubscribe(&self, channel: &ChannelName) -> Result<(), HeraldError> {
        self.subscriber.unsubscribe(channel).await;
        Ok(())
    }

    async fn presence_join(
        &self,
        channel: &ChannelName,
        member: PresenceMember,
    ) -> Result<PresenceChange, HeraldError> {
        let joined_at = member.joined_at.to_string();
        let (changed, counts, _) = self
            .shared
            .presence_op(channel, "join", &[&member.client, &member.user, &joined_at])
            .await?;
        self.shared
            .local_presence(channel)
            .lock()
            .entries
            .entry(channel.clone())
            .or_default()
            .insert(member.client.clone(), member);
        Ok(PresenceChange {
            changed: changed > 0,
            counts,
        })
    }

    async fn presence_leave(
        &self,
        channel: &ChannelName,
        client: &str,
    ) -> Result<PresenceChange, HeraldError> {
        {
            let mut local = self.shared.local_presence(channel).lock();
            if let Some(members) = local.entries.get_mut(channel) {
                members.remove(client);
                if members.is_empty() {
                    local.entries.remove(channel);
                }
            }
        }
        let client: Arc<str> = client.into();
        let (changed, counts) = self.shared.leave_or_retry_later(channel, &client).await?;
        Ok(PresenceChange {
            changed: changed > 0,
            counts,
        })
    }

    async fn presence(&self, channel: &ChannelName) -> Result<Presence, HeraldError> {
        let (_, counts, flat) = self.shared.presence_op(channel, "read", &[]).await?;
        let mut members: Vec<PresenceMember> = flat
            .chunks_exact(2)
            .filter_map(|pair| wire::member(&pair[0], &pair[1]))
            .collect();
        members.sort_by(|a, b| (&a.user, &a.client).cmp(&(&b.user, &b.client)));
        Ok(Presence { members, counts })
    }

    async fn presence_counts(&self, channel: &ChannelName) -> Result<PresenceCounts, HeraldError> {
        let (_, counts, _) = self.shared.presence_op(channel, "counts", &[]).await?;
        Ok(counts)
    }

    async fn publish_event(&self, event: ChannelEvent) -> Result<(), HeraldError> {
        let (subject, _) = self.shared.keys.subject(event.channel.as_str());
        let payload = wire::event(&event);
        let command = self.shared.publish_command();
        self.shared
            .run("event", |mut c| async move {
                redis::cmd(command)
                    .arg(subject)
                    .arg(payload)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    async fn broadcast_command(&self, command: ClusterCommand) -> Result<(), HeraldError> {
        let subject = self.shared.keys.commands();
        let payload = wire::command(&command);
        self.shared
            .run("command", |mut c| async move {
                redis::cmd("PUBLISH")
                    .arg(subject)
                    .arg(payload)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    async fn ready(&self) -> Result<(), HeraldError> {
        // Not PING, which Redis answers while it still loads its data after a restart: a read of
        // a key, which it refuses with LOADING until it can serve.
        let key = self.shared.keys.live_nodes();
        self.shared
            .run("ready", |mut c| async move {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
        if !self.subscriber.all_up() {
            return Err(HeraldError::unavailable(
                "redis: a pub/sub link is reconnecting",
            ));
        }
        Ok(())
    }

    async fn announce(&self, figures: NodeFigures) -> Result<(), HeraldError> {
        let figures = Figures {
            name: figures.name,
            connections: figures.connections,
            users: figures.users,
            subscriptions: figures.subscriptions,
            messages_in: figures.messages_in,
            messages_out: figures.messages_out,
            uptime_s: figures.uptime_s,
        };
        let json = serde_json::to_string(&figures).unwrap_or_default();
        let ttl = (NODE_BEAT * 3).as_millis().to_string();
        self.shared
            .nodes_op("announce", &[self.shared.node_id.clone(), json, ttl])
            .await?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeFigures>, HeraldError> {
        let listed = self.shared.nodes_op("list", &[]).await?;
        let mut nodes: Vec<NodeFigures> = listed
            .iter()
            .filter_map(|json| serde_json::from_str::<Figures>(json).ok())
            .map(|f| NodeFigures {
                name: f.name,
                connections: f.connections,
                users: f.users,
                subscriptions: f.subscriptions,
                messages_in: f.messages_in,
                messages_out: f.messages_out,
                uptime_s: f.uptime_s,
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    fn spans_nodes(&self) -> bool {
        true
    }

    async fn channel_subscribed_anywhere(
        &self,
        channel: &ChannelName,
    ) -> Result<bool, HeraldError> {
        self.subscriber.subscribed_anywhere(channel).await
    }

    async fn mark_reported(&self, key: &str, present: bool) -> Result<bool, HeraldError> {
        let key = self.shared.keys.reported(key);
        // `SET .. GET` answers the value before (nil: it was absent), `GETDEL` the value it
        // removed (nil: there was none); each is one atomic step, so of nodes racing to set the
        // same state, one sees the change.
        let before: Option<String> = self
            .shared
            .run("reported", |mut c| async move {
                if present {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg("1")
                        .arg("GET")
                        .query_async(&mut c)
                        .await
                } else {
                    redis::cmd("GETDEL").arg(&key).query_async(&mut c).await
                }
            })
            .await?;
        Ok(before.is_some() != present)
    }

    fn counters(&self) -> EngineCounters {
        let c = &self.shared.counters;
        EngineCounters {
            link_reconnects: c.reconnects.load(Ordering::Relaxed),
            links_down: self.subscriber.links_down() as u64,
            repaired_publications: c.repaired.load(Ordering::Relaxed),
            stream_resets: c.resets.load(Ordering::Relaxed),
        }
    }

    fn user_connections_changed(&self, user: &Arc<str>, on_this_node: usize) {
        let mut users = self.shared.users.lock();
        if on_this_node == 0 {
            users.counts.remove(user);
        } else {
            users.counts.insert(user.clone(), on_this_node);
        }
        users.dirty.insert(user.clone());
        drop(users);
        self.shared.users_changed.notify_one();
    }

    async fn user_connections(&self, user: &str) -> Result<Option<usize>, HeraldError> {
        let key = self.shared.keys.user(user);
        let per_node: HashMap<String, usize> = self
            .shared
            .run("users", |mut c| async move {
                redis::cmd("HGETALL").arg(&key).query_async(&mut c).await
            })
            .await?;
        if per_node.is_empty() {
            let here = self.shared.users.lock().counts.get(user).copied();
            return Ok(Some(here.unwrap_or(0)));
        }
        let live: Vec<String> = self.shared.nodes_op("ids", &[]).await?;
        // This node's share is its count now, not what the flusher last wrote.
        let mut total = self
            .shared
            .users
            .lock()
            .counts
            .get(user)
            .copied()
            .unwrap_or(0);
        let mut dead = Vec::new();
        for (node, count) in per_node {
            if node == self.shared.node_id {
                continue;
            }
            if live.contains(&node) {
                total += count;
            } else {
                dead.push(node);
            }
        }
        if !dead.is_empty() {
            let key = self.shared.keys.user(user);
            // A node that died with connections leaves its counts behind; whoever reads them
            // next clears them. Failing here changes no answer.
            let _ = self
                .shared
                .run("users", |mut c| async move {
                    redis::cmd("HDEL")
                        .arg(&key)
                        .arg(dead)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await;
        }
        Ok(Some(total))
    }
}
