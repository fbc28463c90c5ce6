//! The process's Prometheus metrics: one [`Metrics`] value made at start and shared (behind an
//! `Arc`) by the hub handle, the couriers, the sessions, the backends and the hooks, encoded in
//! the text exposition format for `GET /metrics`.
//!
//! Every figure is an atomic the code that sees the event updates itself; nothing is read
//! through the hub's mailbox, and the hot paths (frames, deliveries) touch counters resolved
//! once at start (no label lookup per event). Names follow Prometheus conventions: counters
//! end in `_total` (added by the encoder), durations are in seconds, sizes in bytes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::dialect::DialectKind;

/// Labels of a connection: the route it connected on and its dialect.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's path pattern.
    pub route: String,
    /// The route's dialect.
    pub dialect: String,
}

/// Label of a disconnect: the WebSocket close code (1006 when the TCP connection dropped).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    /// The close code, as text.
    code: String,
}

/// Label of a per-dialect figure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DialectLabel {
    /// The dialect.
    dialect: String,
}

/// Label of a publish: where it came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    /// `api` (push API publish), `broadcast` (push API broadcast) or `client` (a connection).
    source: String,
}

/// Labels of a backend callout: the relay format and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CalloutLabels {
    /// The relay format (`jsonrpc`, `socketdock`, `ws2api`).
    format: String,
    /// `ok`, `refused` (the backend answered with an error status) or `failed` (no answer).
    outcome: String,
}

/// Label of a backend figure: the relay format.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FormatLabel {
    /// The relay format.
    format: String,
}

/// Labels of a hook question: which hook and its answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    /// `authorize` or `connect`.
    hook: String,
    /// `allowed`, `refused` or `failed`.
    outcome: String,
}

/// Label of a hook figure: which hook.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabel {
    /// `authorize` or `connect`.
    hook: String,
}

/// How a backend callout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutOutcome {
    /// The backend answered with a success status.
    Ok,
    /// The backend answered with an error status.
    Refused,
    /// No usable answer (connection error, timeout, oversized answer).
    Failed,
}

impl CalloutOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// A hook's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookOutcome {
    /// The hook allowed it.
    Allowed,
    /// The hook refused it.
    Refused,
    /// The hook could not be asked (error, timeout, bad answer).
    Failed,
}

impl HookOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// Every metric of the process.
pub struct Metrics {
    /// What `GET /metrics` encodes.
    registry: Registry,
    /// Open connections by route and dialect.
    connections: Family<RouteLabels, Gauge>,
    /// Connections opened since start by route and dialect.
    connects: Family<RouteLabels, Counter>,
    /// Connections ended since start by close code.
    disconnects: Family<CodeLabel, Counter>,
    /// Open connections on every route (the dashboard's total; families are not summed).
    open: Gauge,
    /// Connections opened since start on every route (the dashboard's total).
    opened: Counter,
    /// Messages received from clients, by dialect (resolved once: the hot path).
    frames_in: [Counter; DialectKind::COUNT],
    /// Messages queued for clients by fan-outs and pushes, by dialect.
    deliveries: [Counter; DialectKind::COUNT],
    /// Deliveries dropped because the recipient's backlog was full.
    dropped: Counter,
    /// Connections cut off (1008) because they stopped reading.
    stalled: Counter,
    /// Publishes by source.
    publishes: Family<SourceLabel, Counter>,
    /// Publish accepted -> every worker has queued it, in seconds.
    fanout_seconds: Histogram,
    /// Bytes written to sessions' outboxes that their sockets have not taken yet.
    queued_bytes: Gauge,
    /// Channels with at least one member on this node.
    channels: Gauge,
    /// Backend callouts by format and outcome.
    callouts: Family<CalloutLabels, Counter>,
    /// Backend callout latency by format, in seconds.
    callout_seconds: Family<FormatLabel, Histogram>,
    /// Backend callouts waiting for an answer, by format.
    callouts_in_flight: Family<FormatLabel, Gauge>,
    /// Hook questions by hook and answer.
    hook_questions: Family<HookLabels, Counter>,
    /// Hook answers served from the cache, by hook.
    hook_cache_hits: Family<HookLabel, Counter>,
    /// In a cluster: 1 while this node is connected to Redis and subscribed, else 0.
    cluster_connected: Gauge,
    /// In a cluster: nodes with a fresh heartbeat, this one included.
    cluster_nodes: Gauge,
    /// In a cluster: connections of every node, from the heartbeats.
    cluster_connections: Gauge,
    /// In a cluster: times the subscription was lost and made again (publication gaps).
    cluster_gaps: Counter,
    /// In a cluster: publications of this node that could not be handed to Redis.
    cluster_publishes_failed: Counter,
    /// In a cluster: publications of other nodes dropped because this node was behind.
    cluster_remote_dropped: Counter,
    /// In a cluster: disconnect notices sent for connections of dead nodes.
    cluster_notices_reaped: Counter,
}

