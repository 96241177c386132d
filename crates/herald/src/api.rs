//! The server HTTP API for backends: publish, broadcast, batch, disconnect, unsubscribe, and the
//! read-only views (channels, users, stats), plus `/health`, `/ready` and `/metrics`.
//!
//! Every `/api` route needs `Authorization: Bearer <api key>`, compared in constant time against
//! each configured key. Bodies are JSON; every error, on every route of the server, is
//! [`protocol::http_error`]'s `{"error":{"code","message"}}` with the status that
//! [`ErrorCode::http_status`] gives, counted in `herald_errors_total`. That includes what the
//! router and the extractors refuse: a query string or a path segment that does not parse
//! ([`ApiQuery`], [`ApiPath`]), a wrong method ([`method_not_allowed`]), an unknown path
//! ([`not_found`]). Keys are never logged.
//!
//! Handlers decide what to answer; `herald_core::protocol` spells it: every body, successful or
//! not, is built there, and nothing here names a field of one.

use std::error::Error as _;

use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::engine::HistoryQuery;
use herald_core::protocol::{
    ChannelList, Empty, HistoryResult, PresenceResult, PublishOutcome, PublishResults,
    ServerFigures, Stats, Status, UserStatus,
};
use herald_core::{protocol, ChannelName, ErrorCode, HeraldError, StreamPosition};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};

use crate::auth::bearer_token;
use crate::openapi::{
    self, ChannelErrors, KeyErrors, MethodErrors, ReadErrors, ReadyErrors, WriteErrors,
};
use crate::server::App;

/// An error answered over HTTP: [`protocol::http_error`]'s body with the code's status. Build it
/// with [`counted`], which also counts it.
#[derive(Debug)]
pub struct ApiError(pub HeraldError);

impl From<HeraldError> for ApiError {
    fn from(e: HeraldError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let content_type = [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )];
        (status, content_type, protocol::http_error(self.0)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Counts the error in metrics and turns it into a response error.
pub(crate) fn counted(app: &App, error: HeraldError) -> ApiError {
    app.metrics.error(error.code);
    ApiError(error)
}

/// The query string of a request, deserialised into `T`. One that does not parse is `bad_request`
/// naming the parameter and what is wrong with it, counted. The message is serde's, which for the
/// numbers, booleans and strings of Herald's queries never repeats the value (it may be a token).
///
/// Herald's routes take this instead of axum's `Query`, whose rejection is a `text/plain` answer
/// that bypasses the error body and the metrics. It is axum's documented way to change an
/// extractor's rejection: a wrapper type that implements `FromRequestParts` by running the
/// built-in extractor and mapping its rejection. (axum's `#[derive(FromRequestParts)]` with
/// `#[from_request(via(Query), rejection(ApiError))]` does the same, but it needs axum's `macros`
/// feature, which the server does not otherwise use.)
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<App> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        parse_query(&parts.uri)
            .map(ApiQuery)
            .map_err(|e| counted(app, e))
    }
}

/// Reads the query string of `uri` into `T`, as [`ApiQuery`] does, without counting the error:
/// for a handler that checks other things first (`/ws` checks the handshake and admits the
/// connection before it reads its query).
pub(crate) fn parse_query<T: DeserializeOwned>(uri: &Uri) -> Result<T, HeraldError> {
    Query::try_from_uri(uri)
        .map(|Query(query)| query)
        .map_err(|rejection| query_error(&rejection))
}

/// The deserialiser's error under axum's rejection: serde's own message ("invalid digit found in
/// string", "duplicate field `token`", "unknown field `x`, expected ...") and the parameter it is
/// about. Neither holds the value given.
type QueryDeError = serde_path_to_error::Error<serde_urlencoded::de::Error>;

fn query_error(rejection: &QueryRejection) -> HeraldError {
    let mut source = rejection.source();
    while let Some(error) = source {
        if let Some(e) = error.downcast_ref::<QueryDeError>() {
            let path = e.path().to_string();
            return HeraldError::bad_request(if path == "." {
                format!("invalid query string: {}", e.inner())
            } else {
                format!("invalid query parameter {path}: {}", e.inner())
            });
        }
        source = error.source();
    }
    // Should axum stop carrying the deserialiser's error there: its own text, which says the same.
    HeraldError::bad_request(format!("invalid query string: {rejection}"))
}

/// The parameters of a route's path (`{channel}`, `{user}`), deserialised into `T`. A segment that
/// is not valid UTF-8 once percent-decoded, or that does not parse, is `bad_request` naming the
/// parameter, counted. A route whose handler expects other parameters than its path has is a
/// fault of the server: `internal`. Axum's `Path`, wrapped for the reasons given at [`ApiQuery`].
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<App> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, app).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(counted(app, path_error(rejection))),
        }
    }
}

