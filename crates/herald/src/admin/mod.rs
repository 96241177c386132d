//! The admin page: `/admin`, a page for the operator (live figures and their chart, the channel
//! list, a channel inspector, a user look-up, the nodes), and the small JSON API under
//! `/admin/api` that it calls.
//!
//! Why it lives in the binary: an operator who runs `herald serve` has the page at once, with no
//! other service to deploy and nothing fetched at run time. Its files (`assets/`: plain HTML, CSS
//! and JavaScript, no build step) are compiled in with `include_str!`, so `cargo build` alone
//! produces it, and the page, the API it calls and the server are always the same version.
//!
//! Why it signs in with a cookie rather than the API's `Authorization` header: a page cannot keep
//! an API key anywhere a script injected into it could not read. The operator gives an API key
//! or `[admin] password` once ([`login`]); the server answers with a session id in an `HttpOnly`,
//! `SameSite=Strict` cookie scoped to the page's path, and a CSRF token in the body. Every request
//! that changes something (a `POST`) must carry `Content-Type: application/json`, that token in
//! `X-Herald-CSRF` (compared in constant time), and, when the browser sends an `Origin`, one that
//! names the request's `Host`. Sessions are in `session.rs`.
//!
//! What it must never do: be served where the operator did not ask for it. It is off on a listen
//! address other than loopback unless `[admin] enabled = true` ([`Config::admin_enabled`]), and
//! then `/admin` is an unknown path like any other. Nor may it change what it shows: watching a
//! channel uses the hub's [`Watch`](herald_core::hub::Watch), which is not a connection, holds no
//! subscription and enters no presence.
//!
//! Every URL the page uses is relative to where it was served, so that a Rust service that nests
//! Herald's router under a prefix of its own serves a working page there too. The page is at
//! `/admin` (`/admin/` redirects to it), its files at `/admin/assets/`, its API at `/admin/api/`.
//! The bodies of that API are written here, their single home (the page is their one reader);
//! what it shares with the server API (errors, stats, presence, history, publish, disconnect) is
//! the server API's own handler and body.
//!
//! [`Config::admin_enabled`]: crate::config::Config::admin_enabled

pub mod session;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, OriginalUri, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use herald_core::hub::{Subscribed, Watch, Watched};
use herald_core::protocol::{Empty, HistoryResult, PresenceResult, Stats};
use herald_core::publication::WireFormat;
use herald_core::{protocol, ChannelName, ErrorCode, HeraldError, StreamPosition};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use subtle::{Choice, ConstantTimeEq};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{
    self, counted, ApiError, ApiPath, ApiQuery, DisconnectBody, HistoryParams, JsonBody,
    PresenceParams, PublishBody,
};
use crate::config::Config;
use crate::openapi::{AdminErrors, AssetErrors, LoginErrors, MethodErrors};
use crate::server::App;

use session::Sessions;

/// The session cookie's name.
pub const COOKIE: &str = "herald_admin";

/// The header that carries the CSRF token on every `POST`.
pub const CSRF_HEADER: &str = "x-herald-csrf";

/// How often the figures are sampled for the chart.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Samples kept: ten minutes at [`SAMPLE_EVERY`].
pub const SAMPLES_KEPT: usize = 300;

/// How long a refused sign-in waits before it answers, so that guessing costs time.
const REFUSED_SIGN_IN_DELAY: Duration = Duration::from_millis(250);

/// The channel list's page size when the page asks for none, and the largest it may ask for.
const CHANNEL_PAGE: usize = 50;
const CHANNEL_PAGE_MAX: usize = 500;

/// How often a watch stream checks that its session is still open.
const WATCH_SESSION_CHECK: Duration = Duration::from_secs(5);

const PAGE_HTML: &str = include_str!("assets/index.html");
const PAGE_JS: &str = include_str!("assets/admin.js");
const PAGE_CSS: &str = include_str!("assets/admin.css");
const PAGE_ICON: &str = include_str!("assets/icon.svg");

