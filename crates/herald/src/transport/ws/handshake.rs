//! The WebSocket opening handshake: `GET /ws` up to the `101 Switching Protocols`.
//!
//! [`upgrade`] checks the request against RFC 6455 §4.2.1, admits the connection (shutting down,
//! `Origin`, connection rate, the node's `limits.max_connections`), reads the query string (the
//! token and where the personal channel starts) and, for a client that brings no token, asks the
//! backend's connect hook, all before it answers: every refusal is a plain HTTP error with the
//! JSON error body, counted. It then takes the raw `TcpStream` back from hyper and starts the
//! connection's task ([`Connection`](super::connection::Connection)) with what the request said
//! ([`Handshake`]) and the connection's place on the node, which the task gives back when it
//! ends (and the upgrade, when it fails before the task starts).
//! Nothing here reads or writes a WebSocket frame, and nothing here waits for the client after
//! the `101`: the auth frame, when the token comes that way, is the task's to wait for.

use axum::extract::{Request, State};
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::hooks::ForwardedHeaders;
use herald_core::hub::Recovery;
use herald_core::protocol;
use herald_core::HeraldError;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::connection::Connection;
use super::deflate::{self, Deflate};
use crate::api::{counted, parse_query};
use crate::auth::{bearer_token, Verified};
use crate::server::{App, RawTcp};
use crate::transport::{admit_connection, connect_hook, forwarded_headers, Peer};

/// The query string of `GET /ws`: the token, and where the personal channel starts
/// (`since=<offset>:<epoch>` or `last=<n>`), for clients that authenticate by header or query.
/// Other parameters are ignored; one given twice is an error.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConnectQuery {
    /// The client's JWT, for clients that cannot send `Authorization` (browsers); it may also
    /// come in the first frame instead.
    token: Option<String>,
    /// Resume the personal channel after this position, `<offset>:<epoch>`.
    since: Option<String>,
    /// Start the personal channel with its newest `last` publications.
    last: Option<u32>,
}

/// `GET /ws`: checks the handshake, origin and connection rate, then the query string, then
/// upgrades. Each refusal is the JSON error body, counted.
#[utoipa::path(
    get,
    path = "/ws",
    tag = "clients",
    summary = "Open a WebSocket connection (the native protocol; docs/protocol.md)",
    params(ConnectQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        crate::openapi::ConnectErrors,
    ),
    security((), ("client_token" = [])),
)]
pub async fn upgrade(State(app): State<App>, Peer(peer): Peer, mut request: Request) -> Response {
    let limits = &app.config.limits;
    let refuse = |error: HeraldError| counted(&app, error).into_response();
    let accept = match accept_key(request.headers()) {
        Ok(accept) => accept,
        Err(e) => return refuse(e),
    };
    if request.extensions().get::<RawTcp>().is_none() {
        return refuse(HeraldError::internal(
            "WebSocket upgrades need Herald's HTTP server: serve the router with herald::server::serve \
             (Herald::serve), not axum::serve",
        ));
    }
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return refuse(HeraldError::bad_request(
            "this connection cannot be upgraded to a WebSocket",
        ));
    };
    let headers = request.headers();
    // The connection's place on the node, given back when the connection ends, or on any
    // refusal or failure before it starts.
    let slot = match admit_connection(&app, peer, headers) {
        Ok(slot) => slot,
        Err(e) => return refuse(e),
    };
    let query: ConnectQuery = match parse_query(request.uri()) {
        Ok(query) => query,
        Err(e) => return refuse(e),
    };
    let since = match query
        .since
        .as_deref()
        .map(protocol::parse_position)
        .transpose()
    {
        Ok(since) => since,
        Err(e) => return refuse(e),
    };
    let personal = match protocol::recovery(since, query.last) {
        Ok(personal) => personal,
        Err(e) => return refuse(e),
    };
    let token = bearer_token(headers).map(str::to_owned).or(query.token);
    let deadline = Instant::now() + limits.handshake_timeout;
    let forwarded = forwarded_headers(&app, headers);
    // A client with no token is the backend's to authenticate, when it has a connect hook; asked
    // before the upgrade, so that a refusal is a plain HTTP error.
    let credentials = match token {
        Some(token) => Credentials::Token(token, forwarded),
        None => match connect_hook(&app, "websocket", peer, headers).await {
            Some(Ok(verified)) => Credentials::Verified(verified),
            Some(Err(e)) => return refuse(e),
            None => Credentials::AuthFrame(forwarded),
        },
    };
    let deflate = negotiate_deflate(&app, request.headers());
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        // `server::run` serves plain TCP connections with hyper's HTTP/1 server, so this holds;
        // the check is kept for a server set up some other way.
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            return tracing::error!("a WebSocket upgrade that is not a TCP stream; closing");
        };
        let connection = Connection::new(parts.io.into_inner(), &parts.read_buf, slot, deflate);
        // The connection gets a task of its own, sized by `Connection::run` alone.
        let task = connection.run(Box::new(Handshake {
            credentials,
            personal,
            deadline,
        }));
        tokio::spawn(task);
    });
    switching_protocols(accept, deflate)
}

