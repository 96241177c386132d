//! The Server-Sent Events transport: `GET /sse?channel=a&channel=b`, one-way, for clients that
//! only receive (notification bells, unread counters, dashboards) and for `curl -N`.
//!
//! The request is checked and authenticated like a WebSocket upgrade (origin, connection rate,
//! the node's `limits.max_connections`, token by `Authorization: Bearer` or `?token=`), then
//! registers a [`Session`] with the hub and subscribes it to every requested channel, plus the
//! personal channel, before the response starts: a refused channel is an HTTP error, not a
//! broken stream. The response is then a stream of events:
//!
//! - `retry:` first, the reconnect delay the client should use;
//! - `event: connected` and one `event: subscribed` per channel (the native frames as `data:`);
//! - one unnamed event per publication (`data:` is the native `message` frame), which is what
//!   `EventSource.onmessage` receives;
//! - `event: unsubscribed` when the server API removes a channel, and `event: disconnect` just
//!   before the server ends the stream (its code is the WebSocket close code it would have used);
//! - a `: ping` comment every `sse.heartbeat_interval`, so that proxies keep the stream open.
//!
//! Every event that moves the stream's position carries an `id:` naming the position on every
//! channel (see [`protocol::sse_event_id`]). `EventSource` sends the last one back as
//! `Last-Event-ID` when it reconnects (a page that starts a new `EventSource` passes it as
//! `?last_event_id=`), and the stream resumes each channel with the hub's recovery: the missed
//! publications first, then live, with no gap and no duplicate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use herald_core::hub::{Outbound, Recovery, Subscribed};
use herald_core::publication::WireFormat;
use herald_core::{
    protocol, ChannelName, CloseCode, Disconnect, ErrorCode, HeraldError, Session, StreamPosition,
};
use tokio::time::{sleep_until, Instant, Interval, Sleep};

use crate::api::counted;
use crate::auth::bearer_token;
use crate::server::App;

use super::{ConnectionSlot, Peer};

/// The comment that keeps a quiet stream open through proxies.
const HEARTBEAT_COMMENT: &str = ": ping\n\n";

/// What `GET /sse` reads from its query string.
struct SseRequest {
    channels: Vec<ChannelName>,
    token: Option<String>,
    last_event_id: Option<String>,
}

impl SseRequest {
    fn parse(query: Option<&str>) -> Result<SseRequest, HeraldError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| HeraldError::bad_request(format!("malformed query string: {e}")))?;
        let mut request = SseRequest {
            channels: Vec::new(),
            token: None,
            last_event_id: None,
        };
        for (key, value) in pairs {
            match key.as_str() {
                "channel" => {
                    let channel = ChannelName::parse(&value)?;
                    if !request.channels.contains(&channel) {
                        request.channels.push(channel);
                    }
                }
                "token" => once(&mut request.token, "token", value)?,
                "last_event_id" => once(&mut request.last_event_id, "last_event_id", value)?,
                other => {
                    return Err(HeraldError::bad_request(format!(
                        "unknown query parameter {other:?} (channel, token, last_event_id)"
                    )))
                }
            }
        }
        Ok(request)
    }
}

/// Sets a query parameter that may be given once; a second one is an error that names it and not
/// its values (a token is a secret).
fn once(slot: &mut Option<String>, name: &str, value: String) -> Result<(), HeraldError> {
    if slot.is_some() {
        return Err(HeraldError::bad_request(format!(
            "query parameter {name} given more than once"
        )));
    }
    *slot = Some(value);
    Ok(())
}

/// `GET /sse`: checks, authenticates, subscribes, then streams. A refused stream is the JSON
/// error body, counted, like any other HTTP error.
#[utoipa::path(
    get,
    path = "/sse",
    tag = "clients",
    summary = "Open a Server-Sent Events stream of one or more channels",
    params(
        ("channel" = Option<Vec<ChannelName>>, Query, description = "A channel to subscribe to; repeat for several. The personal channel is always included."),
        ("token" = Option<String>, Query, description = "The client's JWT, when `Authorization` cannot be sent (EventSource)."),
        ("last_event_id" = Option<String>, Query, description = "Resume from this event id (as `Last-Event-ID` does)."),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume from this event id; sent by EventSource when it reconnects."),
    ),
    responses(
        (status = 200, description = "The event stream; each event's `data` is JSON", content_type = "text/event-stream", body = serde_json::Value),
        crate::openapi::ConnectErrors,
    ),
    security((), ("client_token" = [])),
)]
pub async fn stream(
    State(app): State<App>,
    Peer(peer): Peer,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match open(&app, peer, &headers, query.as_deref()).await {
        Ok(response) => response,
        Err(error) => counted(&app, error).into_response(),
    }
}

