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
    // The cluster: a name with a URL, a URL the Redis client reads, timings that let a
    // lease be renewed.
    refused(
        &format!("{listen}[cluster]\nurl = \"redis://127.0.0.1:6379\"\n"),
        &[],
        &["cluster.node", "required"],
    );
    refused(
        &format!("{listen}[cluster]\nurl = \"http://127.0.0.1:6379\"\nnode = \"a\"\n"),
        &[],
        &["`cluster.url`", "redis://"],
    );
    refused(
        &format!("{listen}[cluster]\nurl = \"redis://127.0.0.1:6379\"\nnode = \"a b\"\n"),
        &[],
        &["cluster.node", "a b"],
    );
    refused(
        &format!(
            "{listen}[cluster]\nurl = \"redis://127.0.0.1:6379\"\nnode = \"a\"\nlease_ms = 1000\nrequest_timeout_ms = 500\n"
        ),
        &[],
        &["cluster.lease_ms", "4 x cluster.request_timeout_ms"],
    );
    refused(
        &format!("{listen}[cluster]\nlease_ms = 0\n"),
        &[],
        &["`cluster.lease_ms`", "greater than 0"],
    );
    // Refused with any backend: 0 would close every connection at its first `subscribe`.
    refused(
        &format!("{listen}[backend]\nmax_pending_per_connection = 0\n"),
        &[],
        &["`backend.max_pending_per_connection`", "greater than 0"],
    );
    let http = format!("{listen}[backend]\nkind = \"http\"\nurl = \"http://127.0.0.1:1/\"\n");
    refused(
        &format!("{http}connect_timeout_ms = 0\n"),
        &[],
        &["`backend.connect_timeout_ms`"],
    );
    refused(
        &format!("{http}max_pending_per_connection = 0\n"),
        &[],
        &["`backend.max_pending_per_connection`"],
    );
    refused(
        &format!("{http}max_pending_notices = 0\n"),
        &[],
        &["`backend.max_pending_notices`"],
    );
    refused(
        &format!("{listen}[[routes]]\npath = \"/x\"\ndialect = \"raw\"\nclient_publish = true\n"),
        &[],
        &["`routes[0].client_publish`"],
    );
    refused(
        "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
        &[],
        &["trusted_proxies", "10.0.0.0/33"],
    );
    // Values are parsed when read: the key and the line are named, for any backend kind.
    refused(
        &format!("{listen}[backend]\nurl = \"https://app.example\"\n"),
        &[],
        &["`backend.url`", "not an http:// URL", "line"],
    );
    refused(
        &format!("{listen}[[routes]]\npath = \"/x\"\ndialect = \"groups\"\naccept_url = \"app\"\n"),
        &[],
        &["`routes[0].accept_url`"],
    );
    refused(
        &format!("{listen}[authorization]\nurl = \"http://127.0.0.1:1/\"\ntimeout_ms = 0\n"),
        &[],
        &["`authorization.timeout_ms`", "greater than 0"],
    );
    refused(
        &format!("{listen}[limits]\noutbound_queue = 0\n"),
        &[],
        &["`limits.outbound_queue`", "out of range"],
    );
    refused(
        &format!("{listen}[[routes]]\npath = \"/x\"\ndialect = \"raw\"\nxrf_cookie = \"c\"\n"),
        &[],
        &["`routes[0].xrf_cookie`", "groups dialect only"],
    );
    refused(&listen, &["--listen", "localhost"], &["--listen"]);
    refused(&listen, &["--log-level", "loud"], &["log.level"]);
    drop(held);
}
