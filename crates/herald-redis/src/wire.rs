//! What Herald nodes write to each other through Redis: publications (in history and on pub/sub),
//! channel events and cluster commands, and the members of presence.
//!
//! A publication's body is JSON (`{"e":event,"d":data,"f":[user,client]}`, the absent parts left
//! out), written once by the publishing node; the publish script stores it in history as it is and
//! sends `p<offset>:<epoch>:<ts>:<body>` on the channel's subject, so that the offset it assigned
//! travels with it without the script touching JSON. An event on the same subject is `e` followed
//! by its JSON; a command, on the commands subject, is JSON.

use std::sync::Arc;

use herald_core::engine::ClusterCommand;
use herald_core::presence::{ChannelEvent, EventKind, PresenceMember};
use herald_core::publication::{Publication, Publisher};
use herald_core::ChannelName;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Serialize, Deserialize)]
struct Body<'a> {
    #[serde(rename = "e", skip_serializing_if = "Option::is_none", borrow)]
    event: Option<&'a str>,
    #[serde(rename = "d", borrow)]
    data: &'a RawValue,
    #[serde(rename = "f", skip_serializing_if = "Option::is_none", borrow)]
    from: Option<(&'a str, &'a str)>,
}

/// The body of a publication, as stored in history and sent on pub/sub.
pub(crate) fn publication_body(
    event: Option<&str>,
    data: &RawValue,
    from: Option<&Publisher>,
) -> String {
    let body = Body {
        event,
        data,
        from: from.map(|p| (&*p.user, &*p.client)),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// A publication from its body and the position the script gave it.
pub(crate) fn publication(
    channel: ChannelName,
    offset: u64,
    epoch: Arc<str>,
    ts: u64,
    body: &str,
) -> Option<Publication> {
    let body: Body = serde_json::from_str(body).ok()?;
    let mut publication = Publication::new(
        channel,
        body.event.map(Into::into),
        body.data.to_owned(),
        (offset, epoch),
        body.from.map(|(user, client)| Publisher {
            user: user.into(),
            client: client.into(),
        }),
    );
    publication.ts = ts;
    Some(publication)
}

/// What arrived on a channel's subject.
pub(crate) enum Received<'a> {
    /// A publication: its offset, epoch, timestamp and body.
    Publication {
        /// Its offset.
        offset: u64,
        /// Its stream's epoch.
        epoch: &'a str,
        /// When it was published (ms).
        ts: u64,
        /// Its body.
        body: &'a str,
    },
    /// A channel event.
    Event(EventKind, &'a str, &'a str),
}

#[derive(Serialize, Deserialize)]
struct EventBody<'a> {
    k: &'a str,
    u: &'a str,
    c: &'a str,
}

/// A channel event as sent on its subject.
pub(crate) fn event(event: &ChannelEvent) -> String {
    let body = EventBody {
        k: event.kind.as_str(),
        u: &event.user,
        c: &event.client,
    };
    format!("e{}", serde_json::to_string(&body).unwrap_or_default())
}

/// Reads a message of a channel's subject.
pub(crate) fn received(payload: &[u8]) -> Option<Received<'_>> {
    let text = std::str::from_utf8(payload).ok()?;
    match text.as_bytes().first()? {
        b'p' => {
            let mut parts = text[1..].splitn(4, ':');
            let offset = parts.next()?.parse().ok()?;
            let epoch = parts.next()?;
            let ts = parts.next()?.parse().ok()?;
            let body = parts.next()?;
            Some(Received::Publication {
                offset,
                epoch,
                ts,
                body,
            })
        }
        b'e' => {
            let body: EventBody = serde_json::from_str(&text[1..]).ok()?;
            let kind = match body.k {
                "join" => EventKind::Join,
                "leave" => EventKind::Leave,
                "typing" => EventKind::Typing,
                _ => return None,
            };
            Some(Received::Event(kind, body.u, body.c))
        }
        _ => None,
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum CommandBody {
    Disconnect { u: String, r: bool },
    Unsubscribe { u: String, c: String },
}

/// A cluster command as sent on the commands subject.
pub(crate) fn command(command: &ClusterCommand) -> String {
    let body = match command {
        ClusterCommand::DisconnectUser { user, reconnect } => CommandBody::Disconnect {
            u: user.to_string(),
            r: *reconnect,
        },
        ClusterCommand::UnsubscribeUser { user, channel } => CommandBody::Unsubscribe {
            u: user.to_string(),
            c: channel.to_string(),
        },
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// Reads a message of the commands subject.
pub(crate) fn received_command(payload: &[u8]) -> Option<ClusterCommand> {
    Some(match serde_json::from_slice(payload).ok()? {
        CommandBody::Disconnect { u, r } => ClusterCommand::DisconnectUser {
            user: u.into(),
            reconnect: r,
        },
        CommandBody::Unsubscribe { u, c } => ClusterCommand::UnsubscribeUser {
            user: u.into(),
            channel: ChannelName::parse(&c).ok()?,
        },
    })
}

/// A presence member as stored: `joined_at:user` (the client is the field).
pub(crate) fn member(client: &str, stored: &str) -> Option<PresenceMember> {
    let (joined_at, user) = stored.split_once(':')?;
    Some(PresenceMember {
        user: user.into(),
        client: client.into(),
        joined_at: joined_at.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_survives_the_trip() {
        let data = RawValue::from_string(r#"{"a":[1,"x:y"]}"#.into()).expect("json");
        let from = Publisher {
            user: "al:ice".into(),
            client: "c1".into(),
        };
        let body = publication_body(Some("ev"), &data, Some(&from));
        let message = format!("p7:e1f:1700:{body}");
        let Some(Received::Publication {
            offset,
            epoch,
            ts,
            body,
        }) = received(message.as_bytes())
        else {
            panic!("not a publication");
        };
        assert_eq!((offset, epoch, ts), (7, "e1f", 1700));
        let channel = ChannelName::parse("chat:1").expect("name");
        let p = publication(channel, offset, epoch.into(), ts, body).expect("body");
        assert_eq!(p.data.get(), r#"{"a":[1,"x:y"]}"#);
        assert_eq!(p.event.as_deref(), Some("ev"));
        assert_eq!(p.from.as_ref().map(|f| &*f.user), Some("al:ice"));
        assert_eq!(p.ts, 1700);
    }

    #[test]
    fn commands_and_members_survive_the_trip() {
        let commands = [
            ClusterCommand::DisconnectUser {
                user: "u".into(),
                reconnect: false,
            },
            ClusterCommand::UnsubscribeUser {
                user: "u".into(),
                channel: ChannelName::parse("a:b").expect("name"),
            },
        ];
        for c in commands {
            assert_eq!(received_command(command(&c).as_bytes()), Some(c));
        }
        let m = member("c1", "12:user:with:colons").expect("member");
        assert_eq!((&*m.user, m.joined_at), ("user:with:colons", 12));
        assert!(received(b"x").is_none() && received(b"p1:e").is_none());
    }
}
