//! The durable history store (`history_store = "disk"`) against the real binary: history, offsets
//! and epochs survive `kill -9`, and a data directory that cannot be read stops the server with a
//! clear error instead of starting empty.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::common::{publication_offsets, wait_exit, ServerProcess, API_KEY, SECRET};

const ROOM: &str = "[[namespace]]\nname = \"room\"\nhistory_size = 5000\nhistory_ttl = \"1h\"\n";

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-durable-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn on_disk(dir: &Path) -> String {
    format!("history_store = \"disk\"\ndata_dir = \"{}\"", dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_offsets_and_epochs_survive_kill_9() {
    const TOTAL: u64 = 1000;
    let dir = data_dir("kill");
    let mut first = ServerProcess::start_with(&on_disk(&dir), ROOM);
    let server = std::sync::Arc::new(first.handle());
    let mut client = server.connect("kim").await;
    let epoch = client.subscribed("room:1").await["epoch"].clone();

    // 1,000 publications from 8 concurrent publishers; each answer comes after the disk write.
    let mut lanes = Vec::new();
    for lane in 0..8u64 {
        let server = server.clone();
        lanes.push(tokio::spawn(async move {
            let mut n = lane + 1;
            while n <= TOTAL {
                let body = server.publish("room:1", json!({"n": n})).await;
                assert!(body["offset"].as_u64().unwrap() <= TOTAL);
                n += 8;
            }
        }));
    }
    for lane in lanes {
        lane.await.unwrap();
    }
    // The client has read some of them when the server dies.
    let mut seen = 0;
    for _ in 0..300 {
        seen = client.next_message().await["offset"].as_u64().unwrap();
    }
    assert_eq!(seen, 300);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    drop(client);

    let second = ServerProcess::start_with(&on_disk(&dir), ROOM);
    let server = second.handle();
    let mut back = server.connect("kim").await;
    let reply = back
        .subscribe_with("room:1", json!({"since": {"offset": seen, "epoch": epoch}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], epoch);
    assert_eq!(reply["offset"], TOTAL);
    for expected in seen + 1..=TOTAL {
        let message = back.next_message().await;
        assert_eq!(message["offset"], expected);
    }
    let next = server.publish("room:1", json!({"n": "after"})).await;
    assert_eq!(next["offset"], TOTAL + 1);
    assert_eq!(next["epoch"], epoch);
    assert_eq!(back.next_message().await["offset"], TOTAL + 1);

    // Idempotency keys outlive the restart too.
    let body = json!({"channel": "room:1", "data": 1, "idempotency_key": "k-1"});
    let (_, keyed) = server.post("/api/publish", body.clone()).await;
    drop(second);
    let third = ServerProcess::start_with(&on_disk(&dir), ROOM);
    let (_, again) = third.handle().post("/api/publish", body).await;
    assert_eq!(keyed, again);
    drop(third);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `herald serve` on `config_text` and returns (exit code, stderr) if it exits within 10 s.
fn serve_and_wait(config_text: &str, name: &str) -> (Option<i32>, String) {
    let dir = data_dir(&format!("cfg-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("herald.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let code = wait_exit(&mut child, Duration::from_secs(10));
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (code, stderr)
}

fn config_with(data: &Path) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\n{}\n[auth]\njwt_secret = \"{SECRET}\"\n[api]\nkeys = [\"{API_KEY}\"]\n{ROOM}",
        on_disk(data)
    )
}

#[test]
fn a_corrupt_or_unreadable_data_directory_is_a_startup_error_and_is_left_alone() {
    // A store file that is not a database.
    let dir = data_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("history.redb");
    let garbage = vec![0x5au8; 64 * 1024];
    std::fs::write(&file, &garbage).unwrap();
    let (code, stderr) = serve_and_wait(&config_with(&dir), "corrupt");
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("history store") && stderr.contains("history.redb"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        garbage,
        "never emptied or rewritten"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // A data directory that is a file.
    let not_a_dir = data_dir("file");
    std::fs::write(&not_a_dir, b"not a directory").unwrap();
    let (code, stderr) = serve_and_wait(&config_with(&not_a_dir), "file");
    assert_ne!(code, Some(0));
    assert!(stderr.contains("data directory"), "{stderr}");
    let _ = std::fs::remove_file(&not_a_dir);
}

#[tokio::test]
async fn the_disk_store_keeps_only_what_the_namespace_keeps() {
    let dir = data_dir("bounded");
    let brief = "[[namespace]]\nname = \"brief\"\nhistory_size = 5\nhistory_ttl = \"1h\"\n";
    let first = ServerProcess::start_with(&on_disk(&dir), brief);
    for n in 1..=12 {
        first.handle().publish("brief:1", json!({"n": n})).await;
    }
    drop(first);
    let second = ServerProcess::start_with(&on_disk(&dir), brief);
    let (status, body) = second.handle().get("/api/channels/brief:1/history").await;
    assert_eq!(status, 200, "{body}");
    let kept = publication_offsets(&body);
    assert_eq!(kept, [8, 9, 10, 11, 12]);
    assert_eq!(body["offset"], 12);
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}
