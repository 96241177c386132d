//! Server-Sent Events over a real HTTP connection: events, resuming with `Last-Event-ID`,
//! heartbeats, and the errors a stream is refused with.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{patience, TestServer, QUIET};

/// One event as a client parses it.
#[derive(Debug, Default)]
struct Event {
    event: Option<String>,
    id: Option<String>,
    data: String,
    retry: Option<u64>,
    comment: bool,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// A minimal SSE reader on a streaming HTTP response.
struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    async fn open(server: &TestServer, query: &str, headers: &[(&str, String)]) -> SseClient {
        let response = Self::request(server, query, headers).await;
        assert_eq!(response.status(), 200, "GET /sse?{query}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "content type"
        );
        SseClient {
            response,
            buffer: String::new(),
        }
    }

    async fn request(
        server: &TestServer,
        query: &str,
        headers: &[(&str, String)],
    ) -> reqwest::Response {
        let mut request = reqwest::Client::new().get(server.url(&format!("/sse?{query}")));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send().await.unwrap()
    }

    /// The next event (or comment), within [`patience`].
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event::default();
                for line in block.lines() {
                    if let Some(rest) = line.strip_prefix(':') {
                        event.comment = true;
                        event.data = rest.trim().to_string();
                    } else if let Some((field, value)) = line.split_once(": ") {
                        match field {
                            "event" => event.event = Some(value.into()),
                            "id" => event.id = Some(value.into()),
                            "data" => event.data.push_str(value),
                            "retry" => event.retry = value.parse().ok(),
                            other => panic!("unknown field {other}"),
                        }
                    }
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout(patience(), self.response.chunk())
                .await
                .expect("an event within the patience window")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event that is not a comment.
    async fn next_event(&mut self) -> Event {
        loop {
            let event = self.next().await.expect("stream open");
            if !event.comment {
                return event;
            }
        }
    }

    /// Asserts that no event (comments aside) arrives for `wait`.
    async fn assert_silent(&mut self, wait: Duration) {
        if let Ok(event) = tokio::time::timeout(wait, self.next_event()).await {
            panic!("expected silence, got {event:?}");
        }
    }

    /// Reads `retry`, `connected` and the `subscribed` events; returns the subscribed frames and
    /// the opening id.
    async fn opening(&mut self) -> (Vec<Value>, String) {
        let retry = self.next().await.unwrap();
        assert_eq!(retry.retry, Some(3000));
        let connected = self.next_event().await;
        assert_eq!(
            connected.event.as_deref(),
            Some("connected"),
            "{connected:?}"
        );
        let mut subscribed = Vec::new();
        loop {
            let event = self.next_event().await;
            if event.event.as_deref() == Some("subscribed") {
                subscribed.push(event.json());
                if let Some(id) = event.id {
                    return (subscribed, id);
                }
            } else {
                panic!("expected subscribed, got {event:?}");
            }
        }
    }

    /// The next `n` publication events, as (channel, offset), and the last id.
    async fn messages(&mut self, n: usize) -> (Vec<(String, u64)>, String) {
        let mut got = Vec::new();
        let mut last_id = String::new();
        while got.len() < n {
            let event = self.next_event().await;
            assert!(
                event.event.is_none(),
                "expected a publication, got {event:?}"
            );
            let frame = event.json();
            assert_eq!(frame["type"], "message");
            got.push((
                frame["channel"].as_str().unwrap().to_string(),
                frame["offset"].as_u64().unwrap(),
            ));
            last_id = event.id.expect("publications carry an id");
        }
        (got, last_id)
    }
}

fn bearer(token: String) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(c, o)| (c.to_string(), *o)).collect()
}

#[tokio::test]
async fn a_stream_delivers_every_channel_and_resumes_exactly_after_last_event_id() {
    let server = TestServer::start_default().await;
    let auth = bearer(server.token("sam"));
    let mut sse = SseClient::open(
        &server,
        "channel=room:10&channel=room:11",
        std::slice::from_ref(&auth),
    )
    .await;
    let (subscribed, _) = sse.opening().await;
    let channels: Vec<_> = subscribed.iter().map(|s| s["channel"].clone()).collect();
    assert_eq!(
        channels,
        [json!("user:sam"), json!("room:10"), json!("room:11")]
    );

    server.publish("room:10", json!({"n": 1})).await;
    server.publish("room:11", json!({"n": 1})).await;
    server.publish("user:sam", json!({"n": 1})).await;
    server.publish("room:10", json!({"n": 2})).await;
    let (got, last_id) = sse.messages(4).await;
    assert_eq!(
        got,
        pairs(&[
            ("room:10", 1),
            ("room:11", 1),
            ("user:sam", 1),
            ("room:10", 2)
        ])
    );
    drop(sse);

    // Away: two channels move on, one does not.
    server.publish("room:10", json!({"n": 3})).await;
    server.publish("user:sam", json!({"n": 2})).await;
    server.publish("room:10", json!({"n": 4})).await;
    let mut back = SseClient::open(
        &server,
        "channel=room:10&channel=room:11",
        &[auth.clone(), ("last-event-id", last_id)],
    )
    .await;
    let (subscribed, _) = back.opening().await;
    assert!(
        subscribed.iter().all(|s| s["recovered"] == true),
        "{subscribed:?}"
    );
    server.publish("room:11", json!({"n": 2})).await;
    let (got, _) = back.messages(4).await;
    // Missed ones come first, per channel in order; then live.
    let mut missed = got[..3].to_vec();
    missed.sort();
    assert_eq!(
        missed,
        pairs(&[("room:10", 3), ("room:10", 4), ("user:sam", 2)])
    );
    assert_eq!(got[3], ("room:11".to_string(), 2));
    back.assert_silent(QUIET).await;
}

