//! A connection's outgoing queue, bounded in bytes.
//!
//! The hub pushes into it from the fan-out (synchronously, never waiting); the connection's task
//! takes everything queued at once and writes it in one go. When a push would take the queue past
//! its byte limit, the queue is emptied and closed with 4010 (slow consumer): the connection is
//! dropped instead of the server growing memory or slowing the others. An idle connection's queue
//! holds no allocation.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::channel::ChannelName;
use crate::error::{CloseCode, Disconnect};
use crate::publication::Publication;

/// Queue slots kept allocated between takes (16 bytes each).
const KEPT_CAPACITY: usize = 8;

/// Something the hub wants written to a connection. The transport decides the bytes.
#[derive(Debug, Clone)]
pub enum Outbound {
    Publication(Arc<Publication>),
    /// The server API unsubscribed this connection from a channel.
    Unsubscribed(ChannelName),
}

impl Outbound {
    fn queued_size(&self) -> usize {
        match self {
            Outbound::Publication(p) => p.queued_size(),
            Outbound::Unsubscribed(c) => c.as_str().len() + 48,
        }
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Outbound>,
    bytes: usize,
    close: Option<Disconnect>,
}

/// The bounded queue plus the wake-up for the connection's task.
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    limit_bytes: usize,
}

/// What happened to a push.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue overflowed and the connection is now closing as a slow consumer.
    Overflowed,
    /// The connection is already closing; the item was dropped.
    Closed,
}

impl Outbox {
    pub fn new(limit_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            limit_bytes,
        }
    }

    /// Queues `item`, or closes the connection as a slow consumer if it does not fit.
    pub fn push(&self, item: Outbound) -> Pushed {
        let size = item.queued_size();
        let mut state = self.state.lock();
        if state.close.is_some() {
            return Pushed::Closed;
        }
        // An item always fits into an empty queue, so one message as large as the frame limit
        // never closes a connection that is keeping up.
        if state.bytes > 0 && state.bytes + size > self.limit_bytes {
            state.queue = VecDeque::new();
            state.bytes = 0;
            state.close = Some(Disconnect::new(
                CloseCode::SlowConsumer,
                "outgoing queue full: the client is not reading fast enough",
            ));
            drop(state);
            self.ready.notify_one();
            return Pushed::Overflowed;
        }
        state.queue.push_back(item);
        state.bytes += size;
        drop(state);
        // Every push notifies, not only the first into an empty queue: a notification that finds
        // the connection already notified costs one atomic operation, and waking only on the
        // empty-to-non-empty edge lost wake-ups under load (a stream to 50 sockets stalled until
        // the next heartbeat). `tests/slow_consumer.rs` streams to 1,000 sockets to keep it so.
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Asks the connection to close. The first reason wins; what was queued is still written.
    pub fn close(&self, disconnect: Disconnect) {
        let mut state = self.state.lock();
        if state.close.is_none() {
            state.close = Some(disconnect);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// The close code, if a close was asked for.
    pub fn closing(&self) -> Option<CloseCode> {
        self.state.lock().close.as_ref().map(|d| d.code)
    }

    /// Moves everything queued into `batch` (in order) and returns the close, if one was asked for.
    ///
    /// The queue keeps a small allocation between takes, so that a steady stream does not
    /// allocate and free once per delivery; one that grew past that during a burst is released.
    pub fn take(&self, batch: &mut Vec<Outbound>) -> Option<Disconnect> {
        let mut state = self.state.lock();
        batch.extend(state.queue.drain(..));
        if state.queue.capacity() > KEPT_CAPACITY {
            state.queue = VecDeque::new();
        }
        state.bytes = 0;
        state.close.clone()
    }

    /// Waits until something was pushed or a close was asked for since the last `take`.
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let names: Vec<String> = batch
            .iter()
            .map(|o| match o {
                Outbound::Unsubscribed(c) => c.to_string(),
                Outbound::Publication(_) => unreachable!(),
            })
            .collect();
        assert_eq!(names, ["a:0", "a:1", "a:2", "a:3", "a:4"]);
    }
}
