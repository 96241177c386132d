//! Webhooks against a real HTTP backend started in the test: signed batches, retries while the
//! backend fails or hangs (with clients unaffected), a reload within the grace period, the
//! queue's bound under a burst of connections, and once per cluster on two Redis nodes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use herald::config::Config;
use herald_core::{Identity, Recovery};
use herald_redis::testing::{self, RedisServer};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::common::*;

const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";

/// How the backend answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    Fail,
    Hang,
}

/// One request the backend received.
#[derive(Debug, Clone)]
struct Received {
    /// The path's last segment (which node sent it, in the cluster test).
    node: String,
    body: Bytes,
    headers: HeaderMap,
    /// Whether it was answered 200.
    accepted: bool,
    /// When it arrived.
    at: Instant,
}

/// A backend that records every request and answers as its mode says.
#[derive(Clone)]
struct Backend {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    mode: Arc<Mutex<Mode>>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Accept)),
        };
        let app = Router::new()
            .route("/events/{node}", post(receive))
            .with_state(backend.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        backend
    }

    fn url(&self, node: &str) -> String {
        format!("http://{}/events/{node}", self.addr)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }

    fn requests(&self) -> Vec<Received> {
        self.received.lock().clone()
    }

    /// Every event of every accepted request, in arrival order.
    fn events(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.accepted)
            .flat_map(|r| {
                let body: Value = serde_json::from_slice(&r.body).unwrap();
                body["events"].as_array().unwrap().clone()
            })
            .collect()
    }

    /// The accepted events of `kind` about `field` = `value`.
    fn count(&self, kind: &str, field: &str, value: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["type"] == kind && e[field] == value)
            .count()
    }
}

async fn receive(
    State(backend): State<Backend>,
    Path(node): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mode = *backend.mode.lock();
    backend.received.lock().push(Received {
        node,
        body,
        headers,
        accepted: mode == Mode::Accept,
        at: Instant::now(),
    });
    match mode {
        Mode::Accept => StatusCode::OK,
        Mode::Fail => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK
        }
    }
}

/// The test configuration with webhooks to `url`.
fn config(url: String, grace: Duration) -> Config {
    let mut config = TestServer::config();
    config.webhooks.url = url;
    config.webhooks.secret = WEBHOOK_SECRET.into();
    config.webhooks.grace = grace;
    config.webhooks.timeout = Duration::from_millis(300);
    config
}

/// `sha256=<hex>` of the body, as the backend computes it to check a request.
fn expected_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!(
        "sha256={}",
        base16ct::lower::encode_string(&mac.finalize().into_bytes())
    )
}

/// Every request is signed over its exact body, and each event names what it is about: a user
/// online and offline, a channel occupied and vacated, a presence join and leave with the
/// connection's id. Personal channels are not reported.
#[tokio::test]
async fn batches_are_signed_and_name_what_they_are_about() {
    let backend = Backend::start().await;
    let server = TestServer::start(config(backend.url("one"), Duration::from_millis(200))).await;
    let before = herald_core::publication::now_millis();
    let mut alice = server.connect("alice").await;
    alice.subscribed("lobby:1").await;
    eventually("online, occupied and joined", async || {
        backend.events().len() >= 3
    })
    .await;
    let client = alice.client_id.clone();
    drop(alice);
    eventually("left, vacated and offline", async || {
        backend.events().len() >= 6
    })
    .await;
    tokio::time::sleep(QUIET).await;

    let mut events = backend.events();
    for event in &mut events {
        let ts = event["ts"].as_u64().unwrap();
        assert!(ts >= before && ts <= herald_core::publication::now_millis());
        event.as_object_mut().unwrap().remove("ts");
    }
    events.sort_by_key(|e| e["type"].as_str().unwrap().to_string());
    assert_eq!(
        events,
        [
            json!({"type": "channel_occupied", "channel": "lobby:1"}),
            json!({"type": "channel_vacated", "channel": "lobby:1"}),
            json!({"type": "presence_join", "channel": "lobby:1", "user": "alice", "client": client}),
            json!({"type": "presence_leave", "channel": "lobby:1", "user": "alice", "client": client}),
            json!({"type": "user_offline", "user": "alice"}),
            json!({"type": "user_online", "user": "alice"}),
        ]
    );
    for request in backend.requests() {
        let signature = request.headers["x-herald-signature"].to_str().unwrap();
        assert_eq!(signature, expected_signature(&request.body));
        assert_ne!(signature, expected_signature(b"{}"), "over this body");
        assert_eq!(request.headers["content-type"], "application/json");
        let agent = request.headers["user-agent"].to_str().unwrap();
        assert!(agent.starts_with("herald/"), "{agent}");
    }
    server
        .assert_metric_at_least("herald_webhook_events_total{type=\"user_online\"}", 1.0)
        .await;
    server
        .assert_metric_at_least("herald_webhook_requests_total{result=\"ok\"}", 1.0)
        .await;
    assert_eq!(
        server
            .metric("herald_webhook_events_dropped_total{reason=\"queue_full\"}")
            .await,
        0.0
    );
}

