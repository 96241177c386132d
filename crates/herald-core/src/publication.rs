//! A publication: one event published to one channel, as the engine hands it to the hub.
//!
//! A publication is created once per node and shared (`Arc`) by every subscriber's queue. Its wire
//! encodings are computed lazily, at most once per format, by the first transport that writes it
//! ([`Publication::encoded`]), so a fan-out to 10,000 sockets serialises once and copies only a
//! reference count. The hub never looks inside those bytes.

use std::any::Any;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;

use crate::channel::ChannelName;

/// A position in a channel's stream: the offset of the last publication seen, and the stream's
/// epoch (which changes whenever the stream's history is lost). Its wire form is the protocol
/// module's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    /// The offset in the stream (1 for its first publication).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// Who published, when a client did (set by the server, never taken from input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    /// The publishing client's user.
    pub user: Arc<str>,
    /// The publishing client's id.
    pub client: Arc<str>,
}

/// The encodings a publication can be cached in; each has one slot. A transport picks its slot
/// and the type it caches there (for WebSocket, the frame type its library writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// Herald's own JSON `message` frame, as a WebSocket text payload.
    NativeWebSocket = 0,
    /// The same JSON as the `data:` line of a Server-Sent Event.
    ServerSentEvent = 1,
    /// [`WireFormat::NativeWebSocket`] compressed with permessage-deflate, for the connections
    /// that negotiated it (without context takeover, so one frame serves them all).
    NativeWebSocketDeflate = 2,
    /// Socket.IO packets: the transport caches its own per-namespace set of forms here.
    SocketIo = 3,
}

const WIRE_FORMATS: usize = 4;

type Encoded = Box<dyn Any + Send + Sync>;

/// A value's wire encodings, each computed at most once, by the first transport that needs it.
#[derive(Default)]
pub struct Encodings([OnceLock<Encoded>; WIRE_FORMATS]);

impl Encodings {
    /// The cached encoding in `format`, computing it with `encode` the first time; later calls
    /// clone the cached value (for shared byte types, a reference count).
    pub fn get_or_encode<T>(&self, format: WireFormat, encode: impl Fn() -> T) -> T
    where
        T: Clone + Send + Sync + 'static,
    {
        let slot = self.0[format as usize].get_or_init(|| Box::new(encode()));
        match slot.downcast_ref::<T>() {
            Some(cached) => cached.clone(),
            // One slot used with two types is a programming error; stay correct regardless.
            None => {
                debug_assert!(false, "wire format slot {format:?} used with two types");
                encode()
            }
        }
    }
}

/// One published event, with its place in the channel's stream.
pub struct Publication {
    /// The channel.
    pub channel: ChannelName,
    /// The event name, if any.
    pub event: Option<Box<str>>,
    /// The event payload: any JSON value, kept as the text it arrived as.
    pub data: Box<RawValue>,
    /// Gapless position in the channel's stream, starting at 1.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// Milliseconds since the Unix epoch when the engine accepted it.
    pub ts: u64,
    /// The client that published it, if a client did.
    pub from: Option<Publisher>,
    /// When this node first saw it; the base of the publish-to-write latency metric.
    pub received_at: Instant,
    encodings: Encodings,
}

impl Publication {
    /// A new publication (its `ts` and `received_at` are now).
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

    /// A publication read back from a durable store, with the time it was first accepted.
    pub fn restored(
        channel: ChannelName,
        event: Option<Box<str>>,
        data: Box<RawValue>,
        position: (u64, Arc<str>),
        from: Option<Publisher>,
        ts: u64,
    ) -> Publication {
        let mut publication = Publication::new(channel, event, data, position, from);
        publication.ts = ts;
        publication
    }

    /// The publication in `format`, encoding it with `encode` the first time it is asked for;
    /// later calls clone the cached value (for shared byte types, a reference count).
    pub fn encoded<T>(&self, format: WireFormat, encode: impl Fn(&Publication) -> T) -> T
    where
        T: Clone + Send + Sync + 'static,
    {
        self.encodings.get_or_encode(format, || encode(self))
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

impl std::fmt::Debug for Publication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publication")
            .field("channel", &self.channel)
            .field("event", &self.event)
            .field("offset", &self.offset)
            .field("epoch", &self.epoch)
            .field("ts", &self.ts)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}
