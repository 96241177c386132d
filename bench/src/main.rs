//! `herald-bench`: Herald's load generator.
//!
//! It holds thousands of WebSocket connections on one thread, publishes over the HTTP API with
//! every publication stamped, and measures each delivery's latency and whether any was lost or
//! duplicated, beside the server's CPU and memory read from `/proc`. `bench/run.sh` runs every
//! scenario with the server pinned to CPU 0 and this generator to CPU 1; `docs/benchmarks.md`
//! explains the method and holds the figures.
//!
//! The server may be several nodes (the Redis engine): connections and publications are spread
//! over them, and the servers' figures are the sums over every node's process. Several generator
//! processes can share the load, each playing users of its own (`--user-offset`), when one
//! process's file-descriptor limit is too small for the connections wanted.

mod fleet;
mod measure;
mod publish;
mod report;
mod scenarios;
mod spawn;
mod workers;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use report::Report;
use scenarios::Ctx;
use spawn::{SpawnedRedis, SpawnedServer, BENCH_KEY, BENCH_SECRET};

/// Where the server is, how to talk to it, and which users the generator plays.
#[derive(Clone)]
pub struct Target {
    /// The nodes the clients connect to: connection `i` connects to `ws_bases[i % len]`.
    pub ws_bases: Vec<String>,
    /// The nodes publications go through: the publisher's connection `j` uses
    /// `http_bases[j % len]`, so that publications enter through every one.
    pub http_bases: Vec<String>,
    pub api_key: String,
    pub jwt_secret: String,
    /// Connection `i` is user `u{user_offset + i}`.
    pub user_offset: usize,
    /// Clients offer permessage-deflate (and inflate what comes compressed).
    pub compress: bool,
    /// Publications to the shared channel carry a plant site's dashboard update (about 1 KB of
    /// JSON, as seed 002 sends) beside their number and stamp.
    pub site_payload: bool,
    /// Clients speak Socket.IO (Engine.IO v4 over WebSocket at `/socket.io/`) instead of
    /// Herald's native protocol.
    pub socketio: bool,
}

impl Target {
    /// The WebSocket base URL connection `index` connects to.
    pub fn ws_base(&self, index: usize) -> Option<&str> {
        let node = index.checked_rem(self.ws_bases.len())?;
        self.ws_bases.get(node).map(String::as_str)
    }

    /// The user id of connection `index`.
    pub fn user(&self, index: usize) -> String {
        format!("u{}", self.user_offset + index)
    }

    /// The HTTP base URL of every node the clients connect to: where their figures (stats,
    /// readiness) are read.
    pub fn node_bases(&self) -> Vec<String> {
        self.ws_bases
            .iter()
            .map(|ws| ws.replacen("ws", "http", 1))
            .collect()
    }
}

/// The engine of the nodes `--spawn` starts.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    /// Each node on its own, in memory (one node only).
    Memory,
    /// Nodes sharing one Redis: a private one the generator starts, or `--redis-url`.
    Redis,
}

