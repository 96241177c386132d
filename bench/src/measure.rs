//! What the generator measures: every delivery (latency, gaps, duplicates) and the processes'
//! CPU time and memory from `/proc`.
//!
//! The generator runs on one thread, so the recorder is a plain `RefCell` shared by all
//! connection tasks: no atomics or locks on the receive path.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Which stream a delivery belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The channel every connection shares (`bench:all`).
    Shared = 0,
    /// The connection's personal channel (`user:{id}`).
    Personal = 1,
}

/// Counts and latencies of the deliveries in one step.
pub struct Recorder {
    pub start: Instant,
    /// Latencies by stream (indexed by [`Stream`]); [`Recorder::latency_us`] is both together.
    latency_by_stream_us: [Histogram<u64>; 2],
    pub received: u64,
    pub gaps: u64,
    pub duplicates: u64,
    /// Other frames by type: replies, errors, and channel events (join, leave, typing).
    pub replies: u64,
    pub errors: u64,
    pub events: u64,
    /// The first error frame of the step, to say what went wrong.
    pub first_error: Option<String>,
    /// Per connection and stream: the next offset expected; 0 until the first delivery, which
    /// sets the baseline (a connection may join a stream that already has history).
    next: Vec<[u64; 2]>,
}

pub type SharedRecorder = Rc<RefCell<Recorder>>;

impl Recorder {
    pub fn new(start: Instant, connections: usize) -> SharedRecorder {
        Rc::new(RefCell::new(Recorder {
            start,
            latency_by_stream_us: [new_histogram(), new_histogram()],
            received: 0,
            gaps: 0,
            duplicates: 0,
            replies: 0,
            errors: 0,
            events: 0,
            first_error: None,
            next: vec![[0, 0]; connections],
        }))
    }

    /// Microseconds since the generator started: the clock publications are stamped with.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// The latencies of the step's deliveries on every stream.
    pub fn latency_us(&self) -> Histogram<u64> {
        let [shared, personal] = &self.latency_by_stream_us;
        let mut all = shared.clone();
        let _ = all.add(personal);
        all
    }

    /// The 99th percentile of the step's deliveries on `stream`, in milliseconds.
    pub fn p99_ms(&self, stream: Stream) -> f64 {
        self.latency_by_stream_us[stream as usize].value_at_quantile(0.99) as f64 / 1000.0
    }

    /// Records a delivery at `offset`, stamped `t` (µs), to connection `conn`.
    pub fn record(&mut self, conn: usize, stream: Stream, offset: u64, t: u64) {
        let n = offset;
        let now = self.now_us();
        let latency = now.saturating_sub(t).max(1);
        let _ = self.latency_by_stream_us[stream as usize].record(latency);
        self.received += 1;
        let Some(next) = self.next.get_mut(conn).map(|n| &mut n[stream as usize]) else {
            return;
        };
        if *next == 0 || n == *next {
            *next = n + 1;
        } else if n > *next {
            self.gaps += n - *next;
            *next = n + 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// Counts a frame that is not a delivery, by its type (a prefix check, no JSON parse).
    pub fn note_frame(&mut self, text: &str) {
        let kind = text
            .strip_prefix(r#"{"type":""#)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("");
        match kind {
            "reply" => self.replies += 1,
            "error" => {
                if self.first_error.is_none() {
                    self.first_error = Some(text.to_string());
                }
                self.errors += 1
            }
            "join" | "leave" | "typing" => self.events += 1,
            _ => {}
        }
    }

    /// Starts a new step: clears latencies and counts, keeps the sequence expectations.
    pub fn reset_step(&mut self) {
        self.latency_by_stream_us = [new_histogram(), new_histogram()];
        self.received = 0;
        self.gaps = 0;
        self.duplicates = 0;
        self.replies = 0;
        self.errors = 0;
        self.events = 0;
        self.first_error = None;
    }

    /// Grows the expectation table for connections added later (churn).
    pub fn ensure(&mut self, connections: usize) {
        if self.next.len() < connections {
            self.next.resize(connections, [0, 0]);
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes, 3 significant digits; valid bounds, and values above are clamped.
    let mut histogram = Histogram::new(3).unwrap_or_else(|_| unreachable!("3 digits is valid"));
    histogram.auto(true);
    histogram
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // Linux reports CPU time in USER_HZ, which is 100 on every mainstream architecture.
    100.0
}

/// Resident memory of a process in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Resident memory of processes `pids` together in KiB; `None` if any cannot be read.
pub fn total_rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| rss_kib(pid)).sum()
}

/// CPU use of processes over an interval, as a percentage of one core (summed over the
/// processes: several server nodes count together).
pub struct CpuMeter {
    /// Each process and its CPU seconds at the start.
    processes: Vec<(u32, f64)>,
    wall: Instant,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            processes: pids
                .iter()
                .map(|&pid| (pid, cpu_seconds(pid).unwrap_or(0.0)))
                .collect(),
            wall: Instant::now(),
        }
    }

    /// Percent of one core used since `start`, by all the processes together.
    pub fn percent(&self) -> f64 {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-6);
        let cpu: f64 = self
            .processes
            .iter()
            .map(|&(pid, start)| cpu_seconds(pid).map_or(0.0, |now| now - start))
            .sum();
        cpu / wall * 100.0
    }
}

/// Waits until `done()` holds or `limit` passes; returns whether it held.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// How late the generator's own event loop runs: a task asks to wake every 10 ms and records by
/// how much each wake-up came late. A delivery's latency includes this lag, so a step whose lag
/// is high measured the generator as much as the server.
pub struct LoopLag {
    lag_us: Rc<RefCell<Histogram<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LoopLag {
    /// Starts measuring on the current `LocalSet`.
    pub fn start() -> LoopLag {
        let lag_us = Rc::new(RefCell::new(new_histogram()));
        let record = lag_us.clone();
        let task = tokio::task::spawn_local(async move {
            let period = Duration::from_millis(10);
            loop {
                let asked = Instant::now() + period;
                tokio::time::sleep_until(asked.into()).await;
                let late = Instant::now().saturating_duration_since(asked);
                let _ = record.borrow_mut().record(late.as_micros().max(1) as u64);
            }
        });
        LoopLag { lag_us, task }
    }

    /// The lag's 99th percentile and maximum since the last call, in milliseconds; starts anew.
    pub fn take_ms(&self) -> (f64, f64) {
        let mut lag = self.lag_us.borrow_mut();
        let figures = (
            lag.value_at_quantile(0.99) as f64 / 1000.0,
            lag.max() as f64 / 1000.0,
        );
        lag.reset();
        figures
    }
}

impl Drop for LoopLag {
    fn drop(&mut self) {
        self.task.abort();
    }
}
