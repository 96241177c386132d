//! History, recovery after reconnect, offline delivery and idempotent publishing, over real
//! sockets to a real server.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{publication_offsets, send_json, Client, TestServer, QUIET};

/// The `offset` of each of the next `n` messages.
async fn offsets(client: &mut Client, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(client.next_message().await["offset"].as_u64().unwrap());
    }
    out
}

fn position(frame: &Value) -> Value {
    json!({"offset": frame["offset"], "epoch": frame["epoch"]})
}

#[tokio::test]
async fn a_client_that_was_away_gets_what_it_missed_first_then_live() {
    let server = TestServer::start_default().await;
    let mut alice = server.connect("alice").await;
    let epoch = alice.subscribed("room:1").await["epoch"].clone();
    for n in 1..=3 {
        server.publish("room:1", json!({"n": n})).await;
    }
    let seen = *offsets(&mut alice, 3).await.last().unwrap();
    drop(alice);

    for n in 4..=6 {
        server.publish("room:1", json!({"n": n})).await;
    }
    let mut back = server.connect("alice").await;
    let reply = back
        .subscribe_with("room:1", json!({"since": {"offset": seen, "epoch": epoch}}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["recovered"], true);
    assert_eq!(reply["offset"], 6);
    server.publish("room:1", json!({"n": 7})).await;
    assert_eq!(offsets(&mut back, 4).await, [4, 5, 6, 7]);
    back.assert_silent(QUIET).await;
}

#[tokio::test]
async fn a_wrong_epoch_or_a_position_older_than_history_is_not_recovered() {
    let server = TestServer::start_default().await;
    // `room` keeps 100 publications: 150 push the first 50 out.
    let mut last = Value::Null;
    for n in 1..=150 {
        last = server.publish("room:2", json!({"n": n})).await;
    }
    let epoch = last["epoch"].as_str().unwrap().to_string();

    let mut client = server.connect("bob").await;
    let trimmed = client
        .subscribe_with("room:2", json!({"since": {"offset": 10, "epoch": epoch}}))
        .await;
    assert_eq!(trimmed["type"], "subscribed");
    assert_eq!(trimmed["recovered"], false);
    assert_eq!(trimmed["offset"], 150);
    client.assert_silent(QUIET).await;

    let mut other = server.connect("carol").await;
    let wrong = other
        .subscribe_with(
            "room:2",
            json!({"since": {"offset": 140, "epoch": "not-it"}}),
        )
        .await;
    assert_eq!(wrong["recovered"], false);
    other.assert_silent(QUIET).await;

    // Still live after a failed recovery.
    server.publish("room:2", json!({"n": 151})).await;
    assert_eq!(offsets(&mut client, 1).await, [151]);
    assert_eq!(offsets(&mut other, 1).await, [151]);

    // The oldest position history still covers recovers.
    let mut dave = server.connect("dave").await;
    let edge = dave
        .subscribe_with("room:2", json!({"since": {"offset": 51, "epoch": epoch}}))
        .await;
    assert_eq!(edge["recovered"], true);
    let got = offsets(&mut dave, 100).await;
    assert_eq!(got, (52..=151).collect::<Vec<_>>());
}

#[tokio::test]
async fn subscribe_with_last_replays_the_newest_publications() {
    let server = TestServer::start_default().await;
    for n in 1..=10 {
        server.publish("room:3", json!({"n": n})).await;
    }
    let mut client = server.connect("erin").await;
    let reply = client.subscribe_with("room:3", json!({"last": 3})).await;
    assert_eq!(reply["type"], "subscribed");
    assert!(reply.get("recovered").is_none());
    assert_eq!(offsets(&mut client, 3).await, [8, 9, 10]);
    client.assert_silent(QUIET).await;

    let both = client
        .subscribe_with(
            "room:4",
            json!({"last": 1, "since": {"offset": 1, "epoch": "x"}}),
        )
        .await;
    assert_eq!(both["code"], "bad_request");
    let again = client
        .subscribe_with("room:3", json!({"since": {"offset": 1, "epoch": "x"}}))
        .await;
    assert_eq!(again["code"], "bad_request", "{again}");
}

#[tokio::test]
async fn a_user_who_was_offline_gets_personal_messages_on_reconnect() {
    let server = TestServer::start_default().await;
    let first = server.connect("frank").await;
    let personal = position(&first.personal);
    assert_eq!(personal["offset"], 0);
    drop(first);

    for n in 1..=3 {
        server.publish("user:frank", json!({"n": n})).await;
    }
    // Token by header, position by query string.
    let since = format!(
        "since={}:{}",
        personal["offset"],
        personal["epoch"].as_str().unwrap()
    );
    let mut back = server.connect_with_query("frank", &since).await;
    assert_eq!(back.personal["recovered"], true);
    assert_eq!(back.personal["offset"], 3);
    assert_eq!(offsets(&mut back, 3).await, [1, 2, 3]);
    let at = position(&back.personal);
    drop(back);

    // Position in the auth frame (browsers).
    server.publish("user:frank", json!({"n": 4})).await;
    let mut socket = server.open_bare().await;
    let auth = json!({"type": "auth", "token": server.token("frank"), "since": at});
    send_json(&mut socket, auth).await;
    let mut browser = Client::established(socket).await;
    assert_eq!(browser.personal["recovered"], true);
    assert_eq!(offsets(&mut browser, 1).await, [4]);

    // No saved position: ask for the last N.
    let mut fresh = server.connect_with_query("frank", "last=2").await;
    assert_eq!(offsets(&mut fresh, 2).await, [3, 4]);
}

#[tokio::test]
async fn a_malformed_since_in_the_query_is_refused_before_the_upgrade() {
    let server = TestServer::start_default().await;
    let url = format!(
        "{}?token={}&since=seventeen",
        server.ws_url(),
        server.token("gus")
    );
    let error = tokio_tungstenite::connect_async(url).await.unwrap_err();
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("expected an HTTP error, got {other}"),
    }
    server
        .assert_metric_at_least("herald_errors_total{code=\"bad_request\"}", 1.0)
        .await;
}

