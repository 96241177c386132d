//! HTTP long-polling, socket.io-client's first transport: `GET /socket.io/?EIO=4&transport=polling`
//! opens a connection (the `open` packet answers), and then, with `&sid=`, each `GET` waits for
//! what is ready and each `POST` carries the client's packets.
//!
//! A `GET` drains the connection ([`Connection::drain`]): its own packets, then each namespace's
//! outbox, as one payload; with nothing ready it waits (at least the next ping comes within
//! `ping_interval`). Only one may wait at a time (a second is a protocol error that closes the
//! connection), and once a WebSocket has answered the upgrade probe a waiting `GET` is answered
//! with `noop` and later ones are refused. A client that stops polling stops draining its outbox,
//! which closes it as a slow consumer like any other.

use std::net::SocketAddr;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::{CloseCode, Disconnect, HeraldError};

use super::connection::{Connection, Ending, Transport, Waiter};
use super::packet::{self, EngineIn, Outgoing};
use super::{encode, events, websocket, Application, Credentials, EngineQuery, Form};
use crate::api::{counted, parse_query};
use crate::auth::bearer_token;
use crate::server::App;
use crate::transport::{admit_connection, connect_hook, forwarded_headers, Peer};

/// `GET /socket.io/`: a new polling connection, a long-poll of an open one, or a WebSocket.
#[utoipa::path(
    get,
    path = "/socket.io/",
    tag = "clients",
    summary = "Socket.IO clients (Engine.IO v4): open a connection, long-poll it, or open its WebSocket (docs/socketio.md)",
    params(EngineQuery),
    responses(
        (status = 200, description = "An Engine.IO payload: the open packet, or what is ready for the client", content_type = "text/plain", body = String),
        (status = 101, description = "Switching to the WebSocket protocol"),
        crate::openapi::ConnectErrors,
    ),
    security((), ("client_token" = [])),
)]
pub async fn poll(State(app): State<App>, Peer(peer): Peer, request: Request) -> Response {
    poll_with(app, peer, request, Application::Hub).await
}

/// `GET` for a connection that `application` answers.
pub(crate) async fn poll_with(
    app: App,
    peer: SocketAddr,
    request: Request,
    application: Application,
) -> Response {
    let refuse = |error: HeraldError| counted(&app, error).into_response();
    let query: EngineQuery = match parse_query(request.uri()) {
        Ok(query) => query,
        Err(e) => return refuse(e),
    };
    let transport = match query.transport() {
        Ok(transport) => transport,
        Err(e) => return refuse(e),
    };
    if transport == "websocket" {
        return websocket::upgrade(app.clone(), peer, request, query, application).await;
    }
    match query.sid.as_deref() {
        None => match open(&app, peer, request.headers(), query.token, application).await {
            Ok(response) => response,
            Err(e) => refuse(e),
        },
        Some(sid) => match app.socketio.get(sid) {
            Some(connection) => long_poll(&app, connection).await,
            None => refuse(unknown_session()),
        },
    }
}

/// The refusal of a polling request on a connection its WebSocket has taken over.
fn moved_to_websocket() -> HeraldError {
    HeraldError::bad_request("this connection moved to its WebSocket")
}

/// The refusal of a `sid` the node does not have open (also the upgrade's).
pub(super) fn unknown_session() -> HeraldError {
    HeraldError::bad_request("unknown or closed session id (sid): open a new connection")
}

/// How the handshake request authenticates: a token in the header or query string, else the
/// connect hook's answer, else nothing yet (the namespace's connect brings `auth.token`).
pub(super) async fn credentials(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    query_token: Option<String>,
) -> Credentials {
    let forwarded = forwarded_headers(app, headers);
    match bearer_token(headers).map(str::to_owned).or(query_token) {
        Some(token) => Credentials::Token(token, forwarded),
        None => match connect_hook(app, "socketio", peer, headers).await {
            Some(answer) => Credentials::Hooked(Box::new(answer)),
            None => Credentials::None(forwarded),
        },
    }
}

/// Opens a polling connection: admitted like every connection, answered with `open`.
async fn open(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    token: Option<String>,
    application: Application,
) -> Result<Response, HeraldError> {
    let slot = admit_connection(app, peer, headers)?;
    let credentials = credentials(app, peer, headers, token).await;
    let connection = Connection::start(slot, credentials, Transport::Polling, application);
    let open = open_packet(app, &connection.sid, true);
    Ok(payload_response(packet::payload(&[open])))
}

/// Engine.IO's `open` packet for this node's settings.
pub(super) fn open_packet(app: &App, sid: &str, upgrades: bool) -> Outgoing {
    let socketio = &app.config.socketio;
    packet::open(
        sid,
        upgrades,
        socketio.ping_interval.as_millis() as u64,
        socketio.ping_timeout.as_millis() as u64,
        app.config.limits.max_frame_bytes,
    )
}

fn payload_response(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=UTF-8"),
        )],
        body,
    )
        .into_response()
}

/// Marks the connection's poll as over when the request ends, answered or abandoned.
struct PollGuard<'a>(&'a Connection);

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0.end_poll();
    }
}

