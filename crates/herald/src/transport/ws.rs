//! The WebSocket transport: `GET /ws`, speaking the native protocol.
//!
//! One task per connection owns the socket. It authenticates the client (header, `?token=` or a
//! first `auth` frame within the handshake timeout), registers a [`Session`] with the hub, and
//! then loops: write everything the hub queued in one batch and one flush, read and answer the
//! client's commands, ping every heartbeat interval, and close with the documented code when a
//! limit is hit, the token expires, or the hub asks. The hub never touches the socket, and no lock
//! is held while this task awaits.
//!
//! Buffer sizes are chosen here, deliberately: tungstenite's defaults (a 128 KiB read buffer and
//! an unbounded write buffer per connection) would cost an idle connection far more than its
//! state. The real bound on what is waiting for a client is the hub's outbox
//! (`limits.outbound_queue_bytes`).

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use herald_core::hub::{Outbound, Recovery};
use herald_core::protocol::{self, Command, RequestId};
use herald_core::publication::{now_millis, WireFormat};
use herald_core::{CloseCode, Disconnect, ErrorCode, HeraldError, Session};
use serde::Deserialize;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::api::ApiError;
use crate::auth::bearer_token;
use crate::auth::Verified;
use crate::limits::CommandBucket;
use crate::server::App;
use herald_core::hooks::ForwardedHeaders;

use super::{admit_connection, connect_hook, deadline_of, forwarded_headers, verify_token};

/// Bytes tungstenite reads from the socket at a time. tungstenite allocates this much for every
/// connection up front, and clients send small commands, so it is kept small; a larger frame is
/// read in several calls.
const READ_BUFFER: usize = 256;
/// tungstenite writes to the socket once this much is buffered (or on flush).
const WRITE_BUFFER: usize = 16 * 1024;
/// Longest a batch write may take before the connection is considered dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the closing handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The query string of `GET /ws`: the token, and where the personal channel starts
/// (`since=<offset>:<epoch>` or `last=<n>`), for clients that authenticate by header or query.
#[derive(Deserialize)]
pub struct ConnectQuery {
    token: Option<String>,
    since: Option<String>,
    last: Option<u32>,
}

/// `GET /ws`: checks origin and connection rate, then upgrades.
pub async fn upgrade(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<ConnectQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let limits = &app.config.limits;
    let refuse = |error: HeraldError| {
        app.metrics.error(error.code);
        ApiError(error).into_response()
    };
    if let Err(e) = admit_connection(&app, peer, &headers) {
        return refuse(e);
    }
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
    let token = bearer_token(&headers).map(str::to_owned).or(query.token);
    let deadline = Instant::now() + limits.handshake_timeout;
    let forwarded = forwarded_headers(&app, &headers);
    // A client with no token is the backend's to authenticate, when it has a connect hook; asked
    // before the upgrade, so that a refusal is a plain HTTP error.
    let credentials = match token {
        Some(token) => Credentials::Token(token, forwarded),
        None => match connect_hook(&app, "websocket", peer, &headers).await {
            Some(Ok(verified)) => Credentials::Verified(verified),
            Some(Err(e)) => return refuse(e),
            None => Credentials::AuthFrame(forwarded),
        },
    };
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + limits.outbound_queue_bytes + limits.max_frame_bytes)
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .on_upgrade(move |socket| async move {
            // The connection gets a task of its own, sized by `Connection::run` alone; axum's
            // upgrade task (which also holds the HTTP upgrade's state) ends here and is freed.
            let connection = Connection { socket, app };
            tokio::spawn(connection.run(credentials, personal, deadline));
        })
}

/// How a client proves who it is.
enum Credentials {
    /// A token from the header or the query string, not yet verified.
    Token(String, Option<ForwardedHeaders>),
    /// Already verified (by the backend's connect hook).
    Verified(Verified),
    /// The token will come in the first frame.
    AuthFrame(Option<ForwardedHeaders>),
}

