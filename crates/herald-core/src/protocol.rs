//! Herald's wire formats: the native protocol's JSON frames (client commands in, server frames
//! out, over WebSocket and as the `data:` of Server-Sent Events) and the JSON bodies of the HTTP
//! API.
//!
//! This is the only module that knows their field names. Transports hand it the text of a frame
//! and get a [`Command`] or a [`HeraldError`] back; they hand it what happened and get the bytes
//! to write, or the value to serialise for a command's `result`. The HTTP API hands it what it
//! found and gets the body to answer with (see "HTTP API bodies" below), and every HTTP error
//! body, on every route, comes from here too ([`http_error`]). Nothing here does I/O or decides
//! anything: what to answer is the caller's, how it is spelt is this module's.
//! `docs/protocol.md` is the reference for every frame, `docs/configuration.md` for the API's
//! bodies.
//!
//! The HTTP API's bodies are named types deriving [`utoipa::ToSchema`], so the OpenAPI document
//! (`GET /api/openapi.json`) is derived from the very types that write them; the core's values
//! that appear inside them (positions, publishers, presence members, error codes) describe their
//! wire shape here too, beside their `Serialize`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::channel::ChannelName;
use crate::engine::{HistoryPage, HistoryQuery, NodeFigures};
use crate::error::{Disconnect, ErrorCode, HeraldError};
use crate::hub::{ChannelInfo, HubSnapshot, Recovery, Subscribed};
use crate::presence::{ChannelEvent, EventKind, Presence, PresenceMember};
use crate::publication::{Publication, Publisher, StreamPosition};

/// Most publications a `history` command or request returns at once, and most a `last` asks for.
pub const MAX_HISTORY_LIMIT: u32 = 1000;

/// The `id` a client may put on a command; the reply carries it back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// A number, e.g. `"id": 7`.
    Number(u64),
    /// A string, e.g. `"id": "a7"`.
    Text(String),
}

/// A command from a client, validated.
#[derive(Debug)]
pub enum Command {
    /// `auth`: the first frame of a client that brought no token on the upgrade.
    Auth {
        /// The JWT.
        token: String,
        /// Where the personal channel's subscription starts (`since` or `last` on the frame).
        personal: Recovery,
    },
    /// `subscribe`, from where `recovery` says (`since`, `last`, or now).
    Subscribe {
        /// The channel.
        channel: ChannelName,
        /// Where the subscription starts.
        recovery: Recovery,
    },
    /// `unsubscribe`.
    Unsubscribe {
        /// The channel.
        channel: ChannelName,
    },
    /// `publish` by the client, where its namespace allows it.
    Publish {
        /// The channel.
        channel: ChannelName,
        /// The event name, if any.
        event: Option<String>,
        /// The payload, kept as the JSON text it came as.
        data: Box<RawValue>,
    },
    /// `typing` on a subscribed channel.
    Typing {
        /// The channel.
        channel: ChannelName,
    },
    /// `presence` of a channel.
    Presence {
        /// The channel.
        channel: ChannelName,
        /// Only the counts, not the list of clients.
        counts_only: bool,
    },
    /// `history` of a channel.
    History {
        /// The channel.
        channel: ChannelName,
        /// Publications after this position; without it, the newest.
        since: Option<StreamPosition>,
        /// At most this many.
        limit: Option<u32>,
    },
    /// `refresh`: a new token for the same user, before the current one expires.
    Refresh {
        /// The JWT.
        token: String,
    },
    /// `ping`, answered with the server's time.
    Ping,
}

impl Command {
    /// The command's `type`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Auth { .. } => "auth",
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Publish { .. } => "publish",
            Command::Typing { .. } => "typing",
            Command::Presence { .. } => "presence",
            Command::History { .. } => "history",
            Command::Refresh { .. } => "refresh",
            Command::Ping => "ping",
        }
    }
}

/// A command frame as it arrives: every field optional, checked by [`parse_command`].
#[derive(Deserialize)]
struct RawCommand {
    #[serde(rename = "type")]
    kind: String,
    id: Option<RequestId>,
    channel: Option<String>,
    since: Option<StreamPosition>,
    event: Option<String>,
    /// Present (even as `null`) or absent; `null` is valid data.
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    token: Option<String>,
    limit: Option<u32>,
    last: Option<u32>,
    counts_only: Option<bool>,
}

/// Reads a field that is present as `Some`, including a JSON `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// A frame that could not be turned into a command, with the `id` when one could be read.
#[derive(Debug)]
pub struct Rejected {
    /// The frame's `id`, when it could be read, so that the error answers it.
    pub id: Option<RequestId>,
    /// What was wrong.
    pub error: HeraldError,
}

/// Parses one text frame into its `id` and command.
pub fn parse_command(text: &str) -> Result<(Option<RequestId>, Command), Rejected> {
    let raw: RawCommand = serde_json::from_str(text).map_err(|e| Rejected {
        id: recover_id(text),
        error: HeraldError::bad_request(format!("malformed command: {e}")),
    })?;
    let id = raw.id.clone();
    command_from_raw(raw)
        .map(|c| (id.clone(), c))
        .map_err(|error| Rejected { id, error })
}

/// Best effort: the `id` of a frame that failed to parse as a whole, so the error can carry it.
fn recover_id(text: &str) -> Option<RequestId> {
    #[derive(Deserialize)]
    struct OnlyId {
        id: Option<RequestId>,
    }
    serde_json::from_str::<OnlyId>(text).ok().and_then(|o| o.id)
}

