//! Socket.IO clients: Engine.IO v4 and Socket.IO v5 at `/socket.io/`, on the same hub as `/ws`.
//!
//! An existing app's `socket.io-client` connects here unchanged (`docs/socketio.md`). Herald
//! speaks the two protocols itself rather than through a crate: socketioxide, the maintained
//! Rust implementation, owns the socket, keeps its own per-socket queue and room index, and
//! copies each message per recipient, where Herald needs each namespace's connection to be a hub
//! [`Session`](herald_core::Session) (permissions, limits, presence, history, recovery, clustering)
//! and a publication encoded once and shared. The protocols are small; what they ask of a server
//! is here, one concern per file:
//!
//! - [`packet`]: the text forms of Engine.IO and Socket.IO packets, and polling payloads.
//! - [`connection`]: one Engine.IO connection (its `sid`), whichever transport carries it: its
//!   own bounded packet queue, a hub session per connected namespace, the heartbeat, the close.
//! - [`polling`]: `GET` and `POST /socket.io/?transport=polling`: the handshake, long-polls
//!   that drain the connection, posts that carry the client's packets.
//! - [`websocket`]: `GET /socket.io/?transport=websocket`, a WebSocket from the start or the
//!   upgrade of a polling connection (probe, `noop` to the pending poll, `upgrade`), framed with
//!   `/ws`'s own codec and permessage-deflate.
//! - [`events`]: what Herald does with the client's Socket.IO packets: a namespace's connect
//!   (the token from `auth.token`, the header or the query string), the built-in events
//!   answered through acks, and the operator's event map (`[[socketio.event]]`).
//!
//! What the hub delivers is emitted by [`encode`]: a publication as the event its `event` names
//! (or `message`), framed once per namespace and form (polling packet, WebSocket frame,
//! compressed WebSocket frame) and shared by every Socket.IO subscriber.

pub(crate) mod clock;
#[cfg(feature = "socketio-conformance")]
pub mod conformance;
pub(crate) mod connection;
pub(crate) mod events;
pub(crate) mod packet;
pub(crate) mod polling;
pub(crate) mod websocket;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use herald_core::hooks::ForwardedHeaders;
use herald_core::hub::Outbound;
use herald_core::protocol;
use herald_core::publication::WireFormat;
use herald_core::HeraldError;
use serde::Deserialize;

use self::packet::Kind;
use crate::auth::Verified;
use crate::transport::ws::{self, Deflate};

pub use self::connection::Registry;
pub use self::events::BUILT_IN_EVENTS;
#[doc(hidden)]
pub use self::polling::{__path_poll, __path_post};
pub use self::polling::{poll, post};

/// What answers a connection's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Application {
    /// Herald: each Socket.IO namespace a hub session ([`events`]).
    Hub,
    /// The Engine.IO test suite's server: every message echoed.
    #[cfg(feature = "socketio-conformance")]
    EngineEcho,
    /// The Socket.IO test suite's server ([`conformance`]).
    #[cfg(feature = "socketio-conformance")]
    SocketIoTest,
}

/// How the handshake's request authenticated the client; each namespace's connect may bring
/// `auth.token` instead.
#[derive(Clone)]
pub enum Credentials {
    /// A token from `Authorization: Bearer` or `?token=`, verified at each connect.
    Token(String, Option<ForwardedHeaders>),
    /// The backend's connect hook answered (for a client that brought no token).
    Hooked(Box<Result<Verified, HeraldError>>),
    /// Nothing: `auth.token` must come with the connect.
    None(Option<ForwardedHeaders>),
}

/// The query string of `/socket.io/`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EngineQuery {
    /// The Engine.IO protocol version; only `4`.
    #[serde(rename = "EIO")]
    #[param(rename = "EIO")]
    eio: Option<String>,
    /// `polling` or `websocket`.
    transport: Option<String>,
    /// The connection's id, after the handshake.
    sid: Option<String>,
    /// The client's JWT, for clients that do not send `auth.token`.
    token: Option<String>,
    /// socket.io-client's cache breaker; ignored.
    #[serde(rename = "t")]
    #[param(rename = "t")]
    _t: Option<String>,
}

impl EngineQuery {
    /// Checks `EIO=4` and the transport.
    fn transport(&self) -> Result<&str, HeraldError> {
        if self.eio.as_deref() != Some("4") {
            return Err(HeraldError::bad_request(
                "unsupported protocol version: EIO=4 (socket.io-client v3 and v4) is served",
            ));
        }
        match self.transport.as_deref() {
            Some(t @ ("polling" | "websocket")) => Ok(t),
            _ => Err(HeraldError::bad_request(
                "unknown transport: polling or websocket",
            )),
        }
    }
}

/// Any method but `GET` and `POST` on `/socket.io/`: `400`, as Engine.IO servers answer.
pub async fn wrong_method(
    axum::extract::State(app): axum::extract::State<crate::server::App>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    crate::api::counted(
        &app,
        HeraldError::bad_request("Engine.IO takes GET (open, poll, WebSocket) and POST (send)"),
    )
    .into_response()
}

/// A channel name template from `[[socketio.event]]`: literal text with `{field}` holes filled
/// from the event's first argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTemplate(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

