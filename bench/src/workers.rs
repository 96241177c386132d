//! Loads beyond one generator process: seed 003's 100,000 connections need more sockets than one
//! process may open (20,000 descriptors here), so `mixed --processes P` starts P worker processes
//! of this binary, each playing its own range of users against every node, and coordinates them.
//!
//! The coordinator and its workers meet at a barrier over the workers' stdin and stdout: a
//! worker prints [`READY`] once its connections are open and before each step, then waits for
//! [`GO`]; the coordinator sends it to all of them once all are ready, so that their steps run
//! at once. Each worker writes its steps as JSON lines; the coordinator merges the steps of the
//! same index into one (counts summed, percentiles the highest of the workers', which bounds the
//! whole fleet's from above) and adds the nodes' memory per connection, read while every
//! connection is open and no load runs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::measure::rss_kib;
use crate::report::Step;
use crate::scenarios::Ctx;

/// What a worker prints when it is ready for the next step.
pub const READY: &str = "herald-bench worker ready";
/// What the coordinator answers when every worker is ready.
pub const GO: &str = "go";

/// Connections one worker opens when `--processes` is not given: under the 20,000-descriptor
/// limit with room for the publisher's sockets.
pub const CONNECTIONS_PER_PROCESS: usize = 17_000;

/// How long a worker may take to open its connections.
const CONNECT_LIMIT: Duration = Duration::from_secs(600);

/// A worker's side of the barrier (nothing to wait for in a process on its own).
pub struct Barrier {
    coordinator: Option<Lines<BufReader<tokio::io::Stdin>>>,
}

impl Barrier {
    pub fn new(worker: bool) -> Barrier {
        Barrier {
            coordinator: worker.then(|| BufReader::new(tokio::io::stdin()).lines()),
        }
    }

    /// Says this process is ready and waits until the coordinator says go.
    pub async fn wait(&mut self) -> Result<(), String> {
        let Some(lines) = self.coordinator.as_mut() else {
            return Ok(());
        };
        let mut stdout = tokio::io::stdout();
        let ready = format!("{READY}\n");
        stdout
            .write_all(ready.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stdout.flush().await.map_err(|e| e.to_string())?;
        match lines.next_line().await {
            Ok(Some(line)) if line.trim() == GO => Ok(()),
            _ => Err("the coordinating process has gone".into()),
        }
    }
}

/// The mixed scenario's parameters, passed to every worker.
pub struct MixedLoad<'a> {
    pub connections: usize,
    pub rates: &'a [f64],
    pub chat_share: f64,
    pub room_size: usize,
}

/// One running worker.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    json: PathBuf,
    connections: usize,
}

impl Worker {
    /// Reads the worker's output until it says it is ready.
    async fn ready(&mut self, index: usize) -> Result<(), String> {
        loop {
            match self.stdout.next_line().await {
                Ok(Some(line)) if line == READY => return Ok(()),
                Ok(Some(_)) => {}
                _ => {
                    let status = self.child.wait().await.map_err(|e| e.to_string())?;
                    return Err(format!(
                        "worker {index} ended before its steps did ({status})"
                    ));
                }
            }
        }
    }
}

/// Splits `n` connections over `processes` workers, each share a multiple of `room_size` (but
/// the last), so that no room spans two workers. Returns each worker's first user and count.
pub fn shares(n: usize, processes: usize, room_size: usize) -> Vec<(usize, usize)> {
    let room_size = room_size.max(1);
    let per = n.div_ceil(processes.max(1)).div_ceil(room_size) * room_size;
    (0..processes.max(1))
        .map(|w| {
            let first = (w * per).min(n);
            (first, per.min(n - first))
        })
        .filter(|&(_, count)| count > 0)
        .collect()
}

/// Runs `load` over `processes` workers against the nodes of `ctx`, and returns the merged steps,
/// preceded by a step with the nodes' memory once every connection is open.
pub async fn coordinate(
    ctx: &Ctx,
    processes: usize,
    load: &MixedLoad<'_>,
) -> Result<Vec<Step>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let node_rss_before: Vec<Option<u64>> = ctx.server_pids.iter().map(|&p| rss_kib(p)).collect();
    let dir = std::env::temp_dir().join(format!("herald-bench-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for (index, (first, count)) in shares(load.connections, processes, load.room_size)
        .into_iter()
        .enumerate()
    {
        let json = dir.join(format!("worker-{index}.jsonl"));
        let _ = std::fs::remove_file(&json);
        workers.push(start_worker(&exe, ctx, load, first, count, json)?);
    }
    let mut steps = Vec::new();
    let result = async {
        // The first meeting: every connection open.
        meet(&mut workers, CONNECT_LIMIT).await?;
        let connect_seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        steps.push(memory_step(
            ctx,
            load,
            &workers,
            &node_rss_before,
            connect_seconds,
        ));
        go(&mut workers).await?;
        // Before each step, and once after the last.
        for _ in 0..load.rates.len() {
            meet(&mut workers, ctx.step * 4 + Duration::from_secs(30)).await?;
            go(&mut workers).await?;
        }
        for worker in &mut workers {
            let status = worker.child.wait().await.map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("a worker failed ({status})"));
            }
        }
        let per_worker: Vec<Vec<serde_json::Value>> =
            workers.iter().map(|w| read_steps(&w.json)).collect();
        steps.extend(merge(load.connections, load.rates, &per_worker));
        Ok::<(), String>(())
    }
    .await;
    for worker in &mut workers {
        let _ = worker.child.start_kill();
    }
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| steps)
}

