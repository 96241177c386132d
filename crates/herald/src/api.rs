//! The server HTTP API for backends: publish, broadcast, batch, disconnect, unsubscribe, and the
//! read-only views (channels, users, stats), plus `/health`, `/ready` and `/metrics`.
//!
//! Every `/api` route needs `Authorization: Bearer <api key>`, compared in constant time against
//! each configured key. Bodies are JSON; every error is `{"error":{"code","message"}}` with the
//! status that [`ErrorCode::http_status`] gives. Keys are never logged.

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::engine::HistoryQuery;
use herald_core::{protocol, ChannelName, ErrorCode, HeraldError, StreamPosition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::auth::bearer_token;
use crate::server::App;

/// An error answered by the API.
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
        let body = json!({ "error": { "code": self.0.code.as_str(), "message": self.0.message } });
        (status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Counts the error in metrics and turns it into a response error.
fn counted(app: &App, error: HeraldError) -> ApiError {
    app.metrics.error(error.code);
    ApiError(error)
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
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    channel: String,
    event: Option<String>,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
}

/// The result of one publication in a broadcast or batch.
#[derive(Serialize)]
#[serde(untagged)]
enum ItemResult {
    Ok {
        channel: String,
        offset: u64,
        epoch: String,
    },
    Err {
        channel: String,
        error: ErrorBody,
    },
}

#[derive(Serialize)]
struct ErrorBody {
    code: &'static str,
    message: String,
}

async fn publish_one(
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

fn item_result(
    app: &App,
    channel: String,
    result: Result<StreamPosition, HeraldError>,
) -> ItemResult {
    match result {
        Ok(p) => ItemResult::Ok {
            channel,
            offset: p.offset,
            epoch: p.epoch,
        },
        Err(e) => {
            app.metrics.error(e.code);
            ItemResult::Err {
                channel,
                error: ErrorBody {
                    code: e.code.as_str(),
                    message: e.message,
                },
            }
        }
    }
}

/// `POST /api/publish` → `{offset, epoch}`.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    channels: Vec<String>,
    event: Option<String>,
    data: Box<RawValue>,
}

/// `POST /api/broadcast` → `{results: [...]}`, one per channel, in order.
pub async fn broadcast(
    State(app): State<App>,
    JsonBody(body): JsonBody<BroadcastBody>,
) -> ApiResult<serde_json::Value> {
    if body.channels.is_empty() {
        return Err(counted(&app, HeraldError::bad_request("channels is empty")));
    }
    let mut results = Vec::with_capacity(body.channels.len());
    for name in body.channels {
        let result = publish_one(&app, &name, body.event.clone(), body.data.clone(), None).await;
        results.push(item_result(&app, name, result));
    }
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    publications: Vec<PublishBody>,
}

/// `POST /api/batch` → `{results: [...]}`, one per publication, in order.
pub async fn batch(
    State(app): State<App>,
    JsonBody(body): JsonBody<BatchBody>,
) -> ApiResult<serde_json::Value> {
    let mut results = Vec::with_capacity(body.publications.len());
    for p in body.publications {
        let result = publish_one(&app, &p.channel, p.event, p.data, p.idempotency_key).await;
        results.push(item_result(&app, p.channel, result));
    }
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectBody {
    user: String,
    #[serde(default = "yes")]
    reconnect: bool,
}

fn yes() -> bool {
    true
}

/// `POST /api/disconnect` → `{}`.
pub async fn disconnect(
    State(app): State<App>,
    JsonBody(body): JsonBody<DisconnectBody>,
) -> ApiResult<serde_json::Value> {
    app.hub
        .disconnect_user(&body.user, body.reconnect)
        .await
        .map_err(|e| counted(&app, e))?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeBody {
    user: String,
    channel: String,
}

/// `POST /api/unsubscribe` → `{}`.
pub async fn unsubscribe(
    State(app): State<App>,
    JsonBody(body): JsonBody<UnsubscribeBody>,
) -> ApiResult<serde_json::Value> {
    let channel = channel(&app, &body.channel)?;
    app.hub
        .unsubscribe_user(&body.user, channel)
        .await
        .map_err(|e| counted(&app, e))?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct ChannelsQuery {
    #[serde(default)]
    prefix: String,
}

/// `GET /api/channels?prefix=` → `{channels: [{channel, subscribers}]}`.
pub async fn channels(
    State(app): State<App>,
    Query(query): Query<ChannelsQuery>,
) -> ApiResult<serde_json::Value> {
    Ok(Json(json!({ "channels": app.hub.channels(&query.prefix) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/channels/{channel}/history?since=&epoch=&limit=` → `{channel, offset, epoch,
/// recovered?, publications}`. Without `since`, the newest `limit`; with it, up to `limit` after
/// it (with `epoch`, checked against the stream's; without, the current epoch is assumed).
pub async fn history(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(params): Query<HistoryParams>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceParams {
    #[serde(default)]
    counts_only: bool,
}

/// `GET /api/channels/{channel}/presence?counts_only=` → `{channel, users, connections, clients?}`
/// for the whole cluster; `forbidden` where the namespace keeps no presence.
pub async fn presence(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(params): Query<PresenceParams>,
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
pub async fn user(
    State(app): State<App>,
    Path(user): Path<String>,
) -> ApiResult<serde_json::Value> {
    let connections = app.hub.user_connections(&user);
    Ok(Json(
        json!({ "user": user, "online": connections > 0, "connections": connections }),
    ))
}

/// `GET /api/stats`: this node's figures.
pub async fn stats(State(app): State<App>) -> ApiResult<serde_json::Value> {
    let snapshot = app.hub.snapshot();
    let node = json!({
        "connections": snapshot.connections,
        "users": snapshot.users,
        "channels": snapshot.channels,
        "subscriptions": snapshot.subscriptions,
        "messages_in": app.metrics.messages_in.get(),
        "messages_out": app.metrics.messages_out.get(),
        "deliveries_queued": snapshot.deliveries,
        "slow_consumers": snapshot.slow_consumers,
        "events": snapshot.events,
        "queued_bytes": snapshot.queued_bytes,
        "uptime_s": app.started.elapsed().as_secs(),
    });
    Ok(Json(json!({
        "engine": app.hub.engine().name(),
        "node": node,
        // With one node, the cluster is this node; the Redis engine sums across nodes.
        "cluster": { "nodes": 1, "connections": snapshot.connections, "users": snapshot.users },
    })))
}

/// `GET /health`: the process is up.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /ready`: the engine answers and the server is not shutting down.
pub async fn ready(State(app): State<App>) -> Response {
    if app.is_shutting_down() {
        return counted(&app, HeraldError::unavailable("shutting down")).into_response();
    }
    match app.hub.engine().ready().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => counted(&app, e).into_response(),
    }
}

/// `GET /metrics`: Prometheus text.
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
