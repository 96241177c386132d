//! Configuration: the TOML file, `HERALD_*` environment overrides, validation, and the
//! development defaults used when `herald serve` runs without a file.
//!
//! Every key name here is part of Herald's stable surface (`docs/configuration.md`). A bad value is
//! reported as a [`ConfigError`] that names the key; nothing here panics on input.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_core::channel::{NamespacePolicy, SubscribePolicy};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryStore {
    Memory,
    Disk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub engine: EngineKind,
    /// One Redis, for `engine = "redis"`.
    pub redis_url: String,
    /// Redis Cluster seed nodes; when set, they win over `redis_url`.
    pub redis_cluster_nodes: Vec<String>,
    /// What every Redis key and pub/sub subject starts with.
    pub redis_prefix: String,
    /// How long a presence entry outlives the last refresh by its node: how soon a killed node's
    /// connections leave presence.
    #[serde(deserialize_with = "duration")]
    pub redis_presence_ttl: Duration,
    /// The longest any Redis call may take before it fails with `unavailable`.
    #[serde(deserialize_with = "duration")]
    pub redis_timeout: Duration,
    /// This node's name in `/api/stats`; empty: the host name and the listening port.
    pub node_name: String,
    /// Origins allowed to open a WebSocket and to call the API from a browser. Empty: same-origin
    /// and non-browser clients only. `"*"` allows any origin.
    pub allowed_origins: Vec<String>,
    pub history_store: HistoryStore,
    pub data_dir: PathBuf,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub limits: Limits,
    pub sse: SseConfig,
    pub compression: CompressionConfig,
    pub socketio: SocketIoConfig,
    pub proxy: ProxyConfig,
    pub webhooks: WebhooksConfig,
    pub admin: AdminConfig,
    #[serde(rename = "namespace")]
    pub namespaces: Vec<NamespaceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub jwt_algorithm: JwtAlgorithm,
    pub jwt_secret: Option<String>,
    pub jwt_public_key_file: Option<PathBuf>,
    /// When set, tokens must carry this `aud`.
    pub jwt_audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub jwt_issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(deserialize_with = "duration")]
    pub jwt_leeway: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub keys: Vec<String>,
    /// How long a publish's `idempotency_key` is remembered: a retry within it returns the first
    /// result and publishes nothing.
    #[serde(deserialize_with = "duration")]
    pub idempotency_window: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            keys: Vec::new(),
            idempotency_window: Duration::from_secs(300),
        }
    }
}

/// The admin page (`docs/admin.md`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Whether `/admin` is served. Unset: only when `listen` is a loopback address.
    pub enabled: Option<bool>,
    /// A password that signs in besides the API keys; empty: the API keys only.
    pub password: String,
}

impl Config {
    /// Whether the admin page is served: as `admin.enabled` says, and when it says nothing, only
    /// on a loopback `listen` address (a development server, or one behind a local proxy).
    pub fn admin_enabled(&self) -> bool {
        self.admin
            .enabled
            .unwrap_or_else(|| self.listen.ip().is_loopback())
    }
}

impl SocketIoConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("socketio.{k}");
        if self.namespaces.is_empty() || self.namespaces.len() > MAX_SOCKETIO_NAMESPACES {
            return Err(ConfigError::new(
                key("namespaces"),
                format!("list 1 to {MAX_SOCKETIO_NAMESPACES} namespaces, e.g. [\"/\"]"),
            ));
        }
        for (i, namespace) in self.namespaces.iter().enumerate() {
            let valid = namespace.starts_with('/')
                && namespace.len() <= 128
                && !namespace.contains([',', '?', '#'])
                && !namespace.chars().any(char::is_control);
            if !valid {
                return Err(ConfigError::new(
                    key("namespaces"),
                    format!("{namespace:?} is not a namespace: it starts with / and holds no , ? # or control characters"),
                ));
            }
            if self.namespaces[..i].contains(namespace) {
                return Err(ConfigError::new(
                    key("namespaces"),
                    format!("{namespace:?} is listed twice"),
                ));
            }
        }
        if self.ping_interval.is_zero() || self.ping_timeout.is_zero() {
            return Err(ConfigError::new(
                key("ping_interval"),
                "ping_interval and ping_timeout must be longer than zero",
            ));
        }
        for (i, event) in self.events.iter().enumerate() {
            let at = |field: &str| format!("socketio.event[{i}].{field}");
            let name = event.name.as_str();
            if name.is_empty()
                || SOCKETIO_RESERVED_EVENTS.contains(&name)
                || crate::transport::socketio::BUILT_IN_EVENTS.contains(&name)
            {
                return Err(ConfigError::new(
                    at("name"),
                    format!(
                        "{:?} cannot be mapped: it is empty, kept by socket.io-client, or one of Herald's built-in events",
                        event.name
                    ),
                ));
            }
            if self.events[..i].iter().any(|e| e.name == event.name) {
                return Err(ConfigError::new(
                    at("name"),
                    format!("{:?} is mapped twice", event.name),
                ));
            }
            if event.subscribe.is_some() && event.unsubscribe.is_some() {
                return Err(ConfigError::new(
                    at("subscribe"),
                    "an event either subscribes or unsubscribes, not both",
                ));
            }
            for (field, template) in [
                ("subscribe", &event.subscribe),
                ("unsubscribe", &event.unsubscribe),
            ] {
                if let Some(template) = template {
                    crate::transport::socketio::ChannelTemplate::parse(template)
                        .map_err(|problem| ConfigError::new(at(field), problem))?;
                }
            }
            if event.reply.as_deref().is_some_and(|r| r.is_empty()) {
                return Err(ConfigError::new(at("reply"), "an event name, not empty"));
            }
        }
        Ok(())
    }
}

/// The shortest `admin.password` accepted.
pub const MIN_ADMIN_PASSWORD: usize = 12;

/// permessage-deflate (RFC 7692) on WebSocket connections, from `[compression]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// Whether a client that offers permessage-deflate gets it.
    pub enabled: bool,
    /// Messages shorter than this many bytes are sent uncompressed.
    pub threshold: usize,
    /// zlib's level, 1 (fastest) to 9 (smallest).
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            threshold: 256,
            level: 6,
        }
    }
}

/// Socket.IO clients at `/socket.io/` (`docs/socketio.md`), from `[socketio]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketIoConfig {
    /// Whether `/socket.io/` is served.
    pub enabled: bool,
    /// The Socket.IO namespaces a client may connect to; each is its own connection to the hub.
    pub namespaces: Vec<String>,
    /// How often the server pings (Engine.IO `pingInterval`).
    #[serde(deserialize_with = "duration")]
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped (`pingTimeout`).
    #[serde(deserialize_with = "duration")]
    pub ping_timeout: Duration,
    /// The application's own events, each mapped onto a command.
    #[serde(rename = "event")]
    pub events: Vec<SocketIoEvent>,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            enabled: true,
            namespaces: vec!["/".to_owned()],
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            events: Vec::new(),
        }
    }
}

