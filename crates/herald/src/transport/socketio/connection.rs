//! One Engine.IO connection, whichever transport carries it at the moment.
//!
//! A [`Connection`] is what a client's `sid` names. Long-polling requests find it in the node's
//! registry ([`Registry`]); a WebSocket task holds it for its whole life. It keeps:
//!
//! - a small bounded queue of the connection's own packets (the `open` and connect answers, acks,
//!   pings, events a mapped command emits back), at most [`MAX_QUEUED_PACKETS`];
//! - one hub [`Session`] per connected Socket.IO namespace, whose bounded outbox holds what the
//!   hub delivers: a client that stops polling or reading fills it and is closed as a slow
//!   consumer like any other;
//! - its deadlines, kept by the node's [`Clock`](super::clock::Clock): a ping every
//!   `ping_interval`, the close when the pong does not come within `ping_timeout`, when its
//!   credentials run out, or when it connects no namespace within `limits.handshake_timeout`.
//!
//! Whoever writes (a pending `GET`, or the WebSocket task) calls [`Connection::drain`], which
//! takes the queue first and then each namespace's outbox; what the hub queued is encoded by
//! [`super::encode`], once per publication, form and namespace. No lock is held across an
//! `.await`: waiting is [`Connection::wait`], one poll of the connection's state and the outboxes,
//! which keeps a waker for each of its two possible waiters and allocates nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use herald_core::hub::Outbound;
use herald_core::{ChannelName, Disconnect, Session, StreamPosition};
use parking_lot::Mutex;
use tokio::time::Instant;

use herald_core::protocol;

use super::clock::Clock;
use super::packet::{self, Kind, Outgoing};
use super::{Application, Credentials};
use crate::limits::CommandBucket;
use crate::metrics::Metrics;
use crate::transport::ConnectionSlot;

/// Most packets of its own a connection may have waiting for the client: answers come one per
/// client event, within the command rate, so a client that keeps sending without reading is the
/// one this stops.
pub const MAX_QUEUED_PACKETS: usize = 1024;

/// Which transport carries the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    /// A WebSocket answered the probe; a pending `GET` is answered with `noop`, and the
    /// WebSocket takes over at the client's `upgrade`.
    Upgrading,
    WebSocket,
}

/// Who waits on a connection: the pending long-poll, or the WebSocket's task (during an upgrade
/// both may, for a moment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    Poll = 0,
    WebSocket = 1,
}

/// Why a connection ended.
#[derive(Debug, Clone)]
pub enum Ending {
    /// The client sent `close`, or went away.
    ClientClosed,
    /// No pong within `ping_timeout` after a ping.
    PingTimeout,
    /// The client broke Engine.IO or Socket.IO.
    Protocol(&'static str),
    /// The hub (or a limit) closed it, with the code `/ws` would have used.
    Closed(Disconnect),
}

impl Ending {
    /// The `herald_disconnects_total` label.
    pub fn label(&self) -> &'static str {
        match self {
            Ending::ClientClosed => "client_closed",
            Ending::PingTimeout => herald_core::CloseCode::IdleTimeout.label(),
            Ending::Protocol(_) => "protocol_error",
            Ending::Closed(d) => d.code.label(),
        }
    }
}

/// A connected Socket.IO namespace: its place in `[socketio] namespaces`, its hub session, and
/// how far each of its channels has been written (its recovery record).
pub struct NamespaceSocket {
    pub index: usize,
    pub session: Arc<Session>,
    pub positions: Positions,
}

/// How far each subscribed channel of a namespace has been written to the client: a channel's
/// position when it was subscribed, moved on by each publication written. Kept under the
/// connection's lock, where drains move it.
#[derive(Default)]
pub struct Positions(Vec<(ChannelName, StreamPosition)>);

impl Positions {
    pub fn set(&mut self, channel: &ChannelName, position: StreamPosition) {
        self.advance(channel, position.offset, &position.epoch);
    }

