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

/// The largest payload a control frame may carry (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A complete, unmasked server frame: the header, then `payload`, in one buffer.
fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
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
    /// A binary message (Herald speaks JSON text; the content is not kept).
    Binary,
    Ping(Vec<u8>),
    Pong,
    /// The client's close, with its code if it gave one.
    Close(Option<u16>),
}

/// Why the client's bytes cannot be read on.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// A frame or message over `limits.max_frame_bytes`.
    TooLarge,
    /// The bytes break RFC 6455 (answered with close code 1002).
    Protocol(&'static str),
    /// A text message that is not UTF-8 (answered with close code 1007).
    InvalidUtf8,
}

/// Reassembles the client's messages from the bytes read off its socket.
///
/// An idle connection's reader holds no allocation: the buffer exists only while a read is being
/// parsed or a frame has arrived in part.
#[derive(Default)]
pub struct FrameReader {
    /// Bytes read and not yet parsed.
    buffer: Vec<u8>,
    /// A fragmented message being assembled: whether it is text, and its payload so far.
    partial: Option<Box<(bool, Vec<u8>)>>,
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
    /// a message's payload.
    pub fn next(&mut self, max: usize) -> Result<Option<Inbound>, ReadError> {
        loop {
            let mut cursor = Cursor::new(&self.buffer[..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(self.release()),
                // tungstenite refuses reserved opcodes here.
                Err(_) => return Err(ReadError::Protocol("malformed frame header")),
            };
            if length > max as u64 {
                return Err(ReadError::TooLarge);
            }
            let start = cursor.position() as usize;
            // Within `max`, which is a usize.
            let end = start + length as usize;
            if self.buffer.len() < end {
                return Ok(None);
            }
            let Some(mask) = header.mask else {
                return Err(ReadError::Protocol("a client frame must be masked"));
            };
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(ReadError::Protocol("no extension was negotiated"));
            }
            let mut payload = self.buffer[start..end].to_vec();
            self.buffer.drain(..end);
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
            match header.opcode {
                OpCode::Control(control) => {
                    if !header.is_final || length > MAX_CONTROL_PAYLOAD {
                        return Err(ReadError::Protocol(
                            "a control frame must be whole and at most 125 bytes",
                        ));
                    }
                    return match control {
                        Control::Ping => Ok(Some(Inbound::Ping(payload))),
                        Control::Pong => Ok(Some(Inbound::Pong)),
                        Control::Close => Ok(Some(Inbound::Close(
                            payload
                                .get(..2)
                                .map(|code| u16::from_be_bytes([code[0], code[1]])),
                        ))),
                        Control::Reserved(_) => Err(ReadError::Protocol("unknown opcode")),
                    };
                }
                OpCode::Data(Data::Continue) => {
                    let Some(mut partial) = self.partial.take() else {
                        return Err(ReadError::Protocol("a continuation frame with no message"));
                    };
                    if partial.1.len() + payload.len() > max {
                        return Err(ReadError::TooLarge);
                    }
                    partial.1.extend_from_slice(&payload);
                    if header.is_final {
                        let (is_text, message) = *partial;
                        return message_of(is_text, message).map(Some);
                    }
                    self.partial = Some(partial);
                }
                OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                    if self.partial.is_some() {
                        return Err(ReadError::Protocol("a new message inside a fragmented one"));
                    }
                    let is_text = data == Data::Text;
                    if header.is_final {
                        return message_of(is_text, payload).map(Some);
                    }
                    self.partial = Some(Box::new((is_text, payload)));
                }
                OpCode::Data(Data::Reserved(_)) => {
                    return Err(ReadError::Protocol("unknown opcode"))
                }
            }
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

fn message_of(is_text: bool, payload: Vec<u8>) -> Result<Inbound, ReadError> {
    if !is_text {
        return Ok(Inbound::Binary);
    }
    String::from_utf8(payload)
        .map(Inbound::Text)
        .map_err(|_| ReadError::InvalidUtf8)
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
                while let Some(message) = reader.next(1024).expect("valid") {
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
        assert_eq!(reader.next(100), Ok(Some(Inbound::Ping(vec![]))));
        assert_eq!(reader.next(100), Ok(Some(Inbound::Text("hello".into()))));
        assert_eq!(reader.next(100), Ok(None));
    }

    #[test]
    fn enforces_the_size_limit_on_frames_and_messages() {
        let mut reader = FrameReader::default();
        // Refused from the header alone, before the payload arrives.
        reader.buffer().extend(&client(0x81, &[b'a'; 200])[..8]);
        assert_eq!(reader.next(100), Err(ReadError::TooLarge));
        let mut reader = FrameReader::default();
        reader.buffer().extend(client(0x01, &[b'a'; 60]));
        reader.buffer().extend(client(0x80, &[b'a'; 60]));
        assert_eq!(reader.next(100), Err(ReadError::TooLarge));
        let mut reader = FrameReader::default();
        reader.buffer().extend(client(0x82, &[0; 70_000]));
        assert_eq!(reader.next(100_000), Ok(Some(Inbound::Binary)));
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        let unmasked = b"\x81\x02hi".to_vec();
        let cases: [(Vec<u8>, ReadError); 6] = [
            (
                unmasked,
                ReadError::Protocol("a client frame must be masked"),
            ),
            (
                client(0x80, b"x"),
                ReadError::Protocol("a continuation frame with no message"),
            ),
            (
                client(0x09, b""),
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
            (client(0x81, &[0xff, 0xfe]), ReadError::InvalidUtf8),
        ];
        for (bytes, expected) in cases {
            let mut reader = FrameReader::default();
            reader.buffer().extend(bytes);
            assert_eq!(reader.next(100), Err(expected));
        }
        let mut reader = FrameReader::default();
        reader.buffer().extend(client(0x01, b"a"));
        reader.buffer().extend(client(0x81, b"b"));
        assert_eq!(
            reader.next(100),
            Err(ReadError::Protocol("a new message inside a fragmented one"))
        );
    }

    #[test]
    fn reads_the_close_code() {
        let mut reader = FrameReader::default();
        reader
            .buffer()
            .extend(client(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        reader.buffer().extend(client(0x88, b""));
        assert_eq!(reader.next(100), Ok(Some(Inbound::Close(Some(1000)))));
        assert_eq!(reader.next(100), Ok(Some(Inbound::Close(None))));
    }
}