/// How a connection ended.
enum Ended {
    /// The server decided to close: send `disconnect` and a close frame.
    Close(Disconnect),
    /// The client closed, or the socket failed: nothing more can be sent.
    Gone,
}

impl From<Disconnect> for Ended {
    fn from(d: Disconnect) -> Self {
        Ended::Close(d)
    }
}

/// The socket failed or timed out while writing.
struct Gone;

/// Why a batch write stopped early.
enum WriteStopped {
    /// The socket failed.
    Gone,
    /// The hub closed the connection as a slow consumer meanwhile.
    Closing,
    /// The write did not finish within `WRITE_TIMEOUT`: the client is not reading.
    TimedOut,
}

impl From<Gone> for Ended {
    fn from(_: Gone) -> Self {
        Ended::Gone
    }
}

struct Connection {
    socket: WebSocket,
    app: App,
}

// === impl Connection ===

impl Connection {
    async fn run(mut self, credentials: Credentials, personal: Recovery, deadline: Instant) {
        let (verified, personal) = match credentials {
            Credentials::Verified(verified) => (Ok(verified), personal),
            Credentials::Token(token, forwarded) => {
                (verify_token(&self.app, &token, forwarded), personal)
            }
            Credentials::AuthFrame(forwarded) => {
                match Box::pin(self.await_auth_frame(deadline)).await {
                    Ok((token, from_frame)) => {
                        // The auth frame's own `since`/`last` wins over the query string's.
                        let personal = match from_frame {
                            Recovery::Live => personal,
                            recovery => recovery,
                        };
                        (verify_token(&self.app, &token, forwarded), personal)
                    }
                    Err(ended) => return Box::pin(self.finish(ended)).await,
                }
            }
        };
        let verified = match verified {
            Ok(verified) => verified,
            Err(e) => {
                let d = Disconnect::new(CloseCode::Unauthorized, e.message);
                return Box::pin(self.finish(d.into())).await;
            }
        };
        let (session, personal) =
            match Box::pin(self.app.hub.connect(verified.identity, personal)).await {
                Ok(connected) => connected,
                Err(d) => return Box::pin(self.finish(d.into())).await,
            };
        self.app.metrics.connections_accepted.inc();
        tracing::debug!(client = %session.client_id(), user = %session.user(), "connected");
        let hello = protocol::connected(
            session.client_id(),
            session.user(),
            self.app.config.limits.heartbeat_interval.as_secs().max(1),
            verified.expires_at,
        );
        let mut greeted = self.send(hello).await;
        if let (Ok(()), Some(personal)) = (&greeted, &personal) {
            greeted = self.send(protocol::subscribed(None, personal)).await;
        }
        let ended = match greeted {
            Ok(()) => self.serve(&session, verified.expires_at).await,
            Err(gone) => gone.into(),
        };
        drop(session);
        Box::pin(self.finish(ended)).await;
    }