/// The page's Content-Security-Policy: its own files only; no inline script or style, no frame.
const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the admin page keeps on this node: the sign-in sessions and the figures' recent samples.
#[derive(Default)]
pub struct AdminState {
    /// The sign-in sessions.
    pub sessions: Sessions,
    /// The last [`SAMPLES_KEPT`] samples, oldest first.
    samples: Mutex<VecDeque<Sample>>,
}

/// The node's figures at one instant, with the rates since the sample before.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Sample {
    /// Unix time, milliseconds.
    pub at: u64,
    pub connections: usize,
    pub users: usize,
    pub channels: usize,
    /// Publications accepted per second since the sample before.
    pub messages_in_per_s: f64,
    /// Publications written to clients per second since the sample before.
    pub messages_out_per_s: f64,
}

impl AdminState {
    /// The samples taken after `after` (Unix milliseconds), oldest first.
    pub fn samples_after(&self, after: u64) -> Vec<Sample> {
        self.samples
            .lock()
            .iter()
            .filter(|s| s.at > after)
            .copied()
            .collect()
    }

    fn record(&self, sample: Sample) {
        let mut samples = self.samples.lock();
        if samples.len() >= SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

/// Samples the node's figures every [`SAMPLE_EVERY`] into the ring the chart reads, so that the
/// chart is full when the page opens. `server::run` runs it while the page is served.
pub async fn sample(app: App) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(tokio::time::Instant, u64, u64)> = None;
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let node = app.hub.snapshot();
        let (messages_in, messages_out) = (
            app.metrics.messages_in.get(),
            app.metrics.messages_out.get(),
        );
        let rate = |now_count: u64, then_count: u64, since: tokio::time::Instant| {
            let seconds = now.duration_since(since).as_secs_f64();
            if seconds > 0.0 {
                now_count.saturating_sub(then_count) as f64 / seconds
            } else {
                0.0
            }
        };
        let (in_per_s, out_per_s) = match last {
            Some((since, then_in, then_out)) => (
                rate(messages_in, then_in, since),
                rate(messages_out, then_out, since),
            ),
            None => (0.0, 0.0),
        };
        last = Some((now, messages_in, messages_out));
        app.admin.record(Sample {
            at: herald_core::publication::now_millis(),
            connections: node.connections,
            users: node.users,
            channels: node.channels,
            messages_in_per_s: in_per_s,
            messages_out_per_s: out_per_s,
        });
    }
}

/// The page and its files, at their paths from Herald's root.
fn page_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(to_page))
        .routes(routes!(asset))
}

/// The sign-in, the one admin API route that needs no session.
fn login_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(login))
}

/// The admin API's routes for a signed-in page.
fn signed_in_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(session))
        .routes(routes!(logout))
        .routes(routes!(stats))
        .routes(routes!(samples))
        .routes(routes!(channels))
        .routes(routes!(presence))
        .routes(routes!(history))
        .routes(routes!(watch))
        .routes(routes!(publish))
        .routes(routes!(user))
        .routes(routes!(disconnect))
}

/// The description of every admin route, for the server's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, page) = page_routes().split_for_parts();
    let (_, login) = login_routes().split_for_parts();
    let (_, signed_in) = signed_in_routes().split_for_parts();
    page.nest("/admin/api", login.merge_from(signed_in))
}

/// The admin routes with their checks, merged into Herald's router by `server::router` when
/// [`Config::admin_enabled`].
pub fn router(app: App) -> Router<App> {
    let (signed_in, _) = signed_in_routes().split_for_parts();
    let signed_in = signed_in.route_layer(from_fn_with_state(app.clone(), require_session));
    let (login, _) = login_routes().split_for_parts();
    let api = login
        .merge(signed_in)
        .method_not_allowed_fallback(api::method_not_allowed)
        .route_layer(from_fn_with_state(app.clone(), same_origin_json))
        .layer(DefaultBodyLimit::max(app.config.limits.max_api_body_bytes));
    let (page, _) = page_routes().split_for_parts();
    page.nest("/admin/api", api)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(from_fn(security_headers))
}

