//! The backend's hooks against a real HTTP backend started in the test: each way a backend can
//! answer (allow, deny, rewrite, slow, 500, not JSON) and what the client gets for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use herald::config::{Config, NamespaceConfig};
use herald_core::SubscribePolicy;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::common::{assert_closed_with, publication_offsets, Client, TestServer, QUIET};

/// How long Herald waits for the backend in these tests.
const HOOK_TIMEOUT: Duration = Duration::from_millis(300);

/// One request the backend received.
#[derive(Debug, Clone)]
struct Seen {
    hook: &'static str,
    body: Value,
    headers: HeaderMap,
}

/// A backend whose answer depends on what it is asked about: the cookie `session=<case>` for
/// connect, the part after the colon of the channel for subscribe and publish.
#[derive(Clone, Default)]
struct Backend {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    async fn start() -> (Backend, SocketAddr) {
        let backend = Backend::default();
        let app = Router::new()
            .route("/connect", post(connect))
            .route("/subscribe", post(subscribe))
            .route("/publish", post(publish))
            .with_state(backend.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (backend, addr)
    }

    fn record(&self, hook: &'static str, headers: &HeaderMap, body: &Value) {
        self.seen.lock().push(Seen {
            hook,
            body: body.clone(),
            headers: headers.clone(),
        });
    }

