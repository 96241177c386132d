//! A cooking app's backend that embeds Herald instead of running it beside itself.
//!
//! The app keeps its own routes (`/api/v1/goals/...`, `/api/v1/community/posts`) and mounts
//! Herald's under `/api/v1/realtime`, so that its clients connect to
//! `ws://host/api/v1/realtime/ws` and its handlers notify users with one call each:
//!
//! ```text
//! herald.publish_to_user(&user, "GoalAchieved", &goal).await?;
//! herald.publish("community:feed", Some("NewCommunityPost"), &post).await?;
//! ```
//!
//! Run it with `cargo run -p herald-example-embedded`; it prints a client token. Configuration
//! comes from `herald.toml` when `HERALD_CONFIG` names one, otherwise development defaults, and
//! `HERALD_*` variables override either (`HERALD_LISTEN=0.0.0.0:3000`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use herald::config::Config;
use herald::Herald;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What the app's handlers share: here only Herald; a real app adds its database pool.
#[derive(Clone)]
struct AppState {
    herald: Herald,
}

#[derive(Deserialize, Serialize)]
struct Goal {
    goal_id: u64,
    message: String,
}

#[derive(Deserialize, Serialize)]
struct Post {
    post_id: u64,
    author_name: String,
    content: String,
}

/// The application: its own routes, and Herald's nested under `/api/v1/realtime`.
fn app(herald: Herald) -> Router {
    let realtime = herald.router();
    Router::new()
        .route("/api/v1/goals/{user}/achieved", post(goal_achieved))
        .route("/api/v1/community/posts", post(new_post))
        .route("/api/v1/session/{user}", get(session))
        .with_state(AppState { herald })
        .nest("/api/v1/realtime", realtime)
}

/// The goals service marks a goal achieved and tells the user, on every device they have open.
async fn goal_achieved(
    State(state): State<AppState>,
    Path(user): Path<String>,
    Json(goal): Json<Goal>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let position = state
        .herald
        .publish_to_user(&user, "GoalAchieved", &goal)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Json(json!({"notified": user, "offset": position.offset})))
}

/// The community service stores a post and shows it to everyone watching the feed.
async fn new_post(
    State(state): State<AppState>,
    Json(post): Json<Post>,
) -> Result<Json<Value>, (StatusCode, String)> {
    state
        .herald
        .publish("community:feed", Some("NewCommunityPost"), &post)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Json(json!({"published": post.post_id})))
}

/// After its own login, the app hands the client a token for the real-time connection.
async fn session(
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let token = state
        .herald
        .client_token(&user, None, Duration::from_secs(3600))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(
        json!({"token": token, "ws": "/api/v1/realtime/ws", "user": user}),
    ))
}

fn config() -> Result<Config, String> {
    let env = std::env::vars().filter(|(k, _)| k != "HERALD_CONFIG");
    let config = match std::env::var_os("HERALD_CONFIG") {
        Some(path) => Config::load(Some(&PathBuf::from(path)), env),
        None => Config::load_development(env),
    };
    config.map_err(|e| format!("configuration error: {e}"))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    tracing_subscriber::fmt().init();
    let config = config()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let address: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let herald = Herald::new(config)
        .await
        .map_err(|e| format!("configuration error: {e}"))?;
    let token = herald
        .client_token("42", None, Duration::from_secs(3600))
        .map_err(|e| e.to_string())?;
    println!("listening on http://{address}");
    println!("  client:  ws://{address}/api/v1/realtime/ws?token={token}");
    println!("  notify:  curl -X POST http://{address}/api/v1/goals/42/achieved -H 'content-type: application/json' -d '{{\"goal_id\":1,\"message\":\"10 km!\"}}'");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    herald
        .serve(listener, app(herald.clone()), shutdown)
        .await
        .map_err(|e| format!("server error: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    /// The next text frame as JSON, within five seconds.
    async fn next_json<S>(socket: &mut S) -> Value
    where
        S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
                .await
                .expect("a frame within 5 s")
                .expect("the socket is open")
                .expect("a frame");
            if let Message::Text(text) = frame {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }

    /// The app with Herald mounted serves both: a client connects through the app's own token
    /// route and Herald's nested `/ws`, the app's handlers publish in-process, the client receives
    /// on its personal channel and on a channel it subscribed to; the app's routes and Herald's
    /// API answer side by side.
    #[tokio::test]
    async fn a_client_receives_what_the_app_publishes_in_process() {
        let config = Config::load_development(Vec::new()).unwrap();
        let api_key = config.api.keys[0].clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let herald = Herald::new(config).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let herald = herald.clone();
            async move {
                herald
                    .serve(listener, app(herald.clone()), async {
                        let _ = stopped.await;
                    })
                    .await
            }
        });
        let http = reqwest::Client::new();
        let base = format!("http://{address}");

        let session: Value = http
            .get(format!("{base}/api/v1/session/7"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = session["token"].as_str().unwrap();
        let url = format!("ws://{address}/api/v1/realtime/ws?token={token}");
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let connected = next_json(&mut socket).await;
        assert_eq!(connected["type"], "connected");
        assert_eq!(connected["user"], "7");
        assert_eq!(next_json(&mut socket).await["type"], "subscribed"); // user:7
        socket
            .send(Message::text(
                json!({"type": "subscribe", "channel": "community:feed", "id": 1}).to_string(),
            ))
            .await
            .unwrap();
        assert_eq!(next_json(&mut socket).await["type"], "subscribed");

        let answer = http
            .post(format!("{base}/api/v1/goals/7/achieved"))
            .json(&json!({"goal_id": 3, "message": "10 km!"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let message = next_json(&mut socket).await;
        assert_eq!(message["type"], "message");
        assert_eq!(message["channel"], "user:7");
        assert_eq!(message["event"], "GoalAchieved");
        assert_eq!(message["data"], json!({"goal_id": 3, "message": "10 km!"}));

        let answer = http
            .post(format!("{base}/api/v1/community/posts"))
            .json(&json!({"post_id": 9, "author_name": "Ann", "content": "Borscht"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let message = next_json(&mut socket).await;
        assert_eq!(message["channel"], "community:feed");
        assert_eq!(message["event"], "NewCommunityPost");
        assert_eq!(message["data"]["author_name"], "Ann");

        // Herald's own API answers under the same prefix, with the same key.
        let online: Value = http
            .get(format!("{base}/api/v1/realtime/api/users/7"))
            .bearer_auth(&api_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(online["online"], true);
        assert_eq!(herald.user_connections("7").await.unwrap(), 1);

        // Shutdown drains Herald's clients as `herald serve` does: a 1012 close.
        stop.send(()).unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(15), socket.next())
                .await
                .expect("closed within the drain")
            {
                Some(Ok(Message::Close(Some(close)))) => {
                    assert_eq!(u16::from(close.code), 1012);
                    break;
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
        server.await.unwrap().unwrap();
    }
}
