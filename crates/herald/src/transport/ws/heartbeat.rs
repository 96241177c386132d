//! Heartbeats and credential expiry for every WebSocket connection of the node, kept by one
//! sweep instead of a timer in each connection's task.
//!
//! An idle connection's task is the largest thing it keeps, and a tokio timer inside it would be
//! a large share of it (`docs/benchmarks.md` lists where an idle connection's bytes go). Here a
//! connection is one small entry: when its next ping is due and when its credentials run
//! out. A sweep every [`Heartbeats::tick`] (an eighth of the heartbeat interval, at most 250 ms)
//! takes the connections that are due, then, with the lock released:
//!
//! - closes those whose token (or hook-given expiry) has passed, with 4002;
//! - closes those that have sent nothing for more than two heartbeat intervals, with 4012;
//! - pings the others by pushing [`Outbound::Heartbeat`] into their outbox, which writes the
//!   two-byte ping frame straight to an idle socket without waking the connection's task.
//!
//! Each connection's pings keep the phase it connected with, so they stay spread over the
//! interval instead of leaving in one burst. Closing goes through the outbox like every other
//! close the hub asks for: the connection's task sends the `disconnect` and the close frame.
//! Expiry is honoured to within one tick.

use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_core::hub::{Outbound, WeakSession};
use herald_core::{CloseCode, Disconnect, Hub};
use parking_lot::Mutex;
use slab::Slab;
use tokio::time::Instant;

/// Heartbeats a client may leave unanswered: with nothing heard for more than this many
/// intervals, it is dropped.
const MAX_SILENT_BEATS: u8 = 2;

/// The node's heartbeat and expiry bookkeeping for WebSocket connections.
pub struct Heartbeats {
    interval: Duration,
    /// Pings are delivered through it, so that one that overflows a slow consumer's queue is
    /// handled and counted as a fan-out's would be.
    hub: Hub,
    /// What entry times count from.
    started: Instant,
    beats: Mutex<Slab<Beat>>,
}

/// One connection's entry.
struct Beat {
    session: WeakSession,
    /// Milliseconds after `started` when the next ping is due.
    next_ping: u64,
    /// Milliseconds after `started` when the credentials run out.
    expiry: u64,
}

/// A connection's place in [`Heartbeats`]; its task keeps it and gives it back when it ends.
pub struct BeatKey(usize);

/// What a sweep does to a connection that is due, once the lock is released.
enum Due {
    Expired(WeakSession),
    Ping(WeakSession),
}

impl Heartbeats {
    /// Bookkeeping for pings every `interval`, with its sweep running on the current runtime
    /// for as long as the returned value lives.
    pub fn start(interval: Duration, hub: Hub) -> Arc<Heartbeats> {
        let heartbeats = Arc::new(Heartbeats {
            interval,
            hub,
            started: Instant::now(),
            beats: Mutex::new(Slab::new()),
        });
        tokio::spawn(sweep_while_alive(Arc::downgrade(&heartbeats)));
        heartbeats
    }

    /// How often the sweep runs.
    fn tick(&self) -> Duration {
        (self.interval / 8).clamp(Duration::from_millis(10), Duration::from_millis(250))
    }

    /// Starts keeping time for a connection whose credentials run out at `expiry`; its first
    /// ping is due one interval from now.
    pub fn add(&self, session: WeakSession, expiry: Instant) -> BeatKey {
        let next_ping = self.interval_after(Instant::now());
        let expiry = self.millis(expiry);
        BeatKey(self.beats.lock().insert(Beat {
            session,
            next_ping,
            expiry,
        }))
    }

    /// Moves a connection's expiry (after a token refresh).
    pub fn set_expiry(&self, key: &BeatKey, expiry: Instant) {
        let expiry = self.millis(expiry);
        if let Some(beat) = self.beats.lock().get_mut(key.0) {
            beat.expiry = expiry;
        }
    }

    /// Stops keeping time for a connection.
    pub fn remove(&self, key: BeatKey) {
        self.beats.lock().try_remove(key.0);
    }

    /// Connections being kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.beats.lock().len()
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    /// One interval after `at`, in milliseconds after `started` (never overflowing).
    fn interval_after(&self, at: Instant) -> u64 {
        at.checked_add(self.interval)
            .map_or(u64::MAX, |next| self.millis(next))
    }

    /// Acts on every connection that is due at `now`. An entry whose connection is gone (its
    /// task ended without removing it, say by a panic) is dropped when its ping comes due.
    fn sweep(&self, now: Instant) {
        let now_ms = self.millis(now);
        let interval_ms = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        let mut due = Vec::new();
        self.beats.lock().retain(|_, beat| {
            if now_ms >= beat.expiry {
                // Closed once; the task removes the entry as it ends.
                beat.expiry = u64::MAX;
                beat.next_ping = u64::MAX;
                due.push(Due::Expired(beat.session.clone()));
            } else if now_ms >= beat.next_ping {
                if !beat.session.is_alive() {
                    return false;
                }
                // The next ping keeps the connection's phase, unless the sweep fell a whole
                // interval behind.
                let next = beat.next_ping.saturating_add(interval_ms);
                beat.next_ping = if next > now_ms {
                    next
                } else {
                    now_ms.saturating_add(interval_ms)
                };
                due.push(Due::Ping(beat.session.clone()));
            }
            true
        });
        for due in due {
            match due {
                Due::Expired(session) => {
                    session.outbox(|outbox| {
                        outbox.close(Disconnect::new(CloseCode::TokenExpired, "token expired"))
                    });
                }
                Due::Ping(session) => {
                    // Nothing heard since before the ping two intervals ago.
                    let silent = session.outbox(|outbox| {
                        let silent = outbox.silent_beats() > MAX_SILENT_BEATS;
                        if silent {
                            outbox.close(Disconnect::new(
                                CloseCode::IdleTimeout,
                                "no pong or frame for more than two heartbeat intervals",
                            ));
                        }
                        silent
                    });
                    if silent == Some(false) {
                        self.hub.deliver_to(&session, Outbound::Heartbeat);
                    }
                }
            }
        }
    }
}

