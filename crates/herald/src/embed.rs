//! Herald inside a Rust service: [`Herald`] is the handle a service keeps to publish in-process
//! and to mount Herald's routes in its own axum application.
//!
//! A backend written in Rust need not call Herald's HTTP API over the network: it builds Herald
//! from a [`Config`] (a file, the environment, or code), nests [`Herald::router`] under a path of
//! its own router, and serves the whole application with [`Herald::serve`]. Its handlers then
//! publish with one call, `herald.publish_to_user(&user, "goal_achieved", &goal)`, which goes
//! through the same hub, engine and limits as `POST /api/publish` (and so reaches clients on every
//! node of a cluster). `examples/embedded.rs` is a complete service.
//!
//! [`Herald::serve`] rather than `axum::serve`: Herald's WebSocket transport takes each upgraded
//! socket back from the HTTP server to write to it directly, which needs the connections served
//! the way Herald serves them. It also runs what a node needs besides its routes (the node's
//! announcements to the registry, the graceful drain on shutdown).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use herald_core::{ChannelName, HeraldError, Hub, StreamPosition};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;

use crate::auth::{sign_hs256, Claims};
use crate::config::{Config, ConfigError, JwtAlgorithm};
use crate::server::{self, App};

/// A running Herald node inside an application. Cheap to clone; every clone is the same node.
#[derive(Clone)]
pub struct Herald {
    app: App,
}

impl Herald {
    /// Builds the node `config` describes: validates it, connects the engine (the memory engine,
    /// or Redis), starts the heartbeat sweep. Nothing listens until [`Herald::serve`].
    pub async fn new(config: Config) -> Result<Herald, ConfigError> {
        Ok(Herald {
            app: server::build(config).await?,
        })
    }

    /// Herald's routes (`/ws`, `/sse`, `/api/...`, `/health`, `/ready`, `/metrics`), to merge into
    /// the application's router or to nest under a prefix (`Router::nest("/realtime", ...)`, then
    /// clients connect to `/realtime/ws`). Unknown paths under it answer Herald's JSON `404`.
    pub fn router(&self) -> Router {
        server::router(self.app.clone())
    }

    /// Serves `routes` (the application's router holding [`Herald::router`]) on `listener` until
    /// `shutdown` completes, then drains Herald's clients as `herald serve` does on SIGTERM.
    pub async fn serve(
        &self,
        listener: TcpListener,
        routes: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        server::serve(listener, self.app.clone(), routes, shutdown).await
    }

    /// Publishes `data` (any `Serialize`) to `channel`, with an optional event name, as
    /// `POST /api/publish` does: the same checks and limits, the same place in the channel's
    /// stream and history, delivered to subscribers on every node.
    pub async fn publish(
        &self,
        channel: &str,
        event: Option<&str>,
        data: &impl Serialize,
    ) -> Result<StreamPosition, HeraldError> {
        let data = to_raw(data)?;
        crate::api::publish_one(&self.app, channel, event.map(str::to_owned), data, None).await
    }

    /// [`Herald::publish`] with an idempotency key: publishing again with the same key (within
    /// `api.idempotency_window`) publishes nothing and answers the first publication's position.
    pub async fn publish_once(
        &self,
        channel: &str,
        event: Option<&str>,
        data: &impl Serialize,
        idempotency_key: &str,
    ) -> Result<StreamPosition, HeraldError> {
        let data = to_raw(data)?;
        let key = Some(idempotency_key.to_owned());
        crate::api::publish_one(&self.app, channel, event.map(str::to_owned), data, key).await
    }

    /// Publishes an event to `user`'s personal channel (`user:{id}`), which every connection of
    /// that user receives without subscribing, and which keeps it for them while they are away.
    pub async fn publish_to_user(
        &self,
        user: &str,
        event: &str,
        data: &impl Serialize,
    ) -> Result<StreamPosition, HeraldError> {
        let channel = ChannelName::personal(user).ok_or_else(|| {
            HeraldError::bad_request(format!("user {user:?} has no personal channel"))
        })?;
        self.publish(channel.as_str(), Some(event), data).await
    }

    /// Closes every connection of `user` on every node (close code 4013).
    pub async fn disconnect_user(&self, user: &str, reconnect: bool) -> Result<(), HeraldError> {
        self.app.hub.disconnect_user(user, reconnect).await
    }

    /// How many connections `user` has on every node.
    pub async fn user_connections(&self, user: &str) -> Result<usize, HeraldError> {
        self.app.hub.user_connections_everywhere(user).await
    }

    /// A client token for `user`, valid for `ttl`, with `channels` grants (for namespaces with
    /// `subscribe = "claims"`): what a service's login handler hands its web or mobile client.
    /// Only with `auth.jwt_algorithm = "HS256"`, where Herald holds the secret.
    pub fn client_token(
        &self,
        user: &str,
        channels: Option<Vec<String>>,
        ttl: Duration,
    ) -> Result<String, HeraldError> {
        let auth = &self.app.config.auth;
        let secret = match (auth.jwt_algorithm, auth.jwt_secret.as_deref()) {
            (JwtAlgorithm::HS256, Some(secret)) => secret,
            _ => {
                return Err(HeraldError::bad_request(
                    "client tokens are signed here only with auth.jwt_algorithm = \"HS256\"",
                ))
            }
        };
        let claims = Claims::new(user, channels, ttl, auth);
        sign_hs256(secret, &claims).map_err(|e| HeraldError::internal(e.to_string()))
    }

    /// The hub, for everything else a service does in-process (presence, history, the channel
    /// list).
    pub fn hub(&self) -> &Hub {
        &self.app.hub
    }

    /// The node's shared state, as the HTTP handlers see it.
    pub fn state(&self) -> &App {
        &self.app
    }
}

fn to_raw(data: &impl Serialize) -> Result<Box<RawValue>, HeraldError> {
    serde_json::value::to_raw_value(data)
        .map_err(|e| HeraldError::bad_request(format!("data is not JSON: {e}")))
}