fn command_from_raw(raw: RawCommand) -> Result<Command, HeraldError> {
    let channel = || -> Result<ChannelName, HeraldError> {
        match &raw.channel {
            Some(name) => ChannelName::parse(name),
            None => Err(missing(&raw.kind, "channel")),
        }
    };
    let token = |raw: &RawCommand| raw.token.clone().ok_or_else(|| missing(&raw.kind, "token"));
    let recovery = |raw: &RawCommand| recovery(raw.since.clone(), raw.last);
    Ok(match raw.kind.as_str() {
        "auth" => Command::Auth {
            token: token(&raw)?,
            personal: recovery(&raw)?,
        },
        "subscribe" => Command::Subscribe {
            channel: channel()?,
            recovery: recovery(&raw)?,
        },
        "unsubscribe" => Command::Unsubscribe {
            channel: channel()?,
        },
        "publish" => Command::Publish {
            channel: channel()?,
            event: raw.event.clone(),
            data: raw.data.clone().ok_or_else(|| missing("publish", "data"))?,
        },
        "typing" => Command::Typing {
            channel: channel()?,
        },
        "presence" => Command::Presence {
            channel: channel()?,
            counts_only: raw.counts_only.unwrap_or(false),
        },
        "history" => Command::History {
            channel: channel()?,
            since: raw.since.clone(),
            limit: raw.limit,
        },
        "refresh" => Command::Refresh {
            token: token(&raw)?,
        },
        "ping" => Command::Ping,
        other => {
            return Err(HeraldError::bad_request(format!(
                "unknown command type {other:?}"
            )))
        }
    })
}

/// Where a subscription starts, from a frame's `since` and `last` (at most one of them).
pub fn recovery(since: Option<StreamPosition>, last: Option<u32>) -> Result<Recovery, HeraldError> {
    match (since, last) {
        (Some(_), Some(_)) => Err(HeraldError::bad_request(
            "give either since or last, not both",
        )),
        (Some(position), None) => Ok(Recovery::Since(position)),
        (None, Some(n)) if n > MAX_HISTORY_LIMIT => Err(HeraldError::bad_request(format!(
            "last is at most {MAX_HISTORY_LIMIT}"
        ))),
        (None, Some(n)) => Ok(Recovery::Last(n as usize)),
        (None, None) => Ok(Recovery::Live),
    }
}

/// Parses a position given as `<offset>:<epoch>` (the `since` query parameter).
pub fn parse_position(text: &str) -> Result<StreamPosition, HeraldError> {
    text.split_once(':')
        .and_then(|(offset, epoch)| {
            let offset = offset.parse().ok()?;
            (!epoch.is_empty()).then(|| StreamPosition {
                offset,
                epoch: epoch.to_owned(),
            })
        })
        .ok_or_else(|| {
            HeraldError::bad_request(format!(
                "since must be <offset>:<epoch>, as in 17:3fa0c1d2e4; got {text:?}"
            ))
        })
}

/// A history read as a client or the API asks for it: `limit` is at most
/// [`MAX_HISTORY_LIMIT`], which is also the default.
pub fn history_query(
    since: Option<StreamPosition>,
    limit: Option<u32>,
) -> Result<HistoryQuery, HeraldError> {
    let limit = limit.unwrap_or(MAX_HISTORY_LIMIT);
    if limit > MAX_HISTORY_LIMIT {
        return Err(HeraldError::bad_request(format!(
            "limit is at most {}",
            MAX_HISTORY_LIMIT
        )));
    }
    Ok(HistoryQuery {
        since,
        limit: Some(limit as usize),
    })
}

/// The `id` of a Server-Sent Event: the stream's position on each of its channels, as
/// `<channel>:<offset>:<epoch>` entries joined by `,` (channel names hold no `,`, and the last two
/// `:` of an entry are the separators). A reconnect sends it back as `Last-Event-ID`.
pub fn sse_event_id<'a>(
    positions: impl IntoIterator<Item = (&'a ChannelName, &'a StreamPosition)>,
) -> String {
    let mut id = String::new();
    for (channel, position) in positions {
        if !id.is_empty() {
            id.push(',');
        }
        id.push_str(channel.as_str());
        id.push(':');
        id.push_str(&position.offset.to_string());
        id.push(':');
        id.push_str(&position.epoch);
    }
    id
}

/// Reads an SSE event id written by [`sse_event_id`].
pub fn parse_sse_event_id(id: &str) -> Result<Vec<(ChannelName, StreamPosition)>, HeraldError> {
    let bad = || {
        HeraldError::bad_request(
            "Last-Event-ID must be <channel>:<offset>:<epoch> entries joined by commas",
        )
    };
    id.split(',')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let mut parts = entry.rsplitn(3, ':');
            let (Some(epoch), Some(offset), Some(channel)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let offset = offset.parse().map_err(|_| bad())?;
            if epoch.is_empty() {
                return Err(bad());
            }
            let position = StreamPosition {
                offset,
                epoch: epoch.to_owned(),
            };
            Ok((ChannelName::parse(channel)?, position))
        })
        .collect()
}

fn missing(kind: &str, field: &str) -> HeraldError {
    HeraldError::bad_request(format!("{kind:?} needs the field {field:?}"))
}

// === Server frames ===

/// Serialises a frame that is known to serialise (plain structs of strings and numbers).
fn encode<T: Serialize>(frame: &T) -> String {
    // Serialising these structs cannot fail: no maps with non-string keys, no failing Serialize.
    serde_json::to_string(frame).unwrap_or_default()
}

/// `{"type":"connected",...}`: the first frame of every authenticated connection.
pub fn connected(client: &str, user: &str, heartbeat_s: u64, expires_at: Option<u64>) -> String {
    #[derive(Serialize)]
    struct Connected<'a> {
        r#type: &'static str,
        client: &'a str,
        user: &'a str,
        heartbeat_s: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    }
    encode(&Connected {
        r#type: "connected",
        client,
        user,
        heartbeat_s,
        expires_at,
    })
}

