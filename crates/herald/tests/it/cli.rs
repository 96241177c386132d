//! The `herald` command line: init, check-config, token, and the development server banner.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use herald::auth::Authenticator;
use herald::config::Config;

use crate::common::Client;

fn herald(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_remove("HERALD_LOG")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn init_writes_a_valid_config_with_fresh_secrets_and_token_signs_for_it() {
    let dir = temp_dir("init");
    let path = dir.join("herald.toml");
    let path_str = path.to_str().unwrap();
    let (code, _, _) = herald(&["init", path_str]);
    assert_eq!(code, 0);
    let (again, _, err) = herald(&["init", path_str]);
    assert_ne!(again, 0, "init does not overwrite without --force");
    assert!(err.contains("--force"));

    let (code, out, _) = herald(&["check-config", "--config", path_str]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok"));

    let (_, first, _) = herald(&["init", "-"]);
    let (_, second, _) = herald(&["init", "-"]);
    assert_ne!(first, second, "every init has fresh secrets");

    let (code, token, _) = herald(&[
        "token",
        "--config",
        path_str,
        "--user",
        "42",
        "--channels",
        "site:*,machine:7",
        "--ttl",
        "2h",
    ]);
    assert_eq!(code, 0);
    let config = Config::load(Some(&path), Vec::new()).unwrap();
    let verified = Authenticator::from_config(&config.auth)
        .unwrap()
        .verify(token.trim())
        .unwrap();
    assert_eq!(&*verified.identity.user, "42");
    assert_eq!(verified.identity.channel_grants.len(), 2);
    let now = herald_core::publication::now_millis() / 1000;
    assert!((now + 7100..=now + 7300).contains(&verified.expires_at.unwrap()));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn config_errors_name_the_key_and_exit_non_zero() {
    let dir = temp_dir("bad");
    let path = dir.join("bad.toml");
    let (_, template, _) = herald(&["init", "-"]);
    std::fs::write(
        &path,
        template.replace("max_frame_bytes = 65536", "max_frame_bytes = -1"),
    )
    .unwrap();
    let (code, _, err) = herald(&["check-config", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("limits.max_frame_bytes"), "{err}");

    let (code, _, err) = herald(&["serve", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("limits.max_frame_bytes"), "{err}");

    let missing = dir.join("missing.pem");
    let rs = template
        .replace("jwt_algorithm = \"HS256\"", "jwt_algorithm = \"RS256\"")
        .replace(
            "# jwt_public_key_file = \"jwt-public.pem\"",
            &format!("jwt_public_key_file = {:?}", missing.to_str().unwrap()),
        );
    std::fs::write(&path, rs).unwrap();
    let (code, _, err) = herald(&["check-config", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("auth.jwt_public_key_file"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn serve_without_config_is_a_working_development_server() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HERALD_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut token = None;
    let mut key = None;
    let mut addr = None;
    while addr.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("banner and log line");
        let trimmed = line.trim();
        if trimmed.starts_with("eyJ") {
            token = Some(trimmed.to_string());
        }
        if let Some(rest) = line.split("Bearer ").nth(1) {
            key = Some(rest.split('\'').next().unwrap().to_string());
        }
        if let Some(rest) = line.split("address=").nth(1) {
            addr = Some(rest.split_whitespace().next().unwrap().to_string());
        }
    }
    let (token, key, addr) = (token.unwrap(), key.unwrap(), addr.unwrap());

    let url = format!("ws://{addr}/ws?token={token}");
    let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut client = Client::established(socket).await;
    assert_eq!(client.user, "42");
    client.subscribed("anything:1").await;

    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/publish"))
        .bearer_auth(&key)
        .body(r#"{"channel":"anything:1","event":"hello","data":{"text":"hi"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let message = client.next_message().await;
    assert_eq!(message["data"]["text"], "hi");
    child.kill().unwrap();
    child.wait().unwrap();
}
