//! What Herald does with a client's Socket.IO packets, whichever transport brought them.
//!
//! - A **connect** to a namespace listed in `[socketio] namespaces` authenticates (a token in
//!   `auth.token`, else the handshake's `Authorization` header or `?token=`, else the backend's
//!   connect hook) and registers a hub session for that namespace, already subscribed to the
//!   user's personal channel; the client gets the Socket.IO connect answer and a `connected`
//!   event (`{client, user}`). A refusal is a `connect_error` with `data.code`.
//! - An **event** is one of the built-in commands (`subscribe`, `unsubscribe`, `presence`,
//!   `history`, `publish`, `typing`), whose first argument is the channel's name or the native
//!   command's fields, or one of the operator's `[[socketio.event]]`. Each passes the
//!   connection's command rate limit, and is answered through the client's ack callback (`{ok:
//!   true, ...}` or `{error: {code, message}}`); without an ack, a failure is emitted as an
//!   `error` event naming the event.
//! - A **disconnect** takes the namespace's session out of the hub.

use std::sync::Arc;

use herald_core::hub::Recovery;
use herald_core::protocol::{self, Command};
use herald_core::publication::now_millis;
use herald_core::{
    ChannelName, CloseCode, Disconnect, ErrorCode, HeraldError, Session, StreamPosition, Subscribed,
};
use serde_json::value::RawValue;

use super::connection::{Connection, Ending, NamespaceSocket, PendingBinary, Positions};
use super::packet::{self, Kind, Malformed, Packet};
use super::{ChannelTemplate, Credentials};
use crate::config::SocketIoEvent;
use crate::transport::command::{self, Outcome};
use crate::transport::{deadline_of, verify_token};

/// The events Herald answers itself; their first argument is a channel's name or the native
/// command's fields.
pub const BUILT_IN_EVENTS: [&str; 6] = [
    "subscribe",
    "unsubscribe",
    "presence",
    "history",
    "publish",
    "typing",
];

/// A text message from the client: one Socket.IO packet. A malformed one closes the connection.
pub async fn on_text(connection: &Arc<Connection>, text: &str) {
    #[cfg(feature = "socketio-conformance")]
    if connection.application == super::Application::EngineEcho {
        return connection.send(super::packet::Outgoing::text(format!("4{text}")));
    }
    if connection.take_pending_binary().is_some() {
        return connection.close(Ending::Protocol(
            "a text packet while a binary packet's attachments were expected",
        ));
    }
    let packet = match packet::parse(text) {
        Ok(packet) => packet,
        Err(Malformed(reason)) => return connection.close(Ending::Protocol(reason)),
    };
    if packet.attachments > 0 {
        let attachments = Vec::with_capacity(packet.attachments);
        connection.set_pending_binary(Box::new(PendingBinary {
            packet,
            attachments,
        }));
        return;
    }
    on_packet(connection, packet, Vec::new()).await;
}

/// A binary message from the client: the next attachment of the pending binary packet.
pub async fn on_binary(connection: &Arc<Connection>, data: Vec<u8>) {
    #[cfg(feature = "socketio-conformance")]
    if connection.application == super::Application::EngineEcho {
        return connection.send(super::packet::Outgoing::Binary(data.into()));
    }
    let Some(mut pending) = connection.take_pending_binary() else {
        return connection.close(Ending::Protocol(
            "a binary message that no binary packet announced",
        ));
    };
    pending.attachments.push(data);
    if pending.attachments.len() < pending.packet.attachments {
        return connection.set_pending_binary(pending);
    }
    let PendingBinary {
        packet,
        attachments,
    } = *pending;
    on_packet(connection, packet, attachments).await;
}

async fn on_packet(connection: &Arc<Connection>, packet: Packet, attachments: Vec<Vec<u8>>) {
    #[cfg(feature = "socketio-conformance")]
    if connection.application == super::Application::SocketIoTest {
        return super::conformance::on_packet(connection, packet, attachments).await;
    }
    match packet.kind {
        Kind::Connect => connect(connection, packet).await,
        Kind::Disconnect => {
            if let Some(index) = namespace_index(connection, &packet.namespace) {
                drop(connection.remove_socket(index));
            }
        }
        Kind::Event | Kind::BinaryEvent => event(connection, packet, attachments).await,
        // Herald never asks the client for an ack.
        Kind::Ack | Kind::BinaryAck | Kind::ConnectError => {}
    }
}

