//! Switchboard: a WebSocket connection hub. Browsers and devices hold WebSockets on one side,
//! application backends speak plain HTTP on the other, channels sit in between.
//!
//! # Layout
//! - `main.rs`: the binary: flags, config loading, logging, signals.
//! - [`cli`]: operator commands and the interactive shell (clients of the push API).
//! - [`config`]: the TOML config, parsed into types that hold only valid values.
//! - [`server`]: wiring: listeners, the App and the upgrade hook, graceful shutdown.
//! - `upgrade`: the WebSocket handshake on actix-http's upgrade hook; the socket then goes to a
//!   `session`, the per-socket actor on the raw TCP stream (`wire`: the frame format,
//!   `outbox`: the write queue and its budget, `reassembly`: fragments, `gate`: the
//!   authorization gate, `rate_limit`: messages and bytes per second, `deflate`:
//!   permessage-deflate).
//! - `hub`: the hub actor around the pure `registry`, reached only through `HubHandle`;
//!   `operation` and `delivery`: what goes in and comes out of it.
//! - `dialect`: one pure codec per route kind (`raw`, `jsonrpc`, `groups`, `topics`).
//! - `backend`: where relay routes send frames: the loopback echo, or one actor per worker
//!   (`backend::http`) relaying in a format (`socketdock`, `ws2api`: each one file with its
//!   requests and push paths). `hook`: the connect hook and the authorizer.
//! - `cluster`: the link to Redis when `[cluster]` is set, on a thread of its own: interest-based
//!   pub/sub, the connection directory, leases and crash notices, cluster-wide surveys
//!   (`cluster::node`: its tasks, `cluster::scripts`: the Lua scripts, `cluster::keys`: the
//!   Redis names, `cluster::wire`: what nodes say to each other).
//! - `push` (with `push::guard`) and `push_rpc`: the push API and RocketWS's backend port.
//! - `origin`: which `Origin` and `Host` values a listener accepts (the push API and the
//!   WebSocket handshake). [`readiness`]: the reasons `/readyz` answers 503.
//! - [`logging`]: the `text` and `json` log line formats.
//! - `frame`, `channel`, `connection`: the values that travel: frames and close codes,
//!   channel names and publications, ids. `shutdown`: the guards the drain waits for.

mod backend;
mod channel;
pub mod cli;
mod cluster;
pub mod config;
mod connection;
mod courier;
mod deflate;
mod delivery;
mod dialect;
mod frame;
mod gate;
mod hook;
mod hub;
mod jsonrpc_envelope;
mod link;
pub mod logging;
mod metrics;
mod operation;
mod origin;
mod outbox;
mod push;
mod push_rpc;
mod rate_limit;
pub mod readiness;
mod reassembly;
mod registry;
pub mod server;
mod session;
mod shutdown;
mod upgrade;
mod wire;

pub use server::{run, Listeners};
