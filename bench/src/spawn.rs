//! The processes `--spawn` starts: `herald serve` nodes with a benchmark configuration and, for
//! the Redis engine, a private `redis-server` they share. Each is stopped when dropped.
//!
//! The Redis is private so that a benchmark neither reads nor disturbs another Redis, and so that
//! the resubscribe scenario may stop and restart it. It keeps an append-only file (fsync every
//! second, as a production Redis would), so a restart keeps the channels' offsets.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Target;

/// The secrets a server spawned by the generator uses (loopback only, benchmark only).
pub const BENCH_SECRET: &str = "herald-bench-jwt-secret-0123456789";
pub const BENCH_KEY: &str = "herald-bench-api-key-0123456789";

/// How long a spawned process may take to come up.
const START_LIMIT: Duration = Duration::from_secs(20);

/// `command`, pinned to `cpu` with `taskset` when given. `taskset` execs the command, so the
/// child's pid is the command's own (its CPU and memory are read from `/proc`).
fn pinned(program: &Path, cpu: Option<u32>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Sends SIGTERM to `child` and waits up to `limit` for it to exit; kills it if it has not.
fn terminate(child: &mut Child, limit: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A `herald serve` started by the generator on a free port with a benchmark configuration.
pub struct SpawnedServer {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl SpawnedServer {
    /// Starts `binary` with `config`, in a directory of its own named after `name`, and waits
    /// for it to report its address.
    pub fn start(
        binary: &Path,
        cpu: Option<u32>,
        config: &str,
        name: &str,
    ) -> Result<SpawnedServer, String> {
        let dir = std::env::temp_dir().join(format!("herald-bench-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let config_path = dir.join("herald.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let mut child = pinned(binary, cpu)
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("HERALD_LOG", "warn,herald=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let Some(stdout) = child.stdout.take() else {
            terminate(&mut child, Duration::from_secs(5));
            return Err("no stdout".into());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let node = name.to_string();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Warnings explain a step's figures (a Redis link lost, a gap not in history).
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    eprintln!("herald {node}: {line}");
                }
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
        let server = |addr| SpawnedServer { child, addr, dir };
        match rx.recv_timeout(START_LIMIT) {
            Ok(addr) => Ok(server(addr)),
            // Dropping it stops the process and removes its directory.
            Err(_) => {
                drop(server(String::new()));
                Err(format!("server {name} did not report its address"))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn http_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_base(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(15));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The target of spawned `nodes`: connections and publications spread over all of them.
pub fn target_of(nodes: &[SpawnedServer], user_offset: usize) -> Target {
    Target {
        ws_bases: nodes.iter().map(SpawnedServer::ws_base).collect(),
        http_bases: nodes.iter().map(SpawnedServer::http_base).collect(),
        api_key: BENCH_KEY.into(),
        jwt_secret: BENCH_SECRET.into(),
        user_offset,
        compress: false,
        socketio: false,
        site_payload: false,
    }
}

/// A private `redis-server` on a free loopback port, which can be stopped and started again with
/// the same arguments, port and files.
pub struct SpawnedRedis {
    /// `None` while stopped.
    child: Option<Child>,
    cpu: Option<u32>,
    args: Vec<String>,
    port: u16,
    dir: PathBuf,
}

impl SpawnedRedis {
    /// Starts a Redis (pinned to `cpu` when given) and waits until it answers.
    pub async fn start(cpu: Option<u32>) -> Result<SpawnedRedis, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port for redis-server: {e}"))?;
        let dir = std::env::temp_dir().join(format!("herald-bench-redis-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let dir_text = dir.to_string_lossy().into_owned();
        let log = dir.join("redis.log").to_string_lossy().into_owned();
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            &dir_text,
            "--logfile",
            &log,
            "--daemonize",
            "no",
        ]
        .map(String::from)
        .to_vec();
        let mut redis = SpawnedRedis {
            child: None,
            cpu,
            args,
            port,
            dir,
        };
        redis.launch()?;
        redis.wait_answering(START_LIMIT).await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The running process's pid (it changes with a restart).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process, without waiting for it to answer.
    pub fn launch(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err("redis-server is already running".into());
        }
        let child = pinned(Path::new("redis-server"), self.cpu)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until Redis answers PING; returns when it first did. Fails if the process ends or
    /// `limit` passes first.
    pub async fn wait_answering(&mut self, limit: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + limit;
        loop {
            if answers(self.port).await {
                return Ok(Instant::now());
            }
            let exited = match self.child.as_mut() {
                Some(child) => matches!(child.try_wait(), Ok(Some(_))),
                None => true,
            };
            if exited || Instant::now() > deadline {
                let why = if exited { "exited" } else { "did not answer" };
                return Err(format!(
                    "redis-server {why}; the end of its log:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops Redis with SIGTERM (it writes its append-only file and exits) and waits until the
    /// process is gone.
    pub async fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("redis-server did not exit within 30 s of SIGTERM".into());
                }
            }
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for SpawnedRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(15));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a Redis answers PING on `port` within half a second.
async fn answers(port: u16) -> bool {
    let ping = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        Ok::<bool, std::io::Error>(&reply == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), ping).await,
        Ok(Ok(true))
    )
}

/// The top-level keys of a node of the Redis engine: on the Redis at `url`, under a prefix of
/// this generator's own (so that runs sharing a Redis keep apart), named `node`.
pub fn redis_keys(url: &str, node: &str) -> String {
    format!(
        "engine = \"redis\"\nredis_url = {url:?}\nredis_prefix = \"bench{}\"\nnode_name = \"{node}\"\n",
        std::process::id()
    )
}

/// The top-level keys of the memory engine: history on disk in `data_dir` when given.
pub fn memory_keys(data_dir: Option<&PathBuf>) -> String {
    match data_dir {
        Some(dir) => format!(
            "history_store = \"disk\"\ndata_dir = {:?}\n",
            dir.display().to_string()
        ),
        None => String::new(),
    }
}

/// The benchmark server's configuration: the spec's defaults, except limits that would refuse the
/// generator itself (all connections come from one address, at thousands per second), with
/// `history` publications kept per channel and the engine's top-level keys `engine_keys`.
pub fn bench_config(history: usize, engine_keys: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
{engine_keys}
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
