//! The server: shared state, the router, and [`run`], the one entry point that serves a listener
//! until a shutdown signal and then drains.
//!
//! `run` takes an already-bound listener and a shutdown future, so tests start a real server on
//! `127.0.0.1:0` and stop it at will, exactly as `herald serve` does with SIGTERM.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::http::{HeaderValue, Method};
use axum::Router;
use herald_core::engine::NodeFigures;
use herald_core::hooks::Hooks;
use herald_core::{
    ChannelName, CloseCode, Disconnect, Engine, Hub, HubConfig, MemoryEngine, Namespaces,
};
use herald_redis::{RedisConfig, RedisEngine};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin;
use crate::api;
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError, EngineKind, HistoryStore};
use crate::hooks::HttpHooks;
use crate::limits::{ConnectionCap, ConnectionRate};
use crate::metrics::Metrics;
use crate::openapi;
use crate::store;
use crate::transport::ws::heartbeat::Heartbeats;
use crate::transport::{socketio, sse, ws};
use crate::webhooks::Webhooks;

/// Everything a request handler needs, shared by all of them.
pub struct AppState {
    pub config: Config,
    pub hub: Hub,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    /// The backend's hooks, when any is configured.
    pub hooks: Option<Arc<HttpHooks>>,
    /// The webhooks, when `[webhooks] url` is set.
    pub webhooks: Option<Arc<Webhooks>>,
    /// New connections per IP per second.
    pub connection_rate: ConnectionRate,
    /// Open client connections, at most `limits.max_connections`; taken and given back only
    /// through `transport::ConnectionSlot`.
    pub connection_cap: ConnectionCap,
    /// Pings and credential expiry of every WebSocket connection, kept by one sweep.
    pub heartbeats: Arc<Heartbeats>,
    pub started: Instant,
    /// This node's name in the node registry and `/api/stats`.
    pub node_name: String,
    /// Open Socket.IO connections by `sid`.
    pub socketio: crate::transport::socketio::Registry,
    /// The admin page's sign-in sessions and the figures' samples for its chart.
    pub admin: admin::AdminState,
    /// Set when shutdown begins: new WebSocket upgrades are refused and `/ready` fails.
    shutting_down: AtomicBool,
}

pub type App = Arc<AppState>;

impl AppState {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// This node's figures, as announced to the node registry.
    pub fn figures(&self) -> NodeFigures {
        let node = self.hub.snapshot();
        NodeFigures {
            name: self.node_name.clone(),
            connections: node.connections as u64,
            users: node.users as u64,
            subscriptions: node.subscriptions as u64,
            messages_in: self.metrics.messages_in.get(),
            messages_out: self.metrics.messages_out.get(),
            uptime_s: self.started.elapsed().as_secs(),
        }
    }
}

/// Announces this node to the engine's node registry now and every [`herald_redis::NODE_BEAT`].
async fn announce(app: App) {
    let mut beat = tokio::time::interval(herald_redis::NODE_BEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.tick().await;
        if let Err(e) = app.hub.engine().announce(app.figures()).await {
            tracing::warn!(error = %e, "node registry: announce failed");
        }
    }
}

