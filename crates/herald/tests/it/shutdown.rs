//! SIGTERM drains: every client gets `disconnect` with 1012 and `reconnect: true`, queued
//! messages are flushed first, and the process exits 0.

use std::time::Duration;

use serde_json::json;

use crate::common::{assert_closed_with, closed, eventually, send_json, ServerProcess, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_disconnects_everyone_with_1012_and_exits_0() {
    let mut process = ServerProcess::start("[limits]\nshutdown_drain = \"500ms\"\n");
    let server = process.handle();
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut client = server.connect(&format!("u{i}")).await;
        client.subscribed("feed:last").await;
        clients.push(client);
    }
    for n in 1..=50 {
        server.publish("feed:last", json!(n)).await;
    }
    process.terminate();
    for client in &mut clients {
        for n in 1..=50 {
            assert_eq!(
                client.next_message().await["data"],
                n,
                "queued messages are flushed first"
            );
        }
        let closed = client.closed().await;
        assert_closed_with(&closed, 1012);
        assert_eq!(closed.disconnect.unwrap()["reconnect"], true);
    }
    assert_eq!(process.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn the_in_process_server_stops_cleanly() {
    let server = TestServer::start_default().await;
    let mut client = server.connect("alice").await;
    let stopping = tokio::spawn(async move { server.stop().await });
    assert_closed_with(&client.closed().await, 1012);
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_connection_that_authenticates_during_the_drain_is_refused_with_1012() {
    let mut config = TestServer::config();
    config.limits.shutdown_drain = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let mut early = server.connect("early").await;
    // Upgraded but not yet authenticated when the shutdown begins.
    let mut late = server.open_bare().await;
    let token = server.token("late");
    let app = server.app();
    let stopping = tokio::spawn(async move { server.stop().await });
    eventually("the shutdown begins", async || app.is_shutting_down()).await;
    send_json(&mut late, json!({"type": "auth", "token": token})).await;
    assert_closed_with(&closed(&mut late).await, 1012);
    assert_closed_with(&early.closed().await, 1012);
    stopping.await.unwrap().unwrap();
}
