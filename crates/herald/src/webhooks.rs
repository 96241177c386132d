//! Webhooks: events about users, channels and presence, posted to the backend in signed JSON
//! batches (`[webhooks]`, `docs/webhooks.md`). The one place that knows the events' field names.
//!
//! Three parts, none of them on a client's path beyond a map insert or a `try_send`:
//!
//! - [`Webhooks`] is the hub's [`Lifecycle`] observer. The hub tells it of this node's edges (a
//!   user's first or last connection here, a channel's first or last subscriber here, a presence
//!   join or leave). Presence joins and leaves are already once per cluster (the engine says
//!   whether an entry was new), so they become events at once. A user or channel edge only
//!   schedules an *evaluation* of that user or channel: at once for an online or occupied edge,
//!   after `grace` for an offline or vacated one. Schedules are kept per subject in a bounded map
//!   (`pending_size`), so a user who comes and goes a thousand times within the grace period is
//!   one entry, evaluated once it settles.
//! - The scheduler task runs due evaluations, a few at a time, never two for one subject at once.
//!   An evaluation reads the cluster's truth (connections here, or on any node through the
//!   engine; subscribers here, or any node subscribed) and swaps it into the state last reported
//!   for the whole cluster ([`Engine::mark_reported`](herald_core::Engine::mark_reported)). Only
//!   a swap that changed the state makes an event, so a reload within the grace period (still
//!   online, already reported online) makes none, and of two nodes that see the same change,
//!   one reports it. On an engine that spans nodes, an online or occupied edge is evaluated a
//!   second time after `grace`: another node that read the truth just before this node's
//!   connection reached the engine may have reported the user offline meanwhile, and this
//!   second look reports it online again.
//! - The sender task takes events from one bounded queue (`queue_size`; when it is full new
//!   events are dropped and counted), batches up to `batch_size` of them, signs the body and
//!   posts it within `timeout`, retrying the same batch with exponential backoff and jitter up to
//!   `max_attempts` times before dropping it (counted). New events wait in the queue meanwhile.
//!
//! No lock here is held across an `.await`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use herald_core::hub::WeakHub;
use herald_core::publication::now_millis;
use herald_core::{ChannelName, HeraldError, Hub, Lifecycle};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;

use crate::config::WebhooksConfig;
use crate::metrics::{Metrics, ReasonLabel, ResultLabel, TypeLabel};

/// The shortest `grace` with an engine that spans nodes: each node's view of a user (its
/// connection counts) and of a channel (its pub/sub subscription) reaches the others within tens
/// of milliseconds, and evaluations on different nodes must see each other's changes.
pub const MIN_CLUSTER_GRACE: Duration = Duration::from_secs(1);

/// The `reason`s of `herald_webhook_events_dropped_total`.
pub const DROP_REASONS: [&str; 3] = [QUEUE_FULL, ATTEMPTS_EXHAUSTED, PENDING_FULL];

/// The `result`s of `herald_webhook_requests_total`.
pub const REQUEST_RESULTS: [&str; 3] = ["ok", "error", "timeout"];

const QUEUE_FULL: &str = "queue_full";
const ATTEMPTS_EXHAUSTED: &str = "attempts_exhausted";
const PENDING_FULL: &str = "pending_full";

/// The wait before the first retry of a batch; it doubles with each retry, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// The longest wait between two tries of a batch.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// How long the sender waits for more events to fill a batch once one has arrived.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// Evaluations running at once (each is one or two engine calls).
const EVALUATIONS_AT_ONCE: usize = 32;

/// When an evaluation failed (the engine was unavailable), it runs again after this.
const EVALUATION_RETRY: Duration = Duration::from_secs(1);

/// The scheduler looks whether the hub still lives at least this often.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// The header that carries the body's signature.
pub const SIGNATURE_HEADER: &str = "x-herald-signature";

/// An event type, as named in `[webhooks] events` and in each event's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    UserOnline,
    UserOffline,
    ChannelOccupied,
    ChannelVacated,
    PresenceJoin,
    PresenceLeave,
}

impl EventType {
    /// Every type, in the order the documentation lists them.
    pub const ALL: [EventType; 6] = [
        EventType::UserOnline,
        EventType::UserOffline,
        EventType::ChannelOccupied,
        EventType::ChannelVacated,
        EventType::PresenceJoin,
        EventType::PresenceLeave,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserOnline => "user_online",
            EventType::UserOffline => "user_offline",
            EventType::ChannelOccupied => "channel_occupied",
            EventType::ChannelVacated => "channel_vacated",
            EventType::PresenceJoin => "presence_join",
            EventType::PresenceLeave => "presence_leave",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One event, as posted: `type`, `ts` (Unix milliseconds) and what it is about.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    kind: &'static str,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<Arc<str>>,
}

/// The body of one request.
#[derive(Serialize)]
struct Batch<'a> {
    events: &'a [Event],
}

