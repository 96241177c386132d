//! Socket.IO's WebSocket transport: `GET /socket.io/?EIO=4&transport=websocket`.
//!
//! A client that starts on WebSocket gets the `open` packet as its first frame; one that started
//! on long-polling brings its `sid` and upgrades: it sends the probe `2probe`, is answered
//! `3probe`, the pending long-poll is answered `noop`, and its `upgrade` packet (`5`) hands the
//! connection to this socket. The handshake, the framing and permessage-deflate are `/ws`'s own
//! ([`ws::handshake`], [`ws::frame`], [`ws::deflate`]); the task then drains the connection
//! ([`Connection::drain`]) whenever it is woken, and reads the client's packets between.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::{CloseCode, Disconnect, HeraldError};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::connection::{Connection, Drained, Ending, Transport, Waiter};
use super::packet::{self, EngineIn, Outgoing};
use super::polling::{credentials, open_packet, unknown_session};
use super::{encode, events, Application, EngineQuery, Form};
use crate::api::counted;
use crate::server::{App, RawTcp};
use crate::transport::admit_connection;
use crate::transport::ws::frame::{self, FrameReader, Inbound, ReadError};
use crate::transport::ws::socket::Socket;
use crate::transport::ws::{self, Deflate, CLOSE_TIMEOUT, WRITE_TIMEOUT};

/// The WebSocket handshake for `/socket.io/`: a new connection, or the upgrade of a polling one.
pub(super) async fn upgrade(
    app: App,
    peer: SocketAddr,
    mut request: Request,
    query: EngineQuery,
    application: Application,
) -> Response {
    let refuse = |error: HeraldError| counted(&app, error).into_response();
    let accept = match ws::handshake::accept_key(request.headers()) {
        Ok(accept) => accept,
        Err(e) => return refuse(e),
    };
    if request.extensions().get::<RawTcp>().is_none() {
        return refuse(HeraldError::internal(
            "WebSocket upgrades need Herald's HTTP server: serve the router with herald::server::serve",
        ));
    }
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return refuse(HeraldError::bad_request(
            "this connection cannot be upgraded to a WebSocket",
        ));
    };
    let deflate = ws::handshake::negotiate_deflate(&app, request.headers());
    let (connection, probe) = match query.sid.as_deref() {
        Some(sid) => match app.socketio.get(sid) {
            Some(c) if c.claim_upgrade() => (c, true),
            // Already upgraded, or another WebSocket is upgrading it: this one is opened and
            // closed at once, as Engine.IO servers do.
            Some(_) => {
                tokio::spawn(async move {
                    if let Ok(upgraded) = on_upgrade.await {
                        if let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() {
                            let socket =
                                Socket::new(parts.io.into_inner(), app.metrics.clone(), None);
                            let close = frame::close(1008, "this connection is upgraded already");
                            let _ = timeout(CLOSE_TIMEOUT, socket.write(close)).await;
                        }
                    }
                });
                return ws::handshake::switching_protocols(accept, None);
            }
            None => return refuse(unknown_session()),
        },
        None => {
            let slot = match admit_connection(&app, peer, request.headers()) {
                Ok(slot) => slot,
                Err(e) => return refuse(e),
            };
            let credentials = credentials(&app, peer, request.headers(), query.token).await;
            (
                Connection::start(slot, credentials, Transport::WebSocket, application),
                false,
            )
        }
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                if probe {
                    connection.release_upgrade();
                } else {
                    connection.close(Ending::ClientClosed);
                }
                return;
            }
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            connection.close(Ending::ClientClosed);
            return tracing::error!("a WebSocket upgrade that is not a TCP stream; closing");
        };
        let socket = Socket::new(
            parts.io.into_inner(),
            connection.app.metrics.clone(),
            deflate,
        );
        let mut task = Task {
            reader: FrameReader::with_bytes(&parts.read_buf),
            socket,
            deflate,
            connection,
        };
        // The task's future is what an idle connection keeps: the task's state (moved in once, not
        // rebound, which would keep a second copy) and the serve loop's, with the setup boxed.
        tokio::spawn(async move {
            if Box::pin(task.start(probe)).await {
                task.serve().await;
            }
        });
    });
    ws::handshake::switching_protocols(accept, deflate)
}

/// The WebSocket's task.
struct Task {
    connection: Arc<Connection>,
    socket: Socket,
    reader: FrameReader,
    deflate: Option<Deflate>,
}

