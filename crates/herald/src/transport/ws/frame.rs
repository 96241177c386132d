//! WebSocket frames (RFC 6455 §5), at the level Herald needs them.
//!
//! Herald writes its own frames instead of going through a WebSocket library's message writer,
//! because a server frame is unmasked: header and payload are the same bytes for every receiver.
//! A publication is framed once ([`text`]) and the same shared buffer is written to each
//! subscriber's socket; nothing is copied per connection. Header parsing and formatting are
//! tungstenite's ([`FrameHeader`]); what is here is the reassembly of a client's messages
//! ([`FrameReader`]) and the rules the RFC sets for them.

use std::io::Cursor;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::deflate::{self, Deflate, InflateError};

/// The largest payload a control frame may carry (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;
/// The largest payload length a frame may state: the most significant bit of the 64-bit form must
/// be 0 (RFC 6455 §5.2).
const MAX_PAYLOAD_LENGTH: u64 = i64::MAX as u64;

/// Reasons given in the close frame when the client's bytes are refused.
const UNKNOWN_OPCODE: &str = "unknown opcode";
const NO_MESSAGE: &str = "a continuation frame with no message";
const NOT_UTF8: &str = "a text message that is not UTF-8";

/// A complete, unmasked server frame: the header, then `payload`, in one buffer.
fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    encode_with(opcode, false, payload)
}

/// [`encode`], with RSV1 set for a compressed message (RFC 7692 §6).
fn encode_with(opcode: OpCode, compressed: bool, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        rsv1: compressed,
        ..FrameHeader::default()
    };
    let length = payload.len() as u64;
    let mut frame = Vec::with_capacity(header.len(length) + payload.len());
    // Formatting into a Vec cannot fail.
    let _ = header.format(length, &mut frame);
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// A text frame carrying `payload` (Herald's JSON).
pub fn text(payload: &str) -> Bytes {
    encode(OpCode::Data(Data::Text), payload.as_bytes())
}

/// A binary frame carrying `payload`.
pub fn binary(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Binary), payload)
}

/// A text frame carrying `payload` compressed with permessage-deflate, or plain when it is
/// shorter than the threshold (a client that negotiated the extension reads both).
pub fn text_deflated(payload: &str, deflate: Deflate) -> Bytes {
    if payload.len() < deflate.threshold as usize {
        return text(payload);
    }
    let compressed = deflate::compress(payload.as_bytes(), deflate.level);
    encode_with(OpCode::Data(Data::Text), true, &compressed)
}

/// A ping with an empty payload.
pub fn ping() -> Bytes {
    // FIN, opcode 9, no payload: the same two bytes for every connection.
    Bytes::from_static(&[0x89, 0x00])
}

/// The answer to a client's ping, echoing its payload.
pub fn pong(payload: &[u8]) -> Bytes {
    encode(OpCode::Control(Control::Pong), payload)
}

/// A close frame with `code` and `reason`, the reason cut (on a character boundary) to fit a
/// control frame.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Control(Control::Close), &payload)
}

/// Whether a close frame may carry `code` (RFC 6455 §7.4): the RFC's own codes 1000–1003 and
/// 1007–1011, the codes IANA registered since (1012–1014), and the ranges for libraries and
/// applications (3000–4999). 1004 is reserved, 1005, 1006 and 1015 stand for conditions that are
/// never sent, and every other code is unassigned.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The answer to a client's close frame: a close with the same code (none if it gave none).
pub fn close_echo(code: Option<u16>) -> Bytes {
    match code {
        Some(code) => encode(OpCode::Control(Control::Close), &code.to_be_bytes()),
        None => encode(OpCode::Control(Control::Close), &[]),
    }
}

/// One message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Text(String),
    /// A binary message (the native protocol refuses it; Socket.IO carries attachments in it).
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The client's close, with its code if it gave one. The code is a valid one
    /// ([`is_valid_close_code`]) and the reason, which is not kept, was UTF-8.
    Close(Option<u16>),
}