    /// Moves `channel` to `offset` in `epoch`; the epoch's text is copied only when it changes,
    /// so a write allocates nothing here.
    fn advance(&mut self, channel: &ChannelName, offset: u64, epoch: &str) {
        match self.0.iter_mut().find(|(c, _)| c == channel) {
            Some((_, at)) => {
                at.offset = offset;
                if at.epoch != epoch {
                    at.epoch = epoch.to_owned();
                }
            }
            None => {
                self.0.reserve_exact(1);
                self.0.push((
                    channel.clone(),
                    StreamPosition {
                        offset,
                        epoch: epoch.to_owned(),
                    },
                ));
            }
        }
    }

    pub fn remove(&mut self, channel: &ChannelName) {
        self.0.retain(|(c, _)| c != channel);
    }

    /// Notes what an item written to the client changes.
    fn written(&mut self, item: &Outbound) {
        match item {
            Outbound::Publication(p) => self.advance(&p.channel, p.offset, &p.epoch),
            Outbound::Resubscribed(s) => self.set(&s.channel, s.position.clone()),
            Outbound::Unsubscribed(channel) => self.remove(channel),
            Outbound::Event(_) | Outbound::Heartbeat => {}
        }
    }

    /// The record, as socket.io-client keeps it.
    pub fn record(&self) -> String {
        protocol::socketio_recovery_record(self.0.iter().map(|(c, p)| (c, p)))
    }
}

/// A binary packet waiting for its attachments.
pub struct PendingBinary {
    pub packet: packet::Packet,
    pub attachments: Vec<Vec<u8>>,
}

struct State {
    queue: VecDeque<Outgoing>,
    transport: Transport,
    /// A `GET` is waiting (long-polling): a second one is a protocol error.
    polling: bool,
    /// A `POST` is being handled: the client sends one at a time.
    posting: bool,
    awaiting_pong: bool,
    ending: Option<Ending>,
    sockets: Vec<NamespaceSocket>,
    pending_binary: Option<Box<PendingBinary>>,
    /// A WebSocket is upgrading the connection.
    upgrade_claimed: bool,
    /// A namespace was connected at some point (the connect timeout is over).
    connected_once: bool,
    /// The namespaces a conformance server's client connected to.
    #[cfg(feature = "socketio-conformance")]
    pub test_namespaces: Vec<usize>,
    /// When the credentials of the earliest-expiring namespace run out.
    expires: Option<Instant>,
    /// When the next ping is due.
    next_ping: Instant,
    /// When the pong to the last ping is due, until the check.
    answer_by: Option<Instant>,
    /// When a namespace must have been connected by (`limits.handshake_timeout`).
    connect_by: Option<Instant>,
    /// The deadline the node's clock will come back at; an entry for any other is stale.
    scheduled: Option<Instant>,
    /// Something changed that a waiter must look at (a namespace connected, an upgrade began);
    /// taken by the next wait, like a `Notify`'s permit.
    signalled: bool,
    /// The waiters' wakers, by [`Waiter`].
    wakers: [Option<Waker>; 2],
    /// The command rate limit, and how many events in a row it refused.
    commands: CommandBucket,
    refused_in_a_row: u32,
    /// How the handshake authenticated, for each namespace's connect; `None` once nothing more
    /// can be connected (a connection keeps no token it will not use).
    credentials: Option<Box<Credentials>>,
}

impl State {
    /// A new connection's state, with its first ping due at `next_ping` and, for a connection
    /// that must connect a namespace, its connect due by `connect_by`.
    fn new(
        transport: Transport,
        credentials: Credentials,
        commands: CommandBucket,
        next_ping: Instant,
        connect_by: Option<Instant>,
    ) -> State {
        let mut state = State {
            queue: VecDeque::new(),
            transport,
            polling: false,
            posting: false,
            awaiting_pong: false,
            ending: None,
            sockets: Vec::new(),
            pending_binary: None,
            upgrade_claimed: false,
            connected_once: false,
            #[cfg(feature = "socketio-conformance")]
            test_namespaces: Vec::new(),
            expires: None,
            next_ping,
            answer_by: None,
            connect_by,
            scheduled: None,
            signalled: false,
            wakers: [None, None],
            commands,
            refused_in_a_row: 0,
            credentials: Some(Box::new(credentials)),
        };
        state.scheduled = Some(state.next_deadline());
        state
    }