fn path_error(rejection: PathRejection) -> HeraldError {
    let PathRejection::FailedToDeserializePathParams(e) = rejection else {
        return HeraldError::internal(format!("route without path parameters: {rejection}"));
    };
    match e.into_kind() {
        ErrorKind::InvalidUtf8InPathParam { key } => HeraldError::bad_request(format!(
            "path segment {key} is not valid UTF-8 once percent-decoded"
        )),
        ErrorKind::ParseErrorAtKey {
            key, expected_type, ..
        } => HeraldError::bad_request(format!("path segment {key} is not a valid {expected_type}")),
        ErrorKind::DeserializeError { key, message, .. } => {
            HeraldError::bad_request(format!("path segment {key}: {message}"))
        }
        ErrorKind::ParseError { expected_type, .. }
        | ErrorKind::ParseErrorAtIndex { expected_type, .. } => {
            HeraldError::bad_request(format!("a path segment is not a valid {expected_type}"))
        }
        kind @ (ErrorKind::WrongNumberOfParameters { .. } | ErrorKind::UnsupportedType { .. }) => {
            HeraldError::internal(format!("route and handler disagree: {kind}"))
        }
        other => HeraldError::bad_request(format!("invalid path: {other}")),
    }
}

/// Middleware for `/api`: a valid API key or `401`.
pub async fn require_api_key(State(app): State<App>, request: Request, next: Next) -> Response {
    let presented = bearer_token(request.headers()).map(str::as_bytes);
    let valid = presented.is_some_and(|key| {
        app.config.api.keys.iter().fold(false, |found, k| {
            found | bool::from(k.as_bytes().ct_eq(key))
        })
    });
    if !valid {
        let message = if presented.is_some() {
            "API key is not valid"
        } else {
            "missing Authorization: Bearer <api key>"
        };
        return counted(&app, HeraldError::new(ErrorCode::Unauthorized, message)).into_response();
    }
    next.run(request).await
}

/// A JSON request body, read up to `limits.max_api_body_bytes`. Too large is `too_large`; anything
/// that does not parse is `bad_request` naming the field.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<App> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &App) -> Result<Self, ApiError> {
        let body = Bytes::from_request(request, app).await.map_err(|e| {
            let error = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                HeraldError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "body larger than {} bytes",
                        app.config.limits.max_api_body_bytes
                    ),
                )
            } else {
                HeraldError::bad_request(format!("cannot read body: {e}"))
            };
            counted(app, error)
        })?;
        let de = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = if path == "." {
                    format!("invalid JSON body: {inner}")
                } else {
                    format!("invalid JSON body at {path}: {inner}")
                };
                counted(app, HeraldError::bad_request(message))
            })
    }
}

fn channel(app: &App, name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(|e| counted(app, e))
}

/// One publication in a request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// The channel, `namespace:name`.
    #[schema(value_type = ChannelName)]
    channel: String,
    /// An event name for clients to dispatch on.
    event: Option<String>,
    /// Any JSON; delivered unchanged. At most `limits.max_frame_bytes`.
    #[schema(value_type = serde_json::Value)]
    data: Box<RawValue>,
    /// A publish retried with the same key (within `api.idempotency_window`) is not published
    /// again; the answer is the first one's.
    idempotency_key: Option<String>,
}

/// Publishes one publication as every caller does (the API's routes, and a service embedding
/// Herald through [`crate::Herald::publish`]): the channel checked, `data` within
/// `limits.max_frame_bytes`, the publication counted.
pub(crate) async fn publish_one(
    app: &App,
    channel_name: &str,
    event: Option<String>,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
) -> Result<StreamPosition, HeraldError> {
    let channel = ChannelName::parse(channel_name)?;
    let limit = app.config.limits.max_frame_bytes;
    if data.get().len() > limit {
        return Err(HeraldError::new(
            ErrorCode::TooLarge,
            format!(
                "data is {} bytes; at most {limit} allowed",
                data.get().len()
            ),
        ));
    }
    let position = app
        .hub
        .publish(channel, event, data, idempotency_key)
        .await?;
    app.metrics.messages_in.inc();
    Ok(position)
}

/// One publication's outcome in a broadcast or batch; a refused one is counted.
fn outcome(
    app: &App,
    channel: String,
    result: Result<StreamPosition, HeraldError>,
) -> PublishOutcome {
    if let Err(e) = &result {
        app.metrics.error(e.code);
    }
    PublishOutcome::new(channel, result)
}