async fn open(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, HeraldError> {
    // The stream's place on the node: given back when the body stream ends, or on any refusal
    // before it starts.
    let slot = super::admit_connection(app, peer, headers)?;
    let request = SseRequest::parse(query)?;
    let header_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| HeraldError::bad_request("Last-Event-ID is not text"))
        })
        .transpose()?;
    // The header (sent by EventSource itself) wins over the query parameter.
    let resume = match header_id.or(request.last_event_id) {
        Some(id) => protocol::parse_sse_event_id(&id)?,
        None => Vec::new(),
    };
    let recovery_of = |channel: &ChannelName| {
        resume
            .iter()
            .find(|(c, _)| c == channel)
            .map_or(Recovery::Live, |(_, p)| Recovery::Since(p.clone()))
    };
    let token = bearer_token(headers).map(str::to_owned).or(request.token);
    let verified = match token {
        Some(token) => super::verify_token(app, &token, super::forwarded_headers(app, headers))?,
        None => match super::connect_hook(app, "sse", peer, headers).await {
            Some(verified) => verified?,
            None => {
                return Err(HeraldError::new(
                    ErrorCode::Unauthorized,
                    "missing token: send Authorization: Bearer <jwt> or ?token=",
                ))
            }
        },
    };
    let personal_channel = ChannelName::personal(&verified.identity.user);
    let personal = personal_channel
        .as_ref()
        .map_or(Recovery::Live, &recovery_of);
    let (session, personal) = app
        .hub
        .connect(verified.identity, personal)
        .await
        .map_err(|d| {
            let code = match d.code {
                CloseCode::TooManyConnections => ErrorCode::LimitExceeded,
                _ => ErrorCode::Unavailable,
            };
            HeraldError::new(code, d.reason)
        })?;
    let mut subscribed: Vec<Subscribed> = personal.into_iter().collect();
    for channel in &request.channels {
        if Some(channel) == personal_channel.as_ref() {
            continue;
        }
        // Dropping the session on an error unsubscribes what was subscribed so far.
        subscribed.push(session.subscribe(channel, recovery_of(channel)).await?);
    }
    app.metrics.connections_accepted.inc();
    tracing::debug!(client = %session.client_id(), user = %session.user(), channels = subscribed.len(), "sse connected");

    let sse = &app.config.sse;
    let mut first = format!("retry: {}\n\n", sse.retry.as_millis());
    // Where the client stands on each channel: where it asked to resume from when that was
    // recovered (the missed publications follow), otherwise where the subscription began.
    let positions: Vec<(ChannelName, StreamPosition)> = subscribed
        .iter()
        .map(|s| {
            let resumed = match recovery_of(&s.channel) {
                Recovery::Since(p) if s.recovered == Some(true) => p,
                _ => s.position.clone(),
            };
            (s.channel.clone(), resumed)
        })
        .collect();
    let hello = protocol::connected(
        session.client_id(),
        session.user(),
        sse.heartbeat_interval.as_secs().max(1),
        verified.expires_at,
    );
    // The opening events; the last carries the id, so that a client that drops before any
    // publication still resumes from here.
    let mut opening = vec![("connected", hello)];
    opening.extend(
        subscribed
            .iter()
            .map(|s| ("subscribed", protocol::subscribed(None, s))),
    );
    let id = protocol::sse_event_id(positions.iter().map(|(c, p)| (c, p)));
    let last = opening.len() - 1;
    for (i, (event, data)) in opening.iter().enumerate() {
        let id = (i == last).then_some(id.as_str());
        push_event(&mut first, Some(event), id, data);
    }

    let heartbeat = sse.heartbeat_interval;
    let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let leeway = app.config.auth.jwt_leeway;
    let state = EventStream {
        app: slot,
        session,
        positions,
        heartbeat: ticker,
        expiry: Box::pin(sleep_until(super::deadline_of(verified.expires_at, leeway))),
        batch: Vec::new(),
        first: Some(first),
        ended: None,
    };
    Ok(event_stream(futures_util::stream::unfold(
        state,
        |mut state| async move {
            let chunk = state.next_chunk().await?;
            Some((chunk, state))
        },
    )))
}

