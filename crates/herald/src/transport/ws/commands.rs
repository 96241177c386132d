//! A connection's commands: what the client sends once it is authenticated, and the answers.
//!
//! [`Connection::on_inbound`] takes one whole message from the reader: a WebSocket ping is
//! answered with a pong and a close with a close, and a text frame is parsed by the protocol
//! module and passes the connection's command rate limit ([`CommandRate`]: `rate_limited`, then
//! 4008 for a client that keeps sending) before `handle` answers it through the client's
//! [`Session`]. Every answer, its `result` included, is built by `herald_core::protocol`: nothing
//! here knows the wire format's field names. A command's work and its answer happen in the
//! connection's own task, so a slow hook or history read delays only that client; nothing here
//! holds a lock across an `.await`.

use herald_core::protocol::{self, Command, RequestId};
use herald_core::{CloseCode, Disconnect, ErrorCode, HeraldError, Session};

use super::connection::{Connection, Ended};
use super::frame::{self, Inbound};
use crate::config::Limits;
use crate::limits::CommandBucket;
use crate::transport::command;

/// A connection's command rate limit, and how many commands in a row it refused.
pub(super) struct CommandRate {
    bucket: CommandBucket,
    refused_in_a_row: u32,
}

impl CommandRate {
    pub(super) fn new(limits: &Limits) -> CommandRate {
        CommandRate {
            bucket: CommandBucket::new(limits.commands_per_minute, limits.commands_burst),
            refused_in_a_row: 0,
        }
    }
}

// === impl Connection ===

impl Connection {
    /// Handles one message from the client. Returns the new token expiry after a successful
    /// `refresh`.
    pub(super) async fn on_inbound(
        &mut self,
        session: &Session,
        inbound: Inbound,
        commands: &mut CommandRate,
    ) -> Result<Option<u64>, Ended> {
        // From here until the next flush this task writes, so that an answer goes out before
        // what the command causes (a `subscribed` before the channel's first message).
        session.outbox().claim();
        let parsed = match inbound {
            Inbound::Text(text) => protocol::parse_command(&text),
            Inbound::Binary(_) => Err(protocol::Rejected {
                id: None,
                error: HeraldError::bad_request(
                    "binary frames are not accepted; send JSON text frames",
                ),
            }),
            Inbound::Ping(payload) => {
                self.write(frame::pong(&payload)).await?;
                return Ok(None);
            }
            Inbound::Pong => return Ok(None),
            Inbound::Close(code) => return Err(self.answer_close(code).await),
        };
        let burst = self.app.config.limits.commands_burst;
        if !commands.bucket.try_take() {
            commands.refused_in_a_row += 1;
            if commands.refused_in_a_row > burst {
                return Err(Disconnect::new(
                    CloseCode::RateLimited,
                    "kept sending after rate_limited",
                )
                .into());
            }
            let e = HeraldError::new(ErrorCode::RateLimited, "too many commands; slow down");
            let id = match &parsed {
                Ok((id, _)) => id.as_ref(),
                Err(rejected) => rejected.id.as_ref(),
            };
            self.send_error(id, &e).await?;
            return Ok(None);
        }
        commands.refused_in_a_row = 0;
        self.handle(session, parsed).await
    }

    /// Handles one command. Returns the new token expiry after a successful `refresh`.
    async fn handle(
        &mut self,
        session: &Session,
        parsed: Result<(Option<RequestId>, Command), protocol::Rejected>,
    ) -> Result<Option<u64>, Ended> {
        let (id, command) = match parsed {
            Ok(parsed) => parsed,
            Err(rejected) => {
                self.send_error(rejected.id.as_ref(), &rejected.error)
                    .await?;
                return Ok(None);
            }
        };
        let id = id.as_ref();
        let app = self.app.clone();
        if let Command::Refresh { token } = command {
            return match app.auth.verify(&token) {
                Err(e) => {
                    self.send_error(id, &HeraldError::new(ErrorCode::Unauthorized, e.0))
                        .await?;
                    Ok(None)
                }
                Ok(v) if v.identity.user != *session.user() => {
                    let e = HeraldError::forbidden("a refresh token must be for the same user");
                    self.send_error(id, &e).await?;
                    Ok(None)
                }
                Ok(v) => {
                    // A token always has an expiry.
                    let expires_at = v.expires_at.unwrap_or_default();
                    session.set_identity(v.identity);
                    self.send(protocol::reply(id, &protocol::refresh_result(expires_at)))
                        .await?;
                    Ok(Some(expires_at))
                }
            };
        }
        // Only a command with an `id` gets an answer to `typing`; a throttled one is no error.
        let outcome = command::execute(&app, session, command)
            .await
            .map(|outcome| outcome.native_frame(id));
        match outcome {
            Ok(Some(frame)) => self.send(frame).await?,
            Ok(None) => {}
            Err(e) => self.send_error(id, &e).await?,
        }
        Ok(None)
    }
}
