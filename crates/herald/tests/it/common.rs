//! The test harness: a real Herald server on `127.0.0.1:0`, real WebSocket clients, and a real
//! HTTP client for the API, so that each test reads as the behaviour it checks.
//!
//! ```ignore
//! let server = TestServer::start(TestServer::config()).await;
//! let mut alice = server.connect("alice").await;
//! alice.subscribe("chat:1").await;
//! server.publish("chat:1", json!({"text": "hi"})).await;
//! assert_eq!(alice.next_message().await["data"]["text"], "hi");
//! ```
//!
//! Whatever should happen is waited for with [`patience`] (`HERALD_TEST_PATIENCE_MS`, 5 s by
//! default), a condition with [`eventually`]; silence is shown by listening for [`QUIET`]. The
//! servers' logs go to the test's captured output, which cargo prints for a failing test.

use std::fmt::Display;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Once, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::auth::{sign_hs256, Claims};
use herald::config::{Config, NamespaceConfig};
use herald::server::{self, App};
use herald_core::SubscribePolicy;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789-abcdefghij";
pub const API_KEY: &str = "test-api-key-0123456789";
/// How long a test listens to show that nothing arrives.
pub const QUIET: Duration = Duration::from_millis(300);
/// How often [`eventually`] asks again.
const POLL: Duration = Duration::from_millis(20);
/// The filter of the servers' logs when `HERALD_LOG` does not set one.
const DEFAULT_LOG: &str = "herald=debug,herald_core=debug";

/// How long a test waits for what should happen: a frame, a close, a condition. 5 s unless
/// `HERALD_TEST_PATIENCE_MS` says otherwise (raise it on a slow machine); read once.
pub fn patience() -> Duration {
    static PATIENCE: OnceLock<Duration> = OnceLock::new();
    *PATIENCE.get_or_init(|| match std::env::var("HERALD_TEST_PATIENCE_MS") {
        Ok(ms) => Duration::from_millis(
            ms.trim()
                .parse()
                .expect("HERALD_TEST_PATIENCE_MS is a number of milliseconds"),
        ),
        Err(_) => Duration::from_secs(5),
    })
}

/// Asks `condition` again every 20 ms until it holds and returns what it gave; panics, saying
/// `what` never became true and what was seen last, when it still does not hold after
/// [`patience`].
///
/// ```ignore
/// eventually("alice's slot is free", async || {
///     server.get("/api/users/alice").await.1["connections"] == 1
/// })
/// .await;
/// ```
pub async fn eventually<C: Condition>(what: &str, condition: impl AsyncFnMut() -> C) -> C::Value {
    eventually_within(patience(), what, condition).await
}

