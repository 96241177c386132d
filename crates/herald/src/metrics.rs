//! Prometheus metrics, served as text at `/metrics`.
//!
//! Counters are atomics updated where things happen; gauges that the hub already counts
//! (connections, subscriptions, channels) are read from it at scrape time rather than kept twice.
//! `docs/configuration.md` ("Metrics") lists every series.

use std::time::Duration;

use herald_core::{CloseCode, ErrorCode, Hub};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `reason` of `herald_connections_refused_total` when the node is at
/// `limits.max_connections`.
const REFUSED_MAX_CONNECTIONS: &str = "max_connections";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabel {
    pub hook: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookNameLabel {
    pub hook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

/// Every metric Herald exports.
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    users: Gauge,
    channels: Gauge,
    subscriptions: Gauge,
    /// Connections accepted (authenticated) since start.
    pub connections_accepted: Counter,
    /// Publications accepted (HTTP API and clients).
    pub messages_in: Counter,
    /// Publications written to client sockets.
    pub messages_out: Counter,
    /// Time from a publication reaching this node to its write to a socket; one sample per write
    /// batch, for the oldest publication in it.
    pub publish_to_write: Histogram,
    /// Errors returned, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Connections closed by the server, by reason; `client_closed` when the client left.
    pub disconnects: Family<ReasonLabel, Counter>,
    /// Client connections refused because the node is at one of its limits, by reason
    /// (`max_connections`); each is counted in `errors` too.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Requests to the backend's hooks, by hook and result (`allowed`, `denied`, `unavailable`).
    pub hook_requests: Family<HookLabel, Counter>,
    /// How long the backend's hooks took to answer, by hook.
    pub hook_duration: Family<HookNameLabel, Histogram>,
    /// `typing` frames dropped by the throttle.
    pub typing_throttled: Counter,
    /// Webhook events queued for sending, by type.
    pub webhook_events: Family<TypeLabel, Counter>,
    /// Webhook events dropped, by reason (`queue_full`, `attempts_exhausted`, `pending_full`).
    pub webhook_dropped: Family<ReasonLabel, Counter>,
    /// Webhook requests, by result (`ok`, `error`, `timeout`).
    pub webhook_requests: Family<ResultLabel, Counter>,
    /// Webhook events waiting in the queue.
    pub webhook_queue: Gauge,
    /// How long webhook requests took (or took to fail).
    pub webhook_duration: Histogram,
    /// Sign-ins to the admin page, by result (`ok`, `refused`).
    pub admin_logins: Family<ResultLabel, Counter>,
    engine_link_reconnects: Counter,
    engine_links_down: Gauge,
    engine_repaired_publications: Counter,
    engine_stream_resets: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let connections = Gauge::default();
        let users = Gauge::default();
        let channels = Gauge::default();
        let subscriptions = Gauge::default();
        let connections_accepted = Counter::default();
        let messages_in = Counter::default();
        let messages_out = Counter::default();
        let buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let publish_to_write = Histogram::new(buckets);
        let errors = Family::<CodeLabel, Counter>::default();
        let disconnects = Family::<ReasonLabel, Counter>::default();
        let connections_refused = Family::<ReasonLabel, Counter>::default();
        let hook_requests = Family::<HookLabel, Counter>::default();
        let hook_duration = Family::<HookNameLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
        });
        let typing_throttled = Counter::default();
        let webhook_events = Family::<TypeLabel, Counter>::default();
        let webhook_dropped = Family::<ReasonLabel, Counter>::default();
        let webhook_requests = Family::<ResultLabel, Counter>::default();
        let webhook_queue = Gauge::default();
        let webhook_duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        for kind in crate::webhooks::EventType::ALL {
            let _ = webhook_events.get_or_create(&TypeLabel {
                r#type: kind.as_str(),
            });
        }
        for reason in crate::webhooks::DROP_REASONS {
            let _ = webhook_dropped.get_or_create(&ReasonLabel { reason });
        }
        for result in crate::webhooks::REQUEST_RESULTS {
            let _ = webhook_requests.get_or_create(&ResultLabel { result });
        }
        let admin_logins = Family::<ResultLabel, Counter>::default();
        for result in ["ok", "refused"] {
            let _ = admin_logins.get_or_create(&ResultLabel { result });
        }
        for code in ErrorCode::ALL {
            let _ = errors.get_or_create(&CodeLabel {
                code: code.as_str(),
            });
        }
        for code in CloseCode::ALL {
            let _ = disconnects.get_or_create(&ReasonLabel {
                reason: code.label(),
            });
        }
        let _ = disconnects.get_or_create(&ReasonLabel {
            reason: "client_closed",
        });
        let _ = connections_refused.get_or_create(&ReasonLabel {
            reason: REFUSED_MAX_CONNECTIONS,
        });

        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        registry.register("users", "Distinct users connected", users.clone());
        registry.register(
            "channels",
            "Channels with subscribers on this node",
            channels.clone(),
        );
        registry.register(
            "subscriptions",
            "Channel subscriptions on this node",
            subscriptions.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections authenticated since start",
            connections_accepted.clone(),
        );
        registry.register("messages_in", "Publications accepted", messages_in.clone());
        registry.register(
            "messages_out",
            "Publications written to client sockets",
            messages_out.clone(),
        );
        registry.register(
            "publish_to_write_seconds",
            "Time from a publication reaching this node to its write to a socket",
            publish_to_write.clone(),
        );
        registry.register(
            "errors",
            "Errors returned to clients and API callers, by code",
            errors.clone(),
        );
        registry.register(
            "disconnects",
            "Connections closed, by reason",
            disconnects.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections refused because the node is at its limits, by reason",
            connections_refused.clone(),
        );
        registry.register(
            "hook_requests",
            "Requests to the backend's hooks, by hook and result",
            hook_requests.clone(),
        );
        registry.register(
            "hook_duration_seconds",
            "Time the backend's hooks took to answer (or to fail)",
            hook_duration.clone(),
        );
        registry.register(
            "typing_throttled",
            "typing frames dropped by the one-per-second throttle",
            typing_throttled.clone(),
        );
        registry.register(
            "admin_logins",
            "Sign-ins to the admin page, by result",
            admin_logins.clone(),
        );

        registry.register(
            "webhook_events",
            "Webhook events queued for sending, by type",
            webhook_events.clone(),
        );
        registry.register(
            "webhook_events_dropped",
            "Webhook events dropped, by reason (queue_full, attempts_exhausted, pending_full)",
            webhook_dropped.clone(),
        );
        registry.register(
            "webhook_requests",
            "Webhook requests to the backend, by result (ok, error, timeout)",
            webhook_requests.clone(),
        );
        registry.register(
            "webhook_queue_events",
            "Webhook events waiting in the queue",
            webhook_queue.clone(),
        );
        registry.register(
            "webhook_duration_seconds",
            "Time webhook requests took (or took to fail)",
            webhook_duration.clone(),
        );

        let engine_link_reconnects = Counter::default();
        let engine_links_down = Gauge::default();
        let engine_repaired_publications = Counter::default();
        let engine_stream_resets = Counter::default();
        registry.register(
            "engine_link_reconnects",
            "Times a link to the other nodes (a Redis pub/sub connection) came back after a loss",
            engine_link_reconnects.clone(),
        );
        registry.register(
            "engine_links_down",
            "Links to the other nodes that are down now",
            engine_links_down.clone(),
        );
        registry.register(
            "engine_repaired_publications",
            "Publications a link missed while down and delivered from history afterwards",
            engine_repaired_publications.clone(),
        );
        registry.register(
            "engine_stream_resets",
            "Channels whose subscribers were told recovered:false because history no longer held what a link missed",
            engine_stream_resets.clone(),
        );

        Metrics {
            registry,
            engine_link_reconnects,
            engine_links_down,
            engine_repaired_publications,
            engine_stream_resets,
            connections,
            users,
            channels,
            subscriptions,
            connections_accepted,
            messages_in,
            messages_out,
            publish_to_write,
            errors,
            disconnects,
            connections_refused,
            hook_requests,
            hook_duration,
            typing_throttled,
            webhook_events,
            webhook_dropped,
            webhook_requests,
            webhook_queue,
            webhook_duration,
            admin_logins,
        }
    }

    /// Counts a sign-in to the admin page: `ok` or `refused`.
    pub fn admin_login(&self, result: &'static str) {
        self.admin_logins
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn observe_hook(&self, hook: &'static str, result: &'static str, took: Duration) {
        self.hook_requests
            .get_or_create(&HookLabel { hook, result })
            .inc();
        self.hook_duration
            .get_or_create(&HookNameLabel { hook })
            .observe(took.as_secs_f64());
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    pub fn disconnect(&self, reason: &'static str) {
        self.disconnects
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a connection refused because the node is at `limits.max_connections`.
    pub fn refused_max_connections(&self) {
        self.connections_refused
            .get_or_create(&ReasonLabel {
                reason: REFUSED_MAX_CONNECTIONS,
            })
            .inc();
    }

    pub fn observe_write(&self, oldest: Duration) {
        self.publish_to_write.observe(oldest.as_secs_f64());
    }

    /// The Prometheus text exposition, with gauges read from `hub`.
    pub fn render(&self, hub: &Hub) -> String {
        let snapshot = hub.snapshot();
        self.connections.set(snapshot.connections as i64);
        self.users.set(snapshot.users as i64);
        self.channels.set(snapshot.channels as i64);
        self.subscriptions.set(snapshot.subscriptions as i64);
        let engine = hub.engine().counters();
        // The engine counts; these follow it (a counter only goes up, by the difference).
        let follow = |counter: &Counter, value: u64| {
            counter.inc_by(value.saturating_sub(counter.get()));
        };
        follow(&self.engine_link_reconnects, engine.link_reconnects);
        follow(
            &self.engine_repaired_publications,
            engine.repaired_publications,
        );
        follow(&self.engine_stream_resets, engine.stream_resets);
        self.engine_links_down.set(engine.links_down as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
