//! The scenarios: idle, broadcast, personal, churn and slow consumers, each in steps of rising
//! load, chat and presence, and Redis restarted under the nodes' subscriptions (resubscribe).
//! Every step reports deliveries, loss, latency percentiles and the CPU of the server (all its
//! nodes), of the Redis they share when known, and of the generator.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use crate::fleet::{self, Connection, SHARED_CHANNEL};
use crate::measure::{
    total_rss_kib, wait_until, CpuMeter, LoopLag, Recorder, SharedRecorder, Stream,
};
use crate::publish::{Published, Publisher};
use crate::report::Step;
use crate::spawn::SpawnedRedis;
use crate::workers::Barrier;
use crate::Target;

/// A step whose p99 passes this is saturated; the scenario stops raising the load.
const SATURATED_P99_MS: f64 = 1000.0;
/// Connections opened at once while building a fleet.
const CONNECT_CONCURRENCY: usize = 200;

pub struct Ctx {
    pub target: Target,
    /// The server's processes (every node), for CPU and memory figures.
    pub server_pids: Vec<u32>,
    /// The Redis the generator started for the nodes (the resubscribe scenario restarts it).
    pub redis: Option<SpawnedRedis>,
    /// A Redis the generator did not start: its pid, for its CPU figure.
    pub redis_pid: Option<u32>,
    pub step: Duration,
    /// This process is one of several generator processes that a coordinating process started
    /// ([`crate::workers`]).
    pub worker: bool,
}

impl Ctx {
    pub fn server_rss_kib(&self) -> Option<u64> {
        total_rss_kib(&self.server_pids)
    }

    fn server_rss_mib(&self) -> Option<f64> {
        self.server_rss_kib().map(|kib| kib as f64 / 1024.0)
    }

    /// The Redis process now (a restart changes it).
    pub fn current_redis_pid(&self) -> Option<u32> {
        self.redis
            .as_ref()
            .and_then(SpawnedRedis::pid)
            .or(self.redis_pid)
    }
}

/// The CPU meters of one step: the server's nodes, Redis, and the generator.
struct Meters {
    server: Option<CpuMeter>,
    redis: Option<CpuMeter>,
    generator: CpuMeter,
}

impl Meters {
    fn start(ctx: &Ctx) -> Meters {
        Meters {
            server: (!ctx.server_pids.is_empty()).then(|| CpuMeter::start(&ctx.server_pids)),
            redis: ctx.current_redis_pid().map(|pid| CpuMeter::start(&[pid])),
            generator: CpuMeter::start(&[std::process::id()]),
        }
    }

    /// A step with the meters' figures since `start`, and the server's memory now.
    fn step(&self, ctx: &Ctx) -> Step {
        let generator_cpu_pct = self.generator.percent();
        Step {
            server_cpu_pct: self.server.as_ref().map(CpuMeter::percent),
            redis_cpu_pct: self.redis.as_ref().map(CpuMeter::percent),
            server_rss_mib: ctx.server_rss_mib(),
            generator_cpu_pct,
            generator_bound: generator_cpu_pct > 90.0,
            ..Step::default()
        }
    }
}

/// A step's delivery figures: what `recorder` holds of the step, `expected` deliveries in all,
/// over `seconds`, with the meters' figures.
fn delivery_step(
    ctx: &Ctx,
    recorder: &SharedRecorder,
    meters: &Meters,
    expected: u64,
    seconds: f64,
) -> Step {
    let r = recorder.borrow();
    let latency_us = r.latency_us();
    let quantile = |q: f64| Some(latency_us.value_at_quantile(q) as f64 / 1000.0);
    let received = r.received - r.duplicates;
    Step {
        seconds,
        deliveries: Some(r.received),
        deliveries_per_s: Some(r.received as f64 / seconds),
        lost: Some(expected.saturating_sub(received).max(r.gaps)),
        duplicates: Some(r.duplicates),
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        p999_ms: quantile(0.999),
        max_ms: Some(latency_us.max() as f64 / 1000.0),
        ..meters.step(ctx)
    }
}

/// Opens connections `range` concurrently; the first error aborts.
async fn open_fleet(
    ctx: &Ctx,
    range: std::ops::Range<usize>,
    shared: bool,
    recorder: &SharedRecorder,
) -> Result<Vec<Connection>, String> {
    recorder.borrow_mut().ensure(range.end);
    let opened: Vec<Result<Connection, String>> = stream::iter(range)
        .map(|i| fleet::open(&ctx.target, i, shared, recorder.clone()))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    opened.into_iter().collect()
}

