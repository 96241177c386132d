//! The fan-out: a publication or channel event that reached this node goes to each of its
//! subscribers here, and then to the channel's watches (`watch.rs`), once the shard's lock is
//! released.
//!
//! It holds the channel's shard read lock while it pushes an `Arc` of the publication into each
//! subscriber's outbox; it never awaits and never serialises (the transport encodes a
//! publication once, on first use, and shares the bytes). An idle subscriber's socket is written
//! directly from here through its outbox; [`FanOutPace`] decides when a large channel's
//! publications go through the queues instead, so that under load they coalesce per socket.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::channel::ChannelName;
use crate::presence::ChannelEvent;
use crate::publication::{Publication, StreamPosition};

use super::outbox::Outbound;
use super::session::{SessionInner, WeakSession};
use super::{Hub, Subscribed, Watched};

/// Channels with up to this many subscribers are always written directly to idle sockets
/// (personal channels, rooms). A larger channel is written directly only while its passes do not
/// overlap, with an eighth to spare ([`FanOutPace`]); past that its publications go through the
/// connections' queues, where those that arrive during a pass reach each socket together, in one
/// write. Direct writes cost one `send` per subscriber inside the pass, so without the queues the
/// pass itself would be the ceiling (about 10,000 sends per publication).
pub const DIRECT_WRITE_MAX_SUBSCRIBERS: usize = 1024;

/// How busy a large channel's fan-out keeps the node: when its last pass started, and how long
/// its last direct pass took.
#[derive(Clone, Copy)]
pub(super) struct FanOutPace {
    last_start: Instant,
    direct_pass: Duration,
}

impl FanOutPace {
    /// Direct writes while the time between passes is at least a direct pass and an eighth
    /// (always for a channel's first pass): passes that would overlap go through the queues.
    fn allows_direct(pace: Option<FanOutPace>, now: Instant) -> bool {
        pace.is_none_or(|pace| now.duration_since(pace.last_start) >= pace.direct_pass * 9 / 8)
    }

    /// The pace after a pass that began at `started`, written directly or not. The estimate of a
    /// direct pass falls slowly (by an eighth a pass): a pass that was short because most sockets
    /// were busy must not reopen direct writes at once.
    fn after(previous: Option<FanOutPace>, started: Instant, direct: bool) -> FanOutPace {
        let previous = previous.map_or(Duration::ZERO, |pace| pace.direct_pass);
        FanOutPace {
            last_start: started,
            direct_pass: if direct {
                started.elapsed().max(previous * 7 / 8)
            } else {
                previous
            },
        }
    }
}

/// Subscribers whose queues a fan-out loads into the cache before pushing to them (see
/// [`Outbox::warm`]).
const FAN_OUT_CHUNK: usize = 16;

// === impl Hub ===

impl Hub {
    /// Queues `item` for `session` (or writes it to its idle socket) as the fan-out would: a
    /// queue that overflows closes the connection and is counted as a slow consumer. Returns
    /// whether the item was taken (false too when the session is gone).
    pub fn deliver_to(&self, session: &WeakSession, item: Outbound) -> bool {
        session
            .upgrade()
            .is_some_and(|inner| inner.deliver(item, true, &self.shared.stats))
    }

    /// Fans `publication` out to this node's subscribers of its channel.
    pub(super) fn fan_out(&self, publication: Arc<Publication>) {
        let stats = &self.shared.stats;
        stats.publications.fetch_add(1, Ordering::Relaxed);
        self.fan_out_items(&publication.channel, |_| {
            Some(Outbound::Publication(publication.clone()))
        });
        self.shared.watchers.offer(&publication.channel, || {
            Watched::Publication(publication.clone())
        });
    }

    /// Fans an ephemeral event out to this node's subscribers of its channel, except the
    /// connection it is about.
    pub(super) fn fan_out_event(&self, event: Arc<ChannelEvent>) {
        self.shared.stats.events.fetch_add(1, Ordering::Relaxed);
        self.fan_out_items(&event.channel, |session| {
            (*session.client != *event.client).then(|| Outbound::Event(event.clone()))
        });
        let channel = event.channel.clone();
        self.shared
            .watchers
            .offer(&channel, || Watched::Event(event));
    }