fn namespace_index(connection: &Connection, namespace: &str) -> Option<usize> {
    connection
        .app
        .config
        .socketio
        .namespaces
        .iter()
        .position(|n| n == namespace)
}

/// What the connect's `auth` object carries: a token, and (from a socket.io-client coming back)
/// the `pid` it was given and the last offset it kept.
#[derive(serde::Deserialize, Default)]
struct Auth {
    token: Option<String>,
    pid: Option<String>,
    offset: Option<String>,
}

fn auth_of(data: Option<&RawValue>) -> Auth {
    data.and_then(|d| serde_json::from_str::<Auth>(d.get()).ok())
        .unwrap_or_default()
}

/// Where a subscription's record starts: where the client was, when what it missed follows;
/// otherwise where the stream is.
fn start_of(subscribed: &Subscribed, since: Option<&StreamPosition>) -> StreamPosition {
    match since {
        Some(since) if subscribed.recovered == Some(true) => since.clone(),
        _ => subscribed.position.clone(),
    }
}

async fn connect(connection: &Arc<Connection>, packet: Packet) {
    let app = &connection.app;
    let namespace = packet.namespace.as_str();
    let refuse = |code: ErrorCode, message: &str| {
        app.metrics.error(code);
        connection.send(packet::text_packet(
            Kind::ConnectError,
            namespace,
            None,
            &protocol::socketio_connect_error(code, message),
        ));
    };
    let Some(index) = namespace_index(connection, namespace) else {
        // Socket.IO's own words, which clients and its test suite know.
        connection.send(packet::text_packet(
            Kind::ConnectError,
            namespace,
            None,
            "{\"message\":\"Invalid namespace\"}",
        ));
        return;
    };
    if connection.socket(index).is_some() {
        return refuse(ErrorCode::BadRequest, "already connected to this namespace");
    }
    let auth = auth_of(packet.data.as_deref());
    let credentials = connection.credentials();
    let verified = match (auth.token, &credentials) {
        (Some(token), Credentials::Token(_, forwarded) | Credentials::None(forwarded)) => {
            verify_token(app, &token, forwarded.clone())
        }
        (Some(token), Credentials::Hooked(_)) => verify_token(app, &token, None),
        (None, Credentials::Token(token, forwarded)) => verify_token(app, token, forwarded.clone()),
        (None, Credentials::Hooked(answer)) => (**answer).clone(),
        (None, Credentials::None(_)) => Err(HeraldError::new(
            ErrorCode::Unauthorized,
            "no token: pass it as auth: {token}, an Authorization header or ?token=",
        )),
    };
    let verified = match verified {
        Ok(verified) => verified,
        Err(e) => return refuse(e.code, &e.message),
    };
    // With one namespace configured there is nothing more to connect on this connection: the
    // handshake's token (a few hundred bytes) is not kept for its whole life.
    if app.config.socketio.namespaces.len() == 1 {
        connection.forget_credentials();
    }
    let expires = verified
        .expires_at
        .map(|at| deadline_of(Some(at), app.config.auth.jwt_leeway));
    // A client coming back with the record of what it was written resumes every channel in it.
    let record = match (&auth.pid, &auth.offset) {
        (Some(_), Some(offset)) => protocol::parse_socketio_recovery_record(offset),
        _ => None,
    };
    let personal = ChannelName::personal(&verified.identity.user);
    let personal_since = record.as_ref().and_then(|record| {
        record
            .iter()
            .find(|(c, _)| Some(c) == personal.as_ref())
            .map(|(_, at)| at.clone())
    });
    let personal_recovery = personal_since
        .clone()
        .map_or(Recovery::Live, Recovery::Since);
    let (session, personal) = match app.hub.connect(verified.identity, personal_recovery).await {
        Ok(connected) => connected,
        Err(disconnect) => {
            let code = match disconnect.code {
                CloseCode::TooManyConnections => ErrorCode::LimitExceeded,
                _ => ErrorCode::Unavailable,
            };
            return refuse(code, &disconnect.reason);
        }
    };
    let mut positions = Positions::default();
    let mut recovered = record.is_some();
    if let Some(subscribed) = &personal {
        positions.set(
            &subscribed.channel,
            start_of(subscribed, personal_since.as_ref()),
        );
        recovered &= personal_since.is_none() || subscribed.recovered == Some(true);
    }
    for (channel, since) in record.iter().flatten() {
        if Some(channel) == personal.as_ref().map(|p| &p.channel) {
            continue;
        }
        match session
            .subscribe(channel, Recovery::Since(since.clone()))
            .await
        {
            Ok(subscribed) => {
                positions.set(channel, start_of(&subscribed, Some(since)));
                recovered &= subscribed.recovered == Some(true);
            }
            Err(e) => {
                tracing::debug!(%channel, error = %e, "socket.io recovery: not resubscribed");
                recovered = false;
            }
        }
    }
    // Answered with the client's own `pid` only when everything it missed follows:
    // socket.io-client then reports `socket.recovered`.
    let pid = match auth.pid {
        Some(pid) if recovered => pid,
        _ => super::connection::new_sid(),
    };
    tracing::debug!(client = %session.client_id(), user = %session.user(), namespace, recovered, "socket.io connected");
    connection.send(packet::text_packet(
        Kind::Connect,
        namespace,
        None,
        &protocol::socketio_connect_answer(session.client_id(), &pid),
    ));
    connection.send(packet::event(
        namespace,
        "connected",
        &protocol::socketio_connected(session.client_id(), session.user()),
    ));
    connection.add_socket(
        NamespaceSocket {
            index,
            session: Arc::new(session),
            positions,
        },
        expires,
    );
}

