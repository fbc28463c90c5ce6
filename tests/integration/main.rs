//! Switchboard's integration tests: one binary (linking actix is slow), one module per area.
//! Every test starts the real `switchboard` binary on throwaway ports and talks to it over real
//! sockets: WebSockets through tokio-tungstenite (a different library from the server's) and the
//! push API through awc.

mod browser;
mod cli;
mod cluster;
mod compression;
mod config;
mod dialects;
mod docs;
mod echo;
mod hardening;
mod harness;
mod jsonrpc;
mod lifecycle;
mod metrics;
mod mock_backend;
mod nginx;
mod ops;
mod push_api;
mod relay;