    /// The earliest of the connection's deadlines.
    fn next_deadline(&self) -> Instant {
        [self.answer_by, self.expires, self.connect_by]
            .into_iter()
            .flatten()
            .fold(self.next_ping, Instant::min)
    }
}

/// What [`Connection::drain`] took.
#[derive(Default)]
pub struct Drained {
    /// The connection's own packets, first.
    pub packets: Vec<Outgoing>,
    /// What the hub queued, with the namespace's place in the configuration.
    pub items: Vec<(usize, Outbound)>,
    /// After the items, each namespace's recovery record where publications were written.
    pub records: Vec<Outgoing>,
    /// The connection's last packets (a close's farewell), written after the items.
    pub last: Vec<Outgoing>,
    /// Set when the connection is over: write what was drained, then close.
    pub ending: Option<Ending>,
}

/// The drained items, as an outbox hands them over: each tagged with its namespace's place.
struct Tagged<'a>(&'a mut Vec<(usize, Outbound)>, usize);

impl Extend<Outbound> for Tagged<'_> {
    fn extend<I: IntoIterator<Item = Outbound>>(&mut self, items: I) {
        let index = self.1;
        self.0.extend(items.into_iter().map(|item| (index, item)));
    }
}

impl Drained {
    /// Counts the publications among the items as written: `herald_messages_out_total`, and
    /// the publish-to-write latency of the oldest.
    pub fn count_written(&self, metrics: &Metrics) {
        let mut publications = 0u64;
        let mut oldest = None;
        for (_, item) in &self.items {
            if let Outbound::Publication(p) = item {
                publications += 1;
                oldest = oldest.or(Some(p.received_at));
            }
        }
        metrics.messages_out.inc_by(publications);
        if let Some(oldest) = oldest {
            metrics.observe_write(oldest.elapsed());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
            && self.items.is_empty()
            && self.records.is_empty()
            && self.last.is_empty()
    }
}

pub(crate) struct Connection {
    pub sid: Arc<str>,
    /// What answers the client's messages.
    #[cfg_attr(not(feature = "socketio-conformance"), expect(dead_code))]
    pub application: Application,
    /// The connection's place on the node, and the node's state.
    pub app: ConnectionSlot,
    state: Mutex<State>,
}

impl Connection {
    /// A new connection on `transport`, with its heartbeat running; registered when it is on
    /// long-polling, which later requests (polls, posts, the upgrade) find by `sid`. A connection
    /// that starts on WebSocket is held by its task alone: no request ever names it.
    pub fn start(
        app: ConnectionSlot,
        credentials: Credentials,
        transport: Transport,
        application: Application,
    ) -> Arc<Connection> {
        let sid: Arc<str> = new_sid().into();
        let limits = &app.config.limits;
        let commands = CommandBucket::new(limits.commands_per_minute, limits.commands_burst);
        let now = Instant::now();
        #[cfg(feature = "socketio-conformance")]
        let connects = application != Application::EngineEcho;
        #[cfg(not(feature = "socketio-conformance"))]
        let connects = true;
        let state = State::new(
            transport,
            credentials,
            commands,
            now + app.config.socketio.ping_interval,
            connects.then(|| now + limits.handshake_timeout),
        );
        let first = state.next_deadline();
        let connection = Arc::new(Connection {
            sid,
            application,
            app,
            state: Mutex::new(state),
        });
        if transport == Transport::Polling {
            connection.app.socketio.insert(&connection);
        }
        connection.app.socketio.clock.schedule(&connection, first);
        connection.app.metrics.connections_accepted.inc();
        connection
    }

    /// The transport, even once the connection has ended.
    pub fn last_transport(&self) -> Transport {
        self.state.lock().transport
    }

