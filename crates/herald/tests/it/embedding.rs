//! Herald inside another axum application (`herald::Herald`); `examples/embedded` has the whole
//! service and its own test.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use serde_json::json;

use crate::common::TestServer;

/// Served by `axum::serve`, Herald's `/ws` cannot take its socket back from the HTTP server: it
/// refuses the upgrade with a `500` that says what to do, rather than upgrading and dropping the
/// connection. The rest of its routes work there.
#[tokio::test]
async fn a_websocket_upgrade_needs_herald_serve() {
    let herald = herald::Herald::new(TestServer::config()).await.unwrap();
    let app = Router::new()
        .route("/own", get(|| async { "the app's own route" }))
        .nest("/realtime", herald.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let url = format!("ws://{address}/realtime/ws");
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 500);
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("herald::server::serve"), "{body}");
        }
        other => panic!("expected a refused upgrade, got {other:?}"),
    }
    let http = reqwest::Client::new();
    let own = http
        .get(format!("http://{address}/own"))
        .send()
        .await
        .unwrap();
    assert_eq!(own.text().await.unwrap(), "the app's own route");
    let health: serde_json::Value = http
        .get(format!("http://{address}/realtime/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    let published = herald
        .publish("chat:1", Some("note"), &json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(published.offset, 1);
    let refused = herald.publish("bad channel", None, &1).await.unwrap_err();
    assert_eq!(refused.code, herald_core::ErrorCode::BadRequest);
}