impl ChannelTemplate {
    pub fn parse(template: &str) -> Result<ChannelTemplate, String> {
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{template:?} opens a {{ it does not close"))?;
            let field = &rest[open + 1..open + close];
            if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "{template:?}: {{{field}}} is not a field name (letters, digits, _)"
                ));
            }
            pieces.push(Piece::Field(field.to_owned()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{template:?} closes a }} it did not open"));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        if pieces.is_empty() {
            return Err("a channel name or template, not empty".to_owned());
        }
        Ok(ChannelTemplate(pieces))
    }

    /// The channel name for `argument` (the event's first argument): each field must be a
    /// string or a number.
    pub fn fill(&self, argument: Option<&serde_json::Value>) -> Result<String, HeraldError> {
        let mut name = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => name.push_str(text),
                Piece::Field(field) => match argument.and_then(|a| a.get(field)) {
                    Some(serde_json::Value::String(s)) => name.push_str(s),
                    Some(serde_json::Value::Number(n)) => name.push_str(&n.to_string()),
                    _ => {
                        return Err(HeraldError::bad_request(format!(
                            "the event's first argument needs a string or number field {field:?}"
                        )))
                    }
                },
            }
        }
        Ok(name)
    }
}

/// How a publication or event is written on one kind of connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A packet in a long-polling payload.
    Polling,
    /// A WebSocket frame.
    WebSocket,
    /// A WebSocket frame compressed with permessage-deflate.
    WebSocketDeflate,
}

const FORMS: usize = 3;

/// A publication's (or event's) Socket.IO encodings: one slot per form and configured
/// namespace, each filled by the first connection that needs it and shared by the rest.
struct Encoded {
    namespaces: usize,
    slots: Box<[OnceLock<Bytes>]>,
}

impl Encoded {
    fn new(namespaces: usize) -> Arc<Encoded> {
        Arc::new(Encoded {
            namespaces,
            slots: (0..FORMS * namespaces).map(|_| OnceLock::new()).collect(),
        })
    }

    fn get(&self, form: Form, namespace: usize, encode: impl FnOnce() -> Bytes) -> Bytes {
        let slot = form as usize * self.namespaces + namespace;
        match self.slots.get(slot).filter(|_| namespace < self.namespaces) {
            Some(cell) => cell.get_or_init(encode).clone(),
            None => encode(),
        }
    }
}

/// What the hub queued, as a Socket.IO packet on `namespace` (its place in the configuration),
/// in `form` (packet text for polling, a whole frame for WebSocket). Publications and channel
/// events are encoded once per form and namespace.
pub fn encode(
    item: &Outbound,
    namespace: usize,
    form: Form,
    names: &[String],
    deflate: Option<Deflate>,
) -> Bytes {
    let name = names.get(namespace).map_or("/", String::as_str);
    let shared = |text: &dyn Fn() -> String, encodings: Arc<Encoded>| {
        encodings.get(form, namespace, || frame(&text(), form, deflate))
    };
    match item {
        Outbound::Publication(p) => shared(
            &|| {
                let mut packet = packet::header(Kind::Event, name, 0, None);
                packet.push('[');
                packet.push_str(&protocol_string(protocol::socketio_event_name(p)));
                packet.push_str(&protocol::socketio_publication_args(p));
                packet
            },
            p.encoded(WireFormat::SocketIo, |_| Encoded::new(names.len())),
        ),
        Outbound::Event(e) => shared(
            &|| packet::event_text(name, e.kind.as_str(), &protocol::channel_event(e)),
            e.encoded(WireFormat::SocketIo, |_| Encoded::new(names.len())),
        ),
        Outbound::Unsubscribed(channel) => {
            let result = serde_json::to_string(&protocol::channel_result(channel));
            let text = packet::event_text(name, "unsubscribed", &result.unwrap_or_default());
            frame(&text, form, deflate)
        }
        Outbound::Resubscribed(subscribed) => {
            let result = serde_json::to_string(&protocol::subscribed_result(subscribed));
            let text = packet::event_text(name, "subscribed", &result.unwrap_or_default());
            frame(&text, form, deflate)
        }
        Outbound::Heartbeat => frame(packet::PING, form, deflate),
    }
}

/// A JSON string literal.
fn protocol_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// `text` (a whole Engine.IO text packet) in `form`: as it is for a polling payload, or framed.
pub fn frame(text: &str, form: Form, deflate: Option<Deflate>) -> Bytes {
    match (form, deflate) {
        (Form::Polling, _) => Bytes::copy_from_slice(text.as_bytes()),
        (Form::WebSocketDeflate, Some(deflate)) => ws::frame::text_deflated(text, deflate),
        _ => ws::frame::text(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_channel_templates() {
        let template = ChannelTemplate::parse("site:{siteId}").expect("valid");
        let arg = serde_json::json!({"siteId": 1});
        assert_eq!(template.fill(Some(&arg)).expect("valid"), "site:1");
        let arg = serde_json::json!({"siteId": "north"});
        assert_eq!(template.fill(Some(&arg)).expect("valid"), "site:north");
        assert!(template.fill(None).is_err());
        assert!(template
            .fill(Some(&serde_json::json!({"siteId": [1]})))
            .is_err());
        assert_eq!(
            ChannelTemplate::parse("alarms")
                .expect("valid")
                .fill(None)
                .expect("valid"),
            "alarms"
        );
        for bad in ["", "site:{", "site:}", "site:{}", "site:{a-b}"] {
            assert!(ChannelTemplate::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
