//! What every engine promises, as checks that run against any [`Engine`].
//!
//! The hub relies on an engine for gapless offsets delivered in order, history reads that join
//! deliveries without a gap, idempotent publishes, presence with counts, ephemeral events and
//! cluster commands. Each promise is one check here, run against a fresh engine attached to a
//! [`Recorder`]. [`engine_conformance_tests!`](crate::engine_conformance_tests) turns them into
//! one test per check for an engine, so that every engine (the memory engine here, others in the
//! crates that implement them) is held to the same contract. Compiled for this crate's tests and
//! with the `conformance` feature.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::value::RawValue;

use super::{
    ClusterCommand, Engine, HistoryPolicy, HistoryQuery, IdempotencyKey, NodeSink, PublishRequest,
};
use crate::channel::ChannelName;
use crate::presence::{ChannelEvent, EventKind, PresenceCounts, PresenceMember};
use crate::publication::{Publication, StreamPosition};

/// What reached a node's sink, in the order it arrived.
#[derive(Default)]
pub struct Recorder {
    publications: Mutex<Vec<(String, u64)>>,
    events: Mutex<Vec<(EventKind, String, String)>>,
    commands: Mutex<Vec<ClusterCommand>>,
    resets: Mutex<Vec<(String, StreamPosition)>>,
}

impl Recorder {
    /// The resets of `channel`, in order: the positions the engine reported after losing part of
    /// its stream.
    pub fn resets(&self, channel: &str) -> Vec<StreamPosition> {
        self.resets
            .lock()
            .iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, position)| position.clone())
            .collect()
    }

    /// The cluster commands that reached this node, in order.
    pub fn commands(&self) -> Vec<ClusterCommand> {
        self.commands.lock().clone()
    }

    /// The offsets delivered for `channel`, in delivery order.
    pub fn offsets(&self, channel: &str) -> Vec<u64> {
        self.publications
            .lock()
            .iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, offset)| *offset)
            .collect()
    }
}

impl NodeSink for Recorder {
    fn deliver(&self, publication: Arc<Publication>) {
        self.publications
            .lock()
            .push((publication.channel.to_string(), publication.offset));
    }

    fn deliver_event(&self, event: Arc<ChannelEvent>) {
        self.events.lock().push((
            event.kind,
            event.channel.to_string(),
            event.client.to_string(),
        ));
    }

    fn command(&self, command: ClusterCommand) {
        self.commands.lock().push(command);
    }

    fn reset(&self, channel: &ChannelName, position: StreamPosition) {
        self.resets.lock().push((channel.to_string(), position));
    }
}

/// An engine under test and the sink it delivers to.
pub struct Node {
    /// The engine, attached to `sink`.
    pub engine: Arc<dyn Engine>,
    /// Everything the engine delivered to this node.
    pub sink: Arc<Recorder>,
}

impl Node {
    /// Attaches `engine` to a new recorder.
    pub fn attach(engine: Arc<dyn Engine>) -> Node {
        let sink = Arc::new(Recorder::default());
        engine.attach(sink.clone());
        Node { engine, sink }
    }
}

/// Runs one test per check against engines made by `$make` (a future giving an
/// `Arc<dyn Engine>`, evaluated once per test; each test needs an engine of its own, with
/// nothing in it).
#[macro_export]
macro_rules! engine_conformance_tests {
    ($make:expr) => {
        $crate::engine_conformance_tests!(@checks $make;
            publications_are_gapless_and_delivered_in_offset_order,
            history_reads_join_deliveries_without_a_gap,
            history_expires_with_its_ttl,
            a_repeated_idempotency_key_publishes_once,
            presence_reports_changes_and_counts,
            events_reach_subscribers_and_stay_out_of_history,
            cluster_commands_reach_every_node,
            node_subscriptions_are_idempotent,
            node_subscriptions_are_visible,
            reported_state_changes_once,
        );
    };
    (@checks $make:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let node = $crate::engine::conformance::Node::attach($make.await);
                $crate::engine::conformance::$check(&node).await;
            }
        )+
    };
}

/// Waits until `holds` is true (deliveries of a remote engine arrive a moment after the call
/// that caused them), at most five seconds, then fails naming `what`.
async fn until(what: &str, holds: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !holds() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("a valid channel name")
}

