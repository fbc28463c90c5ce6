//! Configuration: the TOML file's shape, its defaults, and the checks that run before any port
//! is bound. A `Config` that passed [`Config::validate`] is one the server can run with.
//!
//! Values are parsed, not checked: a URL the hub calls is an [`HttpUrl`], a number that must be
//! positive is a `NonZero*` (or is refused while it is read, when its readers take a plain
//! number), so a bad value fails at deserialize time with its key named (`backend.url`,
//! `routes[0].accept_url`). Only rules between keys are left to [`Config::validate`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::channel::MAX_CHANNEL_LEN;
use crate::dialect::DialectKind;
use crate::origin::{HostPolicy, OriginRule, PatternError};
use crate::registry::SubscriptionLimits;

/// The whole configuration file. Every section is optional; a missing section takes its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where WebSocket clients connect and whether the sample page is served.
    #[serde(default)]
    pub server: ServerConfig,
    /// The private API backends use to push frames, publish and close connections.
    #[serde(default)]
    pub push: PushConfig,
    /// Per-connection limits and the heartbeat.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Where frames of relay routes go.
    #[serde(default)]
    pub backend: BackendConfig,
    /// The WebSocket routes, each with the dialect its clients speak.
    #[serde(default = "default_routes")]
    pub routes: Vec<RouteConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The optional hook asked before a connection joins a channel.
    #[serde(default)]
    pub authorization: AuthorizationConfig,
    /// Several hub processes as one hub over Redis; without a `url` nothing changes.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// The `[cluster]` section: with `url` set, this process joins the other hubs on the same
/// Redis (one channel space, push by id on any node, cluster-wide listings, crash notices).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The Redis server (`redis://host:port/db`); unset means a single node that never touches
    /// Redis.
    pub url: Option<RedisUrl>,
    /// This node's name, unique in the cluster and kept across restarts (required with `url`):
    /// a node starting under a name whose previous run died takes over that run's notices.
    pub node: Option<String>,
    /// Prefix of every Redis key and channel, so several clusters can share one Redis.
    pub key_prefix: String,
    /// How long a node's lease lasts without a renewal: a node silent this long is taken for
    /// dead (its connections' disconnect notices are sent by a survivor), and a node cut off
    /// from Redis this long closes its own sockets first.
    #[serde(deserialize_with = "positive")]
    pub lease_ms: NonZeroU64,
    /// How often every node looks for expired leases to reap.
    #[serde(deserialize_with = "positive")]
    pub reap_interval_ms: NonZeroU64,
    /// How long a request to another node (push by id, close, listings) waits for its answer,
    /// and how long one Redis command may take.
    #[serde(deserialize_with = "positive")]
    pub request_timeout_ms: NonZeroU64,
    /// How long a channel stays subscribed in Redis after its last local member left, so
    /// churn does not turn into a stream of SUBSCRIBE/UNSUBSCRIBE.
    pub unsubscribe_delay_ms: u64,
    /// How often the subscription connection is probed with a message to itself; one that
    /// delivers nothing for two probes is reconnected.
    #[serde(deserialize_with = "positive")]
    pub probe_interval_ms: NonZeroU64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            url: None,
            node: None,
            key_prefix: "switchboard".into(),
            lease_ms: NonZeroU64::new(10_000).expect("positive literal"),
            reap_interval_ms: NonZeroU64::new(1_000).expect("positive literal"),
            request_timeout_ms: NonZeroU64::new(1_000).expect("positive literal"),
            unsubscribe_delay_ms: 1_000,
            probe_interval_ms: NonZeroU64::new(5_000).expect("positive literal"),
        }
    }
}

/// A `redis://` URL, checked by the Redis client's own parser when it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Check a Redis URL: `redis://` (TLS is not built in), parsed by the client.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with("redis://") {
            return Err(format!("`{text}` is not a redis:// URL"));
        }
        redis::Client::open(text).map_err(|e| format!("`{text}`: {e}"))?;
        Ok(Self(text.to_owned()))
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The `[authorization]` section: when `url` is set, the hub asks the application before a
/// connection joins channels: `POST url {"connection_id", "channels": [...], "headers": {...},
/// "remote"}` answered by `{"allowed": [...]}`. Anything else denies (fails closed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizationConfig {
    /// The hook's URL; unset means every channel may be joined.
    pub url: Option<HttpUrl>,
    /// How long an answer for (connection, channel) is reused; 0 asks every time.
    pub cache_ms: u64,
    /// Deadline for one question; a hook that does not answer in time denies.
    #[serde(deserialize_with = "positive")]
    pub timeout_ms: NonZeroU64,
    /// A bearer token sent to the hook (`Authorization: Bearer ...`), so the application can
    /// tell the hub's questions from anyone else's; exclusive with `token_file`.
    pub token: Option<String>,
    /// A file holding that token (surrounding whitespace trimmed), so the secret need not sit
    /// in the config file.
    pub token_file: Option<PathBuf>,
    /// The token in effect, once [`Config::resolve_secrets`] has read its sources.
    #[serde(skip)]
    resolved_token: Option<ResolvedToken>,
}

impl AuthorizationConfig {
    /// The bearer token sent to the hook, from `token_file` or `token`.
    pub fn token(&self) -> Option<&str> {
        ResolvedToken::in_effect(&self.resolved_token, &self.token)
    }
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        Self {
            url: None,
            cache_ms: 0,
            timeout_ms: NonZeroU64::new(5_000).expect("positive literal"),
            token: None,
            token_file: None,
            resolved_token: None,
        }
    }
}

/// The `[server]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the WebSocket routes (and the sample page) listen on.
    pub listen: Address,
    /// Serve the sample page at `GET /`.
    pub page: bool,
    /// HTTP worker threads; 0 means one per CPU core.
    #[serde(deserialize_with = "in_range::<_, 0, 256>")]
    pub workers: usize,
    /// How long a graceful shutdown waits for every socket to close before it gives up.
    pub shutdown_timeout_ms: u64,
    /// Reverse proxies (e.g. nginx) whose X-Forwarded-For header gives the client's address:
    /// addresses and CIDR ranges.
    pub trusted_proxies: TrustedProxies,
    /// Most WebSocket connections at once; upgrades beyond it get 503. Unset: the open-files
    /// limit minus a reserve for the push API, backend callouts and the process itself.
    #[serde(deserialize_with = "positive_if_set")]
    pub max_connections: Option<usize>,
    /// Origins whose pages may open WebSockets (and, unless `push.allowed_origins` is set,
    /// call the push API): exact origins, `https://*.example.com` patterns, or `*` for any.
    /// Unset: only a page's own origin (the sample page). A route may override it.
    pub allowed_origins: Option<Vec<String>>,
    /// Refuse WebSocket handshakes that carry no `Origin` header (programs send none; every
    /// browser does). A route may override it.
    pub require_origin: bool,
    /// How long `/readyz` answers 503 after SIGTERM before the sockets are closed, so a load
    /// balancer stops sending new clients before the 1001 closes begin.
    pub drain_delay_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: Address("127.0.0.1:8080".parse().expect("valid literal")),
            page: true,
            workers: 0,
            shutdown_timeout_ms: 5_000,
            trusted_proxies: TrustedProxies::default(),
            max_connections: None,
            allowed_origins: None,
            require_origin: false,
            drain_delay_ms: 1_000,
        }
    }
}

/// The `[push]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Address of the push API; it may equal `server.listen`, then both share one listener.
    pub listen: Address,
    /// Bearer token the push API requires; required (or `token_file`, or the environment
    /// variable [`PUSH_TOKEN_ENV`]) when `listen` is not a loopback address.
    pub token: Option<String>,
    /// A file holding the bearer token (surrounding whitespace trimmed), so the secret need
    /// not sit in the config file; exclusive with `token`.
    pub token_file: Option<PathBuf>,
    /// Origins (`https://app.example.com`, `https://*.example.com`) whose pages may call the
    /// push API; a request with any other `Origin` header is refused, so a web page cannot
    /// drive the API from a browser (CSRF). Unset: `server.allowed_origins` (without `*`).
    pub allowed_origins: Option<Vec<String>>,
    /// Host names the push API answers besides the loopback ones (on a loopback listener),
    /// or instead of any (on another listener, when set): the defence against DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// How long a request body may take to arrive; a client that trickles it in is answered
    /// with 408 and disconnected instead of holding a connection open.
    #[serde(deserialize_with = "positive")]
    pub body_timeout_ms: NonZeroU64,
    /// A listener of its own for a Prometheus scraper: it serves `GET /metrics` only, without
    /// the token (bind it to an address only the scraper reaches). `/metrics` on the push
    /// listener, behind the token, is served either way.
    pub metrics_listen: Option<Address>,
    /// The token in effect, once [`Config::resolve_secrets`] has read its sources.
    #[serde(skip)]
    resolved_token: Option<ResolvedToken>,
}