/// One `[[socketio.event]]`: an event an existing Socket.IO app emits, and what Herald does
/// with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketIoEvent {
    /// The event's name, as the app emits it.
    pub name: String,
    /// Subscribe to this channel; `{field}` takes a field of the event's first argument.
    pub subscribe: Option<String>,
    /// Unsubscribe from this channel (the same templates).
    pub unsubscribe: Option<String>,
    /// Emit this event back: with `{channel}` after a subscribe or unsubscribe, else `{ts}`.
    pub reply: Option<String>,
}

/// Most namespaces `[socketio] namespaces` may list.
pub const MAX_SOCKETIO_NAMESPACES: usize = 16;

/// Event names socket.io-client keeps for itself.
pub const SOCKETIO_RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// The SSE settings, from configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// How often a `: ping` comment is sent on an idle stream.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// The `retry:` hint: how long a client waits before reconnecting.
    #[serde(deserialize_with = "duration")]
    pub retry: Duration,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            heartbeat_interval: Duration::from_secs(15),
            retry: Duration::from_secs(3),
        }
    }
}

/// The backend's hooks (`docs/hooks.md`): where Herald asks, and how long it waits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Authenticates connections that bring no token (by cookie or session).
    pub connect_url: Option<String>,
    /// Decides subscriptions in namespaces with `subscribe = "proxy"`.
    pub subscribe_url: Option<String>,
    /// Decides (and may rewrite) client publications in namespaces with `publish_proxy = true`.
    pub publish_url: Option<String>,
    /// Longest wait for the backend's answer; past it, the request is refused (`unavailable`).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Headers of the client's HTTP request passed on to every hook (case-insensitive names).
    pub forward_headers: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_url: None,
            subscribe_url: None,
            publish_url: None,
            timeout: Duration::from_secs(3),
            forward_headers: vec!["cookie".into()],
        }
    }
}

impl ProxyConfig {
    /// Whether any hook is configured.
    pub fn any(&self) -> bool {
        self.connect_url.is_some() || self.subscribe_url.is_some() || self.publish_url.is_some()
    }
}

/// The webhooks (`docs/webhooks.md`): events about users, channels and presence, posted in
/// signed batches to the backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Where the batches are posted; empty: webhooks are off.
    pub url: String,
    /// The HMAC-SHA256 key of `X-Herald-Signature`.
    pub secret: String,
    /// The event types sent (every type by default).
    pub events: Vec<String>,
    /// How long `user_offline` and `channel_vacated` wait for the user or channel to come back.
    #[serde(deserialize_with = "duration")]
    pub grace: Duration,
    /// The longest one request may take; past it, the batch is retried.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Events waiting to be sent, at most; past it, new events are dropped (counted).
    pub queue_size: usize,
    /// Events in one request, at most.
    pub batch_size: usize,
    /// Tries of one batch before it is dropped (counted).
    pub max_attempts: u32,
    /// Users and channels waiting for their state to be checked (their grace running), at most;
    /// past it, new ones are not reported (counted).
    pub pending_size: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            url: String::new(),
            secret: String::new(),
            events: all_event_types(),
            grace: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            queue_size: 10_000,
            batch_size: 100,
            max_attempts: 10,
            pending_size: 100_000,
        }
    }
}

/// Every webhook event type.
fn all_event_types() -> Vec<String> {
    crate::webhooks::EventType::ALL
        .iter()
        .map(|t| t.as_str().to_string())
        .collect()
}

impl WebhooksConfig {
    /// Whether webhooks are on.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    fn validate(&self, engine: EngineKind) -> Result<(), ConfigError> {
        for event in &self.events {
            if crate::webhooks::EventType::parse(event).is_none() {
                let known = all_event_types().join(", ");
                return Err(ConfigError::new(
                    "webhooks.events",
                    format!("{event:?} is not an event type (one of {known})"),
                ));
            }
        }
        if !self.enabled() {
            return Ok(());
        }
        match self.url.split_once("://") {
            Some(("http", rest)) if !rest.is_empty() => {}
            Some(("https", _)) => {
                return Err(ConfigError::new(
                    "webhooks.url",
                    "https is not supported: post to the backend over http on the private \
                     network (or through a local TLS proxy)",
                ))
            }
            _ => {
                return Err(ConfigError::new(
                    "webhooks.url",
                    format!("{:?} is not an http:// URL", self.url),
                ))
            }
        }
        if reqwest::Url::parse(&self.url).is_err() {
            return Err(ConfigError::new(
                "webhooks.url",
                format!("{:?} is not a valid URL", self.url),
            ));
        }
        if self.secret.len() < 16 {
            return Err(ConfigError::new(
                "webhooks.secret",
                "required with webhooks.url, at least 16 bytes (herald init makes a 43-byte one)",
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "webhooks.timeout",
                "must be more than zero and at most 60s",
            ));
        }
        if self.grace > Duration::from_secs(3600) {
            return Err(ConfigError::new("webhooks.grace", "at most 1h"));
        }
        if engine == EngineKind::Redis && self.grace < crate::webhooks::MIN_CLUSTER_GRACE {
            return Err(ConfigError::new(
                "webhooks.grace",
                "at least 1s with engine = \"redis\": the nodes' views of a user or channel \
                 must settle within it (see docs/webhooks.md)",
            ));
        }
        let positive = [
            ("webhooks.queue_size", self.queue_size),
            ("webhooks.batch_size", self.batch_size),
            ("webhooks.max_attempts", self.max_attempts as usize),
            ("webhooks.pending_size", self.pending_size),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::new(*key, "must be greater than zero"));
        }
        Ok(())
    }
}

/// Every limit, with the spec's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub commands_per_minute: u32,
    pub commands_burst: u32,
    pub subscriptions_per_connection: usize,
    pub connections_per_user: usize,
    pub connections_per_ip_per_second: u32,
    /// Client connections (WebSocket and SSE) this node holds at once, from admission until they
    /// end; the next one is refused with `503`. Defaults to what the file-descriptor limit allows
    /// ([`default_max_connections`]).
    pub max_connections: usize,
    pub trusted_proxies: Vec<IpNet>,
    /// The longest a client may take to send its HTTP request headers (any request, on a new
    /// connection or a kept-alive one), and, on `/ws`, from the upgrade to the `auth` frame.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    pub outbound_queue_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub shutdown_drain: Duration,
    /// Largest HTTP API request body (a batch of publications).
    pub max_api_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    pub name: String,
    #[serde(default = "public")]
    pub subscribe: SubscribePolicy,
    #[serde(default)]
    pub publish: bool,
    #[serde(default)]
    pub publish_proxy: bool,
    #[serde(default)]
    pub presence: bool,
    #[serde(default)]
    pub join_leave: bool,
    #[serde(default = "default_join_leave_max_members")]
    pub join_leave_max_members: usize,
    #[serde(default)]
    pub typing: bool,
    #[serde(default)]
    pub history_size: usize,
    #[serde(default = "default_history_ttl", deserialize_with = "duration")]
    pub history_ttl: Duration,
}