fn request(name: &str, history: HistoryPolicy) -> PublishRequest {
    PublishRequest {
        channel: channel(name),
        event: None,
        data: RawValue::from_string(r#"{"n":1}"#.into()).expect("JSON"),
        from: None,
        history,
        idempotency: None,
    }
}

const KEEP_10: HistoryPolicy = HistoryPolicy {
    size: 10,
    ttl: Duration::from_secs(60),
};

/// Publishers racing on one channel never share or skip an offset, and the node receives the
/// channel's publications in offset order; another channel counts on its own.
pub async fn publications_are_gapless_and_delivered_in_offset_order(node: &Node) {
    let race = channel("conf:race");
    node.engine.node_subscribe(&race).await.expect("subscribe");
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let engine = node.engine.clone();
            tokio::spawn(async move {
                let mut positions = Vec::new();
                for _ in 0..50 {
                    let position = engine.publish(request("conf:race", KEEP_10)).await;
                    positions.push(position.expect("publish"));
                }
                positions
            })
        })
        .collect();
    let mut offsets = BTreeSet::new();
    let mut epochs = BTreeSet::new();
    for publisher in publishers {
        for StreamPosition { offset, epoch } in publisher.await.expect("publisher") {
            assert!(offsets.insert(offset), "offset {offset} given twice");
            epochs.insert(epoch);
        }
    }
    assert_eq!(offsets, (1..=200).collect(), "gapless from 1");
    assert_eq!(epochs.len(), 1, "one epoch");
    until("200 deliveries", || {
        node.sink.offsets("conf:race").len() >= 200
    })
    .await;
    assert_eq!(
        node.sink.offsets("conf:race"),
        (1..=200).collect::<Vec<_>>()
    );
    let other = node.engine.publish(request("conf:other", KEEP_10)).await;
    assert_eq!(other.expect("publish").offset, 1, "offsets are per channel");
}

/// A history read returns what it holds after a position, says whether that is everything
/// missed, and reports the stream's position.
pub async fn history_reads_join_deliveries_without_a_gap(node: &Node) {
    let keep_3 = HistoryPolicy {
        size: 3,
        ttl: Duration::from_secs(60),
    };
    let engine = &node.engine;
    let mut last = None;
    for _ in 0..5 {
        last = Some(
            engine
                .publish(request("conf:hist", keep_3))
                .await
                .expect("publish"),
        );
    }
    let last = last.expect("published");
    let ch = channel("conf:hist");
    let read = |since: Option<StreamPosition>, limit: Option<usize>| {
        engine.history(&ch, keep_3, HistoryQuery { since, limit })
    };
    let offsets = |page: &super::HistoryPage| -> Vec<u64> {
        page.publications.iter().map(|p| p.offset).collect()
    };
    let newest = read(None, None).await.expect("history");
    assert_eq!(offsets(&newest), [3, 4, 5], "the newest, trimmed to size");
    assert_eq!(newest.position, last);
    let at = |offset| {
        Some(StreamPosition {
            offset,
            epoch: last.epoch.clone(),
        })
    };
    let after_3 = read(at(3), None).await.expect("history");
    assert_eq!((offsets(&after_3), after_3.complete), (vec![4, 5], true));
    let newest_2 = read(None, Some(2)).await.expect("history");
    assert_eq!(offsets(&newest_2), [4, 5], "the newest, up to the limit");
    let page = read(at(2), Some(2)).await.expect("history");
    assert_eq!(
        (offsets(&page), page.complete),
        (vec![3, 4], true),
        "the oldest after"
    );
    let after_1 = read(at(1), None).await.expect("history");
    assert!(!after_1.complete, "offset 2 is no longer kept");
    assert!(
        after_1.publications.is_empty(),
        "nothing, when not everything"
    );
    let ahead = read(at(9), None).await.expect("history");
    assert!(!ahead.complete, "a position ahead of the stream");
    let other_epoch = Some(StreamPosition {
        offset: 3,
        epoch: format!("{}x", last.epoch),
    });
    assert!(!read(other_epoch, None).await.expect("history").complete);
    let position_only = read(None, Some(0)).await.expect("history");
    assert!(position_only.publications.is_empty());
    assert_eq!(position_only.position, last);
    let up_to_date = read(at(5), None).await.expect("history");
    assert!(up_to_date.complete && up_to_date.publications.is_empty());
}