/// Whether `config` serves the page (see [`Config::admin_enabled`]).
pub fn enabled(config: &Config) -> bool {
    config.admin_enabled()
}

// === The page ===

/// `GET /admin`: the page.
#[utoipa::path(
    get,
    path = "/admin",
    tag = "admin",
    summary = "The admin page",
    responses((status = 200, description = "The page", content_type = "text/html", body = String), MethodErrors),
)]
async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        PAGE_HTML,
    )
        .into_response()
}

/// `GET /admin/`: to the page, whose relative URLs assume it is at `…/admin`.
#[utoipa::path(
    get,
    path = "/admin/",
    tag = "admin",
    summary = "To the admin page",
    responses((status = 308, description = "To `../admin`"), MethodErrors),
)]
async fn to_page() -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, "../admin")],
    )
        .into_response()
}

/// `GET /admin/assets/{file}`: the page's script, style sheet and icon.
#[utoipa::path(
    get,
    path = "/admin/assets/{file}",
    tag = "admin",
    summary = "The admin page's script, style sheet and icon",
    params(("file" = String, Path, description = "`admin.js`, `admin.css` or `icon.svg`")),
    responses(
        (status = 200, description = "The file", content_type = "text/javascript", body = String),
        AssetErrors,
    ),
)]
async fn asset(State(app): State<App>, ApiPath(file): ApiPath<String>) -> Response {
    let (content_type, body) = match file.as_str() {
        "admin.js" => ("text/javascript; charset=utf-8", PAGE_JS),
        "admin.css" => ("text/css; charset=utf-8", PAGE_CSS),
        "icon.svg" => ("image/svg+xml", PAGE_ICON),
        _ => return counted(&app, HeraldError::not_found("no such file")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Every answer under `/admin`: no framing, no sniffing, no referrer, and (unless it set its own,
/// as the assets do) no caching.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

// === Sign-in and the checks on every request ===

/// The session id in the request's cookies.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then_some(value)
        })
}

/// Refuses a `POST` whose body is not declared JSON, or that a browser sent from another origin
/// than the one it addresses: a form or a page elsewhere cannot make one (a cross-origin JSON
/// request needs a preflight, which no route here answers).
async fn same_origin_json(State(app): State<App>, request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        if let Err(e) = check_same_origin_json(request.headers()) {
            return counted(&app, e).into_response();
        }
    }
    next.run(request).await
}

fn check_same_origin_json(headers: &HeaderMap) -> Result<(), HeraldError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(HeraldError::bad_request(
            "the body must be JSON, sent with Content-Type: application/json",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, rest)| rest);
        let same = matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h));
        if !same {
            return Err(HeraldError::forbidden(
                "Origin does not match Host: the admin API answers its own page only",
            ));
        }
    }
    Ok(())
}

/// The signed-in session a request belongs to, for the handlers after [`require_session`].
#[derive(Clone)]
struct SessionId(std::sync::Arc<str>);

/// Every route but the sign-in: an open session (`unauthorized` otherwise) and, on a `POST`, its
/// CSRF token in `X-Herald-CSRF` (`forbidden` otherwise).
async fn require_session(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let Some(id) = session_cookie(request.headers()) else {
        let e = HeraldError::new(ErrorCode::Unauthorized, "sign in first");
        return counted(&app, e).into_response();
    };
    let Some(view) = app.admin.sessions.touch(id) else {
        let e = HeraldError::new(
            ErrorCode::Unauthorized,
            "the session has ended (signed out, expired or the server restarted): sign in again",
        );
        return counted(&app, e).into_response();
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let presented = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !view.csrf_matches(presented) {
            let e = HeraldError::forbidden("missing or wrong X-Herald-CSRF token");
            return counted(&app, e).into_response();
        }
    }
    let id = SessionId(id.into());
    request.extensions_mut().insert(id);
    next.run(request).await
}