/// While the backend answers 500 and then hangs past `timeout`, the batch is tried again with
/// growing waits, and clients connect, subscribe and receive as usual; once the backend
/// recovers, the batch arrives, once.
#[tokio::test]
async fn a_failing_or_hanging_backend_gets_retries_and_clients_are_unaffected() {
    let backend = Backend::start().await;
    backend.set(Mode::Fail);
    let server = TestServer::start(config(backend.url("one"), Duration::from_millis(200))).await;
    let _alice = server.connect("alice").await;
    eventually("two failed tries", async || backend.requests().len() >= 2).await;
    server
        .assert_metric_at_least("herald_webhook_requests_total{result=\"error\"}", 2.0)
        .await;

    // Meanwhile, a client goes about its business at its usual pace.
    let started = Instant::now();
    let mut bob = server.connect("bob").await;
    bob.subscribed("chat:1").await;
    server.publish("chat:1", json!({"n": 1})).await;
    assert_eq!(bob.next_message().await["data"], json!({"n": 1}));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the client waited {:?}",
        started.elapsed()
    );

    backend.set(Mode::Hang);
    eventually_within(Duration::from_secs(4), "a try that timed out", async || {
        server
            .try_metric("herald_webhook_requests_total{result=\"timeout\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    let started = Instant::now();
    let mut carol = server.connect("carol").await;
    carol.subscribed("chat:1").await;
    server.publish("chat:1", json!({"n": 2})).await;
    assert_eq!(carol.next_message().await["data"], json!({"n": 2}));
    assert!(started.elapsed() < Duration::from_secs(1));

    backend.set(Mode::Accept);
    eventually_within(
        Duration::from_secs(8),
        "the batch, once the backend is back",
        async || backend.count("user_online", "user", "alice") == 1,
    )
    .await;
    eventually("bob's and carol's too", async || {
        backend.count("user_online", "user", "bob") == 1
            && backend.count("user_online", "user", "carol") == 1
    })
    .await;
    // One batch at a time: each failed try was of alice's batch, each wait at least as long as
    // the one before (half of a doubling base, and up to all of it).
    let tries: Vec<Instant> = backend.requests().iter().map(|r| r.at).collect();
    let failed = backend.requests().iter().filter(|r| !r.accepted).count();
    assert!(failed >= 3, "{failed} failed tries");
    let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(250), "{gaps:?}");
    assert!(
        gaps.windows(2)
            .take(failed - 1)
            .all(|g| g[1] + Duration::from_millis(20) >= g[0]),
        "waits grow: {gaps:?}"
    );
    assert_eq!(backend.count("user_online", "user", "alice"), 1);
    assert_eq!(
        server
            .metric("herald_webhook_events_dropped_total{reason=\"attempts_exhausted\"}")
            .await,
        0.0
    );
}

/// A page reload (disconnect and reconnect of the same user, unsubscribe and subscribe again of
/// the same channel) within the grace period sends nothing; leaving for good sends the offline
/// and vacated events once.
#[tokio::test]
async fn a_reload_within_the_grace_period_sends_nothing() {
    let backend = Backend::start().await;
    let grace = Duration::from_secs(1);
    let server = TestServer::start(config(backend.url("one"), grace)).await;
    let mut alice = server.connect("alice").await;
    alice.subscribed("chat:1").await;
    eventually("online and occupied", async || {
        backend.count("user_online", "user", "alice") == 1
            && backend.count("channel_occupied", "channel", "chat:1") == 1
    })
    .await;

    drop(alice);
    let mut alice = server.connect("alice").await;
    alice.subscribed("chat:1").await;
    let reply = alice
        .request(json!({"type": "unsubscribe", "channel": "chat:1"}))
        .await;
    assert_eq!(reply["type"], "unsubscribed", "{reply}");
    alice.subscribed("chat:1").await;
    tokio::time::sleep(grace * 2).await;
    assert_eq!(backend.count("user_online", "user", "alice"), 1);
    assert_eq!(backend.count("user_offline", "user", "alice"), 0);
    assert_eq!(backend.count("channel_occupied", "channel", "chat:1"), 1);
    assert_eq!(backend.count("channel_vacated", "channel", "chat:1"), 0);

    drop(alice);
    eventually_within(grace, "offline and vacated", async || {
        backend.count("user_offline", "user", "alice") == 1
            && backend.count("channel_vacated", "channel", "chat:1") == 1
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(backend.events().len(), 4, "{:?}", backend.events());
}

/// 10,000 distinct users connect (and, 100 ms later, disconnect) within a second against a queue
/// of 100 and a backend that hangs: the queue never holds more than its bound, what does not fit is counted
/// as dropped, and a client connects, subscribes and receives meanwhile as usual.
#[tokio::test]
async fn the_queue_holds_its_bound_under_ten_thousand_connects_a_second() {
    let backend = Backend::start().await;
    backend.set(Mode::Hang);
    let mut config = config(backend.url("one"), Duration::ZERO);
    config.webhooks.queue_size = 100;
    config.webhooks.batch_size = 10;
    config.webhooks.pending_size = 1_000;
    config.webhooks.timeout = Duration::from_secs(2);
    let server = TestServer::start(config).await;
    let app = server.app();
    let webhooks = app.webhooks.clone().unwrap();

    let hub = app.hub.clone();
    let burst = tokio::spawn(async move {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        // Each user stays connected for ten rounds (100 ms), long enough to be seen online.
        let mut connected = std::collections::VecDeque::new();
        for round in 0..100 {
            tick.tick().await;
            let mut sessions = Vec::with_capacity(100);
            for i in 0..100 {
                let identity = Identity::new(format!("burst-{round}-{i}"));
                let (session, _) = hub.connect(identity, Recovery::Live).await.unwrap();
                sessions.push(session);
            }
            connected.push_back(sessions);
            if connected.len() > 10 {
                connected.pop_front();
            }
        }
        let took = started.elapsed();
        drop(connected);
        took
    });

    let mut worst_queue = 0;
    let mut worst_pending = 0;
    let mut served = Vec::new();
    let mut client = 0;
    while !burst.is_finished() {
        worst_queue = worst_queue.max(app.metrics.webhook_queue.get());
        worst_pending = worst_pending.max(webhooks.pending());
        if client < 3 {
            // A client is served as usual meanwhile.
            let started = Instant::now();
            let channel = format!("chat:calm-{client}");
            let mut calm = server.connect(&format!("calm-{client}")).await;
            calm.subscribed(&channel).await;
            server.publish(&channel, json!({"n": client})).await;
            assert_eq!(calm.next_message().await["data"], json!({"n": client}));
            served.push(started.elapsed());
            client += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = burst.await.unwrap();
    let dropped = server
        .metric("herald_webhook_events_dropped_total{reason=\"queue_full\"}")
        .await;
    println!(
        "10,000 connects and disconnects in {took:?}; clients served in {served:?}; \
         {dropped} events dropped"
    );
    assert!(worst_queue <= 100, "the queue held {worst_queue}");
    assert!(worst_pending <= 1_000, "{worst_pending} pending");
    let now = app.metrics.webhook_queue.get();
    assert!(now <= 100, "the queue holds {now}");
    assert!(dropped > 1_000.0, "{dropped} dropped");
    assert!(
        served.iter().all(|t| *t < Duration::from_secs(2)),
        "{served:?}"
    );
    // And the server still answers at once.
    let started = Instant::now();
    let (status, _) = server.get("/api/stats").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// The same bound over real sockets: 10,000 distinct users each open a WebSocket (token in the
/// query string), get `connected`, stay 200 ms (long enough to be reported online) and go, up to
/// 1,024 at a time, as fast as the machine allows (the rate is printed), against a backend that
/// hangs and a queue of 100.
#[tokio::test]
async fn the_queue_holds_its_bound_under_a_burst_of_websocket_connections() {
    use futures_util::StreamExt;

    let backend = Backend::start().await;
    backend.set(Mode::Hang);
    let mut config = config(backend.url("one"), Duration::ZERO);
    config.webhooks.queue_size = 100;
    config.webhooks.batch_size = 10;
    config.webhooks.timeout = Duration::from_secs(2);
    let server = TestServer::start(config).await;
    let app = server.app();
    let tokens: Vec<String> = (0..10_000)
        .map(|i| server.token(&format!("socket-{i}")))
        .collect();
    let url = server.ws_url();
    let burst = tokio::spawn(async move {
        let started = Instant::now();
        let mut opening = tokio::task::JoinSet::new();
        for token in tokens {
            while opening.len() >= 1_024 {
                opening.join_next().await.unwrap().unwrap();
            }
            let url = format!("{url}?token={token}");
            opening.spawn(async move {
                let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                let connected = socket.next().await.unwrap().unwrap();
                assert!(connected.to_text().unwrap().contains("\"connected\""));
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        }
        while let Some(done) = opening.join_next().await {
            done.unwrap();
        }
        started.elapsed()
    });
    let mut worst_queue = 0;
    while !burst.is_finished() {
        worst_queue = worst_queue.max(app.metrics.webhook_queue.get());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = burst.await.unwrap();
    let dropped = server
        .metric("herald_webhook_events_dropped_total{reason=\"queue_full\"}")
        .await;
    println!(
        "10,000 WebSocket connects in {took:?} ({:.0} a second); the queue held at most \
         {worst_queue}; {dropped} events dropped",
        10_000.0 / took.as_secs_f64()
    );
    assert!(worst_queue <= 100, "the queue held {worst_queue}");
    assert!(dropped > 1_000.0, "{dropped} dropped");
    let started = Instant::now();
    let (status, _) = server.get("/api/stats").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Two nodes on one Redis: a user who moves from node A to node B within the grace period is
/// online once and never offline; a channel with subscribers on both nodes is occupied once and
/// vacated only when the last one leaves; leaving everywhere sends one offline across both
/// nodes' webhooks.
#[tokio::test]
async fn each_change_is_sent_once_per_cluster() {
    let redis = RedisServer::start();
    let backend = Backend::start().await;
    let grace = Duration::from_secs(1);
    let prefix = testing::unique_prefix("it.webhooks");
    let node = |name: &str| {
        let mut config = config(backend.url(name), grace);
        config.engine = herald::config::EngineKind::Redis;
        config.redis_url = redis.url.clone();
        config.redis_prefix = prefix.clone();
        config.node_name = name.into();
        config
    };
    let a = TestServer::start(node("a")).await;
    let b = TestServer::start(node("b")).await;

    let mut alice = a.connect("alice").await;
    alice.subscribed("chat:7").await;
    let mut bob = b.connect("bob").await;
    bob.subscribed("chat:7").await;
    eventually("alice online, chat:7 occupied", async || {
        backend.count("user_online", "user", "alice") == 1
            && backend.count("channel_occupied", "channel", "chat:7") == 1
    })
    .await;

    // Alice moves to node B; chat:7 keeps bob on B while A loses its last subscriber.
    drop(alice);
    let mut alice = b.connect("alice").await;
    alice.subscribed("chat:7").await;
    tokio::time::sleep(grace * 3).await;
    assert_eq!(backend.count("user_online", "user", "alice"), 1);
    assert_eq!(backend.count("user_offline", "user", "alice"), 0);
    assert_eq!(backend.count("channel_occupied", "channel", "chat:7"), 1);
    assert_eq!(backend.count("channel_vacated", "channel", "chat:7"), 0);

    // Bob moves to A; then everybody leaves.
    drop(bob);
    let bob = a.connect("bob").await;
    tokio::time::sleep(grace * 2).await;
    assert_eq!(backend.count("user_online", "user", "bob"), 1);
    assert_eq!(backend.count("user_offline", "user", "bob"), 0);
    drop(alice);
    drop(bob);
    eventually_within(grace, "offline and vacated", async || {
        backend.count("user_offline", "user", "alice") == 1
            && backend.count("user_offline", "user", "bob") == 1
            && backend.count("channel_vacated", "channel", "chat:7") == 1
    })
    .await;
    tokio::time::sleep(grace * 2).await;
    for (kind, field, value) in [
        ("user_online", "user", "alice"),
        ("user_offline", "user", "alice"),
        ("user_online", "user", "bob"),
        ("user_offline", "user", "bob"),
        ("channel_occupied", "channel", "chat:7"),
        ("channel_vacated", "channel", "chat:7"),
    ] {
        assert_eq!(backend.count(kind, field, value), 1, "{kind} {value}");
    }
    let nodes: std::collections::BTreeSet<String> =
        backend.requests().into_iter().map(|r| r.node).collect();
    println!("events sent by nodes {nodes:?}");
}

/// A bad `[webhooks]` key is refused, naming the key.
#[test]
fn configuration_errors_name_the_key() {
    let base =
        "[auth]\njwt_secret = \"0123456789abcdef0123\"\n[api]\nkeys = [\"0123456789abcdef\"]\n";
    let cases = [
        (
            "url = \"backend/events\"\nsecret = \"0123456789abcdef\"",
            "webhooks.url",
        ),
        (
            "url = \"ftp://backend/events\"\nsecret = \"0123456789abcdef\"",
            "webhooks.url",
        ),
        ("url = \"http://backend/events\"", "webhooks.secret"),
        (
            "url = \"http://b/e\"\nsecret = \"0123456789abcdef\"\ngrace = \"a while\"",
            "webhooks.grace",
        ),
        (
            "url = \"http://b/e\"\nsecret = \"0123456789abcdef\"\ntimeout = \"0s\"",
            "webhooks.timeout",
        ),
        (
            "url = \"http://b/e\"\nsecret = \"0123456789abcdef\"\ntimeout = \"2m\"",
            "webhooks.timeout",
        ),
        (
            "events = [\"user_online\", \"user_typing\"]",
            "webhooks.events",
        ),
        (
            "url = \"http://b/e\"\nsecret = \"0123456789abcdef\"\nbatch_size = 0",
            "webhooks.batch_size",
        ),
        ("retries = 3", "retries"),
    ];
    for (webhooks, key) in cases {
        let text = format!("{base}[webhooks]\n{webhooks}\n");
        let err = Config::from_toml(&text).expect_err(key).to_string();
        assert!(err.contains(key), "{err:?} should name {key}");
    }
    let redis = format!(
        "engine = \"redis\"\n{base}[webhooks]\nurl = \"http://b/e\"\n\
         secret = \"0123456789abcdef\"\ngrace = \"200ms\"\n"
    );
    let err = Config::from_toml(&redis).expect_err("grace").to_string();
    assert!(err.contains("webhooks.grace"), "{err}");
    let fine = format!("{base}[webhooks]\nurl = \"http://b/e\"\nsecret = \"0123456789abcdef\"\n");
    let config = Config::from_toml(&fine).expect("valid");
    assert_eq!(config.webhooks.grace, Duration::from_secs(5));
    assert_eq!(config.webhooks.events.len(), 6);
}