/// `{"type":"subscribed",...}`: the reply to `subscribe` (and, with no `id`, the notice for the
/// personal channel right after `connected`). `recovered` is there when `since` was given.
pub fn subscribed(id: Option<&RequestId>, subscribed: &Subscribed) -> String {
    #[derive(Serialize)]
    struct SubscribedFrame<'a> {
        r#type: &'static str,
        channel: &'a ChannelName,
        epoch: &'a str,
        offset: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    }
    encode(&SubscribedFrame {
        r#type: "subscribed",
        channel: &subscribed.channel,
        epoch: &subscribed.position.epoch,
        offset: subscribed.position.offset,
        recovered: subscribed.recovered,
        id,
    })
}

/// The result of a `history` command or `GET /api/channels/{channel}/history`: the channel's
/// position, whether everything after `since` was still there (when `since` was given), and the
/// publications, each shaped like a `message` frame.
#[derive(Serialize, ToSchema)]
pub struct HistoryResult<'a> {
    /// The channel.
    #[schema(value_type = ChannelName)]
    channel: &'a ChannelName,
    /// The stream's last offset.
    offset: u64,
    /// The stream's epoch.
    epoch: &'a str,
    /// Present when `since` was given: whether every publication after it was still kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    /// Oldest first.
    publications: Vec<MessageFrame<'a>>,
}

/// The [`HistoryResult`] of `page`.
pub fn history_result<'a>(
    channel: &'a ChannelName,
    page: &'a HistoryPage,
    since_given: bool,
) -> HistoryResult<'a> {
    HistoryResult {
        channel,
        offset: page.position.offset,
        epoch: &page.position.epoch,
        recovered: since_given.then_some(page.complete),
        publications: page
            .publications
            .iter()
            .map(|p| MessageFrame::of(p))
            .collect(),
    }
}

/// The result of a `presence` command or `GET /api/channels/{channel}/presence`: the counts of
/// users and connections, and (unless only the counts were asked for) every connection.
#[derive(Serialize, ToSchema)]
pub struct PresenceResult<'a> {
    /// The channel.
    #[schema(value_type = ChannelName)]
    channel: &'a ChannelName,
    /// Distinct users present.
    users: usize,
    /// Connections present.
    connections: usize,
    /// Every connection present, unless only the counts were asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<PresenceMember>>)]
    clients: Option<&'a [PresenceMember]>,
}

/// The [`PresenceResult`] of `presence`.
pub fn presence_result<'a>(
    channel: &'a ChannelName,
    presence: &'a Presence,
    counts_only: bool,
) -> PresenceResult<'a> {
    PresenceResult {
        channel,
        users: presence.counts.users,
        connections: presence.counts.connections,
        clients: (!counts_only).then_some(presence.members.as_slice()),
    }
}

/// `{"type":"join"|"leave","channel","user","client"}` or `{"type":"typing","channel","user"}`:
/// an ephemeral channel event. Encoded once per event per node (see [`ChannelEvent::encoded`]).
pub fn channel_event(e: &ChannelEvent) -> String {
    #[derive(Serialize)]
    struct EventFrame<'a> {
        r#type: &'static str,
        channel: &'a ChannelName,
        user: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        client: Option<&'a str>,
    }
    encode(&EventFrame {
        r#type: e.kind.as_str(),
        channel: &e.channel,
        user: &e.user,
        client: (e.kind != EventKind::Typing).then_some(&*e.client),
    })
}

/// `{"type":"unsubscribed",...}`: the reply to `unsubscribe`, and the notice when the server API
/// unsubscribes a user.
pub fn unsubscribed(id: Option<&RequestId>, channel: &ChannelName) -> String {
    #[derive(Serialize)]
    struct Unsubscribed<'a> {
        r#type: &'static str,
        channel: &'a ChannelName,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    }
    encode(&Unsubscribed {
        r#type: "unsubscribed",
        channel,
        id,
    })
}

/// `{"type":"reply","id":...,"result":...}`: the answer to a command that has a result.
pub fn reply<T: Serialize>(id: Option<&RequestId>, result: &T) -> String {
    #[derive(Serialize)]
    struct Reply<'a, T> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        result: &'a T,
    }
    encode(&Reply {
        r#type: "reply",
        id,
        result,
    })
}

/// The result of a `typing` command that has an `id`: `{"sent":bool}`, false when the throttle
/// dropped it.
pub fn typing_result(sent: bool) -> impl Serialize {
    #[derive(Serialize)]
    struct TypingResult {
        sent: bool,
    }
    TypingResult { sent }
}

/// The result of a successful `refresh`: `{"expires_at":<unix seconds>}`, the new token's expiry.
pub fn refresh_result(expires_at: u64) -> impl Serialize {
    #[derive(Serialize)]
    struct RefreshResult {
        expires_at: u64,
    }
    RefreshResult { expires_at }
}

/// The result of a `ping` command: `{"pong":<unix milliseconds>}`, the server's clock.
pub fn ping_result(now_ms: u64) -> impl Serialize {
    #[derive(Serialize)]
    struct PingResult {
        pong: u64,
    }
    PingResult { pong: now_ms }
}

/// `{"type":"error",...}`.
pub fn error(id: Option<&RequestId>, code: ErrorCode, message: &str) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        code: &'static str,
        message: &'a str,
    }
    encode(&Error {
        r#type: "error",
        id,
        code: code.as_str(),
        message,
    })
}

