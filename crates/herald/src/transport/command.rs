//! What a client's command does, whichever transport it came over: `/ws` answers the outcome
//! with a native frame, `/socket.io/` with an ack. Each transport checks its own rate limit and
//! handles `auth` and `refresh` itself (they change the connection, not the hub).

use herald_core::engine::HistoryPage;
use herald_core::presence::Presence;
use herald_core::protocol::{self, Command, RequestId};
use herald_core::publication::now_millis;
use herald_core::{ChannelName, HeraldError, Session, StreamPosition, Subscribed};

use crate::server::App;

/// What a command did.
pub(crate) enum Outcome {
    Subscribed(Subscribed),
    Unsubscribed(ChannelName),
    Published(StreamPosition),
    History {
        channel: ChannelName,
        page: HistoryPage,
        since_given: bool,
    },
    /// Whether the typing throttle let it through.
    Typing(bool),
    Presence {
        channel: ChannelName,
        presence: Presence,
        counts_only: bool,
    },
    /// The server's clock, Unix milliseconds.
    Pong(u64),
}

/// Carries out `command` for `session`. `auth` and `refresh` are the transport's and are
/// refused here.
pub(crate) async fn execute(
    app: &App,
    session: &Session,
    command: Command,
) -> Result<Outcome, HeraldError> {
    match command {
        Command::Auth { .. } => Err(HeraldError::bad_request("already authenticated")),
        Command::Refresh { .. } => Err(HeraldError::bad_request(
            "refresh is not available on this transport; reconnect with a new token",
        )),
        Command::Subscribe { channel, recovery } => session
            .subscribe(&channel, recovery)
            .await
            .map(Outcome::Subscribed),
        Command::Unsubscribe { channel } => session
            .unsubscribe(&channel)
            .await
            .map(|()| Outcome::Unsubscribed(channel)),
        Command::Publish {
            channel,
            event,
            data,
        } => {
            let position = session.publish(channel, event, data).await?;
            app.metrics.messages_in.inc();
            Ok(Outcome::Published(position))
        }
        Command::History {
            channel,
            since,
            limit,
        } => {
            let query = protocol::history_query(since, limit)?;
            let since_given = query.since.is_some();
            let page = session.history(&channel, query).await?;
            Ok(Outcome::History {
                channel,
                page,
                since_given,
            })
        }
        Command::Typing { channel } => {
            let sent = session.typing(&channel).await?;
            if !sent {
                app.metrics.typing_throttled.inc();
            }
            Ok(Outcome::Typing(sent))
        }
        Command::Presence {
            channel,
            counts_only,
        } => {
            let presence = session.presence(&channel, counts_only).await?;
            Ok(Outcome::Presence {
                channel,
                presence,
                counts_only,
            })
        }
        Command::Ping => Ok(Outcome::Pong(now_millis())),
    }
}

impl Outcome {
    /// The native protocol's answer to the command with `id`; none for a `typing` without one.
    pub(crate) fn native_frame(&self, id: Option<&RequestId>) -> Option<String> {
        Some(match self {
            Outcome::Subscribed(subscribed) => protocol::subscribed(id, subscribed),
            Outcome::Unsubscribed(channel) => protocol::unsubscribed(id, channel),
            Outcome::Published(position) => protocol::reply(id, position),
            Outcome::History {
                channel,
                page,
                since_given,
            } => protocol::reply(id, &protocol::history_result(channel, page, *since_given)),
            Outcome::Typing(sent) => {
                id?;
                protocol::reply(id, &protocol::typing_result(*sent))
            }
            Outcome::Presence {
                channel,
                presence,
                counts_only,
            } => protocol::reply(
                id,
                &protocol::presence_result(channel, presence, *counts_only),
            ),
            Outcome::Pong(now) => protocol::reply(id, &protocol::ping_result(*now)),
        })
    }

    /// The Socket.IO ack's arguments: `[{"ok":true,...}]` with the native result's fields.
    pub(crate) fn socketio_ack(&self) -> String {
        match self {
            Outcome::Subscribed(subscribed) => {
                protocol::socketio_ack_ok(&protocol::subscribed_result(subscribed))
            }
            Outcome::Unsubscribed(channel) => {
                protocol::socketio_ack_ok(&protocol::channel_result(channel))
            }
            Outcome::Published(position) => protocol::socketio_ack_ok(position),
            Outcome::History {
                channel,
                page,
                since_given,
            } => protocol::socketio_ack_ok(&protocol::history_result(channel, page, *since_given)),
            Outcome::Typing(sent) => protocol::socketio_ack_ok(&protocol::typing_result(*sent)),
            Outcome::Presence {
                channel,
                presence,
                counts_only,
            } => protocol::socketio_ack_ok(&protocol::presence_result(
                channel,
                presence,
                *counts_only,
            )),
            Outcome::Pong(now) => protocol::socketio_ack_ok(&protocol::ping_result(*now)),
        }
    }
}
