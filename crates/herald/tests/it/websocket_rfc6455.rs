//! The WebSocket framing follows RFC 6455 where the Autobahn testsuite checks it: masking, reserved
//! bits and opcodes, control frames, fragmentation, UTF-8, lengths and the closing handshake. Each
//! case opens a fresh connection over a plain TCP socket, sends raw client bytes and checks how the
//! server answers: a close with the RFC's code, an echo of the client's close, or answers on a
//! connection that stays open.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::common::{patience, TestServer};

/// The key of RFC 6455's handshake example, and the answer the RFC gives for it.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
/// The FIN bit of a frame's first byte.
const FIN: u8 = 0x80;

/// How the server answers a case's bytes.
#[derive(Debug)]
enum Outcome {
    /// The server fails the connection: a close frame with this code (after a `disconnect` frame,
    /// for Herald's own codes), then the end of the stream.
    Closes(u16),
    /// The server answers the client's close with a close of this code (`None`: an empty close),
    /// then ends the stream.
    EchoesClose(Option<u16>),
    /// The server sends these frames, in order, and the connection stays open.
    Answers(Vec<Answer>),
}

#[derive(Debug)]
enum Answer {
    /// A pong with this payload.
    Pong(Vec<u8>),
    /// A text frame containing this.
    Text(&'static str),
}

use Outcome::{Answers, Closes, EchoesClose};

struct Case {
    name: String,
    send: Vec<u8>,
    expect: Outcome,
}

fn case(name: impl Into<String>, send: Vec<u8>, expect: Outcome) -> Case {
    Case {
        name: name.into(),
        send,
        expect,
    }
}

/// How a client frame's header states the payload length.
#[derive(Clone, Copy)]
pub(crate) enum Length {
    /// The payload's length, in the shortest form.
    Shortest,
    /// This value in the 64-bit form, whatever the payload is.
    Declared64(u64),
}

/// A client frame: `first` is the FIN bit, the RSV bits and the opcode; masked with `mask` when
/// there is one.
pub(crate) fn encode(first: u8, mask: Option<[u8; 4]>, length: Length, payload: &[u8]) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut bytes = vec![first];
    match (length, payload.len()) {
        (Length::Shortest, n) if n < 126 => bytes.push(mask_bit | n as u8),
        (Length::Shortest, n) if n <= usize::from(u16::MAX) => {
            bytes.push(mask_bit | 126);
            bytes.extend_from_slice(&(n as u16).to_be_bytes());
        }
        (Length::Shortest, n) => {
            bytes.push(mask_bit | 127);
            bytes.extend_from_slice(&(n as u64).to_be_bytes());
        }
        (Length::Declared64(n), _) => {
            bytes.push(mask_bit | 127);
            bytes.extend_from_slice(&n.to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            bytes.extend_from_slice(&mask);
            bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => bytes.extend_from_slice(payload),
    }
    bytes
}

/// The masking key of every client frame here.
pub(crate) const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

/// A masked client frame, as clients must send them.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    encode(first, MASK, Length::Shortest, payload)
}

/// A whole binary frame's header declaring `length` bytes in the 64-bit form, with no payload
/// after it.
fn binary_header(length: u64) -> Vec<u8> {
    encode(FIN | BINARY, MASK, Length::Declared64(length), b"")
}

/// A whole (FIN) masked frame with `opcode`.
fn whole(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(FIN | opcode, payload)
}

/// A client close frame with `code` and `reason`.
fn close(code: u16, reason: &[u8]) -> Vec<u8> {
    whole(CLOSE, &[&code.to_be_bytes()[..], reason].concat())
}

/// Herald's `ping` command, with `id`, as a text frame.
fn ping_command(id: &str) -> Vec<u8> {
    whole(TEXT, format!(r#"{{"type":"ping","id":"{id}"}}"#).as_bytes())
}

fn cases(max_frame_bytes: usize) -> Vec<Case> {
    let ping_text = br#"{"type":"ping","id":"x"}"#;
    // `{"type":"ping","id":"𝄞"}`, the four bytes of the character split two and two.
    let clef = r#"{"type":"ping","id":"𝄞"}"#.as_bytes();
    let split = clef.iter().position(|&b| b == 0xF0).unwrap() + 2;
    let mut cases = vec![
        // Masking (RFC 6455 §5.1).
        case(
            "unmasked text frame",
            encode(FIN | TEXT, None, Length::Shortest, ping_text),
            Closes(1002),
        ),
        case(
            "unmasked ping",
            encode(FIN | PING, None, Length::Shortest, b"p"),
            Closes(1002),
        ),
        // Reserved bits (§5.2): no extension is negotiated.
        case("RSV1 on a text frame", frame(0xC1, ping_text), Closes(1002)),
        case("RSV2 on a text frame", frame(0xA1, ping_text), Closes(1002)),
        case("RSV3 on a text frame", frame(0x91, ping_text), Closes(1002)),
        case("RSV1 on a ping", frame(0xC9, b"p"), Closes(1002)),
        // Control frames (§5.5).
        case(
            "ping",
            whole(PING, b"hello"),
            Answers(vec![Answer::Pong(b"hello".to_vec())]),
        ),
        case(
            "ping without payload",
            whole(PING, b""),
            Answers(vec![Answer::Pong(vec![])]),
        ),
        case(
            "ping with 125 bytes",
            whole(PING, &[b'x'; 125]),
            Answers(vec![Answer::Pong(vec![b'x'; 125])]),
        ),
        case(
            "ping with 126 bytes",
            whole(PING, &[b'x'; 126]),
            Closes(1002),
        ),
        case(
            "fragmented ping",
            [frame(PING, b"a"), frame(FIN, b"b")].concat(),
            Closes(1002),
        ),
        case(
            "unsolicited pong",
            [whole(PONG, b"p"), ping_command("after-pong")].concat(),
            Answers(vec![Answer::Text("after-pong")]),
        ),
        // Fragmentation (§5.4).
        case(
            "text in three fragments with a ping between them",
            [
                frame(TEXT, br#"{"type":"ping","#),
                whole(PING, b"between"),
                frame(CONTINUATION, br#""id":"#),
                frame(FIN, br#""fragments"}"#),
            ]
            .concat(),
            Answers(vec![
                Answer::Pong(b"between".to_vec()),
                Answer::Text("fragments"),
            ]),
        ),
        case(
            "continuation with no message",
            frame(FIN, b"x"),
            Closes(1002),
        ),
        case(
            "text frame inside a fragmented message",
            [frame(TEXT, b"a"), whole(TEXT, b"b")].concat(),
            Closes(1002),
        ),
        case(
            "binary frame inside a fragmented message",
            [frame(TEXT, b"a"), frame(BINARY, b"b")].concat(),
            Closes(1002),
        ),
        case(
            "binary message",
            whole(BINARY, b"\x01\x02"),
            Answers(vec![Answer::Text("bad_request")]),
        ),
        // UTF-8 (§8.1).
        case(
            "a character split between fragments",
            [frame(TEXT, &clef[..split]), frame(FIN, &clef[split..])].concat(),
            Answers(vec![Answer::Text("𝄞")]),
        ),
        case(
            "text that is not UTF-8",
            whole(TEXT, b"{\"id\":\"\xff\"}"),
            Closes(1007),
        ),
        case(
            "a sequence split between fragments that is not UTF-8",
            [frame(TEXT, b"{\"id\":\"\xF0\x9D"), frame(FIN, b"\x28\"}")].concat(),
            Closes(1007),
        ),
        case(
            "a fragmented message that ends inside a character",
            [frame(TEXT, b"abc"), frame(FIN, b"\xC3")].concat(),
            Closes(1007),
        ),
        case(
            "a first fragment that is not UTF-8, before the message ends",
            frame(TEXT, b"\xed\xa0\x80"),
            Closes(1007),
        ),
        // Lengths (§5.2).
        case(
            "64-bit length with the most significant bit set",
            binary_header(1 << 63),
            Closes(1002),
        ),
        case(
            "frame larger than limits.max_frame_bytes",
            binary_header(max_frame_bytes as u64 + 1),
            Closes(4009),
        ),
        // The closing handshake (§5.5.1, §7.4).
        case(
            "close without payload",
            whole(CLOSE, b""),
            EchoesClose(None),
        ),
        case(
            "close with a 1-byte payload",
            whole(CLOSE, b"\x03"),
            Closes(1002),
        ),
        case(
            "close with a UTF-8 reason",
            close(1000, "κόσμε".as_bytes()),
            EchoesClose(Some(1000)),
        ),
        case(
            "close with a reason that is not UTF-8",
            close(
                1000,
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            ),
            Closes(1007),
        ),
        case(
            "close with 126 bytes",
            close(1000, &[b'x'; 124]),
            Closes(1002),
        ),
        case(
            "fragmented close",
            [frame(CLOSE, b"\x03\xe8"), frame(FIN, b"")].concat(),
            Closes(1002),
        ),
        case(
            "nothing after a close is read",
            [close(1000, b""), ping_command("after-close")].concat(),
            EchoesClose(Some(1000)),
        ),
        case(
            "nothing after a protocol error is read",
            [frame(0xC1, b"x"), ping_command("after-error")].concat(),
            Closes(1002),
        ),
    ];
    // Opcodes 3 to 7 (data) and 11 to 15 (control) are reserved.
    for opcode in (3..=7).chain(11..=15) {
        cases.push(case(
            format!("reserved opcode {opcode}"),
            whole(opcode, b""),
            Closes(1002),
        ));
    }
    // Close codes (§7.4): RFC 6455's and IANA's codes a client may send, and 3000-4999, are
    // echoed; everything else is a protocol error.
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ] {
        cases.push(case(
            format!("close code {code}"),
            close(code, b""),
            EchoesClose(Some(code)),
        ));
    }
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        cases.push(case(
            format!("close code {code}"),
            close(code, b""),
            Closes(1002),
        ));
    }
    cases
}

#[tokio::test]
async fn client_frames_are_held_to_rfc_6455() {
    let server = TestServer::start_default().await;
    let cases = cases(server.config.limits.max_frame_bytes);
    let mut failures = Vec::new();
    for case in &cases {
        let mut client = RawClient::open(&server).await;
        let outcome = match client.send(&case.send).await {
            Ok(()) => client.check(&case.expect).await,
            Err(e) => Err(e),
        };
        if let Err(failure) = outcome {
            failures.push(format!(
                "{}: expected {:?}; {failure}",
                case.name, case.expect
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Both 1002 and 1007 are counted as protocol errors.
    let failed = cases
        .iter()
        .filter(|case| matches!(case.expect, Closes(1002 | 1007)))
        .count();
    assert_eq!(
        server
            .metric("herald_disconnects_total{reason=\"protocol_error\"}")
            .await,
        failed as f64
    );
}

/// A frame from the server (which sends them unmasked and whole).
pub(crate) struct Frame {
    pub(crate) opcode: u8,
    /// RSV1: a permessage-deflate message.
    pub(crate) compressed: bool,
    pub(crate) payload: Vec<u8>,
}

impl Frame {
    /// A close frame's code, if it has one.
    pub(crate) fn close_code(&self) -> Option<u16> {
        self.payload
            .get(..2)
            .map(|code| u16::from_be_bytes([code[0], code[1]]))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.opcode {
            TEXT => write!(f, "text {}", self.text()),
            CLOSE => write!(
                f,
                "close {:?} {:?}",
                self.close_code(),
                self.payload.get(2..)
            ),
            opcode => write!(f, "opcode {opcode} {:?}", self.payload),
        }
    }
}

/// A WebSocket client on a plain TCP socket, written by hand so that it can send anything.
pub(crate) struct RawClient {
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    read: Vec<u8>,
    /// The handshake's answer, status line and headers.
    pub(crate) response: String,
}

impl RawClient {
    /// Connects as alice (token in the header), then reads the `connected` frame and the
    /// personal channel's `subscribed`.
    async fn open(server: &TestServer) -> RawClient {
        RawClient::open_with(server, "alice", "").await
    }

    /// Connects as `user` with `headers` (each line ending in `\r\n`) added to the request.
    pub(crate) async fn open_with(server: &TestServer, user: &str, headers: &str) -> RawClient {
        let headers = format!("Authorization: Bearer {}\r\n{headers}", server.token(user));
        let client = RawClient::handshake(server, "/ws", &headers).await;
        let mut client = client;
        for kind in ["connected", "subscribed"] {
            let frame = client.frame().await.unwrap().expect("the greeting");
            let greeting: Value = serde_json::from_slice(&frame.payload).unwrap();
            assert_eq!(greeting["type"], kind, "{greeting}");
        }
        client
    }

    /// Opens a WebSocket to `target` (path and query) with `headers` added, up to the `101`.
    pub(crate) async fn handshake(server: &TestServer, target: &str, headers: &str) -> RawClient {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let mut client = RawClient {
            stream,
            read: Vec::new(),
            response: String::new(),
        };
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{headers}\r\n",
            server.addr,
        );
        client.send(request.as_bytes()).await.unwrap();
        let response = loop {
            if let Some(end) = client.read.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = client.read.drain(..end + 4).collect();
                break String::from_utf8(head).unwrap();
            }
            let more = timeout(patience(), client.fill()).await;
            assert!(
                more.expect("the handshake's answer in time"),
                "the server closed during the handshake"
            );
        };
        assert!(response.starts_with("HTTP/1.1 101"), "{response}");
        assert!(
            response.to_ascii_lowercase().contains(&format!(
                "sec-websocket-accept: {}",
                ACCEPT.to_ascii_lowercase()
            )),
            "{response}"
        );
        client.response = response;
        client
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        match timeout(patience(), self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("sending failed: {e}")),
            Err(_) => Err(format!("the server read nothing within {:?}", patience())),
        }
    }

    /// The next frame; `None` when the stream ends; an error when nothing comes in time or the
    /// server sends something that is not a server frame.
    pub(crate) async fn frame(&mut self) -> Result<Option<Frame>, String> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            match timeout(patience(), self.fill()).await {
                Ok(true) => {}
                Ok(false) if self.read.is_empty() => return Ok(None),
                Ok(false) => {
                    return Err(format!("the stream ended inside a frame: {:?}", self.read))
                }
                Err(_) => return Err(format!("nothing from the server within {:?}", patience())),
            }
        }
    }

    /// Reads more bytes; false when the stream ended (or was reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0; 4096];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.read.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// A whole frame off the front of what was read, if there is one.
    fn parse(&mut self) -> Result<Option<Frame>, String> {
        let bytes = &self.read;
        if bytes.len() < 2 {
            return Ok(None);
        }
        // RSV1 marks a compressed message, where permessage-deflate was negotiated.
        if bytes[0] & 0x30 != 0 || bytes[1] & 0x80 != 0 || bytes[0] & FIN == 0 {
            return Err(format!(
                "not a whole, unmasked server frame: {:?}",
                &bytes[..2]
            ));
        }
        let (length, start) = match bytes[1] {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return Ok(None),
            n => (usize::from(n), 2),
        };
        if bytes.len() < start + length {
            return Ok(None);
        }
        let frame = Frame {
            opcode: bytes[0] & 0x0F,
            compressed: bytes[0] & 0x40 != 0,
            payload: bytes[start..start + length].to_vec(),
        };
        self.read.drain(..start + length);
        Ok(Some(frame))
    }

    /// The next frame that is not a heartbeat ping; an error when the stream ends first.
    pub(crate) async fn answer(&mut self) -> Result<Frame, String> {
        loop {
            match self.frame().await? {
                Some(frame) if frame.opcode == PING => continue,
                Some(frame) => return Ok(frame),
                None => return Err("the stream ended".into()),
            }
        }
    }

    /// Checks that the server sends nothing more and ends the stream.
    async fn ended(&mut self) -> Result<(), String> {
        match self.frame().await? {
            None => Ok(()),
            Some(frame) => Err(format!(
                "after the close, got {frame:?} instead of the end of the stream"
            )),
        }
    }

    /// Checks the server's answer against `expect`.
    async fn check(&mut self, expect: &Outcome) -> Result<(), String> {
        match expect {
            Closes(code) => {
                let mut frame = self.answer().await?;
                // Herald's own closes come with a `disconnect` frame first.
                if frame.opcode == TEXT {
                    let disconnect: Value =
                        serde_json::from_slice(&frame.payload).map_err(|e| e.to_string())?;
                    if disconnect["type"] != "disconnect" || disconnect["code"] != *code {
                        return Err(format!("got {disconnect} before the close"));
                    }
                    frame = self.answer().await?;
                }
                if frame.opcode != CLOSE || frame.close_code() != Some(*code) {
                    return Err(format!("got {frame:?}"));
                }
                self.ended().await
            }
            EchoesClose(code) => {
                let frame = self.answer().await?;
                if frame.opcode != CLOSE || frame.close_code() != *code || frame.payload.len() > 2 {
                    return Err(format!("got {frame:?}"));
                }
                self.ended().await
            }
            Answers(answers) => {
                for answer in answers {
                    let frame = self.answer().await?;
                    let matches = match answer {
                        Answer::Pong(payload) => frame.opcode == PONG && frame.payload == *payload,
                        Answer::Text(part) => frame.opcode == TEXT && frame.text().contains(part),
                    };
                    if !matches {
                        return Err(format!(
                            "expected {answer:?}, got {frame:?} ({})",
                            frame.text()
                        ));
                    }
                }
                // Still open: a command is answered.
                self.send(&ping_command("still-open")).await?;
                let frame = self.answer().await?;
                if frame.opcode != TEXT || !frame.text().contains("still-open") {
                    return Err(format!(
                        "not open any more: got {frame:?} ({})",
                        frame.text()
                    ));
                }
                Ok(())
            }
        }
    }
}