/// The `101 Switching Protocols` answer, with permessage-deflate's acceptance when it was
/// negotiated.
pub(crate) fn switching_protocols(accept: HeaderValue, deflate: Option<Deflate>) -> Response {
    let switching = [
        (CONNECTION, HeaderValue::from_static("upgrade")),
        (UPGRADE, HeaderValue::from_static("websocket")),
        (SEC_WEBSOCKET_ACCEPT, accept),
    ];
    let mut response = (StatusCode::SWITCHING_PROTOCOLS, switching).into_response();
    if deflate.is_some() {
        response.headers_mut().insert(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(deflate::ACCEPTED),
        );
    }
    response
}

/// permessage-deflate for this connection, when `[compression]` allows it and the client offers
/// it in a form Herald accepts (see [`deflate`]).
pub(crate) fn negotiate_deflate(app: &App, headers: &HeaderMap) -> Option<Deflate> {
    let compression = app.config.compression;
    let offers = headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok());
    (compression.enabled && deflate::accepts(offers)).then_some(Deflate {
        threshold: u32::try_from(compression.threshold).unwrap_or(u32::MAX),
        // Validated to be 1 to 9.
        level: u8::try_from(compression.level)
            .ok()
            .and_then(std::num::NonZeroU8::new)
            .unwrap_or(std::num::NonZeroU8::MIN),
    })
}

/// Checks that `headers` ask for a WebSocket (RFC 6455 §4.2.1) and returns the
/// `Sec-WebSocket-Accept` answer to the client's key.
pub(crate) fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, HeraldError> {
    let lists = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !lists(CONNECTION, "upgrade") || !lists(UPGRADE, "websocket") {
        return Err(HeraldError::bad_request(
            "a WebSocket handshake needs `Connection: upgrade` and `Upgrade: websocket`",
        ));
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(HeraldError::bad_request(
            "only WebSocket version 13 is supported (Sec-WebSocket-Version: 13)",
        ));
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return Err(HeraldError::bad_request("missing Sec-WebSocket-Key"));
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    HeaderValue::from_str(&accept)
        .map_err(|_| HeraldError::bad_request("invalid Sec-WebSocket-Key"))
}

/// How a client proves who it is.
pub(super) enum Credentials {
    /// A token from the header or the query string, not yet verified.
    Token(String, Option<ForwardedHeaders>),
    /// Already verified (by the backend's connect hook).
    Verified(Verified),
    /// The token will come in the first frame.
    AuthFrame(Option<ForwardedHeaders>),
}

/// What the upgrade request said, for the connection's task to act on.
pub(super) struct Handshake {
    pub(super) credentials: Credentials,
    /// Where the personal channel starts.
    pub(super) personal: Recovery,
    /// When an auth frame must have arrived by.
    pub(super) deadline: Instant,
}