/// [`eventually`] for a condition that takes `base` to come true by design (an expiry, say), plus
/// the usual patience.
pub async fn eventually_within<C: Condition>(
    base: Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> C,
) -> C::Value {
    let deadline = Instant::now() + base + patience();
    loop {
        let Ok(answer) = tokio::time::timeout(patience(), condition()).await else {
            panic!("{what}: one check took longer than {:?}", patience());
        };
        let seen = match answer.check() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!(
                "{what}: never became true within {:?} (last seen: {seen})",
                base + patience()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What an [`eventually`] condition answers: `true`, `Some(value)` or `Ok(value)` when it holds;
/// otherwise `false`, `None`, or `Err` with what was seen instead.
pub trait Condition {
    type Value;
    fn check(self) -> Result<Self::Value, String>;
}

impl Condition for bool {
    type Value = ();
    fn check(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("false".into())
        }
    }
}

impl<T> Condition for Option<T> {
    type Value = T;
    fn check(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

impl<T, E: Display> Condition for Result<T, E> {
    type Value = T;
    fn check(self) -> Result<T, String> {
        self.map_err(|seen| seen.to_string())
    }
}

/// Sends the `tracing` log of in-process servers to the captured output of the test that runs
/// them, so that cargo shows a failing test's server log and nothing for the others. The filter
/// is `HERALD_LOG`'s, by default Herald's debug log.
fn log_to_test_output() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestServer {
    pub addr: SocketAddr,
    pub config: Config,
    http: reqwest::Client,
    /// The server's state; `None` for a handle to a [`ServerProcess`].
    app: Option<App>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// A test configuration: known secrets, namespaces `chat` (public, clients publish), `site`
    /// (claims), `alarms` (public), `feed` (public), `notes` (personal), `room` (public, keeps
    /// 100 publications for an hour) and `lobby` (public, clients publish, presence, join/leave,
    /// typing, keeps 100 publications).
    pub fn config() -> Config {
        let mut chat = NamespaceConfig::new("chat");
        chat.publish = true;
        let mut site = NamespaceConfig::new("site");
        site.subscribe = SubscribePolicy::Claims;
        let mut notes = NamespaceConfig::new("notes");
        notes.subscribe = SubscribePolicy::Personal;
        let mut room = NamespaceConfig::new("room");
        room.history_size = 100;
        room.history_ttl = Duration::from_secs(3600);
        let mut lobby = NamespaceConfig::new("lobby");
        lobby.publish = true;
        lobby.presence = true;
        lobby.join_leave = true;
        lobby.typing = true;
        lobby.history_size = 100;
        let mut config = Config {
            namespaces: vec![
                chat,
                site,
                notes,
                NamespaceConfig::new("alarms"),
                NamespaceConfig::new("feed"),
                room,
                lobby,
            ],
            ..Config::default()
        };
        config.auth.jwt_secret = Some(SECRET.into());
        config.api.keys = vec![API_KEY.into()];
        config.listen = "127.0.0.1:0".parse().unwrap();
        // Generous enough for a test that opens hundreds of connections at once.
        config.limits.connections_per_ip_per_second = 100_000;
        config.limits.shutdown_drain = Duration::from_millis(200);
        config
    }

    pub async fn start(config: Config) -> TestServer {
        log_to_test_output();
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = server::build(config.clone())
            .await
            .expect("test config is valid");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, app.clone(), async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            config,
            http: reqwest::Client::new(),
            app: Some(app),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts the default test server.
    pub async fn start_default() -> TestServer {
        TestServer::start(TestServer::config()).await
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server stops in time")
            .unwrap()
    }

    /// The in-process server's state, to watch what no socket shows (such as the start of a
    /// shutdown).
    pub fn app(&self) -> App {
        self.app.clone().expect("an in-process server")
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A valid one-hour token for `user`.
    pub fn token(&self, user: &str) -> String {
        self.token_with(Claims::new(
            user,
            None,
            Duration::from_secs(3600),
            &self.config.auth,
        ))
    }

    /// A token for `user` granting `channels`.
    pub fn token_for_channels(&self, user: &str, channels: &[&str]) -> String {
        let channels = channels.iter().map(|c| c.to_string()).collect();
        self.token_with(Claims::new(
            user,
            Some(channels),
            Duration::from_secs(3600),
            &self.config.auth,
        ))
    }

    pub fn token_with(&self, claims: Claims) -> String {
        sign_hs256(SECRET, &claims).unwrap()
    }

    /// Opens a WebSocket with `token` in the Authorization header, without reading anything.
    pub async fn open_with_header(&self, token: &str) -> Socket {
        self.open_with_header_at(&self.ws_url(), token).await
    }

    /// Connects as `user` (token in the header) with `query` on the URL, e.g. `since=3:abc`.
    pub async fn connect_with_query(&self, user: &str, query: &str) -> Client {
        let url = format!("{}?{query}", self.ws_url());
        let socket = self.open_with_header_at(&url, &self.token(user)).await;
        Client::established(socket).await
    }

    async fn open_with_header_at(&self, url: &str, token: &str) -> Socket {
        let authorization = format!("Bearer {token}");
        self.open_with_headers(url, &[("authorization", &authorization)])
            .await
            .unwrap()
    }

    /// Opens a WebSocket to `url` with `headers`; the HTTP status when the upgrade is refused.
    pub async fn open_with_headers(
        &self,
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Socket, u16> {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request
                .headers_mut()
                .append(*name, HeaderValue::from_str(value).unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Opens a WebSocket with no credentials at all.
    pub async fn open_bare(&self) -> Socket {
        tokio_tungstenite::connect_async(self.ws_url())
            .await
            .unwrap()
            .0
    }

    /// Connects as `user` (token in the header) and waits for `connected`.
    pub async fn connect(&self, user: &str) -> Client {
        let socket = self.open_with_header(&self.token(user)).await;
        Client::established(socket).await
    }

    /// Connects with `token` and waits for `connected`.
    pub async fn connect_with_token(&self, token: &str) -> Client {
        let socket = self.open_with_header(token).await;
        Client::established(socket).await
    }

    // === the HTTP API ===

    /// `POST path` with the API key; returns status and JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(
            reqwest::Method::POST,
            path,
            Some(API_KEY),
            Some(body.to_string()),
        )
        .await
    }

    /// `GET path` with the API key.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, Some(API_KEY), None)
            .await
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<String>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// Publishes `data` to `channel` through the API and returns the `{offset, epoch}` body.
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let (status, body) = self
            .post("/api/publish", json!({"channel": channel, "data": data}))
            .await;
        assert_eq!(status, 200, "publish to {channel} failed: {body}");
        body
    }

    /// Asserts that a Prometheus series has reached at least `min`.
    pub async fn assert_metric_at_least(&self, series: &str, min: f64) {
        let value = self.metric(series).await;
        assert!(value >= min, "{series} is {value}, expected at least {min}");
    }

    /// The value of one Prometheus series, e.g. `herald_errors_total{code="bad_request"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        self.try_metric(series)
            .await
            .unwrap_or_else(|| panic!("no series {series} in /metrics"))
    }

    /// The value of one Prometheus series; `None` while `/metrics` has no such series.
    pub async fn try_metric(&self, series: &str) -> Option<f64> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines().find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A connected WebSocket client.
pub struct Client {
    pub socket: Socket,
    pub client_id: String,
    pub user: String,
    /// The `connected` frame.
    pub hello: Value,
    /// The `subscribed` frame of the personal channel (`Null` when the user has none).
    pub personal: Value,
    next_id: u64,
}

/// How a connection ended.
#[derive(Debug)]
pub struct Closed {
    /// The `disconnect` frame, when the server sent one.
    pub disconnect: Option<Value>,
    /// The WebSocket close code, when a close frame arrived.
    pub code: Option<u16>,
}

impl Client {
    /// Waits for the `connected` frame on a freshly opened socket.
    pub async fn established(socket: Socket) -> Client {
        let mut client = Client {
            socket,
            client_id: String::new(),
            user: String::new(),
            hello: Value::Null,
            personal: Value::Null,
            next_id: 1,
        };
        let hello = client.next().await;
        assert_eq!(
            hello["type"], "connected",
            "expected connected, got {hello}"
        );
        client.client_id = hello["client"].as_str().unwrap().to_string();
        client.user = hello["user"].as_str().unwrap().to_string();
        client.hello = hello;
        // A user id that is a valid channel name has a personal channel, announced next.
        let valid = |c: char| c.is_ascii_alphanumeric() || "_:.@=-".contains(c);
        if client.user.chars().all(valid) && client.user.len() <= 250 {
            let personal = client.next().await;
            assert_eq!(
                personal["type"], "subscribed",
                "expected the personal channel, got {personal}"
            );
            assert_eq!(personal["channel"], format!("user:{}", client.user));
            client.personal = personal;
        }
        client
    }

    pub async fn send(&mut self, frame: Value) {
        send_json(&mut self.socket, frame).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next JSON frame, skipping pings and pongs. Panics after [`patience`].
    pub async fn next(&mut self) -> Value {
        self.try_next(patience())
            .await
            .expect("a frame within the patience window")
    }

    /// The next JSON frame within `wait`, or `None`.
    pub async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match frame {
                Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(other) => panic!("unexpected frame {other:?}"),
                Err(e) => panic!("socket error {e}"),
            }
        }
    }

    /// The next `message` frame, skipping anything else.
    pub async fn next_message(&mut self) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == "message" {
                return frame;
            }
        }
    }

    /// Sends `frame` with a fresh `id` and returns the frame that answers it.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.send(frame).await;
        loop {
            let reply = self.next().await;
            if reply["id"] == json!(id) {
                return reply;
            }
        }
    }

    /// The next frame of type `kind`, skipping anything else.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Subscribes and returns the reply (`subscribed` or `error`).
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.request(json!({"type": "subscribe", "channel": channel}))
            .await
    }

    /// Subscribes with extra fields (`since`, `last`) and returns the reply.
    pub async fn subscribe_with(&mut self, channel: &str, extra: Value) -> Value {
        let mut frame = json!({"type": "subscribe", "channel": channel});
        if let (Some(frame), Some(extra)) = (frame.as_object_mut(), extra.as_object()) {
            frame.extend(extra.clone());
        }
        self.request(frame).await
    }

    /// Subscribes and asserts that it worked.
    pub async fn subscribed(&mut self, channel: &str) -> Value {
        let reply = self.subscribe(channel).await;
        assert_eq!(reply["type"], "subscribed", "subscribe {channel}: {reply}");
        reply
    }

    /// Asserts that nothing but pings arrives for `wait`.
    pub async fn assert_silent(&mut self, wait: Duration) {
        if let Some(frame) = self.try_next(wait).await {
            panic!("expected silence, got {frame}");
        }
    }

    /// Reads until the server closes the connection; returns the disconnect frame and code.
    pub async fn closed(&mut self) -> Closed {
        closed(&mut self.socket).await
    }
}

/// The offsets of a history page's `publications` (an API body or a `history` result).
pub fn publication_offsets(page: &Value) -> Vec<u64> {
    page["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

/// Sends `frame` as a text frame on a socket that is not a [`Client`] yet (an `auth` frame, say).
pub async fn send_json(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// Reads `socket` until it closes; returns the last `disconnect` frame and the close code.
pub async fn closed(socket: &mut Socket) -> Closed {
    let mut result = Closed {
        disconnect: None,
        code: None,
    };
    let deadline = Instant::now() + patience();
    loop {
        let Ok(frame) = tokio::time::timeout_at(deadline, socket.next()).await else {
            panic!("connection did not close in time; so far {result:?}");
        };
        match frame {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] == "disconnect" {
                    result.disconnect = Some(value);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                result.code = frame.map(|f| u16::from(f.code));
                return result;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return result,
        }
    }
}

/// Asserts a connection ended with `code`, both in the disconnect frame and the close frame.
pub fn assert_closed_with(closed: &Closed, code: u16) {
    assert_eq!(closed.code, Some(code), "close code; got {closed:?}");
    let disconnect = closed
        .disconnect
        .as_ref()
        .expect("a disconnect frame before the close");
    assert_eq!(disconnect["code"], code, "disconnect frame {disconnect}");
}

/// The real `herald` binary, started as its own process with a config file.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub config: Config,
    dir: PathBuf,
}

impl ServerProcess {
    /// Writes `toml_extra` after the test secrets and namespaces, starts `herald serve`, and waits
    /// for its "listening" line. The server's log goes to the test's captured output, filtered by
    /// `HERALD_LOG` (which must keep Herald's info lines) like an in-process server's.
    pub fn start(toml_extra: &str) -> ServerProcess {
        ServerProcess::start_with("", toml_extra)
    }

    /// Like [`ServerProcess::start`], with `top_level` keys (such as `history_store`) before the
    /// first section.
    pub fn start_with(top_level: &str, toml_extra: &str) -> ServerProcess {
        let dir = std::env::temp_dir().join(format!(
            "herald-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "listen = \"127.0.0.1:0\"\n\
             {top_level}\n\
             [auth]\njwt_secret = \"{SECRET}\"\n\
             [api]\nkeys = [\"{API_KEY}\"]\n\
             {toml_extra}\n\
             [[namespace]]\nname = \"feed\"\n\
             [[namespace]]\nname = \"chat\"\npublish = true\n"
        );
        let path = dir.join("herald.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::from_toml(&text).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--config"])
            .arg(&path)
            .env(
                "HERALD_LOG",
                std::env::var("HERALD_LOG").unwrap_or(DEFAULT_LOG.into()),
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("server: {line}");
                if let Some(rest) = line.split("address=").nth(1) {
                    if let Some(sender) = found.take() {
                        let addr = rest
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        let _ = sender.send(addr);
                    }
                }
            }
        });
        let addr = address
            .recv_timeout(Duration::from_secs(10))
            .expect("herald prints its address")
            .parse()
            .unwrap();
        ServerProcess {
            child,
            addr,
            config,
            dir,
        }
    }

    /// A handle for the test API helpers, pointed at this process.
    pub fn handle(&self) -> TestServer {
        TestServer {
            addr: self.addr,
            config: self.config.clone(),
            http: reqwest::Client::new(),
            app: None,
            stop: None,
            task: None,
        }
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        wait_exit(&mut self.child, within)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for `child` to exit and returns its exit code; kills it and panics if it is still running
/// after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("herald did not exit within {within:?}");
        }
        std::thread::sleep(POLL);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