/// The value of `X-Herald-Signature` for `body`: `sha256=` and the lowercase hex HMAC-SHA256 of
/// the body's exact bytes with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", base16ct::lower::encode_string(&digest))
}

/// What an evaluation is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Subject {
    User(Arc<str>),
    Channel(ChannelName),
}

impl Subject {
    /// Its key in the engine's reported states.
    fn key(&self) -> String {
        match self {
            Subject::User(user) => format!("u:{user}"),
            Subject::Channel(channel) => format!("c:{channel}"),
        }
    }
}

/// What is scheduled for one subject.
struct Pending {
    /// An evaluation as soon as possible (after the running one, if any).
    now: bool,
    /// An evaluation at this instant; pushed later by later edges, never earlier.
    settle_at: Option<Instant>,
    /// An evaluation is running.
    running: bool,
    /// When the latest edge happened (Unix ms): the `ts` of an event it leads to.
    ts: u64,
}

/// The scheduled evaluations.
#[derive(Default)]
struct Schedule {
    pending: HashMap<Subject, Pending>,
    /// Subjects whose `now` was set while none of their evaluations ran.
    ready: VecDeque<Subject>,
    /// One entry per subject with a `settle_at`, at that instant or before it (a subject whose
    /// settling was pushed later is put back when its entry comes up).
    timers: BinaryHeap<Reverse<(Instant, Subject)>>,
}

/// What the observer, the scheduler and the evaluations share.
struct Shared {
    grace: Duration,
    pending_size: usize,
    /// Whether each [`EventType`] is sent.
    wanted: [bool; 6],
    /// Whether the engine spans nodes (online and occupied edges are evaluated twice).
    cluster: bool,
    schedule: Mutex<Schedule>,
    /// Wakes the scheduler.
    wake: Notify,
    queue: mpsc::Sender<Event>,
    queue_size: usize,
    metrics: Arc<Metrics>,
}

/// The webhooks of one node: the hub's [`Lifecycle`] observer, with its scheduler and sender
/// tasks.
pub struct Webhooks {
    shared: Arc<Shared>,
}

impl Webhooks {
    /// Starts the webhooks `config` asks for (none when `url` is empty) and attaches them to
    /// `hub`. Fails only when the HTTP client cannot be built.
    pub fn start(
        config: &WebhooksConfig,
        hub: &Hub,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Webhooks>>, HeraldError> {
        if !config.enabled() {
            return Ok(None);
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HeraldError::unavailable(format!("webhooks: HTTP client: {e}")))?;
        let mut wanted = [false; 6];
        for name in &config.events {
            if let Some(kind) = EventType::parse(name) {
                wanted[kind.index()] = true;
            }
        }
        let (queue, events) = mpsc::channel(config.queue_size);
        let shared = Arc::new(Shared {
            grace: config.grace,
            pending_size: config.pending_size,
            wanted,
            cluster: hub.engine().spans_nodes(),
            schedule: Mutex::default(),
            wake: Notify::new(),
            queue,
            queue_size: config.queue_size,
            metrics: metrics.clone(),
        });
        let sender = Sender {
            http,
            url: config.url.clone(),
            secret: config.secret.clone().into_bytes(),
            batch_size: config.batch_size,
            max_attempts: config.max_attempts,
            queue_size: config.queue_size,
            metrics,
        };
        tokio::spawn(sender.run(events));
        tokio::spawn(run_scheduler(shared.clone(), hub.downgrade()));
        let webhooks = Arc::new(Webhooks { shared });
        hub.set_lifecycle(webhooks.clone());
        Ok(Some(webhooks))
    }

    /// Evaluations scheduled or running now (at most `pending_size`).
    pub fn pending(&self) -> usize {
        self.shared.schedule.lock().pending.len()
    }
}

// === impl Lifecycle ===

impl Lifecycle for Webhooks {
    fn user_connected(&self, user: &Arc<str>) {
        if self
            .shared
            .wants_any(EventType::UserOnline, EventType::UserOffline)
        {
            self.shared.schedule_online(Subject::User(user.clone()));
        }
    }

