//! The admin page's sign-in sessions: a random id (the cookie's value) and a CSRF token per
//! session, kept in a bounded map on this node with an idle expiry.
//!
//! Sessions live in the node's memory only: a restart, or another node behind the same load
//! balancer, asks the operator to sign in again. The map holds at most [`MAX_SESSIONS`]; a
//! sign-in beyond that first forgets expired sessions, then the one idle the longest. Nothing
//! here logs an id or a token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use parking_lot::Mutex;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

/// Sessions a node keeps at once.
pub const MAX_SESSIONS: usize = 256;

/// How long a session lasts without a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

/// A session as the handlers see it.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// The token every state-changing request must carry in `X-Herald-CSRF`.
    pub csrf: String,
}

struct Entry {
    csrf: String,
    last_used: Instant,
}

/// The sign-in sessions of this node.
pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
    /// The idle expiry in milliseconds ([`IDLE_TIMEOUT`] unless changed).
    idle_ms: AtomicU64,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            map: Mutex::default(),
            idle_ms: AtomicU64::new(IDLE_TIMEOUT.as_millis() as u64),
        }
    }
}

/// 32 random bytes, base64url without padding.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    /// How long a session lasts without a request.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_ms.load(Ordering::Relaxed))
    }

    /// Changes the idle expiry of every session, those open included (for an embedding service
    /// with its own policy, and for tests).
    pub fn set_idle_timeout(&self, idle: Duration) {
        self.idle_ms
            .store(idle.as_millis() as u64, Ordering::Relaxed);
    }

    /// Opens a session: its id (for the cookie) and its CSRF token.
    pub fn open(&self) -> (String, SessionView) {
        let id = random_token();
        let csrf = random_token();
        let now = Instant::now();
        let idle = self.idle_timeout();
        let mut map = self.map.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, e| now.duration_since(e.last_used) < idle);
        }
        if map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Entry {
                csrf: csrf.clone(),
                last_used: now,
            },
        );
        (id, SessionView { csrf })
    }

    /// The session `id` names, if it exists and has not expired; its idle time starts again.
    pub fn touch(&self, id: &str) -> Option<SessionView> {
        let now = Instant::now();
        let idle = self.idle_timeout();
        let mut map = self.map.lock();
        let entry = map.get_mut(id)?;
        if now.duration_since(entry.last_used) >= idle {
            map.remove(id);
            return None;
        }
        entry.last_used = now;
        Some(SessionView {
            csrf: entry.csrf.clone(),
        })
    }

    /// Whether the session `id` is still open, without starting its idle time again (a long
    /// stream asks this; only the operator's requests keep a session alive).
    pub fn is_open(&self, id: &str) -> bool {
        let idle = self.idle_timeout();
        self.map
            .lock()
            .get(id)
            .is_some_and(|e| e.last_used.elapsed() < idle)
    }

    /// Ends the session `id` (sign-out).
    pub fn close(&self, id: &str) {
        self.map.lock().remove(id);
    }

    /// How many sessions are held now, expired ones not yet forgotten included.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SessionView {
    /// Whether `presented` is this session's CSRF token, compared in constant time.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_close_on_sign_out() {
        let sessions = Sessions::default();
        let (id, view) = sessions.open();
        assert_eq!(id.len(), 43);
        assert!(sessions
            .touch(&id)
            .is_some_and(|v| v.csrf_matches(&view.csrf)));
        assert!(!view.csrf_matches("forged"));
        assert!(!view.csrf_matches(""));
        sessions.set_idle_timeout(Duration::ZERO);
        assert!(sessions.touch(&id).is_none(), "expired");
        assert!(sessions.is_empty(), "an expired session is forgotten");
        sessions.set_idle_timeout(IDLE_TIMEOUT);
        let (id, _) = sessions.open();
        sessions.close(&id);
        assert!(sessions.touch(&id).is_none());
    }

    #[test]
    fn the_map_is_bounded_and_forgets_the_longest_idle() {
        let sessions = Sessions::default();
        let (first, _) = sessions.open();
        let (second, _) = sessions.open();
        for _ in 2..MAX_SESSIONS {
            sessions.open();
        }
        assert!(sessions.touch(&first).is_some());
        sessions.open();
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.touch(&first).is_some(), "used recently");
        assert!(
            sessions.touch(&second).is_none(),
            "idle the longest: forgotten"
        );
    }
}
