//! The fleet of client connections: each with its own JWT, subscribed to its personal channel and
//! the shared channel, reading and recording every delivery. With several nodes, connection `i`
//! connects to node `i % nodes`.
//!
//! Connections run as local tasks on the generator's single thread. Each can be told to stop
//! reading (a slow consumer) or to close (churn).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use std::cell::RefCell;
use std::io::{Read, Write};

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::measure::{SharedRecorder, Stream};
use crate::Target;

/// Frames a connection may have waiting to be sent.
const OUTGOING_FRAMES: usize = 64;

/// The channel every connection subscribes to.
pub const SHARED_CHANNEL: &str = "bench:all";

/// A live connection of the fleet.
pub struct Connection {
    /// Set to stop reading from the socket (the slow-consumer scenario).
    pub paused: Rc<Cell<bool>>,
    /// Set when the task has ended (closed by either side).
    pub ended: Rc<Cell<bool>>,
    close: Option<oneshot::Sender<()>>,
    /// Frames for the task to send (client publications and typing in the chat scenario).
    /// (Only for connections opened to send; a receive-only connection's task polls nothing but
    /// its socket, so that the generator's cost per delivery stays what it was.)
    outgoing: Option<mpsc::Sender<String>>,
}

impl Connection {
    /// Queues a text frame for the connection to send; false if its queue is full (the
    /// generator is behind).
    pub fn send(&self, text: String) -> bool {
        self.outgoing
            .as_ref()
            .is_some_and(|o| o.try_send(text).is_ok())
    }

    /// Closes the connection (the task sends a close frame and ends).
    pub fn close(&mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
    }
}

