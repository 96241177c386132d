//! The questions the hub may put to the application's backend: may this connection subscribe here
//! (a namespace with `subscribe = "proxy"`), and may it publish this (a namespace with
//! `publish_proxy = true`), possibly with rewritten data.
//!
//! The hub only knows this interface; the server answers it with HTTP requests to the configured
//! URLs (`crates/herald/src/proxy.rs`), and an embedding service may answer it in-process. An
//! implementation must never allow what it could not ask about: a backend that fails, times out
//! or answers nonsense is a refusal (`unavailable`), an explicit no is `forbidden`.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::error::HeraldError;

/// Headers of the client's HTTP request (upgrade or stream) that the configuration passes on to
/// the backend, lower-case names, in the order received.
pub type ForwardedHeaders = Arc<[(String, String)]>;

/// Who is asking: the connection's user and id, and its forwarded headers.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The connection's user.
    pub user: Arc<str>,
    /// The connection's client id.
    pub client: Arc<str>,
    /// The allow-listed headers of the connection's HTTP request.
    pub headers: Option<ForwardedHeaders>,
}

/// A client wants to subscribe to a channel whose namespace asks the backend.
#[derive(Debug, Clone)]
pub struct SubscribeCheck {
    /// Who asks.
    pub caller: Caller,
    /// The channel it wants.
    pub channel: ChannelName,
}

/// A client wants to publish to a channel whose namespace asks the backend.
#[derive(Debug, Clone)]
pub struct PublishCheck {
    /// Who publishes.
    pub caller: Caller,
    /// Where.
    pub channel: ChannelName,
    /// The event name, if any.
    pub event: Option<String>,
    /// The payload as the client sent it.
    pub data: Box<RawValue>,
}

/// The backend's say on subscriptions and client publications.
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    /// `Ok` to allow; `forbidden` when the backend refused, `unavailable` when it could not be
    /// asked or did not answer properly.
    async fn subscribe(&self, request: SubscribeCheck) -> Result<(), HeraldError>;

    /// The data to publish (the backend's replacement, or `None` to keep the client's); errors as
    /// for [`Hooks::subscribe`].
    async fn publish(&self, request: PublishCheck) -> Result<Option<Box<RawValue>>, HeraldError>;
}