/// A token after its sources (the environment, a file, the key) were read.
#[derive(Debug, Clone, Default)]
struct ResolvedToken {
    /// The secret, if any source gave one.
    value: Option<String>,
}

impl ResolvedToken {
    /// The resolved secret or, before resolution, the key's own value.
    fn in_effect<'a>(resolved: &'a Option<Self>, key: &'a Option<String>) -> Option<&'a str> {
        match resolved {
            Some(resolved) => resolved.value.as_deref(),
            None => key.as_deref(),
        }
    }
}

/// The environment variable that holds the push token. It wins over `push.token_file` and
/// `push.token`, so a deployment can inject the secret without writing it to disk.
pub const PUSH_TOKEN_ENV: &str = "SWITCHBOARD_PUSH_TOKEN";

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            listen: Address("127.0.0.1:8081".parse().expect("valid literal")),
            token: None,
            token_file: None,
            allowed_origins: None,
            allowed_hosts: Vec::new(),
            body_timeout_ms: NonZeroU64::new(10_000).expect("positive literal"),
            metrics_listen: None,
            resolved_token: None,
        }
    }
}

impl PushConfig {
    /// The bearer token in effect: from [`PUSH_TOKEN_ENV`], else `token_file`, else `token`
    /// (as resolved by [`Config::resolve_secrets`]; before that, `token`).
    pub fn token(&self) -> Option<&str> {
        ResolvedToken::in_effect(&self.resolved_token, &self.token)
    }

    /// The deadline for reading one request body.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms.get())
    }

    /// The `Host` values the push API answers (valid once the config is validated).
    pub fn host_policy(&self) -> Result<HostPolicy, PatternError> {
        HostPolicy::new(self.listen.0.ip().is_loopback(), &self.allowed_hosts)
    }
}

/// The `[limits]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest message a client may send, in bytes, after fragments are joined (close 1009 above).
    #[serde(deserialize_with = "in_range::<_, 1, { 1 << 30 }>")]
    pub max_message_size: usize,
    /// Messages that may wait for one connection (not yet taken by its socket) before it
    /// counts as stalled and is cut off.
    #[serde(deserialize_with = "in_range::<_, 1, { 1 << 20 }>")]
    pub outbound_queue: usize,
    /// Payload bytes that may wait for one connection before it counts as stalled (one message
    /// larger than this still fits into an empty queue).
    #[serde(deserialize_with = "positive")]
    pub outbound_queue_bytes: usize,
    /// Messages per second one client may send (each publish in a batch counts); more closes
    /// it with 1008. The burst allowed is one second's worth.
    #[serde(deserialize_with = "positive")]
    pub max_messages_per_second: u32,
    /// Bytes per second one client may send; more closes it with 1008.
    pub max_bytes_per_second: u64,
    /// How often the server pings each connection.
    #[serde(deserialize_with = "positive")]
    pub heartbeat_interval_ms: NonZeroU64,
    /// How long a connection may stay silent (no frame, no pong) before it is closed.
    #[serde(deserialize_with = "positive")]
    pub heartbeat_timeout_ms: NonZeroU64,
    /// Channels plus topic prefixes one connection may hold (bounds the hub's memory).
    #[serde(deserialize_with = "positive")]
    pub max_subscriptions: NonZeroUsize,
    /// Bytes of channel names plus topic prefixes one connection may hold: with
    /// `max_subscriptions` it bounds what one connection's subscriptions cost the hub. At least
    /// one channel name of the longest kind must fit.
    #[serde(deserialize_with = "in_range::<_, MAX_CHANNEL_LEN, { 1 << 30 }>")]
    pub max_subscription_bytes: usize,
    /// Distinct channels plus distinct topic prefixes the hub holds for all connections: bounds
    /// the channel index however many connections there are.
    #[serde(deserialize_with = "in_range::<_, 1, { 1 << 32 }>")]
    pub max_channels: usize,
    /// Calls one JSON-RPC batch may hold; a longer batch gets one -32600 error.
    #[serde(deserialize_with = "in_range::<_, 1, 10_000>")]
    pub max_batch: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_size: 1024 * 1024,
            outbound_queue: 1_024,
            outbound_queue_bytes: 1024 * 1024,
            max_messages_per_second: 1_000,
            max_bytes_per_second: 16 * 1024 * 1024,
            heartbeat_interval_ms: NonZeroU64::new(10_000).expect("positive literal"),
            heartbeat_timeout_ms: NonZeroU64::new(30_000).expect("positive literal"),
            max_subscriptions: NonZeroUsize::new(1_024).expect("positive literal"),
            max_subscription_bytes: 64 * 1024,
            max_channels: 100_000,
            max_batch: crate::dialect::jsonrpc::DEFAULT_MAX_BATCH,
        }
    }
}

impl LimitsConfig {
    /// The ping interval as a `Duration`.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.get())
    }

    /// The silence timeout as a `Duration`.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms.get())
    }

    /// The hub's subscription limits.
    pub fn subscriptions(&self) -> SubscriptionLimits {
        SubscriptionLimits {
            per_connection: self.max_subscriptions.get(),
            bytes_per_connection: self.max_subscription_bytes,
            channels: self.max_channels,
        }
    }
}

/// The `[backend]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// Which backend receives the frames of relay routes.
    pub kind: BackendKind,
    /// The http backend's request format.
    pub format: RelayFormat,
    /// socketdock: the message URL; ws2api: the API base URL (`{url}/{id}`).
    pub url: Option<HttpUrl>,
    /// socketdock: optional URL told about each new connection.
    pub connect_url: Option<HttpUrl>,
    /// socketdock: URL told about each ended connection.
    pub disconnect_url: Option<HttpUrl>,
    /// socketdock: the push API's public base URL (SocketDock's `--endpoint`), used to build
    /// `meta.send` and `meta.disconnect` so backends push to the right instance.
    pub external_url: Option<PublicUrl>,
    /// Timeout for opening a TCP connection to the backend.
    #[serde(deserialize_with = "positive")]
    pub connect_timeout_ms: NonZeroU64,
    /// Deadline for one callout, retries included.
    #[serde(deserialize_with = "positive")]
    pub request_timeout_ms: NonZeroU64,
    /// Callouts one worker thread may have in flight; more are refused (the client is told).
    #[serde(deserialize_with = "positive")]
    pub max_in_flight: NonZeroUsize,
    /// Frames one connection may have waiting for the backend before it is closed with 1008
    /// (it also bounds a connection's requests waiting for the authorization hook, so it
    /// applies whatever the backend: 0 would close every connection at its first subscribe).
    #[serde(deserialize_with = "positive")]
    pub max_pending_per_connection: usize,
    /// How long the disconnect notice of an ended connection is retried while the backend is
    /// down or failing; a notice is small and should outlive a short outage.
    #[serde(deserialize_with = "positive")]
    pub notice_retry_ms: NonZeroU64,
    /// Disconnect notices kept for retries across all workers; beyond it a failed notice is
    /// dropped (and logged), so an outage cannot grow memory without bound.
    #[serde(deserialize_with = "positive")]
    pub max_pending_notices: NonZeroUsize,
    /// Not a key: the largest answer body read from the backend, `limits.max_message_size`
    /// (copied in when the file is parsed), the same limit client messages have.
    #[serde(skip)]
    pub max_answer_size: usize,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: BackendKind::Loopback,
            format: RelayFormat::SocketDock,
            url: None,
            connect_url: None,
            disconnect_url: None,
            external_url: None,
            connect_timeout_ms: NonZeroU64::new(2_000).expect("positive literal"),
            request_timeout_ms: NonZeroU64::new(10_000).expect("positive literal"),
            max_in_flight: NonZeroUsize::new(4_096).expect("positive literal"),
            max_pending_per_connection: 64,
            notice_retry_ms: NonZeroU64::new(300_000).expect("positive literal"),
            max_pending_notices: NonZeroUsize::new(100_000).expect("positive literal"),
            max_answer_size: LimitsConfig::default().max_message_size,
        }
    }
}

/// How the http backend talks to the application.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayFormat {
    /// SocketDock's JSON envelopes and `/socket/{id}/send` push paths.
    #[default]
    SocketDock,
    /// ws2api's connect check, raw POST per frame, DELETE on close, `POST /{id}` push.
    Ws2Api,
}

impl RelayFormat {
    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            RelayFormat::SocketDock => "socketdock",
            RelayFormat::Ws2Api => "ws2api",
        }
    }
}