/// Sweeps every tick until the bookkeeping is dropped.
async fn sweep_while_alive(heartbeats: Weak<Heartbeats>) {
    let Some(tick) = heartbeats.upgrade().map(|h| h.tick()) else {
        return;
    };
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match heartbeats.upgrade() {
            Some(heartbeats) => heartbeats.sweep(Instant::now()),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::hub::{DirectWrite, Written};
    use herald_core::{
        HubConfig, Identity, MemoryEngine, NamespacePolicy, Namespaces, Recovery, SubscribePolicy,
    };

    fn hub() -> Hub {
        Hub::new(
            HubConfig {
                namespaces: Namespaces::new([NamespacePolicy::new(
                    "chat",
                    SubscribePolicy::Public,
                )]),
                connections_per_user: 16,
                subscriptions_per_connection: 16,
                outbound_queue_bytes: 1 << 20,
                idempotency_window: Duration::from_secs(60),
            },
            Arc::new(MemoryEngine::new()),
        )
    }

    /// A socket that takes every write and counts the pings.
    #[derive(Default)]
    struct CountingSocket(std::sync::atomic::AtomicUsize);

    impl DirectWrite for CountingSocket {
        fn try_write(&self, item: &Outbound) -> Written {
            if matches!(item, Outbound::Heartbeat) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Written::All
        }
    }

    /// A connected session whose idle socket counts the pings written to it.
    async fn idle_session(hub: &Hub, user: &str) -> (herald_core::Session, Arc<CountingSocket>) {
        let (session, _) = hub
            .connect(Identity::new(user), Recovery::Live)
            .await
            .expect("connect");
        let socket = Arc::new(CountingSocket::default());
        session.outbox().set_writer(Some(socket.clone()));
        let mut batch = Vec::new();
        session.outbox().take(&mut batch);
        session.outbox().take_or_release(&mut batch);
        (session, socket)
    }

    fn pings(socket: &CountingSocket) -> usize {
        socket.0.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    #[tokio::test]
    async fn pings_when_due_drops_the_silent_and_closes_at_expiry() {
        let hub = hub();
        let interval = Duration::from_secs(10);
        let heartbeats = Heartbeats::start(interval, hub.clone());
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(3600);
        let (talker, talker_socket) = idle_session(&hub, "a").await;
        let (silent, silent_socket) = idle_session(&hub, "b").await;
        let (expiring, _) = idle_session(&hub, "c").await;
        let (busy, _) = idle_session(&hub, "d").await;
        let (gone, _) = idle_session(&hub, "e").await;
        let keys = [
            heartbeats.add(talker.downgrade(), far),
            heartbeats.add(silent.downgrade(), far),
            heartbeats.add(expiring.downgrade(), t0 + Duration::from_secs(15)),
            heartbeats.add(busy.downgrade(), far),
        ];
        // A connection whose task ended without removing its entry.
        let _leaked = heartbeats.add(gone.downgrade(), far);
        drop(gone);
        // The task holds this socket (it is writing), so it is not reading either.
        busy.outbox().claim();

        heartbeats.sweep(t0 + Duration::from_secs(5));
        assert_eq!(
            (pings(&talker_socket), pings(&silent_socket)),
            (0, 0),
            "nothing due yet"
        );
        assert_eq!(heartbeats.len(), 5);

        for beat in 1..=2u32 {
            talker.outbox().note_client_activity();
            heartbeats.sweep(t0 + interval * beat + Duration::from_millis(1));
            assert_eq!(pings(&talker_socket), 1, "beat {beat}");
            assert_eq!(silent.outbox().closing(), None, "beat {beat}");
            assert_eq!(pings(&silent_socket), 1, "beat {beat}");
            if beat == 1 {
                assert_eq!(expiring.outbox().closing(), None);
            } else {
                assert_eq!(expiring.outbox().closing(), Some(CloseCode::TokenExpired));
            }
        }
        assert_eq!(
            heartbeats.len(),
            4,
            "the gone connection's entry is dropped"
        );
        // Two pings unanswered: the third heartbeat finds more than two intervals of silence.
        // The busy connection's pings were queued behind its writes and its silence not
        // counted.
        talker.outbox().note_client_activity();
        heartbeats.sweep(t0 + interval * 3 + Duration::from_millis(1));
        assert_eq!(silent.outbox().closing(), Some(CloseCode::IdleTimeout));
        assert_eq!(talker.outbox().closing(), None);
        assert_eq!(busy.outbox().closing(), None);
        let mut queued = Vec::new();
        busy.outbox().take(&mut queued);
        assert_eq!(queued.len(), 3);

        // A refresh moves the expiry; removed entries are forgotten.
        let [talker_key, silent_key, expiring_key, busy_key] = keys;
        heartbeats.set_expiry(&talker_key, t0 + interval * 4);
        heartbeats.sweep(t0 + interval * 4 + Duration::from_millis(1));
        assert_eq!(talker.outbox().closing(), Some(CloseCode::TokenExpired));
        for key in [talker_key, silent_key, expiring_key, busy_key] {
            heartbeats.remove(key);
        }
        assert_eq!(heartbeats.len(), 0);
    }
}
