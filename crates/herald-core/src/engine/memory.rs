//! The `memory` engine: one node, everything in this process.
//!
//! Each channel that has been published to has a stream: an epoch chosen when the stream is
//! created and the next offset. Publishing to a channel takes that stream's own lock, assigns the
//! offset and hands the publication to the hub while still holding it, so deliveries of one channel
//! leave in offset order. The lock is a plain mutex held only across synchronous work (the hub's
//! fan-out only queues bytes); it is never held across an `.await`.
//!
//! A stream that has seen no publication for its TTL is dropped by a sweep, and a later publication
//! starts a new epoch; that keeps memory bounded by the channels active within their TTL.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{ClusterCommand, Engine, NodeSink, PublishRequest};
use crate::channel::ChannelName;
use crate::error::HeraldError;
use crate::publication::{Publication, StreamPosition};

/// One channel's stream.
struct Stream {
    epoch: Arc<str>,
    /// The offset the last publication got; 0 before the first.
    last_offset: u64,
    last_publish: Instant,
    ttl: Duration,
    /// Set by the sweep when it removes the stream; a publish that finds it set looks again.
    dead: bool,
}

/// The in-process engine. Cheap to share (`Arc`).
pub struct MemoryEngine {
    /// The hub, once attached.
    sink: OnceLock<Arc<dyn NodeSink>>,
    /// Channel streams. The outer lock is held only to find or create a stream.
    streams: Mutex<HashMap<ChannelName, Arc<Mutex<Stream>>>>,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    pub fn new() -> Self {
        MemoryEngine {
            sink: OnceLock::new(),
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Starts the sweep that drops streams idle past their TTL, every `every`, until the engine is
    /// dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(engine) = weak.upgrade() else { break };
                engine.sweep(Instant::now());
            }
        });
    }

    /// Drops every stream whose last publication is older than its TTL. A stream that is busy
    /// (a publish holds it) is kept until the next sweep, so the map lock never waits on one.
    pub fn sweep(&self, now: Instant) {
        self.streams
            .lock()
            .retain(|_, stream| match stream.try_lock() {
                Some(mut s) if now.duration_since(s.last_publish) >= s.ttl => {
                    s.dead = true;
                    false
                }
                _ => true,
            });
    }

    /// How many channel streams are held.
    pub fn stream_count(&self) -> usize {
        self.streams.lock().len()
    }

    fn stream(&self, channel: &ChannelName, ttl: Duration) -> Arc<Mutex<Stream>> {
        self.streams
            .lock()
            .entry(channel.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Stream {
                    epoch: new_epoch().into(),
                    last_offset: 0,
                    last_publish: Instant::now(),
                    ttl,
                    dead: false,
                }))
            })
            .clone()
    }

    fn sink(&self) -> Result<&Arc<dyn NodeSink>, HeraldError> {
        self.sink
            .get()
            .ok_or_else(|| HeraldError::unavailable("engine is not attached to a hub"))
    }
}

/// A short random epoch, new for every stream.
fn new_epoch() -> String {
    let n: u64 = rand::random();
    format!("{:010x}", n & 0xff_ffff_ffff)
}

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn attach(&self, sink: Arc<dyn NodeSink>) {
        // Attaching twice keeps the first hub; a second hub on one engine is a programming error
        // that the hub constructor prevents.
        let _ = self.sink.set(sink);
    }

    async fn publish(&self, request: PublishRequest) -> Result<StreamPosition, HeraldError> {
        let sink = self.sink()?;
        // A stream the sweep removed between the look-up and the lock is dead: look again (the
        // sweep only removes streams nobody holds, and a new one is never dead).
        let mut s = loop {
            let guard = self.stream(&request.channel, request.stream_ttl).lock_arc();
            if !guard.dead {
                break guard;
            }
        };
        s.last_offset += 1;
        s.last_publish = Instant::now();
        s.ttl = request.stream_ttl;
        let position = StreamPosition {
            offset: s.last_offset,
            epoch: s.epoch.to_string(),
        };
        let publication = Publication::new(
            request.channel,
            request.event,
            request.data,
            (s.last_offset, s.epoch.clone()),
            request.from,
        );
        // Delivered under the stream's lock so that deliveries leave in offset order.
        sink.deliver(Arc::new(publication));
        Ok(position)
    }

    async fn position(&self, channel: &ChannelName) -> Result<Option<StreamPosition>, HeraldError> {
        let stream = self.streams.lock().get(channel).cloned();
        Ok(stream.map(|stream| {
            let s = stream.lock();
            StreamPosition {
                offset: s.last_offset,
                epoch: s.epoch.to_string(),
            }
        }))
    }

    async fn node_subscribe(&self, _channel: &ChannelName) -> Result<(), HeraldError> {
        Ok(())
    }

    async fn node_unsubscribe(&self, _channel: &ChannelName) -> Result<(), HeraldError> {
        Ok(())
    }

    async fn broadcast_command(&self, command: ClusterCommand) -> Result<(), HeraldError> {
        self.sink()?.command(command);
        Ok(())
    }

    async fn ready(&self) -> Result<(), HeraldError> {
        self.sink().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, u64)>>);
    impl NodeSink for Collect {
        fn deliver(&self, p: Arc<Publication>) {
            self.0.lock().push((p.channel.to_string(), p.offset));
        }
        fn command(&self, _: ClusterCommand) {}
    }

    fn request(channel: &str, ttl: Duration) -> PublishRequest {
        PublishRequest {
            channel: ChannelName::parse(channel).expect("channel"),
            event: None,
            data: RawValue::from_string("1".into()).expect("json"),
            from: None,
            stream_ttl: ttl,
        }
    }

    #[tokio::test]
    async fn offsets_are_gapless_per_channel_and_epochs_change_after_a_sweep() {
        let engine = MemoryEngine::new();
        let sink = Arc::new(Collect::default());
        engine.attach(sink.clone());
        let ttl = Duration::from_secs(60);
        let a1 = engine.publish(request("a:1", ttl)).await.expect("publish");
        let a2 = engine.publish(request("a:1", ttl)).await.expect("publish");
        let b1 = engine.publish(request("b:1", ttl)).await.expect("publish");
        assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
        assert_eq!(a1.epoch, a2.epoch);
        assert_eq!(sink.0.lock().len(), 3);

        engine.sweep(Instant::now() + Duration::from_secs(61));
        assert_eq!(engine.stream_count(), 0);
        let a3 = engine.publish(request("a:1", ttl)).await.expect("publish");
        assert_eq!(a3.offset, 1);
        assert_ne!(a3.epoch, a1.epoch);
    }
}