async fn long_poll(app: &App, connection: std::sync::Arc<Connection>) -> Response {
    if connection.last_transport() == Transport::WebSocket {
        return counted(app, moved_to_websocket()).into_response();
    }
    if connection.upgrading() {
        // A long-poll sent while a WebSocket upgrades the connection: the client's `upgrade`
        // may be on its way, after which long-polls are refused. Like Engine.IO's reference
        // server, which answers such a poll on its next 100 ms check, wait that long for it.
        for _ in 0..20 {
            if !connection.upgrading() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        match connection.last_transport() {
            Transport::Upgrading => {
                return payload_response(Bytes::from_static(packet::NOOP.as_bytes()))
            }
            Transport::WebSocket => return counted(app, moved_to_websocket()).into_response(),
            // The probe failed, or has not come yet: long-poll as before.
            Transport::Polling => {}
        }
    }
    if !connection.begin_poll() {
        connection.close(Ending::Protocol("two long-polls at once"));
        return counted(
            app,
            HeraldError::bad_request("a long-poll is already waiting on this connection"),
        )
        .into_response();
    }
    let _guard = PollGuard(&connection);
    let names = &app.config.socketio.namespaces;
    loop {
        if connection.transport() == Some(Transport::Upgrading) {
            return payload_response(Bytes::from_static(packet::NOOP.as_bytes()));
        }
        let drained = connection.drain();
        if let Some(ending) = &drained.ending {
            connection.forget();
            if matches!(ending, Ending::ClientClosed) {
                return payload_response(Bytes::from_static(packet::NOOP.as_bytes()));
            }
        }
        if !drained.is_empty() || drained.ending.is_some() {
            drained.count_written(&app.metrics);
            let mut packets = drained.packets;
            for (namespace, item) in &drained.items {
                packets.push(Outgoing::Text(encode(
                    item,
                    *namespace,
                    Form::Polling,
                    names,
                    None,
                )));
            }
            packets.extend(drained.records);
            packets.extend(drained.last);
            if drained.ending.is_some() {
                packets.push(Outgoing::text(packet::CLOSE));
            }
            return payload_response(packet::payload(&packets));
        }
        connection.wait(Waiter::Poll).await;
    }
}

/// `POST /socket.io/?transport=polling&sid=`: the client's packets.
#[utoipa::path(
    post,
    path = "/socket.io/",
    tag = "clients",
    summary = "Socket.IO clients (Engine.IO v4): send packets on a long-polling connection",
    params(EngineQuery),
    request_body(content = String, content_type = "text/plain", description = "An Engine.IO payload"),
    responses(
        (status = 200, description = "The packets were taken", content_type = "text/plain", body = String),
        crate::openapi::ConnectErrors,
    ),
    security((), ("client_token" = [])),
)]
pub async fn post(State(app): State<App>, request: Request) -> Response {
    let refuse = |error: HeraldError| counted(&app, error).into_response();
    let query: EngineQuery = match parse_query(request.uri()) {
        Ok(query) => query,
        Err(e) => return refuse(e),
    };
    match query.transport() {
        Ok("polling") => {}
        Ok(_) => return refuse(HeraldError::bad_request("POST is for transport=polling")),
        Err(e) => return refuse(e),
    }
    let Some(sid) = query.sid.as_deref() else {
        return refuse(HeraldError::bad_request(
            "POST needs the connection's sid; open one with GET first",
        ));
    };
    let Some(connection) = app.socketio.get(sid) else {
        return refuse(unknown_session());
    };
    if !matches!(
        connection.transport(),
        Some(Transport::Polling | Transport::Upgrading)
    ) {
        return refuse(moved_to_websocket());
    }
    let max = app.config.limits.max_frame_bytes;
    let body = match to_bytes(Body::new(request.into_body()), max).await {
        Ok(body) => body,
        Err(_) => {
            connection.close(Ending::Closed(Disconnect::new(
                CloseCode::FrameTooLarge,
                format!("payload larger than {max} bytes"),
            )));
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                refuse(HeraldError::bad_request(format!(
                    "payload larger than maxPayload ({max} bytes)"
                ))),
            )
                .into_response();
        }
    };
    if !connection.begin_post() {
        connection.close(Ending::Protocol("two POSTs at once"));
        return refuse(HeraldError::bad_request(
            "a POST is already being handled on this connection",
        ));
    }
    let packets = match packet::parse_payload(&body) {
        Ok(packets) => packets,
        Err(packet::Malformed(reason)) => {
            connection.close(Ending::Protocol(reason));
            return refuse(HeraldError::bad_request(format!(
                "malformed payload: {reason}"
            )));
        }
    };
    for packet in packets {
        match packet {
            EngineIn::Close => connection.close(Ending::ClientClosed),
            EngineIn::Pong(_) => connection.pong(),
            EngineIn::Message(text) => events::on_text(&connection, &text).await,
            EngineIn::Binary(data) => events::on_binary(&connection, data).await,
            EngineIn::Ping(_) | EngineIn::Upgrade | EngineIn::Noop => {}
        }
        if let Some(Ending::Protocol(reason)) = connection.ending() {
            connection.end_post();
            return refuse(HeraldError::bad_request(format!(
                "malformed packet: {reason}"
            )));
        }
    }
    connection.end_post();
    payload_response(Bytes::from_static(b"ok"))
}