/// The response of an event stream made of `chunks`, with the headers every Server-Sent Events
/// answer of Herald's carries (this one's and the admin page's channel inspector's).
pub(crate) fn event_stream(
    chunks: impl futures_util::Stream<Item = Bytes> + Send + 'static,
) -> Response {
    let body = Body::from_stream(futures_util::StreamExt::map(chunks, Ok::<_, Infallible>));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The state of one open stream.
struct EventStream {
    /// The node's state, with the stream's place on the node: given back when the body stream is
    /// dropped (it ended, or the client went away).
    app: ConnectionSlot,
    session: Session,
    positions: Vec<(ChannelName, StreamPosition)>,
    heartbeat: Interval,
    expiry: Pin<Box<Sleep>>,
    batch: Vec<Outbound>,
    /// The opening events, sent as the first chunk.
    first: Option<String>,
    /// Set once the stream has ended, with the reason counted in metrics.
    ended: Option<&'static str>,
}

impl EventStream {
    /// The next chunk of events to write, or `None` when the stream is over.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(Bytes::from(first));
        }
        if self.ended.is_some() {
            return None;
        }
        loop {
            let close = self.session.outbox().take(&mut self.batch);
            let mut chunk = String::new();
            if !self.batch.is_empty() {
                self.render_batch(&mut chunk);
            }
            if let Some(disconnect) = close {
                self.end(&mut chunk, &disconnect);
            }
            if !chunk.is_empty() {
                return Some(Bytes::from(chunk));
            }
            tokio::select! {
                () = self.session.outbox().wait() => {}
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(HEARTBEAT_COMMENT.as_bytes())),
                () = self.expiry.as_mut() => {
                    let mut chunk = String::new();
                    self.end(&mut chunk, &Disconnect::new(CloseCode::TokenExpired, "token expired"));
                    return Some(Bytes::from(chunk));
                }
            }
        }
    }

    fn render_batch(&mut self, chunk: &mut String) {
        let mut publications = 0u64;
        let mut oldest = None;
        for item in self.batch.drain(..) {
            match item {
                Outbound::Publication(p) => {
                    publications += 1;
                    oldest = oldest.or(Some(p.received_at));
                    if let Some((_, position)) =
                        self.positions.iter_mut().find(|(c, _)| *c == p.channel)
                    {
                        position.offset = p.offset;
                        if *position.epoch != *p.epoch {
                            position.epoch = p.epoch.to_string();
                        }
                    }
                    let data: Bytes = p.encoded(WireFormat::ServerSentEvent, |p| {
                        Bytes::from(protocol::message(p))
                    });
                    let id = protocol::sse_event_id(self.positions.iter().map(|(c, p)| (c, p)));
                    // The message JSON is one line: serde_json escapes every newline in strings.
                    push_event(
                        chunk,
                        None,
                        Some(&id),
                        std::str::from_utf8(&data).unwrap_or("{}"),
                    );
                }
                Outbound::Event(e) => {
                    // No id: the stream's position has not moved, and EventSource keeps the
                    // last one it saw.
                    let data: Bytes = e.encoded(WireFormat::ServerSentEvent, |e| {
                        Bytes::from(protocol::channel_event(e))
                    });
                    push_event(
                        chunk,
                        Some(e.kind.as_str()),
                        None,
                        std::str::from_utf8(&data).unwrap_or("{}"),
                    );
                }
                Outbound::Unsubscribed(channel) => {
                    self.positions.retain(|(c, _)| *c != channel);
                    let id = protocol::sse_event_id(self.positions.iter().map(|(c, p)| (c, p)));
                    push_event(
                        chunk,
                        Some("unsubscribed"),
                        Some(&id),
                        &protocol::unsubscribed(None, &channel),
                    );
                }
                Outbound::Resubscribed(notice) => {
                    if let Some((_, position)) = self
                        .positions
                        .iter_mut()
                        .find(|(c, _)| *c == notice.channel)
                    {
                        *position = notice.position.clone();
                    }
                    let id = protocol::sse_event_id(self.positions.iter().map(|(c, p)| (c, p)));
                    push_event(
                        chunk,
                        Some("subscribed"),
                        Some(&id),
                        &protocol::subscribed(None, &notice),
                    );
                }
                // The stream keeps its own heartbeat comments; a keep-alive is one more.
                Outbound::Heartbeat => chunk.push_str(HEARTBEAT_COMMENT),
            }
        }
        self.app.metrics.messages_out.inc_by(publications);
        if let Some(oldest) = oldest {
            self.app.metrics.observe_write(oldest.elapsed());
        }
        if self.batch.capacity() > 64 {
            self.batch = Vec::new();
        }
    }

    fn end(&mut self, chunk: &mut String, disconnect: &Disconnect) {
        push_event(
            chunk,
            Some("disconnect"),
            None,
            &protocol::disconnect(disconnect),
        );
        self.ended = Some(disconnect.code.label());
        tracing::debug!(code = disconnect.code.code(), reason = %disconnect.reason, "sse closed by server");
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.app
            .metrics
            .disconnect(self.ended.unwrap_or("client_closed"));
    }
}

/// Appends one event. `data` must be a single line (the JSON frames are).
fn push_event(out: &mut String, event: Option<&str>, id: Option<&str>, data: &str) {
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
}