/// Signs a token for `user` valid for two hours.
pub fn token(secret: &str, user: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 7200;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: user, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// Opens connection `index`, waits for `connected`, subscribes to the shared channel when
/// `shared` is set, and spawns its reading task. Must run inside a `LocalSet`.
pub async fn open(
    target: &Target,
    index: usize,
    shared: bool,
    recorder: SharedRecorder,
) -> Result<Connection, String> {
    open_in(
        target,
        index,
        shared.then_some(SHARED_CHANNEL),
        false,
        recorder,
    )
    .await
}

/// As [`open`], subscribing to `channel` (if any) besides the personal channel; with `sends`,
/// the connection can also send frames ([`Connection::send`]).
pub async fn open_in(
    target: &Target,
    index: usize,
    channel: Option<&str>,
    sends: bool,
    recorder: SharedRecorder,
) -> Result<Connection, String> {
    let user = target.user(index);
    let base = target
        .ws_base(index)
        .ok_or_else(|| "no server to connect to".to_string())?;
    let socketio = target.socketio;
    let mut socket = ClientSocket::connect(
        base,
        &token(&target.jwt_secret, &user),
        target.compress,
        socketio,
    )
    .await
    .map_err(|e| format!("connect {user}: {e}"))?;
    if socketio {
        // Engine.IO's open, then the main namespace's connect, its answer and `connected`.
        socket.expect_prefix("0{").await?;
        socket.send_text("40").await.map_err(|e| e.to_string())?;
        socket.expect_prefix("40{").await?;
        socket.expect_prefix(r#"42["connected""#).await?;
        if let Some(channel) = channel {
            let subscribe = format!(r#"421["subscribe","{channel}"]"#);
            socket
                .send_text(&subscribe)
                .await
                .map_err(|e| e.to_string())?;
            socket.expect_prefix("431[").await?;
        }
    } else {
        socket.expect_frame("connected").await?;
        // The personal channel's subscription is announced right after `connected`.
        socket.expect_frame("subscribed").await?;
        if let Some(channel) = channel {
            let subscribe = format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#);
            socket
                .send_text(&subscribe)
                .await
                .map_err(|e| e.to_string())?;
            socket.expect_frame("subscribed").await?;
        }
    }
    let paused = Rc::new(Cell::new(false));
    let ended = Rc::new(Cell::new(false));
    let (close, mut closed) = oneshot::channel::<()>();
    let (outgoing, mut to_send) = if sends {
        let (tx, rx) = mpsc::channel::<String>(OUTGOING_FRAMES);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let task_paused = paused.clone();
    let task_ended = ended.clone();
    tokio::task::spawn_local(async move {
        // Engine.IO pings (`2`) come as text frames and are answered after the read.
        let ping_due = Cell::new(false);
        let record = |frame: Frame<'_>| match frame {
            Frame::Text("2") if socketio => ping_due.set(true),
            Frame::Text(text) => {
                let delivery = if socketio {
                    parse_socketio_delivery(text)
                } else {
                    parse_delivery(text)
                };
                if let Some((stream, n, t)) = delivery {
                    recorder.borrow_mut().record(index, stream, n, t);
                } else {
                    recorder.borrow_mut().note_frame(text);
                }
            }
            Frame::Other => {}
        };
        for text in std::mem::take(&mut socket.early) {
            record(Frame::Text(&text));
        }
        loop {
            if task_paused.get() {
                // A slow consumer: stop reading until closed.
                let _ = (&mut closed).await;
                break;
            }
            tokio::select! {
                _ = &mut closed => {
                    let _ = socket.send(CLOSE, &[0x03, 0xe8]).await;
                    break;
                }
                Some(text) = async { to_send.as_mut()?.recv().await }, if to_send.is_some() => {
                    if socket.send_text(&text).await.is_err() {
                        break;
                    }
                }
                read = socket.read_frames(record) => {
                    if read.is_err() {
                        break;
                    }
                    if ping_due.replace(false) && socket.send_text("3").await.is_err() {
                        break;
                    }
                }
            }
        }
        task_ended.set(true);
    });
    Ok(Connection {
        paused,
        ended,
        close: Some(close),
        outgoing,
    })
}

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A frame from the server, as the reading task sees it.
enum Frame<'a> {
    Text(&'a str),
    /// Anything else that needs no answer.
    Other,
}

/// A WebSocket client on a raw socket, as lean as the generator can make it: with 10,000
/// connections on one core, the generator must spend far less per delivery than the server.
/// One `read` per readiness event (the readiness is cleared after a short read instead of being
/// confirmed by a second, empty `read`), frames parsed in a buffer shared by every connection,
/// and no allocation per delivery.
struct ClientSocket {
    fd: AsyncFd<std::net::TcpStream>,
    /// The start of a frame that has not fully arrived.
    pending: Vec<u8>,
    /// Text frames read while the connection was being set up and not yet looked at.
    early: std::collections::VecDeque<String>,
}

thread_local! {
    /// Where every connection reads into (the generator is one thread).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

impl ClientSocket {
    /// Connects to `ws_base` and does the opening handshake, authenticating with `token` in a
    /// header.
    async fn connect(
        ws_base: &str,
        token: &str,
        compress: bool,
        socketio: bool,
    ) -> std::io::Result<ClientSocket> {
        let address = ws_base.trim_start_matches("ws://").trim_end_matches('/');
        let stream = TcpStream::connect(address).await?;
        // TCP_NODELAY, as browsers set it on WebSockets: a client's frames go out at once.
        stream.set_nodelay(true)?;
        // What browsers offer.
        let offer = if compress {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let path = if socketio {
            "/socket.io/?EIO=4&transport=websocket"
        } else {
            "/ws"
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n{offer}\r\n"
        );
        let socket = ClientSocket {
            fd: register(stream.into_std()?)?,
            pending: Vec::new(),
            early: Default::default(),
        };
        socket.write_all(request.as_bytes()).await?;
        let mut socket = socket;
        let mut head = Vec::new();
        loop {
            let mut guard = socket.fd.readable().await?;
            let mut chunk = [0u8; 1024];
            match guard.try_io(|fd| fd.get_ref().read(&mut chunk)) {
                Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(n)) => head.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                if !head.starts_with(b"HTTP/1.1 101") {
                    let status = String::from_utf8_lossy(&head[..head.len().min(80)]).into_owned();
                    return Err(std::io::Error::other(format!("refused: {status}")));
                }
                let answer = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                if compress && !answer.contains("permessage-deflate") {
                    return Err(std::io::Error::other("permessage-deflate was not accepted"));
                }
                socket.pending = head[end + 4..].to_vec();
                return Ok(socket);
            }
        }
    }

    /// Waits up to 30 s for the next text frame and checks its type (while the connection is
    /// set up; frames that arrive with it wait in `early`).
    async fn expect_frame(&mut self, kind: &str) -> Result<(), String> {
        let wanted = format!(r#""type":"{kind}""#);
        match self.next_setup_text(false).await {
            Err(e) => Err(format!("expected {kind}: {e}")),
            Ok(text) if text.contains(&wanted) => Ok(()),
            Ok(text) => Err(format!("expected {kind}, got {text}")),
        }
    }

    /// Waits up to 30 s for the next text frame other than an Engine.IO ping, and checks that
    /// it starts with `prefix` (Socket.IO, while the connection is set up).
    async fn expect_prefix(&mut self, prefix: &str) -> Result<(), String> {
        match self.next_setup_text(true).await {
            Err(e) => Err(format!("expected {prefix}: {e}")),
            Ok(text) if text.starts_with(prefix) => Ok(()),
            Ok(text) => Err(format!("expected {prefix}…, got {text}")),
        }
    }

    /// The next text frame within 30 s, while the connection is set up (frames that arrive with
    /// it wait in `early`); with `engine_io`, Engine.IO pings are answered and skipped.
    async fn next_setup_text(&mut self, engine_io: bool) -> Result<String, String> {
        let read = async {
            loop {
                if let Some(text) = self.early.pop_front() {
                    if engine_io && text == "2" {
                        self.send_text("3").await?;
                        continue;
                    }
                    return Ok::<String, std::io::Error>(text);
                }
                let mut early = std::mem::take(&mut self.early);
                self.read_frames(|frame| {
                    if let Frame::Text(t) = frame {
                        early.push_back(t.to_string());
                    }
                })
                .await?;
                self.early = early;
            }
        };
        match tokio::time::timeout(Duration::from_secs(30), read).await {
            Err(_) => Err("nothing within 30 s".to_string()),
            Ok(result) => result.map_err(|e| e.to_string()),
        }
    }

    /// Hands every complete frame already buffered to `on_frame`, or else waits for the socket,
    /// reads once and hands over what arrived. Answers pings; a close or the end of the stream is
    /// an error.
    async fn read_frames(&mut self, mut on_frame: impl FnMut(Frame<'_>)) -> std::io::Result<()> {
        let mut pongs = Vec::new();
        if self.pending.is_empty() || !self.parse_pending(&mut on_frame, &mut pongs)? {
            let mut guard = self.fd.readable().await?;
            let read = SCRATCH.with_borrow_mut(|scratch| {
                let n = match guard.get_inner().read(scratch) {
                    Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(0),
                    Err(e) => return Err(e),
                };
                if self.pending.is_empty() {
                    let used = parse_frames(&scratch[..n], &mut on_frame, &mut pongs)?;
                    self.pending.extend_from_slice(&scratch[used..n]);
                } else {
                    self.pending.extend_from_slice(&scratch[..n]);
                }
                Ok(n)
            })?;
            // A short read emptied the socket: readiness is cleared without a second `read`
            // (tokio keeps it if an event arrived meanwhile).
            if read < SCRATCH.with_borrow(Vec::len) {
                guard.clear_ready();
            }
            if !self.pending.is_empty() {
                self.parse_pending(&mut on_frame, &mut pongs)?;
            }
        }
        for payload in pongs {
            self.send(PONG, &payload).await?;
        }
        Ok(())
    }

    /// Parses what `pending` holds; true if it held at least one whole frame.
    fn parse_pending(
        &mut self,
        on_frame: &mut impl FnMut(Frame<'_>),
        pongs: &mut Vec<Vec<u8>>,
    ) -> std::io::Result<bool> {
        let used = parse_frames(&self.pending, on_frame, pongs)?;
        self.pending.drain(..used);
        Ok(used > 0)
    }

    async fn send_text(&self, text: &str) -> std::io::Result<()> {
        self.send(TEXT, text.as_bytes()).await
    }

    /// Sends one masked frame (RFC 6455: every client frame is masked).
    async fn send(&self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mask = [0x5a, 0xa5, 0x3c, 0xc3];
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
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
        self.write_all(&frame).await
    }

    async fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        write_all(&self.fd, bytes).await
    }
}

/// Writes all of `bytes` to a registered socket, waiting while it is full.
pub(crate) async fn write_all(
    fd: &AsyncFd<std::net::TcpStream>,
    mut bytes: &[u8],
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|fd| fd.get_ref().write(bytes)) {
            Ok(Ok(n)) => bytes = &bytes[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

/// Registers an owned socket with the reactor. `AsyncFd::new` is deprecated because a generic
/// owner could hand out another descriptor later (tokio#8587); an owned `std::net::TcpStream`
/// keeps its descriptor open and unchanged until the `AsyncFd` drops it, which is the contract
/// the unsafe `register` asks for (and this workspace forbids `unsafe`).
#[expect(deprecated, reason = "sound for an owned TcpStream; see above")]
pub(crate) fn register(
    stream: std::net::TcpStream,
) -> std::io::Result<AsyncFd<std::net::TcpStream>> {
    AsyncFd::new(stream)
}

/// Hands each whole frame at the start of `bytes` to `on_frame` (pings are collected to be
/// answered); returns how many bytes they took. Server frames are never masked.
fn parse_frames(
    bytes: &[u8],
    on_frame: &mut impl FnMut(Frame<'_>),
    pongs: &mut Vec<Vec<u8>>,
) -> std::io::Result<usize> {
    let mut at = 0;
    while let Some((first, payload, next)) = next_frame(&bytes[at..]) {
        WIRE_BYTES.with(|counted| counted.set(counted.get() + next as u64));
        match first & 0x0f {
            // RSV1: compressed with permessage-deflate.
            TEXT if first & 0x40 != 0 => match String::from_utf8(inflate(payload)?) {
                Ok(text) => on_frame(Frame::Text(&text)),
                Err(_) => return Err(std::io::Error::other("a text frame that is not UTF-8")),
            },
            TEXT => match std::str::from_utf8(payload) {
                Ok(text) => on_frame(Frame::Text(text)),
                Err(_) => return Err(std::io::Error::other("a text frame that is not UTF-8")),
            },
            PING => pongs.push(payload.to_vec()),
            CLOSE => return Err(std::io::ErrorKind::ConnectionAborted.into()),
            _ => on_frame(Frame::Other),
        }
        at += next;
    }
    Ok(at)
}

thread_local! {
    /// Bytes of server frames read by every connection of this generator.
    static WIRE_BYTES: Cell<u64> = const { Cell::new(0) };
}

/// Bytes of server frames read so far by every connection of this generator.
pub fn wire_bytes() -> u64 {
    WIRE_BYTES.with(Cell::get)
}

/// A compressed message's payload inflated (RFC 7692: the sync-flush tail put back).
fn inflate(payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut input = Vec::with_capacity(payload.len() + 4);
    input.extend_from_slice(payload);
    input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    let mut inflater = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(payload.len() * 8 + 64);
    loop {
        let read = inflater.total_in() as usize;
        inflater
            .decompress_vec(&input[read..], &mut out, flate2::FlushDecompress::Sync)
            .map_err(std::io::Error::other)?;
        if inflater.total_in() as usize == input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity());
    }
}

/// The first whole frame in `bytes`: its first byte (FIN, RSV and opcode), payload and length, or
/// `None` if it has not all arrived.
fn next_frame(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    let (length, header): (usize, usize) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
            4,
        ),
        127 => {
            let raw: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(raw)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let payload = bytes.get(header..header.checked_add(length)?)?;
    Some((first, payload, header + length))
}

/// Reads `(stream, offset, t)` from a `message` frame whose data is `{"n":..,"t":..}`, without a
/// full JSON parse (the generator must stay far below the server's cost per delivery). Loss is
/// checked on the server's gapless `offset`, which is the channel's real order.
pub fn parse_delivery(text: &str) -> Option<(Stream, u64, u64)> {
    let rest = text.strip_prefix(r#"{"type":"message","channel":""#)?;
    let stream = if rest.starts_with("user:") {
        Stream::Personal
    } else {
        Stream::Shared
    };
    let data = &rest[rest.find(r#""data":{"n":"#)?..];
    let t_at = data.find(r#""t":"#)? + 4;
    let (t, after) = number(&data[t_at..])?;
    let offset_at = after.find(r#""offset":"#)? + 9;
    let (offset, _) = number(&after[offset_at..])?;
    Some((stream, offset, t))
}

/// Reads `(stream, offset, t)` from a Socket.IO event a publication was emitted as,
/// `42["<event>",{"n":..,"t":..},{"channel":"..","offset":..,..},..]`, as cheaply as
/// [`parse_delivery`] (Herald's adapter and Socket.IO's own bench server write the same shape).
pub fn parse_socketio_delivery(text: &str) -> Option<(Stream, u64, u64)> {
    let rest = text.strip_prefix("42[\"")?;
    let data = &rest[rest.find(r#"{"n":"#)?..];
    let t_at = data.find(r#""t":"#)? + 4;
    let (t, after) = number(&data[t_at..])?;
    let channel_at = after.find(r#""channel":""#)? + 11;
    let stream = if after[channel_at..].starts_with("user:") {
        Stream::Personal
    } else {
        Stream::Shared
    };
    let offset_at = after.find(r#""offset":"#)? + 9;
    let (offset, _) = number(&after[offset_at..])?;
    Some((stream, offset, t))
}

fn number(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    Some((s[..end].parse().ok()?, &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_deliveries() {
        let shared = r#"{"type":"message","channel":"bench:all","data":{"n":12,"t":345},"offset":12,"ts":1}"#;
        let (stream, offset, t) = parse_delivery(shared).expect("parses");
        assert!(stream == Stream::Shared && offset == 12 && t == 345);
        let personal =
            r#"{"type":"message","channel":"user:u7","data":{"n":3,"t":99},"offset":4,"ts":1}"#;
        let (stream, offset, t) = parse_delivery(personal).expect("parses");
        assert!(stream == Stream::Personal && offset == 4 && t == 99);
        assert!(parse_delivery(r#"{"type":"subscribed"}"#).is_none());
    }

    #[test]
    fn parses_socketio_deliveries() {
        let shared = r#"42["message",{"n":12,"t":345},{"channel":"bench:all","offset":12,"epoch":"e","ts":1},"12:e"]"#;
        let (stream, offset, t) = parse_socketio_delivery(shared).expect("parses");
        assert!(stream == Stream::Shared && offset == 12 && t == 345);
        let personal = r#"42["message",{"n":3,"t":99},{"channel":"user:u7","offset":4}]"#;
        let (stream, offset, t) = parse_socketio_delivery(personal).expect("parses");
        assert!(stream == Stream::Personal && offset == 4 && t == 99);
        assert!(parse_socketio_delivery(r#"42["herald:recovery","[]"]"#).is_none());
    }

    #[test]
    fn reads_server_frames_whole_or_not_at_all() {
        let mut bytes = vec![0x81, 2, b'h', b'i', 0x89, 0];
        bytes.extend([0x81, 126, 1, 0]);
        bytes.extend(vec![b'x'; 256]);
        let mut texts = Vec::new();
        let mut pongs = Vec::new();
        let used = parse_frames(
            &bytes[..bytes.len() - 1],
            &mut |f| {
                if let Frame::Text(t) = f {
                    texts.push(t.len())
                }
            },
            &mut pongs,
        )
        .expect("valid");
        assert_eq!((used, texts.clone(), pongs.len()), (6, vec![2], 1));
        let used = parse_frames(
            &bytes[used..],
            &mut |f| {
                if let Frame::Text(t) = f {
                    texts.push(t.len())
                }
            },
            &mut pongs,
        )
        .expect("valid");
        assert_eq!((used, texts), (260, vec![2, 256]));
    }
}