fn public() -> SubscribePolicy {
    SubscribePolicy::Public
}

fn default_join_leave_max_members() -> usize {
    herald_core::channel::DEFAULT_JOIN_LEAVE_MAX_MEMBERS
}

fn default_history_ttl() -> Duration {
    Duration::from_secs(300)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            engine: EngineKind::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_cluster_nodes: Vec::new(),
            redis_prefix: "herald".into(),
            redis_presence_ttl: Duration::from_secs(30),
            redis_timeout: Duration::from_secs(2),
            node_name: String::new(),
            allowed_origins: Vec::new(),
            history_store: HistoryStore::Memory,
            data_dir: PathBuf::from("./herald-data"),
            auth: AuthConfig::default(),
            api: ApiConfig::default(),
            limits: Limits::default(),
            sse: SseConfig::default(),
            compression: CompressionConfig::default(),
            socketio: SocketIoConfig::default(),
            proxy: ProxyConfig::default(),
            webhooks: WebhooksConfig::default(),
            admin: AdminConfig::default(),
            namespaces: Vec::new(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_audience: None,
            jwt_issuer: None,
            jwt_leeway: Duration::from_secs(5),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            commands_per_minute: 100,
            commands_burst: 20,
            subscriptions_per_connection: 128,
            connections_per_user: 16,
            connections_per_ip_per_second: 100,
            max_connections: default_max_connections(),
            trusted_proxies: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(25),
            outbound_queue_bytes: 1024 * 1024,
            shutdown_drain: Duration::from_secs(10),
            max_api_body_bytes: 8 * 1024 * 1024,
        }
    }
}

/// `limits.max_connections` where the file-descriptor limit cannot be read.
const FALLBACK_MAX_CONNECTIONS: usize = 10_000;

/// The default `limits.max_connections`: as many connections as the process's file-descriptor
/// limit (soft `RLIMIT_NOFILE`) allows, less a reserve for what else the node opens (see
/// [`connections_for_descriptors`]). 10,000 where the limit cannot be read.
pub fn default_max_connections() -> usize {
    match rlimit::Resource::NOFILE.get_soft() {
        Ok(descriptors) => connections_for_descriptors(descriptors),
        Err(_) => FALLBACK_MAX_CONNECTIONS,
    }
}

/// How many client connections `descriptors` file descriptors hold: each takes one, and a
/// twentieth of them, at least 64, stay for the rest of the node: the listener, the history
/// store's file, the runtime's own descriptors, the HTTP API's and `/metrics`' connections,
/// requests still sending their headers, and the hooks' connections to the backend. At least 1.
fn connections_for_descriptors(descriptors: u64) -> usize {
    let reserve = (descriptors / 20).max(64);
    usize::try_from(descriptors.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(1)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration like \"10s\" or \"1h\": {e}"
        ))
    })
}

/// How a configuration key's environment value is read.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Integer,
    Bool,
    List,
}