/// This node's name: `node_name`, or the host name and the listening port.
pub fn node_name(config: &Config) -> String {
    if !config.node_name.is_empty() {
        return config.node_name.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".into());
    format!("{host}:{}", config.listen.port())
}

/// The engine `config` asks for: the memory engine (with its history store), or the Redis engine,
/// connected.
async fn engine(config: &Config, namespaces: &Namespaces) -> Result<Arc<dyn Engine>, ConfigError> {
    if config.engine == EngineKind::Redis {
        let redis = RedisConfig {
            url: config.redis_url.clone(),
            cluster_nodes: config.redis_cluster_nodes.clone(),
            prefix: config.redis_prefix.clone(),
            node_name: node_name(config),
            presence_ttl: config.redis_presence_ttl,
            timeout: config.redis_timeout,
        };
        let key = if redis.cluster_nodes.is_empty() {
            "redis_url"
        } else {
            "redis_cluster_nodes"
        };
        let engine = RedisEngine::connect(redis)
            .await
            .map_err(|e| ConfigError::new(key, e.message))?;
        return Ok(Arc::new(engine));
    }
    let engine = match config.history_store {
        HistoryStore::Memory => MemoryEngine::new(),
        HistoryStore::Disk => {
            let store = store::open(&config.data_dir)
                .map_err(|e| ConfigError::new("data_dir", e.message))?;
            let policy_of =
                |channel: &ChannelName| namespaces.policy(channel).ok().map(|p| p.history());
            MemoryEngine::with_store(store, policy_of)
                .map_err(|e| ConfigError::new("data_dir", e.message))?
        }
    };
    let engine = Arc::new(engine);
    engine.spawn_sweeper(Duration::from_secs(30));
    engine.spawn_writer();
    Ok(engine)
}

/// Builds the state for `config`: the engine, the hub, the authenticator.
pub async fn build(config: Config) -> Result<App, ConfigError> {
    config.validate()?;
    let auth = Authenticator::from_config(&config.auth)?;
    let namespaces = Namespaces::new(config.namespace_policies());
    let engine = engine(&config, &namespaces).await?;
    let metrics = Arc::new(Metrics::new());
    let hooks = HttpHooks::from_config(&config.proxy, metrics.clone());
    if config.proxy.any() && hooks.is_none() {
        return Err(ConfigError::new(
            "proxy",
            "the HTTP client for hooks could not be built",
        ));
    }
    let core_hooks = hooks.clone().map(|h| h as Arc<dyn Hooks>);
    let hub = Hub::with_hooks(
        HubConfig {
            namespaces,
            connections_per_user: config.limits.connections_per_user,
            subscriptions_per_connection: config.limits.subscriptions_per_connection,
            outbound_queue_bytes: config.limits.outbound_queue_bytes,
            idempotency_window: config.api.idempotency_window,
        },
        engine,
        core_hooks,
    );
    let webhooks = Webhooks::start(&config.webhooks, &hub, metrics.clone())
        .map_err(|e| ConfigError::new("webhooks", e.message))?;
    let config_name_source = config.clone();
    Ok(Arc::new(AppState {
        connection_rate: ConnectionRate::new(config.limits.connections_per_ip_per_second),
        connection_cap: ConnectionCap::new(config.limits.max_connections),
        heartbeats: Heartbeats::start(config.limits.heartbeat_interval, hub.clone()),
        socketio: Default::default(),
        config,
        hub,
        auth,
        metrics,
        hooks,
        webhooks,
        started: Instant::now(),
        node_name: node_name(&config_name_source),
        admin: admin::AdminState::default(),
        shutting_down: AtomicBool::new(false),
    }))
}

/// The `/api` routes, each with its description (`routes!` takes both from the handler's
/// `#[utoipa::path]`), before the layers that [`router`] puts around them.
fn api_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(api::publish))
        .routes(routes!(api::broadcast))
        .routes(routes!(api::batch))
        .routes(routes!(api::disconnect))
        .routes(routes!(api::unsubscribe))
        .routes(routes!(api::channels))
        .routes(routes!(api::history))
        .routes(routes!(api::presence))
        .routes(routes!(api::user))
        .routes(routes!(api::stats))
        .routes(routes!(api::openapi_document))
}

/// The routes outside `/api`: where clients connect, health, readiness and metrics.
fn root_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(ws::upgrade))
        .routes(routes!(api::health))
        .routes(routes!(api::ready))
        .routes(routes!(api::metrics))
}

/// The SSE route, apart because it takes CORS like `/api`.
fn sse_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(sse::stream))
}

/// Socket.IO's route (`[socketio] enabled`), with CORS like `/api` for polling from other origins.
fn socketio_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(socketio::poll, socketio::post))
}

/// The OpenAPI document of every route [`router`] serves, made from the same route lists.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = api_routes().split_for_parts();
    let (_, root) = root_routes().split_for_parts();
    let (_, sse) = sse_routes().split_for_parts();
    let (_, socketio) = socketio_routes().split_for_parts();
    openapi::base()
        .merge_from(root)
        .merge_from(sse)
        .merge_from(socketio)
        .merge_from(admin::openapi())
        .nest("/api", api)
}

