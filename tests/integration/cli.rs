//! The operator CLI against a running hub.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// Run `switchboard ARGS` (with `stdin` piped in) and return (exit code, stdout, stderr).
fn switchboard(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CLI");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[actix_web::test]
async fn operator_commands_and_shell() {
    let hub = start(&format!(
        "{}\n[push]\ntoken = \"op-secret\"\n",
        demo_config("")
    ));
    let url = format!("http://{}", hub.push);
    let base = ["--push-url", url.as_str(), "--token", "op-secret"];
    fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(more).copied().collect()
    }
    let mut ws = connect(&hub.ws_url("/rpc")).await;
    call(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": "news"}}),
    )
    .await;

    let (code, out, err) = switchboard(&with(&base, &["publish", "news", r#"{"a": 1}"#]), "");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"reached\": 1"), "{out}");
    assert_eq!(next_json(&mut ws).await["a"], 1);

    let (code, out, _) = switchboard(&with(&base, &["channels"]), "");
    assert_eq!(code, Some(0));
    assert!(out.contains("\"news\""), "{out}");
    let (_, out, _) = switchboard(&with(&base, &["connections"]), "");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = listed["connections"][0]["id"].as_str().unwrap().to_owned();

    let (code, _, err) = switchboard(&with(&base, &["send", &id, "hello from ops"]), "");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        next_data(&mut ws).await,
        Message::Text("hello from ops".into())
    );

    // The shell: several commands on stdin, help, an error that does not end it.
    let script = "help\npublish news {\"b\": 2}\nbogus\nemit news {\"c\": 3}\ntotal_subscribers news\nquit\n";
    let (code, out, err) = switchboard(&with(&base, &["shell"]), script);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("commands:"), "{out}");
    assert!(out.contains("unknown command `bogus`"), "{out}");
    assert!(out.contains("emitted: 1"), "{out}");
    assert_eq!(next_json(&mut ws).await["b"], 2);
    assert_eq!(next_json(&mut ws).await["c"], 3);

    let (code, _, err) = switchboard(
        &with(&base, &["close", &id, "--code", "4000", "--reason", "ops"]),
        "",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(expect_close(&mut ws).await, (4000, "ops".to_owned()));

    let (code, _, err) = switchboard(&with(&base, &["send", "nobody", "x"]), "");
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = switchboard(
        &["--push-url", url.as_str(), "--token", "wrong", "channels"],
        "",
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("refused the token"), "{err}");
    let (code, _, err) = switchboard(&["--push-url", "http://127.0.0.1:9", "channels"], "");
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach the push API"), "{err}");
}
