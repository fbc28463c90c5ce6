//! The operator CLI against a running hub.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// Run `switchboard ARGS` (with `stdin` piped in) and return (exit code, stdout, stderr).
fn switchboard(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    switchboard_in(None, &[], args, stdin)
}

/// Run `switchboard ARGS` in directory `dir` (else the current one) with these environment
/// variables; returns (exit code, stdout, stderr).
fn switchboard_in(
    dir: Option<&std::path::Path>,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: &str,
) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command
        .args(args)
        .env_remove("SWITCHBOARD_PUSH_URL")
        .env_remove("SWITCHBOARD_TOKEN")
        .envs(env.iter().copied())
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

#[actix_web::test]
async fn the_cli_says_which_push_url_and_which_hub_it_used() {
    let hub = start(&demo_config(""));
    let url = format!("http://{}", hub.push);
    let pid = format!("pid {}", hub.pid());

    let (code, out, err) = switchboard(&["--push-url", &url, "channels"], "");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"channels\""), "{out}");
    assert!(
        err.contains(&format!("push API {url} (from --push-url)")),
        "{err}"
    );
    assert!(
        err.contains("answered by switchboard") && err.contains(&pid),
        "{err}"
    );
    assert!(
        err.contains(&format!("push listener {}", hub.push)),
        "{err}"
    );

    let (code, _, err) = switchboard_in(None, &[("SWITCHBOARD_PUSH_URL", &url)], &["channels"], "");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("(from SWITCHBOARD_PUSH_URL)") && err.contains(&pid),
        "{err}"
    );

    // No flag: ./config.toml of the working directory, named by its full path.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!("[push]\nlisten = \"{}\"\n", hub.push),
    )
    .unwrap();
    let (code, _, err) = switchboard_in(Some(dir.path()), &[], &["connections"], "");
    assert_eq!(code, Some(0), "{err}");
    let file = std::fs::canonicalize(dir.path().join("config.toml")).unwrap();
    assert!(
        err.contains(&format!(
            "push API {url} (from push.listen in {})",
            file.display()
        )),
        "{err}"
    );
    assert!(err.contains(&pid), "{err}");

    // No flag and no file: the built-in default, said as such.
    let empty = tempfile::tempdir().unwrap();
    let (_, _, err) = switchboard_in(Some(empty.path()), &[], &["channels"], "");
    assert!(err.contains("(from the built-in default"), "{err}");
}

#[actix_web::test]
async fn a_data_argument_that_is_not_json_is_refused_unless_sent_as_a_string() {
    let hub = start(&demo_config(""));
    let url = format!("http://{}", hub.push);
    let mut ws = connect(&hub.ws_url("/ws")).await;
    wait_for_connections(&hub, 1).await;

    for args in [
        vec!["broadcast", "hello"],
        vec!["broadcast", "{\"a\": 1"],
        vec!["publish", "news", "{typo}"],
    ] {
        let mut all = vec!["--push-url", url.as_str()];
        all.extend(&args);
        let (code, out, err) = switchboard(&all, "");
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(
            err.contains("not valid JSON") && err.contains("--string"),
            "{err}"
        );
    }
    let (code, _, err) = switchboard(&["--push-url", &url, "broadcast", "--string", "hello"], "");
    assert_eq!(code, Some(0), "{err}");
    // The first frame is the one sent with --string: the refused ones sent nothing.
    assert_eq!(next_data(&mut ws).await, Message::Text("hello".into()));
    let (code, _, err) = switchboard(&["--push-url", &url, "broadcast", "{\"n\": 2}"], "");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(next_data(&mut ws).await, Message::Text("{\"n\":2}".into()));
}
