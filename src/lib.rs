//! Switchboard: a WebSocket connection hub. Browsers and devices hold WebSockets on one side,
//! application backends speak plain HTTP on the other, channels sit in between.
//!
//! # Layout
//! - `main.rs`: the binary: flags, config loading, logging, signals.
//! - [`cli`]: operator commands and the interactive shell (clients of the push API).
//! - [`config`]: the TOML config, its defaults and validation.
//! - [`server`]: wiring: listeners, the HTTP apps, graceful shutdown.
//! - [`hub`]: the hub actor: connection registry, channels, delivery policy (pure state).
//! - [`session`]: the per-socket actor; the only module that knows the WebSocket library.
//! - [`dialect`]: one pure codec per route kind (`raw`, `jsonrpc`).
//! - [`backend`]: where relay routes send frames: the loopback echo, or [`backend::http`], one
//!   actor per worker that relays to an application in a relay format ([`backend::socketdock`],
//!   [`backend::ws2api`]: each one file with its requests and its push paths).
//! - [`hook`]: questions asked of the application: the connect hook, the authorizer.
//! - [`origin`]: which `Origin` and `Host` header values a listener accepts (CSRF, DNS rebinding).
//! - [`push`]: the push API for backends (HTTP handlers -> hub messages).
//! - [`push_rpc`]: RocketWS's JSON-RPC backend port (`POST /` on the push listener).
//! - [`channel`], [`connection`]: the values that travel: frames, publications, ids.

pub mod backend;
pub mod channel;
pub mod cli;
pub mod config;
pub mod connection;
mod delivery;
pub mod dialect;
mod frame;
mod gate;
pub mod hook;
pub mod hub;
mod operation;
pub mod origin;
mod outbox;
pub mod push;
pub mod push_rpc;
mod rate_limit;
mod reassembly;
mod registry;
pub mod server;
pub mod session;
mod shutdown;
mod upgrade;
mod wire;

pub use server::{run, Listeners};
