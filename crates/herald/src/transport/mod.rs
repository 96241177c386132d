//! Transports: how clients reach the hub. Each transport owns its sockets and its wire encoding;
//! the hub sees only sessions and outboxes.
//!
//! - [`ws`]: WebSocket at `/ws`, the native JSON protocol in both directions.
//! - [`sse`]: Server-Sent Events at `/sse`, receive-only, resumable with `Last-Event-ID`.
//! - [`socketio`]: Socket.IO clients at `/socket.io/` (Engine.IO v4 long-polling and WebSocket,
//!   Socket.IO v5), each namespace a session like a `/ws` connection.
//!
//! [`command`] is what a client's command does, whichever transport it came over.
//!
//! What every transport does the same way lives here: the admission checks before anything else,
//! which give an admitted connection its place among the node's `limits.max_connections`
//! ([`ConnectionSlot`], held until the connection ends), authentication (a token, or the backend's
//! connect hook for a client that brings none), and when a connection's credentials run out.

pub(crate) mod command;
pub mod socketio;
pub mod sse;
pub mod ws;

use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use herald_core::hooks::ForwardedHeaders;
use herald_core::publication::now_millis;
use herald_core::{ErrorCode, HeraldError};
use tokio::time::Instant;

use crate::api::{counted, ApiError};
use crate::auth::Verified;
use crate::limits::{client_ip, origin_allowed};
use crate::server::App;

/// The address of the client's end of the TCP connection. `server::run` records it on every
/// request; a request without it (a server set up some other way) is refused with the JSON
/// `internal` error, counted, rather than axum's `text/plain` rejection of `ConnectInfo`.
pub struct Peer(pub SocketAddr);

impl FromRequestParts<App> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        match ConnectInfo::<SocketAddr>::from_request_parts(parts, app).await {
            Ok(ConnectInfo(peer)) => Ok(Peer(peer)),
            Err(_) => Err(counted(
                app,
                HeraldError::internal("the client's address is not known"),
            )),
        }
    }
}

/// The checks every new client connection passes before anything else, on every transport:
/// the server is not shutting down, the `Origin` is allowed, the client's address is within its
/// connection rate, and the node is below `limits.max_connections`. An admitted connection gets
/// its place on the node, which it holds until it ends.
pub(crate) fn admit_connection(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<ConnectionSlot, HeraldError> {
    if app.is_shutting_down() {
        return Err(HeraldError::unavailable("server is shutting down"));
    }
    if !origin_allowed(headers, &app.config.allowed_origins) {
        return Err(HeraldError::forbidden("origin not allowed"));
    }
    let ip = client_ip(peer, headers, &app.config.limits.trusted_proxies);
    if !app.connection_rate.admit(ip) {
        return Err(HeraldError::new(
            ErrorCode::RateLimited,
            "too many new connections from this address",
        ));
    }
    ConnectionSlot::take(app).ok_or_else(|| {
        app.metrics.refused_max_connections();
        HeraldError::unavailable("this node is at its connection limit; try again later")
    })
}

/// One of the node's `limits.max_connections` places, taken when a connection is admitted and
/// given back when this is dropped: by the WebSocket connection's task when it ends (or by the
/// upgrade when it fails before the task starts), by the SSE body stream when the response ends,
/// or by the handler when it refuses the connection after admitting it.
///
/// It holds the node's state and stands for it (it dereferences to [`App`]), so that a connection
/// keeps its place in the 8 bytes it would spend on the state anyway: the WebSocket
/// `Connection`, which every idle connection's task holds, does not grow.
pub(crate) struct ConnectionSlot {
    app: App,
}

impl ConnectionSlot {
    /// A place for one more connection; `None` when the node holds `limits.max_connections`.
    fn take(app: &App) -> Option<ConnectionSlot> {
        app.connection_cap
            .try_take()
            .then(|| ConnectionSlot { app: app.clone() })
    }
}

impl ConnectionSlot {
    /// The node's state, to keep beyond the connection.
    pub(crate) fn app(&self) -> &App {
        &self.app
    }
}

impl Deref for ConnectionSlot {
    type Target = App;

    fn deref(&self) -> &App {
        &self.app
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.app.connection_cap.give_back();
    }
}

/// The request's headers that the backend's hooks get (`proxy.forward_headers`), when any hook
/// is configured.
pub(crate) fn forwarded_headers(app: &App, headers: &HeaderMap) -> Option<ForwardedHeaders> {
    app.hooks.as_ref().and_then(|h| h.forwarded(headers))
}

/// Verifies a client token; a bad one is `unauthorized`. `forwarded` is kept with the identity
/// for the backend's hooks.
pub(crate) fn verify_token(
    app: &App,
    token: &str,
    forwarded: Option<ForwardedHeaders>,
) -> Result<Verified, HeraldError> {
    let mut verified = app
        .auth
        .verify(token)
        .map_err(|e| HeraldError::new(ErrorCode::Unauthorized, e.0))?;
    verified.identity.forwarded_headers = forwarded;
    Ok(verified)
}

/// Authenticates a client that brought no token through the backend's connect hook, when one is
/// configured (`None` when not). A refusal is `unauthorized`; a backend that cannot answer is
/// `unavailable`.
pub(crate) async fn connect_hook(
    app: &App,
    transport: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Option<Result<Verified, HeraldError>> {
    let hooks = app.hooks.as_ref().filter(|h| h.has_connect())?;
    let ip = client_ip(peer, headers, &app.config.limits.trusted_proxies);
    let answer = hooks
        .connect(transport, ip, forwarded_headers(app, headers))
        .await
        .map_err(|e| match e.code {
            ErrorCode::Forbidden => HeraldError::new(ErrorCode::Unauthorized, e.message),
            _ => e,
        });
    Some(answer)
}

/// The instant a connection whose credentials end at `expires_at` (Unix seconds) must close: the
/// expiry plus the configured clock-skew leeway (already past if both have passed). Without an
/// expiry, never (in practice: a century from now).
pub(crate) fn deadline_of(expires_at: Option<u64>, leeway: Duration) -> Instant {
    let Some(expires_at) = expires_at else {
        return Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    };
    let close_at_ms = expires_at
        .saturating_mul(1000)
        .saturating_add(leeway.as_millis() as u64);
    Instant::now() + Duration::from_millis(close_at_ms.saturating_sub(now_millis()))
}