/// Whether `presented` is one of the API keys or the admin password, each compared in constant
/// time (every one is compared, whichever matches).
fn secret_matches(config: &Config, presented: &str) -> bool {
    if presented.is_empty() {
        return false;
    }
    let presented = presented.as_bytes();
    let mut found = config.api.keys.iter().fold(Choice::from(0), |found, key| {
        found | key.as_bytes().ct_eq(presented)
    });
    let password = &config.admin.password;
    if !password.is_empty() {
        found |= password.as_bytes().ct_eq(presented);
    }
    found.into()
}

/// The sign-in's body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    /// An API key or the admin password.
    secret: String,
}

/// The answer to a sign-in and to `GET /admin/api/session`.
#[derive(Serialize, ToSchema)]
struct SessionAnswer<'a> {
    /// To send in `X-Herald-CSRF` with every `POST`.
    csrf_token: &'a str,
    /// `memory` or `redis`.
    engine: &'static str,
    /// The session ends after this long without a request.
    idle_timeout_s: u64,
    /// This node's name.
    node: &'a str,
}

impl<'a> SessionAnswer<'a> {
    fn of(app: &'a App, csrf: &'a str) -> Self {
        SessionAnswer {
            csrf_token: csrf,
            engine: app.hub.engine().name(),
            idle_timeout_s: app.admin.sessions.idle_timeout().as_secs(),
            node: &app.node_name,
        }
    }
}

/// `POST /admin/api/login` `{secret}` → `{csrf_token, engine, idle_timeout_s, node}` and the
/// session cookie; a wrong secret is `unauthorized`, after [`REFUSED_SIGN_IN_DELAY`].
#[utoipa::path(
    post,
    path = "/login",
    tag = "admin",
    summary = "Sign in to the admin page",
    request_body = LoginBody,
    responses(
        (status = 200, description = "Signed in; `Set-Cookie` holds the session", body = SessionAnswer),
        LoginErrors,
    ),
)]
async fn login(State(app): State<App>, request: Request) -> Result<Response, ApiError> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_string())
        .unwrap_or_default();
    let path = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().path(), |OriginalUri(uri)| uri.path())
        .to_string();
    let secure = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"));
    let JsonBody(body) = JsonBody::<LoginBody>::from_request(request, &app).await?;
    if !secret_matches(&app.config, &body.secret) {
        app.metrics.admin_login("refused");
        tracing::warn!(%peer, "admin sign-in refused: wrong API key or password");
        tokio::time::sleep(REFUSED_SIGN_IN_DELAY).await;
        let e = HeraldError::new(ErrorCode::Unauthorized, "wrong API key or password");
        return Err(counted(&app, e));
    }
    app.metrics.admin_login("ok");
    tracing::info!(%peer, "admin sign-in");
    let (id, view) = app.admin.sessions.open();
    let cookie = format!(
        "{COOKIE}={id}; Path={}; HttpOnly; SameSite=Strict{}",
        cookie_path(&path, "/api/login"),
        if secure { "; Secure" } else { "" }
    );
    let body = Json(SessionAnswer::of(&app, &view.csrf));
    Ok(([(header::SET_COOKIE, cookie)], body).into_response())
}

/// The cookie's `Path`: the page's own (`/admin`, or wherever a service nested Herald), from
/// the path a request to `route` (under the page) was made to.
fn cookie_path<'a>(request_path: &'a str, route: &str) -> &'a str {
    match request_path.strip_suffix(route) {
        Some(base) if base.starts_with('/') => base,
        _ => "/",
    }
}