#[tokio::test]
async fn the_history_command_and_api_return_pages() {
    let server = TestServer::start_default().await;
    let mut epoch = Value::Null;
    for n in 1..=5 {
        epoch = server.publish("room:5", json!({"n": n})).await["epoch"].clone();
    }
    let mut client = server.connect("hana").await;
    let reply = client
        .request(json!({"type": "history", "channel": "room:5", "limit": 2}))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    let result = &reply["result"];
    assert_eq!(result["offset"], 5);
    assert_eq!(result["epoch"], epoch);
    let got: Vec<_> = result["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().unwrap(),
                p["data"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [(4, 4), (5, 5)]);

    let after = client
        .request(
            json!({"type": "history", "channel": "room:5", "since": {"offset": 2, "epoch": epoch}}),
        )
        .await;
    assert_eq!(after["result"]["recovered"], true);
    assert_eq!(after["result"]["publications"].as_array().unwrap().len(), 3);

    let (status, body) = server
        .get(&format!(
            "/api/channels/room:5/history?since=1&epoch={}&limit=2",
            epoch.as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recovered"], true);
    let offsets = publication_offsets(&body);
    assert_eq!(offsets, [2, 3]);

    // Errors: a limit past the maximum, a channel the client may not read, a bad query.
    let big = client
        .request(json!({"type": "history", "channel": "room:5", "limit": 100000}))
        .await;
    assert_eq!(big["code"], "bad_request");
    let other = client
        .request(json!({"type": "history", "channel": "notes:someone"}))
        .await;
    assert_eq!(other["code"], "forbidden");
    let (status, body) = server.get("/api/channels/room:5/history?epoch=abc").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("bad_request"))
    );
    let (status, _) = server.get("/api/channels/room:5/history?limit=x").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn history_is_bounded_by_size_and_by_ttl() {
    let mut config = TestServer::config();
    let mut brief = herald::config::NamespaceConfig::new("brief");
    brief.history_size = 5;
    brief.history_ttl = Duration::from_millis(400);
    config.namespaces.push(brief);
    let server = TestServer::start(config).await;
    for n in 1..=12 {
        server.publish("brief:1", json!({"n": n})).await;
    }
    let (_, body) = server.get("/api/channels/brief:1/history").await;
    let kept = publication_offsets(&body);
    assert_eq!(kept, [8, 9, 10, 11, 12]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, body) = server.get("/api/channels/brief:1/history").await;
    assert_eq!(body["publications"], json!([]));
    assert_eq!(
        body["offset"], 12,
        "the stream's position outlives its history"
    );
}

#[tokio::test]
async fn a_retried_publish_with_the_same_key_is_stored_and_delivered_once() {
    let server = TestServer::start_default().await;
    let mut client = server.connect("ivy").await;
    client.subscribed("room:6").await;
    let body = json!({"channel": "room:6", "data": {"n": 1}, "idempotency_key": "order-17"});
    let (s1, first) = server.post("/api/publish", body.clone()).await;
    let (s2, again) = server.post("/api/publish", body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first, again);
    let (_, batch) = server
        .post(
            "/api/batch",
            json!({"publications": [
                {"channel": "room:6", "data": {"n": 1}, "idempotency_key": "order-17"},
                {"channel": "room:6", "data": {"n": 2}, "idempotency_key": "order-18"},
            ]}),
        )
        .await;
    assert_eq!(batch["results"][0]["offset"], first["offset"]);
    assert_eq!(batch["results"][1]["offset"], 2);
    assert_eq!(offsets(&mut client, 2).await, [1, 2]);
    client.assert_silent(QUIET).await;

    let (status, body) = server
        .post(
            "/api/publish",
            json!({"channel": "room:6", "data": 1, "idempotency_key": ""}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("bad_request"))
    );
}

/// A broadcast's key applies to each channel: a retry publishes nothing again where the first
/// attempt published, and still publishes on a channel that attempt did not reach.
#[tokio::test]
async fn a_retried_broadcast_with_the_same_key_is_stored_and_delivered_once_per_channel() {
    let server = TestServer::start_default().await;
    let mut client = server.connect("jay").await;
    client.subscribed("room:7").await;
    client.subscribed("room:8").await;
    client.subscribed("room:9").await;
    let body =
        json!({"channels": ["room:7", "room:8"], "data": "ping", "idempotency_key": "alarm-3"});
    let (s1, first) = server.post("/api/broadcast", body.clone()).await;
    let (s2, again) = server.post("/api/broadcast", body).await;
    assert_eq!((s1, s2), (200, 200), "{first} {again}");
    assert_eq!(first, again);
    assert_eq!(first["results"][0]["offset"], 1);
    assert_eq!(first["results"][1]["offset"], 1);

    let (_, wider) = server
        .post(
            "/api/broadcast",
            json!({"channels": ["room:7", "room:8", "room:9"], "data": "ping", "idempotency_key": "alarm-3"}),
        )
        .await;
    assert_eq!(wider["results"][0], first["results"][0]);
    assert_eq!(wider["results"][1], first["results"][1]);
    assert_eq!(wider["results"][2]["offset"], 1);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let message = client.next_message().await;
        seen.push((message["channel"].clone(), message["offset"].clone()));
    }
    seen.sort_by_key(|(channel, _)| channel.to_string());
    assert_eq!(
        seen,
        [
            (json!("room:7"), json!(1)),
            (json!("room:8"), json!(1)),
            (json!("room:9"), json!(1))
        ]
    );
    client.assert_silent(QUIET).await;

    let (status, body) = server
        .post(
            "/api/broadcast",
            json!({"channels": ["room:7"], "data": 1, "idempotency_key": ""}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["error"]["code"], "bad_request");
}

/// 10,000 numbered publications at full speed while 50 clients keep dropping and resubscribing
/// with `since`: each ends with exactly offsets 1..=10,000, in order, with no gap or duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_under_a_full_speed_publisher_loses_and_repeats_nothing() {
    const TOTAL: u64 = 10_000;
    const CLIENTS: usize = 50;
    let mut config = TestServer::config();
    let mut race = herald::config::NamespaceConfig::new("race");
    race.history_size = TOTAL as usize;
    race.history_ttl = Duration::from_secs(600);
    config.namespaces.push(race);
    config.limits.commands_per_minute = 100_000;
    config.limits.commands_burst = 10_000;
    // Debug-build clients can fall thousands of messages behind; this test is about recovery,
    // not slow consumers.
    config.limits.outbound_queue_bytes = 64 << 20;
    let server = std::sync::Arc::new(TestServer::start(config).await);

    // Every client holds a position before the first publication.
    let mut starts = Vec::new();
    for i in 0..CLIENTS {
        let mut client = server.connect(&format!("racer{i}")).await;
        let reply = client.subscribed("race:1").await;
        starts.push((client, position(&reply)));
    }
    let publisher = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for lane in 0..4u64 {
                let server = server.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = lane + 1;
                    while n <= TOTAL {
                        server.publish("race:1", json!({"n": n})).await;
                        n += 4;
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        })
    };
    let mut racers = Vec::new();
    for (i, (first, start)) in starts.into_iter().enumerate() {
        let server = server.clone();
        racers.push(tokio::spawn(async move {
            let mut client = Some(first);
            let mut epoch = start["epoch"].clone();
            let mut got: Vec<u64> = Vec::new();
            let mut numbers = std::collections::HashSet::new();
            let mut round = 0usize;
            while got.last().copied().unwrap_or(0) < TOTAL {
                let mut c = match client.take() {
                    Some(c) => c,
                    None => {
                        let mut c = server.connect(&format!("racer{i}")).await;
                        let since =
                            json!({"offset": got.last().copied().unwrap_or(0), "epoch": epoch});
                        let reply = c.subscribe_with("race:1", json!({"since": since})).await;
                        assert_eq!(reply["recovered"], true, "racer {i}: {reply}");
                        epoch = reply["epoch"].clone();
                        c
                    }
                };
                // Read a varying number of messages, then drop the connection mid-stream.
                let burst = 50 + (i * 37 + round * 101) % 400;
                round += 1;
                for _ in 0..burst {
                    let m = c.next_message().await;
                    got.push(m["offset"].as_u64().unwrap());
                    numbers.insert(m["data"]["n"].as_u64().unwrap());
                    if got.last().copied() == Some(TOTAL) {
                        break;
                    }
                }
            }
            assert!(round > 3, "racer {i} reconnected only {round} times");
            let expected: Vec<u64> = (1..=TOTAL).collect();
            assert!(
                got == expected,
                "racer {i}: offsets are not exactly 1..={TOTAL}"
            );
            assert_eq!(numbers.len() as u64, TOTAL, "racer {i}: every number once");
        }));
    }
    publisher.await.unwrap();
    for racer in racers {
        racer.await.unwrap();
    }
}
