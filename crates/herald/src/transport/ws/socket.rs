//! A WebSocket connection's TCP socket, shared by its task and the hub's fan-out.
//!
//! While the connection is idle the hub writes publications to it directly ([`DirectWrite`]):
//! one `send` of the shared, pre-framed bytes, from inside the fan-out, with no queue and no
//! task wake-up. Otherwise the connection's task writes, with `writev` over everything queued.
//! The outbox decides which of the two may write at any moment (see `herald_core::hub::Outbox`),
//! so the socket itself needs no lock; the one piece of state both sides touch, the rest of a
//! frame that a direct write got only partly out, is handed over under the outbox's lock.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use herald_core::hub::{DirectWrite, Outbound, Written};
use herald_core::protocol;
use herald_core::publication::WireFormat;
use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::deflate::Deflate;
use super::frame::{self, FrameReader};
use super::READ_CHUNK;
use crate::metrics::Metrics;

/// Frames handed to one `writev` call at most.
const MAX_SLICES: usize = 64;

pub struct Socket {
    stream: TcpStream,
    /// The unwritten rest of a frame a direct write sent in part; the task writes it first.
    unsent: Mutex<Option<Bytes>>,
    metrics: Arc<Metrics>,
    /// permessage-deflate, when the client negotiated it.
    deflate: Option<Deflate>,
}

impl Socket {
    pub fn new(stream: TcpStream, metrics: Arc<Metrics>, deflate: Option<Deflate>) -> Socket {
        Socket {
            stream,
            unsent: Mutex::new(None),
            metrics,
            deflate,
        }
    }

    /// Whether the client negotiated permessage-deflate.
    pub fn deflates(&self) -> bool {
        self.deflate.is_some()
    }

    /// The frame for `item` on this connection: compressed where it negotiated
    /// permessage-deflate. Publications and events are framed once per form and shared by every
    /// socket that takes that form.
    pub fn frame_of(&self, item: &Outbound) -> Bytes {
        match (item, self.deflate) {
            (Outbound::Publication(p), Some(deflate)) => p
                .encoded(WireFormat::NativeWebSocketDeflate, |p| {
                    frame::text_deflated(&protocol::message(p), deflate)
                }),
            (Outbound::Event(e), Some(deflate)) => e
                .encoded(WireFormat::NativeWebSocketDeflate, |e| {
                    frame::text_deflated(&protocol::channel_event(e), deflate)
                }),
            _ => frame_of(item),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Reads what the socket has into `reader`, after it reported readable. False when the
    /// client closed its side or the socket failed.
    pub fn read_into(&self, reader: &mut FrameReader) -> bool {
        let buffer = reader.buffer();
        buffer.reserve(READ_CHUNK);
        match self.stream.try_read_buf(buffer) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }

    /// Whether a direct write left part of a frame for the task to write.
    pub fn has_unsent(&self) -> bool {
        self.unsent.lock().is_some()
    }

    /// Writes `frames`, in order, after anything a direct write left unsent; waits while the
    /// socket's buffer is full. Only the connection's task calls this, while it holds the socket.
    pub async fn write_all(&self, frames: &mut VecDeque<Bytes>) -> io::Result<()> {
        if let Some(rest) = self.unsent.lock().take() {
            frames.push_front(rest);
        }
        while !self.try_write_some(frames)? {
            self.stream.writable().await?;
        }
        Ok(())
    }

    /// Writes one frame (see [`Socket::write_all`]).
    pub async fn write(&self, frame: Bytes) -> io::Result<()> {
        self.write_all(&mut VecDeque::from([frame])).await
    }

    /// Writes what the socket takes without waiting; true when `frames` is all written.
    fn try_write_some(&self, frames: &mut VecDeque<Bytes>) -> io::Result<bool> {
        while !frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = frames.len().min(MAX_SLICES);
            for (slice, frame) in slices.iter_mut().zip(frames.iter()) {
                *slice = IoSlice::new(frame);
            }
            let mut written = match self.stream.try_write_vectored(&slices[..count]) {
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            while written > 0 {
                let Some(first) = frames.front_mut() else {
                    break;
                };
                if written < first.len() {
                    first.advance(written);
                    break;
                }
                written -= first.len();
                frames.pop_front();
            }
        }
        Ok(true)
    }
}

impl DirectWrite for Socket {
    fn try_write(&self, item: &Outbound) -> Written {
        let frame = self.frame_of(item);
        let written = match self.stream.try_write(&frame) {
            Ok(written) => written,
            // Would block, or failed: the task finds out which when it writes.
            Err(_) => return Written::Nothing,
        };
        if let Outbound::Publication(p) = item {
            self.metrics.messages_out.inc();
            self.metrics.observe_write(p.received_at.elapsed());
        }
        if written == frame.len() {
            return Written::All;
        }
        *self.unsent.lock() = Some(frame.slice(written..));
        Written::Part
    }
}

/// The plain frame for `item`. Publications and events are framed once and shared by every
/// socket.
fn frame_of(item: &Outbound) -> Bytes {
    match item {
        Outbound::Publication(p) => p.encoded(WireFormat::NativeWebSocket, |p| {
            frame::text(&protocol::message(p))
        }),
        Outbound::Event(e) => e.encoded(WireFormat::NativeWebSocket, |e| {
            frame::text(&protocol::channel_event(e))
        }),
        Outbound::Unsubscribed(channel) => frame::text(&protocol::unsubscribed(None, channel)),
        Outbound::Resubscribed(notice) => frame::text(&protocol::subscribed(None, notice)),
        Outbound::Heartbeat => frame::ping(),
    }
}
