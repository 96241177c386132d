//! The Grafana dashboard in `deploy/grafana/` queries only metrics the server exports: its check
//! script reads a real scrape of `/metrics`.

use serde_json::json;

use crate::common::TestServer;

#[tokio::test]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let server = TestServer::start_default().await;
    // Some activity, so that the families that appear with their first event are there.
    let mut client = server.connect("alice").await;
    client.subscribe("chat:1").await;
    server.publish("chat:1", json!({"n": 1})).await;
    client.next_message().await;
    let scrape = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("herald-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scrape_file = dir.join("metrics.txt");
    std::fs::write(&scrape_file, scrape).unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let output = std::process::Command::new("python3")
        .arg(format!("{root}/deploy/grafana/check.py"))
        .arg(format!("{root}/deploy/grafana/herald.json"))
        .arg(&scrape_file)
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