    /// Waits for the first frame, which must be `{"type":"auth","token":...}` (with, optionally,
    /// where the personal channel starts).
    async fn await_auth_frame(&mut self, deadline: Instant) -> Result<(String, Recovery), Ended> {
        let unauthorized =
            |reason: &str| Ended::Close(Disconnect::new(CloseCode::Unauthorized, reason));
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.socket.recv()).await {
                Err(_) => return Err(unauthorized("no auth frame within the handshake timeout")),
                Ok(frame) => frame,
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return match protocol::parse_command(&text) {
                        Ok((_, Command::Auth { token, personal })) => Ok((token, personal)),
                        _ => Err(unauthorized(
                            "the first frame must be an auth frame with a token",
                        )),
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Binary(_))) => {
                    return Err(unauthorized(
                        "the first frame must be an auth frame with a token",
                    ))
                }
                Some(Err(e)) => return Err(self.read_failed(e)),
                Some(Ok(Message::Close(_))) | None => return Err(Ended::Gone),
            }
        }
    }

    /// The connection's main loop, until it ends.
    async fn serve(&mut self, session: &Session, expires_at: Option<u64>) -> Ended {
        let app = self.app.clone();
        let limits = &app.config.limits;
        let interval = limits.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let leeway = app.config.auth.jwt_leeway;
        let mut expiry = pin!(sleep_until(deadline_of(expires_at, leeway)));
        let mut bucket = CommandBucket::new(limits.commands_per_minute, limits.commands_burst);
        let mut refused_in_a_row = 0u32;
        let mut last_heard = Instant::now();
        let mut batch = Vec::new();
        loop {
            let close = session.outbox().take(&mut batch);
            if !batch.is_empty() {
                // Boxed: a write's state only exists while writing, and inline it would make
                // every idle connection's task larger.
                match Box::pin(self.write_batch(&mut batch, session)).await {
                    Ok(()) => {
                        // Keep a small buffer for the next batch, not one grown by a burst.
                        if batch.capacity() > 64 {
                            batch = Vec::new();
                        }
                    }
                    Err(WriteStopped::Gone) => return Ended::Gone,
                    Err(WriteStopped::TimedOut) => {
                        self.app
                            .hub
                            .stats()
                            .slow_consumers
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Disconnect::new(
                            CloseCode::SlowConsumer,
                            "a write did not finish in time: the client is not reading",
                        )
                        .into();
                    }
                    Err(WriteStopped::Closing) => {
                        batch.clear();
                        if let Some(d) = session.outbox().take(&mut batch) {
                            return d.into();
                        }
                        return Ended::Gone;
                    }
                }
            }
            if let Some(d) = close {
                return d.into();
            }
            tokio::select! {
                () = session.outbox().wait() => {}
                frame = self.socket.recv() => {
                    last_heard = Instant::now();
                    let parsed = match frame {
                        Some(Ok(Message::Text(text))) => protocol::parse_command(&text),
                        Some(Ok(Message::Binary(_))) => Err(protocol::Rejected {
                            id: None,
                            error: HeraldError::bad_request("binary frames are not accepted; send JSON text frames"),
                        }),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(_))) | None => return Ended::Gone,
                        Some(Err(e)) => return self.read_failed(e),
                    };
                    if !bucket.try_take(std::time::Instant::now()) {
                        refused_in_a_row += 1;
                        if refused_in_a_row > limits.commands_burst {
                            return Disconnect::new(CloseCode::RateLimited, "kept sending after rate_limited").into();
                        }
                        let e = HeraldError::new(ErrorCode::RateLimited, "too many commands; slow down");
                        let id = match &parsed {
                            Ok((id, _)) => id.as_ref(),
                            Err(rejected) => rejected.id.as_ref(),
                        };
                        if let Err(gone) = self.send_error(id, &e).await { return gone.into() }
                        continue;
                    }
                    refused_in_a_row = 0;
                    // Boxed: commands are rare next to deliveries, and an inline command future would
                    // make every idle connection's task larger.
                    match Box::pin(self.handle(session, parsed)).await {
                        Ok(Some(new_expiry)) => expiry.as_mut().reset(deadline_of(Some(new_expiry), leeway)),
                        Ok(None) => {}
                        Err(ended) => return ended,
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > interval * 2 {
                        return Disconnect::new(CloseCode::IdleTimeout, "no pong or frame for more than two heartbeat intervals").into();
                    }
                    if let Err(gone) = self.write(Message::Ping(Default::default())).await { return gone.into() }
                }
                () = &mut expiry => {
                    return Disconnect::new(CloseCode::TokenExpired, "token expired").into();
                }
            }
        }
    }

    /// Handles one command. Returns the new token expiry after a successful `refresh`.
    async fn handle(
        &mut self,
        session: &Session,
        parsed: Result<(Option<RequestId>, Command), protocol::Rejected>,
    ) -> Result<Option<u64>, Ended> {
        let (id, command) = match parsed {
            Ok(parsed) => parsed,
            Err(rejected) => {
                self.send_error(rejected.id.as_ref(), &rejected.error)
                    .await?;
                return Ok(None);
            }
        };
        let id = id.as_ref();
        let app = self.app.clone();
        let outcome: Result<String, HeraldError> = match command {
            Command::Auth { .. } => Err(HeraldError::bad_request("already authenticated")),
            Command::Subscribe { channel, recovery } => session
                .subscribe(&channel, recovery)
                .await
                .map(|subscribed| protocol::subscribed(id, &subscribed)),
            Command::Unsubscribe { channel } => session
                .unsubscribe(&channel)
                .map(|()| protocol::unsubscribed(id, &channel)),
            Command::Publish {
                channel,
                event,
                data,
            } => {
                let published = session.publish(channel, event, data).await;
                if published.is_ok() {
                    app.metrics.messages_in.inc();
                }
                published.map(|position| protocol::reply(id, &position))
            }
            Command::History {
                channel,
                since,
                limit,
            } => match protocol::history_query(since, limit) {
                Ok(query) => {
                    let since_given = query.since.is_some();
                    session.history(&channel, query).await.map(|page| {
                        protocol::reply(id, &protocol::history_result(&channel, &page, since_given))
                    })
                }
                Err(e) => Err(e),
            },
            Command::Typing { channel } => match session.typing(&channel).await {
                Ok(sent) => {
                    if !sent {
                        app.metrics.typing_throttled.inc();
                    }
                    // Only a command with an `id` gets an answer; a throttled one is no error.
                    if id.is_none() {
                        return Ok(None);
                    }
                    Ok(protocol::reply(id, &serde_json::json!({ "sent": sent })))
                }
                Err(e) => Err(e),
            },
            Command::Presence {
                channel,
                counts_only,
            } => session
                .presence(&channel, counts_only)
                .await
                .map(|presence| {
                    protocol::reply(
                        id,
                        &protocol::presence_result(&channel, &presence, counts_only),
                    )
                }),
            Command::Refresh { token } => match app.auth.verify(&token) {
                Err(e) => Err(HeraldError::new(ErrorCode::Unauthorized, e.0)),
                Ok(v) if v.identity.user != *session.user() => Err(HeraldError::forbidden(
                    "a refresh token must be for the same user",
                )),
                Ok(v) => {
                    // A token always has an expiry.
                    let expires_at = v.expires_at.unwrap_or_default();
                    session.set_identity(v.identity);
                    self.send(protocol::reply(
                        id,
                        &serde_json::json!({ "expires_at": expires_at }),
                    ))
                    .await?;
                    return Ok(Some(expires_at));
                }
            },
            Command::Ping => Ok(protocol::reply(
                id,
                &serde_json::json!({ "pong": now_millis() }),
            )),
        };
        match outcome {
            Ok(frame) => self.send(frame).await?,
            Err(e) => self.send_error(id, &e).await?,
        }
        Ok(None)
    }

    /// Writes a batch of queued items with one flush; gives up when the hub closes the connection
    /// meanwhile (the client stopped reading) or the write takes longer than `WRITE_TIMEOUT`.
    async fn write_batch(
        &mut self,
        batch: &mut Vec<Outbound>,
        session: &Session,
    ) -> Result<(), WriteStopped> {
        let mut oldest = None;
        let mut publications = 0u64;
        for item in batch.iter() {
            if let Outbound::Publication(p) = item {
                publications += 1;
                oldest = oldest.or(Some(p.received_at));
            }
        }
        let Connection { socket, app } = self;
        let mut write = pin!(async move {
            for item in batch.drain(..) {
                let text: Utf8Bytes = match item {
                    Outbound::Publication(p) => p.encoded(WireFormat::NativeWebSocket, |p| {
                        Utf8Bytes::from(protocol::message(p))
                    }),
                    Outbound::Event(e) => e.encoded(WireFormat::NativeWebSocket, |e| {
                        Utf8Bytes::from(protocol::channel_event(e))
                    }),
                    Outbound::Unsubscribed(channel) => {
                        protocol::unsubscribed(None, &channel).into()
                    }
                };
                socket.feed(Message::Text(text)).await?;
            }
            socket.flush().await
        });
        // Most writes finish at once; the timer and the wait on the outbox are only set up for
        // one that does not.
        if let Some(result) = futures_util::FutureExt::now_or_never(write.as_mut()) {
            result.map_err(|_| WriteStopped::Gone)?;
            count_written(&app.metrics, publications, oldest);
            return Ok(());
        }
        let mut deadline = pin!(sleep(WRITE_TIMEOUT));
        let mut watch_close = true;
        loop {
            tokio::select! {
                result = &mut write => {
                    result.map_err(|_| WriteStopped::Gone)?;
                    break;
                }
                () = session.outbox().wait_closing(), if watch_close => {
                    // Only a slow consumer abandons a write in progress: its queue was dropped
                    // and its socket is not draining. Any other close (API, shutdown) lets the
                    // batch finish, so that what was queued is still delivered.
                    if session.outbox().closing() == Some(CloseCode::SlowConsumer) {
                        return Err(WriteStopped::Closing);
                    }
                    watch_close = false;
                }
                () = &mut deadline => return Err(WriteStopped::TimedOut),
            }
        }
        count_written(&app.metrics, publications, oldest);
        Ok(())
    }

    async fn write(&mut self, message: Message) -> Result<(), Gone> {
        match timeout(WRITE_TIMEOUT, self.socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    async fn send(&mut self, frame: String) -> Result<(), Gone> {
        self.write(Message::Text(frame.into())).await
    }

    async fn send_error(
        &mut self,
        id: Option<&RequestId>,
        error: &HeraldError,
    ) -> Result<(), Gone> {
        self.app.metrics.error(error.code);
        self.send(protocol::error(id, error.code, &error.message))
            .await
    }

    /// What a read error means: a frame over the size limit is closed with 4009.
    fn read_failed(&self, error: axum::Error) -> Ended {
        let inner = error.into_inner();
        match inner.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Capacity(_)) => Ended::Close(Disconnect::new(
                CloseCode::FrameTooLarge,
                format!(
                    "frame larger than {} bytes",
                    self.app.config.limits.max_frame_bytes
                ),
            )),
            _ => Ended::Gone,
        }
    }

    /// Ends the connection: for a server decision, the `disconnect` frame, a close frame with its
    /// code, and a short wait for the client's close; then counts the reason.
    async fn finish(mut self, ended: Ended) {
        let reason = match ended {
            Ended::Gone => {
                // If the client sent a close, tungstenite has queued the reply; send it so the
                // client sees a clean close (a dead socket fails or times out at once).
                let _ = timeout(CLOSE_TIMEOUT, self.socket.flush()).await;
                "client_closed"
            }
            Ended::Close(d) => {
                let frame = protocol::disconnect(&d);
                // A close frame's reason is at most 123 bytes.
                let mut end = d.reason.len().min(120);
                while !d.reason.is_char_boundary(end) {
                    end -= 1;
                }
                let reason = d.reason[..end].to_string();
                let close = CloseFrame {
                    code: d.code.code(),
                    reason: reason.into(),
                };
                let socket = &mut self.socket;
                let _ = timeout(CLOSE_TIMEOUT, async {
                    socket.feed(Message::Text(frame.into())).await?;
                    socket.send(Message::Close(Some(close))).await?;
                    while let Some(Ok(message)) = socket.recv().await {
                        if matches!(message, Message::Close(_)) {
                            break;
                        }
                    }
                    Ok::<(), axum::Error>(())
                })
                .await;
                tracing::debug!(code = d.code.code(), reason = %d.reason, "closed by server");
                d.code.label()
            }
        };
        self.app.metrics.disconnect(reason);
    }
}

/// Counts a finished batch write in the metrics.
fn count_written(
    metrics: &crate::metrics::Metrics,
    publications: u64,
    oldest: Option<std::time::Instant>,
) {
    metrics.messages_out.inc_by(publications);
    if let Some(oldest) = oldest {
        metrics.observe_write(oldest.elapsed());
    }
}