/// The HTTP routes. Every error any of them answers, the router's own (unknown path, wrong
/// method) included, is the JSON error body (see [`api`]). Every route is described in
/// [`openapi`]; none is added here but through the route lists above. The admin page is among
/// them where `[admin]` and the listen address say so ([`admin::enabled`]).
pub fn router(app: App) -> Router {
    let (api, _) = api_routes().split_for_parts();
    let api = api
        // Before the layers, so that they wrap it: the API key is checked before the method, and
        // CORS answers preflights (an OPTIONS, which no route takes).
        .method_not_allowed_fallback(api::method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            api::require_api_key,
        ))
        .layer(DefaultBodyLimit::max(app.config.limits.max_api_body_bytes));
    let api = match cors(&app.config.allowed_origins) {
        Some(layer) => api.layer(layer),
        None => api,
    };
    let (sse, _) = sse_routes().split_for_parts();
    let sse = sse.method_not_allowed_fallback(api::method_not_allowed);
    let sse = match cors(&app.config.allowed_origins) {
        Some(layer) => sse.layer(layer),
        None => sse,
    };
    let (root, _) = root_routes().split_for_parts();
    let mut router = root.merge(sse).nest("/api", api);
    if app.config.socketio.enabled {
        let (routes, _) = socketio_routes().split_for_parts();
        let routes = routes
            .method_not_allowed_fallback(socketio::wrong_method)
            .layer(DefaultBodyLimit::disable());
        router = router.merge(match cors(&app.config.allowed_origins) {
            Some(layer) => routes.layer(layer),
            None => routes,
        });
    }
    // Off, `/admin` is an unknown path like any other.
    if admin::enabled(&app.config) {
        router = router.merge(admin::router(app.clone()));
    }
    router
        .fallback(api::not_found)
        // For the routes above that have none yet (`/api` and `/sse` have theirs).
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(app)
}

/// CORS for the API, from `allowed_origins`; none when the list is empty (same-origin only).
fn cors(allowed: &[String]) -> Option<CorsLayer> {
    if allowed.is_empty() {
        return None;
    }
    let origin = if allowed.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(allowed.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderName::from_static("last-event-id"),
            ]),
    )
}

/// Serves `listener` until `shutdown` completes, then drains: stop accepting, send every client a
/// `disconnect` with 1012 spread over `limits.shutdown_drain`, wait for the queues to flush, return.
pub async fn run(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let routes = router(app.clone());
    serve(listener, app, routes, shutdown).await
}

/// [`run`] with a router of the caller's: Herald's own ([`router`]) merged into or nested in an
/// application's, for a service that embeds Herald (see [`crate::Herald`]). The router must hold
/// Herald's routes for `/ws` to work: Herald's WebSocket transport takes each upgraded socket
/// back from the HTTP server that this function runs.
pub async fn serve(
    listener: TcpListener,
    app: App,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let beat = tokio::spawn(announce(app.clone()));
    let samples = admin::enabled(&app.config).then(|| tokio::spawn(admin::sample(app.clone())));
    let server = tokio::spawn(accept_loop(
        listener,
        routes,
        app.config.limits.handshake_timeout,
        stopped,
    ));
    shutdown.await;
    beat.abort();
    if let Some(samples) = samples {
        samples.abort();
    }
    tracing::info!("shutdown: no longer accepting; disconnecting clients");
    app.shutting_down.store(true, Ordering::Relaxed);
    let _ = stop.send(true);
    let drain = app.config.limits.shutdown_drain;
    app.hub
        .disconnect_all(
            Disconnect::new(CloseCode::ServerRestarting, "server restarting"),
            drain,
        )
        .await;
    // Connection tasks now write what was queued, then the disconnect; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.hub.snapshot().connections > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // HTTP connections finish the request in progress and close; each holds a receiver of
    // `stop`, so `closed` resolves when the last one has.
    let _ = tokio::time::timeout(Duration::from_secs(5), stop.closed()).await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => Ok(()),
    }
}

/// Marks a request that [`accept_loop`] serves: its connection is a plain `TcpStream` given to
/// hyper, which the WebSocket transport can take back after an upgrade.
#[derive(Clone, Copy)]
pub(crate) struct RawTcp;

/// Accepts connections until `stopped` turns true, serving each with hyper's HTTP/1 server.
///
/// Herald serves plain HTTP/1.1 over TCP itself rather than through `axum::serve`: the WebSocket
/// transport takes the raw `TcpStream` back out of an upgraded connection
/// (`transport::ws`), which needs to know the exact type hyper was given.
///
/// A connection that has not sent a whole request head within `header_read_timeout`
/// (`limits.handshake_timeout`), counted from when the server starts waiting for one (on
/// accepting it, or after answering the previous request of a kept-alive one), is closed, so that
/// a client that connects and stalls holds its file descriptor no longer than that.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async { let _ = stopped.wait_for(|stop| *stop).await; } => return,
        };
        // Frames are small and written as they come: without TCP_NODELAY, a frame that follows
        // another unacknowledged one waits for the peer's delayed ACK (up to 40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(RawTcp);
            // A `Router` is always ready; `call` only clones its routes' `Arc`.
            tower_service::Service::call(&mut router.clone(), request.map(Body::new))
        });
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                // Answers to pipelined requests go out in one write, not one each.
                .pipeline_flush(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut connection = pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                }
                () = async { let _ = stopped.wait_for(|stop| *stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
