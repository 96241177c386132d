//! Engine.IO v4 and Socket.IO v5 packets: the one place that knows their text forms.
//!
//! An Engine.IO packet is a type digit and its data: `0` open, `1` close, `2` ping, `3` pong,
//! `4` message, `5` upgrade, `6` noop. Over WebSocket each packet is one frame (a binary frame is
//! a binary message); over HTTP long-polling a payload joins packets with the record separator
//! `\x1e`, a binary message written as `b` and its base64.
//!
//! A Socket.IO packet travels as the data of an Engine.IO message:
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`, type `0` connect, `1` disconnect,
//! `2` event, `3` ack, `4` connect error, `5` binary event, `6` binary ack. The namespace is
//! written only when it is not `/`; a binary packet's attachments follow it as that many binary
//! messages, and its JSON holds `{"_placeholder":true,"num":i}` where each goes.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::value::RawValue;

/// The record separator between packets in a long-polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// Most binary attachments one Socket.IO packet may announce.
pub const MAX_ATTACHMENTS: usize = 16;

/// An Engine.IO packet from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum EngineIn {
    Close,
    Ping(String),
    Pong(String),
    /// A text message: a Socket.IO packet, or (for an Engine.IO-only server) the message.
    Message(String),
    /// A binary message.
    Binary(Vec<u8>),
    Upgrade,
    Noop,
}

/// The client's bytes are not Engine.IO.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// Parses one text packet (a WebSocket text frame, or one packet of a polling payload, where a
/// `b` packet is a base64 binary message).
pub fn parse_engine_text(text: &str, polling: bool) -> Result<EngineIn, Malformed> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(Malformed("an empty Engine.IO packet"))?;
    let data = chars.as_str();
    Ok(match kind {
        '1' => EngineIn::Close,
        '2' => EngineIn::Ping(data.to_owned()),
        '3' => EngineIn::Pong(data.to_owned()),
        '4' => EngineIn::Message(data.to_owned()),
        '5' => EngineIn::Upgrade,
        '6' => EngineIn::Noop,
        'b' if polling => EngineIn::Binary(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| Malformed("a binary packet that is not base64"))?,
        ),
        _ => return Err(Malformed("an unknown Engine.IO packet type")),
    })
}

/// Splits a long-polling payload into its packets.
pub fn parse_payload(body: &[u8]) -> Result<Vec<EngineIn>, Malformed> {
    let text = std::str::from_utf8(body).map_err(|_| Malformed("a payload that is not UTF-8"))?;
    text.split(SEPARATOR as char)
        .map(|packet| parse_engine_text(packet, true))
        .collect()
}

/// A packet for the client, in the form both transports can write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A text packet, its type digit first (`4…` for a message).
    Text(Bytes),
    /// A binary message (an attachment).
    #[cfg_attr(not(any(test, feature = "socketio-conformance")), expect(dead_code))]
    Binary(Bytes),
}

impl Outgoing {
    pub fn text(text: impl Into<String>) -> Outgoing {
        Outgoing::Text(Bytes::from(text.into()))
    }

    /// The length it adds to a polling payload (without the separator).
    fn polling_len(&self) -> usize {
        match self {
            Outgoing::Text(text) => text.len(),
            Outgoing::Binary(data) => 1 + data.len().div_ceil(3) * 4,
        }
    }
}

/// Engine.IO's `open` packet.
pub fn open(
    sid: &str,
    upgrades: bool,
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: usize,
) -> Outgoing {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Open<'a> {
        sid: &'a str,
        upgrades: &'a [&'a str],
        ping_interval: u64,
        ping_timeout: u64,
        max_payload: usize,
    }
    let open = Open {
        sid,
        upgrades: if upgrades { &["websocket"] } else { &[] },
        ping_interval: ping_interval_ms,
        ping_timeout: ping_timeout_ms,
        max_payload,
    };
    Outgoing::text(format!(
        "0{}",
        serde_json::to_string(&open).unwrap_or_default()
    ))
}

pub const CLOSE: &str = "1";
pub const PING: &str = "2";
pub const NOOP: &str = "6";

/// Joins packets into one long-polling payload.
pub fn payload(packets: &[Outgoing]) -> Bytes {
    let len = packets.iter().map(|p| p.polling_len() + 1).sum::<usize>();
    let mut body = Vec::with_capacity(len);
    for (i, packet) in packets.iter().enumerate() {
        if i > 0 {
            body.push(SEPARATOR);
        }
        match packet {
            Outgoing::Text(text) => body.extend_from_slice(text),
            Outgoing::Binary(data) => {
                body.push(b'b');
                body.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(data)
                        .as_bytes(),
                );
            }
        }
    }
    Bytes::from(body)
}

// === Socket.IO ===

/// A Socket.IO packet's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect = 0,
    Disconnect = 1,
    Event = 2,
    Ack = 3,
    ConnectError = 4,
    BinaryEvent = 5,
    BinaryAck = 6,
}

/// A Socket.IO packet from the client (its attachments, if any, still to come).
#[derive(Debug)]
pub struct Packet {
    pub kind: Kind,
    pub namespace: String,
    pub ack: Option<u64>,
    pub attachments: usize,
    /// The JSON after the header, if any.
    pub data: Option<Box<RawValue>>,
}

/// Parses a Socket.IO packet, checking its data's shape as Socket.IO's own parser does: a
/// connect carries an object or nothing, an event a non-empty array whose first element is the
/// event's name, an ack an array, a disconnect nothing.
pub fn parse(text: &str) -> Result<Packet, Malformed> {
    let bytes = text.as_bytes();
    let kind = match bytes.first() {
        Some(b'0') => Kind::Connect,
        Some(b'1') => Kind::Disconnect,
        Some(b'2') => Kind::Event,
        Some(b'3') => Kind::Ack,
        Some(b'5') => Kind::BinaryEvent,
        Some(b'6') => Kind::BinaryAck,
        _ => return Err(Malformed("an unknown Socket.IO packet type")),
    };
    let mut at = 1;
    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let digits = bytes[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || bytes.get(at + digits) != Some(&b'-') {
            return Err(Malformed("a binary packet without its attachment count"));
        }
        attachments = text[at..at + digits]
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= MAX_ATTACHMENTS)
            .ok_or(Malformed("too many binary attachments"))?;
        at += digits + 1;
    }
    let mut namespace = "/".to_owned();
    if bytes.get(at) == Some(&b'/') {
        let end = text[at..].find(',').map_or(text.len(), |i| at + i);
        namespace = text[at..end].to_owned();
        at = (end + 1).min(text.len());
    }
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let ack = if digits > 0 {
        let id = text[at..at + digits]
            .parse::<u64>()
            .map_err(|_| Malformed("an ack id out of range"))?;
        at += digits;
        Some(id)
    } else {
        None
    };
    let rest = &text[at..];
    let data = if rest.is_empty() {
        None
    } else {
        Some(
            serde_json::from_str::<Box<RawValue>>(rest)
                .map_err(|_| Malformed("a packet whose data is not JSON"))?,
        )
    };
    let shape = data.as_deref().map(|d| d.get().trim_start().as_bytes()[0]);
    let valid = match kind {
        Kind::Connect => matches!(shape, None | Some(b'{')),
        Kind::Disconnect => shape.is_none(),
        Kind::Event | Kind::BinaryEvent => data.as_deref().is_some_and(event_name_first),
        Kind::Ack | Kind::BinaryAck => shape == Some(b'[') && ack.is_some(),
        Kind::ConnectError => false,
    };
    if !valid {
        return Err(Malformed("a packet whose data has the wrong shape"));
    }
    Ok(Packet {
        kind,
        namespace,
        ack,
        attachments,
        data,
    })
}

/// Whether `data` is an array whose first element is a string.
fn event_name_first(data: &RawValue) -> bool {
    serde_json::from_str::<Vec<Box<RawValue>>>(data.get())
        .is_ok_and(|args| args.first().is_some_and(|a| a.get().starts_with('"')))
}

/// The header of a Socket.IO packet for the client, `4` (Engine.IO message) included:
/// `4<type>[<attachments>-][<namespace>,][<ack id>]`.
pub fn header(kind: Kind, namespace: &str, attachments: usize, ack: Option<u64>) -> String {
    let mut out = String::with_capacity(8 + namespace.len());
    out.push('4');
    out.push(char::from(b'0' + kind as u8));
    if attachments > 0 {
        out.push_str(&attachments.to_string());
        out.push('-');
    }
    if namespace != "/" {
        out.push_str(namespace);
        out.push(',');
    }
    if let Some(ack) = ack {
        out.push_str(&ack.to_string());
    }
    out
}

/// A whole Socket.IO text packet for the client: its header, then `json`.
/// The text of the event `name` on `namespace`, with `json` as its one argument.
pub fn event_text(namespace: &str, name: &str, json: &str) -> String {
    header(Kind::Event, namespace, 0, None) + &herald_core::protocol::socketio_event(name, json)
}

/// [`event_text`], as a packet to send.
pub fn event(namespace: &str, name: &str, json: &str) -> Outgoing {
    Outgoing::text(event_text(namespace, name, json))
}

pub fn text_packet(kind: Kind, namespace: &str, ack: Option<u64>, json: &str) -> Outgoing {
    let mut text = header(kind, namespace, 0, ack);
    text.push_str(json);
    Outgoing::text(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_engine_packets_and_polling_payloads() {
        assert_eq!(
            parse_engine_text("4hello", false),
            Ok(EngineIn::Message("hello".into()))
        );
        assert_eq!(
            parse_engine_text("2probe", false),
            Ok(EngineIn::Ping("probe".into()))
        );
        assert!(parse_engine_text("abc", false).is_err());
        assert!(parse_engine_text("", false).is_err());
        assert!(
            parse_engine_text("bAQID", false).is_err(),
            "base64 only in polling"
        );
        assert_eq!(
            parse_payload(b"4hello\x1ebAQIDBA==").expect("valid"),
            vec![
                EngineIn::Message("hello".into()),
                EngineIn::Binary(vec![1, 2, 3, 4])
            ]
        );
        assert!(parse_payload(b"4a\x1e").is_err(), "an empty packet");
    }

    #[test]
    fn writes_polling_payloads() {
        let body = payload(&[
            Outgoing::text("4hello"),
            Outgoing::Binary(Bytes::from_static(&[1, 2, 3, 4])),
        ]);
        assert_eq!(&body[..], b"4hello\x1ebAQIDBA==");
    }

    #[test]
    fn reads_socketio_packets() {
        let p = parse("0").expect("valid");
        assert_eq!(
            (p.kind, p.namespace.as_str(), p.data.is_none()),
            (Kind::Connect, "/", true)
        );
        let p = parse("0/custom,{\"token\":\"abc\"}").expect("valid");
        assert_eq!(p.namespace, "/custom");
        assert_eq!(p.data.expect("valid").get(), "{\"token\":\"abc\"}");
        assert_eq!(parse("0/random").expect("valid").namespace, "/random");
        let p = parse("2456[\"message-with-ack\",1]").expect("valid");
        assert_eq!((p.kind, p.ack), (Kind::Event, Some(456)));
        let p = parse(
            "52-789[\"m\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]",
        )
        .expect("valid");
        assert_eq!(
            (p.kind, p.attachments, p.ack),
            (Kind::BinaryEvent, 2, Some(789))
        );
        let p = parse("3/ws,12[\"ok\"]").expect("valid");
        assert_eq!(
            (p.kind, p.namespace.as_str(), p.ack),
            (Kind::Ack, "/ws", Some(12))
        );
        assert_eq!(parse("1/custom").expect("valid").kind, Kind::Disconnect);
    }

    #[test]
    fn refuses_malformed_socketio_packets() {
        for bad in [
            "abc",
            "2{}",
            "2abc[\"m\"]",
            "2[]",
            "2[1]",
            "0[]",
            "1{}",
            "3[1]",
            "5[\"m\"]",
            "599-[\"m\"]",
            "4{\"message\":\"x\"}",
            "2[\"unterminated",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn writes_socketio_headers() {
        assert_eq!(header(Kind::Event, "/", 0, None), "42");
        assert_eq!(header(Kind::Connect, "/custom", 0, None), "40/custom,");
        assert_eq!(header(Kind::BinaryAck, "/", 2, Some(789)), "462-789");
        assert_eq!(header(Kind::Ack, "/ws", 0, Some(3)), "43/ws,3");
    }
}