/// The backends a relay route can use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Echo every frame back to its sender (demos, conformance runs).
    #[default]
    Loopback,
    /// Relay frames to an HTTP application (see `format`).
    Http,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The URL path clients upgrade on, e.g. `/ws`.
    pub path: String,
    /// The dialect spoken on that path.
    pub dialect: DialectKind,
    /// topics: match topics exactly instead of by prefix.
    #[serde(default)]
    pub strict: bool,
    /// topics: clients may publish `{"topic": t, "body": b}`.
    #[serde(default)]
    pub client_publish: bool,
    /// groups: every message must carry `xrftoken` equal to this cookie of the handshake
    /// (AWX uses `csrftoken`).
    #[serde(default)]
    pub xrf_cookie: Option<String>,
    /// The connect hook: the application admits or refuses each handshake, and its answer's
    /// body becomes the first frame (AWX's `{"accept": true, "user": id}`). An http:// URL.
    #[serde(default, deserialize_with = "http_url_text")]
    pub accept_url: Option<String>,
    /// Origins whose pages may open WebSockets on this route, instead of
    /// `server.allowed_origins`.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// Whether a handshake on this route must carry `Origin`, instead of
    /// `server.require_origin`.
    #[serde(default)]
    pub require_origin: Option<bool>,
    /// A bearer token sent to the connect hook, so the application can tell the hub's calls
    /// from anyone else's; exclusive with `accept_token_file`.
    #[serde(default)]
    pub accept_token: Option<String>,
    /// A file holding that token (surrounding whitespace trimmed).
    #[serde(default)]
    pub accept_token_file: Option<PathBuf>,
    /// The token in effect, once [`Config::resolve_secrets`] has read its sources.
    #[serde(skip)]
    resolved_accept_token: Option<ResolvedToken>,
    /// permessage-deflate (RFC 7692) is accepted when a client offers it.
    #[serde(default)]
    pub compression: bool,
    /// compression: messages shorter than this many bytes go out uncompressed.
    #[serde(default = "default_compression_threshold")]
    pub compression_threshold: usize,
    /// compression: the zlib level the server compresses with, 1 (fastest) to 9 (smallest).
    #[serde(
        default = "default_compression_level",
        deserialize_with = "in_range::<_, 1, 9>"
    )]
    pub compression_level: usize,
    /// compression: every message the server sends starts from an empty window, so a
    /// publication is compressed once and shared by its recipients.
    #[serde(default = "default_true")]
    pub server_no_context_takeover: bool,
    /// compression: clients start every message from an empty window, so no inflater is kept
    /// per connection between messages.
    #[serde(default = "default_true")]
    pub client_no_context_takeover: bool,
    /// compression: the largest window the server compresses with, in bits.
    #[serde(
        default = "default_window_bits",
        deserialize_with = "in_range::<_, { crate::deflate::MIN_WINDOW_BITS }, { crate::deflate::MAX_WINDOW_BITS }>"
    )]
    pub server_max_window_bits: usize,
    /// compression: the largest window clients that offer `client_max_window_bits` are asked
    /// to compress with, in bits.
    #[serde(
        default = "default_window_bits",
        deserialize_with = "in_range::<_, { crate::deflate::MIN_WINDOW_BITS }, { crate::deflate::MAX_WINDOW_BITS }>"
    )]
    pub client_max_window_bits: usize,
}

impl RouteConfig {
    /// The bearer token sent to the connect hook, from `accept_token_file` or `accept_token`.
    pub fn accept_token(&self) -> Option<&str> {
        ResolvedToken::in_effect(&self.resolved_accept_token, &self.accept_token)
    }
}

fn default_compression_threshold() -> usize {
    crate::deflate::DEFAULT_THRESHOLD
}

fn default_compression_level() -> usize {
    crate::deflate::DEFAULT_LEVEL
}

fn default_true() -> bool {
    true
}

fn default_window_bits() -> usize {
    crate::deflate::MAX_WINDOW_BITS
}

/// The `[log]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Default level when RUST_LOG is not set: error, warn, info, debug or trace.
    pub level: String,
    /// How each line is written: `text` for people, `json` (one object per line) for shippers.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// The log line formats (see `logging.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `[time LEVEL target] id=... message`.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message and the record's fields.
    Json,
}

fn default_routes() -> Vec<RouteConfig> {
    vec![
        default_route("/ws", DialectKind::Raw),
        default_route("/rpc", DialectKind::JsonRpc),
    ]
}

/// A route on `path` speaking `dialect`, every other key at its default.
fn default_route(path: &str, dialect: DialectKind) -> RouteConfig {
    RouteConfig {
        path: path.to_owned(),
        dialect,
        strict: false,
        client_publish: false,
        xrf_cookie: None,
        accept_url: None,
        allowed_origins: None,
        require_origin: None,
        accept_token: None,
        accept_token_file: None,
        resolved_accept_token: None,
        compression: false,
        compression_threshold: default_compression_threshold(),
        compression_level: default_compression_level(),
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: default_window_bits(),
        client_max_window_bits: default_window_bits(),
    }
}

/// A socket address read from a string such as `127.0.0.1:8080`, with an error that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address(pub SocketAddr);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Address::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Address {
    /// Parse `host:port`; the error names the value and the expected form.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.parse().map(Address).map_err(|_| {
            format!("invalid address `{text}`: expected IP:PORT such as 127.0.0.1:8080")
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A URL the hub calls: plain `http://` (TLS to the application is not built in: a sidecar or
/// the application's own proxy terminates it) that parses as a URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    /// Parse an `http://` URL; the error names the value.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("http://") && text.parse::<awc::http::Uri>().is_ok() {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!("`{text}` is not an http:// URL"))
        }
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HttpUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A URL the hub only hands to the application (`backend.external_url`): `http://` or
/// `https://`, since the push API may well sit behind a TLS proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(String);

impl PublicUrl {
    /// Parse an `http://` or `https://` URL; the error names the value.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("http://") || text.starts_with("https://") {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!("`{text}` is not an http:// or https:// URL"))
        }
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for PublicUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PublicUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An `http://` URL read as plain text, for keys whose readers take a `String`.
fn http_url_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    HttpUrl::deserialize(deserializer).map(|url| Some(url.0))
}

/// The number types [`positive`] reads into.
trait FromPositive: Sized {
    /// `n` in this type, if it fits.
    fn from_positive(n: NonZeroU64) -> Option<Self>;
}

impl FromPositive for NonZeroU64 {
    fn from_positive(n: NonZeroU64) -> Option<Self> {
        Some(n)
    }
}

impl FromPositive for NonZeroUsize {
    fn from_positive(n: NonZeroU64) -> Option<Self> {
        n.try_into().ok()
    }
}

impl FromPositive for usize {
    fn from_positive(n: NonZeroU64) -> Option<Self> {
        n.get().try_into().ok()
    }
}

impl FromPositive for u32 {
    fn from_positive(n: NonZeroU64) -> Option<Self> {
        n.get().try_into().ok()
    }
}

/// Read a number that must be greater than 0 (a `NonZero*`, or a plain number for keys whose
/// readers take one); 0 is refused while the file is read, with the key named.
fn positive<'de, D: Deserializer<'de>, T: FromPositive>(deserializer: D) -> Result<T, D::Error> {
    let n = u64::deserialize(deserializer)?;
    let n = NonZeroU64::new(n).ok_or_else(|| serde::de::Error::custom("must be greater than 0"))?;
    T::from_positive(n).ok_or_else(|| serde::de::Error::custom(format!("{n} is too large")))
}

/// [`positive`] for an optional key.
fn positive_if_set<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    positive(deserializer).map(Some)
}

/// Read a number in `MIN..=MAX`; another is refused while the file is read, with the key named.
fn in_range<'de, D: Deserializer<'de>, const MIN: usize, const MAX: usize>(
    deserializer: D,
) -> Result<usize, D::Error> {
    let n = u64::deserialize(deserializer)?;
    usize::try_from(n)
        .ok()
        .filter(|n| (MIN..=MAX).contains(n))
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is out of range {MIN}..={MAX}")))
}

/// The reverse proxies whose X-Forwarded-For header is believed: addresses (`10.1.2.3`, `::1`)
/// and CIDR ranges (`10.0.0.0/8`, `fd00::/8`), read from strings with an error that names the
/// entry. A range with host bits set (`10.0.0.1/8`) is refused: it is almost always a typo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Parse a list of entries; the error names the first bad one and the expected form.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        entries
            .iter()
            .map(|entry| Self::parse_entry(entry.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    fn parse_entry(entry: &str) -> Result<ipnet::IpNet, String> {
        let expected = "expected an IP address or a CIDR range such as 10.0.0.0/8 or fd00::/8";
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(ipnet::IpNet::from(ip));
        }
        let net: ipnet::IpNet = entry
            .parse()
            .map_err(|_| format!("invalid trusted proxy `{entry}`: {expected}"))?;
        if net.trunc() != net {
            return Err(format!(
                "invalid trusted proxy `{entry}`: host bits are set; the range is `{}`",
                net.trunc()
            ));
        }
        Ok(net)
    }

    /// Whether `ip` is one of the trusted proxies (an IPv4 peer seen as `::ffff:a.b.c.d` counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(deserializer)?;
        TrustedProxies::parse(&entries).map_err(serde::de::Error::custom)
    }
}

