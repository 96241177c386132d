//! Several real `herald` processes with `engine = "redis"` on one real Redis: clients spread over
//! the nodes, publications sent to any node, a node killed, Redis stopped and hung.

use std::time::Duration;

use futures_util::StreamExt;
use herald_redis::testing::{self, RedisServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// The top-level keys of a node named `name` on the Redis at `url`, under `prefix`.
fn node_config(url: &str, prefix: &str, name: &str) -> String {
    format!(
        "engine = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{prefix}\"\n\
         node_name = \"{name}\"\nredis_presence_ttl = \"2s\"\nredis_timeout = \"500ms\""
    )
}

/// Namespaces with presence (`room`) and with history (`log`), besides the harness's `feed` and
/// `chat`.
const ROOM: &str = "[[namespace]]\nname = \"room\"\npresence = true\njoin_leave = true\n\
                    [[namespace]]\nname = \"log\"\nhistory_size = 1000\nhistory_ttl = \"5m\"\n";

fn start_nodes(url: &str, prefix: &str, count: usize) -> Vec<ServerProcess> {
    (1..=count)
        .map(|i| ServerProcess::start_with(&node_config(url, prefix, &format!("n{i}")), ROOM))
        .collect()
}

/// What a client has received of one channel: `(offset, epoch)` in arrival order.
#[derive(Default)]
struct Seen {
    offsets: Vec<u64>,
    epoch: String,
    /// How many offsets each connection (the first, then each after a reconnect) brought.
    per_connection: Vec<usize>,
}

impl Seen {
    fn take(&mut self, frame: &Value) {
        match frame["type"].as_str() {
            Some("message") => self.offsets.push(frame["offset"].as_u64().unwrap()),
            Some("subscribed") => self.epoch = frame["epoch"].as_str().unwrap().to_string(),
            _ => {}
        }
    }

    /// Marks the start of a new connection's deliveries.
    fn reconnected(&mut self) {
        self.per_connection.push(self.offsets.len());
    }

    fn last(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }
}

/// The next JSON frame, or `None` once the connection is gone (closed, reset, or silent for
/// `wait`).
async fn next_or_gone(client: &mut Client, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, client.socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// Reads `client`'s messages of its channel into `seen` until it has `until`.
async fn read_until(client: &mut Client, seen: &mut Seen, until: u64) {
    while seen.last() < until {
        let frame = next_or_gone(client, patience())
            .await
            .unwrap_or_else(|| panic!("connection ended at offset {}", seen.last()));
        seen.take(&frame);
    }
}

/// Publishes `data` to `channel` through `node`'s API; returns the offset, or the error body.
async fn publish(node: &TestServer, channel: &str, n: u64) -> Result<u64, (u16, Value)> {
    let (status, body) = node
        .post(
            "/api/publish",
            json!({"channel": channel, "data": {"n": n}}),
        )
        .await;
    match (status, body["offset"].as_u64()) {
        (200, Some(offset)) => Ok(offset),
        _ => Err((status, body)),
    }
}

#[tokio::test]
async fn three_nodes_deliver_every_publication_once_in_offset_order() {
    let prefix = testing::unique_prefix("it.three");
    let nodes = start_nodes(&testing::shared().url, &prefix, 3);
    let handles: Vec<TestServer> = nodes.iter().map(ServerProcess::handle).collect();
    let mut clients = Vec::new();
    for (i, node) in handles.iter().enumerate() {
        for u in 0..2 {
            let mut client = node.connect(&format!("u{i}{u}")).await;
            client.subscribed("chat:all").await;
            clients.push(client);
        }
    }
    for n in 0..60u64 {
        let node = &handles[(n * 7 % 3) as usize];
        publish(node, "chat:all", n).await.expect("published");
    }
    let expected: Vec<u64> = (1..=60).collect();
    for client in &mut clients {
        let mut seen = Seen::default();
        read_until(client, &mut seen, 60).await;
        assert_eq!(seen.offsets, expected, "{}", client.user);
        client.assert_silent(Duration::from_millis(100)).await;
    }

    // Every node answers for the cluster.
    let (status, stats) = handles[1].get("/api/stats").await;
    assert_eq!(status, 200, "{stats}");
    let names: Vec<&str> = stats["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    assert_eq!(stats["node"]["name"], "n2");
    assert_eq!(stats["engine"], "redis");
    eventually("the cluster counts six connections", async || {
        let (_, stats) = handles[2].get("/api/stats").await;
        stats["cluster"]["connections"] == 6
    })
    .await;
    eventually("a user on n1 is online seen from n3", async || {
        let (_, user) = handles[2].get("/api/users/u00").await;
        user["online"] == true && user["connections"] == 1
    })
    .await;
    let ready = reqwest::get(handles[0].url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_killed_nodes_clients_recover_everything_on_another_node() {
    let prefix = testing::unique_prefix("it.kill");
    let mut nodes = start_nodes(&testing::shared().url, &prefix, 3);
    let handles: Vec<TestServer> = nodes.iter().map(ServerProcess::handle).collect();
    let mut victims = Vec::new();
    for u in 0..2 {
        let mut client = handles[2].connect(&format!("v{u}")).await;
        let mut seen = Seen::default();
        seen.take(&client.subscribed("log:k").await);
        victims.push((client, seen));
    }
    let mut watcher = handles[0].connect("w").await;
    watcher.subscribed("log:k").await;

    const TOTAL: u64 = 150;
    let publishers = [nodes[0].handle(), nodes[1].handle()];
    let publishing = tokio::spawn(async move {
        for n in 1..=TOTAL {
            let node = &publishers[(n % 2) as usize];
            assert_eq!(publish(node, "log:k", n).await.expect("published"), n);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // Mid-stream, node 3 dies without a word.
    for (client, seen) in &mut victims {
        read_until(client, seen, 40).await;
    }
    nodes[2].child.kill().unwrap();
    for (client, seen) in &mut victims {
        // What was on the wire still arrives; then the connection is gone.
        while let Some(frame) = next_or_gone(client, Duration::from_secs(3)).await {
            seen.take(&frame);
        }
        let mut again = handles[0].connect(&client.user.clone()).await;
        let reply = again
            .subscribe_with(
                "log:k",
                json!({"since": {"offset": seen.last(), "epoch": seen.epoch}}),
            )
            .await;
        assert_eq!(reply["recovered"], true, "{reply}");
        seen.reconnected();
        *client = again;
    }
    let mut watched = Seen::default();
    read_until(&mut watcher, &mut watched, TOTAL).await;
    assert_eq!(
        watched.offsets,
        (1..=TOTAL).collect::<Vec<_>>(),
        "the watcher"
    );
    for (client, seen) in &mut victims {
        read_until(client, seen, TOTAL).await;
        let expected: Vec<u64> = (1..=TOTAL).collect();
        assert_eq!(
            seen.offsets,
            expected,
            "none lost, none twice ({} offsets before the reconnect)",
            seen.per_connection.first().copied().unwrap_or(0)
        );
    }
    publishing.await.unwrap();
}

#[tokio::test]
async fn presence_spans_nodes_and_drops_a_killed_nodes_clients() {
    let prefix = testing::unique_prefix("it.presence");
    let mut nodes = start_nodes(&testing::shared().url, &prefix, 2);
    let a = nodes[0].handle();
    let b = nodes[1].handle();
    let mut on_a = a.connect("alice").await;
    on_a.subscribed("room:1").await;
    let mut on_b = b.connect("bob").await;
    on_b.subscribed("room:1").await;
    // Joins travel across nodes too.
    let join = on_a.next_of("join").await;
    assert_eq!(join["user"], "bob", "{join}");

    let (status, presence) = b.get("/api/channels/room:1/presence").await;
    assert_eq!(status, 200, "{presence}");
    assert_eq!(presence["users"], 2);
    let reply = on_b
        .request(json!({"type": "presence", "channel": "room:1"}))
        .await;
    assert_eq!(reply["result"]["connections"], 2, "{reply}");

    nodes[0].child.kill().unwrap();
    // Node a never says goodbye: its entries expire (redis_presence_ttl = 2s).
    eventually("alice leaves presence after node a dies", async || {
        let (_, presence) = b.get("/api/channels/room:1/presence").await;
        presence["users"] == 1 && presence["connections"] == 1
    })
    .await;
    let beats = herald_redis::NODE_BEAT * 3;
    eventually_within(beats, "node a leaves the registry", async || {
        let (_, stats) = b.get("/api/stats").await;
        stats["nodes"].as_array().is_some_and(|n| n.len() == 1)
    })
    .await;
}

/// Runs a stream of publications through node 1 while Redis is out for two seconds (`begin`,
/// then `end`), with clients on both nodes; checks that clients stay connected and can ping
/// during the outage, that no node is ready meanwhile, that publishing during it fails with
/// `unavailable`, that no acknowledged publication is lost or repeated, and that both nodes are
/// ready again by themselves.
async fn survive(begin: impl FnOnce(&mut RedisServer), end: impl FnOnce(&mut RedisServer)) {
    let mut redis = RedisServer::start();
    let prefix = testing::unique_prefix("it.outage");
    let nodes = start_nodes(&redis.url, &prefix, 2);
    let handles: Vec<TestServer> = nodes.iter().map(ServerProcess::handle).collect();
    let mut clients = Vec::new();
    for (i, node) in handles.iter().enumerate() {
        let mut client = node.connect(&format!("c{i}")).await;
        client.subscribed("log:o").await;
        clients.push((client, Seen::default()));
    }
    let publisher = nodes[0].handle();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let publishing = tokio::spawn(async move {
        let (mut acknowledged, mut refused) = (Vec::new(), 0u32);
        let mut n = 0;
        while !*stopped.borrow_and_update() {
            n += 1;
            match publish(&publisher, "log:o", n).await {
                Ok(offset) => acknowledged.push(offset),
                Err((status, body)) => {
                    assert_eq!(status, 503, "{body}");
                    assert_eq!(body["error"]["code"], "unavailable", "{body}");
                    refused += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (acknowledged, refused)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    begin(&mut redis);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for node in &handles {
        let ready = reqwest::get(node.url("/ready")).await.unwrap();
        assert_eq!(ready.status(), 503, "not ready while Redis is out");
    }
    for (client, seen) in &mut clients {
        client.send(json!({"type": "ping", "id": "during"})).await;
        loop {
            let frame = next_or_gone(client, patience())
                .await
                .expect("still connected");
            seen.take(&frame);
            if frame["id"] == "during" {
                assert!(frame["result"]["pong"].is_u64(), "{frame}");
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    end(&mut redis);
    for node in &handles {
        eventually("ready again", async || {
            reqwest::get(node.url("/ready"))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    for node in &handles {
        // Each node's links came back (and say so in its metrics).
        assert!(node.metric("herald_engine_link_reconnects_total").await >= 1.0);
        assert_eq!(node.metric("herald_engine_links_down").await, 0.0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(true).unwrap();
    let (acknowledged, refused) = publishing.await.unwrap();
    assert!(refused > 0, "publishing during the outage was refused");
    let last = *acknowledged.last().expect("some acknowledged");
    for (client, seen) in &mut clients {
        read_until(client, seen, last).await;
        assert!(
            seen.offsets.windows(2).all(|w| w[0] < w[1]),
            "in order, none twice: {:?}",
            seen.offsets
        );
        for offset in &acknowledged {
            assert!(seen.offsets.contains(offset), "acknowledged {offset} lost");
        }
        let pong = client.request(json!({"type": "ping"})).await;
        assert!(pong["result"]["pong"].is_u64(), "{pong}");
    }
}

#[tokio::test]
async fn redis_stopped_mid_stream_loses_nothing_acknowledged() {
    survive(RedisServer::stop, RedisServer::restart).await;
}

#[tokio::test]
async fn redis_hung_mid_stream_loses_nothing_acknowledged() {
    survive(|r| r.freeze(), |r| r.thaw()).await;
}