/// `{"code","message"}`: what went wrong, as the HTTP API writes it: the `error` of every HTTP error
/// body ([`http_error`]) and of a failed item in a broadcast or batch result.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What kind of error; the HTTP status follows from it.
    #[schema(value_type = ErrorCode)]
    code: &'static str,
    /// What went wrong, for people.
    message: String,
}

/// `{"error":{"code","message"}}`: the body of every HTTP error.
#[derive(Serialize, ToSchema)]
pub struct HttpError {
    error: ErrorDetail,
}

impl From<HeraldError> for ErrorDetail {
    fn from(e: HeraldError) -> Self {
        ErrorDetail {
            code: e.code.as_str(),
            message: e.message,
        }
    }
}

/// `{"error":{"code","message"}}`: the body of every HTTP error, on every route (the API, `/ws`
/// and `/sse` before they open, `/ready`, unknown paths and methods). The status is
/// [`ErrorCode::http_status`].
pub fn http_error(error: HeraldError) -> String {
    encode(&HttpError {
        error: error.into(),
    })
}

/// `{"type":"disconnect",...}`: sent just before the server closes the socket.
pub fn disconnect(d: &Disconnect) -> String {
    #[derive(Serialize)]
    struct DisconnectFrame<'a> {
        r#type: &'static str,
        code: u16,
        reason: &'a str,
        reconnect: bool,
    }
    encode(&DisconnectFrame {
        r#type: "disconnect",
        code: d.code.code(),
        reason: &d.reason,
        reconnect: d.reconnect,
    })
}

/// `{"type":"message",...}`: a publication delivered to a subscriber. Encoded once per publication
/// per node (see [`Publication::encoded`]).
pub fn message(p: &Publication) -> String {
    encode(&MessageFrame::of(p))
}

/// A publication as clients and the history API see it: `{"type":"message","channel","event"?,
/// "data","offset","ts","from"?}`.
#[derive(Serialize, ToSchema)]
#[schema(as = Message)]
struct MessageFrame<'a> {
    /// Always `message`.
    #[schema(value_type = String, pattern = "^message$")]
    r#type: &'static str,
    #[schema(value_type = ChannelName)]
    channel: &'a ChannelName,
    /// The publisher's event name, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    /// The JSON the publisher sent, unchanged.
    #[schema(value_type = serde_json::Value)]
    data: &'a RawValue,
    /// Its place in the channel's stream.
    offset: u64,
    /// When the server accepted it, Unix milliseconds.
    ts: u64,
    /// The client that published it, for publications from clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Publisher>)]
    from: Option<&'a Publisher>,
}

impl<'a> MessageFrame<'a> {
    fn of(p: &'a Publication) -> Self {
        MessageFrame {
            r#type: "message",
            channel: &p.channel,
            event: p.event.as_deref(),
            data: &p.data,
            offset: p.offset,
            ts: p.ts,
            from: p.from.as_ref(),
        }
    }
}

// === Socket.IO bodies ===
//
// What Socket.IO clients receive as event arguments and ack values. The packets around them
// (type digits, namespaces, ack ids) are the Socket.IO transport's; the JSON inside is written
// here, like every other body.

/// The arguments of the event a publication is emitted as, after the event's name:
/// `,<data>,{"channel","offset","epoch","ts","from"?},"<offset>:<epoch>"]`. The caller writes
/// the packet's header and `["<event>"` before it; the whole is encoded once per publication and
/// namespace. The last argument is a string because socket.io-client keeps an event's last
/// string argument as the offset it sends back when it reconnects (see
/// [`socketio_recovery_record`]).
pub fn socketio_publication_args(p: &Publication) -> String {
    #[derive(Serialize)]
    struct Meta<'a> {
        channel: &'a ChannelName,
        offset: u64,
        epoch: &'a str,
        ts: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<&'a Publisher>,
    }
    let meta = encode(&Meta {
        channel: &p.channel,
        offset: p.offset,
        epoch: &p.epoch,
        ts: p.ts,
        from: p.from.as_ref(),
    });
    let data = p.data.get();
    let mut args = String::with_capacity(data.len() + meta.len() + 3);
    args.push(',');
    args.push_str(data);
    args.push(',');
    args.push_str(&meta);
    args.push_str(",\"");
    args.push_str(&p.offset.to_string());
    args.push(':');
    // An epoch is a short token of letters and digits; escaped anyway.
    let epoch = encode(&&*p.epoch);
    args.push_str(epoch.trim_matches('"'));
    args.push_str("\"]");
    args
}

/// A Socket.IO connection's recovery record: the position of each channel it is subscribed to,
/// as far as the server has written it, `[["<channel>",<offset>,"<epoch>"],...]`. It is sent as
/// the last (string) argument of a `herald:recovery` event after each write, so that
/// socket.io-client keeps it as the offset it sends back when it reconnects.
pub fn socketio_recovery_record<'a>(
    positions: impl Iterator<Item = (&'a ChannelName, &'a StreamPosition)>,
) -> String {
    let entries: Vec<(&ChannelName, u64, &str)> = positions
        .map(|(channel, position)| (channel, position.offset, position.epoch.as_str()))
        .collect();
    encode(&entries)
}

/// Reads a recovery record back ([`socketio_recovery_record`]); `None` when the text is not one
/// (the client's offset was a publication's own, written after its last record).
pub fn parse_socketio_recovery_record(text: &str) -> Option<Vec<(ChannelName, StreamPosition)>> {
    let entries: Vec<(String, u64, String)> = serde_json::from_str(text).ok()?;
    entries
        .into_iter()
        .map(|(channel, offset, epoch)| {
            Some((
                ChannelName::parse(&channel).ok()?,
                StreamPosition { offset, epoch },
            ))
        })
        .collect()
}

