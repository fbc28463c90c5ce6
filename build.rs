//! Marks the external programs the integration tests need but this machine lacks (nginx,
//! Chromium, redis-server), so that their tests are reported as ignored instead of passing without running.
//! Under `CI=true` nothing is marked: a missing program then fails its test.

use std::path::{Path, PathBuf};

fn on_path(name: &str, also: &[&str]) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    also.iter().any(|p| Path::new(p).is_file())
        || std::env::split_paths(&path).any(|dir: PathBuf| dir.join(name).is_file())
}

fn main() {
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rustc-check-cfg=cfg(missing_nginx)");
    println!("cargo::rustc-check-cfg=cfg(missing_chromium)");
    println!("cargo::rustc-check-cfg=cfg(missing_redis_server)");
    // Re-check when the programs appear or go.
    for watched in [
        "/usr/sbin/nginx",
        "/usr/bin/chromium",
        "/usr/bin/redis-server",
    ] {
        println!("cargo::rerun-if-changed={watched}");
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        return;
    }
    if !on_path("nginx", &["/usr/sbin/nginx"]) {
        println!("cargo::rustc-cfg=missing_nginx");
    }
    if !on_path("redis-server", &["/usr/bin/redis-server"]) {
        println!("cargo::rustc-cfg=missing_redis_server");
    }
    if !on_path(
        "chromium",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    ) {
        println!("cargo::rustc-cfg=missing_chromium");
    }
}
