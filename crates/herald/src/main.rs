//! The `herald` command: `serve`, `token`, `init`, `check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald::auth::{sign_hs256, Claims};
use herald::config::{init_template, Config, ConfigError, JwtAlgorithm};
use herald::server;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: a real-time gateway (WebSocket + HTTP publish API)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. Without --config: a development server on 127.0.0.1:8000 with fresh
    /// secrets, printing a test token.
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `listen` from the config.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Print a signed client token (HS256, with the config's secret).
    Token {
        #[arg(long, short)]
        config: PathBuf,
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// Channels the token grants, comma-separated; globs allowed ('site:*,machine:*').
        #[arg(long)]
        channels: Option<String>,
        /// How long the token is valid ('1h', '30m', '7d').
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Write a commented configuration with fresh secrets.
    Init {
        /// Where to write it; '-' for standard output.
        #[arg(default_value = "herald.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate a configuration file (and HERALD_* overrides) and exit.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen } => serve(config, listen),
        Command::Token {
            config,
            user,
            channels,
            ttl,
        } => token(config, &user, channels, ttl),
        Command::Init { path, force } => init(path, force),
        Command::CheckConfig { config } => check_config(config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("herald: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Loads and validates everything `serve` would, including the JWT key file, without serving.
fn check_config(path: PathBuf) -> Result<(), String> {
    let config = load(Some(path.clone()))?;
    herald::auth::Authenticator::from_config(&config.auth)
        .map_err(|e| format!("configuration error: {e}"))?;
    println!(
        "{}: ok ({} namespaces, listen {})",
        path.display(),
        config.namespaces.len(),
        config.listen
    );
    Ok(())
}

fn load(path: Option<PathBuf>) -> Result<Config, String> {
    let env = std::env::vars();
    match path {
        Some(path) => Config::load(Some(&path), env),
        None => Config::load_development(env),
    }
    .map_err(|e: ConfigError| format!("configuration error: {e}"))
}

fn serve(config_path: Option<PathBuf>, listen: Option<SocketAddr>) -> Result<(), String> {
    init_logging();
    let development = config_path.is_none();
    let mut config = load(config_path)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        if development {
            print_development_banner(&config, address);
        }
        let app = server::build(config)
            .await
            .map_err(|e| format!("configuration error: {e}"))?;
        tracing::info!(
            %address,
            engine = app.hub.engine().name(),
            max_connections = app.config.limits.max_connections,
            "herald listening"
        );
        server::run(listener, app, shutdown_signal())
            .await
            .map_err(|e| format!("server error: {e}"))?;
        tracing::info!("herald stopped");
        Ok(())
    })
}

fn print_development_banner(config: &Config, address: SocketAddr) {
    let secret = config.auth.jwt_secret.as_deref().unwrap_or_default();
    let claims = Claims::new("42", None, Duration::from_secs(24 * 3600), &config.auth);
    let token = sign_hs256(secret, &claims).unwrap_or_default();
    let key = config
        .api
        .keys
        .first()
        .map(String::as_str)
        .unwrap_or_default();
    println!(
        "\nHerald development server on http://{address} (memory engine, fresh secrets each start)\n\
         \n  test token for user 42 (24h):\n    {token}\n\
         \n  connect:\n    websocat 'ws://{address}/ws?token={token}'\n\
         \n  then send:  {{\"type\":\"subscribe\",\"channel\":\"chat:1\"}}\n\
         \n  publish:\n    curl -s http://{address}/api/publish -H 'Authorization: Bearer {key}' \\\n\
         \x20     -d '{{\"channel\":\"chat:1\",\"event\":\"hello\",\"data\":{{\"text\":\"hi\"}}}}'\n\
         \n  (user 42 also receives anything published to user:42)\n"
    );
    if config.admin_enabled() {
        println!("  admin page:\n    http://{address}/admin  (sign in with the API key: {key})\n");
    }
}

fn token(
    config: PathBuf,
    user: &str,
    channels: Option<String>,
    ttl: Duration,
) -> Result<(), String> {
    let config = load(Some(config))?;
    if config.auth.jwt_algorithm != JwtAlgorithm::HS256 {
        return Err(
            "herald token signs HS256 tokens only; sign RS256/ES256 tokens with your private key"
                .into(),
        );
    }
    let secret = config.auth.jwt_secret.as_deref().unwrap_or_default();
    let channels = channels.map(|c| {
        c.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    });
    let claims = Claims::new(user, channels, ttl, &config.auth);
    let token = sign_hs256(secret, &claims).map_err(|e| format!("cannot sign: {e}"))?;
    println!("{token}");
    Ok(())
}

fn init(path: PathBuf, force: bool) -> Result<(), String> {
    let text = init_template();
    if path.as_os_str() == "-" {
        print!("{text}");
        return Ok(());
    }
    if path.exists() && !force {
        return Err(format!(
            "{} exists; use --force to overwrite",
            path.display()
        ));
    }
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!(
        "wrote {} (with fresh secrets; keep it private)",
        path.display()
    );
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .init();
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