/// `POST /api/publish` → `{offset, epoch}`.
#[utoipa::path(
    post,
    path = "/publish",
    tag = "publish",
    summary = "Publish to one channel",
    request_body = PublishBody,
    responses((status = 200, description = "Published at this place in the channel's stream", body = StreamPosition), WriteErrors),
    security(("api_key" = [])),
)]
pub async fn publish(
    State(app): State<App>,
    JsonBody(body): JsonBody<PublishBody>,
) -> ApiResult<StreamPosition> {
    publish_one(
        &app,
        &body.channel,
        body.event,
        body.data,
        body.idempotency_key,
    )
    .await
    .map(Json)
    .map_err(|e| counted(&app, e))
}

/// One publication to several channels.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    #[schema(value_type = Vec<ChannelName>, min_items = 1)]
    channels: Vec<String>,
    event: Option<String>,
    /// Any JSON; delivered unchanged. At most `limits.max_frame_bytes`.
    #[schema(value_type = serde_json::Value)]
    data: Box<RawValue>,
    /// Keys are per channel, so one key serves every channel: a retried broadcast publishes
    /// nothing again on the channels the first attempt reached.
    idempotency_key: Option<String>,
}

/// `POST /api/broadcast` → `{results: [...]}`, one per channel, in order.
#[utoipa::path(
    post,
    path = "/broadcast",
    tag = "publish",
    summary = "Publish the same data to several channels",
    request_body = BroadcastBody,
    responses((status = 200, description = "Each channel's outcome, in the request's order", body = PublishResults), WriteErrors),
    security(("api_key" = [])),
)]
pub async fn broadcast(
    State(app): State<App>,
    JsonBody(body): JsonBody<BroadcastBody>,
) -> ApiResult<PublishResults> {
    if body.channels.is_empty() {
        return Err(counted(&app, HeraldError::bad_request("channels is empty")));
    }
    let mut results = Vec::with_capacity(body.channels.len());
    for name in body.channels {
        let result = publish_one(
            &app,
            &name,
            body.event.clone(),
            body.data.clone(),
            body.idempotency_key.clone(),
        )
        .await;
        results.push(outcome(&app, name, result));
    }
    Ok(Json(protocol::publish_results(results)))
}

/// Several publications in one request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    publications: Vec<PublishBody>,
}

/// `POST /api/batch` → `{results: [...]}`, one per publication, in order.
#[utoipa::path(
    post,
    path = "/batch",
    tag = "publish",
    summary = "Publish several publications",
    request_body = BatchBody,
    responses((status = 200, description = "Each publication's outcome, in the request's order", body = PublishResults), WriteErrors),
    security(("api_key" = [])),
)]
pub async fn batch(
    State(app): State<App>,
    JsonBody(body): JsonBody<BatchBody>,
) -> ApiResult<PublishResults> {
    let mut results = Vec::with_capacity(body.publications.len());
    for p in body.publications {
        let result = publish_one(&app, &p.channel, p.event, p.data, p.idempotency_key).await;
        results.push(outcome(&app, p.channel, result));
    }
    Ok(Json(protocol::publish_results(results)))
}

/// Whom to disconnect.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectBody {
    /// Every connection of this user, on every node.
    user: String,
    /// Whether the clients should reconnect (the close's `reconnect`); default true.
    #[serde(default = "yes")]
    #[schema(default = true)]
    reconnect: bool,
}

fn yes() -> bool {
    true
}

/// `POST /api/disconnect` → `{}`.
#[utoipa::path(
    post,
    path = "/disconnect",
    tag = "users",
    summary = "Disconnect every connection of a user (close 4013)",
    request_body = DisconnectBody,
    responses((status = 200, description = "Done on every node", body = Empty), WriteErrors),
    security(("api_key" = [])),
)]
pub async fn disconnect(
    State(app): State<App>,
    JsonBody(body): JsonBody<DisconnectBody>,
) -> ApiResult<Empty> {
    app.hub
        .disconnect_user(&body.user, body.reconnect)
        .await
        .map_err(|e| counted(&app, e))?;
    Ok(Json(protocol::empty_body()))
}

/// Whom to unsubscribe from what.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeBody {
    /// Every connection of this user, on every node.
    user: String,
    #[schema(value_type = ChannelName)]
    channel: String,
}

