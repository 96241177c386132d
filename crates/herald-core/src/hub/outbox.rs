//! A connection's outgoing queue, bounded in bytes.
//!
//! The hub pushes into it from the fan-out (synchronously, never waiting); the connection's task
//! takes everything queued at once and writes it in one go. When a push would take the queue past
//! its byte limit, the queue is emptied and closed with 4010 (slow consumer): the connection is
//! dropped instead of the server growing memory or slowing the others. An idle connection's queue
//! holds no allocation.
//!
//! The fan-out touches one outbox per subscriber, and with thousands of subscribers each one is
//! cold in the CPU cache, so a push is kept to what it must touch: one lock word, the slot beside
//! it (the first two items wait inline; only a third goes to the heap), and, if the connection's
//! task is parked on this queue, its waker, which is kept under the same lock (a separate
//! `tokio::sync::Notify` cost several more atomic operations on other cache lines per delivery).
//! A wake-up is never lost: the task registers its waker under the lock it checks the queue
//! under, and a push takes the waker under that lock.
//!
//! **Direct writes.** Most of the time a connection has nothing queued and its socket can take
//! more bytes. A transport may then lend the outbox a [`DirectWrite`]: while the connection is
//! idle, a push writes the item straight to the socket from the fan-out, with no queue, no
//! wake-up and no poll of the connection's task. Who may write to the socket is decided under the
//! outbox's lock, so bytes never interleave: it is the [`Owner`] of the moment, either the
//! connection's task or the fan-out (which writes under the lock), and every change of hands is a
//! method of the outbox's state. Queuing an item always hands the socket to the task, and the
//! fan-out gets it only from the task and only with nothing queued ([`Outbox::take_or_release`]),
//! so a queued item is never overtaken. The first push that cannot be written whole hands the
//! socket back to the task (and wakes it), so a client that stops reading costs one failed write,
//! then queues as before.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Mutex, MutexGuard};

use crate::channel::ChannelName;
use crate::error::{CloseCode, Disconnect};
use crate::presence::ChannelEvent;
use crate::publication::{Publication, StreamPosition};

use super::Subscribed;

/// Queue slots kept allocated between takes (16 bytes each).
const KEPT_CAPACITY: usize = 8;

/// How a [`DirectWrite::try_write`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The whole item is in the socket's buffer.
    All,
    /// Part of it was written; the transport kept the rest and its task must write it next.
    Part,
    /// Nothing was written (the socket's buffer is full, or it failed): queue the item.
    Nothing,
}

/// A transport's socket, written from the fan-out while its connection is idle (see the module
/// documentation). Called under the outbox's lock: it must not block or wait.
pub trait DirectWrite: Send + Sync {
    /// Writes `item` without blocking, as much of it as the socket takes.
    fn try_write(&self, item: &Outbound) -> Written;
}

/// Something the hub wants written to a connection. The transport decides the bytes.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A publication on a subscribed channel.
    Publication(Arc<Publication>),
    /// An ephemeral event on a subscribed channel (join, leave, typing).
    Event(Arc<ChannelEvent>),
    /// The server API unsubscribed this connection from a channel.
    Unsubscribed(ChannelName),
    /// The engine lost part of a subscribed channel's stream for this node: the client is told
    /// where the stream is now, with `recovered: false`, and deliveries continue after it.
    Resubscribed(Arc<Subscribed>),
    /// The transport's keep-alive (a WebSocket ping): carries nothing, is not a delivery.
    Heartbeat,
}

impl Outbound {
    fn queued_size(&self) -> usize {
        match self {
            Outbound::Publication(p) => p.queued_size(),
            Outbound::Event(e) => e.queued_size(),
            Outbound::Unsubscribed(c) => c.as_str().len() + 48,
            Outbound::Resubscribed(s) => s.channel.as_str().len() + s.position.epoch.len() + 80,
            Outbound::Heartbeat => 16,
        }
    }
}