/// Publications older than the namespace's TTL leave history; a subscribed stream keeps its
/// epoch and offset.
pub async fn history_expires_with_its_ttl(node: &Node) {
    let short = HistoryPolicy {
        size: 10,
        ttl: Duration::from_millis(300),
    };
    let ch = channel("conf:ttl");
    node.engine.node_subscribe(&ch).await.expect("subscribe");
    let first = node
        .engine
        .publish(request("conf:ttl", short))
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let page = node
        .engine
        .history(&ch, short, HistoryQuery::default())
        .await
        .expect("history");
    assert!(page.publications.is_empty(), "expired");
    assert_eq!(page.position, first, "the stream itself is kept");
}

/// Within its window, a key publishes once: a retry gets the first position and delivers
/// nothing.
pub async fn a_repeated_idempotency_key_publishes_once(node: &Node) {
    let ch = channel("conf:idem");
    node.engine.node_subscribe(&ch).await.expect("subscribe");
    let keyed = || {
        let mut request = request("conf:idem", KEEP_10);
        request.idempotency = Some(IdempotencyKey {
            key: "order-7".into(),
            window: Duration::from_secs(60),
        });
        request
    };
    let first = node.engine.publish(keyed()).await.expect("publish");
    let retry = node.engine.publish(keyed()).await.expect("retry");
    assert_eq!(first, retry);
    let next = node
        .engine
        .publish(request("conf:idem", KEEP_10))
        .await
        .expect("publish");
    assert_eq!(next.offset, first.offset + 1);
    until("2 deliveries", || node.sink.offsets("conf:idem").len() >= 2).await;
    assert_eq!(node.sink.offsets("conf:idem"), [1, 2]);
}

/// Presence joins and leaves say whether they changed anything, with counts of users and
/// connections; the list is ordered by user, then client.
pub async fn presence_reports_changes_and_counts(node: &Node) {
    let ch = channel("conf:presence");
    let engine = &node.engine;
    let member = |user: &str, client: &str| PresenceMember {
        user: user.into(),
        client: client.into(),
        joined_at: 1,
    };
    let counts = |users, connections| PresenceCounts { users, connections };
    let joined = engine
        .presence_join(&ch, member("b", "b1"))
        .await
        .expect("join");
    assert_eq!((joined.changed, joined.counts), (true, counts(1, 1)));
    engine
        .presence_join(&ch, member("a", "a1"))
        .await
        .expect("join");
    let second_tab = engine
        .presence_join(&ch, member("a", "a2"))
        .await
        .expect("join");
    assert_eq!(
        second_tab.counts,
        counts(2, 3),
        "two users, three connections"
    );
    let again = engine
        .presence_join(&ch, member("a", "a2"))
        .await
        .expect("join");
    assert_eq!((again.changed, again.counts), (false, counts(2, 3)));
    let listed = engine.presence(&ch).await.expect("presence");
    let clients: Vec<&str> = listed.members.iter().map(|m| &*m.client).collect();
    assert_eq!(clients, ["a1", "a2", "b1"]);
    assert_eq!(
        engine.presence_counts(&ch).await.expect("counts"),
        counts(2, 3)
    );
    let left = engine.presence_leave(&ch, "a1").await.expect("leave");
    assert_eq!((left.changed, left.counts), (true, counts(2, 2)));
    let twice = engine.presence_leave(&ch, "a1").await.expect("leave");
    assert_eq!((twice.changed, twice.counts), (false, counts(2, 2)));
    engine.presence_leave(&ch, "a2").await.expect("leave");
    engine.presence_leave(&ch, "b1").await.expect("leave");
    assert_eq!(
        engine.presence_counts(&ch).await.expect("counts"),
        counts(0, 0)
    );
}

/// Join, leave and typing reach the channel's subscribers and never enter its history.
pub async fn events_reach_subscribers_and_stay_out_of_history(node: &Node) {
    let ch = channel("conf:events");
    node.engine.node_subscribe(&ch).await.expect("subscribe");
    for kind in [EventKind::Join, EventKind::Typing, EventKind::Leave] {
        let event = ChannelEvent::new(kind, ch.clone(), "alice".into(), "c1".into());
        node.engine.publish_event(event).await.expect("event");
    }
    until("3 events", || node.sink.events.lock().len() >= 3).await;
    let kinds: Vec<EventKind> = node.sink.events.lock().iter().map(|e| e.0).collect();
    assert_eq!(
        kinds,
        [EventKind::Join, EventKind::Typing, EventKind::Leave]
    );
    let page = node
        .engine
        .history(&ch, KEEP_10, HistoryQuery::default())
        .await
        .expect("history");
    assert!(page.publications.is_empty());
    assert_eq!(page.position.offset, 0);
}