/// The event name a publication is emitted as: its `event`, or `message`.
pub fn socketio_event_name(p: &Publication) -> &str {
    p.event.as_deref().unwrap_or("message")
}

/// `["<name>",<json>]`: an event's arguments with one value after its name.
pub fn socketio_event(name: &str, json: &str) -> String {
    let name = encode(&name);
    let mut event = String::with_capacity(name.len() + json.len() + 3);
    event.push('[');
    event.push_str(&name);
    event.push(',');
    event.push_str(json);
    event.push(']');
    event
}

/// `{"sid","pid"}`: the answer to a Socket.IO connect: the connection's client id, and the id
/// socket.io-client sends back with its last offset when it reconnects (its own, when everything
/// it missed follows).
pub fn socketio_connect_answer(sid: &str, pid: &str) -> String {
    #[derive(Serialize)]
    struct Answer<'a> {
        sid: &'a str,
        pid: &'a str,
    }
    encode(&Answer { sid, pid })
}

/// `{"client","user"}`: the `connected` event's argument.
pub fn socketio_connected(client: &str, user: &str) -> String {
    #[derive(Serialize)]
    struct Connected<'a> {
        client: &'a str,
        user: &'a str,
    }
    encode(&Connected { client, user })
}

/// `{"channel","offset","epoch","recovered"?}`: a subscription, as an ack result or the argument
/// of a `subscribed` event.
pub fn subscribed_result(subscribed: &Subscribed) -> impl Serialize + '_ {
    #[derive(Serialize)]
    struct SubscribedResult<'a> {
        channel: &'a ChannelName,
        offset: u64,
        epoch: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    }
    SubscribedResult {
        channel: &subscribed.channel,
        offset: subscribed.position.offset,
        epoch: &subscribed.position.epoch,
        recovered: subscribed.recovered,
    }
}

/// `{"channel"}`: an unsubscription, or the channel a mapped event subscribed to.
pub fn channel_result(channel: &ChannelName) -> impl Serialize + '_ {
    #[derive(Serialize)]
    struct ChannelResult<'a> {
        channel: &'a ChannelName,
    }
    ChannelResult { channel }
}

/// `{"ts"}`: the server's clock, the reply to a mapped event that only replies.
pub fn socketio_time(now_ms: u64) -> impl Serialize {
    #[derive(Serialize)]
    struct Time {
        ts: u64,
    }
    Time { ts: now_ms }
}

/// `[{"ok":true,...result}]`: the ack of a built-in event that succeeded.
pub fn socketio_ack_ok<T: Serialize>(result: &T) -> String {
    #[derive(Serialize)]
    struct Ok<'a, T> {
        ok: bool,
        #[serde(flatten)]
        result: &'a T,
    }
    format!("[{}]", encode(&Ok { ok: true, result }))
}

/// `{"error":{"code","message"}}`: what went wrong with an event, as the only argument of its
/// ack (or of an `error` event when the client asked for no ack, with the event's name too).
pub fn socketio_error(code: ErrorCode, message: &str, event: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Detail<'a> {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Error<'a> {
        error: Detail<'a>,
    }
    encode(&Error {
        error: Detail {
            code: code.as_str(),
            message,
            event,
        },
    })
}

/// `{"message","data":{"code"}}`: a refused Socket.IO connect; socket.io-client raises
/// `connect_error` with `message` and `data`.
pub fn socketio_connect_error(code: ErrorCode, message: &str) -> String {
    #[derive(Serialize)]
    struct Data {
        code: &'static str,
    }
    #[derive(Serialize)]
    struct ConnectError<'a> {
        message: &'a str,
        data: Data,
    }
    encode(&ConnectError {
        message,
        data: Data {
            code: code.as_str(),
        },
    })
}

/// `{"code","reason","reconnect"}`: the `herald:disconnect` event sent before the server closes a
/// Socket.IO connection, with the code `/ws` would have closed with.
pub fn socketio_disconnect(d: &Disconnect) -> String {
    #[derive(Serialize)]
    struct DisconnectBody<'a> {
        code: u16,
        reason: &'a str,
        reconnect: bool,
    }
    encode(&DisconnectBody {
        code: d.code.code(),
        reason: &d.reason,
        reconnect: d.reconnect,
    })
}

// === The core's values on the wire ===
//
// Positions, publishers and presence members appear in several frames and bodies; their field
// names are written here, not on the types, so that this module stays the one that knows them.
// Fields keep the order in which they have always been written.

/// A place in a channel's stream: `{"offset","epoch"}`.
#[derive(Serialize, ToSchema)]
struct PositionWire<'a> {
    /// The publication's offset (or the stream's last one).
    offset: u64,
    /// The stream's epoch; a new epoch means the stream began again.
    epoch: &'a str,
}

impl Serialize for StreamPosition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PositionWire {
            offset: self.offset,
            epoch: &self.epoch,
        }
        .serialize(s)
    }
}

impl PartialSchema for StreamPosition {
    fn schema() -> RefOr<Schema> {
        PositionWire::schema()
    }
}

impl ToSchema for StreamPosition {}

impl<'de> Deserialize<'de> for StreamPosition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            offset: u64,
            epoch: String,
        }
        let Wire { offset, epoch } = Wire::deserialize(d)?;
        Ok(StreamPosition { offset, epoch })
    }
}

/// The client that published: `{"user","client"}`.
#[derive(Serialize, ToSchema)]
struct PublisherWire<'a> {
    user: &'a str,
    client: &'a str,
}