#[derive(Default)]
struct State {
    /// The oldest queued item, kept inline: at ordinary rates a take finds just one.
    first: Option<Outbound>,
    /// The next one, also inline: when publications coalesce during a busy fan-out, the second
    /// for a socket goes into a cache line the push has just locked rather than into the deque's
    /// buffer, a separate allocation that is rarely in cache.
    second: Option<Outbound>,
    /// Items after `second`, in order.
    rest: VecDeque<Outbound>,
    bytes: usize,
    /// Boxed: rare, and inline it would cost every connection 24 bytes.
    close: Option<Box<Disconnect>>,
    /// The connection's task, when it is parked waiting on this queue.
    waker: Option<Waker>,
    /// Recovered history joined with live publications (boxed: it exists only while a channel
    /// is being recovered, or has just been).
    joins: Option<Box<Joins>>,
    /// The transport's socket, when it accepts direct writes.
    writer: Option<Arc<dyn DirectWrite>>,
    /// Who may write to the socket now; changed only by [`State::hand_to_task`] and
    /// [`State::hand_to_fan_out`].
    owner: Owner,
    /// Heartbeats in a row with nothing heard from the client (see [`Outbox::silent_beats`]).
    silent_beats: u8,
}

/// Who may write to a connection's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Owner {
    /// The connection's task: something is queued, part of a frame waits to be written, the task
    /// is answering its client, or no socket was lent. A push is queued.
    #[default]
    Task,
    /// The fan-out: the connection is idle (nothing queued, nothing half-written, no close asked
    /// for) and its socket is lent; a push writes straight to it.
    FanOut,
}

/// How a channel's recovered history and its live publications are joined without a gap or a
/// duplicate: while the history is read the live publications are held; once it is in, live
/// publications it already covered are dropped. An engine may pass on a live publication after
/// a history read that already returned it (Redis delivers pub/sub on a connection of its own,
/// which a read on another connection can overtake), so a recovered position stays a floor
/// until the live stream passes it.
#[derive(Default)]
struct Joins {
    /// The channel being subscribed to, whose live publications are held.
    recovering: Option<Recovering>,
    /// Channels recovered up to a position the live stream has not passed yet.
    floors: Vec<Floor>,
}

/// A recovered channel's position: its live publications up to it are duplicates.
struct Floor {
    channel: ChannelName,
    position: StreamPosition,
}

impl Joins {
    fn is_empty(&self) -> bool {
        self.recovering.is_none() && self.floors.is_empty()
    }

    /// Whether `p` is a live publication that recovered history already returned. A live
    /// publication past the floor (or of another epoch) ends the floor.
    fn covered(&mut self, p: &Publication) -> bool {
        let Some(at) = self.floors.iter().position(|f| f.channel == p.channel) else {
            return false;
        };
        let floor = &self.floors[at].position;
        if *p.epoch == *floor.epoch && p.offset <= floor.offset {
            return true;
        }
        self.floors.swap_remove(at);
        false
    }
}

/// Live publications of a channel held while the hub reads the channel's history.
struct Recovering {
    channel: ChannelName,
    held: Vec<Arc<Publication>>,
    /// The server API unsubscribed the connection from the channel meanwhile: its notice is
    /// queued, and nothing of the channel may follow it.
    cancelled: bool,
}