/// Every key that an environment variable can set: `HERALD_<SECTION>_<KEY>`, upper-cased.
const ENV_KEYS: &[(&str, Option<&str>, &str, Kind)] = &[
    ("HERALD_LISTEN", None, "listen", Kind::Text),
    ("HERALD_ENGINE", None, "engine", Kind::Text),
    ("HERALD_REDIS_URL", None, "redis_url", Kind::Text),
    (
        "HERALD_REDIS_CLUSTER_NODES",
        None,
        "redis_cluster_nodes",
        Kind::List,
    ),
    ("HERALD_REDIS_PREFIX", None, "redis_prefix", Kind::Text),
    (
        "HERALD_REDIS_PRESENCE_TTL",
        None,
        "redis_presence_ttl",
        Kind::Text,
    ),
    ("HERALD_REDIS_TIMEOUT", None, "redis_timeout", Kind::Text),
    ("HERALD_NODE_NAME", None, "node_name", Kind::Text),
    (
        "HERALD_ALLOWED_ORIGINS",
        None,
        "allowed_origins",
        Kind::List,
    ),
    ("HERALD_HISTORY_STORE", None, "history_store", Kind::Text),
    ("HERALD_DATA_DIR", None, "data_dir", Kind::Text),
    (
        "HERALD_AUTH_JWT_ALGORITHM",
        Some("auth"),
        "jwt_algorithm",
        Kind::Text,
    ),
    (
        "HERALD_AUTH_JWT_SECRET",
        Some("auth"),
        "jwt_secret",
        Kind::Text,
    ),
    (
        "HERALD_AUTH_JWT_PUBLIC_KEY_FILE",
        Some("auth"),
        "jwt_public_key_file",
        Kind::Text,
    ),
    (
        "HERALD_AUTH_JWT_AUDIENCE",
        Some("auth"),
        "jwt_audience",
        Kind::Text,
    ),
    (
        "HERALD_AUTH_JWT_ISSUER",
        Some("auth"),
        "jwt_issuer",
        Kind::Text,
    ),
    (
        "HERALD_AUTH_JWT_LEEWAY",
        Some("auth"),
        "jwt_leeway",
        Kind::Text,
    ),
    ("HERALD_API_KEYS", Some("api"), "keys", Kind::List),
    (
        "HERALD_PROXY_CONNECT_URL",
        Some("proxy"),
        "connect_url",
        Kind::Text,
    ),
    (
        "HERALD_PROXY_SUBSCRIBE_URL",
        Some("proxy"),
        "subscribe_url",
        Kind::Text,
    ),
    (
        "HERALD_PROXY_PUBLISH_URL",
        Some("proxy"),
        "publish_url",
        Kind::Text,
    ),
    ("HERALD_PROXY_TIMEOUT", Some("proxy"), "timeout", Kind::Text),
    (
        "HERALD_PROXY_FORWARD_HEADERS",
        Some("proxy"),
        "forward_headers",
        Kind::List,
    ),
    ("HERALD_ADMIN_ENABLED", Some("admin"), "enabled", Kind::Bool),
    (
        "HERALD_SOCKETIO_ENABLED",
        Some("socketio"),
        "enabled",
        Kind::Bool,
    ),
    (
        "HERALD_SOCKETIO_NAMESPACES",
        Some("socketio"),
        "namespaces",
        Kind::List,
    ),
    (
        "HERALD_SOCKETIO_PING_INTERVAL",
        Some("socketio"),
        "ping_interval",
        Kind::Text,
    ),
    (
        "HERALD_SOCKETIO_PING_TIMEOUT",
        Some("socketio"),
        "ping_timeout",
        Kind::Text,
    ),
    (
        "HERALD_ADMIN_PASSWORD",
        Some("admin"),
        "password",
        Kind::Text,
    ),
    (
        "HERALD_SSE_HEARTBEAT_INTERVAL",
        Some("sse"),
        "heartbeat_interval",
        Kind::Text,
    ),
    ("HERALD_SSE_RETRY", Some("sse"), "retry", Kind::Text),
    (
        "HERALD_COMPRESSION_ENABLED",
        Some("compression"),
        "enabled",
        Kind::Bool,
    ),
    (
        "HERALD_COMPRESSION_THRESHOLD",
        Some("compression"),
        "threshold",
        Kind::Integer,
    ),
    (
        "HERALD_COMPRESSION_LEVEL",
        Some("compression"),
        "level",
        Kind::Integer,
    ),
    (
        "HERALD_API_IDEMPOTENCY_WINDOW",
        Some("api"),
        "idempotency_window",
        Kind::Text,
    ),
    (
        "HERALD_LIMITS_MAX_FRAME_BYTES",
        Some("limits"),
        "max_frame_bytes",
        Kind::Integer,
    ),
    (
        "HERALD_LIMITS_COMMANDS_PER_MINUTE",
        Some("limits"),
        "commands_per_minute",
        Kind::Integer,
    ),
    (
        "HERALD_LIMITS_COMMANDS_BURST",
        Some("limits"),
        "commands_burst",
        Kind::Integer,
    ),
    (
        "HERALD_LIMITS_SUBSCRIPTIONS_PER_CONNECTION",
        Some("limits"),
        "subscriptions_per_connection",
        Kind::Integer,
    ),
    (
        "HERALD_LIMITS_CONNECTIONS_PER_USER",
        Some("limits"),
        "connections_per_user",
        Kind::Integer,
    ),
    (
        "HERALD_LIMITS_CONNECTIONS_PER_IP_PER_SECOND",
        Some("limits"),
        "connections_per_ip_per_second",
        Kind::Integer,
    ),
    (
        "HERALD_LIMITS_MAX_CONNECTIONS",
        Some("limits"),
        "max_connections",
        Kind::Integer,
    ),
    (
        "HERALD_LIMITS_TRUSTED_PROXIES",
        Some("limits"),
        "trusted_proxies",
        Kind::List,
    ),
    (
        "HERALD_LIMITS_HANDSHAKE_TIMEOUT",
        Some("limits"),
        "handshake_timeout",
        Kind::Text,
    ),
    (
        "HERALD_LIMITS_HEARTBEAT_INTERVAL",
        Some("limits"),
        "heartbeat_interval",
        Kind::Text,
    ),
    (
        "HERALD_LIMITS_OUTBOUND_QUEUE_BYTES",
        Some("limits"),
        "outbound_queue_bytes",
        Kind::Integer,
    ),
    (
        "HERALD_LIMITS_SHUTDOWN_DRAIN",
        Some("limits"),
        "shutdown_drain",
        Kind::Text,
    ),
    (
        "HERALD_LIMITS_MAX_API_BODY_BYTES",
        Some("limits"),
        "max_api_body_bytes",
        Kind::Integer,
    ),
    ("HERALD_WEBHOOKS_URL", Some("webhooks"), "url", Kind::Text),
    (
        "HERALD_WEBHOOKS_SECRET",
        Some("webhooks"),
        "secret",
        Kind::Text,
    ),
    (
        "HERALD_WEBHOOKS_EVENTS",
        Some("webhooks"),
        "events",
        Kind::List,
    ),
    (
        "HERALD_WEBHOOKS_GRACE",
        Some("webhooks"),
        "grace",
        Kind::Text,
    ),
    (
        "HERALD_WEBHOOKS_TIMEOUT",
        Some("webhooks"),
        "timeout",
        Kind::Text,
    ),
    (
        "HERALD_WEBHOOKS_QUEUE_SIZE",
        Some("webhooks"),
        "queue_size",
        Kind::Integer,
    ),
    (
        "HERALD_WEBHOOKS_BATCH_SIZE",
        Some("webhooks"),
        "batch_size",
        Kind::Integer,
    ),
    (
        "HERALD_WEBHOOKS_MAX_ATTEMPTS",
        Some("webhooks"),
        "max_attempts",
        Kind::Integer,
    ),
    (
        "HERALD_WEBHOOKS_PENDING_SIZE",
        Some("webhooks"),
        "pending_size",
        Kind::Integer,
    ),
];

/// Environment variables that start with `HERALD_` but are not configuration keys.
const ENV_OTHER: &[&str] = &["HERALD_LOG"];