/// `GET /admin/api/session` → the signed-in session, as the sign-in answered it (the page asks
/// when it opens, so that a reload keeps the session).
#[utoipa::path(
    get,
    path = "/session",
    tag = "admin",
    summary = "The signed-in session",
    responses((status = 200, description = "The session", body = SessionAnswer), AdminErrors),
    security(("admin_session" = [])),
)]
async fn session(
    State(app): State<App>,
    Extension(SessionId(id)): Extension<SessionId>,
) -> Result<Response, ApiError> {
    let view = app.admin.sessions.touch(&id).ok_or_else(|| {
        counted(
            &app,
            HeraldError::new(ErrorCode::Unauthorized, "the session has ended"),
        )
    })?;
    Ok(Json(SessionAnswer::of(&app, &view.csrf)).into_response())
}

/// `POST /admin/api/logout` → `{}`; ends the session and clears the cookie.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "admin",
    summary = "Sign out",
    responses((status = 200, description = "Signed out; the cookie is cleared", body = Empty), AdminErrors),
    security(("admin_session" = [], "admin_csrf" = [])),
)]
async fn logout(
    State(app): State<App>,
    Extension(SessionId(id)): Extension<SessionId>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    app.admin.sessions.close(&id);
    tracing::info!("admin sign-out");
    let cookie = format!(
        "{COOKIE}=; Path={}; HttpOnly; SameSite=Strict; Max-Age=0",
        cookie_path(uri.path(), "/api/logout")
    );
    ([(header::SET_COOKIE, cookie)], Json(protocol::empty_body())).into_response()
}

// === Figures, channels, users ===

/// The query of `GET /admin/api/samples`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SamplesQuery {
    /// Only the samples taken after this instant, Unix milliseconds.
    #[serde(default)]
    after: u64,
}

/// The chart's samples.
#[derive(Serialize, ToSchema)]
struct Samples {
    /// Seconds between samples.
    every_s: u64,
    /// Oldest first.
    samples: Vec<Sample>,
}

/// `GET /admin/api/samples?after=` → `{every_s, samples: [{at, connections, users, channels,
/// messages_in_per_s, messages_out_per_s}]}`, oldest first, those after `after` (Unix ms).
#[utoipa::path(
    get,
    path = "/samples",
    tag = "admin",
    summary = "The node's figures sampled for the chart",
    params(SamplesQuery),
    responses((status = 200, description = "The samples", body = Samples), AdminErrors),
    security(("admin_session" = [])),
)]
async fn samples(State(app): State<App>, ApiQuery(query): ApiQuery<SamplesQuery>) -> Json<Samples> {
    Json(Samples {
        every_s: SAMPLE_EVERY.as_secs(),
        samples: app.admin.samples_after(query.after),
    })
}

/// The query of `GET /admin/api/channels`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ChannelsQuery {
    /// Only channels whose name starts with this.
    #[serde(default)]
    prefix: String,
    /// Skip this many (in name order).
    #[serde(default)]
    offset: usize,
    /// At most this many; default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// One page of the channel list.
#[derive(Serialize, ToSchema)]
struct ChannelPage {
    channels: Vec<ChannelPageEntry>,
    limit: usize,
    offset: usize,
    /// Channels matching the prefix, on every page.
    total: usize,
}

/// A channel with subscribers on this node.
#[derive(Serialize, ToSchema)]
struct ChannelPageEntry {
    #[schema(value_type = ChannelName)]
    channel: ChannelName,
    subscribers: usize,
}

