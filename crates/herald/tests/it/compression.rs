//! permessage-deflate (RFC 7692) on `/ws`, over a hand-written client that can offer it: the
//! negotiation, publications compressed once and shared, plain clients unaffected, compressed
//! client messages, and a message that inflates past `limits.max_frame_bytes` refused with 4009.

use flate2::{Decompress, FlushDecompress};
use serde_json::{json, Value};

use crate::common::{eventually, TestServer};
use crate::websocket_rfc6455::{encode, Frame, Length, RawClient, MASK};

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const ACCEPTED: &str =
    "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A frame's payload as the message it carries: inflated when RSV1 says it is compressed.
fn message_of(frame: &Frame) -> Vec<u8> {
    if !frame.compressed {
        return frame.payload.clone();
    }
    let mut input = frame.payload.clone();
    input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    let mut inflater = Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 20);
    inflater
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// The client's side of compression: raw DEFLATE, sync-flushed, the tail taken off.
fn compress(message: &[u8]) -> Vec<u8> {
    let mut deflater = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(message.len() + 64);
    deflater
        .compress_vec(message, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    out.truncate(out.len() - 4);
    out
}

/// The next frame that is a `message`, and whether it came compressed.
async fn next_message(client: &mut RawClient) -> (Value, bool, usize) {
    loop {
        let frame = client.answer().await.unwrap();
        let text: Value = serde_json::from_slice(&message_of(&frame)).unwrap();
        if text["type"] == "message" {
            return (text, frame.compressed, frame.payload.len());
        }
    }
}

async fn subscribe(client: &mut RawClient, channel: &str) {
    let command = json!({"type": "subscribe", "channel": channel, "id": 1}).to_string();
    client
        .send(&encode(0x81, MASK, Length::Shortest, command.as_bytes()))
        .await
        .unwrap();
    let frame = client.answer().await.unwrap();
    let answer: Value = serde_json::from_slice(&message_of(&frame)).unwrap();
    assert_eq!(answer["type"], "subscribed", "{answer}");
}

/// A seed-like payload: a plant site's dashboard update, about 1 KB of JSON.
fn site_update(n: u64) -> Value {
    let mixers: Vec<Value> = (0..12)
        .map(|i| json!({"id": format!("mixer-{i}"), "status": "running", "load_percent": 70 + i, "temperature_c": 21.5}))
        .collect();
    json!({"site_id": 1, "sequence": n, "mixers": mixers, "alarms": []})
}

/// A client that offers permessage-deflate gets it and receives every publication, the large
/// ones compressed and smaller, the small ones plain; a client that does not offer it receives the
/// same messages, in the same order, uncompressed.
#[tokio::test]
async fn a_client_that_negotiates_receives_the_same_messages_smaller() {
    let server = TestServer::start_default().await;
    let mut compressed = RawClient::open_with(&server, "alice", OFFER).await;
    assert!(
        compressed.response.to_ascii_lowercase().contains(ACCEPTED),
        "{}",
        compressed.response
    );
    let mut plain = RawClient::open_with(&server, "bob", "").await;
    assert!(!plain
        .response
        .to_ascii_lowercase()
        .contains("sec-websocket-extensions"));
    subscribe(&mut compressed, "chat:plant").await;
    subscribe(&mut plain, "chat:plant").await;

    for n in 1..=3 {
        server.publish("chat:plant", site_update(n)).await;
        server.publish("chat:plant", json!({"n": n})).await;
    }
    for n in 1..=3 {
        let (big, was_compressed, wire) = next_message(&mut compressed).await;
        let (same, plain_compressed, plain_wire) = next_message(&mut plain).await;
        assert_eq!(big, same);
        assert_eq!(big["data"], site_update(n));
        assert!(was_compressed && !plain_compressed);
        assert!(
            wire * 3 < plain_wire,
            "{wire} bytes compressed, {plain_wire} plain"
        );
        let (small, small_compressed, _) = next_message(&mut compressed).await;
        assert_eq!(small["data"], json!({"n": n}));
        assert!(
            !small_compressed,
            "a message under the threshold goes plain"
        );
        assert_eq!(next_message(&mut plain).await.0, small);
    }
}

/// The client may compress what it sends; a compressed message that would inflate past
/// `limits.max_frame_bytes` is refused with 4009, however small it is on the wire.
#[tokio::test]
async fn compressed_client_messages_are_read_and_a_zip_bomb_is_refused() {
    let server = TestServer::start_default().await;
    let mut client = RawClient::open_with(&server, "alice", OFFER).await;
    let command = json!({"type": "subscribe", "channel": "chat:zip", "id": 7}).to_string();
    client
        .send(&encode(
            0xC1,
            MASK,
            Length::Shortest,
            &compress(command.as_bytes()),
        ))
        .await
        .unwrap();
    let answer: Value =
        serde_json::from_slice(&message_of(&client.answer().await.unwrap())).unwrap();
    assert_eq!(answer["type"], "subscribed", "{answer}");
    assert_eq!(answer["id"], 7);

    let limit = server.app().config.limits.max_frame_bytes;
    let padding = " ".repeat(limit * 16);
    let bomb = compress(format!("{{\"type\":\"ping\",\"pad\":\"{padding}\"}}").as_bytes());
    assert!(bomb.len() < limit / 8, "{} bytes", bomb.len());
    client
        .send(&encode(0xC1, MASK, Length::Shortest, &bomb))
        .await
        .unwrap();
    let mut frame = client.answer().await.unwrap();
    if frame.opcode == 0x1 {
        let disconnect: Value = serde_json::from_slice(&message_of(&frame)).unwrap();
        assert_eq!(disconnect["code"], 4009, "{disconnect}");
        frame = client.answer().await.unwrap();
    }
    assert_eq!(frame.close_code(), Some(4009));
    eventually("the close counted as frame_too_large", async || {
        server
            .metric("herald_disconnects_total{reason=\"frame_too_large\"}")
            .await
            >= 1.0
    })
    .await;
}

/// With `[compression] enabled = false`, or an offer Herald cannot honour (a smaller server
/// window), the connection goes on uncompressed.
#[tokio::test]
async fn compression_is_off_when_disabled_or_the_offer_cannot_be_honoured() {
    let mut config = TestServer::config();
    config.compression.enabled = false;
    let server = TestServer::start(config).await;
    let client = RawClient::open_with(&server, "alice", OFFER).await;
    assert!(!client
        .response
        .to_ascii_lowercase()
        .contains("sec-websocket-extensions"));

    let server = TestServer::start_default().await;
    let smaller_window =
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n";
    let mut client = RawClient::open_with(&server, "alice", smaller_window).await;
    assert!(!client
        .response
        .to_ascii_lowercase()
        .contains("sec-websocket-extensions"));
    subscribe(&mut client, "chat:plain").await;
    server.publish("chat:plain", site_update(1)).await;
    let (message, compressed, _) = next_message(&mut client).await;
    assert_eq!(message["data"], site_update(1));
    assert!(!compressed);
}
