//! The interface of a durable history store, which lets the `memory` engine of a single node keep
//! its streams (epochs, offsets, history, idempotency keys) across a restart, `kill -9` included.
//!
//! The engine decides everything (offsets, trimming, expiry) and tells the store what changed, in
//! order, in batches; the store only makes each batch durable and gives everything back at start.
//! This module does no I/O itself: the server crate implements [`StreamStore`] on an embedded
//! database. See `MemoryEngine::with_store` for how publishing waits for the store.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::error::HeraldError;
use crate::publication::{Publication, Publisher};

/// A durable store of channel streams. Both calls block; the engine calls `write` off the async
/// threads and `load` once, at start.
pub trait StreamStore: Send + Sync + 'static {
    /// Every stored stream with its kept publications, oldest first.
    fn load(&self) -> Result<Vec<StoredStream>, HeraldError>;

    /// Makes `batch` durable, in order, all or nothing.
    fn write(&self, batch: &[StoreWrite]) -> Result<(), HeraldError>;
}

/// One change to the stored streams.
#[derive(Debug, Clone)]
pub enum StoreWrite {
    /// A new stream (a new epoch at offset 0); anything stored under the channel before is gone.
    Created {
        /// The channel.
        channel: ChannelName,
        /// The new stream's epoch.
        epoch: Arc<str>,
    },
    /// A publication, which moves the stream to its offset; publications of the channel below
    /// `first_kept` are no longer kept.
    Appended {
        /// The publication, with its channel and offset.
        publication: Arc<Publication>,
        /// The lowest offset still kept.
        first_kept: u64,
        /// The publish's idempotency key and when it stops counting (Unix milliseconds).
        idempotency: Option<(Box<str>, u64)>,
    },
    /// The stream expired: forget it.
    Dropped {
        /// The expired stream's channel.
        channel: ChannelName,
    },
}

/// A stream as the store gives it back.
#[derive(Debug)]
pub struct StoredStream {
    /// The channel.
    pub channel: ChannelName,
    /// The stream's epoch.
    pub epoch: String,
    /// The last offset assigned (history may hold fewer).
    pub last_offset: u64,
    /// Oldest first.
    pub publications: Vec<StoredPublication>,
}

/// A publication as the store gives it back.
#[derive(Debug)]
pub struct StoredPublication {
    /// Its offset in the stream.
    pub offset: u64,
    /// Its event name, if any.
    pub event: Option<Box<str>>,
    /// Its payload.
    pub data: Box<RawValue>,
    /// Unix milliseconds when it was first accepted.
    pub ts: u64,
    /// The client that published it, for client publications.
    pub from: Option<Publisher>,
    /// Its idempotency key and when that stops counting (Unix milliseconds).
    pub idempotency: Option<(Box<str>, u64)>,
}