impl Serialize for Publisher {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PublisherWire {
            user: &self.user,
            client: &self.client,
        }
        .serialize(s)
    }
}

impl PartialSchema for Publisher {
    fn schema() -> RefOr<Schema> {
        PublisherWire::schema()
    }
}

impl ToSchema for Publisher {}

/// One connection in a channel's presence: `{"user","client","joined_at"}`.
#[derive(Serialize, ToSchema)]
struct MemberWire<'a> {
    user: &'a str,
    client: &'a str,
    /// When it joined, Unix milliseconds.
    joined_at: u64,
}

impl Serialize for PresenceMember {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        MemberWire {
            user: &self.user,
            client: &self.client,
            joined_at: self.joined_at,
        }
        .serialize(s)
    }
}

impl PartialSchema for PresenceMember {
    fn schema() -> RefOr<Schema> {
        MemberWire::schema()
    }
}

impl ToSchema for PresenceMember {}

/// A channel's name: `namespace:name` (or a bare name), of the characters
/// [`ChannelName::parse`] takes.
impl PartialSchema for ChannelName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(crate::channel::MAX_CHANNEL_BYTES))
            .pattern(Some("^[A-Za-z0-9_:.@=-]+$"))
            .examples(["chat:lobby"])
            .into()
    }
}

impl ToSchema for ChannelName {}

/// An error code's wire name, one of [`ErrorCode::ALL`].
impl PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ErrorCode::ALL.map(ErrorCode::as_str)))
            .into()
    }
}

impl ToSchema for ErrorCode {}

// === HTTP API bodies ===
//
// The bodies of the HTTP API's successful answers. Their fields are written in the order the API
// has always written them (alphabetical), so that the bytes do not change.

/// One publication's outcome in a `POST /api/broadcast` or `POST /api/batch` answer:
/// `{"channel","epoch","offset"}` where it landed, or `{"channel","error":{"code","message"}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PublishOutcome {
    /// Published at `offset` in `epoch`.
    Published {
        /// The channel as the request named it.
        channel: String,
        /// The stream's epoch.
        epoch: String,
        /// The publication's offset.
        offset: u64,
    },
    /// Refused; the error says why.
    Refused {
        /// The channel as the request named it.
        channel: String,
        /// Why.
        error: ErrorDetail,
    },
}

impl PublishOutcome {
    /// The outcome of publishing to `channel` (the name as the request gave it).
    pub fn new(channel: String, result: Result<StreamPosition, HeraldError>) -> PublishOutcome {
        match result {
            Ok(position) => PublishOutcome::Published {
                channel,
                epoch: position.epoch,
                offset: position.offset,
            },
            Err(e) => PublishOutcome::Refused {
                channel,
                error: e.into(),
            },
        }
    }
}

/// `{"results":[...]}`: the answer to `POST /api/broadcast` and `POST /api/batch`, one
/// [`PublishOutcome`] per publication, in the request's order.
pub fn publish_results(results: Vec<PublishOutcome>) -> PublishResults {
    PublishResults { results }
}

/// See [`publish_results`].
#[derive(Serialize, ToSchema)]
pub struct PublishResults {
    /// One per publication, in the request's order.
    results: Vec<PublishOutcome>,
}

/// `{}`: the answer to an API call that has nothing to report (`POST /api/disconnect`,
/// `POST /api/unsubscribe`).
pub fn empty_body() -> Empty {
    Empty {}
}

/// See [`empty_body`].
#[derive(Serialize, ToSchema)]
pub struct Empty {}

/// `{"channels":[{"channel","subscribers"}]}`: the answer to `GET /api/channels`.
pub fn channel_list(channels: Vec<ChannelInfo>) -> ChannelList {
    ChannelList {
        channels: channels
            .into_iter()
            .map(|c| ChannelEntry {
                channel: c.channel,
                subscribers: c.subscribers,
            })
            .collect(),
    }
}

/// See [`channel_list`].
#[derive(Serialize, ToSchema)]
pub struct ChannelList {
    channels: Vec<ChannelEntry>,
}

/// A channel with subscribers on this node.
#[derive(Serialize, ToSchema)]
pub struct ChannelEntry {
    #[schema(value_type = ChannelName)]
    channel: ChannelName,
    /// Connections subscribed on this node.
    subscribers: usize,
}

/// `{"connections","online","user"}`: the answer to `GET /api/users/{user}`.
pub fn user_status(user: String, connections: usize) -> UserStatus {
    UserStatus {
        connections,
        online: connections > 0,
        user,
    }
}

/// See [`user_status`].
#[derive(Serialize, ToSchema)]
pub struct UserStatus {
    /// The user's connections on every node.
    connections: usize,
    /// Whether it has any.
    online: bool,
    user: String,
}

/// What `GET /api/stats` reports beside the hub's own figures: the server's counters and how
/// long the process has run.
#[derive(Debug, Clone, Copy)]
pub struct ServerFigures {
    /// Publications received by this node (API and clients).
    pub messages_in: u64,
    /// Publications written to clients by this node.
    pub messages_out: u64,
    /// Seconds since the process started.
    pub uptime_s: u64,
}

/// What `GET /api/stats` reports of the whole cluster: `{"connections","nodes","users"}`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct ClusterFigures {
    /// Connections on every node.
    pub connections: usize,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Distinct users connected.
    pub users: usize,
}

impl ClusterFigures {
    /// The totals of the registry's nodes: connections and users summed (a user connected to
    /// two nodes counts on each).
    pub fn of(nodes: &[NodeFigures]) -> ClusterFigures {
        ClusterFigures {
            connections: nodes.iter().map(|n| n.connections as usize).sum(),
            nodes: nodes.len(),
            users: nodes.iter().map(|n| n.users as usize).sum(),
        }
    }
}