async fn event(connection: &Arc<Connection>, packet: Packet, attachments: Vec<Vec<u8>>) {
    let Some(index) = namespace_index(connection, &packet.namespace) else {
        return;
    };
    // Events on a namespace the client has not connected to are ignored, as Socket.IO does.
    let Some(session) = connection.socket(index) else {
        return;
    };
    let namespace = packet.namespace.as_str();
    let args: Vec<Box<RawValue>> = packet
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str(d.get()).ok())
        .unwrap_or_default();
    let name: String = args
        .first()
        .and_then(|n| serde_json::from_str(n.get()).ok())
        .unwrap_or_default();
    let answer = match connection.take_command() {
        Err(()) => {
            return connection.close(Ending::Closed(Disconnect::new(
                CloseCode::RateLimited,
                "kept sending after rate_limited",
            )))
        }
        Ok(false) => Err(HeraldError::new(
            ErrorCode::RateLimited,
            "too many commands; slow down",
        )),
        Ok(true) if !attachments.is_empty() => Err(HeraldError::bad_request(
            "binary attachments are not accepted: Herald's publications are JSON",
        )),
        Ok(true) => {
            let first = args.get(1).map(|a| &**a);
            answer(connection, (&session, index), namespace, &name, first).await
        }
    };
    match (answer, packet.ack) {
        (Ok(ack), Some(id)) => {
            connection.send(packet::text_packet(Kind::Ack, namespace, Some(id), &ack))
        }
        (Ok(_), None) => {}
        (Err(e), ack) => {
            connection.app.metrics.error(e.code);
            let packet = match ack {
                Some(id) => packet::text_packet(
                    Kind::Ack,
                    namespace,
                    Some(id),
                    &format!("[{}]", protocol::socketio_error(e.code, &e.message, None)),
                ),
                None => packet::event(
                    namespace,
                    "error",
                    &protocol::socketio_error(e.code, &e.message, Some(&name)),
                ),
            };
            connection.send(packet);
        }
    }
}

