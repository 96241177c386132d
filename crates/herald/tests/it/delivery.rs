//! Publications reach exactly the connections subscribed to them, over real sockets.

use serde_json::json;

use crate::common::{assert_closed_with, patience, TestServer, QUIET};

#[tokio::test]
async fn a_publication_reaches_one_subscriber_with_offset_and_timestamp() {
    let server = TestServer::start_default().await;
    let mut alice = server.connect("alice").await;
    assert_eq!(alice.user, "alice");
    alice.subscribed("chat:1").await;

    let published = server.publish("chat:1", json!({"text": "hello"})).await;
    assert_eq!(published["offset"], 1);
    assert!(published["epoch"].is_string());

    let message = alice.next_message().await;
    assert_eq!(message["channel"], "chat:1");
    assert_eq!(message["data"], json!({"text": "hello"}));
    assert_eq!(message["offset"], 1);
    assert!(message["ts"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(
        message.get("from").is_none(),
        "API publications carry no from"
    );
}

#[tokio::test]
async fn many_subscribers_each_get_every_publication_in_order() {
    let server = TestServer::start_default().await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut client = server.connect(&format!("u{i}")).await;
        client.subscribed("feed:news").await;
        clients.push(client);
    }
    let mut outsider = server.connect("outsider").await;
    for n in 1..=10 {
        server.publish("feed:news", json!({"n": n})).await;
    }
    for client in &mut clients {
        for n in 1..=10 {
            let message = client.next_message().await;
            assert_eq!(message["data"]["n"], n);
            assert_eq!(message["offset"], n);
        }
    }
    outsider.assert_silent(QUIET).await;
}

#[tokio::test]
async fn the_event_name_is_delivered() {
    let server = TestServer::start_default().await;
    let mut alice = server.connect("alice").await;
    alice.subscribed("alarms").await;
    let (status, _) = server
        .post(
            "/api/publish",
            json!({"channel": "alarms", "event": "LOW_BUNKER", "data": {"bunker": 3}}),
        )
        .await;
    assert_eq!(status, 200);
    let message = alice.next_message().await;
    assert_eq!(message["event"], "LOW_BUNKER");
    assert_eq!(message["data"]["bunker"], 3);
}

#[tokio::test]
async fn broadcast_publishes_to_each_channel_and_reports_each_result() {
    let server = TestServer::start_default().await;
    let mut a = server.connect("a").await;
    let mut b = server.connect("b").await;
    a.subscribed("chat:1").await;
    b.subscribed("chat:2").await;
    let (status, body) = server
        .post(
            "/api/broadcast",
            json!({"channels": ["chat:1", "chat:2", "bad name", "nowhere:1"], "event": "sys", "data": "maintenance"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["offset"], 1);
    assert_eq!(results[1]["offset"], 1);
    assert_eq!(results[2]["error"]["code"], "bad_request");
    assert_eq!(results[3]["error"]["code"], "not_found");
    assert_eq!(a.next_message().await["data"], "maintenance");
    assert_eq!(b.next_message().await["data"], "maintenance");
}

#[tokio::test]
async fn batch_publishes_each_publication_in_order() {
    let server = TestServer::start_default().await;
    let mut a = server.connect("a").await;
    a.subscribed("chat:1").await;
    let (status, body) = server
        .post(
            "/api/batch",
            json!({"publications": [
                {"channel": "chat:1", "data": 1},
                {"channel": "user:a", "event": "personal", "data": 2},
                {"channel": "chat:1", "data": 3},
                {"channel": "chat 1", "data": 4},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(
        results
            .iter()
            .map(|r| r["offset"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(1), json!(2), json!(null)]
    );
    assert_eq!(results[3]["error"]["code"], "bad_request");
    let got: Vec<_> = [
        a.next_message().await,
        a.next_message().await,
        a.next_message().await,
    ]
    .iter()
    .map(|m| m["data"].clone())
    .collect();
    assert_eq!(got, [json!(1), json!(2), json!(3)]);
}

#[tokio::test]
async fn a_user_with_three_connections_gets_every_personal_message_on_each() {
    let server = TestServer::start_default().await;
    let mut tabs = vec![
        server.connect("42").await,
        server.connect("42").await,
        server.connect("42").await,
    ];
    let mut other = server.connect("43").await;
    for n in 1..=3 {
        server.publish("user:42", json!({"n": n})).await;
    }
    for tab in &mut tabs {
        for n in 1..=3 {
            let message = tab.next_message().await;
            assert_eq!(message["channel"], "user:42");
            assert_eq!(message["data"]["n"], n);
        }
    }
    other.assert_silent(QUIET).await;
    let (_, user) = server.get("/api/users/42").await;
    assert_eq!(
        user,
        json!({"user": "42", "online": true, "connections": 3})
    );
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start_default().await;
    let mut alice = server.connect("alice").await;
    alice.subscribed("chat:1").await;
    server.publish("chat:1", json!(1)).await;
    assert_eq!(alice.next_message().await["data"], 1);

    let reply = alice
        .request(json!({"type": "unsubscribe", "channel": "chat:1"}))
        .await;
    assert_eq!(reply["type"], "unsubscribed");
    assert_eq!(reply["channel"], "chat:1");
    server.publish("chat:1", json!(2)).await;
    alice.assert_silent(QUIET).await;

    let again = alice
        .request(json!({"type": "unsubscribe", "channel": "chat:1"}))
        .await;
    assert_eq!(again["code"], "not_found");
}

#[tokio::test]
async fn the_api_disconnects_every_connection_of_a_user() {
    let server = TestServer::start_default().await;
    let mut first = server.connect("bob").await;
    let mut second = server.connect("bob").await;
    let mut carol = server.connect("carol").await;
    let (status, _) = server
        .post(
            "/api/disconnect",
            json!({"user": "bob", "reconnect": false}),
        )
        .await;
    assert_eq!(status, 200);
    for client in [&mut first, &mut second] {
        let closed = client.closed().await;
        assert_closed_with(&closed, 4013);
        assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
    }
    // Carol is untouched and still receives.
    server.publish("user:carol", json!("still here")).await;
    assert_eq!(carol.next_message().await["data"], "still here");
    let (_, bob) = server.get("/api/users/bob").await;
    assert_eq!(bob["online"], false);
}

#[tokio::test]
async fn the_api_unsubscribes_a_user_from_a_channel() {
    let server = TestServer::start_default().await;
    let mut alice = server.connect("alice").await;
    alice.subscribed("chat:9").await;
    let (status, _) = server
        .post(
            "/api/unsubscribe",
            json!({"user": "alice", "channel": "chat:9"}),
        )
        .await;
    assert_eq!(status, 200);
    let notice = alice.next().await;
    assert_eq!(notice, json!({"type": "unsubscribed", "channel": "chat:9"}));
    server.publish("chat:9", json!(1)).await;
    alice.assert_silent(QUIET).await;
}

#[tokio::test]
async fn clients_publish_where_the_namespace_allows_and_from_is_set_by_the_server() {
    let server = TestServer::start_default().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    bob.subscribed("chat:7").await;
    alice.subscribed("chat:7").await;

    let reply = alice
        .request(
            json!({"type": "publish", "channel": "chat:7", "event": "message",
                        "data": {"text": "hi"}, "from": {"user": "mallory"}}),
        )
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["result"]["offset"], 1);
    let message = bob.next_message().await;
    assert_eq!(message["from"]["user"], "alice");
    assert_eq!(message["from"]["client"], alice.client_id.as_str());

    let refused = alice
        .request(json!({"type": "publish", "channel": "feed:news", "data": 1}))
        .await;
    assert_eq!(refused["code"], "forbidden");
}

#[tokio::test]
async fn ping_is_answered_with_the_server_time() {
    let server = TestServer::start_default().await;
    let mut alice = server.connect("alice").await;
    let reply = alice.request(json!({"type": "ping"})).await;
    assert_eq!(reply["type"], "reply");
    assert!(reply["result"]["pong"].as_u64().unwrap() > 1_700_000_000_000);
    let text_id = {
        alice.send(json!({"type": "ping", "id": "abc"})).await;
        alice.next().await
    };
    assert_eq!(text_id["id"], "abc");
}

#[tokio::test]
async fn channels_users_and_stats_describe_the_node() {
    let server = TestServer::start_default().await;
    let mut a = server.connect("a").await;
    let mut b = server.connect("b").await;
    a.subscribed("chat:1").await;
    b.subscribed("chat:1").await;
    b.subscribed("chat:2").await;
    server.publish("chat:1", json!(1)).await;
    a.next_message().await;
    b.next_message().await;

    let (_, body) = server.get("/api/channels?prefix=chat:").await;
    assert_eq!(
        body["channels"],
        json!([{"channel": "chat:1", "subscribers": 2}, {"channel": "chat:2", "subscribers": 1}])
    );
    let (_, all) = server.get("/api/channels").await;
    assert_eq!(
        all["channels"].as_array().unwrap().len(),
        4,
        "two chats and two personal channels"
    );

    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["engine"], "memory");
    assert_eq!(stats["node"]["connections"], 2);
    assert_eq!(stats["node"]["users"], 2);
    assert_eq!(stats["node"]["subscriptions"], 5);
    assert_eq!(stats["node"]["messages_in"], 1);
    assert_eq!(stats["node"]["messages_out"], 2);

    assert_eq!(server.metric("herald_connections").await, 2.0);
    assert_eq!(server.metric("herald_messages_out_total").await, 2.0);

    let (status, health) = server
        .request(reqwest::Method::GET, "/health", None, None)
        .await;
    assert_eq!((status, health), (200, json!({"status": "ok"})));
    let (status, _) = server
        .request(reqwest::Method::GET, "/ready", None, None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_close_from_the_client_is_answered_cleanly() {
    use futures_util::StreamExt;
    let server = TestServer::start_default().await;
    let mut alice = server.connect("alice").await;
    alice.socket.close(None).await.unwrap();
    // The server's close reply arrives and the stream ends without a protocol error.
    let mut clean = false;
    while let Ok(Some(frame)) = tokio::time::timeout(patience(), alice.socket.next()).await {
        match frame {
            Ok(tokio_tungstenite::tungstenite::Message::Close(_)) => clean = true,
            Ok(_) => {}
            Err(e) => panic!("unclean close: {e}"),
        }
    }
    assert!(clean, "the server answered the close frame");
}
