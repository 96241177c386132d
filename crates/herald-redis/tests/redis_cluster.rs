//! The Redis engine on a Redis Cluster of three masters: the engine contract, and channels
//! spread over every master through sharded pub/sub.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use herald_core::engine::conformance::Node;
use herald_core::engine::{HistoryPolicy, PublishRequest};
use herald_core::{ChannelName, Engine};
use herald_redis::testing::{self, RedisCluster};
use herald_redis::{RedisConfig, RedisEngine};
use serde_json::value::RawValue;

fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

fn config(name: &str) -> RedisConfig {
    let mut config = RedisConfig::new("");
    config.cluster_nodes = cluster().urls();
    config.prefix = testing::unique_prefix(name);
    config
}

/// A publication of `data` to `name`, which keeps ten.
fn request(name: &str, data: &str) -> PublishRequest {
    PublishRequest {
        channel: ChannelName::parse(name).expect("channel"),
        event: None,
        data: RawValue::from_string(data.into()).expect("json"),
        from: None,
        history: HistoryPolicy {
            size: 10,
            ttl: Duration::from_secs(60),
        },
        idempotency: None,
    }
}

async fn engine() -> Arc<dyn Engine> {
    Arc::new(
        RedisEngine::connect(config("cluster"))
            .await
            .expect("connect"),
    )
}

herald_core::engine_conformance_tests!(engine());

#[tokio::test]
async fn channels_on_every_master_reach_every_node_in_order() {
    let config = config("spread");
    let a = RedisEngine::connect(config.clone()).await.expect("connect");
    let b = RedisEngine::connect(config).await.expect("connect");
    let receiver = Node::attach(Arc::new(b.clone()));
    // Channels whose partitions land on each of the three masters.
    let names: Vec<String> = (0..30).map(|i| format!("spread:{i}")).collect();
    let masters: std::collections::BTreeSet<u16> = names
        .iter()
        .map(|n| {
            let tag = a.keys().tag(a.keys().partition(n));
            herald_redis::keys::slot(tag.as_bytes()) * 3 / 16_384
        })
        .collect();
    assert_eq!(masters.len(), 3, "the channels span the three masters");
    for name in &names {
        let channel = ChannelName::parse(name).expect("channel");
        receiver
            .engine
            .node_subscribe(&channel)
            .await
            .expect("subscribe");
    }
    for round in 0..3 {
        for name in &names {
            a.publish(request(name, &round.to_string()))
                .await
                .expect("publish");
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for name in &names {
        while receiver.sink.offsets(name).len() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(receiver.sink.offsets(name), [1, 2, 3]);
    }
    assert!(b.links_up());
}

#[tokio::test]
async fn a_failed_over_master_s_channels_move_to_the_promoted_replica() {
    let mut cluster = RedisCluster::start_with_replicas(1);
    let mut config = RedisConfig::new("");
    config.cluster_nodes = cluster.urls();
    config.prefix = testing::unique_prefix("failover");
    config.timeout = Duration::from_millis(500);
    let publisher = RedisEngine::connect(config.clone()).await.expect("connect");
    let engine = RedisEngine::connect(config).await.expect("connect");
    let receiver = Node::attach(Arc::new(engine.clone()));
    let names: Vec<String> = (0..30).map(|i| format!("fo:{i}")).collect();
    for name in &names {
        let channel = ChannelName::parse(name).expect("channel");
        receiver
            .engine
            .node_subscribe(&channel)
            .await
            .expect("subscribe");
    }
    let publish = |name: &str| request(name, "1");
    for name in &names {
        publisher.publish(publish(name)).await.expect("publish");
    }
    // The master of the first channel's partition dies without a word.
    let slot = herald_redis::keys::slot(
        engine
            .keys()
            .tag(engine.keys().partition(&names[0]))
            .as_bytes(),
    );
    let victim = cluster.master_of(slot).expect("a master");
    cluster.masters[victim].kill();
    // Publishing to its partitions fails until its replica has taken over, then goes on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for name in &names {
        while let Err(e) = publisher.publish(publish(name)).await {
            assert!(tokio::time::Instant::now() < deadline, "no failover: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for name in &names {
        while receiver.sink.offsets(name).len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: {:?}",
                receiver.sink.offsets(name)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(receiver.sink.offsets(name), [1, 2], "{name}");
    }
    while !engine.links_up() {
        assert!(tokio::time::Instant::now() < deadline, "links never all up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
