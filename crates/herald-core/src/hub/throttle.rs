//! The typing throttle: at most one `typing` event per user per channel per interval, on this
//! node. Extra ones are dropped without an error (a client's keystrokes are not worth one).
//!
//! An entry is only useful for one interval, so the map is pruned of stale entries whenever it
//! has doubled since the last pruning: memory stays proportional to the users typing right now,
//! and each admission costs O(1) amortised. Time is tokio's clock, so a test can pause it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use parking_lot::Mutex;

use crate::channel::ChannelName;

/// Entries kept before the first pruning.
const MIN_PRUNE_AT: usize = 1024;

pub(super) struct TypingThrottle {
    interval: Duration,
    state: Mutex<State>,
}

struct State {
    last: HashMap<(Arc<str>, ChannelName), Instant>,
    prune_at: usize,
}

impl TypingThrottle {
    pub(super) fn new(interval: Duration) -> Self {
        TypingThrottle {
            interval,
            state: Mutex::new(State {
                last: HashMap::new(),
                prune_at: MIN_PRUNE_AT,
            }),
        }
    }

    /// Whether `user` may send a typing event on `channel` at `now` (and if so, records it).
    pub(super) fn admit(&self, user: &Arc<str>, channel: &ChannelName, now: Instant) -> bool {
        let mut state = self.state.lock();
        let key = (user.clone(), channel.clone());
        if let Some(last) = state.last.get(&key) {
            if now.saturating_duration_since(*last) < self.interval {
                return false;
            }
        }
        state.last.insert(key, now);
        if state.last.len() >= state.prune_at {
            let interval = self.interval;
            state
                .last
                .retain(|_, last| now.saturating_duration_since(*last) < interval);
            state.prune_at = (state.last.len() * 2).max(MIN_PRUNE_AT);
        }
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_user_per_channel_per_interval_and_memory_stays_bounded() {
        let throttle = TypingThrottle::new(Duration::from_secs(1));
        let ch = |s: &str| ChannelName::parse(s).expect("channel");
        let alice: Arc<str> = "alice".into();
        let bob: Arc<str> = "bob".into();
        let t0 = Instant::now();
        assert!(throttle.admit(&alice, &ch("chat:1"), t0));
        assert!(!throttle.admit(&alice, &ch("chat:1"), t0 + Duration::from_millis(999)));
        assert!(throttle.admit(&alice, &ch("chat:2"), t0));
        assert!(throttle.admit(&bob, &ch("chat:1"), t0));
        assert!(throttle.admit(&alice, &ch("chat:1"), t0 + Duration::from_secs(1)));

        // 100,000 one-off typists over 100 s: stale entries are pruned as the map grows.
        for i in 0..100_000u32 {
            let user: Arc<str> = format!("u{i}").into();
            let now = t0 + Duration::from_millis(u64::from(i));
            assert!(throttle.admit(&user, &ch("chat:1"), now));
        }
        assert!(throttle.len() < 4 * MIN_PRUNE_AT, "{}", throttle.len());
    }
}