/// A cluster command reaches this node's sink too.
pub async fn cluster_commands_reach_every_node(node: &Node) {
    let command = ClusterCommand::DisconnectUser {
        user: "alice".into(),
        reconnect: true,
    };
    node.engine
        .broadcast_command(command.clone())
        .await
        .expect("command");
    until("the command", || !node.sink.commands.lock().is_empty()).await;
    assert_eq!(*node.sink.commands.lock(), [command]);
    node.engine.ready().await.expect("ready once attached");
}

/// Subscribing or unsubscribing a node twice changes nothing, and publishing works whatever the
/// node's subscriptions.
pub async fn node_subscriptions_are_idempotent(node: &Node) {
    let ch = channel("conf:subs");
    let engine = &node.engine;
    engine.node_subscribe(&ch).await.expect("subscribe");
    engine.node_subscribe(&ch).await.expect("subscribe again");
    engine
        .publish(request("conf:subs", KEEP_10))
        .await
        .expect("publish");
    engine.node_unsubscribe(&ch).await.expect("unsubscribe");
    engine
        .node_unsubscribe(&ch)
        .await
        .expect("unsubscribe again");
    engine.node_subscribe(&ch).await.expect("subscribe after");
    engine
        .publish(request("conf:subs", KEEP_10))
        .await
        .expect("publish");
    until("2 deliveries", || node.sink.offsets("conf:subs").len() >= 2).await;
    assert_eq!(
        node.sink.offsets("conf:subs"),
        [1, 2],
        "one stream, one epoch"
    );
}

/// Whether a channel is subscribed anywhere follows this node's own subscription at once, with
/// no wait for the engine to catch up: the answer after an unsubscribe no longer counts it.
pub async fn node_subscriptions_are_visible(node: &Node) {
    let ch = channel("conf:anywhere");
    let engine = &node.engine;
    let anywhere = || async { engine.channel_subscribed_anywhere(&ch).await.expect("ask") };
    assert!(!anywhere().await, "never subscribed");
    engine.node_subscribe(&ch).await.expect("subscribe");
    assert!(anywhere().await, "subscribed");
    engine.node_unsubscribe(&ch).await.expect("unsubscribe");
    assert!(!anywhere().await, "unsubscribed");
    engine.node_subscribe(&ch).await.expect("subscribe again");
    assert!(anywhere().await, "subscribed again");
    engine
        .node_unsubscribe(&ch)
        .await
        .expect("unsubscribe again");
    assert!(!anywhere().await, "unsubscribed again");
}

/// A reported state changes only when it is set to something else, each key on its own, and of
/// several calls racing to set the same state exactly one is told it changed it.
pub async fn reported_state_changes_once(node: &Node) {
    let engine = &node.engine;
    let mark = |key: &'static str, present: bool| async move {
        engine.mark_reported(key, present).await.expect("mark")
    };
    assert!(!mark("u:conf-a", false).await, "absent from the start");
    assert!(mark("u:conf-a", true).await, "now present");
    assert!(!mark("u:conf-a", true).await, "already present");
    assert!(mark("c:conf:a", true).await, "another key");
    assert!(mark("u:conf-a", false).await, "now absent");
    assert!(!mark("u:conf-a", false).await, "already absent");
    assert!(
        !mark("c:conf:a", true).await,
        "the other key kept its state"
    );
    for present in [true, false] {
        let mut racing = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let engine = engine.clone();
            racing.spawn(async move { engine.mark_reported("u:conf-b", present).await });
        }
        let changed: Vec<bool> = racing
            .join_all()
            .await
            .into_iter()
            .map(|r| r.expect("mark"))
            .collect();
        let winners = changed.iter().filter(|c| **c).count();
        assert_eq!(winners, 1, "racing to {present}: {changed:?}");
    }
}
