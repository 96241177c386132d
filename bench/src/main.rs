//! `herald-bench`: Herald's load generator.
//!
//! It holds thousands of WebSocket connections on one thread, publishes over the HTTP API with
//! every publication stamped, and measures each delivery's latency and whether any was lost or
//! duplicated, beside the server's CPU and memory read from `/proc`. `bench/run.sh` runs every
//! scenario with the server pinned to CPU 0 and this generator to CPU 1; `docs/benchmarks.md`
//! explains the method and holds the figures.

mod fleet;
mod measure;
mod publish;
mod report;
mod scenarios;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::{Parser, Subcommand};

use report::Report;
use scenarios::Ctx;

/// Where the server is and how to talk to it.
#[derive(Clone)]
pub struct Target {
    pub http_base: String,
    pub ws_base: String,
    pub api_key: String,
    pub jwt_secret: String,
}

/// The secrets a server spawned by the generator uses (loopback only, benchmark only).
const BENCH_SECRET: &str = "herald-bench-jwt-secret-0123456789";
const BENCH_KEY: &str = "herald-bench-api-key-0123456789";

#[derive(Parser)]
#[command(name = "herald-bench", about = "Load generator for Herald")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Start this `herald` binary with a benchmark config (and stop it at the end).
    #[arg(long, global = true)]
    spawn: Option<PathBuf>,
    /// With --spawn: pin the server to this CPU (taskset).
    #[arg(long, global = true)]
    server_cpu: Option<u32>,
    /// With --spawn: publications each channel keeps (`history_size` of the `bench` and `user`
    /// namespaces; 0 keeps none).
    #[arg(long, global = true, default_value_t = 0)]
    history: usize,
    /// With --spawn: keep history on disk in this directory (`history_store = "disk"`); it is
    /// left in place afterwards, so that a restart can be timed on it.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// A server already running: its base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8000")]
    server: String,
    /// A server already running: its PID, for CPU and memory figures.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
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
    /// Every scenario with its defaults, plus personal with batches of 100.
    All,
    /// Every scenario with a few hundred connections for a few seconds (CI).
    Smoke,
}

fn main() {
    let cli = Cli::parse();
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
    let mut spawned = None;
    let (target, server_pid) = match &cli.spawn {
        Some(binary) => {
            let server =
                SpawnedServer::start(binary, cli.server_cpu, cli.history, cli.data_dir.as_ref())?;
            let target = server.target();
            let pid = server.child.id();
            spawned = Some(server);
            (target, Some(pid))
        }
        None => {
            let ws_base = cli.server.replacen("http", "ws", 1);
            let target = Target {
                http_base: cli.server.clone(),
                ws_base,
                api_key: cli.api_key.clone(),
                jwt_secret: cli.jwt_secret.clone(),
            };
            (target, cli.server_pid)
        }
    };
    let mut ctx = Ctx {
        target,
        server_pid,
        step: cli.step,
    };
    let mut report = Report::new(cli.json.clone(), cli.markdown.clone());
    let result = run_scenario(&mut ctx, &cli.scenario, &mut report).await;
    report.finish();
    drop(spawned);
    result
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

/// A `herald serve` started by the generator on a free port with a benchmark configuration.
struct SpawnedServer {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl SpawnedServer {
    fn start(
        binary: &PathBuf,
        cpu: Option<u32>,
        history: usize,
        data_dir: Option<&PathBuf>,
    ) -> Result<SpawnedServer, String> {
        let dir = std::env::temp_dir().join(format!("herald-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let config = dir.join("herald.toml");
        std::fs::write(&config, bench_config(history, data_dir)).map_err(|e| e.to_string())?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(["serve", "--config"])
            .arg(&config)
            .env("HERALD_LOG", "warn,herald=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("address=").nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(
                            rest.split_whitespace()
                                .next()
                                .unwrap_or_default()
                                .to_string(),
                        );
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| "the server did not report its address".to_string())?;
        Ok(SpawnedServer { child, addr, dir })
    }

    fn target(&self) -> Target {
        Target {
            http_base: format!("http://{}", self.addr),
            ws_base: format!("ws://{}", self.addr),
            api_key: BENCH_KEY.into(),
            jwt_secret: BENCH_SECRET.into(),
        }
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The benchmark server's configuration: the spec's defaults, except limits that would refuse the
/// generator itself (all connections come from one address, at thousands per second), with
/// `history` publications kept per channel.
fn bench_config(history: usize, data_dir: Option<&PathBuf>) -> String {
    let store = match data_dir {
        Some(dir) => format!(
            "history_store = \"disk\"\ndata_dir = {:?}\n",
            dir.display().to_string()
        ),
        None => String::new(),
    };
    format!(
        r#"listen = "127.0.0.1:0"
{store}
[auth]
jwt_secret = "{BENCH_SECRET}"
[api]
keys = ["{BENCH_KEY}"]
[limits]
connections_per_ip_per_second = 1000000
# The generator sizes its load to the file-descriptor limit itself (19,900 connections under a
# limit of 20,000); the default would keep a twentieth of the descriptors in reserve.
max_connections = 1000000
shutdown_drain = "1s"
max_api_body_bytes = 16777216
[[namespace]]
name = "bench"
subscribe = "public"
history_size = {history}
history_ttl = "5m"
[[namespace]]
name = "user"
subscribe = "personal"
history_size = {history}
history_ttl = "5m"
[[namespace]]
name = "chat"
subscribe = "public"
publish = true
presence = true
join_leave = true
typing = true
history_size = {history}
history_ttl = "5m"
"#
    )
}