/// A configuration that could not be read or is not valid; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown key or a value of the wrong type.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// A value is well-formed but not allowed.
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// A secret given as a key or as a file naming it (exclusive): the file's contents, trimmed,
/// or the key's value. The error names the key: both set, a file that cannot be read or is
/// empty.
fn read_secret(
    origin: &str,
    (key, value): (&str, &Option<String>),
    (file_key, file): (&str, &Option<PathBuf>),
) -> Result<Option<String>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        origin: origin.to_owned(),
        key: file_key.to_owned(),
        message,
    };
    let Some(path) = file else {
        return Ok(value.clone());
    };
    if value.is_some() {
        return Err(invalid(format!("and {key} are both set; keep one of them")));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("cannot read `{}`: {e}", path.display())))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid(format!(
            "`{}` is empty; put the secret in it",
            path.display()
        )));
    }
    Ok(Some(text.to_owned()))
}

/// Paths the push API owns when it shares the WebSocket listener.
const PUSH_PATHS: [&str; 3] = ["/api", "/healthz", "/readyz"];

// --- Keys from the environment ---

/// The prefix of the environment variables that set config keys:
/// `SWITCHBOARD_<SECTION>_<KEY>` sets `section.key`.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Variables with [`ENV_PREFIX`] that are not config keys: the push token (read by
/// [`Config::resolve_secrets`], where it wins over `push.token` and `push.token_file`) and
/// the operator commands' own variables.
const ENV_NOT_KEYS: [&str; 3] = [PUSH_TOKEN_ENV, "SWITCHBOARD_PUSH_URL", "SWITCHBOARD_TOKEN"];

/// The sections of the config file, as the environment names them.
const SECTIONS: [&str; 7] = [
    "server",
    "push",
    "limits",
    "backend",
    "log",
    "authorization",
    "routes",
];

/// Config keys set from environment variables (see [`ENV_PREFIX`]), applied over the file.
#[derive(Debug, Clone, Default)]
pub struct EnvOverrides {
    /// The variables with the prefix, sorted by name, whole `SWITCHBOARD_ROUTES` first.
    vars: Vec<(String, String)>,
}

/// One variable mapped to its key.
struct EnvKey<'a> {
    /// The variable's name.
    var: &'a str,
    /// The key's path in the file: `["server", "listen"]`, `["routes"]`, `["routes", "0", "path"]`.
    path: Vec<String>,
    /// The raw text of the variable.
    text: &'a str,
}

impl EnvKey<'_> {
    /// The key as errors name it (`server.listen`, `routes[0].path`).
    fn key(&self) -> String {
        match self.path.as_slice() {
            [routes, index, key] => format!("{routes}[{index}].{key}"),
            parts => parts.join("."),
        }
    }
}

impl EnvOverrides {
    /// The process environment's config variables.
    pub fn from_env() -> Self {
        Self::from_pairs(std::env::vars())
    }

    /// The config variables among `pairs` (name, value).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut vars: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with(ENV_PREFIX) && !ENV_NOT_KEYS.contains(&name.as_str())
            })
            .collect();
        vars.sort_by_key(|(name, _)| (name != "SWITCHBOARD_ROUTES", name.clone()));
        Self { vars }
    }

    /// Whether no variable sets a key.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The variables' names, for messages.
    pub fn names(&self) -> Vec<&str> {
        self.vars.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// Map each variable to its key; the error names a variable that maps to none.
    fn keys(&self) -> Result<Vec<EnvKey<'_>>, ConfigError> {
        self.vars
            .iter()
            .map(|(var, text)| {
                let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
                let unknown = |why: String| ConfigError::Invalid {
                    origin: "environment".into(),
                    key: var.clone(),
                    message: why,
                };
                let section = SECTIONS
                    .into_iter()
                    .find(|s| rest == *s || rest.starts_with(&format!("{s}_")))
                    .ok_or_else(|| {
                        unknown(format!(
                            "names no config section: use SWITCHBOARD_<SECTION>_<KEY> with a section of {}",
                            SECTIONS.join(", ")
                        ))
                    })?;
                let key = rest[section.len()..].trim_start_matches('_');
                let path = match (section, key.split_once('_')) {
                    ("routes", _) if key.is_empty() => vec![section.to_owned()],
                    ("routes", Some((index, key)))
                        if !key.is_empty() && index.parse::<usize>().is_ok() =>
                    {
                        vec![section.to_owned(), index.to_owned(), key.to_owned()]
                    }
                    ("routes", _) => {
                        return Err(unknown(
                            "use SWITCHBOARD_ROUTES (the whole array) or SWITCHBOARD_ROUTES_<INDEX>_<KEY>".into(),
                        ))
                    }
                    _ if key.is_empty() => {
                        return Err(unknown(format!("names the section `{section}` but no key")))
                    }
                    _ => vec![section.to_owned(), key.to_owned()],
                };
                Ok(EnvKey { var, path, text })
            })
            .collect()
    }
}