/// The socket failed or the client went away.
struct Gone;

impl Task {
    /// Sends the `open` packet, or runs the upgrade's probe; false when the connection cannot go
    /// on.
    async fn start(&mut self, probe: bool) -> bool {
        let started = if probe {
            self.probe().await
        } else {
            let open = open_packet(&self.connection.app, &self.connection.sid, false);
            self.write(VecDeque::from([self.packet_frame(&open)])).await
        };
        if started.is_err() {
            if probe {
                self.connection.release_upgrade();
            } else {
                self.connection.close(Ending::ClientClosed);
            }
            return false;
        }
        true
    }

    /// The upgrade of a polling connection: the probe, then `upgrade`. A failed probe leaves the
    /// polling connection as it was.
    async fn probe(&mut self) -> Result<(), Gone> {
        let mut probed = false;
        let mut held: Option<Inbound> = None;
        loop {
            let next = match held.take() {
                Some(inbound) => Ok(Some(inbound)),
                None => self.next_inbound(),
            };
            let inbound = match next {
                Ok(Some(inbound)) => inbound,
                Ok(None) => {
                    let read = timeout(WRITE_TIMEOUT, self.socket.stream().readable()).await;
                    if !matches!(read, Ok(Ok(()))) || !self.read_available() {
                        return Err(Gone);
                    }
                    continue;
                }
                Err(_) => return Err(Gone),
            };
            let Inbound::Text(text) = inbound else {
                return Err(Gone);
            };
            match packet::parse_engine_text(&text, false) {
                Ok(EngineIn::Ping(data)) if data == "probe" && !probed => {
                    if !self.connection.begin_upgrade() {
                        return Err(Gone);
                    }
                    probed = true;
                    // An `upgrade` that came with the probe completes it before anything else
                    // runs, so that a long-poll after it is refused.
                    let following = self.next_inbound().map_err(|_| Gone)?;
                    let upgrade = matches!(&following, Some(Inbound::Text(t)) if t == "5");
                    if upgrade {
                        self.connection.complete_upgrade();
                    } else {
                        held = following;
                    }
                    self.write(VecDeque::from([frame::text("3probe")])).await?;
                    if upgrade {
                        return Ok(());
                    }
                }
                Ok(EngineIn::Upgrade) if probed => {
                    self.connection.complete_upgrade();
                    return Ok(());
                }
                Ok(EngineIn::Noop) => {}
                _ => return Err(Gone),
            }
        }
    }

