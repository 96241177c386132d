//! The server the official Engine.IO and Socket.IO protocol test suites run against, built from
//! Herald's Socket.IO transport: on 127.0.0.1:3000, an Engine.IO echo at `/engine.io/` and the
//! Socket.IO suite's namespaces at `/socket.io/`, with the suites' timings (ping every 300 ms,
//! 200 ms to answer) and payload limit (1,000,000 bytes).
//!
//! ```text
//! cargo run -p herald --features socketio-conformance --example socketio-conformance
//! # then, in a copy of github.com/socketio/engine.io-protocol (or socket.io-protocol):
//! cd test-suite && npm ci && npm test
//! ```
//! `scripts/socketio-conformance` does both for each suite.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use herald::config::Config;
use herald::transport::socketio::conformance;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::development();
    config.listen = "127.0.0.1:3000".parse()?;
    config.socketio.namespaces = vec!["/".to_owned(), "/custom".to_owned()];
    config.socketio.ping_interval = Duration::from_millis(300);
    config.socketio.ping_timeout = Duration::from_millis(200);
    config.limits.max_frame_bytes = 1_000_000;
    config.limits.handshake_timeout = Duration::from_secs(1);
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let app = herald::server::build(config).await?;
    let routes = Router::new()
        .route(
            "/engine.io/",
            get(conformance::engine_poll)
                .post(conformance::post)
                .fallback(conformance::wrong_method),
        )
        .route(
            "/socket.io/",
            get(conformance::socketio_poll)
                .post(conformance::post)
                .fallback(conformance::wrong_method),
        )
        .with_state(app.clone());
    println!("conformance server on http://127.0.0.1:3000 (/engine.io/, /socket.io/)");
    herald::server::serve(listener, app, routes, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