    /// Tells this node's subscribers of `channel` that the engine lost part of its stream: each
    /// gets an unsolicited `subscribed` with `recovered: false` at `position`.
    pub(super) fn fan_out_reset(&self, channel: &ChannelName, position: StreamPosition) {
        let notice = Arc::new(Subscribed {
            channel: channel.clone(),
            position,
            recovered: Some(false),
        });
        self.fan_out_items(channel, |_| Some(Outbound::Resubscribed(notice.clone())));
        self.shared
            .watchers
            .offer(channel, || Watched::Reset(notice.position.clone()));
    }

    /// Queues `item_for(subscriber)` for each of this node's subscribers of `channel`.
    fn fan_out_items(
        &self,
        channel: &ChannelName,
        item_for: impl Fn(&SessionInner) -> Option<Outbound>,
    ) {
        let stats = &self.shared.stats;
        let shard = self.shared.index.shard(channel).read();
        if let Some(subscribers) = shard.get(channel) {
            let large = subscribers.len() > DIRECT_WRITE_MAX_SUBSCRIBERS;
            let started = Instant::now();
            let pace = large
                .then(|| self.shared.pace.lock().get(channel).copied())
                .flatten();
            let direct = FanOutPace::allows_direct(pace, started);
            let mut queued = 0;
            let mut chunk: [Option<&SessionInner>; FAN_OUT_CHUNK] = [None; FAN_OUT_CHUNK];
            let mut subscribers = subscribers.iter();
            loop {
                let mut filled = 0;
                for (slot, session) in chunk.iter_mut().zip(subscribers.by_ref()) {
                    // Start loading this subscriber's queue into the cache now, so that the
                    // misses of a whole chunk overlap instead of stalling one push at a time.
                    session.outbox.warm();
                    *slot = Some(session);
                    filled += 1;
                }
                for session in chunk[..filled].iter().flatten() {
                    if let Some(item) = item_for(session) {
                        queued += u64::from(session.deliver(item, direct, stats));
                    }
                }
                if filled < FAN_OUT_CHUNK {
                    break;
                }
            }
            stats.deliveries.fetch_add(queued, Ordering::Relaxed);
            if large {
                let pace = FanOutPace::after(pace, started, direct);
                self.shared.pace.lock().insert(channel.clone(), pace);
            }
        }
    }

    /// Forgets the pace of a channel that has no subscriber left here.
    pub(super) fn forget_pace(&self, channel: &ChannelName) {
        self.shared.pace.lock().remove(channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large channel writes directly while its passes do not overlap (with an eighth to
    /// spare), and the estimate of a direct pass falls slowly after short passes.
    #[tokio::test(start_paused = true)]
    async fn direct_writes_only_while_passes_leave_room() {
        let start = Instant::now();
        assert!(FanOutPace::allows_direct(None, start), "a first pass");
        // A direct pass of 8 ms.
        tokio::time::advance(Duration::from_millis(8)).await;
        let pace = FanOutPace::after(None, start, true);
        assert_eq!(pace.direct_pass, Duration::from_millis(8));
        // The next pass may write directly 9 ms after the last one started, not before.
        assert!(!FanOutPace::allows_direct(
            Some(pace),
            start + Duration::from_millis(8)
        ));
        assert!(FanOutPace::allows_direct(
            Some(pace),
            start + Duration::from_millis(9)
        ));
        // A queued pass leaves the estimate as it was.
        let queued = FanOutPace::after(Some(pace), Instant::now(), false);
        assert_eq!(queued.direct_pass, Duration::from_millis(8));
        // A direct pass that took no time lowers it by an eighth only.
        let quick = FanOutPace::after(Some(pace), Instant::now(), true);
        assert_eq!(quick.direct_pass, Duration::from_millis(7));
    }
}