    pub fn transport(&self) -> Option<Transport> {
        let state = self.state.lock();
        state.ending.is_none().then_some(state.transport)
    }

    /// Queues a packet of the connection's own; past [`MAX_QUEUED_PACKETS`] the connection is
    /// closed as a slow consumer.
    pub fn send(&self, packet: Outgoing) {
        let mut state = self.state.lock();
        if state.ending.is_some() {
            return;
        }
        if state.queue.len() >= MAX_QUEUED_PACKETS {
            drop(state);
            self.app
                .hub
                .stats()
                .slow_consumers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.close(Ending::Closed(Disconnect::new(
                herald_core::CloseCode::SlowConsumer,
                "outgoing queue full: the client is not reading fast enough",
            )));
            return;
        }
        state.queue.push_back(packet);
        let wakers = std::mem::take(&mut state.wakers);
        drop(state);
        wake_all(wakers);
    }

    /// Ends the connection: the first reason wins. A close the server decided is announced on
    /// every namespace first (`herald:disconnect` with the code, and a Socket.IO disconnect when
    /// the client should not reconnect); the writer sends what is queued, then closes. The
    /// namespaces leave the hub and the registry forgets the connection now.
    pub fn close(&self, ending: Ending) {
        let (sockets, linger, wakers) = {
            let mut guard = self.state.lock();
            let state = &mut *guard;
            if state.ending.is_some() {
                return;
            }
            let linger =
                matches!(ending, Ending::ClientClosed) && state.transport == Transport::Polling;
            if let Ending::Closed(disconnect) = &ending {
                let namespaces = &self.app.config.socketio.namespaces;
                let body = protocol::socketio_disconnect(disconnect);
                for socket in &state.sockets {
                    let namespace = &namespaces[socket.index];
                    let farewell = packet::event(namespace, "herald:disconnect", &body);
                    state.queue.push_back(farewell);
                    if !disconnect.reconnect {
                        let bye = packet::text_packet(Kind::Disconnect, namespace, None, "");
                        state.queue.push_back(bye);
                    }
                }
            }
            tracing::debug!(sid = %self.sid, reason = ending.label(), "socket.io connection ends");
            self.app.metrics.disconnect(ending.label());
            state.ending = Some(ending);
            state.pending_binary = None;
            let wakers = std::mem::take(&mut state.wakers);
            (std::mem::take(&mut state.sockets), linger, wakers)
        };
        drop(sockets);
        wake_all(wakers);
        if linger {
            // A long-poll sent with the client's `close` still finds the connection, and is
            // answered `noop`; the registry forgets it then, or after `ping_timeout`.
            let registry_entry = self.sid.clone();
            let app = self.app.app().clone();
            let linger_for = self.app.config.socketio.ping_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(linger_for).await;
                app.socketio.remove(&registry_entry);
            });
        } else {
            self.app.socketio.remove(&self.sid);
        }
    }

    /// A long-poll answered the close: the registry forgets the connection.
    pub fn forget(&self) {
        self.app.socketio.remove(&self.sid);
    }

    pub fn ending(&self) -> Option<Ending> {
        self.state.lock().ending.clone()
    }

    /// Takes what is ready to write. An outbox that asks for a close ends the connection.
    pub fn drain(&self) -> Drained {
        let mut drained = Drained::default();
        let mut close = None;
        {
            // Lock order: the connection's state, then an outbox (as the clock's tick does).
            let mut state = self.state.lock();
            // Taken whole: an idle connection keeps no room for packets between writes.
            drained.packets = Vec::from(std::mem::take(&mut state.queue));
            let namespaces = &self.app.config.socketio.namespaces;
            for socket in &mut state.sockets {
                let start = drained.items.len();
                let mut taken = Tagged(&mut drained.items, socket.index);
                close = close.or(socket.session.outbox().take(&mut taken));
                let mut moved = false;
                for (_, item) in &drained.items[start..] {
                    socket.positions.written(item);
                    moved |= matches!(item, Outbound::Publication(_));
                }
                if moved {
                    let record =
                        serde_json::to_string(&socket.positions.record()).unwrap_or_default();
                    drained.records.push(packet::event(
                        &namespaces[socket.index],
                        "herald:recovery",
                        &record,
                    ));
                }
            }
        }
        if let Some(disconnect) = close {
            self.close(Ending::Closed(disconnect));
        }
        let mut state = self.state.lock();
        drained.ending = state.ending.clone();
        if drained.ending.is_some() {
            drained.last = Vec::from(std::mem::take(&mut state.queue));
        }
        drained
    }

    /// Waits until there may be something to drain: a packet queued, a close, a change a waiter
    /// must see ([`Connection::signal`]), or an item in a namespace's outbox.
    pub async fn wait(&self, waiter: Waiter) {
        std::future::poll_fn(|cx| self.poll_wait(cx, waiter)).await
    }

    fn poll_wait(&self, cx: &mut Context<'_>, waiter: Waiter) -> Poll<()> {
        // Lock order: the connection's state, then an outbox (as a drain takes them).
        let mut state = self.state.lock();
        if std::mem::take(&mut state.signalled)
            || !state.queue.is_empty()
            || state.ending.is_some()
            || state
                .sockets
                .iter()
                .any(|s| s.session.outbox().poll_ready(cx).is_ready())
        {
            return Poll::Ready(());
        }
        match &mut state.wakers[waiter as usize] {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Wakes whoever waits on the connection, or the next to wait, for a change it must see
    /// that is not a packet or the close (which a wait finds by itself).
    fn signal(&self) {
        let wakers = {
            let mut state = self.state.lock();
            state.signalled = true;
            std::mem::take(&mut state.wakers)
        };
        wake_all(wakers);
    }

    /// Takes one event from the command rate limit: `Ok(false)` when refused (answer
    /// `rate_limited`), `Err` when the client kept sending past the burst after refusals.
    pub fn take_command(&self) -> Result<bool, ()> {
        let mut state = self.state.lock();
        let state = &mut *state;
        if state.commands.try_take() {
            state.refused_in_a_row = 0;
            return Ok(true);
        }
        state.refused_in_a_row += 1;
        if state.refused_in_a_row > self.app.config.limits.commands_burst {
            return Err(());
        }
        Ok(false)
    }

    /// A long-polling `GET` begins; false when one is already waiting.
    pub fn begin_poll(&self) -> bool {
        let mut state = self.state.lock();
        !std::mem::replace(&mut state.polling, true)
    }

    pub fn end_poll(&self) {
        self.state.lock().polling = false;
    }

    /// A `POST` begins; false when one is already being handled.
    pub fn begin_post(&self) -> bool {
        let mut state = self.state.lock();
        !std::mem::replace(&mut state.posting, true)
    }

    pub fn end_post(&self) {
        self.state.lock().posting = false;
    }

    /// A WebSocket with this connection's `sid` asks to upgrade it: true for the first, while the
    /// connection is on long-polling.
    pub fn claim_upgrade(&self) -> bool {
        let mut state = self.state.lock();
        let free = state.ending.is_none()
            && state.transport == Transport::Polling
            && !state.upgrade_claimed;
        state.upgrade_claimed |= free;
        free
    }

    /// Whether a WebSocket is upgrading the connection and has not finished.
    pub fn upgrading(&self) -> bool {
        let state = self.state.lock();
        state.upgrade_claimed && state.transport != Transport::WebSocket
    }

    /// The upgrading WebSocket failed before `upgrade`: the connection stays on long-polling,
    /// and may try again.
    pub fn release_upgrade(&self) {
        let mut state = self.state.lock();
        state.upgrade_claimed = false;
        if state.transport == Transport::Upgrading {
            state.transport = Transport::Polling;
        }
    }

    /// The probe succeeded: the pending `GET` is answered with `noop`.
    pub fn begin_upgrade(&self) -> bool {
        let mut state = self.state.lock();
        if state.transport != Transport::Polling || state.ending.is_some() {
            return false;
        }
        state.transport = Transport::Upgrading;
        drop(state);
        self.signal();
        true
    }

    /// The client sent `upgrade`: from now on the WebSocket writes, and `GET`s are refused.
    pub fn complete_upgrade(&self) {
        self.state.lock().transport = Transport::WebSocket;
    }

    /// The client answered a ping.
    pub fn pong(&self) {
        self.state.lock().awaiting_pong = false;
    }

    /// Adds a connected namespace, whose credentials expire at `expires` (if they do).
    pub fn add_socket(self: &Arc<Self>, socket: NamespaceSocket, expires: Option<Instant>) {
        let mut state = self.state.lock();
        state.connected_once = true;
        if state.ending.is_some() {
            drop(state);
            return drop(socket);
        }
        // Most connections have one namespace: no room kept for more.
        state.sockets.reserve_exact(1);
        state.sockets.push(socket);
        state.expires = match (state.expires, expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let next = state.next_deadline();
        let sooner = state.scheduled.is_none_or(|at| next < at);
        if sooner {
            state.scheduled = Some(next);
        }
        drop(state);
        if sooner {
            self.app.socketio.clock.schedule(self, next);
        }
        self.signal();
    }

    /// How the handshake authenticated, for a namespace's connect.
    pub fn credentials(&self) -> Credentials {
        let state = self.state.lock();
        state
            .credentials
            .as_deref()
            .cloned()
            .unwrap_or(Credentials::None(None))
    }

    /// Nothing more will be connected: the handshake's credentials are not kept.
    pub fn forget_credentials(&self) {
        self.state.lock().credentials = None;
    }

    /// The namespace's session, if the client connected to it.
    pub fn socket(&self, index: usize) -> Option<Arc<Session>> {
        self.state
            .lock()
            .sockets
            .iter()
            .find(|s| s.index == index)
            .map(|s| s.session.clone())
    }

    /// A namespace subscribed `channel`: its recovery record starts it at `position`.
    pub fn set_position(&self, index: usize, channel: &ChannelName, position: StreamPosition) {
        let mut state = self.state.lock();
        if let Some(socket) = state.sockets.iter_mut().find(|s| s.index == index) {
            socket.positions.set(channel, position);
        }
    }

    /// A namespace unsubscribed `channel`: its recovery record forgets it.
    pub fn remove_position(&self, index: usize, channel: &ChannelName) {
        let mut state = self.state.lock();
        if let Some(socket) = state.sockets.iter_mut().find(|s| s.index == index) {
            socket.positions.remove(channel);
        }
    }

    /// Removes a namespace (the client disconnected from it); its session leaves the hub.
    pub fn remove_socket(&self, index: usize) -> Option<Arc<Session>> {
        let mut state = self.state.lock();
        let at = state.sockets.iter().position(|s| s.index == index)?;
        Some(state.sockets.remove(at).session)
    }

    /// The conformance server's namespaces, under the connection's lock.
    #[cfg(feature = "socketio-conformance")]
    pub fn with_test_namespaces<T>(&self, f: impl FnOnce(&mut Vec<usize>) -> T) -> T {
        let mut state = self.state.lock();
        state.connected_once = true;
        f(&mut state.test_namespaces)
    }

    pub fn take_pending_binary(&self) -> Option<Box<PendingBinary>> {
        self.state.lock().pending_binary.take()
    }

    pub fn set_pending_binary(&self, pending: Box<PendingBinary>) {
        self.state.lock().pending_binary = Some(pending);
    }

    /// What the node's clock does when this connection's deadline at `at` comes: closes it
    /// when its pong is overdue, its credentials expired, it connected no namespace in time, or
    /// (long-polling) its outbox overflowed with no poll to drain it; pings it when a ping is
    /// due; then says when to come back. An entry for a deadline since replaced does nothing.
    pub(crate) fn tick(self: &Arc<Self>, at: Instant) {
        let now = Instant::now();
        let mut state = self.state.lock();
        if state.ending.is_some() || state.scheduled != Some(at) {
            return;
        }
        let overflowed = state
            .sockets
            .iter()
            .any(|s| s.session.outbox().closing() == Some(herald_core::CloseCode::SlowConsumer));
        let ending = if state.answer_by.is_some_and(|by| by <= now) && state.awaiting_pong {
            Some(Ending::PingTimeout)
        } else if state.expires.is_some_and(|by| by <= now) {
            Some(Ending::Closed(Disconnect::new(
                herald_core::CloseCode::TokenExpired,
                "token expired",
            )))
        } else if state.connect_by.is_some_and(|by| by <= now) && !state.connected_once {
            Some(Ending::Closed(Disconnect::new(
                herald_core::CloseCode::Unauthorized,
                "no Socket.IO connect within the handshake timeout",
            )))
        } else if overflowed {
            Some(Ending::Closed(Disconnect::new(
                herald_core::CloseCode::SlowConsumer,
                "outgoing queue full: the client is not reading fast enough",
            )))
        } else {
            None
        };
        if let Some(ending) = ending {
            drop(state);
            return self.close(ending);
        }
        if state.answer_by.is_some_and(|by| by <= now) {
            state.answer_by = None;
        }
        if state.connect_by.is_some_and(|by| by <= now) {
            state.connect_by = None;
        }
        let mut pinged = false;
        if state.next_ping <= now {
            let socketio = &self.app.config.socketio;
            // Counted from when the ping was due, so that a late tick does not push the
            // deadlines back; but a client always gets at least half its timeout to answer.
            let due = state.next_ping;
            let answer_by = (due + socketio.ping_timeout).max(now + socketio.ping_timeout / 2);
            state.awaiting_pong = true;
            state.answer_by = Some(answer_by);
            state.next_ping = (due + socketio.ping_interval).max(now);
            state.queue.push_back(Outgoing::text(packet::PING));
            pinged = true;
        }
        let next = state.next_deadline();
        state.scheduled = Some(next);
        let wakers = if pinged {
            std::mem::take(&mut state.wakers)
        } else {
            Default::default()
        };
        drop(state);
        wake_all(wakers);
        self.app.socketio.clock.schedule(self, next);
    }
}

/// Wakes the waiters whose wakers were taken, after the connection's lock is released.
fn wake_all(wakers: [Option<Waker>; 2]) {
    for waker in wakers.into_iter().flatten() {
        waker.wake();
    }
}

/// The node's open long-polling Engine.IO connections by `sid` (upgraded ones included), for
/// polls, posts and upgrades. It holds each connection until it closes: between two polls,
/// nothing else does.
#[derive(Default)]
pub struct Registry {
    connections: Mutex<HashMap<Arc<str>, Arc<Connection>>>,
    /// Every connection's deadlines.
    pub(crate) clock: Arc<Clock>,
}

impl Registry {
    fn insert(&self, connection: &Arc<Connection>) {
        self.connections
            .lock()
            .insert(connection.sid.clone(), connection.clone());
    }

    fn remove(&self, sid: &str) {
        self.connections.lock().remove(sid);
    }

    /// The open connection `sid` names.
    pub(crate) fn get(&self, sid: &str) -> Option<Arc<Connection>> {
        self.connections.lock().get(sid).cloned()
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.connections.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.lock().is_empty()
    }
}

/// A fresh, unguessable `sid`: 16 random bytes, URL-safe base64.
pub(crate) fn new_sid() -> String {
    use base64::Engine as _;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    /// An idle connection keeps one of these: kept within jemalloc's 320-byte class (with the
    /// `Arc`'s two counts), see "Where an idle connection's memory goes" in docs/benchmarks.md.
    #[test]
    fn a_connection_fits_its_size_class() {
        let size = std::mem::size_of::<super::Connection>() + 16;
        assert!(size <= 320, "Connection with its Arc counts: {size} bytes");
    }
}