    fn user_disconnected(&self, user: &Arc<str>) {
        if self
            .shared
            .wants_any(EventType::UserOnline, EventType::UserOffline)
        {
            self.shared.schedule_offline(Subject::User(user.clone()));
        }
    }

    fn channel_occupied(&self, channel: &ChannelName) {
        if self.shared.wants_channel(channel) {
            self.shared
                .schedule_online(Subject::Channel(channel.clone()));
        }
    }

    fn channel_vacated(&self, channel: &ChannelName) {
        if self.shared.wants_channel(channel) {
            self.shared
                .schedule_offline(Subject::Channel(channel.clone()));
        }
    }

    fn presence_joined(&self, channel: &ChannelName, user: &Arc<str>, client: &Arc<str>) {
        self.shared
            .presence(EventType::PresenceJoin, channel, user, client);
    }

    fn presence_left(&self, channel: &ChannelName, user: &Arc<str>, client: &Arc<str>) {
        self.shared
            .presence(EventType::PresenceLeave, channel, user, client);
    }
}

// === impl Shared ===

impl Shared {
    fn wants(&self, kind: EventType) -> bool {
        self.wanted[kind.index()]
    }

    fn wants_any(&self, a: EventType, b: EventType) -> bool {
        self.wants(a) || self.wants(b)
    }

    /// Personal channels (`user:<id>`) are left out: `user_online` and `user_offline` say the
    /// same.
    fn wants_channel(&self, channel: &ChannelName) -> bool {
        self.wants_any(EventType::ChannelOccupied, EventType::ChannelVacated)
            && channel.namespace() != herald_core::channel::PERSONAL_NAMESPACE
    }

    fn presence(&self, kind: EventType, channel: &ChannelName, user: &Arc<str>, client: &Arc<str>) {
        if !self.wants(kind) {
            return;
        }
        self.enqueue(Event {
            kind: kind.as_str(),
            ts: now_millis(),
            channel: Some(channel.as_str().into()),
            user: Some(user.clone()),
            client: Some(client.clone()),
        });
    }

    /// An online or occupied edge: evaluate at once (and, on a cluster, again after `grace`).
    fn schedule_online(&self, subject: Subject) {
        let settle = self.cluster.then(|| Instant::now() + self.grace);
        self.schedule(subject, true, settle);
    }

    /// An offline or vacated edge: evaluate after `grace`.
    fn schedule_offline(&self, subject: Subject) {
        self.schedule(subject, false, Some(Instant::now() + self.grace));
    }

    fn schedule(&self, subject: Subject, now: bool, settle: Option<Instant>) {
        let ts = now_millis();
        let mut guard = self.schedule.lock();
        let schedule = &mut *guard;
        if !schedule.pending.contains_key(&subject) && schedule.pending.len() >= self.pending_size {
            drop(guard);
            self.dropped(PENDING_FULL, 1);
            return;
        }
        let entry = schedule.pending.entry(subject.clone()).or_insert(Pending {
            now: false,
            settle_at: None,
            running: false,
            ts,
        });
        entry.ts = ts;
        if now && !entry.now {
            entry.now = true;
            if !entry.running {
                schedule.ready.push_back(subject.clone());
            }
        }
        if let Some(at) = settle {
            match entry.settle_at {
                None => {
                    entry.settle_at = Some(at);
                    schedule.timers.push(Reverse((at, subject)));
                }
                Some(old) => entry.settle_at = Some(old.max(at)),
            }
        }
        drop(guard);
        self.wake.notify_one();
    }

