//! Transports: how clients reach the hub. Each transport owns its sockets and its wire encoding;
//! the hub sees only sessions and outboxes.
//!
//! - [`ws`]: WebSocket at `/ws`, the native JSON protocol in both directions.

pub mod ws;