/// `GET /admin/api/channels?prefix=&offset=&limit=` → `{channels: [{channel, subscribers}],
/// total, offset, limit}`: one page of this node's channels whose name starts with `prefix`,
/// sorted by name.
#[utoipa::path(
    get,
    path = "/channels",
    tag = "admin",
    summary = "One page of this node's channels",
    params(ChannelsQuery),
    responses((status = 200, description = "The page", body = ChannelPage), AdminErrors),
    security(("admin_session" = [])),
)]
async fn channels(
    State(app): State<App>,
    ApiQuery(query): ApiQuery<ChannelsQuery>,
) -> Result<Json<ChannelPage>, ApiError> {
    let limit = query.limit.unwrap_or(CHANNEL_PAGE);
    if limit == 0 || limit > CHANNEL_PAGE_MAX {
        return Err(counted(
            &app,
            HeraldError::bad_request(format!("limit must be 1 to {CHANNEL_PAGE_MAX}")),
        ));
    }
    let all = app.hub.channels(&query.prefix);
    let total = all.len();
    let channels = all
        .into_iter()
        .skip(query.offset)
        .take(limit)
        .map(|c| ChannelPageEntry {
            channel: c.channel,
            subscribers: c.subscribers,
        })
        .collect();
    Ok(Json(ChannelPage {
        channels,
        limit,
        offset: query.offset,
        total,
    }))
}

/// `GET /admin/api/users/{user}` → `{user, online, connections, node, here: [{client,
/// channels}]}`: whether the user is online anywhere in the cluster and with how many
/// connections, and the connections on this node with their channels.
#[utoipa::path(
    get,
    path = "/users/{user}",
    tag = "admin",
    summary = "A user: online anywhere, and the connections on this node with their channels",
    params(("user" = String, Path, description = "The user id")),
    responses((status = 200, description = "The user", body = AdminUser), AdminErrors),
    security(("admin_session" = [])),
)]
async fn user(
    State(app): State<App>,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<AdminUser>, ApiError> {
    let everywhere = app
        .hub
        .user_connections_everywhere(&user)
        .await
        .map_err(|e| counted(&app, e))?;
    let here: Vec<UserConnection> = app
        .hub
        .user_sessions(&user)
        .into_iter()
        .map(|c| UserConnection {
            channels: c.channels,
            client: c.client,
        })
        .collect();
    // A single-node engine counts this node only; a cluster's count may trail this node's.
    let connections = everywhere.max(here.len());
    Ok(Json(AdminUser {
        connections,
        here,
        node: app.node_name.clone(),
        online: connections > 0,
        user,
    }))
}

/// A user as the admin page's look-up shows it.
#[derive(Serialize, ToSchema)]
struct AdminUser {
    /// Connections on every node.
    connections: usize,
    /// The connections on this node.
    here: Vec<UserConnection>,
    /// This node's name.
    node: String,
    online: bool,
    user: String,
}

/// One of a user's connections on this node.
#[derive(Serialize, ToSchema)]
struct UserConnection {
    #[schema(value_type = Vec<ChannelName>)]
    channels: Vec<ChannelName>,
    #[schema(value_type = String)]
    client: std::sync::Arc<str>,
}

// === What the page shares with the server API ===
//
// The same handlers and bodies as under `/api`, described again here for where they are served
// and how they are authorised (the session, not an API key).

#[utoipa::path(
    get,
    path = "/stats",
    operation_id = "admin_stats",
    tag = "admin",
    summary = "The figures, as `GET /api/stats`",
    responses((status = 200, description = "The figures", body = Stats), AdminErrors),
    security(("admin_session" = [])),
)]
async fn stats(app: State<App>) -> Result<Response, ApiError> {
    api::stats(app).await
}

#[utoipa::path(
    get,
    path = "/channels/{channel}/presence",
    operation_id = "admin_presence",
    tag = "admin",
    summary = "A channel's presence, as `GET /api/channels/{channel}/presence`",
    params(("channel" = ChannelName, Path, description = "The channel"), PresenceParams),
    responses((status = 200, description = "The presence", body = PresenceResult), AdminErrors),
    security(("admin_session" = [])),
)]
async fn presence(
    app: State<App>,
    channel: ApiPath<String>,
    params: ApiQuery<PresenceParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    api::presence(app, channel, params).await
}