/// Carries out the event `name`; returns its ack's arguments.
async fn answer(
    connection: &Arc<Connection>,
    (session, index): (&Session, usize),
    namespace: &str,
    name: &str,
    first: Option<&RawValue>,
) -> Result<String, HeraldError> {
    if BUILT_IN_EVENTS.contains(&name) {
        let command = built_in(name, first)?;
        let since = match &command {
            Command::Subscribe {
                recovery: Recovery::Since(since),
                ..
            } => Some(since.clone()),
            _ => None,
        };
        let outcome = command::execute(&connection.app, session, command).await?;
        match &outcome {
            Outcome::Subscribed(subscribed) => {
                let start = start_of(subscribed, since.as_ref());
                connection.set_position(index, &subscribed.channel, start);
            }
            Outcome::Unsubscribed(channel) => connection.remove_position(index, channel),
            _ => {}
        }
        return Ok(outcome.socketio_ack());
    }
    let config = &connection.app.config.socketio;
    let Some(mapped) = config.events.iter().find(|e| e.name == name) else {
        return Err(HeraldError::bad_request(format!(
            "unknown event {name:?}: not one of Herald's ({}) nor in [[socketio.event]]",
            BUILT_IN_EVENTS.join(", ")
        )));
    };
    mapped_event(connection, (session, index), namespace, mapped, first).await
}

/// A built-in event as the native command it stands for.
fn built_in(name: &str, first: Option<&RawValue>) -> Result<Command, HeraldError> {
    let mut fields = match first.map(|f| serde_json::from_str::<serde_json::Value>(f.get())) {
        Some(Ok(serde_json::Value::String(channel))) => {
            serde_json::Map::from_iter([("channel".to_owned(), channel.into())])
        }
        Some(Ok(serde_json::Value::Object(fields))) => fields,
        _ => {
            return Err(HeraldError::bad_request(format!(
            "{name}'s first argument is a channel's name or an object like {{channel: \"chat:1\"}}"
        )))
        }
    };
    fields.insert("type".to_owned(), name.into());
    fields.remove("id");
    let text = serde_json::Value::Object(fields).to_string();
    protocol::parse_command(&text)
        .map(|(_, command)| command)
        .map_err(|rejected| rejected.error)
}

/// One of the operator's `[[socketio.event]]`: subscribe or unsubscribe as it says, emit its
/// `reply`, and ack with the same body.
async fn mapped_event(
    connection: &Arc<Connection>,
    (session, index): (&Session, usize),
    namespace: &str,
    mapped: &SocketIoEvent,
    first: Option<&RawValue>,
) -> Result<String, HeraldError> {
    let argument: Option<serde_json::Value> =
        first.and_then(|f| serde_json::from_str(f.get()).ok());
    let channel = |template: &str| -> Result<ChannelName, HeraldError> {
        let template = ChannelTemplate::parse(template).map_err(HeraldError::internal)?;
        ChannelName::parse(&template.fill(argument.as_ref())?)
    };
    let (body, ack) = if let Some(template) = &mapped.subscribe {
        let channel = channel(template)?;
        let subscribed = session.subscribe(&channel, Recovery::Live).await?;
        connection.set_position(index, &channel, subscribed.position.clone());
        let result = protocol::subscribed_result(&subscribed);
        (
            serde_json::to_string(&result).unwrap_or_default(),
            protocol::socketio_ack_ok(&result),
        )
    } else if let Some(template) = &mapped.unsubscribe {
        let channel = channel(template)?;
        session.unsubscribe(&channel).await?;
        connection.remove_position(index, &channel);
        let result = protocol::channel_result(&channel);
        (
            serde_json::to_string(&result).unwrap_or_default(),
            protocol::socketio_ack_ok(&result),
        )
    } else {
        let result = protocol::socketio_time(now_millis());
        (
            serde_json::to_string(&result).unwrap_or_default(),
            protocol::socketio_ack_ok(&result),
        )
    };
    if let Some(reply) = &mapped.reply {
        connection.send(packet::event(namespace, reply, &body));
    }
    Ok(ack)
}
