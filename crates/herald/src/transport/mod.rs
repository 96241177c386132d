//! Transports: how clients reach the hub. Each transport owns its sockets and its wire encoding;
//! the hub sees only sessions and outboxes.
//!
//! - [`ws`]: WebSocket at `/ws`, the native JSON protocol in both directions.
//! - [`sse`]: Server-Sent Events at `/sse`, receive-only, resumable with `Last-Event-ID`.

pub mod sse;
pub mod ws;
