//! A WebSocket connection's task, from the `101` to the socket's close.
//!
//! [`Connection::run`] is the whole life of one connection, and its future is the task an idle
//! connection keeps, so it is sized deliberately: everything before and after the main loop is
//! boxed, and it holds no timer. It authenticates the client (a token from the handshake, or an
//! `auth` frame within the handshake timeout), registers its [`Session`] with the hub and greets
//! it, then waits for one of two things: the hub handing it the socket ([`Connection::flush`]
//! writes what was queued with one `writev`, or returns the close the hub asked for) or the
//! client's bytes (read here, answered in `commands`). It ends with the documented close
//! ([`Connection::finish`]) and counts the reason. It never holds a lock across an `.await`, and
//! never writes while the fan-out may: the outbox decides who holds the socket.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::hub::{DirectWrite, Outbound, Recovery};
use herald_core::protocol::{self, Command, RequestId};
use herald_core::{CloseCode, Disconnect, HeraldError, Session};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, timeout_at, Instant};

use super::commands::CommandRate;
use super::deflate::Deflate;
use super::frame::{self, FrameReader, Inbound, ReadError};
use super::handshake::{Credentials, Handshake};
use super::socket::Socket;
use super::{CLOSE_INVALID_PAYLOAD, CLOSE_PROTOCOL_ERROR, CLOSE_TIMEOUT, WRITE_TIMEOUT};
use crate::auth::Verified;
use crate::transport::{deadline_of, verify_token, ConnectionSlot};

/// How a connection ended.
pub(super) enum Ended {
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
pub(super) struct Gone;

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

/// One WebSocket connection, owned by its task: the socket (shared with the fan-out while the
/// connection is idle), the node's state with the connection's place on the node (given back
/// when the connection is dropped, at the task's end), and what the client has sent that is not
/// yet a whole message.
pub(super) struct Connection {
    socket: Arc<Socket>,
    pub(super) app: ConnectionSlot,
    reader: FrameReader,
}

// === impl Connection ===

impl Connection {
    /// The connection of `stream`, whose first bytes (read by hyper past the upgrade request)
    /// are `read_buf`, holding its place on the node.
    pub(super) fn new(
        stream: TcpStream,
        read_buf: &[u8],
        app: ConnectionSlot,
        deflate: Option<Deflate>,
    ) -> Connection {
        Connection {
            socket: Arc::new(Socket::new(stream, app.metrics.clone(), deflate)),
            reader: FrameReader::with_bytes(read_buf),
            app,
        }
    }

    /// The connection's whole life. Written as one `async move` block rather than an `async fn`
    /// calling others, because this future is the task an idle connection keeps: an `async fn`
    /// stores its arguments twice, and every inline callee adds its own state. Everything before
    /// and after the main loop is boxed, so the task holds only what the loop needs.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` would keep a second copy of `self` in every idle task"
    )]
    pub(super) fn run(
        mut self,
        handshake: Box<Handshake>,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let (session, expires_at) = match Box::pin(self.start(*handshake)).await {
                Ok(started) => started,
                Err(ended) => return Box::pin(self.finish(ended)).await,
            };
            // The state an idle connection keeps, sized deliberately: configuration is read from
            // `self.app` when needed rather than copied here, and the heartbeat and the token's
            // expiry are kept by the node's sweep (`heartbeat`), not by a timer in this task.
            let mut commands = CommandRate::new(&self.app.config.limits);
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
                    // `readable()` future would make every idle task larger.
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
                Some(Inbound::Binary(_)) => return Err(unauthorized(not_auth)),
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
        self.socket.read_into(&mut self.reader)
    }

    /// The next whole message the client sent, if one has arrived.
    fn next_inbound(&mut self) -> Result<Option<Inbound>, Ended> {
        let max = self.app.config.limits.max_frame_bytes;
        let deflate = self.socket.deflates();
        self.reader.next(max, deflate).map_err(|e| match e {
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
    pub(super) async fn answer_close(&mut self, code: Option<u16>) -> Ended {
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
        let mut frames: VecDeque<Bytes> = batch
            .drain(..)
            .map(|item| self.socket.frame_of(&item))
            .collect();
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
    pub(super) async fn write(&mut self, frame: Bytes) -> Result<(), Gone> {
        // Boxed: the write and its timer exist only while writing, not in an idle task.
        match Box::pin(timeout(WRITE_TIMEOUT, self.socket.write(frame))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    pub(super) async fn send(&mut self, text: String) -> Result<(), Gone> {
        self.write(frame::text(&text)).await
    }

    pub(super) async fn send_error(
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