    /// Takes the evaluations due at `now` (marking them running), and says when the next one
    /// is.
    fn take_due(&self, now: Instant) -> (Vec<(Subject, u64)>, Option<Instant>) {
        let mut guard = self.schedule.lock();
        let schedule = &mut *guard;
        let mut due = Vec::new();
        while let Some(subject) = schedule.ready.pop_front() {
            if let Some(entry) = schedule.pending.get_mut(&subject) {
                if entry.now && !entry.running {
                    entry.now = false;
                    entry.running = true;
                    due.push((subject, entry.ts));
                }
            }
        }
        while let Some(Reverse((at, _))) = schedule.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, subject))) = schedule.timers.pop() else {
                break;
            };
            let Some(entry) = schedule.pending.get_mut(&subject) else {
                continue;
            };
            match entry.settle_at {
                // Pushed later by a later edge: wait until then.
                Some(later) if later > now => schedule.timers.push(Reverse((later, subject))),
                Some(_) => {
                    entry.settle_at = None;
                    if entry.running {
                        // After the running one, which may have read the truth too early.
                        entry.now = true;
                    } else {
                        entry.now = false;
                        entry.running = true;
                        due.push((subject, entry.ts));
                    }
                }
                None => {}
            }
        }
        let next = schedule.timers.peek().map(|Reverse((at, _))| *at);
        (due, next)
    }

    /// An evaluation of `subject` ended: runs it again if asked meanwhile (or, when it failed,
    /// after [`EVALUATION_RETRY`]), forgets the subject if nothing more is scheduled.
    fn finish(&self, subject: Subject, failed: bool) {
        let mut guard = self.schedule.lock();
        let schedule = &mut *guard;
        let Some(entry) = schedule.pending.get_mut(&subject) else {
            return;
        };
        entry.running = false;
        if failed {
            let at = Instant::now() + EVALUATION_RETRY;
            match entry.settle_at {
                None => {
                    entry.settle_at = Some(at);
                    schedule.timers.push(Reverse((at, subject.clone())));
                }
                Some(old) => entry.settle_at = Some(old.max(at)),
            }
        }
        if entry.now {
            schedule.ready.push_back(subject);
            drop(guard);
            self.wake.notify_one();
        } else if entry.settle_at.is_none() {
            schedule.pending.remove(&subject);
        }
    }

    /// Reads the cluster's truth about `subject`, swaps it into the state last reported, and
    /// queues the event if that changed it.
    async fn evaluate(&self, hub: &Hub, subject: &Subject, ts: u64) -> Result<(), HeraldError> {
        let engine = hub.engine();
        let present = match subject {
            Subject::User(user) => {
                hub.user_connections(user) > 0
                    || engine.user_connections(user).await?.unwrap_or(0) > 0
            }
            Subject::Channel(channel) => {
                // A single-node engine learns of the hub's unsubscribes a moment after they
                // happen; the hub's index is the truth there.
                hub.has_subscribers(channel)
                    || (self.cluster && engine.channel_subscribed_anywhere(channel).await?)
            }
        };
        if !engine.mark_reported(&subject.key(), present).await? {
            return Ok(());
        }
        let (kind, user, channel) = match (subject, present) {
            (Subject::User(user), true) => (EventType::UserOnline, Some(user.clone()), None),
            (Subject::User(user), false) => (EventType::UserOffline, Some(user.clone()), None),
            (Subject::Channel(channel), true) => (
                EventType::ChannelOccupied,
                None,
                Some(channel.as_str().into()),
            ),
            (Subject::Channel(channel), false) => (
                EventType::ChannelVacated,
                None,
                Some(channel.as_str().into()),
            ),
        };
        tracing::debug!(event = kind.as_str(), user = ?user, channel = ?channel, "webhook event");
        if self.wants(kind) {
            self.enqueue(Event {
                kind: kind.as_str(),
                ts,
                channel,
                user,
                client: None,
            });
        }
        Ok(())
    }

    fn enqueue(&self, event: Event) {
        let kind = event.kind;
        match self.queue.try_send(event) {
            Ok(()) => {
                self.metrics
                    .webhook_events
                    .get_or_create(&TypeLabel { r#type: kind })
                    .inc();
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped(QUEUE_FULL, 1),
            // The sender task ended with the runtime.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
        self.metrics
            .webhook_queue
            .set((self.queue_size - self.queue.capacity()) as i64);
    }

    fn dropped(&self, reason: &'static str, events: u64) {
        self.metrics
            .webhook_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(events);
    }
}

/// Runs due evaluations until the hub is gone, at most [`EVALUATIONS_AT_ONCE`] at a time.
async fn run_scheduler(shared: Arc<Shared>, hub: WeakHub) {
    let running = Arc::new(Semaphore::new(EVALUATIONS_AT_ONCE));
    loop {
        let now = Instant::now();
        let (due, next) = shared.take_due(now);
        let any = !due.is_empty();
        for (subject, ts) in due {
            let Ok(permit) = running.clone().acquire_owned().await else {
                return;
            };
            let Some(hub) = hub.upgrade() else {
                return;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let result = shared.evaluate(&hub, &subject, ts).await;
                if let Err(e) = &result {
                    tracing::debug!(subject = ?subject, error = %e, "webhook evaluation failed; retrying");
                }
                shared.finish(subject, result.is_err());
                drop(permit);
            });
        }
        if any {
            continue;
        }
        let until = next.map_or(now + IDLE_TICK, |at| at.min(now + IDLE_TICK));
        tokio::select! {
            () = shared.wake.notified() => {}
            () = tokio::time::sleep_until(until) => {}
        }
        if hub.upgrade().is_none() {
            return;
        }
    }
}

/// Posts batches of events to the backend.
struct Sender {
    http: reqwest::Client,
    url: String,
    secret: Vec<u8>,
    batch_size: usize,
    max_attempts: u32,
    queue_size: usize,
    metrics: Arc<Metrics>,
}

impl Sender {
    /// Takes events from the queue until every sender of it is gone.
    async fn run(self, mut events: mpsc::Receiver<Event>) {
        let mut batch = Vec::with_capacity(self.batch_size);
        while let Some(first) = events.recv().await {
            batch.push(first);
            let window = Instant::now() + BATCH_WINDOW;
            while batch.len() < self.batch_size {
                match events.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match tokio::time::timeout_at(window, events.recv()).await {
                            Ok(Some(event)) => batch.push(event),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            self.metrics
                .webhook_queue
                .set(self.queue_size.saturating_sub(events.capacity()) as i64);
            self.deliver(&batch).await;
            batch.clear();
        }
    }

    /// Posts one batch, retrying with backoff; drops it (counted) after `max_attempts` tries.
    async fn deliver(&self, batch: &[Event]) {
        let body = match serde_json::to_vec(&Batch { events: batch }) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(error = %e, "webhook batch could not be encoded; dropped");
                return;
            }
        };
        let signature = signature(&self.secret, &body);
        for attempt in 1..=self.max_attempts {
            let started = std::time::Instant::now();
            let sent = self
                .http
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .body(body.clone())
                .send()
                .await;
            let result = match &sent {
                Ok(response) if response.status().is_success() => "ok",
                Ok(_) => "error",
                Err(e) if e.is_timeout() => "timeout",
                Err(_) => "error",
            };
            self.metrics
                .webhook_requests
                .get_or_create(&ResultLabel { result })
                .inc();
            self.metrics
                .webhook_duration
                .observe(started.elapsed().as_secs_f64());
            if result == "ok" {
                return;
            }
            let why = match sent {
                Ok(response) => format!("status {}", response.status().as_u16()),
                Err(e) => e.to_string(),
            };
            if attempt == self.max_attempts {
                tracing::warn!(
                    events = batch.len(),
                    attempt,
                    why,
                    "webhook batch dropped after its last try"
                );
                break;
            }
            let wait = backoff(attempt);
            tracing::info!(
                events = batch.len(),
                attempt,
                why,
                wait_ms = wait.as_millis() as u64,
                "webhook request failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
        self.metrics
            .webhook_dropped
            .get_or_create(&ReasonLabel {
                reason: ATTEMPTS_EXHAUSTED,
            })
            .inc_by(batch.len() as u64);
    }
}

/// The wait after the `failed`-th failed try: [`FIRST_RETRY`] doubling with each, at most
/// [`MAX_RETRY`], of which a random half (so that nodes that failed together do not retry
/// together).
fn backoff(failed: u32) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1u32 << failed.saturating_sub(1).min(16));
    let base = doubled.min(MAX_RETRY);
    let jitter: f64 = rand::random();
    base / 2 + base.mul_f64(jitter / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_of_the_body() {
        // RFC 4231, test case 2.
        let mac = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn events_carry_only_what_they_are_about() {
        let online = Event {
            kind: "user_online",
            ts: 1_733_222_400_000,
            channel: None,
            user: Some("42".into()),
            client: None,
        };
        assert_eq!(
            serde_json::to_string(&Batch { events: &[online] }).unwrap_or_default(),
            r#"{"events":[{"type":"user_online","ts":1733222400000,"user":"42"}]}"#
        );
        let join = Event {
            kind: "presence_join",
            ts: 1,
            channel: Some("chat:1".into()),
            user: Some("42".into()),
            client: Some("c1".into()),
        };
        assert_eq!(
            serde_json::to_string(&join).unwrap_or_default(),
            r#"{"type":"presence_join","ts":1,"channel":"chat:1","user":"42","client":"c1"}"#
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        for failed in 1..=20 {
            let base = FIRST_RETRY
                .saturating_mul(1 << (failed - 1).min(16))
                .min(MAX_RETRY);
            let wait = backoff(failed);
            assert!(wait >= base / 2 && wait <= base, "{failed}: {wait:?}");
        }
        assert!(backoff(30) <= MAX_RETRY);
    }

    #[test]
    fn every_type_parses_back() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::parse("user_away"), None);
    }
}
