//! The WebSocket transport: `GET /ws`, speaking the native protocol.
//!
//! Herald does its own WebSocket handshake and framing ([`frame`]) on the raw TCP socket, because
//! the fan-out is the hot path of the whole server and a general WebSocket library would put a
//! task wake-up, a copy into a per-connection buffer and a `send` of its own behind every
//! delivery. Here, a publication is framed once and its shared bytes are written straight from
//! the fan-out to every idle subscriber's socket ([`socket::Socket`], lent to the hub's outbox as
//! a `DirectWrite`); only a connection whose socket is full, or that is busy answering its
//! client, has its deliveries queued, and its task then writes them all with one `writev`.
//!
//! One task per connection owns the conversation. It authenticates the client (header,
//! `?token=` or a first `auth` frame within the handshake timeout), registers a
//! [`Session`](herald_core::Session) with the hub, and then waits for one of two things: the hub
//! handing it the socket (something queued, or a close) or the client's bytes. It holds no timer:
//! the node's [`heartbeat`] sweep pings it and asks its outbox for the close when the client
//! falls silent or the token expires. It closes with the documented code when a limit is hit,
//! the token expires, or the hub asks. No lock is held while it awaits.
//!
//! Nothing here holds a buffer while the connection is idle: the read buffer exists while a read
//! is parsed, frames are shared with the publication they carry, and the task's state is a few
//! hundred bytes (see "Where an idle connection's memory goes" in `docs/benchmarks.md`). The
//! bound on what may wait for a client is the hub's outbox (`limits.outbound_queue_bytes`).
//!
//! # Layout
//!
//! - [`handshake`]: `GET /ws` ([`upgrade`]): the RFC 6455 handshake, admission, the query string
//!   and the connect hook, up to the `101` and the start of the connection's task.
//! - [`connection`]: the connection's task: authentication, the loop that waits for the outbox
//!   or the client, reading, batch writes, and the close.
//! - [`commands`]: what the task does with each message the client sends: the command rate
//!   limit and the answer to each command.
//! - [`frame`]: server frames and the reassembly of the client's messages.
//! - [`deflate`]: permessage-deflate (RFC 7692): the negotiation, and each message compressed
//!   or inflated on its own, so that a compressed publication is shared like a plain one.
//! - [`socket`]: the socket shared by the task and the fan-out.
//! - [`heartbeat`]: every connection's pings and credential expiry, in one sweep per node.

mod commands;
mod connection;
pub(crate) mod deflate;
pub(crate) mod frame;
pub(crate) mod handshake;
pub mod heartbeat;
pub(crate) mod socket;

pub(crate) use self::deflate::Deflate;

use std::time::Duration;

pub use self::handshake::upgrade;
// The route's OpenAPI description, which `utoipa_axum::routes!` finds beside the handler.
#[doc(hidden)]
pub use self::handshake::__path_upgrade;

/// Most bytes read from a socket at a time. Clients send small commands; a larger frame is read
/// in several calls.
const READ_CHUNK: usize = 4096;
/// Longest a write may wait for a full socket before the connection is considered dead.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the closing handshake may take.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// RFC 6455 close codes for a client that breaks the protocol.
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_INVALID_PAYLOAD: u16 = 1007;
