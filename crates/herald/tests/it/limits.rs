//! Every limit and every kind of bad input gets its documented answer, is counted, and leaves the
//! server and the other clients unharmed.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{
    assert_closed_with, closed, eventually, patience, Client, TestServer, API_KEY,
};

/// A bystander subscribed to `chat:bystander` that must keep receiving whatever others do.
async fn bystander(server: &TestServer) -> Client {
    let mut client = server.connect("bystander").await;
    client.subscribed("chat:bystander").await;
    client
}

async fn assert_still_receives(server: &TestServer, client: &mut Client) {
    let n = rand_marker();
    server.publish("chat:bystander", json!({"marker": n})).await;
    assert_eq!(client.next_message().await["data"]["marker"], n);
}

fn rand_marker() -> u64 {
    herald_core::publication::now_millis()
}

/// The HTTP status of a WebSocket upgrade to `server` with `headers`: 101 when it is accepted.
async fn upgrade_status(server: &TestServer, headers: &[(&'static str, &str)]) -> u16 {
    match server.open_with_headers(&server.ws_url(), headers).await {
        Ok(_) => 101,
        Err(status) => status,
    }
}

#[tokio::test]
async fn bad_frames_get_bad_request_and_the_connection_survives() {
    let server = TestServer::start_default().await;
    let mut other = bystander(&server).await;
    let mut client = server.connect("alice").await;

    // (frame, the id the error must carry)
    let cases: &[(&str, serde_json::Value)] = &[
        ("{not json", json!(null)),
        ("", json!(null)),
        ("[1,2]", json!(null)),
        ("42", json!(null)),
        (r#"{"id":1}"#, json!(1)),
        (r#"{"type":"teleport","id":2}"#, json!(2)),
        (r#"{"type":7,"id":3}"#, json!(3)),
        (r#"{"type":"subscribe","id":4}"#, json!(4)),
        (r#"{"type":"subscribe","channel":17,"id":5}"#, json!(5)),
        (r#"{"type":"subscribe","channel":["a"],"id":6}"#, json!(6)),
        (
            r#"{"type":"subscribe","channel":"has space","id":7}"#,
            json!(7),
        ),
        (
            r#"{"type":"subscribe","channel":"semi;colon","id":8}"#,
            json!(8),
        ),
        (r#"{"type":"subscribe","channel":"","id":9}"#, json!(9)),
        (
            r#"{"type":"publish","channel":"chat:1","id":10}"#,
            json!(10),
        ),
        (
            r#"{"type":"subscribe","channel":"chat:1","since":"yesterday","id":11}"#,
            json!(11),
        ),
        (r#"{"type":"auth","token":"x","id":12}"#, json!(12)),
    ];
    for (frame, id) in cases {
        client.send_text(frame).await;
        let error = client.next().await;
        assert_eq!(error["type"], "error", "{frame}: {error}");
        assert_eq!(error["code"], "bad_request", "{frame}: {error}");
        assert_eq!(
            error.get("id").cloned().unwrap_or(json!(null)),
            *id,
            "{frame}"
        );
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    let long_name = format!(
        r#"{{"type":"subscribe","channel":"{}","id":99}}"#,
        "a".repeat(256)
    );
    client.send_text(&long_name).await;
    assert_eq!(client.next().await["code"], "bad_request");

    client
        .socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let binary = client.next().await;
    assert_eq!(binary["code"], "bad_request", "{binary}");

    // Still connected and working.
    client.subscribed("chat:1").await;
    server.publish("chat:1", json!("ok")).await;
    assert_eq!(client.next_message().await["data"], "ok");
    assert_still_receives(&server, &mut other).await;
    server
        .assert_metric_at_least("herald_errors_total{code=\"bad_request\"}", 18.0)
        .await;
}

#[tokio::test]
async fn an_oversize_frame_is_closed_with_4009() {
    let mut config = TestServer::config();
    config.limits.max_frame_bytes = 1024;
    let server = TestServer::start(config).await;
    let mut other = bystander(&server).await;
    let mut client = server.connect("alice").await;
    let big = json!({"type": "publish", "channel": "chat:1", "data": "x".repeat(2000)});
    client.send(big).await;
    assert_closed_with(&client.closed().await, 4009);
    assert_still_receives(&server, &mut other).await;
    assert_eq!(
        server
            .metric("herald_disconnects_total{reason=\"frame_too_large\"}")
            .await,
        1.0
    );

    // The API refuses data larger than the frame limit too.
    let (status, body) = server
        .post(
            "/api/publish",
            json!({"channel": "chat:1", "data": "x".repeat(2000)}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("too_large"))
    );
}

#[tokio::test]
async fn commands_over_the_rate_get_rate_limited_then_4008() {
    let mut config = TestServer::config();
    config.limits.commands_per_minute = 60;
    config.limits.commands_burst = 5;
    let server = TestServer::start(config).await;
    let mut other = bystander(&server).await;
    let mut client = server.connect("alice").await;
    for i in 0..5 {
        let reply = client.request(json!({"type": "ping"})).await;
        assert_eq!(reply["type"], "reply", "command {i} is within the burst");
    }
    let limited = client.request(json!({"type": "ping"})).await;
    assert_eq!(limited["code"], "rate_limited");
    // Ignoring the warning: more than `commands_burst` refusals in a row close the connection.
    for _ in 0..10 {
        client.send(json!({"type": "ping"})).await;
    }
    assert_closed_with(&client.closed().await, 4008);
    assert_still_receives(&server, &mut other).await;
    server
        .assert_metric_at_least("herald_errors_total{code=\"rate_limited\"}", 1.0)
        .await;
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let mut config = TestServer::config();
    config.limits.subscriptions_per_connection = 3;
    let server = TestServer::start(config).await;
    let mut client = server.connect("alice").await;
    for i in 0..3 {
        client.subscribed(&format!("chat:{i}")).await;
    }
    let refused = client.subscribe("chat:3").await;
    assert_eq!(refused["code"], "limit_exceeded");
    // Re-subscribing to a channel it has is not a new subscription.
    client.subscribed("chat:0").await;
    client
        .request(json!({"type": "unsubscribe", "channel": "chat:0"}))
        .await;
    client.subscribed("chat:3").await;
    // The personal channel never counts, even when re-subscribed at the limit.
    let left = client
        .request(json!({"type": "unsubscribe", "channel": "user:alice"}))
        .await;
    assert_eq!(left["type"], "unsubscribed");
    client.subscribed("user:alice").await;
}

#[tokio::test]
async fn connections_per_user_are_limited_with_4011() {
    let mut config = TestServer::config();
    config.limits.connections_per_user = 2;
    let server = TestServer::start(config).await;
    let _first = server.connect("alice").await;
    let mut second = server.connect("alice").await;
    let mut third = server.open_with_header(&server.token("alice")).await;
    let refused = closed(&mut third).await;
    assert_closed_with(&refused, 4011);
    // Other users are not affected, and a slot frees when a connection closes.
    server.connect("bob").await;
    second.socket.close(None).await.unwrap();
    drop(second);
    eventually("alice's closed connection frees its slot", async || {
        let (_, alice) = server.get("/api/users/alice").await;
        if alice["connections"] == 1 {
            Ok(())
        } else {
            Err(alice)
        }
    })
    .await;
    server.connect("alice").await;
}

#[tokio::test]
async fn new_connections_per_ip_per_second_are_limited_with_429() {
    let mut config = TestServer::config();
    config.limits.connections_per_ip_per_second = 3;
    let server = TestServer::start(config).await;
    let authorization = format!("Bearer {}", server.token("alice"));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(upgrade_status(&server, &[("authorization", &authorization)]).await);
    }
    // Windows are whole seconds; a boundary may fall inside the loop, so allow one reset.
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 1,
        "{statuses:?}"
    );
    // The first `connections_per_ip_per_second` of a second are admitted.
    assert!(
        statuses.iter().filter(|s| **s == 101).count() >= 3,
        "{statuses:?}"
    );
    server
        .assert_metric_at_least("herald_errors_total{code=\"rate_limited\"}", 1.0)
        .await;
}

#[tokio::test]
async fn origins_not_allowed_are_refused_with_403() {
    let mut config = TestServer::config();
    config.allowed_origins = vec!["https://app.example.com".into()];
    let server = TestServer::start(config).await;
    let authorization = format!("Bearer {}", server.token("alice"));
    let attempt = async |origin: &str| {
        upgrade_status(
            &server,
            &[("origin", origin), ("authorization", &authorization)],
        )
        .await
    };
    assert_eq!(attempt("https://evil.example").await, 403);
    assert_eq!(attempt("https://app.example.com").await, 101);
    // No Origin header: a non-browser client.
    server.connect("alice").await;

    // The API answers CORS preflights for allowed origins only.
    let preflight = |origin: &'static str| {
        let url = server.url("/api/publish");
        async move {
            reqwest::Client::new()
                .request(reqwest::Method::OPTIONS, url)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                )
                .send()
                .await
                .unwrap()
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_string())
        }
    };
    assert_eq!(
        preflight("https://app.example.com").await.as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(preflight("https://evil.example").await, None);
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_two_heartbeats() {
    let mut config = TestServer::config();
    config.limits.heartbeat_interval = Duration::from_millis(200);
    let server = TestServer::start(config).await;
    let mut other = server.connect("other").await;
    other.subscribed("chat:bystander").await;
    // A client that never reads never answers the server's pings.
    let silent = server.connect("silent").await;
    let started = std::time::Instant::now();
    let mut socket = silent.socket;
    // Reading `other` keeps it alive (its library answers pings as it reads).
    for _ in 0..5 {
        other.assert_silent(Duration::from_millis(150)).await;
    }
    let ended = closed(&mut socket).await;
    assert_closed_with(&ended, 4012);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_still_receives(&server, &mut other).await;
}

#[tokio::test]
async fn bad_api_requests_get_json_errors() {
    let mut config = TestServer::config();
    config.limits.max_api_body_bytes = 4096;
    let server = TestServer::start(config).await;
    let cases = [
        ("/api/publish", "{not json".to_string(), 400, "bad_request"),
        (
            "/api/publish",
            json!({"channel": "chat:1"}).to_string(),
            400,
            "bad_request",
        ),
        (
            "/api/publish",
            json!({"channel": 5, "data": 1}).to_string(),
            400,
            "bad_request",
        ),
        (
            "/api/publish",
            json!({"channel": "chat:1", "data": 1, "extra": 1}).to_string(),
            400,
            "bad_request",
        ),
        (
            "/api/publish",
            json!({"channel": "bad name", "data": 1}).to_string(),
            400,
            "bad_request",
        ),
        (
            "/api/publish",
            json!({"channel": "unknown:1", "data": 1}).to_string(),
            404,
            "not_found",
        ),
        (
            "/api/publish",
            json!({"channel": "chat:1", "data": "x".repeat(5000)}).to_string(),
            413,
            "too_large",
        ),
        (
            "/api/broadcast",
            json!({"channels": [], "data": 1}).to_string(),
            400,
            "bad_request",
        ),
        (
            "/api/batch",
            json!({"publications": "no"}).to_string(),
            400,
            "bad_request",
        ),
        ("/api/disconnect", json!({}).to_string(), 400, "bad_request"),
        (
            "/api/unsubscribe",
            json!({"user": "a", "channel": "no way"}).to_string(),
            400,
            "bad_request",
        ),
        ("/api/nothing-here", "{}".to_string(), 404, "not_found"),
    ];
    for (path, body, status, code) in cases {
        let (got, error) = server
            .request(
                reqwest::Method::POST,
                path,
                Some(API_KEY),
                Some(body.clone()),
            )
            .await;
        assert_eq!(got, status, "{path} {body}: {error}");
        assert_eq!(error["error"]["code"], code, "{path} {body}");
        assert!(error["error"]["message"].is_string());
    }
    // The server is fine afterwards.
    server.publish("chat:1", json!(1)).await;
}

/// A WebSocket upgrade of `user` sent as a plain HTTP request, so that a refusal's body can be read.
async fn upgrade_answer(server: &TestServer, user: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(server.ws_url().replace("ws://", "http://"))
        .bearer_auth(server.token(user))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `GET /sse` for `user` on `channel`; the response is the stream when it is accepted.
async fn open_sse(server: &TestServer, user: &str, channel: &str) -> reqwest::Response {
    let query = format!("/sse?channel={channel}&token={}", server.token(user));
    reqwest::Client::new()
        .get(server.url(&query))
        .send()
        .await
        .unwrap()
}

fn assert_at_connection_limit(status: u16, body: &Value) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("connection limit"), "{message}");
}

#[tokio::test]
async fn connections_past_max_connections_are_refused_with_503_until_one_ends() {
    let mut config = TestServer::config();
    config.limits.max_connections = 3;
    let server = TestServer::start(config).await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let stream = open_sse(&server, "carol", "feed:1").await;
    assert_eq!(stream.status(), 200);

    // The fourth connection, either way, is refused before it opens.
    let (status, body) = upgrade_answer(&server, "dave").await;
    assert_at_connection_limit(status, &body);
    let refused = open_sse(&server, "dave", "feed:1").await;
    let status = refused.status().as_u16();
    assert_at_connection_limit(status, &refused.json().await.unwrap());
    let header = format!("Bearer {}", server.token("dave"));
    let attempt = server
        .open_with_headers(&server.ws_url(), &[("authorization", &header)])
        .await;
    assert_eq!(attempt.err(), Some(503));
    server
        .assert_metric_at_least(
            "herald_connections_refused_total{reason=\"max_connections\"}",
            3.0,
        )
        .await;
    server
        .assert_metric_at_least("herald_errors_total{code=\"unavailable\"}", 3.0)
        .await;

    // Those admitted are unharmed.
    server.publish("feed:1", json!({"n": 1})).await;
    alice.subscribed("chat:limit").await;
    server.publish("chat:limit", json!({"n": 2})).await;
    assert_eq!(alice.next_message().await["data"]["n"], 2);

    // Once a connection has ended, its place is free again.
    bob.socket.close(None).await.unwrap();
    drop(bob);
    let mut dave = connect_when_a_place_is_free(&server, "dave").await;
    dave.subscribed("chat:limit").await;
    drop(stream);
}

/// Connects `user` by WebSocket, retrying while the node is at its connection limit: a place is
/// given back when the connection's task has ended, a moment after the client sees it close.
async fn connect_when_a_place_is_free(server: &TestServer, user: &str) -> Client {
    let header = format!("Bearer {}", server.token(user));
    let deadline = Instant::now() + patience();
    loop {
        match server
            .open_with_headers(&server.ws_url(), &[("authorization", &header)])
            .await
        {
            Ok(socket) => return Client::established(socket).await,
            Err(503) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(status) => panic!("no place free in time: {status}"),
        }
    }
}

#[tokio::test]
async fn connections_refused_after_admission_give_their_place_back() {
    let mut config = TestServer::config();
    config.limits.max_connections = 1;
    let server = TestServer::start(config).await;
    // Admitted, then refused: a bad query string, a bad token over SSE, a bad auth frame.
    for _ in 0..3 {
        let url = format!("{}?since=garbage", server.ws_url());
        let header = format!("Bearer {}", server.token("alice"));
        let refused = server
            .open_with_headers(&url, &[("authorization", &header)])
            .await;
        assert_eq!(refused.err(), Some(400));
        let refused = reqwest::Client::new()
            .get(server.url("/sse?channel=feed:1&token=not-a-token"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
    }
    let mut bare = server.open_bare().await;
    bare.send(Message::Text(
        json!({"type": "auth", "token": "not-a-token"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_closed_with(&closed(&mut bare).await, 4001);
    // The one place is free: a connection that ends gives it back again.
    let mut alice = connect_when_a_place_is_free(&server, "alice").await;
    alice.socket.close(None).await.unwrap();
    drop(alice);
    connect_when_a_place_is_free(&server, "bob").await;
}

/// Reads `socket` until the server closes it; how long that took, or `None` if it stayed open
/// for `patience()`.
async fn closed_after(socket: &mut TcpStream, started: Instant) -> Option<Duration> {
    let mut buffer = [0u8; 1024];
    loop {
        let read = tokio::time::timeout_at(started + patience(), socket.read(&mut buffer)).await;
        match read {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_client_that_stalls_in_its_request_headers_is_closed_after_the_handshake_timeout() {
    let timeout = Duration::from_millis(300);
    let mut config = TestServer::config();
    config.limits.handshake_timeout = timeout;
    let server = TestServer::start(config).await;
    let in_time = |took: Option<Duration>| {
        let took = took.expect("the server closes the socket");
        assert!(took >= timeout - Duration::from_millis(50), "{took:?}");
        assert!(took < timeout + Duration::from_secs(2), "{took:?}");
    };

    // Connects and never finishes its request headers.
    let started = Instant::now();
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    in_time(closed_after(&mut stalled, started).await);

    // A kept-alive connection that sends no next request is closed the same way.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 1024];
    let read = idle.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    in_time(closed_after(&mut idle, Instant::now()).await);

    // What has opened stays open well past the timeout: a WebSocket, an SSE stream.
    let mut client = server.connect("alice").await;
    client.subscribed("chat:slow").await;
    let mut stream = open_sse(&server, "bob", "chat:slow").await;
    assert_eq!(stream.status(), 200);
    tokio::time::sleep(timeout * 3).await;
    server.publish("chat:slow", json!({"n": 1})).await;
    assert_eq!(client.next_message().await["data"]["n"], 1);
    let mut received = String::new();
    while !received.contains(r#""type":"message""#) {
        let chunk = tokio::time::timeout(patience(), stream.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream is open");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
}