/// Buckets for latencies from 100 us to about 26 s.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `switchboard_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let connections = Family::<RouteLabels, Gauge>::default();
        registry.register(
            "connections",
            "Open WebSocket connections by route and dialect",
            connections.clone(),
        );
        let connects = Family::<RouteLabels, Counter>::default();
        registry.register(
            "connects",
            "WebSocket connections opened by route and dialect",
            connects.clone(),
        );
        let disconnects = Family::<CodeLabel, Counter>::default();
        registry.register(
            "disconnects",
            "WebSocket connections ended, by close code (1006: the TCP connection dropped)",
            disconnects.clone(),
        );
        let frames_family = Family::<DialectLabel, Counter>::default();
        registry.register(
            "frames_received",
            "Messages received from clients, by dialect",
            frames_family.clone(),
        );
        let deliveries_family = Family::<DialectLabel, Counter>::default();
        registry.register(
            "deliveries",
            "Messages queued for clients by publishes, broadcasts and pushes, by dialect",
            deliveries_family.clone(),
        );
        let per_dialect = |family: &Family<DialectLabel, Counter>| {
            DialectKind::ALL.map(|kind| {
                family
                    .get_or_create(&DialectLabel {
                        dialect: kind.name().to_owned(),
                    })
                    .clone()
            })
        };
        let frames_in = per_dialect(&frames_family);
        let deliveries = per_dialect(&deliveries_family);
        let dropped = Counter::default();
        registry.register(
            "deliveries_dropped",
            "Deliveries dropped because the recipient's outbound queue was full",
            dropped.clone(),
        );
        let stalled = Counter::default();
        registry.register(
            "stalled_disconnects",
            "Connections closed with 1008 because they stopped reading",
            stalled.clone(),
        );
        let publishes = Family::<SourceLabel, Counter>::default();
        registry.register(
            "publishes",
            "Publishes by source (api, broadcast, client)",
            publishes.clone(),
        );
        let fanout_seconds = latency_buckets();
        registry.register_with_unit(
            "fanout_duration",
            "From a publish being accepted to every worker having queued it",
            Unit::Seconds,
            fanout_seconds.clone(),
        );
        let queued_bytes = Gauge::default();
        registry.register_with_unit(
            "slow_consumer_queued",
            "Bytes waiting for sockets that did not take them yet",
            Unit::Bytes,
            queued_bytes.clone(),
        );
        let channels = Gauge::default();
        registry.register(
            "channels",
            "Channels with at least one member",
            channels.clone(),
        );
        let callouts = Family::<CalloutLabels, Counter>::default();
        registry.register(
            "backend_callouts",
            "Backend callouts by relay format and outcome (ok, refused, failed)",
            callouts.clone(),
        );
        let callout_seconds =
            Family::<FormatLabel, Histogram>::new_with_constructor(latency_buckets as fn() -> _);
        registry.register_with_unit(
            "backend_callout_duration",
            "Backend callout latency by relay format",
            Unit::Seconds,
            callout_seconds.clone(),
        );
        let callouts_in_flight = Family::<FormatLabel, Gauge>::default();
        registry.register(
            "backend_callouts_in_flight",
            "Backend callouts waiting for an answer, by relay format",
            callouts_in_flight.clone(),
        );
        let hook_questions = Family::<HookLabels, Counter>::default();
        registry.register(
            "hook_questions",
            "Questions asked of the authorization and connect hooks, by answer",
            hook_questions.clone(),
        );
        let hook_cache_hits = Family::<HookLabel, Counter>::default();
        registry.register(
            "hook_cache_hits",
            "Hook answers served from the cache",
            hook_cache_hits.clone(),
        );
        let cluster_connected = Gauge::default();
        registry.register(
            "cluster_connected",
            "1 while this node is connected to the cluster's Redis and subscribed (clustered only)",
            cluster_connected.clone(),
        );
        let cluster_nodes = Gauge::default();
        registry.register(
            "cluster_nodes",
            "Nodes with a fresh heartbeat, this one included (clustered only)",
            cluster_nodes.clone(),
        );
        let cluster_connections = Gauge::default();
        registry.register(
            "cluster_connections",
            "Connections of every node, from the heartbeats (clustered only)",
            cluster_connections.clone(),
        );
        let cluster_gaps = Counter::default();
        registry.register(
            "cluster_gaps",
            "Times the Redis subscription was lost and made again: publication gaps",
            cluster_gaps.clone(),
        );
        let cluster_publishes_failed = Counter::default();
        registry.register(
            "cluster_publishes_failed",
            "Publications of this node that could not be handed to Redis",
            cluster_publishes_failed.clone(),
        );
        let cluster_remote_dropped = Counter::default();
        registry.register(
            "cluster_remote_dropped",
            "Publications of other nodes dropped because this node was behind",
            cluster_remote_dropped.clone(),
        );
        let cluster_notices_reaped = Counter::default();
        registry.register(
            "cluster_notices_reaped",
            "Disconnect notices this node sent for connections of dead nodes",
            cluster_notices_reaped.clone(),
        );
        Self {
            registry,
            connections,
            connects,
            disconnects,
            open: Gauge::default(),
            opened: Counter::default(),
            frames_in,
            deliveries,
            dropped,
            stalled,
            publishes,
            fanout_seconds,
            queued_bytes,
            channels,
            callouts,
            callout_seconds,
            callouts_in_flight,
            hook_questions,
            hook_cache_hits,
            cluster_connected,
            cluster_nodes,
            cluster_connections,
            cluster_gaps,
            cluster_publishes_failed,
            cluster_remote_dropped,
            cluster_notices_reaped,
        }
    }

    /// Bring the cluster's figures up to date (read from its status at scrape time: the
    /// cluster thread keeps its own atomics, so this is never on a hot path).
    pub fn observe_cluster(&self, status: &ClusterFigures) {
        let as_gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.cluster_connected.set(i64::from(status.connected));
        self.cluster_nodes.set(as_gauge(status.nodes));
        self.cluster_connections.set(as_gauge(status.connections));
        // The cluster's counters only grow; these follow them.
        for (counter, now) in [
            (&self.cluster_gaps, status.gaps),
            (&self.cluster_publishes_failed, status.publishes_failed),
            (&self.cluster_remote_dropped, status.dropped),
            (&self.cluster_notices_reaped, status.notices_reaped),
        ] {
            let before = counter.get();
            if now > before {
                counter.inc_by(now - before);
            }
        }
    }

    /// Everything in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// A connection opened on a route.
    pub fn connected(&self, labels: &RouteLabels) {
        self.connections.get_or_create(labels).inc();
        self.connects.get_or_create(labels).inc();
        self.open.inc();
        self.opened.inc();
    }

    /// A connection on a route ended with this close code.
    pub fn disconnected(&self, labels: &RouteLabels, code: u16) {
        self.connections.get_or_create(labels).dec();
        self.open.dec();
        self.disconnects
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    /// A message arrived from a client of this dialect.
    pub fn frame_received(&self, dialect: DialectKind) {
        self.frames_in[dialect.index()].inc();
    }

    /// `count` messages were queued for clients of this dialect.
    pub fn delivered(&self, dialect: DialectKind, count: u64) {
        if count > 0 {
            self.deliveries[dialect.index()].inc_by(count);
        }
    }

    /// A delivery was dropped and its connection cut off for not reading.
    pub fn cut_off(&self) {
        self.dropped.inc();
        self.stalled.inc();
    }

    /// A publish was accepted from `source` (`api`, `broadcast` or `client`).
    pub fn published(&self, source: &str) {
        self.publishes
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .inc();
    }

    /// A fan-out took this long from accepted to queued everywhere.
    pub fn fanned_out(&self, seconds: f64) {
        self.fanout_seconds.observe(seconds);
    }

    /// The gauge of bytes waiting in outboxes (sessions add and subtract their own).
    pub fn queued_bytes(&self) -> &Gauge<i64, std::sync::atomic::AtomicI64> {
        &self.queued_bytes
    }

    /// The number of channels with members now.
    pub fn set_channels(&self, count: usize) {
        self.channels.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// A backend callout in this format started; call [`Metrics::callout_ended`] when it ends.
    pub fn callout_started(&self, format: &str) {
        self.callouts_in_flight
            .get_or_create(&FormatLabel {
                format: format.to_owned(),
            })
            .inc();
    }

    /// A backend callout in this format ended after `seconds` with `outcome`.
    pub fn callout_ended(&self, format: &str, outcome: CalloutOutcome, seconds: f64) {
        let label = FormatLabel {
            format: format.to_owned(),
        };
        self.callouts_in_flight.get_or_create(&label).dec();
        self.callout_seconds.get_or_create(&label).observe(seconds);
        self.callouts
            .get_or_create(&CalloutLabels {
                format: label.format,
                outcome: outcome.label().to_owned(),
            })
            .inc();
    }

    /// A hook (`authorize` or `connect`) answered.
    pub fn hook_answered(&self, hook: &str, outcome: HookOutcome) {
        self.hook_questions
            .get_or_create(&HookLabels {
                hook: hook.to_owned(),
                outcome: outcome.label().to_owned(),
            })
            .inc();
    }

    /// A hook answer came from the cache.
    pub fn hook_cache_hit(&self, hook: &str) {
        self.hook_cache_hits
            .get_or_create(&HookLabel {
                hook: hook.to_owned(),
            })
            .inc();
    }

    /// Totals for the dashboard: open connections, connects, frames in, deliveries out,
    /// dropped deliveries.
    pub fn totals(&self) -> Totals {
        let sum = |counters: &[Counter; DialectKind::COUNT]| -> u64 {
            counters.iter().map(Counter::get).sum()
        };
        Totals {
            connections: u64::try_from(self.open.get()).unwrap_or(0),
            connects: self.opened.get(),
            frames_in: sum(&self.frames_in),
            deliveries: sum(&self.deliveries),
            dropped: self.dropped.get(),
        }
    }
}

/// The cluster's figures as its status gives them (clustered nodes only).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterFigures {
    /// Connected to Redis and subscribed.
    pub connected: bool,
    /// Nodes with a fresh heartbeat, this one included.
    pub nodes: usize,
    /// Connections of every node, from the heartbeats.
    pub connections: usize,
    /// Times the subscription was lost and made again.
    pub gaps: u64,
    /// Publications of this node that could not be handed to Redis.
    pub publishes_failed: u64,
    /// Publications of other nodes dropped because this node was behind.
    pub dropped: u64,
    /// Disconnect notices sent for connections of dead nodes.
    pub notices_reaped: u64,
}

/// Process totals, for the dashboard.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Totals {
    /// Open connections.
    pub connections: u64,
    /// Connections opened since start.
    pub connects: u64,
    /// Messages received from clients since start.
    pub frames_in: u64,
    /// Messages queued for clients since start.
    pub deliveries: u64,
    /// Deliveries dropped since start.
    pub dropped: u64,
}
