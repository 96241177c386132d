//! A publication: one event published to one channel, as the engine hands it to the hub.
//!
//! A publication is created once per node and shared (`Arc`) by every subscriber's queue. Its wire
//! encodings are computed lazily, at most once per format, by the first transport that writes it
//! ([`Publication::encoded`]), so a fan-out to 10,000 sockets serialises once and copies only a
//! reference count. The hub never looks inside those bytes.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::channel::ChannelName;

/// A position in a channel's stream: the offset of the last publication seen, and the stream's
/// epoch (which changes whenever the stream's history is lost).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

/// Who published, when a client did (set by the server, never taken from input).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Publisher {
    pub user: Arc<str>,
    pub client: Arc<str>,
}

/// The wire formats a publication can be encoded in; each has one cache slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// Herald's own JSON `message` frame (WebSocket and SSE share it).
    Native = 0,
}

const WIRE_FORMATS: usize = 1;

/// One published event, with its place in the channel's stream.
#[derive(Debug)]
pub struct Publication {
    pub channel: ChannelName,
    pub event: Option<Box<str>>,
    /// The event payload: any JSON value, kept as the text it arrived as.
    pub data: Box<RawValue>,
    /// Gapless position in the channel's stream, starting at 1.
    pub offset: u64,
    pub epoch: Arc<str>,
    /// Milliseconds since the Unix epoch when the engine accepted it.
    pub ts: u64,
    pub from: Option<Publisher>,
    /// When this node first saw it; the base of the publish-to-write latency metric.
    pub received_at: Instant,
    encodings: [OnceLock<Bytes>; WIRE_FORMATS],
}

impl Publication {
    pub fn new(
        channel: ChannelName,
        event: Option<Box<str>>,
        data: Box<RawValue>,
        position: (u64, Arc<str>),
        from: Option<Publisher>,
    ) -> Publication {
        Publication {
            channel,
            event,
            data,
            offset: position.0,
            epoch: position.1,
            ts: now_millis(),
            from,
            received_at: Instant::now(),
            encodings: Default::default(),
        }
    }

    /// The publication in `format`, encoding it with `encode` the first time it is asked for.
    pub fn encoded(&self, format: WireFormat, encode: impl FnOnce(&Publication) -> Bytes) -> Bytes {
        self.encodings[format as usize]
            .get_or_init(|| encode(self))
            .clone()
    }

    /// An estimate of the bytes this publication takes in a connection's queue, used to bound it.
    pub fn queued_size(&self) -> usize {
        self.data.get().len()
            + self.channel.as_str().len()
            + self.event.as_deref().map_or(0, str::len)
            + 96
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