impl Config {
    /// Reads `path` (if any), applies `HERALD_*` overrides from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        Config::from_table(table)
    }

    /// The development configuration (see [`Config::development`]) with `HERALD_*` overrides.
    pub fn load_development(
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::new();
        let mut auth = toml::Table::new();
        auth.insert("jwt_secret".into(), fresh_secret().into());
        table.insert("auth".into(), auth.into());
        let mut api = toml::Table::new();
        api.insert(
            "keys".into(),
            toml::Value::Array(vec![fresh_secret().into()]),
        );
        table.insert("api".into(), api.into());
        let mut wildcard = toml::Table::new();
        wildcard.insert("name".into(), "*".into());
        for feature in ["publish", "presence", "join_leave", "typing"] {
            wildcard.insert(feature.into(), true.into());
        }
        wildcard.insert("history_size".into(), 100.into());
        table.insert(
            "namespace".into(),
            toml::Value::Array(vec![wildcard.into()]),
        );
        apply_env(&mut table, env)?;
        Config::from_table(table)
    }

    /// Parses and validates TOML text (no environment).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::new("config", e.to_string()))?;
        Config::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::new(key, e.into_inner().message().to_string())
            })?;
        config.validate()?;
        Ok(config)
    }

    /// The development configuration: loopback only, fresh secrets, every namespace public, open
    /// to client publishing, with presence, join/leave and typing on.
    pub fn development() -> Config {
        let mut wildcard = NamespaceConfig::new("*");
        wildcard.publish = true;
        wildcard.presence = true;
        wildcard.join_leave = true;
        wildcard.typing = true;
        wildcard.history_size = 100;
        Config {
            auth: AuthConfig {
                jwt_secret: Some(fresh_secret()),
                ..AuthConfig::default()
            },
            api: ApiConfig {
                keys: vec![fresh_secret()],
                ..ApiConfig::default()
            },
            namespaces: vec![wildcard],
            ..Config::default()
        }
    }

    /// Checks what serde cannot: required secrets, sane numbers, features not in this release.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.socketio.validate()?;
        if !(1..=9).contains(&self.compression.level) {
            return Err(ConfigError::new(
                "compression.level",
                "must be 1 (fastest) to 9 (smallest)",
            ));
        }
        if self.engine == EngineKind::Redis {
            if self.history_store == HistoryStore::Disk {
                return Err(ConfigError::new(
                    "history_store",
                    "\"disk\" is for the memory engine; with engine = \"redis\", Redis keeps history (see docs/scaling.md on persistence)",
                ));
            }
            // The Redis client is built without TLS; refused here, rather than when the node
            // first connects, with what to do instead.
            let tls = " is not supported: this build reaches Redis without TLS (keep Redis on a \
                       private network, or connect through a local TLS tunnel such as stunnel)";
            if self.redis_url.starts_with("rediss://") {
                return Err(ConfigError::new("redis_url", format!("rediss://{tls}")));
            }
            if self
                .redis_cluster_nodes
                .iter()
                .any(|n| n.starts_with("rediss://"))
            {
                return Err(ConfigError::new(
                    "redis_cluster_nodes",
                    format!("rediss://{tls}"),
                ));
            }
            if self.redis_prefix.is_empty() || self.redis_prefix.contains(['{', '}']) {
                return Err(ConfigError::new(
                    "redis_prefix",
                    "must not be empty nor contain { or }",
                ));
            }
            if self.redis_presence_ttl < Duration::from_secs(1) {
                return Err(ConfigError::new("redis_presence_ttl", "at least 1s"));
            }
            if self.redis_timeout.is_zero() {
                return Err(ConfigError::new("redis_timeout", "must be more than 0"));
            }
        }
        if self.history_store == HistoryStore::Disk && self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "data_dir",
                "required with history_store = \"disk\"",
            ));
        }
        match self.auth.jwt_algorithm {
            JwtAlgorithm::HS256 => match &self.auth.jwt_secret {
                None => {
                    return Err(ConfigError::new(
                        "auth.jwt_secret",
                        "required with jwt_algorithm = \"HS256\"",
                    ))
                }
                Some(s) if s.len() < 16 => {
                    return Err(ConfigError::new(
                        "auth.jwt_secret",
                        "too short: use at least 16 bytes (herald init makes a 43-byte one)",
                    ))
                }
                Some(_) => {}
            },
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                if self.auth.jwt_public_key_file.is_none() {
                    return Err(ConfigError::new(
                        "auth.jwt_public_key_file",
                        "required with jwt_algorithm = \"RS256\" or \"ES256\"",
                    ));
                }
            }
        }
        if self.api.keys.is_empty() {
            return Err(ConfigError::new(
                "api.keys",
                "at least one API key is required",
            ));
        }
        if let Some(short) = self.api.keys.iter().find(|k| k.len() < 16) {
            let _ = short;
            return Err(ConfigError::new(
                "api.keys",
                "every key must be at least 16 bytes",
            ));
        }
        if !self.admin.password.is_empty() && self.admin.password.len() < MIN_ADMIN_PASSWORD {
            return Err(ConfigError::new(
                "admin.password",
                format!(
                    "too short: use at least {MIN_ADMIN_PASSWORD} bytes, or leave it empty to \
                     sign in with an API key"
                ),
            ));
        }
        let l = &self.limits;
        let positive: [(&str, u64); 12] = [
            ("limits.commands_burst", l.commands_burst.into()),
            ("limits.max_frame_bytes", l.max_frame_bytes as u64),
            ("limits.commands_per_minute", l.commands_per_minute.into()),
            (
                "limits.subscriptions_per_connection",
                l.subscriptions_per_connection as u64,
            ),
            ("limits.connections_per_user", l.connections_per_user as u64),
            (
                "limits.connections_per_ip_per_second",
                l.connections_per_ip_per_second.into(),
            ),
            ("limits.max_connections", l.max_connections as u64),
            ("limits.outbound_queue_bytes", l.outbound_queue_bytes as u64),
            ("limits.max_api_body_bytes", l.max_api_body_bytes as u64),
            (
                "limits.heartbeat_interval",
                l.heartbeat_interval.as_millis() as u64,
            ),
            (
                "sse.heartbeat_interval",
                self.sse.heartbeat_interval.as_millis() as u64,
            ),
            (
                "api.idempotency_window",
                self.api.idempotency_window.as_millis() as u64,
            ),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::new(*key, "must be greater than zero"));
        }
        if l.outbound_queue_bytes < l.max_frame_bytes {
            return Err(ConfigError::new(
                "limits.outbound_queue_bytes",
                "must be at least limits.max_frame_bytes, or no large message could be queued",
            ));
        }
        if l.handshake_timeout.is_zero() {
            return Err(ConfigError::new(
                "limits.handshake_timeout",
                "must be greater than zero",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let key = format!("namespace[{i}].name");
            if !seen.insert(ns.name.as_str()) {
                return Err(ConfigError::new(
                    key,
                    format!("{:?} is configured twice", ns.name),
                ));
            }
            let valid = ns.name == "*"
                || (!ns.name.is_empty()
                    && !ns.name.contains(':')
                    && herald_core::ChannelName::parse(&ns.name).is_ok());
            if !valid {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "{:?} is not a namespace name (channel characters, no ':'; or \"*\")",
                        ns.name
                    ),
                ));
            }
            if ns.name == herald_core::channel::PERSONAL_NAMESPACE
                && ns.subscribe != SubscribePolicy::Personal
            {
                return Err(ConfigError::new(
                    format!("namespace[{i}].subscribe"),
                    "the \"user\" namespace holds personal channels and must be \"personal\"",
                ));
            }
            if ns.subscribe == SubscribePolicy::Proxy && self.proxy.subscribe_url.is_none() {
                return Err(ConfigError::new(
                    format!("namespace[{i}].subscribe"),
                    "\"proxy\" needs proxy.subscribe_url",
                ));
            }
            if ns.publish_proxy && (!ns.publish || self.proxy.publish_url.is_none()) {
                return Err(ConfigError::new(
                    format!("namespace[{i}].publish_proxy"),
                    "needs publish = true and proxy.publish_url",
                ));
            }
            if ns.join_leave && !ns.presence {
                return Err(ConfigError::new(
                    format!("namespace[{i}].join_leave"),
                    "needs presence = true (join/leave events are sent only while the \
                     channel's presence count is at most join_leave_max_members)",
                ));
            }
        }
        self.proxy.validate()?;
        self.webhooks.validate(self.engine)
    }

    /// The namespace table for the hub.
    pub fn namespace_policies(&self) -> Vec<NamespacePolicy> {
        self.namespaces
            .iter()
            .map(NamespaceConfig::policy)
            .collect()
    }
}

impl ProxyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let urls = [
            ("proxy.connect_url", &self.connect_url),
            ("proxy.subscribe_url", &self.subscribe_url),
            ("proxy.publish_url", &self.publish_url),
        ];
        for (key, url) in urls {
            let Some(url) = url else { continue };
            match url.split_once("://") {
                Some(("http", rest)) if !rest.is_empty() => {}
                Some(("https", _)) => {
                    return Err(ConfigError::new(
                        key,
                        "https is not supported for hooks: call the backend over http on the \
                         private network (or through a local TLS proxy)",
                    ))
                }
                _ => {
                    return Err(ConfigError::new(
                        key,
                        format!("{url:?} is not an http:// URL"),
                    ))
                }
            }
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "proxy.timeout",
                "must be more than zero and at most 60s",
            ));
        }
        for name in &self.forward_headers {
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    "proxy.forward_headers",
                    format!("{name:?} is not a header name"),
                ));
            }
        }
        Ok(())
    }
}