/// Why the client's bytes cannot be read on.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// A frame or message over `limits.max_frame_bytes`.
    TooLarge,
    /// The bytes break RFC 6455 (answered with close code 1002).
    Protocol(&'static str),
    /// A text message or a close reason that is not UTF-8 (answered with close code 1007).
    InvalidUtf8(&'static str),
}

/// Reassembles the client's messages from the bytes read off its socket.
///
/// An idle connection's reader holds no allocation: the buffer exists only while a read is being
/// parsed or a frame has arrived in part.
#[derive(Default)]
pub struct FrameReader {
    /// Bytes read and not yet parsed.
    buffer: Vec<u8>,
    /// A fragmented message being assembled.
    partial: Option<Box<Partial>>,
}

/// A fragmented message, from its first frame until its last.
struct Partial {
    is_text: bool,
    /// Compressed (RSV1 on its first frame): its text is checked once inflated.
    compressed: bool,
    payload: Vec<u8>,
    /// How much of a text message's payload is known to be UTF-8: all of it but a character that
    /// the next fragment may complete.
    checked: usize,
}

impl Partial {
    /// Checks that a text message's payload so far is UTF-8, but for a character it may end
    /// inside, so that a message that cannot become UTF-8 is refused before its last fragment.
    fn check_utf8(&mut self) -> Result<(), ReadError> {
        if !self.is_text || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.payload[self.checked..]) {
            Ok(_) => self.checked = self.payload.len(),
            // The payload ends inside a character.
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(ReadError::InvalidUtf8(NOT_UTF8)),
        }
        Ok(())
    }
}

impl FrameReader {
    /// Starts with bytes that arrived along with the HTTP upgrade.
    pub fn with_bytes(bytes: &[u8]) -> FrameReader {
        FrameReader {
            buffer: bytes.to_vec(),
            partial: None,
        }
    }

    /// Where the next read goes.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    /// The next complete message in what was read, if there is one. `max` bounds a frame's and
    /// a message's payload (a compressed message's once inflated). With `deflate`
    /// (permessage-deflate was negotiated; the flag is the caller's, so that an idle reader
    /// stays as small as it was), a message whose first frame has RSV1 set is compressed.
    pub fn next(&mut self, max: usize, deflate: bool) -> Result<Option<Inbound>, ReadError> {
        loop {
            let mut cursor = Cursor::new(&self.buffer[..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(self.release()),
                // tungstenite refuses reserved opcodes here.
                Err(_) => return Err(ReadError::Protocol("malformed frame header")),
            };
            // A frame that breaks the protocol is refused from its header, before its payload.
            let mask = self.check_header(&header, length, deflate)?;
            if length > max as u64 {
                return Err(ReadError::TooLarge);
            }
            let start = cursor.position() as usize;
            // Within `max`, which is a usize.
            let end = start + length as usize;
            if self.buffer.len() < end {
                return Ok(None);
            }
            let mut payload = self.buffer[start..end].to_vec();
            self.buffer.drain(..end);
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
            match header.opcode {
                OpCode::Control(Control::Ping) => return Ok(Some(Inbound::Ping(payload))),
                OpCode::Control(Control::Pong) => return Ok(Some(Inbound::Pong)),
                OpCode::Control(Control::Close) => return close_of(&payload).map(Some),
                OpCode::Data(Data::Continue) => {
                    let Some(mut partial) = self.partial.take() else {
                        return Err(ReadError::Protocol(NO_MESSAGE));
                    };
                    if partial.payload.len() + payload.len() > max {
                        return Err(ReadError::TooLarge);
                    }
                    partial.payload.extend_from_slice(&payload);
                    if header.is_final {
                        let Partial {
                            is_text,
                            compressed,
                            payload,
                            ..
                        } = *partial;
                        return whole_message(is_text, compressed, payload, max).map(Some);
                    }
                    partial.check_utf8()?;
                    self.partial = Some(partial);
                }
                OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                    let is_text = data == Data::Text;
                    if header.is_final {
                        return whole_message(is_text, header.rsv1, payload, max).map(Some);
                    }
                    let mut partial = Box::new(Partial {
                        is_text,
                        compressed: header.rsv1,
                        payload,
                        checked: 0,
                    });
                    partial.check_utf8()?;
                    self.partial = Some(partial);
                }
                OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                    return Err(ReadError::Protocol(UNKNOWN_OPCODE))
                }
            }
        }
    }

    /// The rules of RFC 6455 §5 that a frame's header alone must follow, given the message being
    /// assembled. Returns the frame's masking key.
    fn check_header(
        &self,
        header: &FrameHeader,
        length: u64,
        deflate: bool,
    ) -> Result<[u8; 4], ReadError> {
        let Some(mask) = header.mask else {
            return Err(ReadError::Protocol("a client frame must be masked"));
        };
        if header.rsv2 || header.rsv3 || (header.rsv1 && !deflate) {
            return Err(ReadError::Protocol("no extension was negotiated"));
        }
        // RFC 7692 §6: only a message's first frame says it is compressed.
        if header.rsv1 && !matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary)) {
            return Err(ReadError::Protocol(
                "RSV1 is set only on the first frame of a data message",
            ));
        }
        if length > MAX_PAYLOAD_LENGTH {
            return Err(ReadError::Protocol(
                "a 64-bit payload length must have its most significant bit clear",
            ));
        }
        match header.opcode {
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                Err(ReadError::Protocol(UNKNOWN_OPCODE))
            }
            OpCode::Control(_) if !header.is_final || length > MAX_CONTROL_PAYLOAD => Err(
                ReadError::Protocol("a control frame must be whole and at most 125 bytes"),
            ),
            OpCode::Data(Data::Continue) if self.partial.is_none() => {
                Err(ReadError::Protocol(NO_MESSAGE))
            }
            OpCode::Data(Data::Text | Data::Binary) if self.partial.is_some() => {
                Err(ReadError::Protocol("a new message inside a fragmented one"))
            }
            _ => Ok(mask),
        }
    }

    /// Frees the buffer once everything in it is parsed, so that an idle connection keeps none.
    fn release(&mut self) -> Option<Inbound> {
        if self.buffer.is_empty() {
            self.buffer = Vec::new();
        }
        None
    }
}