#[utoipa::path(
    get,
    path = "/channels/{channel}/history",
    operation_id = "admin_history",
    tag = "admin",
    summary = "A channel's history, as `GET /api/channels/{channel}/history`",
    params(("channel" = ChannelName, Path, description = "The channel"), HistoryParams),
    responses((status = 200, description = "The history", body = HistoryResult), AdminErrors),
    security(("admin_session" = [])),
)]
async fn history(
    app: State<App>,
    channel: ApiPath<String>,
    params: ApiQuery<HistoryParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    api::history(app, channel, params).await
}

#[utoipa::path(
    post,
    path = "/publish",
    operation_id = "admin_publish",
    tag = "admin",
    summary = "Publish a test event, as `POST /api/publish`",
    request_body = PublishBody,
    responses((status = 200, description = "Published", body = StreamPosition), AdminErrors),
    security(("admin_session" = [], "admin_csrf" = [])),
)]
async fn publish(
    app: State<App>,
    body: JsonBody<PublishBody>,
) -> Result<Json<StreamPosition>, ApiError> {
    api::publish(app, body).await
}

#[utoipa::path(
    post,
    path = "/disconnect",
    operation_id = "admin_disconnect",
    tag = "admin",
    summary = "Disconnect a user, as `POST /api/disconnect`",
    request_body = DisconnectBody,
    responses((status = 200, description = "Done on every node", body = Empty), AdminErrors),
    security(("admin_session" = [], "admin_csrf" = [])),
)]
async fn disconnect(
    app: State<App>,
    body: JsonBody<DisconnectBody>,
) -> Result<Json<Empty>, ApiError> {
    api::disconnect(app, body).await
}

// === The channel inspector's stream ===

/// `GET /admin/api/channels/{channel}/watch`: Server-Sent Events of what reaches the channel
/// from now on. First `event: watching` (`{"channel"}`), then one unnamed event per item, its
/// `data:` the frame a subscriber would get (`message`, `join`, `leave`, `typing`, or
/// `subscribed` with `recovered: false` after a reset); `event: dropped` (`{"dropped"}`) when
/// the page fell behind and lost some; `event: end` when the session ended. A `: ping` comment
/// every `sse.heartbeat_interval`.
#[utoipa::path(
    get,
    path = "/channels/{channel}/watch",
    tag = "admin",
    summary = "Watch a channel live (Server-Sent Events)",
    params(("channel" = ChannelName, Path, description = "The channel")),
    responses(
        (status = 200, description = "The event stream; each event's `data` is JSON", content_type = "text/event-stream", body = serde_json::Value),
        AdminErrors,
    ),
    security(("admin_session" = [])),
)]
async fn watch(
    State(app): State<App>,
    Extension(SessionId(session)): Extension<SessionId>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let channel = ChannelName::parse(&name).map_err(|e| counted(&app, e))?;
    let watch = app
        .hub
        .watch(&channel)
        .await
        .map_err(|e| counted(&app, e))?;
    #[derive(Serialize)]
    struct Watching<'a> {
        channel: &'a ChannelName,
    }
    let mut first = String::from("retry: 3000\n\n");
    push_event(
        &mut first,
        Some("watching"),
        &serde_json::to_string(&Watching { channel: &channel }).unwrap_or_default(),
    );
    let heartbeat = app.config.sse.heartbeat_interval;
    let state = WatchStream {
        app,
        session,
        watch,
        first: Some(first),
        reported_dropped: 0,
        heartbeat: tokio::time::Instant::now() + heartbeat,
        ended: false,
    };
    Ok(crate::transport::sse::event_stream(
        futures_util::stream::unfold(state, |mut state| async move {
            let chunk = state.next_chunk().await?;
            Some((chunk, state))
        }),
    ))
}

/// One open watch stream.
struct WatchStream {
    app: App,
    session: std::sync::Arc<str>,
    watch: Watch,
    first: Option<String>,
    reported_dropped: u64,
    heartbeat: tokio::time::Instant,
    ended: bool,
}