async fn close_fleet(mut connections: Vec<Connection>) {
    for c in &mut connections {
        c.close();
    }
    let _ = wait_until(Duration::from_secs(10), || {
        connections.iter().all(|c| c.ended.get())
    })
    .await;
}

/// Runs `publish`, waits for the deliveries it should cause (`fanout` per publication), and
/// measures the step.
async fn measure_step(
    ctx: &Ctx,
    recorder: &SharedRecorder,
    scenario: &'static str,
    connections: usize,
    load: String,
    fanout: u64,
    publish: impl Future<Output = Published>,
) -> Step {
    recorder.borrow_mut().reset_step();
    let meters = Meters::start(ctx);
    let started = Instant::now();
    let published = publish.await;
    let expected = published.accepted * fanout;
    let _ = wait_until(Duration::from_secs(5), || {
        recorder.borrow().received >= expected
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    Step {
        scenario,
        connections,
        load,
        published: Some(published.accepted),
        publisher_behind: published.fell_behind,
        note: (published.failed > 0).then(|| format!("{} publish errors", published.failed)),
        ..delivery_step(ctx, recorder, &meters, expected, seconds)
    }
}

fn saturated(step: &Step) -> bool {
    step.p99_ms.unwrap_or(0.0) > SATURATED_P99_MS || step.lost.unwrap_or(0) > 0
}

/// The next publication of the shared channel: sequence number from `seq`, stamped with the
/// send time, with a plant site's update beside them when `target.site_payload`. Returns the
/// request body and how many publications it holds (one).
fn next_shared(target: &Target, recorder: &SharedRecorder, seq: &Cell<u64>) -> (String, u64) {
    seq.set(seq.get() + 1);
    let (n, t) = (seq.get(), recorder.borrow().now_us());
    let site = if target.site_payload { SITE_UPDATE } else { "" };
    (
        format!(r#"{{"channel":"{SHARED_CHANNEL}","data":{{"n":{n},"t":{t}{site}}}}}"#),
        1,
    )
}

/// What seed 002's plant dashboard receives on `dashboard:update`: a site's mixers, vehicles and
/// silos, about 1 KB of JSON (appended to a publication's `data` with `--site-payload`).
const SITE_UPDATE: &str = concat!(
    r#","site":{"site_id":1,"name":"Plant 1","status":"operational","#,
    r#""mixers":[{"id":"mixer-1","status":"running","load_percent":72,"temperature_c":21.5,"batch":"B-20261203-0141"},"#,
    r#"{"id":"mixer-2","status":"running","load_percent":68,"temperature_c":22.0,"batch":"B-20261203-0142"},"#,
    r#"{"id":"mixer-3","status":"idle","load_percent":0,"temperature_c":19.5,"batch":null}],"#,
    r#""vehicles":[{"id":"truck-17","status":"loading","driver":"Ivanov","order_id":"ORD-88231","eta_min":null},"#,
    r#"{"id":"truck-21","status":"en_route","driver":"Petrov","order_id":"ORD-88219","eta_min":14},"#,
    r#"{"id":"truck-34","status":"returning","driver":"Sidorov","order_id":null,"eta_min":22}],"#,
    r#""silos":[{"id":"cement-1","material":"cement","level_percent":64,"alarm":false},"#,
    r#"{"id":"cement-2","material":"cement","level_percent":18,"alarm":true},"#,
    r#"{"id":"sand-1","material":"sand","level_percent":81,"alarm":false},"#,
    r#"{"id":"gravel-1","material":"gravel","level_percent":57,"alarm":false}],"#,
    r#""orders_today":{"planned":48,"done":31,"in_progress":6,"volume_m3":412.5},"#,
    r#""updated_by":"dashboard-service"}"#,
);

/// Idle: `n` connections on their personal channel and the shared one; memory per connection,
/// connect rate, and idle CPU (heartbeats only) over `idle`.
pub async fn idle(ctx: &Ctx, n: usize, idle: Duration) -> Result<Vec<Step>, String> {
    let recorder = Recorder::new(Instant::now(), n);
    let rss_before = ctx.server_rss_kib();
    let generator_cpu = CpuMeter::start(&[std::process::id()]);
    let started = Instant::now();
    let fleet = open_fleet(ctx, 0..n, true, &recorder).await?;
    let connect_seconds = started.elapsed().as_secs_f64();
    let connect_cpu = generator_cpu.percent();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let meters = Meters::start(ctx);
    tokio::time::sleep(idle).await;
    // Read at the end of the idle period: the steady state of idle connections, heartbeats
    // included, after what connecting allocated for a moment has been returned.
    let rss_after = ctx.server_rss_kib();
    let bytes_per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) => {
            Some(after.saturating_sub(before) as f64 * 1024.0 / n as f64)
        }
        _ => None,
    };
    let step = Step {
        scenario: "idle",
        connections: n,
        load: format!("idle {}s", idle.as_secs()),
        seconds: idle.as_secs_f64(),
        server_rss_mib: rss_after.map(|k| k as f64 / 1024.0),
        bytes_per_connection,
        connects_per_s: Some(n as f64 / connect_seconds),
        generator_bound: connect_cpu > 90.0,
        note: Some(format!(
            "connect {:.0}/s (generator {connect_cpu:.0}% CPU while connecting)",
            n as f64 / connect_seconds
        )),
        ..meters.step(ctx)
    };
    close_fleet(fleet).await;
    Ok(vec![step])
}

/// Broadcast: `n` subscribers of one channel; publications at each of `rates`, then as fast as
/// the publisher can (the ceiling).
pub async fn broadcast(ctx: &Ctx, n: usize, rates: &[f64]) -> Result<Vec<Step>, String> {
    let recorder = Recorder::new(Instant::now(), n);
    let fleet = open_fleet(ctx, 0..n, true, &recorder).await?;
    let publisher = Publisher::new(&ctx.target, "/api/publish");
    let seq = Cell::new(0u64);
    let mut steps = Vec::new();
    let mut loads: Vec<Option<f64>> = rates.iter().copied().map(Some).collect();
    loads.push(None);
    for rate in loads {
        let body = |_| next_shared(&ctx.target, &recorder, &seq);
        let label = rate.map_or_else(|| "max pub/s".to_string(), |r| format!("{r} pub/s"));
        let wire_before = fleet::wire_bytes();
        let mut step = measure_step(
            ctx,
            &recorder,
            "broadcast",
            n,
            label,
            n as u64,
            publisher.run(rate, ctx.step, body),
        )
        .await;
        // What each delivery cost on the wire, as the clients read it (frames of every kind).
        if let Some(deliveries) = step.deliveries.filter(|d| *d > 0) {
            let per_delivery = (fleet::wire_bytes() - wire_before) as f64 / deliveries as f64;
            let wire = format!("{per_delivery:.0} B/delivery on the wire");
            step.note = Some(match step.note.take() {
                Some(note) => format!("{note}; {wire}"),
                None => wire,
            });
        }
        let stop = rate.is_some() && saturated(&step);
        steps.push(step);
        if stop {
            break;
        }
    }
    close_fleet(fleet).await;
    Ok(steps)
}

/// A publication to connection `index`'s personal channel, numbered `n` and stamped `t`.
fn personal_publication(target: &Target, index: usize, n: u64, t: u64) -> String {
    let user = target.user(index);
    format!(r#"{{"channel":"user:{user}","data":{{"n":{n},"t":{t}}}}}"#)
}

/// Personal: `n` users, each publication to one user's channel (round robin), at each of
/// `rates`; `batch` publications per HTTP request (1 = `/api/publish`, more = `/api/batch`).
pub async fn personal(
    ctx: &Ctx,
    n: usize,
    rates: &[f64],
    batch: usize,
    pipeline: usize,
) -> Result<Vec<Step>, String> {
    let recorder = Recorder::new(Instant::now(), n);
    let fleet = open_fleet(ctx, 0..n, false, &recorder).await?;
    let path = if batch > 1 {
        "/api/batch"
    } else {
        "/api/publish"
    };
    let publisher = Publisher::pipelined(&ctx.target, path, pipeline);
    let next = Cell::new(0u64);
    let mut steps = Vec::new();
    for &rate in rates {
        let body = |_| {
            let t = recorder.borrow().now_us();
            let mut items = Vec::with_capacity(batch);
            for _ in 0..batch.max(1) {
                let i = next.get();
                next.set(i + 1);
                items.push(personal_publication(
                    &ctx.target,
                    (i % n as u64) as usize,
                    i,
                    t,
                ));
            }
            let text = if batch > 1 {
                format!(r#"{{"publications":[{}]}}"#, items.join(","))
            } else {
                items.pop().unwrap_or_default()
            };
            (text, batch.max(1) as u64)
        };
        let requests_per_s = rate / batch.max(1) as f64;
        let label = match (batch, pipeline) {
            (2.., _) => format!("{rate} msg/s (batch {batch})"),
            (_, 2..) => format!("{rate} msg/s (pipeline {pipeline})"),
            _ => format!("{rate} msg/s"),
        };
        let step = measure_step(
            ctx,
            &recorder,
            "personal",
            n,
            label,
            1,
            publisher.run(Some(requests_per_s), ctx.step, body),
        )
        .await;
        let stop = saturated(&step);
        steps.push(step);
        if stop {
            break;
        }
    }
    close_fleet(fleet).await;
    Ok(steps)
}

/// Churn: `n` subscribers of a live broadcast at `broadcast_rate`; at each of `rates`, new
/// connections (fresh JWT each) replace the oldest ones at that many per second.
pub async fn churn(
    ctx: &Ctx,
    n: usize,
    rates: &[f64],
    broadcast_rate: f64,
) -> Result<Vec<Step>, String> {
    let recorder = Recorder::new(Instant::now(), n);
    let mut fleet: std::collections::VecDeque<Connection> =
        open_fleet(ctx, 0..n, true, &recorder).await?.into();
    let publisher = Publisher::new(&ctx.target, "/api/publish");
    let seq = Cell::new(0u64);
    let next_index = Cell::new(n);
    let failures = Rc::new(Cell::new(0u64));
    let mut steps = Vec::new();
    for &rate in rates {
        let body = |_| next_shared(&ctx.target, &recorder, &seq);
        let churned = Cell::new(0u64);
        let churn_loop = async {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            while started.elapsed() < ctx.step {
                tick.tick().await;
                let index = next_index.get();
                next_index.set(index + 1);
                recorder.borrow_mut().ensure(index + 1);
                match fleet::open(&ctx.target, index, true, recorder.clone()).await {
                    Ok(connection) => {
                        fleet.push_back(connection);
                        if let Some(mut old) = fleet.pop_front() {
                            old.close();
                        }
                        churned.set(churned.get() + 1);
                    }
                    Err(_) => failures.set(failures.get() + 1),
                }
            }
        };
        let publish = async {
            let (published, ()) = tokio::join!(
                publisher.run(Some(broadcast_rate), ctx.step, body),
                churn_loop
            );
            published
        };
        // The fleet changes during the step, so loss is judged by offset gaps, not totals.
        let mut step = measure_step(
            ctx,
            &recorder,
            "churn",
            n,
            format!("{rate} conn/s"),
            0,
            publish,
        )
        .await;
        step.lost = Some(recorder.borrow().gaps);
        step.connects_per_s = Some(churned.get() as f64 / step.seconds);
        step.note = Some(format!(
            "broadcast {broadcast_rate} pub/s; {} connects, {} failed",
            churned.get(),
            failures.get()
        ));
        steps.push(step);
    }
    close_fleet(fleet.into()).await;
    Ok(steps)
}

/// Slow consumers: a broadcast at `rate` to `n` subscribers, first with everyone reading, then
/// with `percent`% of them no longer reading. The others' p99 should stay close and the server's
/// memory bounded (the slow ones are dropped with 4010).
pub async fn slow(ctx: &Ctx, n: usize, rate: f64, percent: f64) -> Result<Vec<Step>, String> {
    let recorder = Recorder::new(Instant::now(), n);
    let fleet = open_fleet(ctx, 0..n, true, &recorder).await?;
    let publisher = Publisher::new(&ctx.target, "/api/publish");
    let seq = Cell::new(0u64);
    let body = |_| next_shared(&ctx.target, &recorder, &seq);
    let mut baseline = measure_step(
        ctx,
        &recorder,
        "slow",
        n,
        format!("{rate} pub/s, all reading"),
        n as u64,
        publisher.run(Some(rate), ctx.step, body),
    )
    .await;
    baseline.note = Some("baseline".into());

    let slow_before = slow_consumers(ctx).await;
    let every = (100.0 / percent).round().max(1.0) as usize;
    let mut paused = 0;
    for (i, c) in fleet.iter().enumerate() {
        if i % every == 0 {
            c.paused.set(true);
            paused += 1;
        }
    }
    let body = |_| next_shared(&ctx.target, &recorder, &seq);
    let readers = (n - paused) as u64;
    let mut with_slow = measure_step(
        ctx,
        &recorder,
        "slow",
        n,
        format!("{rate} pub/s, {percent}% not reading"),
        readers,
        publisher.run(Some(rate), ctx.step, body),
    )
    .await;
    let ratio = match (baseline.p99_ms, with_slow.p99_ms) {
        (Some(a), Some(b)) if a > 0.0 => b / a,
        _ => 0.0,
    };
    let dropped = match (slow_before, slow_consumers(ctx).await) {
        (Some(before), Some(after)) => (after - before).to_string(),
        _ => "?".into(),
    };
    with_slow.note = Some(format!(
        "{paused} not reading, {dropped} dropped as slow consumers (4010) by the server; p99 {:.0}% of baseline",
        ratio * 100.0
    ));
    close_fleet(fleet).await;
    Ok(vec![baseline, with_slow])
}

/// The server's count of connections closed as slow consumers (`/api/stats`), summed over the
/// nodes the clients connect to.
async fn slow_consumers(ctx: &Ctx) -> Option<u64> {
    let client = reqwest::Client::new();
    let mut total = 0;
    for base in ctx.target.node_bases() {
        let response = client
            .get(format!("{base}/api/stats"))
            .bearer_auth(&ctx.target.api_key)
            .send()
            .await
            .ok()?;
        let stats: serde_json::Value = response.json().await.ok()?;
        total += stats["node"]["slow_consumers"].as_u64()?;
    }
    Some(total)
}

/// Chat rooms: each connection's room, and each room's name and size.
struct Rooms {
    /// Connection `i` is a member of room `member_of[i]`.
    member_of: Vec<usize>,
    names: Vec<String>,
    sizes: Vec<u64>,
}

impl Rooms {
    /// Rooms for `n` connections whose sizes cycle through 10 to 50 members (`chat:r{k}`).
    fn varied(n: usize) -> Rooms {
        let mut member_of = Vec::with_capacity(n);
        let mut room = 0;
        while member_of.len() < n {
            let size = 10 + (room * 7) % 41;
            member_of.extend(std::iter::repeat_n(room, size.min(n - member_of.len())));
            room += 1;
        }
        Rooms::named(member_of, |k| format!("chat:r{k}"))
    }

    /// Rooms of `size` members for users `first_user..first_user + n`: user `u` is in room
    /// `chat:m{u / size}`, so that generator processes with their own ranges of users (each
    /// starting at a multiple of `size`) share no room.
    fn even(first_user: usize, n: usize, size: usize) -> Rooms {
        let size = size.max(1);
        let first_room = first_user / size;
        Rooms::named((0..n).map(|i| i / size).collect(), |k| {
            format!("chat:m{}", first_room + k)
        })
    }

    fn named(member_of: Vec<usize>, name: impl Fn(usize) -> String) -> Rooms {
        let count = member_of.last().map_or(0, |r| r + 1);
        let mut sizes = vec![0u64; count];
        for &room in &member_of {
            sizes[room] += 1;
        }
        Rooms {
            member_of,
            names: (0..count).map(name).collect(),
            sizes,
        }
    }

    /// The room of connection `i`.
    fn of(&self, i: usize) -> &str {
        self.names[self.member_of[i]].as_str()
    }
}

/// Opens connection `i` of `rooms` in its room, for each `i` in `0..n`, in order (`fleet[i]`
/// must be connection `i`); connections can send. Returns the fleet and the seconds it took.
async fn open_rooms(
    ctx: &Ctx,
    rooms: &Rooms,
    recorder: &SharedRecorder,
) -> Result<(Vec<Connection>, f64), String> {
    let n = rooms.member_of.len();
    recorder.borrow_mut().ensure(n);
    let started = Instant::now();
    let opened: Vec<Result<Connection, String>> = stream::iter(0..n)
        .map(|i| {
            let recorder = recorder.clone();
            async move { fleet::open_in(&ctx.target, i, Some(rooms.of(i)), true, recorder).await }
        })
        .buffered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let fleet = opened.into_iter().collect::<Result<_, _>>()?;
    Ok((fleet, started.elapsed().as_secs_f64()))
}

/// What a run of chat messages sent: deliveries to expect (every member of the room, the sender
/// included), messages queued, and messages the generator could not queue.
#[derive(Default)]
struct ChatSent {
    expected: u64,
    messages: u64,
    not_sent: u64,
}

/// Sends chat messages at `rate` per second for `duration` over the members' own sockets, each
/// preceded by a `typing` frame (throttled by the server to one per user per second), spread
/// over every member (`next` carries the position from one run to the next).
async fn send_chat(
    fleet: &[Connection],
    rooms: &Rooms,
    rate: f64,
    duration: Duration,
    next: &Cell<usize>,
    recorder: &SharedRecorder,
) -> ChatSent {
    let n = fleet.len();
    let mut sent = ChatSent::default();
    if n == 0 || rate <= 0.0 {
        tokio::time::sleep(duration).await;
        return sent;
    }
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut count = 0u64;
    while start.elapsed() < duration {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while count < due {
            // Spread over every client, so each sends rate / n messages per second.
            let i = next.get() % n;
            next.set(next.get() + 7919);
            let room = rooms.of(i);
            let t = recorder.borrow().now_us();
            fleet[i].send(format!(r#"{{"type":"typing","channel":"{room}"}}"#));
            let queued = fleet[i].send(format!(
                r#"{{"type":"publish","channel":"{room}","event":"message","data":{{"n":{count},"t":{t}}},"id":{count}}}"#
            ));
            count += 1;
            if queued {
                sent.expected += rooms.sizes[rooms.member_of[i]];
                sent.messages += 1;
            } else {
                sent.not_sent += 1;
            }
        }
    }
    sent
}

/// What the step's frames other than deliveries say: acks, errors (and the first), and channel
/// events.
fn frames_note(recorder: &SharedRecorder) -> String {
    let r = recorder.borrow();
    format!(
        "{} acks, {} errors{}, {} join/leave/typing events",
        r.replies,
        r.errors,
        r.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        r.events
    )
}

/// Chat: `n` clients in rooms of 10 to 50 members (namespace `chat`: presence, join/leave and
/// typing on); at each of `rates`, clients publish that many messages per second over their own
/// WebSocket, each preceded by a `typing` frame. Every member of the room, the sender included,
/// receives each message.
pub async fn chat(ctx: &Ctx, n: usize, rates: &[f64]) -> Result<Vec<Step>, String> {
    let recorder = Recorder::new(Instant::now(), n);
    let rooms = Rooms::varied(n);
    let (fleet, join_seconds) = open_rooms(ctx, &rooms, &recorder).await?;
    let mut steps = Vec::new();
    let next = Cell::new(0usize);
    for &rate in rates {
        let messages = Cell::new(0u64);
        let send = async {
            let sent = send_chat(&fleet, &rooms, rate, ctx.step, &next, &recorder).await;
            messages.set(sent.messages);
            Published {
                accepted: sent.expected,
                failed: 0,
                fell_behind: sent.not_sent > 0,
            }
        };
        let mut step =
            measure_step(ctx, &recorder, "chat", n, format!("{rate} msg/s"), 1, send).await;
        step.published = Some(messages.get());
        step.note = Some(format!(
            "{} rooms of 10-50, joined in {join_seconds:.1}s; {}",
            rooms.sizes.len(),
            frames_note(&recorder)
        ));
        let stop = saturated(&step);
        steps.push(step);
        if stop {
            break;
        }
    }
    close_fleet(fleet).await;
    Ok(steps)
}

/// Mixed, seed 003's load on one generator process: `n` users, each on their personal channel
/// and in a chat room of `room_size` (namespace `chat`); at each of `rates`, that many messages
/// per second, `chat_share` of them chat messages sent by members over their sockets (as in
/// [`chat`]) and the rest personal notifications published over the HTTP API to one user each.
/// A worker process (`--worker`, started by [`crate::workers::coordinate`]) meets the others
/// before each step and after the last, so that every process's steps run at once.
pub async fn mixed(
    ctx: &Ctx,
    n: usize,
    rates: &[f64],
    chat_share: f64,
    room_size: usize,
) -> Result<Vec<Step>, String> {
    if !(0.0..=1.0).contains(&chat_share) {
        return Err("--chat-share must be between 0 and 1".into());
    }
    if room_size == 0 || !ctx.target.user_offset.is_multiple_of(room_size) {
        return Err("--room-size must be above 0 and divide --user-offset, so that rooms stay within one generator process".into());
    }
    let recorder = Recorder::new(Instant::now(), n);
    let rooms = Rooms::even(ctx.target.user_offset, n, room_size);
    let (fleet, join_seconds) = open_rooms(ctx, &rooms, &recorder).await?;
    let mut barrier = Barrier::new(ctx.worker);
    let publisher = Publisher::new(&ctx.target, "/api/publish");
    let lag = LoopLag::start();
    let next_user = Cell::new(0u64);
    let next_member = Cell::new(0usize);
    let mut steps = Vec::new();
    for &rate in rates {
        barrier.wait().await?;
        lag.take_ms();
        let chat_rate = rate * chat_share;
        let personal_rate = rate - chat_rate;
        let messages = Cell::new(0u64);
        let load = async {
            let body = |_| {
                let i = next_user.get();
                next_user.set(i + 1);
                let t = recorder.borrow().now_us();
                (
                    personal_publication(&ctx.target, (i % n as u64) as usize, i, t),
                    1,
                )
            };
            let (personal, chat) = tokio::join!(
                publisher.run(Some(personal_rate), ctx.step, body),
                send_chat(&fleet, &rooms, chat_rate, ctx.step, &next_member, &recorder)
            );
            messages.set(personal.accepted + chat.messages);
            Published {
                accepted: personal.accepted + chat.expected,
                failed: personal.failed,
                fell_behind: personal.fell_behind || chat.not_sent > 0,
            }
        };
        let mut step =
            measure_step(ctx, &recorder, "mixed", n, format!("{rate} msg/s"), 1, load).await;
        step.published = Some(messages.get());
        let failed = step
            .note
            .take()
            .map(|e| format!("; {e}"))
            .unwrap_or_default();
        let (lag_p99, lag_max) = lag.take_ms();
        step.note = Some(format!(
            "{personal_rate:.0} personal + {chat_rate:.0} chat msg/s (p99 {:.1} and {:.1} ms); generator loop lag p99 {lag_p99:.1} ms, max {lag_max:.1} ms; {} rooms of {room_size}, joined in {join_seconds:.1}s; {}{failed}",
            recorder.borrow().p99_ms(Stream::Personal),
            recorder.borrow().p99_ms(Stream::Shared),
            rooms.sizes.len(),
            frames_note(&recorder)
        ));
        steps.push(step);
    }
    // Every process has finished its steps before any closes its connections.
    barrier.wait().await?;
    close_fleet(fleet).await;
    Ok(steps)
}

/// Presence on a large channel: `n` clients join `chat:big` (join/leave pushes are suppressed past
/// the namespace's member limit, so the joins cost no N² deliveries), then the presence counts and
/// the full list are read over the server API, `requests` times each, `concurrency` at a time.
pub async fn presence(ctx: &Ctx, n: usize, requests: usize) -> Result<Vec<Step>, String> {
    let recorder = Recorder::new(Instant::now(), n);
    let started = Instant::now();
    recorder.borrow_mut().ensure(n);
    let opened: Vec<Result<Connection, String>> = stream::iter(0..n)
        .map(|i| fleet::open_in(&ctx.target, i, Some("chat:big"), false, recorder.clone()))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let fleet: Vec<Connection> = opened.into_iter().collect::<Result<_, _>>()?;
    let join_seconds = started.elapsed().as_secs_f64();
    let events = recorder.borrow().events;
    let client = reqwest::Client::new();
    let mut steps = Vec::new();
    for (label, query, count) in [
        ("counts", "?counts_only=true", requests),
        ("full list", "", (requests / 20).max(5)),
    ] {
        let base = ctx.target.http_bases.first().map_or("", String::as_str);
        let url = format!("{base}/api/channels/chat:big/presence{query}");
        let meters = Meters::start(ctx);
        let mut latency = hdrhistogram::Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
        let step_started = Instant::now();
        let mut failed = 0u64;
        let mut connections_seen = 0u64;
        for _ in 0..count {
            let sent = Instant::now();
            let response = client
                .get(&url)
                .bearer_auth(&ctx.target.api_key)
                .send()
                .await;
            let body = match response {
                Ok(r) if r.status().is_success() => r.text().await.ok(),
                _ => None,
            };
            let _ = latency.record(sent.elapsed().as_micros().max(1) as u64);
            match body.as_deref().and_then(connections_in) {
                Some(c) => connections_seen = c,
                None => failed += 1,
            }
        }
        let seconds = step_started.elapsed().as_secs_f64();
        let ms = |q: f64| Some(latency.value_at_quantile(q) as f64 / 1000.0);
        steps.push(Step {
            scenario: "presence",
            connections: n,
            load: format!("{label} x{count}"),
            seconds,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: Some(latency.max() as f64 / 1000.0),
            note: Some(format!(
                "{:.0} requests/s one at a time; {connections_seen} connections counted; {failed} failed; {n} joined in {join_seconds:.1}s with {events} join events delivered",
                count as f64 / seconds
            )),
            ..meters.step(ctx)
        });
    }
    close_fleet(fleet).await;
    Ok(steps)
}

/// Publications per `/api/batch` request when the resubscribe scenario reaches every user.
const RESUBSCRIBE_BATCH: usize = 1_000;
/// How long the nodes may take to be ready again, and the publication to reach everyone.
const RESUBSCRIBE_LIMIT: Duration = Duration::from_secs(120);

/// Resubscribe: `n` users on their personal channels only, so that the nodes hold `n` channel
/// subscriptions in Redis; then Redis is restarted (SIGTERM, the process gone, started again on
/// the same port and files). Two steps: from Redis answering again until every node's `/ready`
/// answers 200 (every pub/sub link reconnected and resubscribed), and from then until a
/// publication to every user, sent through `/api/batch`, has reached every connection.
pub async fn resubscribe(ctx: &mut Ctx, n: usize) -> Result<Vec<Step>, String> {
    if ctx.redis.is_none() {
        return Err("resubscribe restarts Redis: it needs the Redis that --spawn --engine redis starts (without --redis-url)".into());
    }
    let nodes = ctx.target.node_bases();
    let recorder = Recorder::new(Instant::now(), n);
    let fleet = open_fleet(ctx, 0..n, false, &recorder).await?;
    let client = reqwest::Client::new();
    wait_ready(&client, &nodes, Duration::from_secs(10))
        .await
        .map_err(|e| format!("before the restart: {e}"))?;

    let redis = ctx.redis.as_mut().ok_or("no Redis")?;
    let stopping = Instant::now();
    redis.stop().await?;
    let stop_seconds = stopping.elapsed().as_secs_f64();
    redis.launch()?;
    let answering = redis.wait_answering(Duration::from_secs(30)).await?;
    let meters = Meters::start(ctx);
    let ready_after = wait_ready(&client, &nodes, RESUBSCRIBE_LIMIT).await?;
    let all_ready = Instant::now();
    let ready_seconds = all_ready.duration_since(answering).as_secs_f64();
    let per_node: Vec<String> = nodes
        .iter()
        .zip(&ready_after)
        .map(|(node, ready)| {
            let seconds = ready.saturating_duration_since(answering).as_secs_f64();
            format!("{} {seconds:.2}s", node.trim_start_matches("http://"))
        })
        .collect();
    let dropped = fleet.iter().filter(|c| c.ended.get()).count();
    let mut steps = vec![Step {
        scenario: "resubscribe",
        connections: n,
        load: "Redis restarted".into(),
        seconds: ready_seconds,
        note: Some(format!(
            "every node ready {ready_seconds:.2}s after Redis answered again ({}); {n} channels on {} nodes; Redis stopped in {stop_seconds:.2}s; {dropped} connections dropped",
            per_node.join(", "),
            nodes.len()
        )),
        ..meters.step(ctx)
    }];

    // From the moment every node is ready: one publication to every user.
    recorder.borrow_mut().reset_step();
    let meters = Meters::start(ctx);
    let publisher = Publisher::new(&ctx.target, "/api/batch");
    let requests = n.div_ceil(RESUBSCRIBE_BATCH) as u64;
    let published = publisher
        .send(requests, |request| {
            let t = recorder.borrow().now_us();
            let first = request as usize * RESUBSCRIBE_BATCH;
            let items: Vec<String> = (first..(first + RESUBSCRIBE_BATCH).min(n))
                .map(|i| personal_publication(&ctx.target, i, i as u64, t))
                .collect();
            let count = items.len() as u64;
            (
                format!(r#"{{"publications":[{}]}}"#, items.join(",")),
                count,
            )
        })
        .await;
    let expected = published.accepted;
    let _ = wait_until(RESUBSCRIBE_LIMIT, || recorder.borrow().received >= expected).await;
    let seconds = all_ready.elapsed().as_secs_f64();
    let reached = recorder.borrow().received - recorder.borrow().duplicates;
    let mut note = format!(
        "every user reached {seconds:.2}s after every node was ready: {reached} of {n} users, {requests} requests of up to {RESUBSCRIBE_BATCH} through /api/batch"
    );
    if published.failed > 0 {
        note.push_str(&format!("; {} publish errors", published.failed));
    }
    steps.push(Step {
        scenario: "resubscribe",
        connections: n,
        load: "publish to every user".into(),
        published: Some(published.accepted),
        note: Some(note),
        ..delivery_step(ctx, &recorder, &meters, expected, seconds)
    });
    close_fleet(fleet).await;
    Ok(steps)
}

/// Waits until every node in `nodes` has answered `/ready` with 200; returns when each first
/// did. Fails after `limit`.
async fn wait_ready(
    client: &reqwest::Client,
    nodes: &[String],
    limit: Duration,
) -> Result<Vec<Instant>, String> {
    let deadline = Instant::now() + limit;
    let each = nodes.iter().map(|node| async move {
        let url = format!("{node}/ready");
        loop {
            let response = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if response.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{node}/ready did not answer 200 within {}s",
                    limit.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    futures_util::future::join_all(each)
        .await
        .into_iter()
        .collect()
}

/// The `connections` count of a presence answer, without a full JSON parse.
fn connections_in(body: &str) -> Option<u64> {
    let at = body.find(r#""connections":"#)? + 14;
    let digits: String = body[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}