impl NamespaceConfig {
    pub fn new(name: &str) -> Self {
        NamespaceConfig {
            name: name.into(),
            subscribe: SubscribePolicy::Public,
            publish: false,
            publish_proxy: false,
            presence: false,
            join_leave: false,
            join_leave_max_members: default_join_leave_max_members(),
            typing: false,
            history_size: 0,
            history_ttl: default_history_ttl(),
        }
    }

    fn policy(&self) -> NamespacePolicy {
        NamespacePolicy {
            name: self.name.clone(),
            subscribe: self.subscribe,
            publish: self.publish,
            publish_proxy: self.publish_proxy,
            presence: self.presence,
            join_leave: self.join_leave,
            join_leave_max_members: self.join_leave_max_members,
            typing: self.typing,
            history_size: self.history_size,
            history_ttl: self.history_ttl,
        }
    }
}

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        if !name.starts_with("HERALD_") || ENV_OTHER.contains(&name.as_str()) {
            continue;
        }
        let Some((_, section, key, kind)) = ENV_KEYS.iter().find(|(n, ..)| *n == name) else {
            return Err(ConfigError::new(
                name,
                "not a Herald setting (see docs/configuration.md)",
            ));
        };
        let parsed = match kind {
            Kind::Text => toml::Value::String(value),
            Kind::Integer => toml::Value::Integer(value.trim().parse().map_err(|_| {
                ConfigError::new(name.clone(), format!("{value:?} is not a whole number"))
            })?),
            Kind::Bool => toml::Value::Boolean(match value.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(ConfigError::new(
                        name.clone(),
                        format!("{value:?} is not true or false"),
                    ))
                }
            }),
            Kind::List => toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            ),
        };
        let target = match section {
            None => &mut *table,
            Some(section) => {
                let entry = table
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                match entry {
                    toml::Value::Table(t) => t,
                    _ => return Err(ConfigError::new(*section, "must be a table")),
                }
            }
        };
        target.insert(key.to_string(), parsed);
    }
    Ok(())
}

/// A random 32-byte secret, base64url without padding (43 characters).
pub fn fresh_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The commented configuration `herald init` writes, with fresh secrets.
pub fn init_template() -> String {
    INIT_TEMPLATE
        .replace("@JWT_SECRET@", &fresh_secret())
        .replace("@API_KEY@", &fresh_secret())
        .replace("@WEBHOOK_SECRET@", &fresh_secret())
}

const INIT_TEMPLATE: &str = r#"# Herald configuration. Every key can be overridden by an environment variable
# HERALD_<SECTION>_<KEY>, e.g. HERALD_LISTEN or HERALD_LIMITS_MAX_FRAME_BYTES.
# The reference for every key is docs/configuration.md.

listen = "127.0.0.1:8000"            # address for WebSocket, API and metrics
engine = "memory"                    # single node, everything in memory; "redis": many nodes
                                     # as one (docs/scaling.md)
# redis_url = "redis://127.0.0.1:6379"   # user:password@ for ACLs; no TLS (rediss://) in this release
# redis_cluster_nodes = ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]  # wins over redis_url
# redis_prefix = "herald"            # every key and pub/sub subject starts with it
# redis_presence_ttl = "30s"         # a killed node's connections leave presence within this
# redis_timeout = "2s"               # the longest any Redis call may take
# node_name = "herald-1"             # in /api/stats; default: host name and port
history_store = "memory"             # "disk": history, offsets and epochs survive restarts
data_dir = "./herald-data"           # where "disk" keeps history.redb
# Origins allowed to open a WebSocket or call the API from a browser.
# Empty: same-origin pages and non-browser clients only. "*" allows any origin.
allowed_origins = []

[auth]
jwt_algorithm = "HS256"              # or "RS256" / "ES256" with jwt_public_key_file
jwt_secret = "@JWT_SECRET@"
# jwt_public_key_file = "jwt-public.pem"
# jwt_audience = "my-app"            # tokens must carry this aud
# jwt_issuer = "https://auth.example.com"
jwt_leeway = "5s"                    # clock skew tolerated on exp

[api]
# Backends send "Authorization: Bearer <key>". Several keys allow rotation.
keys = ["@API_KEY@"]
idempotency_window = "5m"            # a publish retried with the same idempotency_key within
                                     # this window returns the first result, publishes nothing

[sse]
heartbeat_interval = "15s"           # ": ping" comment on an idle /sse stream
retry = "3s"                         # the retry: hint sent to EventSource

[compression]
# permessage-deflate (RFC 7692) on WebSocket connections whose client offers it. A publication is
# compressed once and shared by every such subscriber; no zlib state is kept per connection.
enabled = true
threshold = 256                      # messages shorter than this (bytes) go uncompressed
level = 6                            # 1 (fastest) to 9 (smallest)

[limits]
max_frame_bytes = 65536              # larger client frame: close 4009
commands_per_minute = 100            # per connection, sustained (token bucket) ...
commands_burst = 20                  # ... plus this burst; over it: error rate_limited, then 4008
subscriptions_per_connection = 128   # beyond: error limit_exceeded
connections_per_user = 16            # per node; the next one is closed with 4011
connections_per_ip_per_second = 100  # new connections; over it: HTTP 429
# max_connections = 10000            # open WebSocket and SSE connections on this node; over it:
                                     # HTTP 503. Default: the file-descriptor limit less 5%
                                     # (at least 64 kept for the rest of the node)
trusted_proxies = []                 # CIDRs whose X-Forwarded-For is believed
handshake_timeout = "10s"            # HTTP request headers; on /ws, upgrade to auth frame
heartbeat_interval = "25s"           # server ping; silent for over two intervals: dropped (4012)
outbound_queue_bytes = 1048576       # per connection; a client that falls further behind: 4010
shutdown_drain = "10s"               # SIGTERM: 1012 disconnects spread over this window
max_api_body_bytes = 8388608         # largest HTTP API request body

[proxy]
# The backend's hooks (docs/hooks.md): HTTP POST with JSON, each optional.
# connect_url = "http://127.0.0.1:3000/herald/connect"     # clients that bring no token
# subscribe_url = "http://127.0.0.1:3000/herald/subscribe" # namespaces with subscribe = "proxy"
# publish_url = "http://127.0.0.1:3000/herald/publish"     # namespaces with publish_proxy = true
timeout = "3s"                       # no answer in time: refused with unavailable
forward_headers = ["cookie"]         # request headers passed on to the hooks