/// `{"cluster":{...},"engine":...,"node":{...},"nodes":[...]}`: the answer to `GET /api/stats`.
pub fn node_stats<'a>(
    engine: &'static str,
    name: &'a str,
    node: &HubSnapshot,
    server: ServerFigures,
    nodes: &'a [NodeFigures],
) -> Stats<'a> {
    Stats {
        cluster: ClusterFigures::of(nodes),
        engine,
        nodes: nodes
            .iter()
            .map(|n| ListedNode {
                connections: n.connections,
                messages_in: n.messages_in,
                messages_out: n.messages_out,
                name: &n.name,
                subscriptions: n.subscriptions,
                uptime_s: n.uptime_s,
                users: n.users,
            })
            .collect(),
        node: NodeStats {
            name,
            channels: node.channels,
            connections: node.connections,
            deliveries_queued: node.deliveries,
            events: node.events,
            messages_in: server.messages_in,
            messages_out: server.messages_out,
            queued_bytes: node.queued_bytes,
            slow_consumers: node.slow_consumers,
            subscriptions: node.subscriptions,
            uptime_s: server.uptime_s,
            users: node.users,
        },
    }
}

/// See [`node_stats`].
#[derive(Serialize, ToSchema)]
pub struct Stats<'a> {
    cluster: ClusterFigures,
    /// `memory` or `redis`.
    engine: &'static str,
    /// This node, in detail.
    node: NodeStats<'a>,
    /// Every live node of the cluster (this one included), by name.
    nodes: Vec<ListedNode<'a>>,
}

/// A node as the registry lists it.
#[derive(Serialize, ToSchema)]
pub struct ListedNode<'a> {
    connections: u64,
    messages_in: u64,
    messages_out: u64,
    name: &'a str,
    subscriptions: u64,
    uptime_s: u64,
    users: u64,
}

/// This node's own figures.
#[derive(Serialize, ToSchema)]
pub struct NodeStats<'a> {
    /// Channels with subscribers here.
    channels: usize,
    connections: usize,
    /// Publications queued for a subscriber, since start.
    deliveries_queued: u64,
    /// Ephemeral events (join, leave, typing) that reached this node, since start.
    events: u64,
    messages_in: u64,
    messages_out: u64,
    name: &'a str,
    /// Bytes waiting in connections' outboxes now.
    queued_bytes: usize,
    /// Connections closed because they fell too far behind, since start.
    slow_consumers: u64,
    subscriptions: usize,
    uptime_s: u64,
    users: usize,
}

/// `{"status":"ok"}`: the answer to `GET /health`.
pub fn health() -> Status {
    Status { status: "ok" }
}

/// `{"status":"ready"}`: the answer to `GET /ready` when the node can take traffic.
pub fn ready() -> Status {
    Status { status: "ready" }
}

/// See [`health`] and [`ready`].
#[derive(Serialize, ToSchema)]
pub struct Status {
    /// `ok` (`/health`) or `ready` (`/ready`).
    status: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn code_of(text: &str) -> ErrorCode {
        parse_command(text)
            .expect_err("should be rejected")
            .error
            .code
    }

