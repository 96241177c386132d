//! The WebSocket transport: `GET /ws`, speaking the native protocol.
//!
//! Herald does its own WebSocket handshake and framing ([`frame`]) on the raw TCP socket, because
//! the fan-out is the hot path of the whole server and a general WebSocket library would put a
//! task wake-up, a copy into a per-connection buffer and a `send` of its own behind every
//! delivery. Here, a publication is framed once and its shared bytes are written straight from
//! the fan-out to every idle subscriber's socket ([`socket::Socket`], lent to the hub's outbox as
//! a `DirectWrite`); only a connection whose socket is full, or that is busy answering its
//! client, has its deliveries queued, and its task then writes them all with one `writev`.
//!
//! One task per connection owns the conversation. It authenticates the client (header,
//! `?token=` or a first `auth` frame within the handshake timeout), registers a [`Session`] with
//! the hub, and then waits for one of two things: the hub handing it the socket (something
//! queued, or a close) or the client's bytes. It holds no timer: the node's [`heartbeat`] sweep
//! pings it and asks its outbox for the close when the client falls silent or the token
//! expires. It closes with the documented code when a limit is hit, the token expires, or the
//! hub asks. No lock is held while it awaits.
//!
//! Nothing here holds a buffer while the connection is idle: the read buffer exists while a read
//! is parsed, frames are shared with the publication they carry, and the task's state is a few
//! hundred bytes (see "Where an idle connection's memory goes" in `docs/benchmarks.md`). The
//! bound on what may wait for a client is the hub's outbox (`limits.outbound_queue_bytes`).

mod frame;
pub mod heartbeat;
mod socket;

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::hooks::ForwardedHeaders;
use herald_core::hub::{DirectWrite, Outbound, Recovery};
use herald_core::protocol::{self, Command, RequestId};
use herald_core::publication::now_millis;
use herald_core::{CloseCode, Disconnect, ErrorCode, HeraldError, Session};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, timeout_at, Instant};

use self::frame::{FrameReader, Inbound, ReadError};
use self::socket::{frame_of, Socket};
use crate::api::{counted, parse_query};
use crate::auth::{bearer_token, Verified};
use crate::limits::CommandBucket;
use crate::server::App;

use super::{admit_connection, connect_hook, deadline_of, forwarded_headers, verify_token, Peer};

/// Most bytes read from a socket at a time. Clients send small commands; a larger frame is read
/// in several calls.
const READ_CHUNK: usize = 4096;
/// Longest a write may wait for a full socket before the connection is considered dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the closing handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// RFC 6455 close codes for a client that breaks the protocol.
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_INVALID_PAYLOAD: u16 = 1007;

/// The query string of `GET /ws`: the token, and where the personal channel starts
/// (`since=<offset>:<epoch>` or `last=<n>`), for clients that authenticate by header or query.
/// Other parameters are ignored; one given twice is an error.
#[derive(Deserialize)]
pub struct ConnectQuery {
    token: Option<String>,
    since: Option<String>,
    last: Option<u32>,
}

/// `GET /ws`: checks the handshake, origin and connection rate, then the query string, then
/// upgrades. Each refusal is the JSON error body, counted.
pub async fn upgrade(State(app): State<App>, Peer(peer): Peer, mut request: Request) -> Response {
    let limits = &app.config.limits;
    let refuse = |error: HeraldError| counted(&app, error).into_response();
    let accept = match accept_key(request.headers()) {
        Ok(accept) => accept,
        Err(e) => return refuse(e),
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return refuse(HeraldError::bad_request(
            "this connection cannot be upgraded to a WebSocket",
        ));
    };
    let headers = request.headers();
    if let Err(e) = admit_connection(&app, peer, headers) {
        return refuse(e);
    }
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
        let socket = Socket::new(parts.io.into_inner(), app.metrics.clone());
        let connection = Connection {
            socket: Arc::new(socket),
            reader: FrameReader::with_bytes(&parts.read_buf),
            app,
        };
        // The connection gets a task of its own, sized by `Connection::run` alone.
        let task = connection.run(Box::new(Handshake {
            credentials,
            personal,
            deadline,
        }));
        tokio::spawn(task);
    });
    let switching = [
        (CONNECTION, HeaderValue::from_static("upgrade")),
        (UPGRADE, HeaderValue::from_static("websocket")),
        (SEC_WEBSOCKET_ACCEPT, accept),
    ];
    (StatusCode::SWITCHING_PROTOCOLS, switching).into_response()
}