/// A whole message, inflated first when it was compressed (into at most `max` bytes).
fn whole_message(
    is_text: bool,
    compressed: bool,
    payload: Vec<u8>,
    max: usize,
) -> Result<Inbound, ReadError> {
    if !compressed {
        return message_of(is_text, payload);
    }
    match deflate::inflate(&payload, max) {
        Ok(inflated) => message_of(is_text, inflated),
        Err(InflateError::TooLarge) => Err(ReadError::TooLarge),
        Err(InflateError::Corrupt) => Err(ReadError::Protocol(
            "a compressed message that is not valid DEFLATE data",
        )),
    }
}

fn message_of(is_text: bool, payload: Vec<u8>) -> Result<Inbound, ReadError> {
    if !is_text {
        return Ok(Inbound::Binary(payload));
    }
    String::from_utf8(payload)
        .map(Inbound::Text)
        .map_err(|_| ReadError::InvalidUtf8(NOT_UTF8))
}

/// A client's close frame (RFC 6455 §5.5.1): no payload, or a valid code and a UTF-8 reason.
fn close_of(payload: &[u8]) -> Result<Inbound, ReadError> {
    let (code, reason) = match payload {
        [] => return Ok(Inbound::Close(None)),
        [high, low, reason @ ..] => (u16::from_be_bytes([*high, *low]), reason),
        [_] => {
            return Err(ReadError::Protocol(
                "a close frame's payload must start with a two-byte code",
            ))
        }
    };
    if !is_valid_close_code(code) {
        return Err(ReadError::Protocol("a close frame with an invalid code"));
    }
    if std::str::from_utf8(reason).is_err() {
        return Err(ReadError::InvalidUtf8("a close reason that is not UTF-8"));
    }
    Ok(Inbound::Close(Some(code)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// With permessage-deflate: a compressed message, whole or in fragments (RSV1 on the first
    /// only), reads back as its text; an uncompressed one still reads; RSV1 elsewhere, corrupt
    /// data, and a message that inflates past the limit are refused.
    #[test]
    fn reads_compressed_messages_once_deflate_is_negotiated() {
        const RSV1: u8 = 0x40;
        let text = r#"{"type":"publish","channel":"chat:1","data":"hello hello hello hello"}"#;
        let compressed = deflate::compress(
            text.as_bytes(),
            std::num::NonZeroU8::new(6).expect("a level"),
        );
        let mut reader = FrameReader::with_bytes(&client(0x80 | RSV1 | 0x1, &compressed));
        assert_eq!(
            reader.next(1024, true),
            Ok(Some(Inbound::Text(text.into())))
        );

        let (head, tail) = compressed.split_at(compressed.len() / 2);
        let mut bytes = client(RSV1 | 0x1, head);
        bytes.extend(client(0x80, tail));
        bytes.extend(client(0x81, b"plain"));
        let mut reader = FrameReader::with_bytes(&bytes);
        assert_eq!(
            reader.next(1024, true),
            Ok(Some(Inbound::Text(text.into())))
        );
        assert_eq!(
            reader.next(1024, true),
            Ok(Some(Inbound::Text("plain".into())))
        );

        let mut bytes = client(0x01, b"{}");
        bytes.extend(client(0x80 | RSV1, b"x"));
        let mut reader = FrameReader::with_bytes(&bytes);
        assert!(matches!(
            reader.next(1024, true),
            Err(ReadError::Protocol(_))
        ));
        let mut reader = FrameReader::with_bytes(&client(0x80 | RSV1 | 0x9, b""));
        assert!(matches!(
            reader.next(1024, true),
            Err(ReadError::Protocol(_))
        ));
        let mut reader = FrameReader::with_bytes(&client(0x80 | RSV1 | 0x1, &[0xff; 8]));
        assert!(matches!(
            reader.next(1024, true),
            Err(ReadError::Protocol(_))
        ));

        let bomb = deflate::compress(
            &vec![b' '; 1 << 20],
            std::num::NonZeroU8::new(9).expect("a level"),
        );
        let mut reader = FrameReader::with_bytes(&client(0x80 | RSV1 | 0x1, &bomb));
        assert_eq!(reader.next(65_536, true), Err(ReadError::TooLarge));
        let mut reader = FrameReader::with_bytes(&client(0x80 | RSV1 | 0x1, &compressed));
        assert!(matches!(
            reader.next(1024, false),
            Err(ReadError::Protocol(_))
        ));
    }

    #[test]
    fn server_frames_are_unmasked_with_the_shortest_length() {
        assert_eq!(&text("hi")[..], b"\x81\x02hi");
        let long = "x".repeat(300);
        let frame = text(&long);
        assert_eq!(&frame[..4], &[0x81, 126, 1, 44]);
        assert_eq!(frame.len(), 304);
        assert_eq!(&ping()[..], &[0x89, 0]);
        assert_eq!(&close(4010, "slow")[..], b"\x88\x06\x0f\xaaslow");
        // A long reason is cut to fit a control frame, on a character boundary.
        assert_eq!(close(1000, &"é".repeat(100)).len(), 2 + 2 + 122);
    }

    #[test]
    fn reads_frames_split_anywhere_and_back_to_back() {
        let mut bytes = client(0x81, b"{\"type\":\"ping\"}");
        bytes.extend(client(0x89, b"p"));
        bytes.extend(client(0x8A, b""));
        for split in 0..bytes.len() {
            let mut reader = FrameReader::default();
            let mut got = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                reader.buffer().extend_from_slice(part);
                while let Some(message) = reader.next(1024, false).expect("valid") {
                    got.push(message);
                }
            }
            assert_eq!(
                got,
                [
                    Inbound::Text("{\"type\":\"ping\"}".into()),
                    Inbound::Ping(b"p".to_vec()),
                    Inbound::Pong
                ]
            );
            assert_eq!(reader.buffer.capacity(), 0, "nothing kept when idle");
        }
    }

    #[test]
    fn joins_fragments_with_a_control_frame_between_them() {
        let mut reader = FrameReader::default();
        reader.buffer().extend(client(0x01, b"hel"));
        reader.buffer().extend(client(0x89, b""));
        reader.buffer().extend(client(0x80, b"lo"));
        assert_eq!(reader.next(100, false), Ok(Some(Inbound::Ping(vec![]))));
        assert_eq!(
            reader.next(100, false),
            Ok(Some(Inbound::Text("hello".into())))
        );
        assert_eq!(reader.next(100, false), Ok(None));
    }

    #[test]
    fn enforces_the_size_limit_on_frames_and_messages() {
        let mut reader = FrameReader::default();
        // Refused from the header alone, before the payload arrives.
        reader.buffer().extend(&client(0x81, &[b'a'; 200])[..8]);
        assert_eq!(reader.next(100, false), Err(ReadError::TooLarge));
        let mut reader = FrameReader::default();
        reader.buffer().extend(client(0x01, &[b'a'; 60]));
        reader.buffer().extend(client(0x80, &[b'a'; 60]));
        assert_eq!(reader.next(100, false), Err(ReadError::TooLarge));
        let mut reader = FrameReader::default();
        reader.buffer().extend(client(0x82, &[0; 70_000]));
        assert_eq!(
            reader.next(100_000, false),
            Ok(Some(Inbound::Binary(vec![0; 70_000])))
        );
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        let unmasked = b"\x81\x02hi".to_vec();
        // A binary frame's header stating 2^63 bytes in the 64-bit form.
        let mut huge = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
        huge.extend_from_slice(&[1, 2, 3, 4]);
        let cases: [(Vec<u8>, ReadError); 10] = [
            (
                unmasked,
                ReadError::Protocol("a client frame must be masked"),
            ),
            (client(0x80, b"x"), ReadError::Protocol(NO_MESSAGE)),
            (
                client(0x09, b""),
                ReadError::Protocol("a control frame must be whole and at most 125 bytes"),
            ),
            (
                client(0x89, &[0; 126]),
                ReadError::Protocol("a control frame must be whole and at most 125 bytes"),
            ),
            (
                client(0x83, b""),
                ReadError::Protocol("malformed frame header"),
            ),
            (
                client(0xC1, b"x"),
                ReadError::Protocol("no extension was negotiated"),
            ),
            (
                huge,
                ReadError::Protocol(
                    "a 64-bit payload length must have its most significant bit clear",
                ),
            ),
            (
                client(0x81, &[0xff, 0xfe]),
                ReadError::InvalidUtf8(NOT_UTF8),
            ),
            // Refused at the first fragment, before the message ends.
            (
                client(0x01, b"ok \xed\xa0\x80"),
                ReadError::InvalidUtf8(NOT_UTF8),
            ),
            (
                [client(0x01, b"a"), client(0x80, b"\xc3")].concat(),
                ReadError::InvalidUtf8(NOT_UTF8),
            ),
        ];
        for (bytes, expected) in cases {
            let mut reader = FrameReader::default();
            reader.buffer().extend(bytes);
            assert_eq!(reader.next(100, false), Err(expected));
        }
        let mut reader = FrameReader::default();
        reader.buffer().extend(client(0x01, b"a"));
        reader.buffer().extend(client(0x81, b"b"));
        assert_eq!(
            reader.next(100, false),
            Err(ReadError::Protocol("a new message inside a fragmented one"))
        );
        // A frame that breaks the rules is refused from its header, before its payload arrives.
        let mut reader = FrameReader::default();
        reader.buffer().extend(&client(0xC2, &[0; 50])[..6]);
        assert_eq!(
            reader.next(100, false),
            Err(ReadError::Protocol("no extension was negotiated"))
        );
    }

    #[test]
    fn joins_a_character_split_between_fragments() {
        let text = "clef 𝄞".as_bytes();
        for split in 5..text.len() {
            let mut reader = FrameReader::default();
            reader.buffer().extend(client(0x01, &text[..split]));
            reader.buffer().extend(client(0x80, &text[split..]));
            assert_eq!(
                reader.next(100, false),
                Ok(Some(Inbound::Text("clef 𝄞".into())))
            );
        }
    }

    #[test]
    fn reads_a_close_only_with_a_valid_code_and_reason() {
        let code_and_greek = [&[0x0f, 0xa0][..], "κόσμε".as_bytes()].concat();
        let cases: [(&[u8], Result<Inbound, ReadError>); 9] = [
            (b"", Ok(Inbound::Close(None))),
            (b"\x03\xe8", Ok(Inbound::Close(Some(1000)))),
            (b"\x03\xe8bye", Ok(Inbound::Close(Some(1000)))),
            (&code_and_greek, Ok(Inbound::Close(Some(4000)))),
            (
                b"\x03",
                Err(ReadError::Protocol(
                    "a close frame's payload must start with a two-byte code",
                )),
            ),
            (
                b"\x03\xe7",
                Err(ReadError::Protocol("a close frame with an invalid code")),
            ),
            (
                b"\x03\xed",
                Err(ReadError::Protocol("a close frame with an invalid code")),
            ),
            (
                b"\x03\xe8\xce\xba\xed\xa0\x80",
                Err(ReadError::InvalidUtf8("a close reason that is not UTF-8")),
            ),
            // An invalid code is refused before the reason is looked at.
            (
                b"\x00\x00\xff",
                Err(ReadError::Protocol("a close frame with an invalid code")),
            ),
        ];
        for (payload, expected) in cases {
            let mut reader = FrameReader::default();
            reader.buffer().extend(client(0x88, payload));
            assert_eq!(
                reader.next(100, false),
                expected.map(Some),
                "payload {payload:?}"
            );
        }
    }

    #[test]
    fn close_codes_follow_rfc_6455_and_the_iana_registry() {
        let valid = (1000..=1003).chain(1007..=1014).chain(3000..=4999);
        let invalid = (0..=999)
            .chain(1004..=1006)
            .chain(1015..=2999)
            .chain(5000..=u16::MAX);
        for code in valid {
            assert!(is_valid_close_code(code), "{code} is valid");
        }
        for code in invalid {
            assert!(!is_valid_close_code(code), "{code} is invalid");
        }
        // Every code Herald sends is one a client accepts.
        for code in herald_core::CloseCode::ALL {
            assert!(is_valid_close_code(code.code()), "{code:?}");
        }
    }
}