    /// The connection's life on this socket: write what is ready, read what comes. This future
    /// is what an idle connection keeps, so nothing that is only needed now and then lives in it
    /// across a wait: what a drain took is written by a boxed future it is moved into.
    async fn serve(&mut self) {
        loop {
            let flushed = match self.drain() {
                Some(flush) => flush.await,
                None => Ok(()),
            };
            if flushed.is_err() {
                return;
            }
            tokio::select! {
                () = self.connection.wait(Waiter::WebSocket) => {}
                readable = std::future::poll_fn(|cx| self.socket.stream().poll_read_ready(cx)) => {
                    if readable.is_err() || !self.read_available() {
                        self.connection.close(Ending::ClientClosed);
                        continue;
                    }
                    while let Some(inbound) = self.read_one() {
                        Box::pin(self.on_inbound(inbound)).await;
                        if self.connection.ending().is_some() {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// What is ready to write, as the boxed future that writes it (the drain moved into it).
    fn drain(&mut self) -> Option<Pin<Box<impl Future<Output = Result<(), Gone>> + '_>>> {
        let drained = self.connection.drain();
        (!drained.is_empty() || drained.ending.is_some())
            .then(move || Box::pin(self.flush(drained)))
    }

    /// Writes what a drain took; after the connection's last packets, closes the socket. `Err`
    /// when the connection is over.
    async fn flush(&mut self, drained: Drained) -> Result<(), Gone> {
        let ending = drained.ending.clone();
        if !drained.is_empty() {
            let frames = self.frames(drained);
            if self.write(frames).await.is_err() {
                self.connection.close(Ending::ClientClosed);
                return Err(Gone);
            }
        }
        match ending {
            Some(ending) => {
                self.finish(ending).await;
                Err(Gone)
            }
            None => Ok(()),
        }
    }

    /// The next whole message, or `None` (closing the connection on a broken frame).
    fn read_one(&mut self) -> Option<Inbound> {
        match self.next_inbound() {
            Ok(inbound) => inbound,
            Err(ending) => {
                self.connection.close(ending);
                None
            }
        }
    }

    async fn on_inbound(&mut self, inbound: Inbound) {
        let connection = self.connection.clone();
        match inbound {
            Inbound::Text(text) => match packet::parse_engine_text(&text, false) {
                Ok(EngineIn::Message(message)) => events::on_text(&connection, &message).await,
                Ok(EngineIn::Pong(_)) => connection.pong(),
                Ok(EngineIn::Close) => connection.close(Ending::ClientClosed),
                Ok(EngineIn::Ping(data)) => connection.send(Outgoing::text(format!("3{data}"))),
                Ok(EngineIn::Upgrade | EngineIn::Noop | EngineIn::Binary(_)) => {}
                Err(packet::Malformed(reason)) => connection.close(Ending::Protocol(reason)),
            },
            Inbound::Binary(data) => events::on_binary(&connection, data).await,
            Inbound::Ping(payload) => {
                let _ = self.write(VecDeque::from([frame::pong(&payload)])).await;
            }
            Inbound::Pong => {}
            Inbound::Close(code) => {
                let _ = timeout(CLOSE_TIMEOUT, self.socket.write(frame::close_echo(code))).await;
                connection.close(Ending::ClientClosed);
            }
        }
    }

    /// The drained packets and items as frames, in order: the connection's own packets, then
    /// what the hub queued (each publication's frame shared).
    fn frames(&self, drained: Drained) -> VecDeque<Bytes> {
        let app = &self.connection.app;
        let names = &app.config.socketio.namespaces;
        let form = if self.deflate.is_some() {
            Form::WebSocketDeflate
        } else {
            Form::WebSocket
        };
        let mut frames: VecDeque<Bytes> = drained
            .packets
            .iter()
            .map(|p| self.packet_frame(p))
            .collect();
        drained.count_written(&app.metrics);
        for (namespace, item) in &drained.items {
            frames.push_back(encode(item, *namespace, form, names, self.deflate));
        }
        frames.extend(drained.records.iter().map(|p| self.packet_frame(p)));
        frames.extend(drained.last.iter().map(|p| self.packet_frame(p)));
        frames
    }

    fn packet_frame(&self, packet: &Outgoing) -> Bytes {
        match packet {
            Outgoing::Text(text) => {
                let text = std::str::from_utf8(text).unwrap_or_default();
                match self.deflate {
                    Some(deflate) => frame::text_deflated(text, deflate),
                    None => frame::text(text),
                }
            }
            Outgoing::Binary(data) => frame::binary(data),
        }
    }

    async fn write(&mut self, mut frames: VecDeque<Bytes>) -> Result<(), Gone> {
        match timeout(WRITE_TIMEOUT, self.socket.write_all(&mut frames)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Gone),
            Err(_) => {
                self.connection
                    .app
                    .hub
                    .stats()
                    .slow_consumers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.connection.close(Ending::Closed(Disconnect::new(
                    CloseCode::SlowConsumer,
                    "a write did not finish in time: the client is not reading",
                )));
                Err(Gone)
            }
        }
    }

    /// Closes the socket after the ending's packets: a normal close frame.
    async fn finish(&mut self, ending: Ending) {
        let (code, reason) = match &ending {
            Ending::Protocol(reason) => (1002, *reason),
            Ending::Closed(d) => (d.code.code(), d.reason.as_str()),
            _ => (1000, ""),
        };
        let close = frame::close(code, reason);
        let _ = timeout(CLOSE_TIMEOUT, self.socket.write(close)).await;
    }

    fn read_available(&mut self) -> bool {
        self.socket.read_into(&mut self.reader)
    }

    fn next_inbound(&mut self) -> Result<Option<Inbound>, Ending> {
        let max = self.connection.app.config.limits.max_frame_bytes;
        let deflate = self.socket.deflates();
        self.reader.next(max, deflate).map_err(|e| match e {
            ReadError::TooLarge => Ending::Closed(Disconnect::new(
                CloseCode::FrameTooLarge,
                format!("frame larger than {max} bytes"),
            )),
            ReadError::Protocol(reason) | ReadError::InvalidUtf8(reason) => {
                Ending::Protocol(reason)
            }
        })
    }
}
