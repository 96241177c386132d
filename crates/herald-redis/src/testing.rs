//! Real Redis servers for tests: the one `REDIS_URL` names, or private `redis-server` processes
//! on free loopback ports that this process starts, stops, freezes and restarts (and that end
//! with it), and a three-master Redis Cluster made of them.
//!
//! A private server runs under a small shell that holds its pid and kills it when this process's
//! end of a pipe closes, so a test that panics (or a test binary that is killed) leaves no server
//! behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A Redis server for tests.
pub struct RedisServer {
    /// Its URL.
    pub url: String,
    /// Its port.
    pub port: u16,
    args: Vec<String>,
    running: Option<Running>,
    dir: Option<PathBuf>,
}

struct Running {
    shell: Child,
    /// Closing it ends the server.
    _keep: ChildStdin,
    pid: u32,
}

/// The Redis shared by the tests of this process: `REDIS_URL` when set, else a private server
/// started on first use. Tests on it keep apart by using a prefix of their own.
pub fn shared() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(|| match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => RedisServer {
            port: url
                .rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse().ok())
                .unwrap_or(6379),
            url,
            args: Vec::new(),
            running: None,
            dir: None,
        },
        _ => RedisServer::start(),
    })
}

/// A prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    let n: u32 = rand::random();
    format!("t{n:08x}.{name}")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether a Redis answers PING on `port`.
fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

impl RedisServer {
    /// Starts a private server with an append-only file (fsync every write), so that a restart
    /// keeps everything it acknowledged.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a private server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("herald-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for redis");
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.to_string_lossy(),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = RedisServer {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            args,
            running: None,
            dir: Some(dir),
        };
        server.resume_process();
        server
    }

    /// Like [`RedisServer::restart`], but returns as soon as the process runs, while it may
    /// still be loading its data (answering `LOADING`).
    pub fn restart_without_waiting(&mut self) {
        assert!(self.running.is_none(), "stop it first");
        self.spawn_process();
        std::thread::sleep(Duration::from_millis(100));
    }

    fn resume_process(&mut self) {
        self.spawn_process();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(self.port) {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn_process(&mut self) {
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(
                "redis-server \"$@\" >/dev/null 2>&1 & pid=$!; echo $pid; read _; \
                 kill -CONT $pid 2>/dev/null; kill $pid 2>/dev/null",
            )
            .arg("sh")
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-server (install it, or set REDIS_URL)");
        let keep = shell.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(shell.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the pid");
        let pid = line.trim().parse().expect("a pid");
        self.running = Some(Running {
            shell,
            _keep: keep,
            pid,
        });
    }

    fn signal(&self, signal: &str) {
        let running = self.running.as_ref().expect("a private server");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(running.pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// Stops the server (SIGTERM: it writes its append-only file and exits) and waits until it
    /// is gone.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let mut running = self.running.take().expect("running");
        let pid = running.pid;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !is_zombie(pid)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(running._keep);
        let _ = running.shell.wait();
    }

    /// Starts the stopped server again, on the same port and with the same files.
    pub fn restart(&mut self) {
        assert!(self.running.is_none(), "stop it first");
        self.resume_process();
    }

    /// Kills the server (SIGKILL): no goodbye, as when its machine dies.
    pub fn kill(&mut self) {
        self.signal("KILL");
        let mut running = self.running.take().expect("running");
        drop(running._keep);
        let _ = running.shell.wait();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(running.pid.to_string())
                .status();
            let _ = Command::new("kill").arg(running.pid.to_string()).status();
            drop(running._keep);
            let _ = running.shell.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A Redis Cluster of three masters on loopback, each a private server, with or without a
/// replica each.
pub struct RedisCluster {
    /// The servers: the three masters first, then their replicas.
    pub masters: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them with `redis-cli --cluster create`
    /// (the slots split evenly, no replicas); returns once the cluster reports `ok`.
    pub fn start() -> RedisCluster {
        Self::start_with_replicas(0)
    }

    /// Like [`RedisCluster::start`], with `replicas` replicas per master (which take over when
    /// their master fails, after the two-second node time-out).
    pub fn start_with_replicas(replicas: usize) -> RedisCluster {
        let masters: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--appendfsync",
                    "everysec",
                ])
            })
            .collect();
        let addresses: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(status.success(), "redis-cli --cluster create");
        let deadline = Instant::now() + Duration::from_secs(20);
        for master in &masters {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &master.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster never became ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // A replica can take over only once it has its master's data.
        for server in &masters {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &server.port.to_string(), "info", "replication"])
                    .output()
                    .expect("redis-cli");
                let text = String::from_utf8_lossy(&info.stdout).into_owned();
                if text.contains("role:master") || text.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "a replica never synced");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { masters }
    }

    /// The server that is master of `slot` now, per `CLUSTER SLOTS` of a live one.
    pub fn master_of(&self, slot: u16) -> Option<usize> {
        for server in self.masters.iter().filter(|s| s.running.is_some()) {
            let out = Command::new("redis-cli")
                .args(["-p", &server.port.to_string(), "cluster", "slots"])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            // Flat output: first, last, then the master's host, port, id, then replicas.
            let mut i = 0;
            while i + 4 < lines.len() {
                if let (Ok(first), Ok(last)) =
                    (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
                {
                    if (first..=last).contains(&slot) {
                        let port: u16 = lines[i + 3].parse().ok()?;
                        return self.masters.iter().position(|s| s.port == port);
                    }
                }
                i += 1;
            }
        }
        None
    }

    /// The seed URLs (`redis_cluster_nodes`).
    pub fn urls(&self) -> Vec<String> {
        self.masters.iter().map(|m| m.url.clone()).collect()
    }
}