[webhooks]
# Events posted to the backend in signed JSON batches (docs/webhooks.md). Empty url: off.
url = ""                             # e.g. "http://127.0.0.1:3000/herald/events"
secret = "@WEBHOOK_SECRET@"          # X-Herald-Signature: sha256=<HMAC-SHA256 of the body>
# events = ["user_online", "user_offline", "channel_occupied", "channel_vacated",
#           "presence_join", "presence_leave"]     # the types sent; default: all
grace = "5s"                         # user_offline / channel_vacated wait this long, so that a
                                     # page reload sends nothing (at least 1s with redis)
timeout = "5s"                       # each request; past it the batch is retried with backoff
queue_size = 10000                   # events waiting; when full, new events are dropped
batch_size = 100                     # events per request
max_attempts = 10                    # tries per batch (0.5s doubling to 30s between them)
pending_size = 100000                # users and channels in their grace period, at most

[socketio]
# socket.io-client v4 apps connect to /socket.io/ unchanged (docs/socketio.md).
enabled = true
namespaces = ["/"]                   # each one a client may connect to, e.g. ["/", "/ws"]
ping_interval = "25s"                # Engine.IO heartbeat ...
ping_timeout = "20s"                 # ... and how long a ping may go unanswered
# An app's own events mapped onto commands, so that its client code needs no change:
# [[socketio.event]]
# name = "subscribe:site"            # socket.emit('subscribe:site', {siteId: 1})
# subscribe = "site:{siteId}"        # subscribes to site:1
# reply = "subscribed"               # and emits 'subscribed' back with {channel}
# [[socketio.event]]
# name = "ping"
# reply = "pong"                     # answered with {ts}

[admin]
# The admin page at /admin (docs/admin.md). Unset: served only when listen is a loopback
# address; true: served on any address (put it behind TLS); false: never served.
# enabled = true
# Signs in to the page besides any API key; empty: API keys only. At least 12 bytes.
password = ""

# Each user's personal channel user:{sub} exists without configuration.

[[namespace]]
name = "chat"                        # channels "chat:*"
subscribe = "public"                 # public | personal | claims | proxy
publish = true                       # clients may publish (publish_proxy = true: ask the backend)
presence = true                      # who is here: the presence command and API
join_leave = true                    # join/leave events to the other subscribers ...
join_leave_max_members = 100         # ... while the channel has at most this many connections
typing = true                        # typing events, at most one per user per channel per second
history_size = 100                   # publications kept for recovery and the history command
history_ttl = "1h"                   # ... and for at most this long

[[namespace]]
name = "site"
subscribe = "claims"                 # the token's "channels" claim must match, e.g. ["site:7"]

