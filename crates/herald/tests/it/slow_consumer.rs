//! A client that stops reading is dropped with 4010 while 1,000 others receive every publication,
//! and the server's memory stays bounded. Runs against the real binary in its own process.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{eventually, Client, ServerProcess};

const READERS: usize = 1000;
const STREAM: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_the_others_get_everything() {
    let process = ServerProcess::start(
        "[limits]\noutbound_queue_bytes = 262144\nconnections_per_ip_per_second = 100000\n",
    );
    let server = process.handle();

    // 1,000 readers on one channel, each checking it gets 1..=STREAM in order.
    let mut clients = Vec::new();
    for i in 0..READERS {
        let mut client = server.connect(&format!("reader{i}")).await;
        client.subscribed("feed:stream").await;
        clients.push(client);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                for n in 1..=STREAM {
                    let message = client.next_message().await;
                    assert_eq!(message["data"]["n"], n, "reader got a gap or a duplicate");
                }
                client
            })
        })
        .collect();

    // The slow client: a tiny receive buffer, subscribes, then never reads again.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(process.addr).await.unwrap();
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", server.token("slow"))).unwrap(),
    );
    let (ws, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let mut slow = Client::established(ws).await;
    slow.subscribed("feed:stream").await;
    let rss_before = process.rss_kib();

    // The shared stream, interleaved with large personal messages that only the slow client gets.
    let big = "x".repeat(60_000);
    for n in 1..=STREAM {
        server.publish("feed:stream", json!({"n": n})).await;
        server.publish("user:slow", json!({"pad": big})).await;
    }

    for reader in readers {
        tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("readers finish")
            .unwrap();
    }
    let slow_consumers = "herald_disconnects_total{reason=\"slow_consumer\"}";
    let dropped = eventually("a slow consumer is dropped", async || {
        let dropped = server.metric(slow_consumers).await;
        if dropped >= 1.0 {
            Ok(dropped)
        } else {
            Err(dropped)
        }
    })
    .await;
    assert_eq!(dropped, 1.0, "exactly the slow client was dropped");
    let (_, user) = server.get("/api/users/slow").await;
    assert_eq!(user["online"], false);

    // The slow client, reading at last, finds its stream ended; if the close frame made it
    // through (the server tries for a second), it carries 4010.
    let mut socket = slow.socket;
    let mut code = None;
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(frame) = socket.next().await {
            match frame {
                Ok(Message::Close(frame)) => code = frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the slow client's connection ends");
    assert!(matches!(code, None | Some(4010)), "{code:?}");
    let _ = socket.close(None).await;

    // The queue bound held: the server did not buffer the slow client's backlog.
    let rss_after = process.rss_kib();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "server RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
