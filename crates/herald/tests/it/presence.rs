//! Presence, join/leave, typing and client publishing, over real sockets.

use std::time::Duration;

use herald::config::NamespaceConfig;
use serde_json::{json, Value};

use crate::common::{eventually, publication_offsets, TestServer, QUIET};

/// Waits until the API's presence of `channel` counts `(users, connections)` (leaves are
/// recorded in the background, a moment after the socket closes).
async fn presence_counts_become(server: &TestServer, channel: &str, expected: (u64, u64)) {
    let path = format!("/api/channels/{channel}/presence");
    let what = format!("the presence of {channel} counts {expected:?}");
    eventually(&what, async || {
        let (status, body) = server.get(&path).await;
        assert_eq!(status, 200, "{body}");
        if counts(&body) == expected {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;
}

fn counts(body: &Value) -> (u64, u64) {
    (
        body["users"].as_u64().unwrap(),
        body["connections"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn presence_counts_users_and_connections_and_follows_leaves() {
    let server = TestServer::start_default().await;
    let mut tab1 = server.connect("alice").await;
    let mut tab2 = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    for client in [&mut tab1, &mut tab2, &mut bob] {
        client.subscribed("lobby:1").await;
    }

    let reply = bob
        .request(json!({"type": "presence", "channel": "lobby:1"}))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    let result = &reply["result"];
    assert_eq!(counts(result), (2, 3), "two users, three connections");
    let clients = result["clients"].as_array().unwrap();
    let mut seen: Vec<(String, String)> = clients
        .iter()
        .map(|c| {
            assert!(c["joined_at"].as_u64().unwrap() > 0);
            (
                c["user"].as_str().unwrap().to_string(),
                c["client"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        ("alice".to_string(), tab1.client_id.clone()),
        ("alice".to_string(), tab2.client_id.clone()),
        ("bob".to_string(), bob.client_id.clone()),
    ];
    expected.sort();
    assert_eq!(seen, expected);

    // The same from the server API, and only the counts when asked.
    let (status, body) = server.get("/api/channels/lobby:1/presence").await;
    assert_eq!(status, 200);
    assert_eq!(counts(&body), (2, 3));
    assert_eq!(body["clients"].as_array().unwrap().len(), 3);
    let (_, body) = server
        .get("/api/channels/lobby:1/presence?counts_only=true")
        .await;
    assert_eq!(counts(&body), (2, 3));
    assert!(body.get("clients").is_none(), "{body}");
    let reply = bob
        .request(json!({"type": "presence", "channel": "lobby:1", "counts_only": true}))
        .await;
    assert_eq!(counts(&reply["result"]), (2, 3));

    // One tab unsubscribes: alice is still there through the other.
    tab1.request(json!({"type": "unsubscribe", "channel": "lobby:1"}))
        .await;
    presence_counts_become(&server, "lobby:1", (2, 2)).await;
    // The other tab closes: alice has left the channel, bob remains.
    drop(tab2);
    presence_counts_become(&server, "lobby:1", (1, 1)).await;
    let (_, body) = server.get("/api/channels/lobby:1/presence").await;
    assert_eq!(body["clients"][0]["user"], "bob");
    let (_, user) = server.get("/api/users/alice").await;
    assert_eq!(user["online"], true);
    assert_eq!(user["connections"], 1);

    // The server API unsubscribing bob takes him out of presence too.
    server
        .post(
            "/api/unsubscribe",
            json!({"user": "bob", "channel": "lobby:1"}),
        )
        .await;
    presence_counts_become(&server, "lobby:1", (0, 0)).await;
}

#[tokio::test]
async fn presence_is_refused_where_the_namespace_keeps_none_or_the_client_may_not_read() {
    let server = TestServer::start_default().await;
    let mut alice = server.connect("alice").await;
    alice.subscribed("chat:1").await;
    let reply = alice
        .request(json!({"type": "presence", "channel": "chat:1"}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let (status, body) = server.get("/api/channels/chat:1/presence").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _) = server.get("/api/channels/nope:1/presence").await;
    assert_eq!(status, 404);
    let (status, _) = server.get("/api/channels/bad%20name/presence").await;
    assert_eq!(status, 400);
    let reply = alice
        .request(json!({"type": "presence", "channel": "user:bob"}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
}

#[tokio::test]
async fn joins_and_leaves_reach_the_other_subscribers() {
    let server = TestServer::start_default().await;
    let mut bob = server.connect("bob").await;
    bob.subscribed("lobby:2").await;

    let mut alice = server.connect("alice").await;
    alice.subscribed("lobby:2").await;
    let join = bob.next_of("join").await;
    assert_eq!(
        join,
        json!({"type": "join", "channel": "lobby:2", "user": "alice", "client": alice.client_id})
    );
    alice.assert_silent(QUIET).await;

    alice
        .request(json!({"type": "unsubscribe", "channel": "lobby:2"}))
        .await;
    let leave = bob.next_of("leave").await;
    assert_eq!(leave["user"], "alice");
    assert_eq!(leave["client"], alice.client_id.as_str());

    // Closing the connection is a leave too.
    alice.subscribed("lobby:2").await;
    assert_eq!(bob.next_of("join").await["user"], "alice");
    drop(alice);
    assert_eq!(bob.next_of("leave").await["user"], "alice");
    bob.assert_silent(QUIET).await;
}

#[tokio::test]
async fn join_and_leave_are_suppressed_past_the_member_limit() {
    let mut config = TestServer::config();
    let mut crowd = NamespaceConfig::new("crowd");
    crowd.presence = true;
    crowd.join_leave = true;
    crowd.join_leave_max_members = 3;
    config.namespaces.push(crowd);
    let server = TestServer::start(config).await;

    let mut watcher = server.connect("watcher").await;
    watcher.subscribed("crowd:1").await;
    let mut members = Vec::new();
    for i in 2..=4 {
        let mut member = server.connect(&format!("m{i}")).await;
        member.subscribed("crowd:1").await;
        members.push(member);
    }
    // Members 2 and 3 joined a channel of at most 3; member 4 made it 4: no join.
    assert_eq!(watcher.next_of("join").await["user"], "m2");
    assert_eq!(watcher.next_of("join").await["user"], "m3");
    watcher.assert_silent(QUIET).await;

    // Leaving from 4 members is suppressed as well; from 3 it is sent again.
    let m4 = members.pop().unwrap();
    drop(m4);
    presence_counts_become(&server, "crowd:1", (3, 3)).await;
    watcher.assert_silent(QUIET).await;
    let m3 = members.pop().unwrap();
    drop(m3);
    assert_eq!(watcher.next_of("leave").await["user"], "m3");
}

#[tokio::test]
async fn typing_reaches_the_others_at_most_once_a_second_and_never_enters_history() {
    let server = TestServer::start_default().await;
    let mut alice = server.connect("alice").await;
    let mut alice_tab = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.subscribed("lobby:3").await;
    bob.subscribed("lobby:3").await;
    alice_tab.subscribed("lobby:3").await;
    let _ = alice.next_of("join").await; // bob
    let _ = alice.next_of("join").await; // the other tab
    let _ = bob.next_of("join").await;

    alice
        .send(json!({"type": "typing", "channel": "lobby:3"}))
        .await;
    let typing = bob.next_of("typing").await;
    assert_eq!(
        typing,
        json!({"type": "typing", "channel": "lobby:3", "user": "alice"})
    );
    // The same user's other tab sees it; the sender does not.
    assert_eq!(alice_tab.next_of("typing").await["user"], "alice");

    // Five more within the second, from either tab: dropped without an error.
    for _ in 0..3 {
        alice
            .send(json!({"type": "typing", "channel": "lobby:3"}))
            .await;
    }
    let reply = alice_tab
        .request(json!({"type": "typing", "channel": "lobby:3"}))
        .await;
    assert_eq!(reply["result"]["sent"], false, "{reply}");
    alice.assert_silent(QUIET).await;
    bob.assert_silent(QUIET).await;

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let reply = alice
        .request(json!({"type": "typing", "channel": "lobby:3"}))
        .await;
    assert_eq!(reply["result"]["sent"], true, "{reply}");
    assert_eq!(bob.next_of("typing").await["user"], "alice");

    let (_, history) = server.get("/api/channels/lobby:3/history").await;
    assert!(publication_offsets(&history).is_empty(), "{history}");
    server
        .assert_metric_at_least("herald_typing_throttled_total", 4.0)
        .await;

    // Refused: a namespace without typing, and a channel the client is not subscribed to.
    alice.subscribed("chat:1").await;
    let reply = alice
        .request(json!({"type": "typing", "channel": "chat:1"}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let reply = alice
        .request(json!({"type": "typing", "channel": "lobby:9"}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
}

#[tokio::test]
async fn a_client_publication_carries_from_enters_history_and_answers_with_its_offset() {
    let server = TestServer::start_default().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    bob.subscribed("lobby:4").await;
    server.publish("lobby:4", json!("from the backend")).await;

    let reply = alice
        .request(json!({
            "type": "publish", "channel": "lobby:4", "event": "message",
            "data": {"text": "hi"},
            "from": {"user": "mallory", "client": "forged"}, "user": "mallory"
        }))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["result"]["offset"], 2);
    assert!(reply["result"]["epoch"].is_string());

    let _ = bob.next_message().await;
    let message = bob.next_message().await;
    assert_eq!(message["offset"], 2);
    assert_eq!(
        message["from"],
        json!({"user": "alice", "client": alice.client_id})
    );

    let (_, history) = server.get("/api/channels/lobby:4/history").await;
    assert_eq!(publication_offsets(&history), [1, 2]);
    let publications = history["publications"].as_array().unwrap();
    assert!(publications[0].get("from").is_none());
    assert_eq!(publications[1]["from"]["user"], "alice");
    assert_eq!(publications[1]["data"]["text"], "hi");

    // Where clients may not publish, nothing is stored.
    let refused = alice
        .request(json!({"type": "publish", "channel": "room:1", "data": 1}))
        .await;
    assert_eq!(refused["code"], "forbidden");
    let (_, history) = server.get("/api/channels/room:1/history").await;
    assert!(publication_offsets(&history).is_empty());
}

#[tokio::test]
async fn an_unsubscribe_and_subscribe_in_one_burst_keep_presence_in_the_order_sent() {
    let mut config = TestServer::config();
    config.limits.commands_burst = 1_000;
    let server = TestServer::start(config).await;
    let mut bob = server.connect("bob").await;
    bob.subscribed("lobby:burst").await;
    let mut alice = server.connect("alice").await;
    alice.subscribed("lobby:burst").await;
    assert_eq!(bob.next_of("join").await["user"], "alice");

    for round in 0..20 {
        // Both frames leave before any answer comes back, as a client re-recovering would send
        // them.
        alice
            .send(json!({"type": "unsubscribe", "channel": "lobby:burst", "id": 1000 + round}))
            .await;
        alice
            .send(json!({"type": "subscribe", "channel": "lobby:burst", "id": 2000 + round}))
            .await;
        let unsubscribed = alice.next().await;
        assert_eq!(
            unsubscribed["type"], "unsubscribed",
            "round {round}: {unsubscribed}"
        );
        let subscribed = alice.next().await;
        assert_eq!(
            subscribed["type"], "subscribed",
            "round {round}: {subscribed}"
        );
        // The others see the leave, then the join: never a join followed by a leave.
        let leave = bob.next().await;
        assert_eq!(
            (&leave["type"], &leave["user"]),
            (&json!("leave"), &json!("alice")),
            "round {round}"
        );
        let join = bob.next().await;
        assert_eq!(
            (&join["type"], &join["user"]),
            (&json!("join"), &json!("alice")),
            "round {round}"
        );
        // And alice is still present, as she is still subscribed.
        let (_, body) = server.get("/api/channels/lobby:burst/presence").await;
        assert_eq!(counts(&body), (2, 2), "round {round}: {body}");
    }
    bob.assert_silent(QUIET).await;
}