/// A variable's text as a TOML value (`4`, `true`, `["a", "b"]`, `{ path = "/ws" }`), or as
/// a string when it is not one (`127.0.0.1:8080`, `info`).
fn env_value(text: &str) -> toml::Value {
    format!("value = {text}")
        .parse::<toml::Table>()
        .ok()
        .filter(|table| table.len() == 1)
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

/// Set the key of `env` in the file's table to `value`.
fn apply_env(table: &mut toml::Table, env: &EnvKey<'_>, value: toml::Value) -> Result<(), String> {
    match env.path.as_slice() {
        [section] => {
            table.insert(section.clone(), value);
        }
        [section, key] => {
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(section) = entry else {
                return Err(format!("`{section}` in the file is not a section"));
            };
            section.insert(key.clone(), value);
        }
        [routes, index, key] => {
            let count = table
                .get(routes)
                .and_then(toml::Value::as_array)
                .map_or(0, Vec::len);
            let route = table
                .get_mut(routes)
                .and_then(toml::Value::as_array_mut)
                .and_then(|routes| routes.get_mut(index.parse::<usize>().unwrap_or(usize::MAX)))
                .and_then(toml::Value::as_table_mut)
                .ok_or_else(|| {
                    format!(
                        "there is no routes[{index}]: the file (or SWITCHBOARD_ROUTES) has {count} route(s); the environment changes routes, it does not add them one by one"
                    )
                })?;
            route.insert(key.clone(), value);
        }
        _ => unreachable!("EnvOverrides::keys makes paths of one to three parts"),
    }
    Ok(())
}

// --- end of keys from the environment ---

impl Config {
    /// Read and validate a config file with the environment's keys applied over it, and the
    /// push token's sources (`push.token_file` and [`PUSH_TOKEN_ENV`]) read.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let mut config = Self::read_layered(path, &EnvOverrides::from_env())?;
        config.resolve_secrets(&origin, std::env::var(PUSH_TOKEN_ENV).ok())?;
        config.validate(&origin)?;
        Ok(config)
    }

    /// Read and parse a config file, without reading token files or validating it.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        Self::read_layered(path, &EnvOverrides::default())
    }

    /// Read and parse a config file with `env`'s keys applied over it, without reading token
    /// files or validating it.
    pub fn read_layered(path: &Path, env: &EnvOverrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_layered(&text, &path.display().to_string(), env)
    }

    /// Parse a config from TOML text (without validating it); `origin` names the text in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| Self::parse_error(origin, &e, None))?;
        Ok(Self::derived(config))
    }

    /// [`Config::parse`] with `env`'s keys applied over the text. An error about a key the
    /// environment set names the key and the variable; any other names the key and, when the
    /// file alone has it, the file's line.
    pub fn parse_layered(
        text: &str,
        origin: &str,
        env: &EnvOverrides,
    ) -> Result<Self, ConfigError> {
        if env.is_empty() {
            return Self::parse(text, origin);
        }
        let keys = env.keys()?;
        // A file that is not TOML at all: its own error, with the line.
        let Ok(mut table) = text.parse::<toml::Table>() else {
            return Self::parse(text, origin);
        };
        let mut as_text = vec![false; keys.len()];
        loop {
            for (env_key, as_text) in keys.iter().zip(&as_text) {
                let value = match as_text {
                    true => toml::Value::String(env_key.text.to_owned()),
                    false => env_value(env_key.text),
                };
                apply_env(&mut table, env_key, value).map_err(|message| ConfigError::Invalid {
                    origin: "environment".into(),
                    key: format!("{} ({})", env_key.key(), env_key.var),
                    message,
                })?;
            }
            let error = match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
                Ok(config) => return Ok(Self::derived(config)),
                Err(error) => error,
            };
            let path = error.path().to_string();
            let message = error.inner().to_string();
            let culprit = keys.iter().position(|k| {
                let key = k.key();
                key == path
                    || (k.path.len() > 1
                        && path == key.rsplit_once('.').map_or("", |(section, _)| section)
                        && message.contains(&format!("`{}`", k.path[k.path.len() - 1])))
            });
            match culprit {
                // `123` meant as a string (a token): read the variable as text and try again.
                Some(i) if !as_text[i] && message.contains("invalid type") => as_text[i] = true,
                Some(i) => {
                    return Err(Self::parse_error(
                        "environment",
                        &error,
                        Some(&format!("`{}` ({})", keys[i].key(), keys[i].var)),
                    ))
                }
                None => {
                    // The file's own mistake: with its line when the file alone shows it.
                    Self::parse(text, origin)?;
                    return Err(Self::parse_error(origin, &error, None));
                }
            }
        }
    }

    /// A parse error naming its key (`backend.url`, `routes[0].path`), or `named` (the key
    /// and its variable) instead.
    fn parse_error<E: fmt::Display>(
        origin: &str,
        error: &serde_path_to_error::Error<E>,
        named: Option<&str>,
    ) -> ConfigError {
        let message = error.inner().to_string();
        // A `toml::Value` error ends with its own "in `key`" line: the key is named already.
        let message = message
            .split_once("\nin `")
            .map_or(message.as_str(), |(first, _)| first)
            .trim_end()
            .to_owned();
        let message = match (named, error.path().to_string().as_str()) {
            (Some(named), _) => format!("{named}: {message}"),
            (None, ".") => message,
            (None, key) => format!("`{key}`: {message}"),
        };
        ConfigError::Parse {
            origin: origin.to_owned(),
            message,
        }
    }

    /// The values derived from others once the file is read.
    fn derived(mut config: Self) -> Self {
        config.backend.max_answer_size = config.limits.max_message_size;
        config
    }

    /// Parse and validate a config from TOML text; `push.token_file` is read, the environment
    /// is not.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut config = Self::parse(text, origin)?;
        config.resolve_secrets(origin, None)?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Settle the secrets from their sources. The push token, highest first: `env` (the
    /// value of [`PUSH_TOKEN_ENV`], if set), then the contents of `push.token_file` (trimmed),
    /// then `push.token`. The hook tokens: `authorization.token_file` or `authorization.token`,
    /// and each route's `accept_token_file` or `accept_token`. Setting both a token and its
    /// file is an error, as is a source that is empty or a file that cannot be read.
    pub fn resolve_secrets(
        &mut self,
        origin: &str,
        env: Option<String>,
    ) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        let authorization = &self.authorization;
        let value = read_secret(
            origin,
            ("authorization.token", &authorization.token),
            ("authorization.token_file", &authorization.token_file),
        )?;
        self.authorization.resolved_token = Some(ResolvedToken { value });
        for (i, route) in self.routes.iter_mut().enumerate() {
            let value = read_secret(
                origin,
                (&format!("routes[{i}].accept_token"), &route.accept_token),
                (
                    &format!("routes[{i}].accept_token_file"),
                    &route.accept_token_file,
                ),
            )?;
            route.resolved_accept_token = Some(ResolvedToken { value });
        }
        let push = &self.push;
        let from_file = read_secret(
            origin,
            ("push.token", &push.token),
            ("push.token_file", &push.token_file),
        )?;
        let value = if let Some(env) = env {
            let env = env.trim();
            if env.is_empty() {
                return Err(invalid(
                    PUSH_TOKEN_ENV,
                    "is set but empty; unset it or set a secret".into(),
                ));
            }
            Some(env.to_owned())
        } else {
            from_file
        };
        self.push.resolved_token = Some(ResolvedToken { value });
        Ok(())
    }

    /// The `[cluster]` rules: a node name with a URL, and timings that let a lease be renewed.
    fn validate_cluster(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        let cluster = &self.cluster;
        if cluster.url.is_none() {
            return Ok(());
        }
        match cluster.node.as_deref() {
            None => {
                return Err(invalid(
                    "cluster.node",
                    "is required with cluster.url: name this node (unique in the cluster, kept across restarts)".into(),
                ))
            }
            Some(node)
                if node.is_empty()
                    || node.len() > 64
                    || !node
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
            {
                return Err(invalid(
                    "cluster.node",
                    format!("`{node}`: use 1 to 64 of A-Z a-z 0-9 - _ ."),
                ))
            }
            Some(_) => {}
        }
        if cluster.key_prefix.is_empty()
            || cluster.key_prefix.len() > 64
            || cluster
                .key_prefix
                .bytes()
                .any(|b| !b.is_ascii_graphic() || b"*?[]\\".contains(&b))
        {
            return Err(invalid(
                "cluster.key_prefix",
                format!(
                    "`{}`: use 1 to 64 printable characters without spaces or * ? [ ] \\",
                    cluster.key_prefix
                ),
            ));
        }
        if cluster.lease_ms.get() < 4 * cluster.request_timeout_ms.get() {
            return Err(invalid(
                "cluster.lease_ms",
                format!(
                    "{} must be at least 4 x cluster.request_timeout_ms ({}): the lease is renewed every quarter of it, each renewal taking up to the request timeout",
                    cluster.lease_ms, cluster.request_timeout_ms
                ),
            ));
        }
        Ok(())
    }

    /// Check the rules between keys, which no single type can hold (every value is already
    /// valid on its own: see the module docs).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        self.validate_cluster(origin)?;
        let limits = &self.limits;
        if limits.heartbeat_interval_ms >= limits.heartbeat_timeout_ms {
            return Err(invalid(
                "limits.heartbeat_interval_ms",
                format!(
                    "{} must be shorter than limits.heartbeat_timeout_ms ({}), or a live client would time out between two pings",
                    limits.heartbeat_interval_ms, limits.heartbeat_timeout_ms
                ),
            ));
        }
        if limits.max_bytes_per_second < limits.max_message_size as u64 {
            return Err(invalid(
                "limits.max_bytes_per_second",
                format!(
                    "{} is less than limits.max_message_size ({}): a message of the largest size could never be sent",
                    limits.max_bytes_per_second, limits.max_message_size
                ),
            ));
        }
        let push = &self.push;
        if push.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(invalid(
                "push.token",
                "is empty; remove the key or set a secret".into(),
            ));
        }
        // A config built with `parse` alone would otherwise run without its tokens.
        let mut unread = vec![(
            "push.token_file".to_owned(),
            push.token_file.is_some() && push.resolved_token.is_none(),
        )];
        unread.push((
            "authorization.token_file".to_owned(),
            self.authorization.token_file.is_some() && self.authorization.resolved_token.is_none(),
        ));
        for (i, route) in self.routes.iter().enumerate() {
            unread.push((
                format!("routes[{i}].accept_token_file"),
                route.accept_token_file.is_some() && route.resolved_accept_token.is_none(),
            ));
        }
        if let Some((key, _)) = unread.into_iter().find(|(_, unread)| *unread) {
            return Err(invalid(
                &key,
                "has not been read: load the config with Config::load or from_toml".into(),
            ));
        }
        // (token key, its value, whether its file is set, whether the hook's URL is set).
        let authorization = &self.authorization;
        let mut hook_tokens = vec![(
            "authorization.token".to_owned(),
            authorization.token.as_deref(),
            authorization.token_file.is_some(),
            authorization.url.is_some(),
        )];
        for (i, route) in self.routes.iter().enumerate() {
            hook_tokens.push((
                format!("routes[{i}].accept_token"),
                route.accept_token.as_deref(),
                route.accept_token_file.is_some(),
                route.accept_url.is_some(),
            ));
        }
        for (key, token, file, hooked) in hook_tokens {
            if token.is_some_and(|t| t.trim().is_empty()) {
                return Err(invalid(
                    &key,
                    "is empty; remove the key or set a secret".into(),
                ));
            }
            if (token.is_some() || file) && !hooked {
                return Err(invalid(
                    &key,
                    "is sent to the hook, and no hook URL is set for it".into(),
                ));
            }
        }
        if push.token().is_none() && !push.listen.0.ip().is_loopback() {
            return Err(invalid(
                "push.token",
                format!(
                    "is required when push.listen ({}) is not a loopback address: anyone who reaches it could push to every client; set push.token, push.token_file or {PUSH_TOKEN_ENV}",
                    push.listen
                ),
            ));
        }
        let mut origin_lists = vec![(
            "server.allowed_origins".to_owned(),
            true,
            &self.server.allowed_origins,
        )];
        origin_lists.push((
            "push.allowed_origins".to_owned(),
            false,
            &push.allowed_origins,
        ));
        for (i, route) in self.routes.iter().enumerate() {
            origin_lists.push((
                format!("routes[{i}].allowed_origins"),
                true,
                &route.allowed_origins,
            ));
        }
        for (key, honour_any, list) in origin_lists {
            if let Err((i, e)) = OriginRule::new(list.as_deref(), honour_any, false, &key) {
                return Err(invalid(&format!("{key}[{i}]"), e.to_string()));
            }
        }
        for (i, host) in push.allowed_hosts.iter().enumerate() {
            if let Err(e) = HostPolicy::new(true, &[host]) {
                return Err(invalid(&format!("push.allowed_hosts[{i}]"), e.to_string()));
            }
        }
        if self.backend.kind == BackendKind::Http {
            let backend = &self.backend;
            if backend.url.is_none() {
                return Err(invalid(
                    "backend.url",
                    "is required when backend.kind = \"http\"".into(),
                ));
            }
            if backend.notice_retry_ms < backend.request_timeout_ms {
                return Err(invalid(
                    "backend.notice_retry_ms",
                    format!(
                        "{} must be at least backend.request_timeout_ms ({}), or a disconnect notice would get less time than a frame",
                        backend.notice_retry_ms, backend.request_timeout_ms
                    ),
                ));
            }
        }
        if self.routes.is_empty() {
            return Err(invalid("routes", "at least one route is needed".into()));
        }
        let shared_listener = self.shares_listener();
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}].path");
            let path = route.path.as_str();
            if !path.starts_with('/') || path.contains(char::is_whitespace) {
                return Err(invalid(
                    &key,
                    format!("`{path}` must start with `/` and contain no spaces"),
                ));
            }
            if path == "/" && self.server.page {
                return Err(invalid(
                    &key,
                    "`/` is the sample page; set server.page = false to use it as a route".into(),
                ));
            }
            if shared_listener && path.contains("{id}") {
                return Err(invalid(
                    &key,
                    format!("`{path}` would match the push API's paths on the shared listener; give push.listen its own address"),
                ));
            }
            if shared_listener && PUSH_PATHS.iter().any(|p| path.starts_with(p)) {
                return Err(invalid(
                    &key,
                    format!("`{path}` collides with the push API on the shared listener"),
                ));
            }
            for (name, set) in [
                ("strict", route.strict),
                ("client_publish", route.client_publish),
            ] {
                if set && route.dialect != DialectKind::Topics {
                    return Err(invalid(
                        &format!("routes[{i}].{name}"),
                        "applies to the topics dialect only".into(),
                    ));
                }
            }
            if route.xrf_cookie.is_some() && route.dialect != DialectKind::Groups {
                return Err(invalid(
                    &format!("routes[{i}].xrf_cookie"),
                    "applies to the groups dialect only".into(),
                ));
            }
            if self.routes[..i].iter().any(|r| r.path == route.path) {
                return Err(invalid(&key, format!("`{path}` is listed twice")));
            }
        }
        if self.log.level.parse::<log::LevelFilter>().is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "`{}` is not one of off, error, warn, info, debug, trace",
                    self.log.level
                ),
            ));
        }
        Ok(())
    }

    /// The origin rule of the WebSocket handshake on route `index` (valid once the config is
    /// validated): the route's list and `require_origin` where set, else the server's.
    pub fn handshake_origins(&self, index: usize) -> OriginRule {
        let route = &self.routes[index];
        let (key, list) = match &route.allowed_origins {
            Some(list) => (format!("routes[{index}].allowed_origins"), Some(list)),
            None => (
                "server.allowed_origins".to_owned(),
                self.server.allowed_origins.as_ref(),
            ),
        };
        let require = route.require_origin.unwrap_or(self.server.require_origin);
        OriginRule::new(list.map(Vec::as_slice), true, require, &key)
            .expect("origin lists are checked by Config::validate")
    }

    /// The origin rule of the push API (valid once the config is validated):
    /// `push.allowed_origins` where set, else `server.allowed_origins` without `*`. Requests
    /// without `Origin` always pass (backends send none).
    pub fn push_origins(&self) -> OriginRule {
        let rule = |list: Option<&Vec<String>>, honour_any, key: &str| {
            OriginRule::new(list.map(Vec::as_slice), honour_any, false, key)
                .expect("origin lists are checked by Config::validate")
        };
        match &self.push.allowed_origins {
            Some(list) => rule(Some(list), false, "push.allowed_origins"),
            None => rule(
                self.server.allowed_origins.as_ref(),
                true,
                "server.allowed_origins",
            )
            .without_any("push.allowed_origins"),
        }
    }

    /// How long `/readyz` says "draining" before the sockets are closed.
    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.server.drain_delay_ms)
    }

    /// Whether the push API and the WebSocket routes share one listener.
    pub fn shares_listener(&self) -> bool {
        self.push.listen == self.server.listen
    }

    /// The graceful-shutdown deadline.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml")
    }

    #[test]
    fn empty_file_takes_defaults() {
        let config = check("").unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.backend.kind, BackendKind::Loopback);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = check("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn bad_address_is_named() {
        let err = check("[push]\nlisten = \"localhost\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("listen") && text.contains("localhost"),
            "{text}"
        );
    }

    #[test]
    fn interval_must_be_shorter_than_timeout() {
        let err = check("[limits]\nheartbeat_interval_ms = 5000\nheartbeat_timeout_ms = 5000\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("limits.heartbeat_interval_ms"),
            "{err}"
        );
    }

    #[test]
    fn public_push_api_needs_a_token() {
        let err = check("[push]\nlisten = \"0.0.0.0:8081\"\n").unwrap_err();
        assert!(err.to_string().contains("push.token"), "{err}");
        check("[push]\nlisten = \"0.0.0.0:8081\"\ntoken = \"s3cret\"\n").unwrap();
    }

    #[test]
    fn the_push_token_comes_from_the_environment_the_file_or_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  from-file\n").unwrap();
        let with_file = format!(
            "[push]\nlisten = \"0.0.0.0:8081\"\ntoken_file = {:?}\n",
            file.display().to_string()
        );
        let resolved = |text: &str, env: Option<&str>| {
            let mut config = Config::parse(text, "test.toml").unwrap();
            config.resolve_secrets("test.toml", env.map(str::to_owned))?;
            config.validate("test.toml")?;
            Ok::<_, ConfigError>(config.push.token().map(str::to_owned))
        };
        assert_eq!(
            resolved(&with_file, None).unwrap().as_deref(),
            Some("from-file")
        );
        assert_eq!(
            resolved(&with_file, Some("from-env")).unwrap().as_deref(),
            Some("from-env")
        );
        // A public listener counts the environment as a token source.
        let public = "[push]\nlisten = \"0.0.0.0:8081\"\n";
        assert_eq!(resolved(public, Some("e")).unwrap().as_deref(), Some("e"));
        let err = resolved(public, None).unwrap_err().to_string();
        assert!(
            err.contains("push.token") && err.contains("SWITCHBOARD_PUSH_TOKEN"),
            "{err}"
        );
        let err = resolved(public, Some(" ")).unwrap_err().to_string();
        assert!(err.contains("SWITCHBOARD_PUSH_TOKEN"), "{err}");

        let both = format!("{with_file}token = \"x\"\n");
        let err = resolved(&both, None).unwrap_err().to_string();
        assert!(err.contains("push.token_file"), "{err}");
        std::fs::write(&file, "\n").unwrap();
        let err = resolved(&with_file, None).unwrap_err().to_string();
        assert!(
            err.contains("push.token_file") && err.contains("empty"),
            "{err}"
        );
        let missing = "[push]\ntoken_file = \"/nonexistent/token\"\n";
        let err = resolved(missing, None).unwrap_err().to_string();
        assert!(
            err.contains("push.token_file") && err.contains("cannot read"),
            "{err}"
        );
        // Parsed but never resolved: refused rather than run without its token.
        let config = Config::parse(missing, "test.toml").unwrap();
        assert!(config.validate("test.toml").is_err());
    }

    #[test]
    fn push_origins_hosts_and_body_timeout_are_checked() {
        let config = check(
            "[push]\nallowed_origins = [\"https://app.example.com\", \"https://*.example.com\"]\nallowed_hosts = [\"push.internal\"]\n",
        )
        .unwrap();
        assert!(config
            .push_origins()
            .check(["https://a.example.com"], None)
            .is_ok());
        assert_eq!(config.push.body_timeout_ms.get(), 10_000);
        let err =
            check("[push]\nallowed_origins = [\"https://ok.example\", \"app.example.com\"]\n")
                .unwrap_err();
        assert!(err.to_string().contains("push.allowed_origins[1]"), "{err}");
        let err = check("[push]\nallowed_hosts = [\"push.internal:8081\"]\n").unwrap_err();
        assert!(err.to_string().contains("push.allowed_hosts[0]"), "{err}");
        let err = check("[push]\nbody_timeout_ms = 0\n").unwrap_err();
        assert!(err.to_string().contains("push.body_timeout_ms"), "{err}");
    }

    #[test]
    fn shipped_configs_are_valid() {
        for (name, text) in [
            ("config.toml", include_str!("../config.toml")),
            (
                "examples/socketdock.toml",
                include_str!("../examples/socketdock.toml"),
            ),
            (
                "examples/ws2api.toml",
                include_str!("../examples/ws2api.toml"),
            ),
            ("examples/awx.toml", include_str!("../examples/awx.toml")),
            (
                "examples/fedmsg.toml",
                include_str!("../examples/fedmsg.toml"),
            ),
            (
                "deploy/production.toml",
                include_str!("../deploy/production.toml"),
            ),
            (
                "bench/configs/hub.toml",
                include_str!("../bench/configs/hub.toml"),
            ),
            (
                "bench/configs/relay.toml",
                include_str!("../bench/configs/relay.toml"),
            ),
            (
                ".ci/conformance.toml",
                include_str!("../.ci/conformance.toml"),
            ),
        ] {
            if let Err(e) = check(text) {
                panic!("{name}: {e}");
            }
        }
    }

    #[test]
    fn every_shipped_config_is_in_the_list_above() {
        // A config added under one of these folders without a line in
        // `shipped_configs_are_valid` fails here.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let listed = [
            "config.toml",
            "examples/awx.toml",
            "examples/fedmsg.toml",
            "examples/socketdock.toml",
            "examples/ws2api.toml",
            "deploy/production.toml",
            "bench/configs/hub.toml",
            "bench/configs/relay.toml",
            ".ci/conformance.toml",
        ];
        for folder in ["examples", "deploy", "bench/configs", ".ci"] {
            for entry in std::fs::read_dir(root.join(folder)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "toml") {
                    let name = path
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    assert!(listed.contains(&name.as_str()), "{name} is not checked");
                }
            }
        }
    }

    #[test]
    fn urls_are_parsed_when_read_and_name_their_key() {
        for (text, key) in [
            ("[backend]\nurl = \"ftp://x\"\n", "`backend.url`"),
            (
                "[backend]\nconnect_url = \"app/connect\"\n",
                "`backend.connect_url`",
            ),
            (
                "[backend]\ndisconnect_url = \"https://app\"\n",
                "`backend.disconnect_url`",
            ),
            (
                "[backend]\nexternal_url = \"hub:8081\"\n",
                "`backend.external_url`",
            ),
            (
                "[authorization]\nurl = \"http://a b\"\n",
                "`authorization.url`",
            ),
            (
                "[[routes]]\npath = \"/x\"\ndialect = \"groups\"\naccept_url = \"ws://app\"\n",
                "`routes[0].accept_url`",
            ),
        ] {
            let err = check(text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("URL"), "{text}: {err}");
        }
        let config = check(
            "[backend]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/app/\"\nexternal_url = \"https://hub.example\"\n",
        )
        .unwrap();
        assert_eq!(
            config.backend.url.as_ref().map(HttpUrl::as_str),
            Some("http://127.0.0.1:9/app/")
        );
        assert_eq!(
            config.backend.external_url.as_ref().map(PublicUrl::as_str),
            Some("https://hub.example")
        );
        assert!(HttpUrl::parse("http://app:8000/hook").is_ok());
        assert!(
            HttpUrl::parse("https://app").is_err(),
            "TLS is not built in"
        );
        assert!(PublicUrl::parse("https://app").is_ok());
    }

    #[test]
    fn numbers_are_refused_when_read_with_their_key() {
        for (text, key, says) in [
            (
                "[push]\nbody_timeout_ms = 0",
                "push.body_timeout_ms",
                "greater than 0",
            ),
            (
                "[authorization]\ntimeout_ms = 0",
                "authorization.timeout_ms",
                "greater than 0",
            ),
            (
                "[limits]\nheartbeat_interval_ms = 0",
                "limits.heartbeat_interval_ms",
                "greater than 0",
            ),
            (
                "[limits]\nmax_message_size = 0",
                "limits.max_message_size",
                "1..=1073741824",
            ),
            (
                "[limits]\noutbound_queue = 1048577",
                "limits.outbound_queue",
                "out of range",
            ),
            (
                "[limits]\noutbound_queue_bytes = 0",
                "limits.outbound_queue_bytes",
                "greater than 0",
            ),
            (
                "[limits]\nmax_messages_per_second = 0",
                "limits.max_messages_per_second",
                "greater than 0",
            ),
            (
                "[limits]\nmax_messages_per_second = 4294967296",
                "limits.max_messages_per_second",
                "too large",
            ),
            (
                "[limits]\nmax_subscriptions = 0",
                "limits.max_subscriptions",
                "greater than 0",
            ),
            ("[server]\nworkers = 257", "server.workers", "0..=256"),
            (
                "[server]\nmax_connections = 0",
                "server.max_connections",
                "greater than 0",
            ),
            ("[server]\nworkers = -1", "server.workers", ""),
        ] {
            let err = check(&format!("{text}\n")).unwrap_err().to_string();
            assert!(
                err.contains(&format!("`{key}`")) && err.contains(says),
                "{text}: {err}"
            );
        }
        let config = check("[server]\nworkers = 0\nmax_connections = 5\n").unwrap();
        assert_eq!(
            (config.server.workers, config.server.max_connections),
            (0, Some(5))
        );
    }

    #[test]
    fn errors_carry_the_line_as_well_as_the_key() {
        let err = check("[server]\npage = true\n\n[backend]\nmax_in_flight = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml: `backend.max_in_flight`:") && err.contains("line 5"),
            "{err}"
        );
        // A value of the wrong type is named too.
        let err = check("[limits]\nmax_batch = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`limits.max_batch`"), "{err}");
    }

    #[test]
    fn http_backend_needs_an_http_url() {
        let err = check("[backend]\nkind = \"http\"\n").unwrap_err();
        assert!(err.to_string().contains("backend.url"), "{err}");
        let err = check("[backend]\nkind = \"http\"\nurl = \"ftp://x\"\n").unwrap_err();
        assert!(err.to_string().contains("backend.url"), "{err}");
    }

    #[test]
    fn trusted_proxies_take_addresses_and_ranges() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8", "fd00::/8", "192.0.2.7"]).unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(trusted.contains(&ip("10.200.3.4")));
        assert!(trusted.contains(&ip("fd12::1")));
        assert!(trusted.contains(&ip("192.0.2.7")));
        assert!(
            trusted.contains(&ip("::ffff:10.1.1.1")),
            "an IPv4-mapped peer"
        );
        assert!(!trusted.contains(&ip("11.0.0.1")));
        assert!(!trusted.contains(&ip("192.0.2.8")));
        assert!(!trusted.contains(&ip("fe80::1")));
        assert!(!TrustedProxies::default().contains(&ip("127.0.0.1")));
    }

    #[test]
    fn bad_trusted_proxies_are_named() {
        for (entry, needle) in [
            ("10.0.0.0/33", "10.0.0.0/33"),
            ("nginx", "nginx"),
            ("10.0.0.1/8", "the range is `10.0.0.0/8`"),
        ] {
            let err = check(&format!("[server]\ntrusted_proxies = [\"{entry}\"]\n")).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("trusted_proxies") && text.contains(needle),
                "{text}"
            );
        }
        let config = check("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n").unwrap();
        assert!(config
            .server
            .trusted_proxies
            .contains(&"::1".parse().unwrap()));
    }

    #[test]
    fn every_message_names_the_key_it_checks() {
        let http = "[backend]\nkind = \"http\"\nurl = \"http://127.0.0.1:1/\"\n";
        for (extra, key) in [
            ("request_timeout_ms = 0", "backend.request_timeout_ms"),
            ("connect_timeout_ms = 0", "backend.connect_timeout_ms"),
            ("max_in_flight = 0", "backend.max_in_flight"),
            (
                "max_pending_per_connection = 0",
                "backend.max_pending_per_connection",
            ),
            ("notice_retry_ms = 0", "backend.notice_retry_ms"),
            ("notice_retry_ms = 5000", "backend.notice_retry_ms"),
            ("max_pending_notices = 0", "backend.max_pending_notices"),
        ] {
            let err = check(&format!("{http}{extra}\n")).unwrap_err();
            assert!(
                err.to_string().contains(&format!("`{key}`")),
                "{extra}: {err}"
            );
        }
        // Whatever the backend: it also bounds requests waiting for the authorization hook.
        let err = check("[backend]\nmax_pending_per_connection = 0\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("`backend.max_pending_per_connection`"),
            "{err}"
        );
        let err = check("[[routes]]\npath = \"/x\"\ndialect = \"raw\"\nclient_publish = true\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("`routes[0].client_publish`"),
            "{err}"
        );
        let err =
            check("[[routes]]\npath = \"/x\"\ndialect = \"raw\"\nstrict = true\n").unwrap_err();
        assert!(err.to_string().contains("`routes[0].strict`"), "{err}");
    }

    #[test]
    fn answers_are_capped_at_max_message_size() {
        let config = check("[limits]\nmax_message_size = 4096\n").unwrap();
        assert_eq!(config.backend.max_answer_size, 4096);
        assert_eq!(check("").unwrap().backend.notice_retry_ms.get(), 300_000);
    }

    #[test]
    fn route_paths_are_checked() {
        let err = check("[[routes]]\npath = \"ws\"\ndialect = \"raw\"\n").unwrap_err();
        assert!(err.to_string().contains("routes[0].path"), "{err}");
        let err = check(
            "[push]\nlisten = \"127.0.0.1:8080\"\n[[routes]]\npath = \"/api/x\"\ndialect = \"raw\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("collides"), "{err}");
    }

    #[test]
    fn compression_window_bits_are_ranged_and_name_their_key() {
        let route = "[[routes]]\npath = \"/ws\"\ndialect = \"raw\"\ncompression = true\n";
        let config = check(route).unwrap();
        let r = &config.routes[0];
        assert!(r.compression && r.server_no_context_takeover && r.client_no_context_takeover);
        assert_eq!(
            (r.server_max_window_bits, r.compression_threshold),
            (15, 128)
        );
        for (text, key) in [
            (
                "server_max_window_bits = 8",
                "routes[0].server_max_window_bits",
            ),
            (
                "server_max_window_bits = 16",
                "routes[0].server_max_window_bits",
            ),
            (
                "client_max_window_bits = 8",
                "routes[0].client_max_window_bits",
            ),
        ] {
            let err = check(&format!("{route}{text}\n")).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("9..=15"), "{text}: {err}");
        }
    }

    #[test]
    fn subscription_and_batch_limits_have_defaults_and_ranges() {
        let limits = check("").unwrap().limits;
        assert_eq!(
            (
                limits.max_subscription_bytes,
                limits.max_channels,
                limits.max_batch
            ),
            (65_536, 100_000, 100)
        );
        assert_eq!(
            limits.subscriptions(),
            SubscriptionLimits {
                per_connection: 1_024,
                bytes_per_connection: 65_536,
                channels: 100_000,
            }
        );
        for (text, key) in [
            (
                "max_subscription_bytes = 255",
                "limits.max_subscription_bytes",
            ),
            (
                "max_subscription_bytes = 1073741825",
                "limits.max_subscription_bytes",
            ),
            ("max_channels = 0", "limits.max_channels"),
            ("max_batch = 0", "limits.max_batch"),
            ("max_batch = 10001", "limits.max_batch"),
        ] {
            let err = check(&format!("[limits]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = check("[limits]\nmax_batchs = 5\n").unwrap_err().to_string();
        assert!(err.contains("max_batchs"), "{err}");
        check("[limits]\nmax_subscription_bytes = 256\nmax_channels = 1\nmax_batch = 1\n").unwrap();
    }

    fn layered(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = EnvOverrides::from_pairs(
            vars.iter()
                .map(|(name, value)| (name.to_string(), value.to_string())),
        );
        Config::parse_layered(text, "test.toml", &env)
    }

    #[test]
    fn environment_keys_are_typed_and_win_over_the_file() {
        let config = layered(
            "[server]\nworkers = 2\n[[routes]]\npath = \"/a\"\ndialect = \"raw\"\n",
            &[
                ("SWITCHBOARD_SERVER_WORKERS", "4"),
                ("SWITCHBOARD_SERVER_LISTEN", "127.0.0.1:9000"),
                ("SWITCHBOARD_SERVER_PAGE", "false"),
                (
                    "SWITCHBOARD_SERVER_ALLOWED_ORIGINS",
                    "[\"https://a.example\"]",
                ),
                ("SWITCHBOARD_ROUTES_0_DIALECT", "jsonrpc"),
                ("SWITCHBOARD_LOG_FORMAT", "json"),
                // Not keys: the push token and the CLI's own variables.
                ("SWITCHBOARD_PUSH_TOKEN", "t"),
                ("SWITCHBOARD_PUSH_URL", "http://x"),
                ("SWITCHBOARD_TOKEN", "t"),
                ("OTHER_VAR", "1"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.workers, 4);
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:9000");
        assert!(!config.server.page);
        assert_eq!(
            config.server.allowed_origins,
            Some(vec!["https://a.example".to_owned()])
        );
        assert_eq!(config.routes[0].dialect, DialectKind::JsonRpc);
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(
            config.push.token(),
            None,
            "SWITCHBOARD_PUSH_TOKEN is resolved later"
        );
    }

    #[test]
    fn a_whole_routes_array_and_text_that_looks_like_a_number() {
        let config = layered(
            "",
            &[
                (
                    "SWITCHBOARD_ROUTES",
                    "[{ path = \"/x\", dialect = \"raw\" }, { path = \"/y\", dialect = \"topics\" }]",
                ),
                ("SWITCHBOARD_ROUTES_1_STRICT", "true"),
                ("SWITCHBOARD_PUSH_TOKEN_FILE", "2024"),
            ],
        )
        .unwrap();
        let paths: Vec<&str> = config.routes.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/x", "/y"]);
        assert!(config.routes[1].strict);
        assert_eq!(config.push.token_file, Some(PathBuf::from("2024")));
    }

    #[test]
    fn environment_errors_name_the_key_and_the_variable() {
        for (vars, needles) in [
            (
                &[("SWITCHBOARD_LIMITS_MAX_BATCH", "0")][..],
                &["environment: `limits.max_batch` (SWITCHBOARD_LIMITS_MAX_BATCH): 0 is out of range"][..],
            ),
            (
                &[("SWITCHBOARD_SERVER_LISTEN", "nowhere")],
                &["`server.listen` (SWITCHBOARD_SERVER_LISTEN)", "nowhere"],
            ),
            (
                &[("SWITCHBOARD_LIMITS_MAX_BATCHS", "5")],
                &["SWITCHBOARD_LIMITS_MAX_BATCHS", "max_batchs"],
            ),
            (&[("SWITCHBOARD_LIMITS", "5")], &["SWITCHBOARD_LIMITS", "no key"]),
            (&[("SWITCHBOARD_X_Y", "5")], &["SWITCHBOARD_X_Y", "no config section"]),
            (&[("SWITCHBOARD_ROUTES_A_PATH", "/x")], &["SWITCHBOARD_ROUTES_<INDEX>_<KEY>"]),
            (&[("SWITCHBOARD_ROUTES_0_PATH", "/x")], &["there is no routes[0]"]),
        ] {
            let err = layered("", vars).unwrap_err().to_string();
            for needle in needles {
                assert!(err.contains(needle), "{vars:?}: {needle:?} not in {err}");
            }
        }
        // A mistake of the file itself keeps its line.
        let err = layered(
            "[server]\npage = true\n\n[limits]\nmax_batch = 0\n",
            &[("SWITCHBOARD_SERVER_WORKERS", "1")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("test.toml: `limits.max_batch`") && err.contains("line 5"),
            "{err}"
        );
    }

    #[test]
    fn hook_tokens_are_read_from_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hook");
        std::fs::write(&file, "\n hook-secret \n").unwrap();
        let text = format!(
            "[authorization]\nurl = \"http://127.0.0.1:9/auth\"\ntoken_file = {:?}\n[[routes]]\npath = \"/g\"\ndialect = \"groups\"\naccept_url = \"http://127.0.0.1:9/a\"\naccept_token = \"t\"\n",
            file.display().to_string()
        );
        let config = check(&text).unwrap();
        assert_eq!(config.authorization.token(), Some("hook-secret"));
        assert_eq!(config.routes[0].accept_token(), Some("t"));
        let both = text.replace(
            "accept_token = \"t\"",
            &format!(
                "accept_token = \"t\"\naccept_token_file = {:?}",
                file.display().to_string()
            ),
        );
        let err = check(&both).unwrap_err().to_string();
        assert!(
            err.contains("`routes[0].accept_token_file`") && err.contains("both"),
            "{err}"
        );
        let err = check("[authorization]\ntoken = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`authorization.token`"), "{err}");
        let err = check(&text.replace("accept_token = \"t\"", "accept_token = \" \""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`routes[0].accept_token`") && err.contains("empty"),
            "{err}"
        );
    }

    #[test]
    fn origin_lists_are_checked_with_their_index() {
        for (text, key) in [
            ("[server]\nallowed_origins = [\"*\", \"nope\"]\n", "`server.allowed_origins[1]`"),
            ("[push]\nallowed_origins = [\"*\"]\n", "`push.allowed_origins[0]`"),
            (
                "[[routes]]\npath = \"/x\"\ndialect = \"raw\"\nallowed_origins = [\"https://a/\"]\n",
                "`routes[0].allowed_origins[0]`",
            ),
        ] {
            let err = check(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let config = check(
            "[server]\nallowed_origins = [\"*\", \"https://a.example\"]\nrequire_origin = true\n[[routes]]\npath = \"/x\"\ndialect = \"raw\"\n[[routes]]\npath = \"/y\"\ndialect = \"raw\"\nallowed_origins = []\nrequire_origin = false\n",
        )
        .unwrap();
        let x = config.handshake_origins(0);
        assert!(x.check(["http://any.example"], None).is_ok());
        assert!(x.check([], None).is_err(), "the server requires an Origin");
        let y = config.handshake_origins(1);
        assert!(y.check(["https://a.example"], None).is_err());
        assert!(y.check([], None).is_ok());
        let push = config.push_origins();
        assert!(
            push.check(["http://any.example"], None).is_err(),
            "never `*`"
        );
        assert!(push.check(["https://a.example"], None).is_ok());
    }
}