/// `POST /api/unsubscribe` → `{}`.
#[utoipa::path(
    post,
    path = "/unsubscribe",
    tag = "users",
    summary = "Unsubscribe every connection of a user from a channel",
    request_body = UnsubscribeBody,
    responses((status = 200, description = "Done on every node", body = Empty), WriteErrors),
    security(("api_key" = [])),
)]
pub async fn unsubscribe(
    State(app): State<App>,
    JsonBody(body): JsonBody<UnsubscribeBody>,
) -> ApiResult<Empty> {
    let channel = channel(&app, &body.channel)?;
    app.hub
        .unsubscribe_user(&body.user, channel)
        .await
        .map_err(|e| counted(&app, e))?;
    Ok(Json(protocol::empty_body()))
}

/// The query of `GET /api/channels`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChannelsQuery {
    /// Only channels whose name starts with this.
    #[serde(default)]
    prefix: String,
}

/// `GET /api/channels?prefix=` → `{channels: [{channel, subscribers}]}`.
#[utoipa::path(
    get,
    path = "/channels",
    tag = "channels",
    summary = "The channels with subscribers on this node",
    params(ChannelsQuery),
    responses((status = 200, description = "The channels, with their subscribers here", body = ChannelList), ReadErrors),
    security(("api_key" = [])),
)]
pub async fn channels(
    State(app): State<App>,
    ApiQuery(query): ApiQuery<ChannelsQuery>,
) -> ApiResult<ChannelList> {
    Ok(Json(protocol::channel_list(
        app.hub.channels(&query.prefix),
    )))
}

/// The query of `GET /api/channels/{channel}/history`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// The publications after this offset; without it, the newest.
    since: Option<u64>,
    /// The epoch `since` belongs to; needs `since`.
    epoch: Option<String>,
    /// At most this many.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// `GET /api/channels/{channel}/history?since=&epoch=&limit=` → `{channel, offset, epoch,
/// recovered?, publications}`. Without `since`, the newest `limit`; with it, up to `limit` after
/// it (with `epoch`, checked against the stream's; without, the current epoch is assumed).
#[utoipa::path(
    get,
    path = "/channels/{channel}/history",
    tag = "channels",
    summary = "A channel's kept publications",
    params(("channel" = ChannelName, Path, description = "The channel, `namespace:name`"), HistoryParams),
    responses((status = 200, description = "The channel's position and publications, oldest first", body = HistoryResult), ChannelErrors),
    security(("api_key" = [])),
)]
pub async fn history(
    State(app): State<App>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> ApiResult<serde_json::Value> {
    let channel = channel(&app, &name)?;
    let result = async {
        let since = match (params.since, params.epoch) {
            (Some(offset), Some(epoch)) => Some(StreamPosition { offset, epoch }),
            (Some(offset), None) => {
                let current = app.hub.history(&channel, HistoryQuery::position()).await?;
                Some(StreamPosition {
                    offset,
                    epoch: current.position.epoch,
                })
            }
            (None, Some(_)) => return Err(HeraldError::bad_request("epoch needs since")),
            (None, None) => None,
        };
        let query = protocol::history_query(since, params.limit)?;
        let since_given = query.since.is_some();
        let page = app.hub.history(&channel, query).await?;
        Ok(
            serde_json::to_value(protocol::history_result(&channel, &page, since_given))
                .unwrap_or_default(),
        )
    };
    result.await.map(Json).map_err(|e| counted(&app, e))
}

/// The query of `GET /api/channels/{channel}/presence`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PresenceParams {
    /// Only the counts, not every connection.
    #[serde(default)]
    counts_only: bool,
}

/// `GET /api/channels/{channel}/presence?counts_only=` → `{channel, users, connections, clients?}`
/// for the whole cluster; `forbidden` where the namespace keeps no presence.
#[utoipa::path(
    get,
    path = "/channels/{channel}/presence",
    tag = "channels",
    summary = "Who is in a channel, on every node",
    params(("channel" = ChannelName, Path, description = "The channel, `namespace:name`"), PresenceParams),
    responses((status = 200, description = "The counts and (unless `counts_only`) every connection", body = PresenceResult), ChannelErrors),
    security(("api_key" = [])),
)]
pub async fn presence(
    State(app): State<App>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(params): ApiQuery<PresenceParams>,
) -> ApiResult<serde_json::Value> {
    let channel = channel(&app, &name)?;
    let result = async {
        let presence = app.hub.presence(&channel, params.counts_only).await?;
        Ok(serde_json::to_value(protocol::presence_result(
            &channel,
            &presence,
            params.counts_only,
        ))
        .unwrap_or_default())
    };
    result.await.map(Json).map_err(|e| counted(&app, e))
}

