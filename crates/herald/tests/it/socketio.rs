//! Socket.IO at `/socket.io/`, spoken by hand (HTTP long-polling with reqwest, WebSocket with
//! tungstenite and the raw client) so that each limit and error path can be reached: refused
//! handshakes, malformed packets, overlapping polls, payloads over the limit, unanswered pings,
//! clients that never connect a namespace, the command rate limit, a polling client that stops
//! polling, and permessage-deflate on Socket.IO's WebSocket. socket.io-client itself is tested
//! in `clients/js/test/node/socketio.test.mjs`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{eventually, patience, Socket, TestServer};
use crate::websocket_rfc6455::{Frame, RawClient};

/// Opens a long-polling connection; returns its sid.
async fn open_polling(server: &TestServer) -> String {
    let body = reqwest::get(server.url("/socket.io/?EIO=4&transport=polling"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open: Value =
        serde_json::from_str(body.strip_prefix('0').expect("an open packet")).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

fn poll_url(server: &TestServer, sid: &str) -> String {
    server.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"))
}

async fn poll(server: &TestServer, sid: &str) -> (u16, String) {
    let response = reqwest::get(poll_url(server, sid)).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn post(server: &TestServer, sid: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(poll_url(server, sid))
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// A WebSocket connection to `/socket.io/`, past Engine.IO's `open`.
async fn open_websocket(server: &TestServer) -> Socket {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = next_text(&mut socket).await;
    assert!(open.starts_with("0{"), "{open}");
    socket
}

/// The next text frame that is not a ping.
async fn next_text(socket: &mut Socket) -> String {
    loop {
        let frame = tokio::time::timeout(patience(), socket.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(text) = frame {
            if text.as_str() != "2" {
                return text.to_string();
            }
        }
    }
}

/// Connects the main namespace with a token for `user`; returns what the server sent after the
/// connect answer (the `connected` event).
async fn connect_namespace(server: &TestServer, socket: &mut Socket, user: &str) -> String {
    let connect = format!("40{}", json!({"token": server.token(user)}));
    socket.send(Message::Text(connect.into())).await.unwrap();
    let answer = next_text(socket).await;
    assert!(answer.starts_with("40{\"sid\""), "{answer}");
    next_text(socket).await
}

/// Reads until the socket closes; the close code, if one came.
async fn close_code(socket: &mut Socket) -> Option<u16> {
    loop {
        match tokio::time::timeout(patience(), socket.next())
            .await
            .expect("the socket closes in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test]
async fn refused_handshakes_are_json_errors_and_counted() {
    let server = TestServer::start_default().await;
    for query in [
        "?transport=polling",
        "?EIO=3&transport=polling",
        "?EIO=4",
        "?EIO=4&transport=carrier-pigeon",
        "?EIO=4&transport=polling&sid=nonexistent",
    ] {
        let (status, body) = server
            .request(
                reqwest::Method::GET,
                &format!("/socket.io/{query}"),
                None,
                None,
            )
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{query}: {body}");
    }
    let (status, body) = server
        .request(
            reqwest::Method::PUT,
            "/socket.io/?EIO=4&transport=polling",
            None,
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server
        .request(
            reqwest::Method::POST,
            "/socket.io/?EIO=4&transport=polling",
            None,
            Some("40".into()),
        )
        .await;
    assert_eq!(status, 400, "a POST without a sid: {body}");
    server
        .assert_metric_at_least("herald_errors_total{code=\"bad_request\"}", 7.0)
        .await;
}

#[tokio::test]
async fn a_malformed_packet_ends_the_connection() {
    let server = TestServer::start_default().await;
    let sid = open_polling(&server).await;
    let (status, body) = post(&server, &sid, "4abc").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(poll(&server, &sid).await.0, 400, "the connection is gone");

    let mut socket = open_websocket(&server).await;
    connect_namespace(&server, &mut socket, "alice").await;
    socket
        .send(Message::Text("42{\"not\":\"an array\"}".into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut socket).await, Some(1002));
    server
        .assert_metric_at_least("herald_disconnects_total{reason=\"protocol_error\"}", 2.0)
        .await;
}

#[tokio::test]
async fn two_long_polls_at_once_end_the_connection() {
    let server = TestServer::start_default().await;
    let sid = open_polling(&server).await;
    let first = tokio::spawn({
        let url = poll_url(&server, &sid);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(poll(&server, &sid).await.0, 400);
    assert_eq!(first.await.unwrap(), "1", "the first poll gets the close");
    assert_eq!(poll(&server, &sid).await.0, 400);
}

#[tokio::test]
async fn payloads_over_max_frame_bytes_are_refused() {
    let mut config = TestServer::config();
    config.limits.max_frame_bytes = 1000;
    let server = TestServer::start(config).await;
    let sid = open_polling(&server).await;
    let (status, _) = post(&server, &sid, format!("4{}", "x".repeat(2000))).await;
    assert_eq!(status, 413);
    assert_eq!(poll(&server, &sid).await.0, 400, "the connection is gone");

    let mut socket = open_websocket(&server).await;
    connect_namespace(&server, &mut socket, "alice").await;
    let big = format!(
        "42[\"publish\",{{\"channel\":\"chat:1\",\"data\":\"{}\"}}]",
        "x".repeat(2000)
    );
    socket.send(Message::Text(big.into())).await.unwrap();
    let farewell = next_text(&mut socket).await;
    assert!(
        farewell.starts_with("42[\"herald:disconnect\""),
        "{farewell}"
    );
    assert!(farewell.contains("4009"), "{farewell}");
    assert_eq!(close_code(&mut socket).await, Some(4009));
}

#[tokio::test]
async fn an_unanswered_ping_ends_the_connection() {
    let mut config = TestServer::config();
    config.socketio.ping_interval = Duration::from_millis(200);
    config.socketio.ping_timeout = Duration::from_millis(100);
    let server = TestServer::start(config).await;
    let sid = open_polling(&server).await;
    // The ping comes through a poll, and is answered: the connection lives on.
    assert_eq!(poll(&server, &sid).await, (200, "2".to_owned()));
    assert_eq!(post(&server, &sid, "3").await.0, 200);
    assert_eq!(poll(&server, &sid).await, (200, "2".to_owned()));
    // Not answered this time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(poll(&server, &sid).await.0, 400);
    server
        .assert_metric_at_least("herald_disconnects_total{reason=\"idle_timeout\"}", 1.0)
        .await;
}

#[tokio::test]
async fn a_client_that_connects_no_namespace_is_closed() {
    let mut config = TestServer::config();
    config.limits.handshake_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let mut socket = open_websocket(&server).await;
    assert_eq!(close_code(&mut socket).await, Some(4001));
    // A namespace the server does not serve, and a token it refuses, are connect errors.
    let mut socket = open_websocket(&server).await;
    socket
        .send(Message::Text("40/elsewhere,".into()))
        .await
        .unwrap();
    assert_eq!(
        next_text(&mut socket).await,
        "44/elsewhere,{\"message\":\"Invalid namespace\"}"
    );
    socket
        .send(Message::Text("40{\"token\":\"forged\"}".into()))
        .await
        .unwrap();
    let refused: Value =
        serde_json::from_str(next_text(&mut socket).await.strip_prefix("44").unwrap()).unwrap();
    assert_eq!(refused["data"]["code"], "unauthorized", "{refused}");
}

#[tokio::test]
async fn events_past_the_rate_limit_are_refused_then_the_connection_closes() {
    let mut config = TestServer::config();
    config.limits.commands_per_minute = 1;
    config.limits.commands_burst = 2;
    let server = TestServer::start(config).await;
    let mut socket = open_websocket(&server).await;
    connect_namespace(&server, &mut socket, "alice").await;
    let mut refused = 0;
    for ack in 1..=5 {
        let event = format!("42{ack}[\"subscribe\",\"chat:{ack}\"]");
        if socket.send(Message::Text(event.into())).await.is_err() {
            break;
        }
    }
    loop {
        let text = next_text(&mut socket).await;
        if text.contains("rate_limited") && text.starts_with("43") {
            refused += 1;
        }
        if text.starts_with("42[\"herald:disconnect\"") {
            assert!(text.contains("4008"), "{text}");
            break;
        }
    }
    assert_eq!(
        refused, 2,
        "burst 2: two answered, two refused, then the close"
    );
    assert_eq!(close_code(&mut socket).await, Some(4008));
}

#[tokio::test]
async fn a_polling_client_that_stops_polling_is_a_slow_consumer() {
    let mut config = TestServer::config();
    config.limits.max_frame_bytes = 4096;
    config.limits.outbound_queue_bytes = 4096;
    // Found at the next ping.
    config.socketio.ping_interval = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let sid = open_polling(&server).await;
    let connect = format!("40{}", json!({"token": server.token("sleepy")}));
    assert_eq!(post(&server, &sid, connect).await.0, 200);
    let (_, greeting) = poll(&server, &sid).await;
    assert!(greeting.contains("connected"), "{greeting}");
    assert_eq!(
        post(&server, &sid, "421[\"subscribe\",\"chat:slow\"]")
            .await
            .0,
        200
    );
    // The client polls no more; its outbox fills, and it is closed as a slow consumer.
    for n in 0..50 {
        server
            .publish("chat:slow", json!({"n": n, "pad": "x".repeat(200)}))
            .await;
    }
    eventually("the slow consumer's close", async || {
        server
            .try_metric("herald_disconnects_total{reason=\"slow_consumer\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    // Others are unaffected.
    let mut socket = open_websocket(&server).await;
    connect_namespace(&server, &mut socket, "awake").await;
    socket
        .send(Message::Text("421[\"subscribe\",\"chat:slow\"]".into()))
        .await
        .unwrap();
    assert!(next_text(&mut socket).await.starts_with("431[{\"ok\":true"));
    server.publish("chat:slow", json!({"n": "live"})).await;
    let live = next_text(&mut socket).await;
    assert!(
        live.starts_with("42[\"message\",{\"n\":\"live\"}"),
        "{live}"
    );
}

#[tokio::test]
async fn socketio_websockets_negotiate_permessage_deflate() {
    let server = TestServer::start_default().await;
    let mut client = RawClient::handshake(
        &server,
        &format!(
            "/socket.io/?EIO=4&transport=websocket&token={}",
            server.token("zip")
        ),
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    )
    .await;
    assert!(
        client
            .response
            .to_ascii_lowercase()
            .contains("permessage-deflate; server_no_context_takeover"),
        "{}",
        client.response
    );
    let open = text_of(&client.frame().await.unwrap().expect("open"));
    assert!(open.starts_with("0{"), "{open}");
    client
        .send(&crate::websocket_rfc6455::encode(
            0x81,
            crate::websocket_rfc6455::MASK,
            crate::websocket_rfc6455::Length::Shortest,
            b"40",
        ))
        .await
        .unwrap();
    let answer = text_of(&client.frame().await.unwrap().expect("connect answer"));
    assert!(answer.starts_with("40{"), "{answer}");
    let big = "concrete ".repeat(200);
    server.publish("user:zip", json!({"text": big})).await;
    loop {
        let frame = client.frame().await.unwrap().expect("a frame");
        let text = text_of(&frame);
        if text.starts_with("42[\"message\"") {
            assert!(frame.compressed, "a large publication is compressed");
            assert!(frame.payload.len() < big.len() / 4);
            assert!(text.contains(&big));
            break;
        }
    }
}

/// A frame's text, inflated when compressed.
fn text_of(frame: &Frame) -> String {
    let bytes = if frame.compressed {
        let mut input = frame.payload.clone();
        input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
        let mut inflater = flate2::Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        inflater
            .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
            .unwrap();
        out
    } else {
        frame.payload.clone()
    };
    String::from_utf8(bytes).unwrap()
}

/// A Socket.IO client on the main namespace over WebSocket, spoken by hand: it keeps the `pid`
/// and the last string argument of each event (the offset socket.io-client keeps), and answers
/// pings.
struct SioClient {
    socket: Socket,
    pid: String,
    offset: Option<String>,
}

impl SioClient {
    /// Connects to `addr` with `token`; with `resume`, as socket.io-client does when it comes
    /// back (`pid` and `offset` in the connect's auth). Returns the client and whether the
    /// server said it recovered (the same `pid` answered).
    async fn connect(
        addr: std::net::SocketAddr,
        token: &str,
        resume: Option<&SioClient>,
    ) -> (SioClient, bool) {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let open = next_text(&mut socket).await;
        assert!(open.starts_with("0{"), "{open}");
        let mut auth = json!({ "token": token });
        if let Some(previous) = resume {
            auth["pid"] = json!(previous.pid);
            auth["offset"] = json!(previous.offset);
        }
        socket
            .send(Message::Text(format!("40{auth}").into()))
            .await
            .unwrap();
        let answer = next_text(&mut socket).await;
        let answer: Value =
            serde_json::from_str(answer.strip_prefix("40").expect("a connect answer")).unwrap();
        let pid = answer["pid"].as_str().expect("a pid").to_owned();
        let recovered = resume.is_some_and(|previous| previous.pid == pid);
        let client = SioClient {
            socket,
            pid,
            offset: resume.and_then(|previous| previous.offset.clone()),
        };
        (client, recovered)
    }

    /// The next event's name and arguments, or `None` once the connection is gone or silent for
    /// `wait`.
    async fn next_event(&mut self, wait: Duration) -> Option<(String, Vec<Value>)> {
        loop {
            let frame = match tokio::time::timeout(wait, self.socket.next()).await {
                Ok(Some(Ok(frame))) => frame,
                _ => return None,
            };
            let Message::Text(text) = frame else {
                if matches!(frame, Message::Close(_)) {
                    return None;
                }
                continue;
            };
            if text.as_str() == "2" {
                let _ = self.socket.send(Message::Text("3".into())).await;
                continue;
            }
            let Some(body) = text.strip_prefix("42") else {
                continue;
            };
            let mut args: Vec<Value> = serde_json::from_str(body).unwrap();
            if let Some(Value::String(last)) = args.last() {
                self.offset = Some(last.clone());
            }
            let name = args.remove(0).as_str().unwrap().to_owned();
            return Some((name, args));
        }
    }
}

/// Reads `client`'s `message` events into `seen` (the publications' `n`) until it holds `until`.
async fn read_messages(client: &mut SioClient, seen: &mut Vec<u64>, until: u64) {
    while seen.last().copied().unwrap_or(0) < until {
        let (name, args) = client
            .next_event(patience())
            .await
            .unwrap_or_else(|| panic!("connection ended at {:?}", seen.last()));
        if name == "message" {
            seen.push(args[0]["n"].as_u64().unwrap());
        }
    }
}

#[tokio::test]
async fn socketio_clients_span_a_cluster_and_recover_on_another_node() {
    use herald_redis::testing;

    use crate::common::ServerProcess;

    let prefix = testing::unique_prefix("it.sio");
    let url = &testing::shared().url;
    let node = |name: &str| {
        ServerProcess::start_with(
            &format!(
                "engine = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{prefix}\"\n\
                 node_name = \"{name}\"\nredis_presence_ttl = \"2s\"\nredis_timeout = \"500ms\""
            ),
            "[[namespace]]\nname = \"log\"\nhistory_size = 1000\nhistory_ttl = \"5m\"\n",
        )
    };
    let mut n1 = node("n1");
    let n2 = node("n2");
    let (h1, h2) = (n1.handle(), n2.handle());
    let token = h1.token("roamer");
    let (mut client, _) = SioClient::connect(h1.addr, &token, None).await;
    assert_eq!(
        client.next_event(patience()).await.expect("connected").0,
        "connected"
    );
    client
        .socket
        .send(Message::Text("421[\"subscribe\",\"log:roam\"]".into()))
        .await
        .unwrap();
    // A publication counts for a subscriber once its subscribe is acknowledged.
    loop {
        match tokio::time::timeout(patience(), client.socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.starts_with("431") => {
                assert!(text.contains("\"ok\":true"), "{text}");
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no acknowledgement of the subscribe: {other:?}"),
        }
    }
    // Publications enter through the other node.
    const TOTAL: u64 = 80;
    let publisher = n2.handle();
    let publishing = tokio::spawn(async move {
        for n in 1..=TOTAL {
            publisher.publish("log:roam", json!({ "n": n })).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut seen = Vec::new();
    read_messages(&mut client, &mut seen, 20).await;
    // Node 1 dies without a word; what was on the wire still arrives.
    n1.child.kill().unwrap();
    while let Some((name, args)) = client.next_event(Duration::from_secs(2)).await {
        if name == "message" {
            seen.push(args[0]["n"].as_u64().unwrap());
        }
    }
    let (mut again, recovered) = SioClient::connect(h2.addr, &token, Some(&client)).await;
    assert!(recovered, "the record from node 1 resumes on node 2");
    read_messages(&mut again, &mut seen, TOTAL).await;
    assert_eq!(
        seen,
        (1..=TOTAL).collect::<Vec<_>>(),
        "none lost, none twice, in order"
    );
    publishing.await.unwrap();
}

#[tokio::test]
async fn one_connection_serves_several_namespaces_each_its_own_session() {
    let mut config = TestServer::config();
    config.socketio.namespaces = vec!["/".into(), "/ws".into()];
    let server = TestServer::start(config).await;
    let mut socket = open_websocket(&server).await;
    connect_namespace(&server, &mut socket, "multi").await;
    let connect = format!("40/ws,{}", json!({"token": server.token("multi")}));
    socket.send(Message::Text(connect.into())).await.unwrap();
    assert!(next_text(&mut socket).await.starts_with("40/ws,{\"sid\""));
    assert!(next_text(&mut socket)
        .await
        .starts_with("42/ws,[\"connected\""));
    // Two sessions of one user: each is subscribed to the personal channel.
    server.publish("user:multi", json!({"n": 1})).await;
    let mut got = vec![next_text(&mut socket).await, next_text(&mut socket).await];
    got.retain(|packet| !packet.contains("herald:recovery"));
    while got.len() < 2 {
        let packet = next_text(&mut socket).await;
        if !packet.contains("herald:recovery") {
            got.push(packet);
        }
    }
    got.sort();
    // Any publication is followed by its namespace's recovery record.
    assert!(
        got[0].starts_with("42/ws,[\"message\",{\"n\":1}"),
        "{got:?}"
    );
    assert!(got[1].starts_with("42[\"message\",{\"n\":1}"), "{got:?}");
    // Leaving one namespace leaves the other as it was.
    socket.send(Message::Text("41/ws,".into())).await.unwrap();
    socket
        .send(Message::Text("421[\"subscribe\",\"chat:multi\"]".into()))
        .await
        .unwrap();
    assert!(next_unrecorded(&mut socket)
        .await
        .starts_with("431[{\"ok\":true"));
    server.publish("chat:multi", json!({"n": 2})).await;
    let packet = next_unrecorded(&mut socket).await;
    assert!(packet.starts_with("42[\"message\",{\"n\":2}"), "{packet}");
    eventually("one session left", async || {
        let (_, user) = server.get("/api/users/multi").await;
        user["connections"] == 1
    })
    .await;
}

/// The next packet that is not a ping nor a recovery record.
async fn next_unrecorded(socket: &mut Socket) -> String {
    loop {
        let packet = next_text(socket).await;
        if !packet.contains("\"herald:recovery\"") {
            return packet;
        }
    }
}
