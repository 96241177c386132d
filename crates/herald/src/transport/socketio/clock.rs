//! Every Socket.IO connection's timers in one queue per node: its next ping, the moment its
//! pong is due, its credentials' expiry, and (until it connects a namespace) the handshake
//! timeout.
//!
//! A task per connection with its own timer would be a large share of an idle connection (as it
//! would for `/ws`, whose heartbeats are one sweep per node). Here a connection is one entry in a
//! heap ordered by its next deadline; one task sleeps until the earliest, and hands each due
//! connection to [`Connection::tick`], which does what is due and says when to come back. The
//! deadlines are exact (Engine.IO's `pingTimeout` is a promise to the client), and the lock is
//! released before a connection is touched.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

use super::connection::Connection;

/// One connection's place in the queue.
struct Due {
    at: Instant,
    connection: Weak<Connection>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// The node's queue of Socket.IO connection deadlines.
#[derive(Default)]
pub struct Clock {
    queue: Mutex<BinaryHeap<Reverse<Due>>>,
    /// Wakes the task when a deadline earlier than the one it sleeps until is added.
    earlier: Arc<Notify>,
    started: OnceLock<()>,
}

impl Clock {
    /// Comes back to `connection` at `at`.
    pub fn schedule(self: &Arc<Self>, connection: &Arc<Connection>, at: Instant) {
        self.started
            .get_or_init(|| drop(tokio::spawn(run(Arc::downgrade(self)))));
        let mut queue = self.queue.lock();
        let earliest = queue.peek().map(|Reverse(due)| due.at);
        queue.push(Reverse(Due {
            at,
            connection: Arc::downgrade(connection),
        }));
        drop(queue);
        if earliest.is_none_or(|earliest| at < earliest) {
            self.earlier.notify_one();
        }
    }

    /// Takes every entry due by `now`.
    fn take_due(
        &self,
        now: Instant,
        due: &mut Vec<(Instant, Weak<Connection>)>,
    ) -> Option<Instant> {
        let mut queue = self.queue.lock();
        while let Some(Reverse(next)) = queue.peek() {
            if next.at > now {
                return Some(next.at);
            }
            if let Some(Reverse(next)) = queue.pop() {
                due.push((next.at, next.connection));
            }
        }
        None
    }
}

/// The queue's task: sleeps until the earliest deadline (or an earlier one is added), then ticks
/// every connection that is due. Ends with the node.
async fn run(clock: Weak<Clock>) {
    let mut due = Vec::new();
    loop {
        let Some(c) = clock.upgrade() else {
            return;
        };
        let next = c.take_due(Instant::now(), &mut due);
        let wake = c.earlier.clone();
        let earlier = wake.notified();
        drop(c);
        let ticked = !due.is_empty();
        for (at, connection) in due.drain(..) {
            if let Some(connection) = connection.upgrade() {
                connection.tick(at);
            }
        }
        if ticked {
            // The ticks scheduled what comes next; look again.
            continue;
        }
        // With nothing due, it looks again now and then, to end once the node is gone.
        let at = next.unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(1));
        tokio::select! {
            () = sleep_until(at) => {}
            () = earlier => {}
        }
    }
}