    #[test]
    fn parses_every_command() {
        let cases = [
            (r#"{"type":"auth","token":"t"}"#, "auth"),
            (
                r#"{"type":"subscribe","channel":"a:1","since":{"offset":3,"epoch":"e"},"id":1}"#,
                "subscribe",
            ),
            (r#"{"type":"unsubscribe","channel":"a:1"}"#, "unsubscribe"),
            (
                r#"{"type":"publish","channel":"a:1","event":"m","data":{"x":[1,2]}}"#,
                "publish",
            ),
            (r#"{"type":"typing","channel":"a:1"}"#, "typing"),
            (r#"{"type":"presence","channel":"a:1"}"#, "presence"),
            (r#"{"type":"history","channel":"a:1","limit":5}"#, "history"),
            (
                r#"{"type":"subscribe","channel":"a:1","last":10}"#,
                "subscribe",
            ),
            (
                r#"{"type":"auth","token":"t","since":{"offset":3,"epoch":"e"}}"#,
                "auth",
            ),
            (r#"{"type":"refresh","token":"t"}"#, "refresh"),
            (r#"{"type":"ping","id":"abc"}"#, "ping"),
        ];
        for (text, kind) in cases {
            let (_, command) = parse_command(text).expect(text);
            assert_eq!(command.kind(), kind);
        }
    }

    #[test]
    fn rejects_bad_frames_with_bad_request_and_keeps_the_id() {
        for text in [
            "not json",
            r#"{"type":"launch","id":9}"#,
            r#"{"type":"subscribe","id":9}"#,
            r#"{"type":"subscribe","channel":42,"id":9}"#,
            r#"{"type":"subscribe","channel":"bad name","id":9}"#,
            r#"{"type":"publish","channel":"a:1","id":9}"#,
            r#"{"type":"subscribe","channel":"a:1","last":5,"since":{"offset":1,"epoch":"e"},"id":9}"#,
            r#"{"type":"subscribe","channel":"a:1","last":100000,"id":9}"#,
            r#"{"type":"subscribe","channel":"a:1","since":{"offset":-1,"epoch":"e"},"id":9}"#,
            r#"[1,2,3]"#,
        ] {
            assert_eq!(code_of(text), ErrorCode::BadRequest, "{text}");
        }
        let rejected = parse_command(r#"{"type":"launch","id":9}"#).expect_err("unknown");
        assert_eq!(rejected.id, Some(RequestId::Number(9)));
    }

    #[test]
    fn sse_event_ids_round_trip_and_reject_garbage() {
        let positions = vec![
            (
                ChannelName::parse("user:42").expect("channel"),
                StreamPosition {
                    offset: 17,
                    epoch: "3fa0c1d2e4".into(),
                },
            ),
            (
                ChannelName::parse("site:a:b").expect("channel"),
                StreamPosition {
                    offset: 0,
                    epoch: "0000000001".into(),
                },
            ),
        ];
        let id = sse_event_id(positions.iter().map(|(c, p)| (c, p)));
        assert_eq!(id, "user:42:17:3fa0c1d2e4,site:a:b:0:0000000001");
        assert_eq!(parse_sse_event_id(&id).expect("parses"), positions);
        for bad in ["x", "user:42:abc:e", "user:42:1:", "bad name:1:e", ":1"] {
            assert!(parse_sse_event_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn http_errors_have_one_shape() {
        let body = http_error(HeraldError::new(ErrorCode::MethodNotAllowed, "say \"GET\""));
        let body: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "method_not_allowed", "message": "say \"GET\""}})
        );
        let detail =
            serde_json::to_value(ErrorDetail::from(HeraldError::bad_request("no"))).expect("json");
        assert_eq!(body["error"].as_object().map(|o| o.len()), Some(2));
        assert_eq!(
            detail,
            serde_json::json!({"code": "bad_request", "message": "no"})
        );
    }

    /// The bytes each body has always had: what `serde_json::json!` wrote (its maps sort keys).
    #[test]
    fn bodies_and_results_keep_their_bytes() {
        use serde_json::json;
        let same = |built: String, before: Value| assert_eq!(built, before.to_string());
        let id = RequestId::Number(4);
        assert_eq!(
            reply(Some(&id), &typing_result(false)),
            r#"{"type":"reply","id":4,"result":{"sent":false}}"#
        );
        assert_eq!(
            reply(Some(&id), &refresh_result(1_700_000_000)),
            r#"{"type":"reply","id":4,"result":{"expires_at":1700000000}}"#
        );
        assert_eq!(
            reply(None, &ping_result(1_700_000_000_123)),
            r#"{"type":"reply","result":{"pong":1700000000123}}"#
        );
        let outcomes = vec![
            PublishOutcome::new(
                "chat:1".into(),
                Ok(StreamPosition {
                    offset: 7,
                    epoch: "e1".into(),
                }),
            ),
            PublishOutcome::new("bad name".into(), Err(HeraldError::bad_request("no"))),
        ];
        same(
            encode(&publish_results(outcomes)),
            json!({"results": [
                {"channel": "chat:1", "offset": 7, "epoch": "e1"},
                {"channel": "bad name", "error": {"code": "bad_request", "message": "no"}},
            ]}),
        );
        same(encode(&empty_body()), json!({}));
        let channels = vec![ChannelInfo {
            channel: ChannelName::parse("chat:1").expect("channel"),
            subscribers: 2,
        }];
        same(
            encode(&channel_list(channels)),
            json!({"channels": [{"channel": "chat:1", "subscribers": 2}]}),
        );
        same(
            encode(&user_status("bob".into(), 0)),
            json!({"user": "bob", "online": false, "connections": 0}),
        );
        let snapshot = HubSnapshot {
            connections: 2,
            users: 3,
            channels: 4,
            subscriptions: 5,
            publications: 6,
            deliveries: 7,
            slow_consumers: 8,
            events: 9,
            queued_bytes: 10,
        };
        let server = ServerFigures {
            messages_in: 11,
            messages_out: 12,
            uptime_s: 13,
        };
        let nodes = [
            NodeFigures {
                name: "a".into(),
                connections: 2,
                users: 3,
                subscriptions: 5,
                messages_in: 11,
                messages_out: 12,
                uptime_s: 13,
            },
            NodeFigures {
                name: "b".into(),
                connections: 10,
                users: 1,
                ..NodeFigures::default()
            },
        ];
        same(
            encode(&node_stats("redis", "a", &snapshot, server, &nodes)),
            json!({
                "engine": "redis",
                "node": {
                    "name": "a",
                    "connections": 2, "users": 3, "channels": 4, "subscriptions": 5,
                    "messages_in": 11, "messages_out": 12, "deliveries_queued": 7,
                    "slow_consumers": 8, "events": 9, "queued_bytes": 10, "uptime_s": 13,
                },
                "cluster": {"nodes": 2, "connections": 12, "users": 4},
                "nodes": [
                    {"name": "a", "connections": 2, "users": 3, "subscriptions": 5,
                     "messages_in": 11, "messages_out": 12, "uptime_s": 13},
                    {"name": "b", "connections": 10, "users": 1, "subscriptions": 0,
                     "messages_in": 0, "messages_out": 0, "uptime_s": 0},
                ],
            }),
        );
        same(encode(&health()), json!({"status": "ok"}));
        same(encode(&ready()), json!({"status": "ready"}));
    }

    #[test]
    fn message_frames_carry_data_verbatim() {
        let data = RawValue::from_string(r#"{"t":21.5}"#.into()).expect("json");
        let channel = ChannelName::parse("machine:42").expect("channel");
        let p = Publication::new(
            channel,
            Some("TELEMETRY".into()),
            data,
            (7, "e1".into()),
            None,
        );
        let frame: Value = serde_json::from_str(&message(&p)).expect("json");
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["channel"], "machine:42");
        assert_eq!(frame["event"], "TELEMETRY");
        assert_eq!(frame["data"]["t"], 21.5);
        assert_eq!(frame["offset"], 7);
        assert!(frame.get("from").is_none());
    }
}
