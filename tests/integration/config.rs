//! Bad configs are refused before any port is bound, with the key named.

use std::net::TcpListener;

use crate::harness::*;

fn refused(config: &str, args: &[&str], needles: &[&str]) {
    let (code, stderr) = run_to_exit(config, args);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
}

#[test]
fn bad_configs_name_the_key() {
    // The listen port is held by this test: had the hub tried to bind, it would fail with
    // exit code 1 (bind error); code 2 shows the config was refused before any bind.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = format!("[server]\nlisten = \"{}\"\n", held.local_addr().unwrap());
    refused(&format!("{listen}shout = true\n"), &[], &["shout"]);
    refused(
        "[server]\nlisten = \"nowhere\"\n",
        &[],
        &["listen", "nowhere"],
    );
    refused(
        &format!("{listen}[limits]\nheartbeat_interval_ms = 30000\nheartbeat_timeout_ms = 10000\n"),
        &[],
        &["limits.heartbeat_interval_ms"],
    );
    refused(
        &format!("{listen}[push]\nlisten = \"0.0.0.0:0\"\n"),
        &[],
        &["push.token"],
    );
    refused(
        &format!("{listen}[limits]\nmax_message_size = 0\n"),
        &[],
        &["limits.max_message_size"],
    );
    refused(
        &format!("{listen}[[routes]]\npath = \"/x\"\ndialect = \"smoke-signals\"\n"),
        &[],
        &["smoke-signals"],
    );
    refused(&listen, &["--listen", "localhost"], &["--listen"]);
    refused(&listen, &["--log-level", "loud"], &["log.level"]);
    drop(held);
}
