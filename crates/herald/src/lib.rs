//! # Herald server
//!
//! The `herald` binary and the library behind it: everything that touches the network, the
//! configuration file or the process. The protocol, the hub and the engines live in `herald-core`.
//!
//! # Layout
//!
//! - [`config`]: the TOML file, `HERALD_*` overrides, validation, development defaults.
//! - [`auth`]: JWT verification (algorithm pinned by config) and token signing.
//! - [`transport`]: how clients connect: [`transport::ws`] (WebSocket) and [`transport::sse`]
//!   (Server-Sent Events).
//! - [`api`]: the HTTP API for backends, health, readiness and metrics.
//! - [`limits`]: command rate, connection rate, client address, allowed origins.
//! - [`metrics`]: Prometheus series.
//! - [`openapi`]: the OpenAPI document's frame; the routes describe themselves.
//! - [`hooks`]: the backend's hooks (connect, subscribe, publish) over HTTP, configured under
//!   `[proxy]`.
//! - [`store`]: the durable history store (`history_store = "disk"`) on redb.
//! - [`webhooks`]: events about users, channels and presence, posted to the backend in signed
//!   batches (`[webhooks]`).
//! - [`admin`]: the admin page at `/admin` (its files compiled in), its sign-in sessions and the
//!   small API it calls.
//! - [`server`]: shared state, the router, and [`server::run`], the one entry point.
//! - [`embed`]: [`Herald`], the handle of a Rust service that embeds Herald: it mounts Herald's
//!   router in its own and publishes in-process.
//! - `main.rs`: the CLI (`serve`, `token`, `init`, `check-config`).

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod embed;
pub mod hooks;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod server;
pub mod store;
pub mod transport;
pub mod webhooks;

pub use embed::Herald;