/// `GET /api/users/{user}` → `{user, online, connections}`.
#[utoipa::path(
    get,
    path = "/users/{user}",
    tag = "users",
    summary = "Whether a user is connected, on any node",
    params(("user" = String, Path, description = "The user id (the token's `sub`)")),
    responses((status = 200, description = "The user's connections on every node", body = UserStatus), ReadErrors),
    security(("api_key" = [])),
)]
pub async fn user(State(app): State<App>, ApiPath(user): ApiPath<String>) -> ApiResult<UserStatus> {
    let connections = app
        .hub
        .user_connections_everywhere(&user)
        .await
        .map_err(|e| counted(&app, e))?;
    Ok(Json(protocol::user_status(user, connections)))
}

/// `GET /api/stats`: this node's figures, every live node's, and the cluster's totals.
#[utoipa::path(
    get,
    path = "/stats",
    tag = "server",
    summary = "This node's figures, every node's, and the cluster's totals",
    responses((status = 200, description = "The figures", body = Stats), ReadErrors),
    security(("api_key" = [])),
)]
pub async fn stats(State(app): State<App>) -> Result<Response, ApiError> {
    let server = ServerFigures {
        messages_in: app.metrics.messages_in.get(),
        messages_out: app.metrics.messages_out.get(),
        uptime_s: app.started.elapsed().as_secs(),
    };
    let node = app.hub.snapshot();
    let engine = app.hub.engine();
    let mut nodes = engine.nodes().await.map_err(|e| counted(&app, e))?;
    // This node's entry is the one it would announce now, not its last beat's.
    nodes.retain(|n| n.name != app.node_name);
    nodes.push(app.figures());
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let stats = protocol::node_stats(engine.name(), &app.node_name, &node, server, &nodes);
    Ok(Json(stats).into_response())
}

/// `GET /api/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "server",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document of the server's HTTP surface", content_type = "application/json"), KeyErrors),
    security(("api_key" = [])),
)]
pub async fn openapi_document() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi::document_json(),
    )
        .into_response()
}

/// `GET /health`: the process is up.
#[utoipa::path(
    get,
    path = "/health",
    tag = "server",
    summary = "Liveness: the process answers",
    responses((status = 200, description = "Up", body = Status), MethodErrors),
)]
pub async fn health() -> Json<Status> {
    Json(protocol::health())
}

/// `GET /ready`: the engine answers and the server is not shutting down.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "server",
    summary = "Readiness: the engine answers and the node is not shutting down",
    responses((status = 200, description = "Ready", body = Status), ReadyErrors),
)]
pub async fn ready(State(app): State<App>) -> Response {
    if app.is_shutting_down() {
        return counted(&app, HeraldError::unavailable("shutting down")).into_response();
    }
    match app.hub.engine().ready().await {
        Ok(()) => Json(protocol::ready()).into_response(),
        Err(e) => counted(&app, e).into_response(),
    }
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    summary = "Prometheus metrics",
    responses((status = 200, description = "The Prometheus text format", content_type = "text/plain; version=0.0.4", body = String), MethodErrors),
)]
pub async fn metrics(State(app): State<App>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    (headers, app.metrics.render(&app.hub)).into_response()
}

/// Any other path.
pub async fn not_found(State(app): State<App>) -> ApiError {
    counted(&app, HeraldError::not_found("no such endpoint"))
}

/// A path that exists, with a method it does not take. The router adds the `Allow` header.
pub async fn method_not_allowed(State(app): State<App>, method: Method) -> ApiError {
    counted(
        &app,
        HeraldError::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed here; the Allow header lists the methods that are"),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_message<T: DeserializeOwned>(uri: &str) -> String {
        let uri: Uri = uri.parse().expect("uri");
        let error = parse_query::<T>(&uri).err().expect("refused");
        assert_eq!(error.code, ErrorCode::BadRequest);
        error.message
    }

    /// The parameter and serde's reason come from the deserialiser's error under axum's
    /// rejection; this fails if axum stops carrying it there.
    #[test]
    fn query_errors_name_the_parameter_and_not_the_value() {
        assert_eq!(
            query_message::<HistoryParams>("/h?limit=x"),
            "invalid query parameter limit: invalid digit found in string"
        );
        assert_eq!(
            query_message::<PresenceParams>("/p?counts_only=maybe"),
            "invalid query parameter counts_only: provided string was not `true` or `false`"
        );
        let twice = query_message::<ChannelsQuery>("/c?prefix=secret-a&prefix=secret-b");
        assert!(twice.contains("duplicate field `prefix`"), "{twice}");
        assert!(!twice.contains("secret"), "{twice}");
        let uri: Uri = "/h?limit=7&since=3".parse().expect("uri");
        let params = parse_query::<HistoryParams>(&uri).expect("valid");
        assert_eq!((params.limit, params.since), (Some(7), Some(3)));
    }
}
