//! The limits that protect the server from one client, and the node from too many: the
//! per-connection command rate, the per-IP connection rate, the node's cap on open connections,
//! the client address behind trusted proxies, and allowed origins.
//!
//! Each limit here answers yes or no; the transport turns a no into the documented error or close
//! code and counts it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::http::HeaderMap;
use ipnet::IpNet;
use parking_lot::Mutex;

/// A token bucket: `rate` commands per minute sustained, `burst` more at once.
///
/// Owned by one connection's task, so it needs no lock. Time is tokio's clock, so a test can
/// pause it.
#[derive(Debug)]
pub struct CommandBucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: tokio::time::Instant,
}

impl CommandBucket {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let capacity = f64::from(burst.max(1));
        CommandBucket {
            tokens: capacity,
            capacity,
            per_second: f64::from(per_minute) / 60.0,
            last: tokio::time::Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// New connections per IP address per second, in fixed one-second windows.
///
/// The map holds only the addresses seen in the current second, so its size is bounded by the
/// connection rate itself.
pub struct ConnectionRate {
    per_second: u32,
    window: Mutex<(u64, HashMap<IpAddr, u32>)>,
    started: Instant,
}

impl ConnectionRate {
    pub fn new(per_second: u32) -> Self {
        ConnectionRate {
            per_second,
            window: Mutex::new((0, HashMap::new())),
            started: Instant::now(),
        }
    }

    /// Counts a new connection from `ip`; false when it is over the limit.
    pub fn admit(&self, ip: IpAddr) -> bool {
        let second = self.started.elapsed().as_secs();
        let mut window = self.window.lock();
        if window.0 != second {
            *window = (second, HashMap::new());
        }
        let count = window.1.entry(ip).or_insert(0);
        *count += 1;
        *count <= self.per_second
    }
}

/// The node's open client connections, at most `limits.max_connections`: each holds one file
/// descriptor (and its memory) until it ends, so past the cap a new one is refused rather than
/// left to fail, or to starve the others, when the process runs out of descriptors.
///
/// Only `transport::ConnectionSlot` takes and gives back, so that every place taken is given back
/// exactly once.
pub struct ConnectionCap {
    max: usize,
    open: AtomicUsize,
}

impl ConnectionCap {
    pub fn new(max: usize) -> Self {
        ConnectionCap {
            max,
            open: AtomicUsize::new(0),
        }
    }

    /// Counts one more open connection; false, counting nothing, when the cap is reached.
    pub fn try_take(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok()
    }

    /// Counts one open connection less.
    pub fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// The connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most address
/// in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer_ip = peer.ip();
    if !is_trusted(&peer_ip) {
        return peer_ip;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer_ip)
}

/// Whether a request with these headers may proceed, given `allowed_origins`.
///
/// No `Origin` header: a non-browser client, allowed. Otherwise the origin must be listed, the
/// list must hold `*`, or the origin must be the server's own (same host as `Host`).
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return headers.get("origin").is_none();
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = headers.get("host").and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_connection_cap_admits_up_to_its_max_and_again_after_a_give_back() {
        let cap = ConnectionCap::new(2);
        assert!(cap.try_take());
        assert!(cap.try_take());
        assert!(!cap.try_take());
        assert_eq!(cap.open(), 2);
        cap.give_back();
        assert!(cap.try_take());
        assert!(!cap.try_take());
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_burst_then_the_sustained_rate() {
        let mut bucket = CommandBucket::new(60, 3);
        let taken = (0..5).filter(|_| bucket.try_take()).count();
        assert_eq!(taken, 3);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(!bucket.try_take(), "half a token so far");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(bucket.try_take(), "one token a second");
        assert!(!bucket.try_take());
    }

    #[test]
    fn connection_rate_is_per_ip() {
        let rate = ConnectionRate::new(2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(rate.admit(a) && rate.admit(a));
        assert!(!rate.admit(a));
        assert!(rate.admit(b));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "1.2.3.4, 10.0.0.9".parse().expect("header"),
        );
        let proxy: SocketAddr = "10.0.0.5:1000".parse().expect("addr");
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        assert_eq!(client_ip(proxy, &headers, &trusted).to_string(), "1.2.3.4");
        assert_eq!(client_ip(proxy, &headers, &[]).to_string(), "10.0.0.5");
    }

    #[test]
    fn origins() {
        let mut headers = HeaderMap::new();
        assert!(origin_allowed(&headers, &[]));
        headers.insert("host", "herald.example.com".parse().expect("header"));
        headers.insert(
            "origin",
            "https://herald.example.com".parse().expect("header"),
        );
        assert!(origin_allowed(&headers, &[]));
        headers.insert("origin", "https://evil.example".parse().expect("header"));
        assert!(!origin_allowed(&headers, &[]));
        assert!(origin_allowed(&headers, &["https://evil.example".into()]));
        assert!(origin_allowed(&headers, &["*".into()]));
    }
}