    fn seen(&self, hook: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .iter()
            .filter(|s| s.hook == hook)
            .cloned()
            .collect()
    }
}

/// The common failure cases, by name; `None` for the others.
async fn failure(case: &str) -> Option<Response> {
    match case {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Some(Json(json!({"allow": true, "user": "late"})).into_response())
        }
        "500" => Some((StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()),
        "garbage" => Some("<html>not json</html>".into_response()),
        "noallow" => Some(Json(json!({"user": "someone"})).into_response()),
        "403" => Some(StatusCode::FORBIDDEN.into_response()),
        "no" => Some(Json(json!({"allow": false, "reason": "not a member"})).into_response()),
        _ => None,
    }
}

async fn connect(
    State(b): State<Backend>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    b.record("connect", &headers, &body);
    let cookie = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(session) = cookie.strip_prefix("session=") else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if let Some(response) = failure(session).await {
        return response;
    }
    if let Some(user) = session.strip_prefix("good-") {
        return Json(json!({"allow": true, "user": user, "channels": ["feed:*"]})).into_response();
    }
    if let Some(user) = session.strip_prefix("expiring-") {
        let now = herald_core::publication::now_millis() / 1000;
        return Json(json!({"allow": true, "user": user, "expires_at": now + 1})).into_response();
    }
    Json(json!({"allow": false})).into_response()
}

fn case_of(body: &Value) -> String {
    let channel = body["channel"].as_str().unwrap_or("");
    channel.split_once(':').map_or("", |(_, c)| c).to_string()
}

async fn subscribe(
    State(b): State<Backend>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    b.record("subscribe", &headers, &body);
    let case = case_of(&body);
    if let Some(response) = failure(&case).await {
        return response;
    }
    Json(json!({"allow": true})).into_response()
}

async fn publish(
    State(b): State<Backend>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    b.record("publish", &headers, &body);
    let case = case_of(&body);
    if let Some(response) = failure(&case).await {
        return response;
    }
    if case == "rewrite" {
        // As a chat backend would: store the message, and publish it with its id.
        let mut data = body["data"].clone();
        data["stored_id"] = json!(7);
        return Json(json!({"allow": true, "data": data})).into_response();
    }
    Json(json!({"allow": true})).into_response()
}

/// The test server with every hook pointed at `backend`: `site` asks the subscribe hook, `posts`
/// the publish hook; `cookie` and `x-trace` are forwarded.
async fn server_with_hooks(backend: SocketAddr) -> TestServer {
    TestServer::start(config_with_hooks(backend)).await
}

fn config_with_hooks(backend: SocketAddr) -> Config {
    let mut config = TestServer::config();
    for ns in &mut config.namespaces {
        if ns.name == "site" {
            ns.subscribe = SubscribePolicy::Proxy;
        }
    }
    let mut posts = NamespaceConfig::new("posts");
    posts.publish = true;
    posts.publish_proxy = true;
    posts.history_size = 10;
    config.namespaces.push(posts);
    config.proxy.connect_url = Some(format!("http://{backend}/connect"));
    config.proxy.subscribe_url = Some(format!("http://{backend}/subscribe"));
    config.proxy.publish_url = Some(format!("http://{backend}/publish"));
    config.proxy.timeout = HOOK_TIMEOUT;
    config.proxy.forward_headers = vec!["cookie".into(), "X-Trace".into()];
    // Sessions the backend ends are closed right at their end.
    config.auth.jwt_leeway = Duration::ZERO;
    config
}

/// Connects as `user` with a token, and a cookie and a trace header for the hooks to see.
async fn connect_with_cookie(server: &TestServer, user: &str) -> Client {
    let authorization = format!("Bearer {}", server.token(user));
    let socket = server
        .open_with_headers(
            &server.ws_url(),
            &[
                ("authorization", &authorization),
                ("cookie", "session=whatever"),
                ("x-trace", "t-1"),
                ("x-other", "not forwarded"),
            ],
        )
        .await
        .unwrap();
    Client::established(socket).await
}

#[tokio::test]
async fn the_subscribe_hook_decides_and_a_failing_backend_never_allows() {
    let (backend, addr) = Backend::start().await;
    let server = server_with_hooks(addr).await;
    let mut alice = connect_with_cookie(&server, "alice").await;

    alice.subscribed("site:member").await;
    let seen = backend.seen("subscribe");
    assert_eq!(
        seen[0].body,
        json!({"user": "alice", "client": alice.client_id, "channel": "site:member"})
    );
    let headers = &seen[0].headers;
    assert_eq!(headers["cookie"], "session=whatever");
    assert_eq!(headers["x-trace"], "t-1");
    assert!(
        headers.get("authorization").is_none(),
        "the token stays here"
    );
    assert!(headers.get("x-other").is_none());

    let denied = alice.subscribe("site:no").await;
    assert_eq!(denied["code"], "forbidden", "{denied}");
    assert!(denied["message"].as_str().unwrap().contains("not a member"));
    assert_eq!(alice.subscribe("site:403").await["code"], "forbidden");
    for case in ["slow", "500", "garbage", "noallow"] {
        let started = Instant::now();
        let reply = alice.subscribe(&format!("site:{case}")).await;
        assert_eq!(reply["code"], "unavailable", "{case}: {reply}");
        assert!(
            started.elapsed() < HOOK_TIMEOUT * 4,
            "{case} waited too long"
        );
    }

    // Only the allowed subscription receives anything.
    server.publish("site:member", json!("in")).await;
    for case in ["no", "slow", "500"] {
        server.publish(&format!("site:{case}"), json!("out")).await;
    }
    assert_eq!(alice.next_message().await["data"], "in");
    alice.assert_silent(QUIET).await;
    // A repeated subscribe to a channel already held does not ask again.
    let asked = backend.seen("subscribe").len();
    alice.subscribed("site:member").await;
    assert_eq!(backend.seen("subscribe").len(), asked);

    server
        .assert_metric_at_least(
            "herald_hook_requests_total{hook=\"subscribe\",result=\"unavailable\"}",
            4.0,
        )
        .await;
    server
        .assert_metric_at_least(
            "herald_hook_requests_total{hook=\"subscribe\",result=\"denied\"}",
            2.0,
        )
        .await;
}

#[tokio::test]
async fn a_slow_backend_does_not_stall_other_clients() {
    let (_backend, addr) = Backend::start().await;
    let server = server_with_hooks(addr).await;
    let mut alice = connect_with_cookie(&server, "alice").await;
    let mut bob = connect_with_cookie(&server, "bob").await;
    bob.subscribed("chat:1").await;

    // Alice waits on the slow backend; meanwhile bob is served at full speed.
    alice
        .send(json!({"type": "subscribe", "channel": "site:slow", "id": 99}))
        .await;
    let started = Instant::now();
    server.publish("chat:1", json!("hello")).await;
    assert_eq!(bob.next_message().await["data"], "hello");
    bob.subscribed("site:fast").await;
    assert!(
        started.elapsed() < HOOK_TIMEOUT,
        "bob waited {:?}",
        started.elapsed()
    );
    let reply = alice.next().await;
    assert_eq!(reply["id"], 99);
    assert_eq!(reply["code"], "unavailable");
}

#[tokio::test]
async fn the_publish_hook_allows_rewrites_and_refuses() {
    let (backend, addr) = Backend::start().await;
    let server = server_with_hooks(addr).await;
    let mut alice = connect_with_cookie(&server, "alice").await;
    let mut bob = server.connect("bob").await;
    bob.subscribed("posts:rewrite").await;
    bob.subscribed("posts:keep").await;

    let reply = alice
        .request(
            json!({"type": "publish", "channel": "posts:rewrite", "event": "message",
                        "data": {"text": "hi"}}),
        )
        .await;
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    let message = bob.next_message().await;
    assert_eq!(message["data"], json!({"text": "hi", "stored_id": 7}));
    assert_eq!(message["from"]["user"], "alice");
    let seen = backend.seen("publish");
    assert_eq!(
        seen[0].body,
        json!({"user": "alice", "client": alice.client_id, "channel": "posts:rewrite",
               "event": "message", "data": {"text": "hi"}})
    );

    let reply = alice
        .request(json!({"type": "publish", "channel": "posts:keep", "data": [1, 2]}))
        .await;
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    assert_eq!(bob.next_message().await["data"], json!([1, 2]));

    for (case, code) in [
        ("no", "forbidden"),
        ("slow", "unavailable"),
        ("500", "unavailable"),
        ("garbage", "unavailable"),
    ] {
        let channel = format!("posts:{case}");
        let reply = alice
            .request(json!({"type": "publish", "channel": channel, "data": 1}))
            .await;
        assert_eq!(reply["code"], code, "{case}: {reply}");
        let (_, history) = server
            .get(&format!("/api/channels/{channel}/history"))
            .await;
        assert!(publication_offsets(&history).is_empty(), "{case} stored");
    }
    // The server API does not go through the hook.
    let asked = backend.seen("publish").len();
    server.publish("posts:no", json!("from the backend")).await;
    assert_eq!(backend.seen("publish").len(), asked);
}

#[tokio::test]
async fn the_connect_hook_authenticates_clients_without_a_token() {
    let (backend, addr) = Backend::start().await;
    let server = server_with_hooks(addr).await;
    let url = server.ws_url();

    let socket = server
        .open_with_headers(&url, &[("cookie", "session=good-carol")])
        .await
        .unwrap();
    let mut carol = Client::established(socket).await;
    assert_eq!(carol.user, "carol");
    assert_eq!(carol.personal["channel"], "user:carol");
    // The channels the backend granted work like a token's claim; the subscribe hook sees carol.
    server.publish("user:carol", json!("personal")).await;
    assert_eq!(carol.next_message().await["data"], "personal");
    carol.subscribed("site:member").await;
    assert_eq!(backend.seen("subscribe")[0].body["user"], "carol");
    assert_eq!(
        backend.seen("connect")[0].body,
        json!({"transport": "websocket", "client_ip": "127.0.0.1"})
    );

    for (cookie, status) in [
        ("session=bad", 401),
        ("session=no", 401),
        ("session=403", 401),
        ("session=500", 503),
        ("session=slow", 503),
        ("session=garbage", 503),
        ("session=noallow", 503),
        ("other=1", 401),
    ] {
        let refused = server.open_with_headers(&url, &[("cookie", cookie)]).await;
        assert_eq!(refused.err(), Some(status), "{cookie}");
    }

    // Server-Sent Events too.
    let response = reqwest::Client::new()
        .get(server.url("/sse"))
        .header("cookie", "session=good-dave")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut response = response;
    let first = String::from_utf8(response.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(first.contains("event: connected"), "{first}");
    assert!(first.contains("\"user\":\"dave\""), "{first}");
    let refused = reqwest::Client::new()
        .get(server.url("/sse"))
        .header("cookie", "session=500")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);

    // A session the backend gave an end: closed with 4002 at that time.
    let socket = server
        .open_with_headers(&url, &[("cookie", "session=expiring-erin")])
        .await
        .unwrap();
    let mut erin = Client::established(socket).await;
    assert_closed_with(&erin.closed().await, 4002);
}