#[derive(Parser)]
#[command(name = "herald-bench", about = "Load generator for Herald")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Start this `herald` binary with a benchmark config (and stop it at the end).
    #[arg(long, global = true)]
    spawn: Option<PathBuf>,
    /// With --spawn: the engine of the nodes. `redis` starts a private `redis-server` (unless
    /// --redis-url is given) and stops it at the end.
    #[arg(long, global = true, value_enum, default_value_t = Engine::Memory)]
    engine: Engine,
    /// With --spawn: how many `herald serve` nodes to start (more than 1 needs --engine redis).
    /// Connections and publications are spread over them.
    #[arg(long, global = true, default_value_t = 1)]
    nodes: usize,
    /// With --spawn: pin every node to this CPU (taskset).
    #[arg(long, global = true)]
    server_cpu: Option<u32>,
    /// With --spawn --engine redis: use this Redis instead of starting one (its keys are kept
    /// apart by a prefix of this run's own).
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// With --spawn --engine redis: pin the Redis the generator starts to this CPU (taskset).
    #[arg(long, global = true)]
    redis_cpu: Option<u32>,
    /// A Redis the generator did not start: its PID, for its CPU figure.
    #[arg(long, global = true)]
    redis_pid: Option<u32>,
    /// With --spawn: publications each channel keeps (`history_size` of the `bench` and `user`
    /// namespaces; 0 keeps none).
    #[arg(long, global = true, default_value_t = 0)]
    history: usize,
    /// With --spawn (memory engine): keep history on disk in this directory
    /// (`history_store = "disk"`); it is left in place afterwards, so that a restart can be timed
    /// on it.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Servers already running: their base URLs, comma-separated (the nodes of one cluster).
    /// Connection i connects to the (i mod count)th.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8000"
    )]
    server: Vec<String>,
    /// Servers already running: send publications through these nodes (comma-separated) instead
    /// of those in --server, e.g. to make every delivery cross from one node to another.
    #[arg(long, global = true, value_delimiter = ',')]
    publish_server: Vec<String>,
    /// Servers already running: their PIDs, comma-separated, for CPU and memory figures (summed
    /// over all of them).
    #[arg(long, global = true, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Connection i is user u<K+i>: several generator processes, each with its own range of
    /// users, can load one server beyond one process's file-descriptor limit (for the scenarios
    /// on personal channels: idle, personal, resubscribe).
    #[arg(long, global = true, default_value_t = 0, value_name = "K")]
    user_offset: usize,
    /// Clients offer permessage-deflate, as browsers do (and inflate what comes compressed).
    #[arg(long, global = true)]
    compress: bool,
    /// Publications to the shared channel (broadcast, churn, slow) carry a plant site's dashboard
    /// update, about 1 KB of JSON, beside their number and stamp.
    #[arg(long, global = true)]
    site_payload: bool,
    /// Clients speak Socket.IO: Engine.IO v4 over WebSocket at /socket.io/, as socket.io-client
    /// does after its upgrade (Herald's adapter, or `bench/socketio/server.mjs`, Socket.IO's own
    /// server with the same HTTP publish route).
    #[arg(long, global = true)]
    socketio: bool,
    /// Run as one of several generator processes started by `mixed --processes` (meeting the
    /// others over stdin and stdout between steps).
    #[arg(long, global = true, hide = true)]
    worker: bool,
    #[arg(long, global = true, env = "HERALD_BENCH_API_KEY", default_value = BENCH_KEY)]
    api_key: String,
    #[arg(long, global = true, env = "HERALD_BENCH_JWT_SECRET", default_value = BENCH_SECRET)]
    jwt_secret: String,
    /// Length of each load step.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    step: Duration,
    /// Append one JSON line per step here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Write the Markdown table here.
    #[arg(long, global = true)]
    markdown: Option<PathBuf>,
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// N idle connections: memory per connection, connect rate, idle CPU.
    Idle {
        #[arg(long, default_value_t = 19_900)]
        connections: usize,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        idle: Duration,
    },
    /// N subscribers of one channel, publications at rising rates, then the ceiling.
    Broadcast {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,5,15,30,60")]
        rates: Vec<f64>,
    },
    /// N users, one publication per user channel, at rising rates.
    Personal {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, value_delimiter = ',', default_value = "10000,25000,50000,75000")]
        rates: Vec<f64>,
        /// Publications per HTTP request (more than 1 uses /api/batch).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Requests each of the publisher's connections may pipeline when requests wait
        /// (HTTP/1.1 pipelining; 1 = one request in flight per connection).
        #[arg(long, default_value_t = 1)]
        pipeline: usize,
    },
    /// Connects and disconnects per second under a live broadcast.
    Churn {
        #[arg(long, default_value_t = 5_000)]
        connections: usize,
        #[arg(long, value_delimiter = ',', default_value = "100,250,500")]
        rates: Vec<f64>,
        #[arg(long, default_value_t = 5.0)]
        broadcast_rate: f64,
    },
    /// A broadcast where a share of the subscribers stops reading.
    Slow {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 15.0)]
        rate: f64,
        #[arg(long, default_value_t = 1.0)]
        percent: f64,
    },
    /// Clients in rooms of 10-50 publishing over their sockets, with presence, join/leave and
    /// typing on.
    Chat {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, value_delimiter = ',', default_value = "1000,2000,4000,8000")]
        rates: Vec<f64>,
    },
    /// N subscribers of one presence channel; presence counts and list read over the API.
    Presence {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 2_000)]
        requests: usize,
    },
    /// N users on their personal channels only (so the nodes hold N subscriptions in Redis);
    /// Redis is restarted, and the time until every node is ready again and then until a
    /// publication to every user has reached every connection is measured. Needs the Redis
    /// that --spawn --engine redis starts.
    Resubscribe {
        #[arg(long, default_value_t = 19_900)]
        connections: usize,
    },
    /// Seed 003's clustered load: N users, each on their personal channel and in a chat room
    /// (namespace `chat`, presence and typing on); at each rate, that many messages per second,
    /// a share of them chat messages sent by members over their sockets and the rest personal
    /// notifications over the HTTP API. Beyond one process's descriptor limit the connections
    /// are split over several generator processes started by this one.
    Mixed {
        #[arg(long, default_value_t = 100_000)]
        connections: usize,
        #[arg(long, value_delimiter = ',', default_value = "2500,5000,10000")]
        rates: Vec<f64>,
        /// The share of the messages that are chat messages (0 to 1).
        #[arg(long, default_value_t = 0.2)]
        chat_share: f64,
        /// Members per chat room.
        #[arg(long, default_value_t = 10)]
        room_size: usize,
        /// Generator processes to split the connections over (default: one per 17,000).
        #[arg(long)]
        processes: Option<usize>,
    },
    /// Every scenario with its defaults, plus personal with batches of 100.
    All,
    /// Every scenario with a few hundred connections for a few seconds (CI).
    Smoke,
}

