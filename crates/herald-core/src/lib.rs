//! # Herald core
//!
//! The parts of Herald that do no I/O of their own: no sockets, no HTTP, no files. The server crate
//! (`crates/herald`) puts transports, the API and configuration around them, and a Rust service can
//! embed them directly to publish in-process.
//!
//! # Layout
//!
//! - [`protocol`]: the native JSON wire protocol; the only module that knows its field names.
//! - [`channel`]: channel names, namespaces and the subscribe policies.
//! - [`error`]: error codes and close codes, each mapped once to its wire name and status.
//! - [`publication`]: a published event with its stream position, shared by every subscriber.
//! - [`presence`]: who is in a channel, and the join/leave/typing events.
//! - [`hooks`]: what the hub may ask the application's backend (subscribe, publish).
//! - [`hub`]: this node's sessions, subscriptions and the fan-out into bounded outboxes.
//! - [`engine`]: the interface to the rest of the cluster, and the in-process `memory` engine.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod channel;
pub mod engine;
pub mod error;
pub mod hooks;
pub mod hub;
pub mod presence;
pub mod protocol;
pub mod publication;

pub use channel::{ChannelName, Identity, NamespacePolicy, Namespaces, SubscribePolicy};
pub use engine::{Engine, MemoryEngine};
pub use error::{CloseCode, Disconnect, ErrorCode, HeraldError};
pub use hub::{Hub, HubConfig, Lifecycle, Recovery, Session, Subscribed};
pub use publication::{Publication, StreamPosition};