# A namespace named "*" covers every namespace not configured by name.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_init_template_is_a_valid_config() {
        let config = Config::from_toml(&init_template()).expect("valid");
        assert_eq!(config.namespaces.len(), 2);
        assert_eq!(config.limits.max_frame_bytes, 65536);
        assert!(!config.webhooks.enabled(), "off until a url is set");
        assert_eq!(config.webhooks.events.len(), 6, "every type by default");
        assert!(config.webhooks.secret.len() >= 16, "a fresh secret");
    }

    #[test]
    fn environment_overrides_keys() {
        let mut path = std::env::temp_dir();
        path.push(format!("herald-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, init_template()).expect("write");
        let config = Config::load(
            Some(&path),
            env(&[
                ("HERALD_LISTEN", "0.0.0.0:9000"),
                ("HERALD_API_KEYS", "0123456789abcdef, fedcba9876543210"),
                ("HERALD_LIMITS_MAX_FRAME_BYTES", "1024"),
                ("HERALD_LIMITS_HEARTBEAT_INTERVAL", "5s"),
                ("HERALD_WEBHOOKS_URL", "http://127.0.0.1:3000/events"),
                ("HERALD_WEBHOOKS_EVENTS", "user_online, user_offline"),
                ("HERALD_WEBHOOKS_GRACE", "2s"),
                ("HERALD_WEBHOOKS_QUEUE_SIZE", "50"),
                ("HERALD_AUTH_JWT_SECRET", "12345678901234567890"),
                ("HERALD_LOG", "debug"),
                ("PATH", "/bin"),
            ]),
        )
        .expect("valid");
        std::fs::remove_file(&path).ok();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.api.keys.len(), 2);
        assert_eq!(config.limits.max_frame_bytes, 1024);
        assert_eq!(config.limits.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(config.webhooks.url, "http://127.0.0.1:3000/events");
        assert_eq!(config.webhooks.events, ["user_online", "user_offline"]);
        assert_eq!(config.webhooks.grace, Duration::from_secs(2));
        assert_eq!(config.webhooks.queue_size, 50);
        assert_eq!(
            config.auth.jwt_secret.as_deref(),
            Some("12345678901234567890")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let base = init_template();
        let cases = [
            (
                base.replace("max_frame_bytes = 65536", "max_frame_bytes = \"big\""),
                "max_frame_bytes",
            ),
            (
                base.replace(
                    "handshake_timeout = \"10s\"",
                    "handshake_timeout = \"soon\"",
                ),
                "handshake_timeout",
            ),
            (
                base.replace("commands_burst = 20", "commands_burst = 20\nbogus = 1"),
                "bogus",
            ),
            (
                base.replace("engine = \"memory\"", "engine = \"disk\""),
                "engine",
            ),
            (
                base.replace("engine = \"memory\"", "engine = \"redis\"")
                    .replace("history_store = \"memory\"", "history_store = \"disk\""),
                "history_store",
            ),
            (
                base.replace("# redis_prefix = \"herald\"", "redis_prefix = \"{x}\"")
                    .replace("engine = \"memory\"", "engine = \"redis\""),
                "redis_prefix",
            ),
            (
                base.replace(
                    "# redis_url = \"redis://127.0.0.1:6379\"",
                    "redis_url = \"rediss://10.0.0.1:6380\"",
                )
                .replace("engine = \"memory\"", "engine = \"redis\""),
                "redis_url",
            ),
            (
                base.replace("subscribe = \"claims\"", "subscribe = \"sometimes\""),
                "sometimes",
            ),
            (
                base.replace("connections_per_user = 16", "connections_per_user = 0"),
                "limits.connections_per_user",
            ),
            (
                base.replace("# max_connections = 10000", "max_connections = 0"),
                "limits.max_connections",
            ),
            (
                base.replace("# max_connections = 10000", "max_connections = -1"),
                "max_connections",
            ),
            (
                base.replace("name = \"site\"", "name = \"chat\""),
                "namespace[1].name",
            ),
            (
                base.replace("subscribe = \"claims\"", "subscribe = \"proxy\""),
                "proxy.subscribe_url",
            ),
            (
                base.replace("presence = true", "presence = false"),
                "namespace[0].join_leave",
            ),
            (
                base.replace("publish = true", "publish = true\npublish_proxy = true"),
                "namespace[0].publish_proxy",
            ),
            (
                base.replace(
                    "timeout = \"3s\"",
                    "timeout = \"3s\"\nsubscribe_url = \"https://backend/hook\"",
                ),
                "proxy.subscribe_url",
            ),
            (
                base.replace(
                    "timeout = \"3s\"",
                    "timeout = \"3s\"\nconnect_url = \"backend:3000\"",
                ),
                "proxy.connect_url",
            ),
            (
                base.replace("timeout = \"3s\"", "timeout = \"0s\""),
                "proxy.timeout",
            ),
            (
                base.replace("password = \"\"", "password = \"short\""),
                "admin.password",
            ),
            (
                base.replace("# enabled = true", "enabled = \"yes\""),
                "admin.enabled",
            ),
            (
                base.replace(
                    "forward_headers = [\"cookie\"]",
                    "forward_headers = [\"bad header\"]",
                ),
                "proxy.forward_headers",
            ),
            (
                base.replace("url = \"\"", "url = \"backend:3000/events\""),
                "webhooks.url",
            ),
            (
                base.replace("url = \"\"", "url = \"https://backend/events\""),
                "webhooks.url",
            ),
            (
                base.replace("url = \"\"", "url = \"http://backend/events\"")
                    .replace("grace = \"5s\"", "grace = \"soon\""),
                "grace",
            ),
            (
                base.replace("url = \"\"", "url = \"http://backend/events\"")
                    .replace("grace = \"5s\"", "grace = \"500ms\"")
                    .replace("engine = \"memory\"", "engine = \"redis\""),
                "webhooks.grace",
            ),
            (
                base.replace("url = \"\"", "url = \"http://backend/events\"")
                    .replace("timeout = \"5s\"", "timeout = \"0s\""),
                "webhooks.timeout",
            ),
            (
                base.replace(
                    "# events = [\"user_online\"",
                    "events = [\"user_online\", \"user_away\"]\n# x = [\"user_online\"",
                ),
                "webhooks.events",
            ),
            (
                base.replace("url = \"\"", "url = \"http://backend/events\"")
                    .replace("\nsecret = \"", "\nsecret = \"short\"\n# \""),
                "webhooks.secret",
            ),
            (
                base.replace("url = \"\"", "url = \"http://backend/events\"")
                    .replace("queue_size = 10000", "queue_size = 0"),
                "webhooks.queue_size",
            ),
            (
                base.replace("namespaces = [\"/\"]", "namespaces = [\"ws\"]"),
                "socketio.namespaces",
            ),
            (
                base.replace("namespaces = [\"/\"]", "namespaces = [\"/\", \"/\"]"),
                "socketio.namespaces",
            ),
            (
                base.replace("namespaces = [\"/\"]", "namespaces = []"),
                "socketio.namespaces",
            ),
            (
                base.replace("ping_timeout = \"20s\"", "ping_timeout = \"0s\""),
                "socketio.ping_interval",
            ),
            (
                format!("{base}\n[[socketio.event]]\nname = \"disconnect\"\n"),
                "socketio.event[0].name",
            ),
            (
                format!("{base}\n[[socketio.event]]\nname = \"subscribe\"\n"),
                "socketio.event[0].name",
            ),
            (
                format!(
                    "{base}\n[[socketio.event]]\nname = \"a\"\n[[socketio.event]]\nname = \"a\"\n"
                ),
                "socketio.event[1].name",
            ),
            (
                format!("{base}\n[[socketio.event]]\nname = \"a\"\nsubscribe = \"site:{{id\"\n"),
                "socketio.event[0].subscribe",
            ),
            (
                format!(
                    "{base}\n[[socketio.event]]\nname = \"a\"\nsubscribe = \"x\"\nunsubscribe = \"y\"\n"
                ),
                "socketio.event[0].subscribe",
            ),
            (
                format!("{base}\n[[socketio.event]]\nname = \"a\"\nreply = \"\"\n"),
                "socketio.event[0].reply",
            ),
        ];
        for (text, needle) in cases {
            let err = Config::from_toml(&text).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle}");
        }
        let err =
            Config::load(None, env(&[("HERALD_LIMITS_MAX_FRAME_BYTE", "1")])).expect_err("typo");
        assert!(err.to_string().contains("HERALD_LIMITS_MAX_FRAME_BYTE"));
        let err = Config::load(None, env(&[("HERALD_LIMITS_MAX_FRAME_BYTES", "lots")]))
            .expect_err("not a number");
        assert!(err.to_string().contains("HERALD_LIMITS_MAX_FRAME_BYTES"));
    }

    #[test]
    fn max_connections_leaves_descriptors_for_the_rest_of_the_node() {
        assert_eq!(connections_for_descriptors(1024), 960);
        assert_eq!(connections_for_descriptors(65_536), 62_260);
        assert_eq!(connections_for_descriptors(1_048_576), 996_148);
        assert_eq!(connections_for_descriptors(10), 1);
        assert!(default_max_connections() >= 1);
        assert_eq!(
            Config::default().limits.max_connections,
            default_max_connections()
        );
        let config = Config::load_development(env(&[("HERALD_LIMITS_MAX_CONNECTIONS", "3")]));
        assert_eq!(config.expect("valid").limits.max_connections, 3);
        let err = Config::load_development(env(&[("HERALD_LIMITS_MAX_CONNECTIONS", "0")]))
            .expect_err("zero")
            .to_string();
        assert!(err.contains("limits.max_connections"), "{err}");
        let text = init_template().replace("# max_connections = 10000", "max_connections = 3");
        assert_eq!(
            Config::from_toml(&text)
                .expect("valid")
                .limits
                .max_connections,
            3
        );
    }

    #[test]
    fn the_admin_page_is_on_by_default_only_on_loopback() {
        let on = |listen: &str, enabled: Option<bool>| {
            let mut config = Config::development();
            config.listen = listen.parse().expect("address");
            config.admin.enabled = enabled;
            config.admin_enabled()
        };
        assert!(on("127.0.0.1:8000", None));
        assert!(on("[::1]:8000", None));
        assert!(!on("0.0.0.0:8000", None));
        assert!(!on("10.1.2.3:8000", None));
        assert!(on("0.0.0.0:8000", Some(true)));
        assert!(!on("127.0.0.1:8000", Some(false)));
        let config = Config::load_development(env(&[
            ("HERALD_ADMIN_ENABLED", "false"),
            ("HERALD_ADMIN_PASSWORD", "a-long-enough-password"),
        ]))
        .expect("valid");
        assert!(!config.admin_enabled());
        assert_eq!(config.admin.password, "a-long-enough-password");
        let err = Config::load_development(env(&[("HERALD_ADMIN_ENABLED", "maybe")]))
            .expect_err("not a bool")
            .to_string();
        assert!(err.contains("HERALD_ADMIN_ENABLED"), "{err}");
    }

    #[test]
    fn development_config_is_valid_and_overridable() {
        Config::development().validate().expect("valid");
        let config =
            Config::load_development(env(&[("HERALD_LISTEN", "127.0.0.1:9100")])).expect("valid");
        assert_eq!(config.listen.port(), 9100);
        assert_eq!(config.namespaces[0].name, "*");
    }
}
