//! Several engines on one real Redis, as several Herald nodes would be, and what each sees when
//! Redis drops their links, stops, restarts or hangs.

use std::sync::Arc;
use std::time::Duration;

use herald_core::engine::conformance::Node;
use herald_core::engine::{ClusterCommand, HistoryPolicy, NodeFigures, PublishRequest};
use herald_core::presence::PresenceMember;
use herald_core::{ChannelName, Engine, ErrorCode};
use herald_redis::testing::{self, RedisServer};
use herald_redis::{RedisConfig, RedisEngine};
use serde_json::value::RawValue;

fn config(url: &str, prefix: &str, name: &str) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.prefix = prefix.into();
    config.node_name = name.into();
    config.presence_ttl = Duration::from_secs(1);
    config.timeout = Duration::from_millis(500);
    config
}

async fn node(url: &str, prefix: &str, name: &str) -> (RedisEngine, Node) {
    let engine = RedisEngine::connect(config(url, prefix, name))
        .await
        .expect("connect");
    let node = Node::attach(Arc::new(engine.clone()));
    (engine, node)
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("channel")
}

fn request(name: &str, size: usize) -> PublishRequest {
    PublishRequest {
        channel: channel(name),
        event: None,
        data: RawValue::from_string("1".into()).expect("json"),
        from: None,
        history: HistoryPolicy {
            size,
            ttl: Duration::from_secs(60),
        },
        idempotency: None,
    }
}

/// Subscribes node `r` to every channel of `names`, then publishes one publication to each
/// through node `p`, keeping `history` per channel.
async fn subscribe_then_publish_once(r: &Node, p: &Node, names: &[String], history: usize) {
    for name in names {
        r.engine
            .node_subscribe(&channel(name))
            .await
            .expect("subscribe");
    }
    for name in names {
        p.engine
            .publish(request(name, history))
            .await
            .expect("publish");
    }
}

async fn until(what: &str, holds: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !holds() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("url");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// Kills every pub/sub connection of the server (`CLIENT KILL TYPE pubsub`): the links notice
/// and come back, while the command connections carry on.
async fn drop_pubsub_links(admin: &mut redis::aio::MultiplexedConnection) {
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(admin)
        .await
        .expect("client kill");
}

/// Runs `meanwhile` while the server's pub/sub links are down and cannot come back (new
/// connections are refused through `maxclients`), then lets them back.
async fn with_links_down<F: std::future::Future>(url: &str, meanwhile: F) -> F::Output {
    let mut admin = admin(url).await;
    let set = |n: &str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxclients")
            .arg(n)
            .to_owned()
    };
    let _: () = set("1").query_async(&mut admin).await.expect("maxclients");
    drop_pubsub_links(&mut admin).await;
    let output = meanwhile.await;
    let _: () = set("10000")
        .query_async(&mut admin)
        .await
        .expect("maxclients");
    output
}

