//! Herald's integration tests, as one test binary: real servers on `127.0.0.1:0` (in-process, or
//! the real `herald` binary where a behaviour needs the process) and real sockets, driven through
//! the harness in [`common`]. Each module is named after the behaviour it checks; run one with
//! `cargo test -p herald --test it presence`.

#![allow(clippy::unwrap_used)]

mod common;

mod admin;
mod auth;
mod cli;
mod cluster;
mod compression;
mod dashboard;
mod delivery;
mod durable;
mod embedding;
mod hooks;
mod http_errors;
mod limits;
mod openapi;
mod presence;
mod recovery;
mod shutdown;
mod slow_consumer;
mod socketio;
mod sse;
mod webhooks;
mod websocket_rfc6455;