impl State {
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Queues `item` after everything already queued. A queued item is the task's to write, and
    /// nothing may overtake it: the socket is the task's until the queue is empty again.
    fn enqueue(&mut self, item: Outbound) {
        self.hand_to_task();
        if self.first.is_none() {
            self.first = Some(item);
        } else if self.second.is_none() && self.rest.is_empty() {
            self.second = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    /// Moves everything queued into `batch`, keeping a small allocation for the next items.
    fn drain_into(&mut self, batch: &mut impl Extend<Outbound>) {
        batch.extend(self.first.take());
        batch.extend(self.second.take());
        batch.extend(self.rest.drain(..));
        if self.rest.capacity() > KEPT_CAPACITY {
            self.rest = VecDeque::new();
        }
        self.bytes = 0;
    }

    fn wake(&mut self) -> Option<Waker> {
        self.waker.take()
    }

    /// The connection's task writes from now on; pushes are queued.
    fn hand_to_task(&mut self) {
        self.owner = Owner::Task;
    }

    /// The fan-out writes from now on, if it may: only with a socket lent, nothing queued and
    /// no close asked for. Returns whether it does.
    fn hand_to_fan_out(&mut self) -> bool {
        if self.writer.is_some() && self.is_empty() && self.close.is_none() {
            self.owner = Owner::FanOut;
            true
        } else {
            self.hand_to_task();
            false
        }
    }

    /// The socket, if the fan-out may write to it now.
    fn fan_out_writer(&self) -> Option<&Arc<dyn DirectWrite>> {
        match self.owner {
            Owner::FanOut => self.writer.as_ref(),
            Owner::Task => None,
        }
    }

    /// The socket was lent and the task holds it: it has something to write (the rest of a
    /// frame a direct write could not finish, at least).
    fn task_holds_socket(&self) -> bool {
        self.owner == Owner::Task && self.writer.is_some()
    }
}

/// Takes the task's waker under the lock and wakes it after releasing the lock, so that the task
/// never wakes into a lock still held; later pushes before the task runs find no waker and cost
/// nothing more.
fn wake_after(mut state: MutexGuard<'_, State>) {
    let waker = state.wake();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// The bounded queue plus the wake-up for the connection's task.
pub struct Outbox {
    state: Mutex<State>,
    limit_bytes: usize,
}

/// What happened to a push.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued for the connection's task.
    Queued,
    /// Written straight to the socket (the connection was idle).
    Written,
    /// The queue overflowed and the connection is now closing as a slow consumer.
    Overflowed,
    /// The connection is already closing; the item was dropped.
    Closed,
    /// A live publication that the channel's recovered history already delivered; dropped.
    Covered,
}

impl Outbox {
    /// An empty outbox holding at most `limit_bytes` (plus one item).
    pub fn new(limit_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            limit_bytes,
        }
    }

    /// Queues `item`, or closes the connection as a slow consumer if it does not fit.
    #[cfg(test)]
    fn push(&self, item: Outbound) -> Pushed {
        self.push_or_write(item, true)
    }

    /// Queues `item` (or, with `direct` and an idle socket, writes it straight to the socket), or
    /// closes the connection as a slow consumer if it does not fit. With `direct` false the item
    /// is queued even if the socket is idle
    /// (see [`DIRECT_WRITE_MAX_SUBSCRIBERS`](super::DIRECT_WRITE_MAX_SUBSCRIBERS)).
    pub(crate) fn push_or_write(&self, item: Outbound, direct: bool) -> Pushed {
        let size = item.queued_size();
        let mut state = self.state.lock();
        if state.close.is_some() {
            return Pushed::Closed;
        }
        // An item always fits into an empty queue, so one message as large as the frame limit
        // never closes a connection that is keeping up.
        if state.bytes > 0 && state.bytes + size > self.limit_bytes {
            state.first = None;
            state.second = None;
            state.rest = VecDeque::new();
            state.joins = None;
            state.bytes = 0;
            state.close = Some(Box::new(Disconnect::new(
                CloseCode::SlowConsumer,
                "outgoing queue full: the client is not reading fast enough",
            )));
            // The close is the task's to send.
            state.hand_to_task();
            wake_after(state);
            return Pushed::Overflowed;
        }
        if let Some(joins) = &mut state.joins {
            match &item {
                Outbound::Publication(p) => {
                    if let Some(recovering) =
                        joins.recovering.as_mut().filter(|r| r.channel == p.channel)
                    {
                        recovering.held.push(p.clone());
                        state.bytes += size;
                        return Pushed::Queued;
                    }
                    if joins.covered(p) {
                        return Pushed::Covered;
                    }
                }
                Outbound::Unsubscribed(channel) => {
                    if let Some(recovering) =
                        joins.recovering.as_mut().filter(|r| r.channel == *channel)
                    {
                        recovering.cancelled = true;
                    }
                    joins.floors.retain(|f| f.channel != *channel);
                }
                _ => {}
            }
            if joins.is_empty() {
                state.joins = None;
            }
        }
        let written = match state.fan_out_writer() {
            Some(writer) if direct => writer.try_write(&item),
            _ => Written::Nothing,
        };
        match written {
            Written::All => return Pushed::Written,
            Written::Part => {
                // The task writes the rest, and what follows.
                state.hand_to_task();
                wake_after(state);
                return Pushed::Written;
            }
            Written::Nothing => {}
        }
        state.bytes += size;
        state.enqueue(item);
        wake_after(state);
        Pushed::Queued
    }

    /// Notes that the client sent something (a pong, a command): it is alive.
    pub fn note_client_activity(&self) {
        self.state.lock().silent_beats = 0;
    }

    /// Counts a heartbeat and returns how many in a row found nothing heard from the client
    /// since [`Outbox::note_client_activity`] (1 for the first heartbeat after it). Only a
    /// heartbeat that finds the connection idle (its socket lent for direct writes) counts:
    /// while its task is writing it is not reading either, so the client's answers wait unread
    /// and its silence says nothing. (A client that stops reading is caught by the write timeout
    /// and the queue's bound instead.)
    pub fn silent_beats(&self) -> u8 {
        let mut state = self.state.lock();
        if state.owner == Owner::FanOut {
            state.silent_beats = state.silent_beats.saturating_add(1);
        }
        state.silent_beats
    }

    /// Starts holding `channel`'s live publications (call before subscribing the connection to
    /// it). Returns false if another channel is being recovered on this connection.
    pub(crate) fn begin_recovery(&self, channel: &ChannelName) -> bool {
        let mut state = self.state.lock();
        let joins = state.joins.get_or_insert_with(Box::default);
        if joins.recovering.is_some() {
            return false;
        }
        joins.recovering = Some(Recovering {
            channel: channel.clone(),
            held: Vec::new(),
            cancelled: false,
        });
        true
    }

    /// Ends the recovery: queues `missed` (history read after the hold began, oldest first), then
    /// the held live publications that came after `position` (the stream's position when history
    /// was read), in order. Missed publications are shared with history and not counted against
    /// the queue's byte limit, so that replaying a long history cannot close a healthy client.
    pub(crate) fn finish_recovery(
        &self,
        missed: Vec<Arc<Publication>>,
        position: &StreamPosition,
        live_may_trail: bool,
    ) {
        let mut state = self.state.lock();
        let Some(joins) = state.joins.as_mut() else {
            return;
        };
        let Some(recovering) = joins.recovering.take() else {
            return;
        };
        // Where the engine's live stream may trail its reads, what arrives live up to the
        // position history was read at was in the history, until the live stream passes it
        // (unless a held publication shows it has passed already, or the stream is empty).
        joins.floors.retain(|f| f.channel != recovering.channel);
        let passed = recovering
            .held
            .iter()
            .any(|p| *p.epoch != *position.epoch || p.offset > position.offset);
        if live_may_trail && position.offset > 0 && !recovering.cancelled && !passed {
            joins.floors.push(Floor {
                channel: recovering.channel.clone(),
                position: position.clone(),
            });
        }
        if joins.is_empty() {
            state.joins = None;
        }
        if state.close.is_some() {
            return;
        }
        let already_read =
            |p: &Publication| *p.epoch == *position.epoch && p.offset <= position.offset;
        let (read, after): (Vec<_>, Vec<_>) = recovering
            .held
            .into_iter()
            .partition(|p| recovering.cancelled || already_read(p));
        // Held publications that history returned too are dropped, and so are their bytes.
        let dropped: usize = read.iter().map(|p| p.queued_size()).sum();
        state.bytes = state.bytes.saturating_sub(dropped);
        let missed = if recovering.cancelled {
            Vec::new()
        } else {
            missed
        };
        for p in missed.into_iter().chain(after) {
            state.enqueue(Outbound::Publication(p));
        }
        if !state.is_empty() {
            wake_after(state);
        }
    }

    /// Drops a recovery that failed, with what it held.
    pub(crate) fn abort_recovery(&self) {
        let mut state = self.state.lock();
        let Some(joins) = state.joins.as_mut() else {
            return;
        };
        if let Some(recovering) = joins.recovering.take() {
            let held: usize = recovering.held.iter().map(|p| p.queued_size()).sum();
            if joins.is_empty() {
                state.joins = None;
            }
            state.bytes = state.bytes.saturating_sub(held);
        }
    }

    /// Lends the outbox the connection's socket for direct writes (`None` takes it back, as a
    /// closing connection must before its socket goes). Direct writes start at the next
    /// [`Outbox::take_or_release`] that finds the queue empty.
    pub fn set_writer(&self, writer: Option<Arc<dyn DirectWrite>>) {
        let mut state = self.state.lock();
        state.hand_to_task();
        state.writer = writer;
    }

    /// The connection's task takes the socket back to write something of its own (an answer, a
    /// ping): from now until its next [`Outbox::take_or_release`], pushes are queued.
    pub fn claim(&self) {
        self.state.lock().hand_to_task();
    }

    /// Like [`Outbox::take`], but when nothing is queued and no close was asked for, hands the
    /// socket to the fan-out for direct writes (if a writer was lent), under the same lock.
    pub fn take_or_release(&self, batch: &mut Vec<Outbound>) -> Option<Disconnect> {
        let mut state = self.state.lock();
        if state.hand_to_fan_out() || (state.is_empty() && state.close.is_none()) {
            return None;
        }
        state.drain_into(batch);
        state.close.as_deref().cloned()
    }

    /// Asks the connection to close. The first reason wins; what was queued is still written.
    pub fn close(&self, disconnect: Disconnect) {
        let mut state = self.state.lock();
        if state.close.is_none() {
            state.close = Some(Box::new(disconnect));
        }
        state.hand_to_task();
        wake_after(state);
    }

    /// The close code, if a close was asked for.
    pub fn closing(&self) -> Option<CloseCode> {
        self.state.lock().close.as_ref().map(|d| d.code)
    }

    /// Moves everything queued into `batch` (in order) and returns the close, if one was asked for.
    /// `batch` is any collection, so that a transport can take straight into its own.
    ///
    /// The queue keeps a small allocation between takes, so that a steady stream does not
    /// allocate and free once per delivery; one that grew past that during a burst is released.
    pub fn take(&self, batch: &mut impl Extend<Outbound>) -> Option<Disconnect> {
        let mut state = self.state.lock();
        state.drain_into(batch);
        state.close.as_deref().cloned()
    }

    /// Waits until the connection's task has something to do: an item queued, a close asked for,
    /// or the socket handed back by a direct write that could not finish.
    pub async fn wait(&self) {
        poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// [`Outbox::wait`] as a poll, for a transport that waits on several things in one future:
    /// ready when the connection's task has something to do, otherwise the waker is kept (one
    /// waiter per outbox).
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_wait(cx, |state| {
            !state.is_empty() || state.close.is_some() || state.task_holds_socket()
        })
    }

    /// Waits until a close was asked for (used while a write is in progress, when queued items
    /// are expected and are not a reason to wake).
    pub async fn wait_closing(&self) {
        poll_fn(|cx| self.poll_wait(cx, |state| state.close.is_some())).await
    }

    fn poll_wait(&self, cx: &mut Context<'_>, ready: impl Fn(&State) -> bool) -> Poll<()> {
        let mut state = self.state.lock();
        if ready(&state) {
            return Poll::Ready(());
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Reads the queue's lock word, so that its cache line is on its way before the push that
    /// needs it. A fan-out warms a chunk of subscribers, then pushes to them: the loads overlap,
    /// where each push's locked instruction would otherwise wait for its own miss in turn.
    pub(crate) fn warm(&self) {
        std::hint::black_box(self.state.is_locked());
    }

    /// Bytes currently queued.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn notice(name: &str) -> Outbound {
        Outbound::Unsubscribed(ChannelName::parse(name).expect("channel"))
    }

    #[test]
    fn overflow_empties_the_queue_and_closes_with_4010() {
        let outbox = Outbox::new(200);
        assert_eq!(outbox.push(notice("a:1")), Pushed::Queued);
        assert_eq!(outbox.push(notice("a:2")), Pushed::Queued);
        assert_eq!(outbox.push(notice("a:3")), Pushed::Queued);
        assert_eq!(outbox.push(notice("a:4")), Pushed::Overflowed);
        assert_eq!(outbox.push(notice("a:5")), Pushed::Closed);
        let mut batch = Vec::new();
        let close = outbox.take(&mut batch).expect("closing");
        assert_eq!(close.code, CloseCode::SlowConsumer);
        assert!(batch.is_empty());
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[test]
    fn an_item_larger_than_the_bound_fits_into_an_empty_queue() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.push(notice("a:1")), Pushed::Queued);
        assert_eq!(outbox.push(notice("a:2")), Pushed::Overflowed);
    }

    #[test]
    fn take_returns_items_in_order() {
        let outbox = Outbox::new(10_000);
        for i in 0..5 {
            outbox.push(notice(&format!("a:{i}")));
        }
        let mut batch = Vec::new();
        assert!(outbox.take(&mut batch).is_none());
        assert_eq!(outbox.queued_bytes(), 0);
        let names: Vec<String> = batch
            .iter()
            .map(|o| match o {
                Outbound::Unsubscribed(c) => c.to_string(),
                Outbound::Publication(_)
                | Outbound::Event(_)
                | Outbound::Resubscribed(_)
                | Outbound::Heartbeat => unreachable!(),
            })
            .collect();
        assert_eq!(names, ["a:0", "a:1", "a:2", "a:3", "a:4"]);
    }

    #[tokio::test]
    async fn a_push_wakes_a_parked_waiter_and_a_queued_item_needs_no_wake() {
        let outbox = Arc::new(Outbox::new(10_000));
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.push(notice("a:1"));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        // Already queued: ready at once.
        tokio::time::timeout(Duration::from_secs(5), outbox.wait())
            .await
            .expect("ready");
    }

    #[tokio::test]
    async fn wait_closing_ignores_pushes_and_wakes_on_close() {
        let outbox = Arc::new(Outbox::new(10_000));
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.wait_closing().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.push(notice("a:1"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        outbox.close(Disconnect::new(CloseCode::SlowConsumer, "test"));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }

    /// A socket that takes `room` more items whole, then one in part, then nothing.
    struct Socket {
        room: Mutex<usize>,
        written: Mutex<Vec<String>>,
    }

    impl DirectWrite for Socket {
        fn try_write(&self, item: &Outbound) -> Written {
            let mut room = self.room.lock();
            let Outbound::Unsubscribed(channel) = item else {
                return Written::Nothing;
            };
            match *room {
                0 => Written::Nothing,
                1 => {
                    *room = 0;
                    self.written.lock().push(format!("{channel} (part)"));
                    Written::Part
                }
                _ => {
                    *room -= 1;
                    self.written.lock().push(channel.to_string());
                    Written::All
                }
            }
        }
    }

    #[tokio::test]
    async fn direct_writes_hand_the_socket_back_and_never_overtake_a_queued_item() {
        let outbox = Outbox::new(10_000);
        let socket = Arc::new(Socket {
            room: Mutex::new(3),
            written: Mutex::default(),
        });
        outbox.set_writer(Some(socket.clone()));
        // Lent, but not idle until the task finds the queue empty.
        assert_eq!(outbox.push(notice("a:0")), Pushed::Queued);
        let mut batch = Vec::new();
        assert!(outbox.take_or_release(&mut batch).is_none());
        assert_eq!(batch.len(), 1);
        batch.clear();
        assert!(outbox.take_or_release(&mut batch).is_none() && batch.is_empty());
        // Idle: written straight through, and the task has nothing to do.
        assert_eq!(outbox.push(notice("a:1")), Pushed::Written);
        assert_eq!(outbox.push(notice("a:2")), Pushed::Written);
        let idle = tokio::time::timeout(Duration::from_millis(20), outbox.wait()).await;
        assert!(idle.is_err(), "a direct write wakes no one");
        // Written in part: the socket is the task's again, and it is woken to finish.
        assert_eq!(outbox.push(notice("a:3")), Pushed::Written);
        tokio::time::timeout(Duration::from_secs(5), outbox.wait())
            .await
            .expect("handed back");
        // Until the task releases it, later items queue, in order.
        *socket.room.lock() = 10;
        assert_eq!(outbox.push(notice("a:4")), Pushed::Queued);
        // A push that may not write directly queues too, and takes the socket back.
        assert!(outbox.take_or_release(&mut batch).is_none());
        batch.clear();
        assert!(outbox.take_or_release(&mut batch).is_none());
        assert_eq!(outbox.push_or_write(notice("a:5"), false), Pushed::Queued);
        assert_eq!(outbox.push(notice("a:6")), Pushed::Queued);
        // A claim by the task stops direct writes too.
        outbox.take(&mut batch);
        assert!(outbox.take_or_release(&mut batch).is_none());
        outbox.claim();
        assert_eq!(outbox.push(notice("a:7")), Pushed::Queued);
        assert_eq!(
            *socket.written.lock(),
            ["a:1", "a:2", "a:3 (part)"].map(String::from)
        );
    }

    fn publication(channel: &str, offset: u64) -> Arc<Publication> {
        let data = serde_json::value::RawValue::from_string("1".into()).expect("json");
        let channel = ChannelName::parse(channel).expect("channel");
        Arc::new(Publication::new(
            channel,
            None,
            data,
            (offset, "e".into()),
            None,
        ))
    }

    #[test]
    fn a_recovery_joins_history_and_held_live_publications_without_gap_or_duplicate() {
        let outbox = Outbox::new(1 << 20);
        let recovering = ChannelName::parse("a:1").expect("channel");
        assert!(outbox.begin_recovery(&recovering));
        assert!(
            !outbox.begin_recovery(&recovering),
            "one recovery at a time"
        );
        // Live while history is read: 3 was also read from history, 4 came after the read.
        outbox.push(Outbound::Publication(publication("a:1", 3)));
        outbox.push(Outbound::Publication(publication("b:1", 9)));
        outbox.push(Outbound::Publication(publication("a:1", 4)));
        let position = StreamPosition {
            offset: 3,
            epoch: "e".into(),
        };
        outbox.finish_recovery(
            vec![publication("a:1", 2), publication("a:1", 3)],
            &position,
            false,
        );
        let mut batch = Vec::new();
        outbox.take(&mut batch);
        let got: Vec<(String, u64)> = batch
            .iter()
            .map(|o| match o {
                Outbound::Publication(p) => (p.channel.to_string(), p.offset),
                Outbound::Unsubscribed(_)
                | Outbound::Resubscribed(_)
                | Outbound::Event(_)
                | Outbound::Heartbeat => unreachable!(),
            })
            .collect();
        let expected = [("b:1", 9), ("a:1", 2), ("a:1", 3), ("a:1", 4)];
        assert_eq!(got, expected.map(|(c, o)| (c.to_string(), o)));
    }

    #[test]
    fn live_publications_that_recovered_history_covered_are_dropped_when_they_arrive_late() {
        let outbox = Outbox::new(1 << 20);
        let channel = ChannelName::parse("a:1").expect("channel");
        let offsets = |outbox: &Outbox| -> Vec<u64> {
            let mut batch = Vec::new();
            outbox.take(&mut batch);
            batch
                .iter()
                .filter_map(|o| match o {
                    Outbound::Publication(p) => Some(p.offset),
                    _ => None,
                })
                .collect()
        };
        // History was read up to 3 before the live stream brought 2 and 3.
        assert!(outbox.begin_recovery(&channel));
        let position = StreamPosition {
            offset: 3,
            epoch: "e".into(),
        };
        outbox.finish_recovery(
            vec![publication("a:1", 2), publication("a:1", 3)],
            &position,
            true,
        );
        assert_eq!(offsets(&outbox), [2, 3]);
        for late in [2, 3] {
            let pushed = outbox.push(Outbound::Publication(publication("a:1", late)));
            assert_eq!(pushed, Pushed::Covered, "offset {late}");
        }
        assert_eq!(
            outbox.push(Outbound::Publication(publication("b:1", 1))),
            Pushed::Queued,
            "other channels pass"
        );
        outbox.push(Outbound::Publication(publication("a:1", 4)));
        assert_eq!(offsets(&outbox), [1, 4]);
        // Passed: the floor is gone, and with it the box.
        assert!(outbox.state.lock().joins.is_none());

        // A held publication past the position shows the live stream has passed it: no floor.
        assert!(outbox.begin_recovery(&channel));
        outbox.push(Outbound::Publication(publication("a:1", 5)));
        let position = StreamPosition {
            offset: 4,
            epoch: "e".into(),
        };
        outbox.finish_recovery(Vec::new(), &position, true);
        assert!(outbox.state.lock().joins.is_none());
        assert_eq!(offsets(&outbox), [5]);

        // An engine whose live stream never trails its reads keeps nothing after a recovery.
        assert!(outbox.begin_recovery(&channel));
        outbox.finish_recovery(Vec::new(), &position, false);
        assert!(outbox.state.lock().joins.is_none());
    }

    /// Held publications that history returned too are dropped with their bytes: the queue is
    /// empty again, and an item of any size still fits into it.
    #[test]
    fn a_recovery_leaves_no_bytes_behind() {
        let one = publication("a:1", 1).queued_size();
        let outbox = Outbox::new(one);
        let channel = ChannelName::parse("a:1").expect("channel");
        assert!(outbox.begin_recovery(&channel));
        assert_eq!(
            outbox.push(Outbound::Publication(publication("a:1", 1))),
            Pushed::Queued
        );
        let position = StreamPosition {
            offset: 1,
            epoch: "e".into(),
        };
        outbox.finish_recovery(vec![publication("a:1", 1)], &position, false);
        let mut batch = Vec::new();
        outbox.take(&mut batch);
        assert_eq!(batch.len(), 1, "history's copy only");
        assert_eq!(outbox.queued_bytes(), 0);
        for offset in 2..4 {
            assert_eq!(
                outbox.push(Outbound::Publication(publication("a:1", offset))),
                Pushed::Queued
            );
            outbox.take(&mut batch);
        }
    }

    /// An overflow while the fan-out holds the socket hands it back with the close, so that
    /// the task sends the close instead of finding nothing to do.
    #[test]
    fn an_overflow_hands_the_socket_back_with_the_close() {
        let one = publication("a:1", 1).queued_size();
        let outbox = Outbox::new(one);
        let socket = Arc::new(Socket {
            room: Mutex::new(0),
            written: Mutex::default(),
        });
        outbox.set_writer(Some(socket));
        let mut batch = Vec::new();
        assert!(outbox.take_or_release(&mut batch).is_none(), "idle: lent");
        // Held while a channel is recovered, so the queue itself stays empty.
        let channel = ChannelName::parse("a:1").expect("channel");
        assert!(outbox.begin_recovery(&channel));
        assert_eq!(
            outbox.push(Outbound::Publication(publication("a:1", 1))),
            Pushed::Queued
        );
        assert_eq!(
            outbox.push(Outbound::Publication(publication("a:1", 2))),
            Pushed::Overflowed
        );
        let close = outbox.take_or_release(&mut batch);
        assert_eq!(close.map(|d| d.code), Some(CloseCode::SlowConsumer));
    }

    /// The server API unsubscribing the connection from the channel being recovered: its notice
    /// is the last thing of the channel the client gets.
    #[test]
    fn an_unsubscribe_during_recovery_ends_the_channel_there() {
        let outbox = Outbox::new(1 << 20);
        let channel = ChannelName::parse("a:1").expect("channel");
        assert!(outbox.begin_recovery(&channel));
        outbox.push(Outbound::Publication(publication("a:1", 2)));
        outbox.push(notice("a:1"));
        let position = StreamPosition {
            offset: 1,
            epoch: "e".into(),
        };
        outbox.finish_recovery(vec![publication("a:1", 1)], &position, false);
        let mut batch = Vec::new();
        outbox.take(&mut batch);
        assert!(
            matches!(&batch[..], [Outbound::Unsubscribed(c)] if *c == channel),
            "{batch:?}"
        );
    }
}