#[tokio::test]
async fn publications_from_any_node_reach_every_node_in_offset_order() {
    let url = &testing::shared().url;
    let prefix = testing::unique_prefix("fanout");
    let (_, a) = node(url, &prefix, "a").await;
    let (_, b) = node(url, &prefix, "b").await;
    let (_, c) = node(url, &prefix, "c").await;
    let ch = channel("room:1");
    for n in [&a, &b, &c] {
        n.engine.node_subscribe(&ch).await.expect("subscribe");
    }
    let publishers: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|n| {
            let engine = n.engine.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    engine
                        .publish(request("room:1", 10))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    let all: Vec<u64> = (1..=300).collect();
    for n in [&a, &b, &c] {
        until("300 deliveries", || n.sink.offsets("room:1").len() >= 300).await;
        assert_eq!(n.sink.offsets("room:1"), all);
    }
}

#[tokio::test]
async fn presence_commands_users_and_the_registry_span_nodes() {
    let url = &testing::shared().url;
    let prefix = testing::unique_prefix("span");
    let (a_engine, a) = node(url, &prefix, "a").await;
    let (_, b) = node(url, &prefix, "b").await;
    let ch = channel("site:1");
    let member = PresenceMember {
        user: "alice".into(),
        client: "c1".into(),
        joined_at: 5,
    };
    a.engine.presence_join(&ch, member).await.expect("join");
    let seen = b.engine.presence(&ch).await.expect("presence");
    assert_eq!(seen.members.len(), 1);
    assert_eq!(&*seen.members[0].user, "alice");

    let command = ClusterCommand::DisconnectUser {
        user: "alice".into(),
        reconnect: false,
    };
    b.engine
        .broadcast_command(command.clone())
        .await
        .expect("command");
    until("the command on a", || {
        a.sink.commands() == [command.clone()]
    })
    .await;
    assert_eq!(a_engine.node_id().split('.').next(), Some("a"));

    let alice: Arc<str> = "alice".into();
    a.engine.user_connections_changed(&alice, 2);
    b.engine.user_connections_changed(&alice, 1);
    for n in [&a, &b] {
        let figures = NodeFigures {
            name: if Arc::ptr_eq(&n.engine, &a.engine) {
                "a"
            } else {
                "b"
            }
            .into(),
            connections: 3,
            ..NodeFigures::default()
        };
        n.engine.announce(figures).await.expect("announce");
    }
    let nodes = b.engine.nodes().await.expect("nodes");
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let mut total = None;
    for _ in 0..100 {
        total = b.engine.user_connections("alice").await.expect("users");
        if total == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(total, Some(3), "two connections on a, one on b");
}

/// What webhooks ask of the cluster: whether a channel is subscribed on any node, a user's
/// connections with this node's latest count (written out by the flusher only later), and one
/// reported state for every node.
#[tokio::test]
async fn subscriptions_counts_and_reported_states_span_nodes() {
    let url = &testing::shared().url;
    let prefix = testing::unique_prefix("report");
    let (_, a) = node(url, &prefix, "a").await;
    let (_, b) = node(url, &prefix, "b").await;
    let ch = channel("room:anywhere");
    a.engine.node_subscribe(&ch).await.expect("subscribe");
    let anywhere = |n: &Node| {
        let engine = n.engine.clone();
        let ch = ch.clone();
        async move { engine.channel_subscribed_anywhere(&ch).await.expect("ask") }
    };
    assert!(anywhere(&b).await, "a's subscription, seen from b");
    b.engine.node_subscribe(&ch).await.expect("subscribe");
    a.engine.node_unsubscribe(&ch).await.expect("unsubscribe");
    assert!(anywhere(&a).await, "b's subscription, seen from a");
    b.engine.node_unsubscribe(&ch).await.expect("unsubscribe");
    assert!(
        !anywhere(&b).await,
        "nobody, right after b's own unsubscribe"
    );
    assert!(!anywhere(&a).await, "nobody, seen from a");

    let carol: Arc<str> = "carol".into();
    for (n, name) in [(&a, "a"), (&b, "b")] {
        let figures = NodeFigures {
            name: name.into(),
            ..NodeFigures::default()
        };
        n.engine.announce(figures).await.expect("announce");
    }
    a.engine.user_connections_changed(&carol, 1);
    let here = a.engine.user_connections("carol").await.expect("users");
    assert_eq!(here, Some(1), "a's own count at once");
    a.engine.user_connections_changed(&carol, 0);
    b.engine.user_connections_changed(&carol, 2);
    let mut total = None;
    for _ in 0..100 {
        total = a.engine.user_connections("carol").await.expect("users");
        if total == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(total, Some(2), "b's two once written, none left on a");

    assert!(a.engine.mark_reported("u:carol", true).await.expect("mark"));
    assert!(!b.engine.mark_reported("u:carol", true).await.expect("mark"));
    assert!(b
        .engine
        .mark_reported("u:carol", false)
        .await
        .expect("mark"));
    assert!(!a
        .engine
        .mark_reported("u:carol", false)
        .await
        .expect("mark"));
}

#[tokio::test]
async fn a_dead_nodes_presence_expires() {
    let url = &testing::shared().url;
    let prefix = testing::unique_prefix("expiry");
    let (_, b) = node(url, &prefix, "b").await;
    let ch = channel("site:2");
    {
        let (a_engine, a) = node(url, &prefix, "a").await;
        let member = PresenceMember {
            user: "bob".into(),
            client: "c9".into(),
            joined_at: 5,
        };
        a.engine.presence_join(&ch, member).await.expect("join");
        // Kept alive by a's refresh past its one-second TTL.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let counts = b.engine.presence_counts(&ch).await.expect("counts");
        assert_eq!(counts.connections, 1, "refreshed while a lives");
        drop(a);
        drop(a_engine);
    }
    // a is gone without a leave: its entry goes within the TTL.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let counts = b.engine.presence_counts(&ch).await.expect("counts");
    assert_eq!(counts.connections, 0);
}

#[tokio::test]
async fn a_dropped_link_repairs_its_gap_from_history() {
    let server = RedisServer::start();
    let prefix = testing::unique_prefix("repair");
    let (receiver, r) = node(&server.url, &prefix, "r").await;
    let (_, p) = node(&server.url, &prefix, "p").await;
    let names: Vec<String> = (0..40).map(|i| format!("gap:{i}")).collect();
    subscribe_then_publish_once(&r, &p, &names, 100).await;
    for round in 0..5 {
        // Published while r's links are down: r gets them from history once they are back.
        with_links_down(&server.url, async {
            for name in &names {
                p.engine.publish(request(name, 100)).await.expect("publish");
            }
        })
        .await;
        let expected: Vec<u64> = (1..=round + 2).collect();
        for name in &names {
            until("every offset", || {
                r.sink.offsets(name).len() >= expected.len()
            })
            .await;
        }
        for name in &names {
            assert_eq!(r.sink.offsets(name), expected, "{name}, round {round}");
        }
    }
    let stats = receiver.counters();
    assert!(stats.link_reconnects >= 5, "{stats:?}");
    assert_eq!(
        stats.repaired_publications,
        5 * 40,
        "every missed one came from history: {stats:?}"
    );
    assert_eq!(stats.stream_resets, 0);
}

#[tokio::test]
async fn a_gap_history_no_longer_holds_resets_the_channel() {
    let server = RedisServer::start();
    let prefix = testing::unique_prefix("reset");
    let (receiver, r) = node(&server.url, &prefix, "r").await;
    let (_, p) = node(&server.url, &prefix, "p").await;
    let ch = channel("small:1");
    r.engine.node_subscribe(&ch).await.expect("subscribe");
    p.engine
        .publish(request("small:1", 2))
        .await
        .expect("publish");
    until("the first", || r.sink.offsets("small:1") == [1]).await;
    // r's links go, and ten publications (history keeps two) pass meanwhile.
    with_links_down(&server.url, async {
        for _ in 0..10 {
            p.engine
                .publish(request("small:1", 2))
                .await
                .expect("publish");
        }
    })
    .await;
    until("the reset", || !r.sink.resets("small:1").is_empty()).await;
    let reset = r.sink.resets("small:1");
    assert_eq!(
        reset[0].offset, 11,
        "the stream's position when the link came back"
    );
    assert_eq!(receiver.counters().stream_resets, 1);
    p.engine
        .publish(request("small:1", 2))
        .await
        .expect("publish");
    until("the next live one", || {
        r.sink.offsets("small:1").last() == Some(&12)
    })
    .await;
    assert_eq!(
        r.sink.offsets("small:1"),
        [1, 12],
        "nothing stale, nothing twice"
    );
}

#[tokio::test]
async fn redis_stopped_then_restarted_loses_nothing_acknowledged() {
    let mut server = RedisServer::start();
    let prefix = testing::unique_prefix("restart");
    let (receiver, r) = node(&server.url, &prefix, "r").await;
    let (_, p) = node(&server.url, &prefix, "p").await;
    let ch = channel("keep:1");
    r.engine.node_subscribe(&ch).await.expect("subscribe");
    for _ in 0..5 {
        p.engine
            .publish(request("keep:1", 100))
            .await
            .expect("publish");
    }
    server.stop();
    let refused = p.engine.publish(request("keep:1", 100)).await;
    assert_eq!(
        refused.map_err(|e| e.code),
        Err(ErrorCode::Unavailable),
        "no false success while Redis is down"
    );
    assert!(p.engine.ready().await.is_err(), "not ready without Redis");
    server.restart();
    let mut published = None;
    for _ in 0..100 {
        match p.engine.publish(request("keep:1", 100)).await {
            Ok(position) => {
                published = Some(position);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let position = published.expect("publishing again without a restart");
    assert_eq!(position.offset, 6, "the stream went on where it was");
    until("ready again", || receiver.links_up()).await;
    until("all six", || r.sink.offsets("keep:1").len() >= 6).await;
    assert_eq!(r.sink.offsets("keep:1"), [1, 2, 3, 4, 5, 6]);
    r.engine.ready().await.expect("ready");
}

#[tokio::test]
async fn a_hung_redis_times_out_instead_of_hanging() {
    let server = RedisServer::start();
    let prefix = testing::unique_prefix("hung");
    let (receiver, r) = node(&server.url, &prefix, "r").await;
    let ch = channel("hang:1");
    r.engine.node_subscribe(&ch).await.expect("subscribe");
    r.engine
        .publish(request("hang:1", 100))
        .await
        .expect("publish");
    server.freeze();
    let started = tokio::time::Instant::now();
    let refused = r.engine.publish(request("hang:1", 100)).await;
    assert_eq!(refused.map_err(|e| e.code), Err(ErrorCode::Unavailable));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the time-out"
    );
    assert!(r.engine.ready().await.is_err());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.thaw();
    until("links back", || receiver.links_up()).await;
    let mut next = None;
    for _ in 0..100 {
        if let Ok(position) = r.engine.publish(request("hang:1", 100)).await {
            next = Some(position);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The publish that timed out may still have run once Redis woke: the stream says.
    let next = next.expect("publishing again");
    until("everything published", || {
        r.sink.offsets("hang:1").last() == Some(&next.offset)
    })
    .await;
    let expected: Vec<u64> = (1..=next.offset).collect();
    assert_eq!(r.sink.offsets("hang:1"), expected);
}

#[tokio::test]
async fn a_leave_redis_did_not_take_is_retried_long_before_the_entry_expires() {
    let mut server = RedisServer::start();
    let prefix = testing::unique_prefix("leave");
    // Entries would live 30 s without a refresh; each channel is refreshed every 10 s.
    let mut slow_expiry = config(&server.url, &prefix, "a");
    slow_expiry.presence_ttl = Duration::from_secs(30);
    let engine = RedisEngine::connect(slow_expiry).await.expect("connect");
    let ch = channel("room:leave");
    let member = |client: &str| PresenceMember {
        user: "u".into(),
        client: client.into(),
        joined_at: 1,
    };
    for client in ["c1", "c2"] {
        engine
            .presence_join(&ch, member(client))
            .await
            .expect("join");
    }
    // Stopped (it writes its append-only file first), so that the leave never reaches it.
    server.stop();
    let refused = engine.presence_leave(&ch, "c1").await;
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.code),
        Err(ErrorCode::Unavailable)
    );
    server.restart();
    let left = tokio::time::Instant::now();
    loop {
        let Ok(presence) = engine.presence(&ch).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if presence.counts.connections == 1 {
            assert_eq!(presence.members[0].client.as_ref(), "c2");
            break;
        }
        assert!(
            left.elapsed() < Duration::from_secs(15),
            "the leave was never retried: {} connections",
            presence.counts.connections
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn twenty_thousand_channels_resubscribe_in_seconds() {
    let server = RedisServer::start();
    let prefix = testing::unique_prefix("many");
    let (engine, r) = node(&server.url, &prefix, "r").await;
    let names: Vec<ChannelName> = (0..20_000).map(|i| channel(&format!("user:{i}"))).collect();
    let subscribing = names.iter().map(|c| r.engine.node_subscribe(c));
    for result in futures_util::future::join_all(subscribing).await {
        result.expect("subscribe");
    }
    assert_eq!(engine.subscribed_channels(), 20_000);
    let before = engine.counters().link_reconnects;
    drop_pubsub_links(&mut admin(&server.url).await).await;
    until("every link back", || {
        engine.counters().link_reconnects >= before + 4 && engine.links_up()
    })
    .await;
    r.engine
        .publish(request("user:19999", 10))
        .await
        .expect("publish");
    until("a live delivery after the resubscribe", || {
        r.sink.offsets("user:19999") == [1]
    })
    .await;
}

#[tokio::test]
async fn a_channel_subscribed_before_its_first_publication_is_repaired_from_offset_one() {
    let server = RedisServer::start();
    let prefix = testing::unique_prefix("fresh");
    let (_, r) = node(&server.url, &prefix, "r").await;
    let (_, p) = node(&server.url, &prefix, "p").await;
    // No stream exists yet when r subscribes; its first publications pass while r's links are
    // down.
    r.engine
        .node_subscribe(&channel("fresh:1"))
        .await
        .expect("subscribe");
    with_links_down(&server.url, async {
        for _ in 0..3 {
            p.engine
                .publish(request("fresh:1", 10))
                .await
                .expect("publish");
        }
    })
    .await;
    until("all three", || r.sink.offsets("fresh:1").len() >= 3).await;
    assert_eq!(r.sink.offsets("fresh:1"), [1, 2, 3]);
    assert!(r.sink.resets("fresh:1").is_empty());
}

#[tokio::test]
async fn a_stream_that_redis_rolled_back_takes_a_new_epoch() {
    let server = RedisServer::start();
    let prefix = testing::unique_prefix("rollback");
    let (engine, r) = node(&server.url, &prefix, "r").await;
    let (_, p) = node(&server.url, &prefix, "p").await;
    let ch = channel("roll:1");
    r.engine.node_subscribe(&ch).await.expect("subscribe");
    let mut epoch = String::new();
    for _ in 0..5 {
        epoch = p
            .engine
            .publish(request("roll:1", 10))
            .await
            .expect("publish")
            .epoch;
    }
    until("five", || r.sink.offsets("roll:1").len() >= 5).await;
    // As if Redis came back from a snapshot taken at offset 2 (here with no history kept), and
    // two new publications took offsets 3 and 4 again while r's links were down.
    let keys = engine.keys().channel(&ch);
    let (stream, history) = (keys.stream, keys.history);
    let mut admin = admin(&server.url).await;
    with_links_down(&server.url, async {
        let _: () = redis::cmd("HSET")
            .arg(&stream)
            .arg("o")
            .arg(2)
            .query_async(&mut admin)
            .await
            .expect("roll back");
        let _: () = redis::cmd("DEL")
            .arg(&history)
            .query_async(&mut admin)
            .await
            .expect("roll back");
        for _ in 0..2 {
            p.engine
                .publish(request("roll:1", 10))
                .await
                .expect("publish");
        }
    })
    .await;
    until("a reset", || !r.sink.resets("roll:1").is_empty()).await;
    let reset = &r.sink.resets("roll:1")[0];
    assert_ne!(
        reset.epoch, epoch,
        "offsets 3 and 4 were given twice: a new epoch"
    );
    assert_eq!(reset.offset, 4);
    let next = p
        .engine
        .publish(request("roll:1", 10))
        .await
        .expect("publish");
    assert_eq!((next.offset, &next.epoch), (5, &reset.epoch));
    until("the next one", || {
        r.sink.offsets("roll:1").last() == Some(&5)
    })
    .await;
}

#[tokio::test]
async fn user_counts_come_back_after_redis_restarts_empty() {
    let mut server = RedisServer::start_with(&["--appendonly", "no"]);
    let prefix = testing::unique_prefix("users");
    let (engine, a) = node(&server.url, &prefix, "a").await;
    let carol: Arc<str> = "carol".into();
    a.engine.user_connections_changed(&carol, 2);
    a.engine
        .announce(NodeFigures {
            name: "a".into(),
            ..NodeFigures::default()
        })
        .await
        .expect("announce");
    let count = || async { a.engine.user_connections("carol").await.ok().flatten() };
    for _ in 0..100 {
        if count().await == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count().await, Some(2));
    server.stop();
    server.restart();
    until("links back", || {
        engine.links_up() && engine.counters().link_reconnects > 0
    })
    .await;
    let mut seen = None;
    for _ in 0..200 {
        seen = count().await;
        if seen == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(seen, Some(2), "written again after Redis lost it");
}

#[tokio::test]
async fn channels_repaired_while_redis_loads_its_data_get_every_publication() {
    let mut server =
        RedisServer::start_with(&["--appendfsync", "everysec", "--enable-debug-command", "yes"]);
    let prefix = testing::unique_prefix("loading");
    let (engine, r) = node(&server.url, &prefix, "r").await;
    let (_, p) = node(&server.url, &prefix, "p").await;
    let names: Vec<String> = (0..200).map(|i| format!("load:{i}")).collect();
    subscribe_then_publish_once(&r, &p, &names, 10).await;
    // Enough data that loading it after the restart takes a while.
    let cli = |args: &[&str]| {
        let status = std::process::Command::new("redis-cli")
            .args(["-p", &server.port.to_string()])
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(status.success());
    };
    cli(&["DEBUG", "POPULATE", "2000000"]);
    cli(&["BGREWRITEAOF"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.stop();
    server.restart_without_waiting();
    until("links back", || {
        engine.links_up() && engine.counters().link_reconnects >= 4
    })
    .await;
    for name in &names {
        loop {
            match p.engine.publish(request(name, 10)).await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    for name in &names {
        until("both", || r.sink.offsets(name).len() >= 2).await;
        assert_eq!(r.sink.offsets(name), [1, 2], "{name}");
    }
}