impl WatchStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(Bytes::from(first));
        }
        if self.ended {
            return None;
        }
        loop {
            let mut chunk = String::new();
            while let Some(item) = self.watch.try_next() {
                self.render(&mut chunk, item);
            }
            let dropped = self.watch.dropped();
            if dropped > self.reported_dropped {
                self.reported_dropped = dropped;
                push_event(
                    &mut chunk,
                    Some("dropped"),
                    &format!("{{\"dropped\":{dropped}}}"),
                );
            }
            if !chunk.is_empty() {
                return Some(Bytes::from(chunk));
            }
            let check = tokio::time::sleep(WATCH_SESSION_CHECK);
            tokio::select! {
                item = self.watch.next() => match item {
                    Some(item) => self.render(&mut chunk, item),
                    None => return None,
                },
                () = check => {
                    if !self.app.admin.sessions.is_open(&self.session) {
                        self.ended = true;
                        push_event(&mut chunk, Some("end"), "{\"reason\":\"session ended\"}");
                    } else if tokio::time::Instant::now() >= self.heartbeat {
                        self.heartbeat += self.app.config.sse.heartbeat_interval;
                        chunk.push_str(": ping\n\n");
                    }
                }
            }
            if !chunk.is_empty() {
                return Some(Bytes::from(chunk));
            }
        }
    }

    fn render(&self, chunk: &mut String, item: Watched) {
        match item {
            Watched::Publication(p) => {
                let data: Bytes = p.encoded(WireFormat::ServerSentEvent, |p| {
                    Bytes::from(protocol::message(p))
                });
                push_event(chunk, None, std::str::from_utf8(&data).unwrap_or("{}"));
            }
            Watched::Event(e) => {
                let data: Bytes = e.encoded(WireFormat::ServerSentEvent, |e| {
                    Bytes::from(protocol::channel_event(e))
                });
                push_event(chunk, None, std::str::from_utf8(&data).unwrap_or("{}"));
            }
            Watched::Reset(position) => {
                let notice = Subscribed {
                    channel: self.watch.channel().clone(),
                    position,
                    recovered: Some(false),
                };
                push_event(chunk, None, &protocol::subscribed(None, &notice));
            }
        }
    }
}

/// Appends one event; `data` is one line of JSON (serde_json escapes newlines in strings).
fn push_event(chunk: &mut String, event: Option<&str>, data: &str) {
    if let Some(event) = event {
        chunk.push_str("event: ");
        chunk.push_str(event);
        chunk.push('\n');
    }
    chunk.push_str("data: ");
    chunk.push_str(data);
    chunk.push_str("\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_path_is_where_the_page_is_served() {
        assert_eq!(cookie_path("/admin/api/login", "/api/login"), "/admin");
        assert_eq!(
            cookie_path("/api/v1/realtime/admin/api/login", "/api/login"),
            "/api/v1/realtime/admin"
        );
        assert_eq!(cookie_path("/elsewhere", "/api/login"), "/");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; herald_admin=abc; b=2"),
        );
        assert_eq!(session_cookie(&headers), Some("abc"));
        headers.insert(header::COOKIE, HeaderValue::from_static("herald_admin="));
        assert_eq!(session_cookie(&headers), None);
    }

    #[test]
    fn posts_must_be_json_from_their_own_origin() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8000"));
        assert!(check_same_origin_json(&headers).is_err(), "no content type");
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(check_same_origin_json(&headers).is_ok(), "no Origin");
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8000"),
        );
        assert!(check_same_origin_json(&headers).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        let e = check_same_origin_json(&headers).expect_err("cross-origin");
        assert_eq!(e.code, ErrorCode::Forbidden);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let e = check_same_origin_json(&headers).expect_err("a form's body");
        assert_eq!(e.code, ErrorCode::BadRequest);
    }
}