/// Checks that `headers` ask for a WebSocket (RFC 6455 §4.2.1) and returns the
/// `Sec-WebSocket-Accept` answer to the client's key.
fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, HeraldError> {
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
enum Credentials {
    /// A token from the header or the query string, not yet verified.
    Token(String, Option<ForwardedHeaders>),
    /// Already verified (by the backend's connect hook).
    Verified(Verified),
    /// The token will come in the first frame.
    AuthFrame(Option<ForwardedHeaders>),
}

/// What the upgrade request said, for the connection's task to act on.
struct Handshake {
    credentials: Credentials,
    /// Where the personal channel starts.
    personal: Recovery,
    /// When an auth frame must have arrived by.
    deadline: Instant,
}

/// How a connection ended.
enum Ended {
    /// The server decided to close: send `disconnect` and a close frame.
    Close(Disconnect),
    /// The server closes without a goodbye: the client is not reading, and a frame may be half
    /// written.
    Dropped(Disconnect),
    /// The client broke RFC 6455: a close frame with the RFC's code.
    Protocol(u16, &'static str),
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

impl From<Gone> for Ended {
    fn from(_: Gone) -> Self {
        Ended::Gone
    }
}

/// Why a batch write stopped early.
enum WriteStopped {
    /// The socket failed.
    Gone,
    /// The hub closed the connection as a slow consumer meanwhile.
    Closing,
    /// The write did not finish within `WRITE_TIMEOUT`: the client is not reading.
    TimedOut,
}

/// A connection's command rate limit, and how many commands in a row it refused.
struct CommandRate {
    bucket: CommandBucket,
    refused_in_a_row: u32,
}

struct Connection {
    socket: Arc<Socket>,
    app: App,
    reader: FrameReader,
}

// === impl Connection ===

impl Connection {
    /// The connection's whole life. Written as one `async move` block rather than an `async fn`
    /// calling others, because this future is the task an idle connection keeps: an `async fn`
    /// stores its arguments twice, and every inline callee adds its own state. Everything before
    /// and after the main loop is boxed, so the task holds only what the loop needs.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` would keep a second copy of `self` in every idle task"
    )]
    fn run(mut self, handshake: Box<Handshake>) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let (session, expires_at) = match Box::pin(self.start(*handshake)).await {
                Ok(started) => started,
                Err(ended) => return Box::pin(self.finish(ended)).await,
            };
            // The state an idle connection keeps, sized deliberately: configuration is read from
            // `self.app` when needed rather than copied here, and the heartbeat and the token's
            // expiry are kept by the node's sweep (`heartbeat`), not by a timer in this task.
            let limits = &self.app.config.limits;
            let mut commands = CommandRate {
                bucket: CommandBucket::new(limits.commands_per_minute, limits.commands_burst),
                refused_in_a_row: 0,
            };
            let socket: Arc<dyn DirectWrite> = self.socket.clone();
            session.outbox().set_writer(Some(socket));
            let beat = self.app.heartbeats.add(
                session.downgrade(),
                deadline_of(expires_at, self.app.config.auth.jwt_leeway),
            );
            let ended: Ended = 'serve: loop {
                // Write what is queued; when nothing is, the socket goes to the fan-out.
                if let Err(ended) = Box::pin(self.flush(&session)).await {
                    break 'serve ended;
                }
                tokio::select! {
                    () = session.outbox().wait() => {}
                    // `poll_read_ready` keeps its waker in the socket's registration, where the
                    // `readable()` future would add 150 bytes to every idle task.
                    readable = std::future::poll_fn(|cx| self.socket.stream().poll_read_ready(cx)) => {
                        if readable.is_err() || !self.read_available() {
                            break 'serve Ended::Gone;
                        }
                        session.outbox().note_client_activity();
                        loop {
                            let inbound = match self.next_inbound() {
                                Ok(Some(inbound)) => inbound,
                                Ok(None) => break,
                                Err(ended) => break 'serve ended,
                            };
                            // Boxed: commands are rare next to deliveries, and an inline command
                            // future would make every idle connection's task larger.
                            match Box::pin(self.on_inbound(&session, inbound, &mut commands)).await {
                                Ok(Some(new_expiry)) => {
                                    let expiry = deadline_of(Some(new_expiry), self.app.config.auth.jwt_leeway);
                                    self.app.heartbeats.set_expiry(&beat, expiry);
                                }
                                Ok(None) => {}
                                Err(ended) => break 'serve ended,
                            }
                        }
                    }
                }
            };
            self.app.heartbeats.remove(beat);
            // The fan-out must stop writing before the goodbye, and before the socket closes.
            session.outbox().set_writer(None);
            drop(session);
            Box::pin(self.finish(ended)).await;
        }
    }

    /// Authenticates the client, registers its session and greets it; returns the session and
    /// when its credentials expire.
    async fn start(&mut self, handshake: Handshake) -> Result<(Session, Option<u64>), Ended> {
        let Handshake {
            credentials,
            personal,
            deadline,
        } = handshake;
        let (verified, personal) = match credentials {
            Credentials::Verified(verified) => (Ok(verified), personal),
            Credentials::Token(token, forwarded) => {
                (verify_token(&self.app, &token, forwarded), personal)
            }
            Credentials::AuthFrame(forwarded) => {
                let (token, from_frame) = self.await_auth_frame(deadline).await?;
                // The auth frame's own `since`/`last` wins over the query string's.
                let personal = match from_frame {
                    Recovery::Live => personal,
                    recovery => recovery,
                };
                (verify_token(&self.app, &token, forwarded), personal)
            }
        };
        let verified = verified
            .map_err(|e| Ended::Close(Disconnect::new(CloseCode::Unauthorized, e.message)))?;
        let expires_at = verified.expires_at;
        let session = self.greet(verified, personal).await?;
        Ok((session, expires_at))
    }

    /// Registers the session and sends `connected` (and the personal channel's `subscribed`).
    async fn greet(&mut self, verified: Verified, personal: Recovery) -> Result<Session, Ended> {
        let (session, personal) = self.app.hub.connect(verified.identity, personal).await?;
        self.app.metrics.connections_accepted.inc();
        tracing::debug!(client = %session.client_id(), user = %session.user(), "connected");
        let hello = protocol::connected(
            session.client_id(),
            session.user(),
            self.app.config.limits.heartbeat_interval.as_secs().max(1),
            verified.expires_at,
        );
        self.send(hello).await?;
        if let Some(personal) = &personal {
            self.send(protocol::subscribed(None, personal)).await?;
        }
        Ok(session)
    }

    /// Waits for the first frame, which must be `{"type":"auth","token":...}` (with, optionally,
    /// where the personal channel starts).
    async fn await_auth_frame(&mut self, deadline: Instant) -> Result<(String, Recovery), Ended> {
        let unauthorized =
            |reason: &str| Ended::Close(Disconnect::new(CloseCode::Unauthorized, reason));
        let not_auth = "the first frame must be an auth frame with a token";
        loop {
            match self.next_inbound()? {
                Some(Inbound::Text(text)) => {
                    return match protocol::parse_command(&text) {
                        Ok((_, Command::Auth { token, personal })) => Ok((token, personal)),
                        _ => Err(unauthorized(not_auth)),
                    }
                }
                Some(Inbound::Binary) => return Err(unauthorized(not_auth)),
                Some(Inbound::Ping(payload)) => self.write(frame::pong(&payload)).await?,
                Some(Inbound::Pong) => {}
                Some(Inbound::Close(code)) => return Err(self.answer_close(code).await),
                None => match timeout_at(deadline, self.socket.stream().readable()).await {
                    Err(_) => {
                        return Err(unauthorized("no auth frame within the handshake timeout"))
                    }
                    Ok(Err(_)) => return Err(Ended::Gone),
                    Ok(Ok(())) => {
                        if !self.read_available() {
                            return Err(Ended::Gone);
                        }
                    }
                },
            }
        }
    }

    /// Reads what the socket has, after it reported readable. False when the client closed its
    /// side or the socket failed.
    fn read_available(&mut self) -> bool {
        let buffer = self.reader.buffer();
        buffer.reserve(READ_CHUNK);
        match self.socket.stream().try_read_buf(buffer) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }

    /// The next whole message the client sent, if one has arrived.
    fn next_inbound(&mut self) -> Result<Option<Inbound>, Ended> {
        let max = self.app.config.limits.max_frame_bytes;
        self.reader.next(max).map_err(|e| match e {
            ReadError::TooLarge => Ended::Close(Disconnect::new(
                CloseCode::FrameTooLarge,
                format!("frame larger than {max} bytes"),
            )),
            ReadError::Protocol(reason) => Ended::Protocol(CLOSE_PROTOCOL_ERROR, reason),
            ReadError::InvalidUtf8(reason) => Ended::Protocol(CLOSE_INVALID_PAYLOAD, reason),
        })
    }

    /// Answers the client's close frame with one of the same code, as RFC 6455 asks. The reader
    /// has refused a close with an invalid code or reason as a protocol error.
    async fn answer_close(&mut self, code: Option<u16>) -> Ended {
        let _ = timeout(CLOSE_TIMEOUT, self.socket.write(frame::close_echo(code))).await;
        Ended::Gone
    }

    /// Writes everything the hub queued, then hands the socket to the fan-out (or returns the
    /// close the hub asked for).
    async fn flush(&mut self, session: &Session) -> Result<(), Ended> {
        let mut batch = Vec::new();
        loop {
            if !batch.is_empty() || self.socket.has_unsent() {
                // Boxed: a write's state only exists while writing, and inline it would make
                // every idle connection's task larger.
                match Box::pin(self.write_batch(&mut batch, session)).await {
                    Ok(()) => {}
                    Err(WriteStopped::Gone) => return Err(Ended::Gone),
                    Err(WriteStopped::TimedOut) => {
                        self.app
                            .hub
                            .stats()
                            .slow_consumers
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Err(Ended::Dropped(Disconnect::new(
                            CloseCode::SlowConsumer,
                            "a write did not finish in time: the client is not reading",
                        )));
                    }
                    Err(WriteStopped::Closing) => {
                        return Err(Ended::Dropped(Disconnect::new(
                            CloseCode::SlowConsumer,
                            "outgoing queue full: the client is not reading fast enough",
                        )));
                    }
                }
            }
            let close = session.outbox().take_or_release(&mut batch);
            if batch.is_empty() {
                return close.map_or(Ok(()), |d| Err(d.into()));
            }
        }
    }

    /// Handles one message from the client. Returns the new token expiry after a successful
    /// `refresh`.
    async fn on_inbound(
        &mut self,
        session: &Session,
        inbound: Inbound,
        commands: &mut CommandRate,
    ) -> Result<Option<u64>, Ended> {
        // From here until the next flush this task writes, so that an answer goes out before
        // what the command causes (a `subscribed` before the channel's first message).
        session.outbox().claim();
        let parsed = match inbound {
            Inbound::Text(text) => protocol::parse_command(&text),
            Inbound::Binary => Err(protocol::Rejected {
                id: None,
                error: HeraldError::bad_request(
                    "binary frames are not accepted; send JSON text frames",
                ),
            }),
            Inbound::Ping(payload) => {
                self.write(frame::pong(&payload)).await?;
                return Ok(None);
            }
            Inbound::Pong => return Ok(None),
            Inbound::Close(code) => return Err(self.answer_close(code).await),
        };
        let burst = self.app.config.limits.commands_burst;
        if !commands.bucket.try_take(std::time::Instant::now()) {
            commands.refused_in_a_row += 1;
            if commands.refused_in_a_row > burst {
                return Err(Disconnect::new(
                    CloseCode::RateLimited,
                    "kept sending after rate_limited",
                )
                .into());
            }
            let e = HeraldError::new(ErrorCode::RateLimited, "too many commands; slow down");
            let id = match &parsed {
                Ok((id, _)) => id.as_ref(),
                Err(rejected) => rejected.id.as_ref(),
            };
            self.send_error(id, &e).await?;
            return Ok(None);
        }
        commands.refused_in_a_row = 0;
        self.handle(session, parsed).await
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
                .await
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

    /// Writes a batch of queued items (after any frame a direct write left half done) with
    /// `writev`; gives up when the hub closes the connection meanwhile (the client stopped
    /// reading) or the write takes longer than `WRITE_TIMEOUT`.
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
        let mut frames: VecDeque<Bytes> = batch.drain(..).map(|item| frame_of(&item)).collect();
        let mut write = pin!(self.socket.write_all(&mut frames));
        // Most writes finish at once; the timer and the wait on the outbox are only set up for
        // one that does not.
        if let Some(result) = futures_util::FutureExt::now_or_never(write.as_mut()) {
            result.map_err(|_| WriteStopped::Gone)?;
            count_written(&self.app.metrics, publications, oldest);
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
        count_written(&self.app.metrics, publications, oldest);
        Ok(())
    }

    /// Writes one frame of this task's own (an answer, a ping); the task holds the socket.
    async fn write(&mut self, frame: Bytes) -> Result<(), Gone> {
        // Boxed: the write and its timer exist only while writing, not in an idle task.
        match Box::pin(timeout(WRITE_TIMEOUT, self.socket.write(frame))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    async fn send(&mut self, text: String) -> Result<(), Gone> {
        self.write(frame::text(&text)).await
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

    /// Ends the connection: for a server decision, the `disconnect` frame, a close frame with its
    /// code, and a short wait for the client's close; then counts the reason. The socket closes
    /// when the connection is dropped.
    async fn finish(mut self, ended: Ended) {
        let reason = match ended {
            Ended::Gone => "client_closed",
            Ended::Dropped(d) => {
                tracing::debug!(code = d.code.code(), reason = %d.reason, "dropped by server");
                d.code.label()
            }
            Ended::Protocol(code, reason) => {
                tracing::debug!(code, reason, "protocol error");
                let _ = timeout(CLOSE_TIMEOUT, self.socket.write(frame::close(code, reason))).await;
                "protocol_error"
            }
            Ended::Close(d) => {
                let mut goodbye = VecDeque::from([
                    frame::text(&protocol::disconnect(&d)),
                    frame::close(d.code.code(), &d.reason),
                ]);
                let _ = timeout(CLOSE_TIMEOUT, async {
                    self.socket.write_all(&mut goodbye).await?;
                    self.await_close().await;
                    Ok::<(), io::Error>(())
                })
                .await;
                tracing::debug!(code = d.code.code(), reason = %d.reason, "closed by server");
                d.code.label()
            }
        };
        self.app.metrics.disconnect(reason);
    }

    /// Reads until the client's close frame or the end of its stream.
    async fn await_close(&mut self) {
        loop {
            match self.next_inbound() {
                Ok(Some(Inbound::Close(_))) | Err(_) => return,
                Ok(Some(_)) => continue,
                Ok(None) => {}
            }
            if self.socket.stream().readable().await.is_err() || !self.read_available() {
                return;
            }
        }
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