#[tokio::test]
async fn the_token_and_the_resume_position_can_come_in_the_query_string() {
    let server = TestServer::start_default().await;
    let token = server.token("tia");
    let mut sse = SseClient::open(&server, &format!("channel=room:12&token={token}"), &[]).await;
    let (_, opening_id) = sse.opening().await;
    drop(sse);
    server.publish("room:12", json!({"n": 1})).await;
    let query = format!(
        "channel=room:12&token={token}&last_event_id={}",
        urlencode(&opening_id)
    );
    let mut back = SseClient::open(&server, &query, &[]).await;
    back.opening().await;
    let (got, _) = back.messages(1).await;
    assert_eq!(got, pairs(&[("room:12", 1)]));
}

fn urlencode(text: &str) -> String {
    text.replace(':', "%3A").replace(',', "%2C")
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeat_comments() {
    let mut config = TestServer::config();
    config.sse.heartbeat_interval = Duration::from_millis(200);
    let server = TestServer::start(config).await;
    let mut sse = SseClient::open(&server, "", &[bearer(server.token("uma"))]).await;
    sse.opening().await;
    let ping = sse.next().await.unwrap();
    assert!(ping.comment && ping.data == "ping", "{ping:?}");
}

#[tokio::test]
async fn the_server_api_can_end_a_stream_with_a_disconnect_event() {
    let server = TestServer::start_default().await;
    let mut sse = SseClient::open(&server, "channel=room:13", &[bearer(server.token("vic"))]).await;
    sse.opening().await;
    let (status, _) = server
        .post(
            "/api/unsubscribe",
            json!({"user": "vic", "channel": "room:13"}),
        )
        .await;
    assert_eq!(status, 200);
    let unsubscribed = sse.next_event().await;
    assert_eq!(unsubscribed.event.as_deref(), Some("unsubscribed"));
    assert_eq!(
        unsubscribed.id.as_deref().map(|id| id.contains("room:13")),
        Some(false)
    );
    server.post("/api/disconnect", json!({"user": "vic"})).await;
    let disconnect = sse.next_event().await;
    assert_eq!(disconnect.event.as_deref(), Some("disconnect"));
    assert_eq!(disconnect.json()["code"], 4013);
    assert!(sse.next().await.is_none(), "the stream ends");
}

#[tokio::test]
async fn streams_are_refused_with_the_documented_errors() {
    let server = TestServer::start_default().await;
    let token = server.token("wes");
    type Case = (String, Vec<(&'static str, String)>, u16, &'static str);
    let cases: Vec<Case> = vec![
        ("channel=room:1".into(), vec![], 401, "unauthorized"),
        (
            "channel=room:1".into(),
            vec![bearer("not-a-jwt".into())],
            401,
            "unauthorized",
        ),
        (
            "channel=notes:someone-else".into(),
            vec![bearer(token.clone())],
            403,
            "forbidden",
        ),
        (
            "channel=bad%20name".into(),
            vec![bearer(token.clone())],
            400,
            "bad_request",
        ),
        (
            "channel=nowhere:1".into(),
            vec![bearer(token.clone())],
            404,
            "not_found",
        ),
        (
            "channel=room:1&color=blue".into(),
            vec![bearer(token.clone())],
            400,
            "bad_request",
        ),
        (
            "channel=room:1".into(),
            vec![bearer(token.clone()), ("last-event-id", "garbage".into())],
            400,
            "bad_request",
        ),
    ];
    for (query, headers, status, code) in cases {
        let response = SseClient::request(&server, &query, &headers).await;
        assert_eq!(response.status(), status, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
    }
    server
        .assert_metric_at_least("herald_errors_total{code=\"unauthorized\"}", 2.0)
        .await;
    // Nothing was left subscribed by the refused streams.
    let (_, body) = server.get("/api/channels?prefix=room:1").await;
    assert_eq!(body["channels"], json!([]));
}

#[tokio::test]
async fn a_stream_is_in_presence_and_gets_join_leave_and_typing_as_named_events() {
    let server = TestServer::start_default().await;
    let auth = bearer(server.token("sam"));
    let mut stream = SseClient::open(&server, "channel=lobby:5", &[auth]).await;
    let (_, opening_id) = stream.opening().await;

    let mut alice = server.connect("alice").await;
    alice.subscribed("lobby:5").await;
    let join = stream.next_event().await;
    assert_eq!(join.event.as_deref(), Some("join"), "{join:?}");
    assert_eq!(join.id, None, "events do not move the stream's position");
    assert_eq!(
        join.json(),
        json!({"type": "join", "channel": "lobby:5", "user": "alice", "client": alice.client_id})
    );
    // Alice sees the stream's connection in presence, and its typing reaches the stream.
    let reply = alice
        .request(json!({"type": "presence", "channel": "lobby:5"}))
        .await;
    assert_eq!(reply["result"]["users"], 2, "{reply}");
    alice
        .send(json!({"type": "typing", "channel": "lobby:5"}))
        .await;
    let typing = stream.next_event().await;
    assert_eq!(typing.event.as_deref(), Some("typing"));
    assert_eq!(typing.json()["user"], "alice");
    drop(alice);
    let leave = stream.next_event().await;
    assert_eq!(leave.event.as_deref(), Some("leave"));

    // A publication after them still carries the position, continuing the opening id's.
    server.publish("lobby:5", json!(1)).await;
    let (got, id) = stream.messages(1).await;
    assert_eq!(got, pairs(&[("lobby:5", 1)]));
    assert_ne!(id, opening_id);
}
