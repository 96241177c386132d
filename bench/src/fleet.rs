//! The fleet of client connections: each with its own JWT, subscribed to its personal channel and
//! the shared channel, reading and recording every delivery.
//!
//! Connections run as local tasks on the generator's single thread. Each can be told to stop
//! reading (a slow consumer) or to close (churn).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

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

/// The user id of connection `index`.
pub fn user_of(index: usize) -> String {
    format!("u{index}")
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
    let user = user_of(index);
    let mut request = format!("{}/ws", target.ws_base)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let bearer = format!("Bearer {}", token(&target.jwt_secret, &user));
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&bearer).map_err(|e| e.to_string())?,
    );
    // Small buffers: the generator holds up to 19,900 of these.
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    // TCP_NODELAY, as browsers set it on WebSockets: a client's frames go out at once.
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| format!("connect {user}: {e}"))?;
    expect_frame(&mut socket, "connected").await?;
    // The personal channel's subscription is announced right after `connected`.
    expect_frame(&mut socket, "subscribed").await?;
    if let Some(channel) = channel {
        let subscribe = format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#);
        socket
            .send(Message::Text(subscribe.into()))
            .await
            .map_err(|e| e.to_string())?;
        expect_frame(&mut socket, "subscribed").await?;
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
        loop {
            if task_paused.get() {
                // A slow consumer: stop reading until closed.
                let _ = (&mut closed).await;
                break;
            }
            tokio::select! {
                _ = &mut closed => {
                    let _ = socket.close(None).await;
                    break;
                }
                Some(text) = async { to_send.as_mut()?.recv().await }, if to_send.is_some() => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                frame = socket.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Some((stream, n, t)) = parse_delivery(&text) {
                            recorder.borrow_mut().record(index, stream, n, t);
                        } else {
                            recorder.borrow_mut().note_frame(&text);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
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

async fn expect_frame<S>(socket: &mut S, kind: &str) -> Result<(), String>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let wanted = format!(r#""type":"{kind}""#);
    let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
        .await
        .map_err(|_| format!("no {kind} frame within 30 s"))?;
    match frame {
        Some(Ok(Message::Text(text))) if text.contains(&wanted) => Ok(()),
        other => Err(format!("expected {kind}, got {other:?}")),
    }
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
}
