//! The servers the official protocol test suites expect, built from this transport (feature
//! `socketio-conformance`; `examples/socketio-conformance.rs` serves them).
//!
//! - `/engine.io/`: Engine.IO alone, every message echoed (the Engine.IO suite).
//! - `/socket.io/`: the Socket.IO suite's namespaces (`/` and `/custom`): a connect is answered
//!   and followed by an `auth` event carrying the connect's payload, `message` is emitted back as
//!   `message-back`, and `message-with-ack` is acked with its arguments, attachments included.
//!
//! Everything else (handshakes, polling, upgrades, heartbeats, packet parsing, binary
//! attachments, closes) is the transport Herald serves its clients with.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::connection::{Connection, Ending};
use super::packet::{self, Kind, Outgoing, Packet};
use super::{polling, Application};
use crate::server::App;
use crate::transport::Peer;

/// `GET /engine.io/`.
pub async fn engine_poll(State(app): State<App>, Peer(peer): Peer, request: Request) -> Response {
    polling::poll_with(app, peer, request, Application::EngineEcho).await
}

/// `GET /socket.io/` of the Socket.IO suite's server.
pub async fn socketio_poll(State(app): State<App>, Peer(peer): Peer, request: Request) -> Response {
    polling::poll_with(app, peer, request, Application::SocketIoTest).await
}

/// `POST` on either: the connection knows what answers it.
pub async fn post(State(app): State<App>, request: Request) -> Response {
    polling::post(State(app), request).await
}

/// Any other method: `400`, as the suites expect.
pub async fn wrong_method(State(app): State<App>) -> Response {
    super::wrong_method(State(app)).await
}

/// A Socket.IO packet for the suite's server.
pub(crate) async fn on_packet(
    connection: &Arc<Connection>,
    packet: Packet,
    attachments: Vec<Vec<u8>>,
) {
    let names = &connection.app.config.socketio.namespaces;
    let namespace = packet.namespace.as_str();
    let index = names.iter().position(|n| n == namespace);
    match packet.kind {
        Kind::Connect => {
            let Some(index) = index else {
                return connection.send(packet::text_packet(
                    Kind::ConnectError,
                    namespace,
                    None,
                    "{\"message\":\"Invalid namespace\"}",
                ));
            };
            connection.with_test_namespaces(|n| n.push(index));
            let sid = crate::transport::socketio::connection::new_sid();
            connection.send(packet::text_packet(
                Kind::Connect,
                namespace,
                None,
                &format!("{{\"sid\":\"{sid}\"}}"),
            ));
            // The suite listens for the `auth` event only once the connect answer's promise has
            // resolved, so a frame in the same read as the answer is missed: written apart, as
            // the reference server's two writes are.
            let auth = packet.data.as_deref().map_or("{}", RawValue::get);
            let auth =
                packet::text_packet(Kind::Event, namespace, None, &format!("[\"auth\",{auth}]"));
            let connection = connection.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                connection.send(auth);
            });
        }
        Kind::Disconnect => {
            if let Some(index) = index {
                connection.with_test_namespaces(|n| n.retain(|i| *i != index));
            }
        }
        Kind::Event | Kind::BinaryEvent => {
            let connected =
                index.is_some_and(|index| connection.with_test_namespaces(|n| n.contains(&index)));
            if !connected {
                return;
            }
            let Some(data) = packet.data.as_deref() else {
                return;
            };
            let Ok(mut args) = serde_json::from_str::<Vec<Box<RawValue>>>(data.get()) else {
                return connection.close(Ending::Protocol("an event that is not an array"));
            };
            let name: String = args
                .first()
                .and_then(|n| serde_json::from_str(n.get()).ok())
                .unwrap_or_default();
            let rest: Vec<Box<RawValue>> = args.drain(1..).collect();
            let rest = rest.iter().map(|a| a.get()).collect::<Vec<_>>().join(",");
            let binary = !attachments.is_empty();
            let (kind, ack, body) = match (name.as_str(), packet.ack) {
                ("message", _) => (
                    if binary {
                        Kind::BinaryEvent
                    } else {
                        Kind::Event
                    },
                    None,
                    if rest.is_empty() {
                        "[\"message-back\"]".to_owned()
                    } else {
                        format!("[\"message-back\",{rest}]")
                    },
                ),
                ("message-with-ack", Some(id)) => (
                    if binary { Kind::BinaryAck } else { Kind::Ack },
                    Some(id),
                    format!("[{rest}]"),
                ),
                _ => return,
            };
            let mut text = packet::header(kind, namespace, attachments.len(), ack);
            text.push_str(&body);
            connection.send(Outgoing::text(text));
            for attachment in attachments {
                connection.send(Outgoing::Binary(Bytes::from(attachment)));
            }
        }
        Kind::Ack | Kind::BinaryAck | Kind::ConnectError => {}
    }
}