fn main() {
    let cli = Cli::parse();
    let native_only = matches!(
        cli.scenario,
        Scenario::Chat { .. }
            | Scenario::Presence { .. }
            | Scenario::Mixed { .. }
            | Scenario::Resubscribe { .. }
            | Scenario::All
            | Scenario::Smoke
    );
    if cli.socketio && native_only {
        eprintln!(
            "herald-bench: --socketio measures idle, broadcast, personal, churn and slow \
             (the others send the native protocol's commands)"
        );
        std::process::exit(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herald-bench: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, run(cli));
    if let Err(e) = result {
        eprintln!("herald-bench: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let spawned = match &cli.spawn {
        Some(binary) => Some(spawn_servers(&cli, binary).await?),
        None => None,
    };
    let (target, server_pids, redis, nodes) = match spawned {
        Some((nodes, redis)) => {
            let mut target = spawn::target_of(&nodes, cli.user_offset);
            target.compress = cli.compress;
            target.site_payload = cli.site_payload;
            target.socketio = cli.socketio;
            let pids = nodes.iter().map(SpawnedServer::pid).collect();
            (target, pids, redis, nodes)
        }
        None => (
            running_target(&cli)?,
            cli.server_pid.clone(),
            None,
            Vec::new(),
        ),
    };
    let mut ctx = Ctx {
        target,
        server_pids,
        redis,
        redis_pid: cli.redis_pid,
        step: cli.step,
        worker: cli.worker,
    };
    let mut report = Report::new(cli.json.clone(), cli.markdown.clone());
    // A run stopped by hand still stops what it started (nodes, Redis, worker processes): they
    // are dropped below either way.
    let result = tokio::select! {
        result = run_scenario(&mut ctx, &cli.scenario, &mut report) => result,
        signal = interrupted() => Err(format!("stopped by {signal}")),
    };
    report.finish();
    // The nodes stop first, while the Redis they use still answers.
    drop(nodes);
    drop(ctx);
    result
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

/// The target of servers already running (`--server`, `--publish-server`).
fn running_target(cli: &Cli) -> Result<Target, String> {
    if cli.engine != Engine::Memory || cli.nodes != 1 {
        return Err(
            "--engine and --nodes apply to --spawn; name running nodes with --server".into(),
        );
    }
    let plain = |urls: &[String]| -> Result<Vec<String>, String> {
        urls.iter()
            .map(|url| {
                let url = url.trim().trim_end_matches('/');
                match url.strip_prefix("http://") {
                    Some(rest) if !rest.is_empty() => Ok(url.to_string()),
                    // The generator's clients speak plain HTTP and WebSocket only.
                    _ => Err(format!("{url:?} is not an http:// base URL")),
                }
            })
            .collect()
    };
    let servers = plain(&cli.server)?;
    if servers.is_empty() {
        return Err("--server names no server".into());
    }
    let publish = plain(&cli.publish_server)?;
    Ok(Target {
        ws_bases: servers
            .iter()
            .map(|s| s.replacen("http", "ws", 1))
            .collect(),
        http_bases: if publish.is_empty() { servers } else { publish },
        api_key: cli.api_key.clone(),
        jwt_secret: cli.jwt_secret.clone(),
        user_offset: cli.user_offset,
        compress: cli.compress,
        site_payload: cli.site_payload,
        socketio: cli.socketio,
    })
}

/// The name of spawned node `i` (from 1).
fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// Starts what `--spawn` asks for: with the Redis engine, a private Redis unless `--redis-url`
/// names one, then `--nodes` nodes of `binary`.
async fn spawn_servers(
    cli: &Cli,
    binary: &std::path::Path,
) -> Result<(Vec<SpawnedServer>, Option<SpawnedRedis>), String> {
    if cli.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if !cli.publish_server.is_empty() {
        return Err("--publish-server names running servers; spawned nodes take both connections and publications".into());
    }
    let mut redis = None;
    // Each node's top-level engine keys.
    let engine_keys: Vec<String> = match cli.engine {
        Engine::Memory => {
            if cli.nodes > 1 {
                return Err(
                    "--nodes above 1 needs --engine redis: memory-engine nodes share nothing"
                        .into(),
                );
            }
            vec![spawn::memory_keys(cli.data_dir.as_ref())]
        }
        Engine::Redis => {
            if cli.data_dir.is_some() {
                return Err("--data-dir is the memory engine's history store; the Redis engine keeps history in Redis".into());
            }
            let url = match &cli.redis_url {
                Some(url) => url.clone(),
                None => {
                    let started = SpawnedRedis::start(cli.redis_cpu).await?;
                    let url = started.url();
                    redis = Some(started);
                    url
                }
            };
            (1..=cli.nodes)
                .map(|i| spawn::redis_keys(&url, &node_name(i)))
                .collect()
        }
    };
    let nodes = engine_keys
        .iter()
        .enumerate()
        .map(|(i, keys)| {
            let config = spawn::bench_config(cli.history, keys);
            SpawnedServer::start(binary, cli.server_cpu, &config, &node_name(i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((nodes, redis))
}

async fn run_scenario(
    ctx: &mut Ctx,
    scenario: &Scenario,
    report: &mut Report,
) -> Result<(), String> {
    let mut steps = Vec::new();
    match scenario {
        Scenario::Idle { connections, idle } => {
            steps.extend(scenarios::idle(ctx, *connections, *idle).await?)
        }
        Scenario::Broadcast { connections, rates } => {
            steps.extend(scenarios::broadcast(ctx, *connections, rates).await?)
        }
        Scenario::Personal {
            connections,
            rates,
            batch,
            pipeline,
        } => steps.extend(scenarios::personal(ctx, *connections, rates, *batch, *pipeline).await?),
        Scenario::Churn {
            connections,
            rates,
            broadcast_rate,
        } => steps.extend(scenarios::churn(ctx, *connections, rates, *broadcast_rate).await?),
        Scenario::Slow {
            connections,
            rate,
            percent,
        } => steps.extend(scenarios::slow(ctx, *connections, *rate, *percent).await?),
        Scenario::Chat { connections, rates } => {
            steps.extend(scenarios::chat(ctx, *connections, rates).await?)
        }
        Scenario::Presence {
            connections,
            requests,
        } => steps.extend(scenarios::presence(ctx, *connections, *requests).await?),
        Scenario::Mixed {
            connections,
            rates,
            chat_share,
            room_size,
            processes,
        } => {
            let processes =
                processes.unwrap_or_else(|| connections.div_ceil(workers::CONNECTIONS_PER_PROCESS));
            if ctx.worker || processes <= 1 {
                steps.extend(
                    scenarios::mixed(ctx, *connections, rates, *chat_share, *room_size).await?,
                )
            } else {
                let load = workers::MixedLoad {
                    connections: *connections,
                    rates,
                    chat_share: *chat_share,
                    room_size: *room_size,
                };
                steps.extend(workers::coordinate(ctx, processes, &load).await?)
            }
        }
        Scenario::Resubscribe { connections } => {
            steps.extend(scenarios::resubscribe(ctx, *connections).await?)
        }
        Scenario::All => {
            for step in scenarios::idle(ctx, 19_900, Duration::from_secs(30)).await? {
                report.add(&step);
            }
            for step in scenarios::broadcast(ctx, 10_000, &[1.0, 5.0, 15.0, 30.0, 60.0]).await? {
                report.add(&step);
            }
            for step in
                scenarios::personal(ctx, 10_000, &[10_000.0, 25_000.0, 50_000.0, 75_000.0], 1, 1)
                    .await?
            {
                report.add(&step);
            }
            for step in
                scenarios::personal(ctx, 10_000, &[50_000.0, 100_000.0, 200_000.0], 100, 1).await?
            {
                report.add(&step);
            }
            for step in scenarios::churn(ctx, 5_000, &[100.0, 250.0, 500.0], 5.0).await? {
                report.add(&step);
            }
            for step in scenarios::slow(ctx, 10_000, 15.0, 1.0).await? {
                report.add(&step);
            }
            for step in scenarios::chat(ctx, 10_000, &[1000.0, 2000.0, 4000.0, 8000.0]).await? {
                report.add(&step);
            }
            for step in scenarios::presence(ctx, 10_000, 2_000).await? {
                report.add(&step);
            }
        }
        Scenario::Smoke => {
            ctx.step = ctx.step.min(Duration::from_secs(2));
            steps.extend(scenarios::idle(ctx, 300, Duration::from_secs(1)).await?);
            steps.extend(scenarios::broadcast(ctx, 300, &[10.0, 50.0]).await?);
            steps.extend(scenarios::personal(ctx, 300, &[500.0], 1, 1).await?);
            steps.extend(scenarios::personal(ctx, 300, &[1000.0], 50, 1).await?);
            steps.extend(scenarios::personal(ctx, 300, &[1000.0], 1, 4).await?);
            steps.extend(scenarios::churn(ctx, 200, &[20.0], 5.0).await?);
            steps.extend(scenarios::slow(ctx, 300, 10.0, 1.0).await?);
            steps.extend(scenarios::chat(ctx, 300, &[100.0]).await?);
            steps.extend(scenarios::presence(ctx, 300, 50).await?);
            steps.extend(scenarios::mixed(ctx, 300, &[200.0], 0.2, 10).await?);
            let load = workers::MixedLoad {
                connections: 300,
                rates: &[200.0],
                chat_share: 0.2,
                room_size: 10,
            };
            steps.extend(workers::coordinate(ctx, 2, &load).await?);
            let lost: u64 = steps.iter().filter_map(|s| s.lost).sum();
            let duplicates: u64 = steps.iter().filter_map(|s| s.duplicates).sum();
            for step in &steps {
                report.add(step);
            }
            if lost > 0 || duplicates > 0 {
                return Err(format!(
                    "smoke: {lost} lost, {duplicates} duplicated deliveries"
                ));
            }
            println!("smoke: {} steps, 0 lost, 0 duplicated", steps.len());
            return Ok(());
        }
    }
    for step in &steps {
        report.add(step);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_of(args: &[&str]) -> Result<Target, String> {
        let cli = Cli::try_parse_from(["herald-bench", "personal"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        running_target(&cli)
    }

    #[test]
    fn spreads_connections_and_publications_over_the_nodes() {
        let target = target_of(&[
            "--server",
            "http://127.0.0.1:1,http://127.0.0.1:2/",
            "--user-offset",
            "19900",
        ])
        .expect("valid");
        assert_eq!(target.ws_base(0), Some("ws://127.0.0.1:1"));
        assert_eq!(target.ws_base(3), Some("ws://127.0.0.1:2"));
        assert_eq!(
            target.http_bases,
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        assert_eq!(target.node_bases(), target.http_bases);
        assert_eq!(target.user(5), "u19905");

        let target = target_of(&[
            "--server",
            "http://127.0.0.1:1",
            "--publish-server",
            "http://127.0.0.1:2,http://127.0.0.1:3",
        ])
        .expect("valid");
        assert_eq!(target.ws_bases, ["ws://127.0.0.1:1"]);
        assert_eq!(
            target.http_bases,
            ["http://127.0.0.1:2", "http://127.0.0.1:3"]
        );
        assert_eq!(target.node_bases(), ["http://127.0.0.1:1"]);
    }

    #[test]
    fn refuses_what_the_clients_cannot_speak_or_spawn_options_without_spawn() {
        assert!(target_of(&["--server", "https://example.com"]).is_err());
        assert!(target_of(&["--server", "http://127.0.0.1:1,"]).is_err());
        assert!(target_of(&["--nodes", "2"]).is_err());
        assert!(target_of(&["--engine", "redis"]).is_err());
        assert!(Target {
            ws_bases: Vec::new(),
            http_bases: Vec::new(),
            api_key: String::new(),
            jwt_secret: String::new(),
            user_offset: 0,
            compress: false,
            site_payload: false,
            socketio: false,
        }
        .ws_base(0)
        .is_none());
    }
}