fn start_worker(
    exe: &std::path::Path,
    ctx: &Ctx,
    load: &MixedLoad<'_>,
    first: usize,
    count: usize,
    json: PathBuf,
) -> Result<Worker, String> {
    let join = |items: Vec<String>| items.join(",");
    let mut command = Command::new(exe);
    command
        .arg("mixed")
        .args(["--connections", &count.to_string()])
        // Each worker carries its share of the messages.
        .args([
            "--rates",
            &join(
                load.rates
                    .iter()
                    .map(|r| (r * count as f64 / load.connections as f64).to_string())
                    .collect(),
            ),
        ])
        .args(["--chat-share", &load.chat_share.to_string()])
        .args(["--room-size", &load.room_size.to_string()])
        .args(["--server", &join(ctx.target.node_bases())])
        .args(["--publish-server", &join(ctx.target.http_bases.clone())])
        .args([
            "--user-offset",
            &(ctx.target.user_offset + first).to_string(),
        ])
        .args(["--step", &humantime::format_duration(ctx.step).to_string()])
        .args(["--api-key", &ctx.target.api_key])
        .args(["--jwt-secret", &ctx.target.jwt_secret])
        .arg("--json")
        .arg(&json)
        .arg("--worker");
    if !ctx.server_pids.is_empty() {
        command.args([
            "--server-pid",
            &join(ctx.server_pids.iter().map(u32::to_string).collect()),
        ]);
    }
    if let Some(pid) = ctx.current_redis_pid() {
        command.args(["--redis-pid", &pid.to_string()]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start a worker: {e}"))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("a worker without stdin or stdout".into());
    };
    Ok(Worker {
        child,
        stdin,
        stdout: BufReader::new(stdout).lines(),
        json,
        connections: count,
    })
}

/// Waits until every worker is ready, for at most `limit`.
async fn meet(workers: &mut [Worker], limit: Duration) -> Result<(), String> {
    let all = async {
        for (index, worker) in workers.iter_mut().enumerate() {
            worker.ready(index).await?;
        }
        Ok(())
    };
    tokio::time::timeout(limit, all)
        .await
        .map_err(|_| format!("the workers were not all ready within {}s", limit.as_secs()))?
}

async fn go(workers: &mut [Worker]) -> Result<(), String> {
    let line = format!("{GO}\n");
    for worker in workers {
        worker
            .stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("a worker has gone: {e}"))?;
        worker.stdin.flush().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The nodes' memory with every connection open and no load: the growth of each node's RSS
/// since before the workers started, per connection it holds.
fn memory_step(
    ctx: &Ctx,
    load: &MixedLoad<'_>,
    workers: &[Worker],
    before: &[Option<u64>],
    connect_seconds: f64,
) -> Step {
    let nodes = ctx.server_pids.len();
    // Connection i of a worker connects to node i % nodes.
    let held = |node: usize| -> usize {
        workers
            .iter()
            .map(|w| w.connections.saturating_sub(node).div_ceil(nodes.max(1)))
            .sum()
    };
    let per_node: Vec<(usize, u64, f64)> = ctx
        .server_pids
        .iter()
        .zip(before)
        .enumerate()
        .filter_map(|(node, (&pid, before))| {
            let after = rss_kib(pid)?;
            let grown = after.saturating_sub((*before)?) as f64 * 1024.0;
            let connections = held(node);
            Some((connections, after, grown / connections.max(1) as f64))
        })
        .collect();
    let mean = (!per_node.is_empty())
        .then(|| per_node.iter().map(|n| n.2).sum::<f64>() / per_node.len() as f64);
    let described: Vec<String> = per_node
        .iter()
        .enumerate()
        .map(|(i, (connections, after, per))| {
            format!(
                "node {}: {connections} connections, {:.0} MiB, {per:.0} B/conn",
                i + 1,
                *after as f64 / 1024.0
            )
        })
        .collect();
    Step {
        scenario: "mixed",
        connections: load.connections,
        load: format!("{} processes connected", workers.len()),
        seconds: connect_seconds,
        server_rss_mib: ctx.server_rss_kib().map(|k| k as f64 / 1024.0),
        bytes_per_connection: mean,
        connects_per_s: Some(load.connections as f64 / connect_seconds),
        note: Some(format!(
            "every connection open and in its room {connect_seconds:.1}s after the workers started; {}",
            described.join("; ")
        )),
        ..Step::default()
    }
}

fn read_steps(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Merges the workers' steps of the same index: counts and rates summed, percentiles the highest
/// of the workers' (an upper bound of the whole fleet's), the server's and Redis's CPU the mean
/// of the workers' readings (each read the same processes over the same step).
fn merge(connections: usize, rates: &[f64], per_worker: &[Vec<serde_json::Value>]) -> Vec<Step> {
    let count = per_worker.iter().map(Vec::len).min().unwrap_or(0);
    (0..count)
        .map(|k| {
            let steps: Vec<&serde_json::Value> = per_worker.iter().map(|s| &s[k]).collect();
            let values = |field: &str| -> Vec<f64> {
                steps.iter().filter_map(|s| s[field].as_f64()).collect()
            };
            let sum = |field: &str| -> Option<f64> {
                let v = values(field);
                (!v.is_empty()).then(|| v.iter().sum())
            };
            let max = |field: &str| -> Option<f64> { values(field).into_iter().reduce(f64::max) };
            let mean = |field: &str| -> Option<f64> {
                let v = values(field);
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            let any = |field: &str| steps.iter().any(|s| s[field].as_bool() == Some(true));
            let p99s: Vec<String> = values("p99_ms").iter().map(|p| format!("{p:.1}")).collect();
            let first_note = steps
                .first()
                .and_then(|s| s["note"].as_str())
                .unwrap_or_default();
            Step {
                scenario: "mixed",
                connections,
                load: rates
                    .get(k)
                    .map_or_else(String::new, |r| format!("{r} msg/s")),
                seconds: max("seconds").unwrap_or(0.0),
                published: sum("published").map(|v| v as u64),
                deliveries: sum("deliveries").map(|v| v as u64),
                deliveries_per_s: sum("deliveries_per_s"),
                lost: sum("lost").map(|v| v as u64),
                duplicates: sum("duplicates").map(|v| v as u64),
                p50_ms: max("p50_ms"),
                p99_ms: max("p99_ms"),
                p999_ms: max("p999_ms"),
                max_ms: max("max_ms"),
                server_cpu_pct: mean("server_cpu_pct"),
                server_rss_mib: max("server_rss_mib"),
                redis_cpu_pct: mean("redis_cpu_pct"),
                generator_cpu_pct: sum("generator_cpu_pct").unwrap_or(0.0),
                generator_bound: any("generator_bound"),
                publisher_behind: any("publisher_behind"),
                note: Some(format!(
                    "{} processes, p99 by process {} ms; the first process's share: {first_note}",
                    steps.len(),
                    p99s.join("/")
                )),
                ..Step::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_keep_rooms_whole_and_cover_every_connection() {
        assert_eq!(shares(100, 3, 10), vec![(0, 40), (40, 40), (80, 20)]);
        assert_eq!(shares(95, 2, 10), vec![(0, 50), (50, 45)]);
        assert_eq!(shares(10, 4, 10), vec![(0, 10)]);
        let all = shares(100_000, 6, 10);
        assert_eq!(all.iter().map(|s| s.1).sum::<usize>(), 100_000);
        assert!(all.iter().all(|&(first, _)| first % 10 == 0));
    }

    #[test]
    fn merged_steps_sum_counts_and_keep_the_highest_percentiles() {
        let worker = |p99: f64, lost: u64| {
            vec![serde_json::json!({
                "load": "10000 msg/s", "seconds": 5.0, "published": 100, "deliveries": 1000,
                "deliveries_per_s": 200.0, "lost": lost, "duplicates": 0, "p50_ms": 1.0,
                "p99_ms": p99, "server_cpu_pct": 50.0, "generator_cpu_pct": 30.0,
                "generator_bound": false, "publisher_behind": p99 > 10.0, "note": "n"
            })]
        };
        let merged = merge(2_000, &[10_000.0], &[worker(4.0, 0), worker(12.0, 2)]);
        assert_eq!(merged.len(), 1);
        let step = &merged[0];
        assert_eq!(step.load, "10000 msg/s");
        assert_eq!(
            (step.published, step.deliveries, step.lost),
            (Some(200), Some(2000), Some(2))
        );
        assert_eq!(step.p99_ms, Some(12.0));
        assert_eq!(step.server_cpu_pct, Some(50.0));
        assert_eq!(step.generator_cpu_pct, 60.0);
        assert!(step.publisher_behind && !step.generator_bound);
    }
}
