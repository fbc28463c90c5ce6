//! The cluster over Redis (`[cluster]`): many hub processes, one channel space.
//!
//! The hub stays pure state. This module is its link to Redis: a task set on a thread of its
//! own (one current-thread tokio runtime), fed through [`ClusterHandle`] (non-blocking sends
//! from the hub and the handle) and feeding remote publications and requests back to the local
//! hub through the [`LocalHub`] seam, never re-publishing them.
//!
//! - **Routing** (interest-based, as Centrifuge does): a node SUBSCRIBEs to a channel's Redis
//!   channel when its first local member joins and unsubscribes `unsubscribe_delay_ms` after the
//!   last one left; topic prefixes are pattern subscriptions; each publication is one PUBLISH
//!   carrying its origin run and sequence number, so a node reached through a channel and a
//!   matching prefix delivers it once, and the origin skips its own copy. Broadcasts go on one
//!   channel every node reads. One connection carries every PUBLISH of a node in order, and one
//!   subscription connection reads them, so order per publisher holds.
//! - **Directory**: `conn:{id}` names the owning run and session (`SET ... NX GET`, or `SET ...
//!   GET` for ids whose newer connection replaces the older, so a duplicate is decided once in
//!   Redis); each run has a control channel for send, close and replace requests.
//! - **Crash notices**: each process start holds a lease and a hash of its live connections;
//!   survivors claim a dead run's hash in one Lua script and send the disconnect notices
//!   through the backend's notice path, with a notice id the owner would have used too.
//! - **Outages**: the Redis reader never blocks (it drops and counts when the hub is behind);
//!   publishes that cannot reach Redis are reported to the publisher; the subscription is
//!   probed, re-made after a loss, and every loss is counted as a gap.
//!
//! See `docs/cluster.md` for the failure windows.

mod keys;
mod node;
mod scripts;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::backend::http::Orphaned;
use crate::channel::ChannelName;
use crate::config::ClusterConfig;
use crate::connection::ConnectionId;
pub(crate) use crate::delivery::ClusterReach;
use crate::delivery::Undelivered;
use crate::frame::{Close, Frame};
use crate::registry::{ChannelInfo, ConnectionInfo, Interest};
pub(crate) use wire::Question;

/// Publications queued for Redis and not yet answered, beyond which a publish is reported as
/// not sent to the cluster instead of waiting in memory without bound.
const MAX_QUEUED_PUBLISHES: usize = 65_536;

/// What the cluster asks of the local hub: delivering what came from other nodes, and serving
/// other nodes' requests for local connections. The hub's handle implements it; this module
/// never names the hub (no import cycle).
pub(crate) trait LocalHub: 'static {
    /// Deliver a publication from another node to the local recipients; false when the hub's
    /// mailbox is full (the publication is dropped for this node and counted).
    fn deliver(&self, channel: Option<ChannelName>, data: Value) -> bool;
    /// Send a frame to a local connection.
    fn send_to(
        &self,
        id: ConnectionId,
        frame: Frame,
    ) -> LocalBoxFuture<'static, Option<Result<(), Undelivered>>>;
    /// Close a local connection.
    fn close(
        &self,
        id: ConnectionId,
        close: Close,
    ) -> LocalBoxFuture<'static, Option<Result<(), Undelivered>>>;
    /// A newer connection elsewhere took this id: close the local session with this serial
    /// with 4001, without a disconnect notice.
    fn replace(&self, id: ConnectionId, serial: u64);
    /// This node lost its lease: close every local connection without a disconnect notice
    /// (a survivor sends those, or this node once it is back).
    fn fence(&self);
    /// The local answer to a cluster-wide question.
    fn answer(&self, question: Question) -> LocalBoxFuture<'static, Option<Value>>;
    /// Local connections and channels now, for the heartbeat.
    fn figures(&self) -> LocalBoxFuture<'static, Option<(usize, usize)>>;
}

/// How much of the cluster a listing or count covers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Coverage {
    /// Nodes whose answer is included, this one counted.
    pub nodes: usize,
    /// Nodes that should have answered and did not in time (by name).
    pub missing: Vec<String>,
    /// Whether the answer is short of the whole cluster.
    pub partial: bool,
    /// Why it is partial when no node could be asked at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// A cluster-wide answer: each other node's part, and what it covers.
pub(crate) struct Surveyed {
    /// (node name, its answer) of every node that answered in time, this one excluded.
    pub answers: Vec<(String, Value)>,
    /// Who answered.
    pub coverage: Coverage,
}

/// Why a request for a connection held by another node has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RemoteError {
    /// The node holding it did not answer in time.
    #[error("node {0} holding this connection did not answer within cluster.request_timeout_ms")]
    NoAnswer(String),
    /// Redis cannot be reached, so other nodes cannot be asked.
    #[error("the cluster is unreachable (Redis is down or cut off); only local connections can be reached")]
    Disconnected,
}

/// One node's heartbeat, as `/healthz` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NodeBeat {
    /// The node's name.
    pub node: String,
    /// Its connections at the heartbeat.
    pub connections: usize,
    /// Its channels at the heartbeat.
    pub channels: usize,
    /// When it was written, Unix milliseconds (by the node's clock).
    pub at_ms: u64,
}

/// The cluster's state as this node sees it, for `/healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// `connected`, `disconnected` (Redis or the subscription lost) or `fenced` (the lease
    /// is lost: this node closed its sockets and is rejoining).
    pub state: &'static str,
    /// This node's name.
    pub node: String,
    /// This process's current run (lease holder id), when it holds one.
    pub run: Option<String>,
    /// Whether the subscription connection is up and reading.
    pub subscribed: bool,
    /// Whether this run's lease was renewed within `lease_ms`.
    pub leased: bool,
    /// Times the subscription was lost and made again (publications of other nodes in between
    /// are missed).
    pub gaps: u64,
    /// Milliseconds without a subscription, summed over the gaps (the current one included).
    pub gap_ms: u64,
    /// Publications from other nodes dropped because this node was behind.
    pub dropped: u64,
    /// Publications of this node that could not be handed to Redis.
    pub publishes_failed: u64,
    /// Probes of the subscription that came back too late (each forces a reconnect).
    pub probes_failed: u64,
    /// Times this node lost its lease and closed its sockets.
    pub fenced: u64,
    /// Disconnect notices sent for connections of dead runs.
    pub notices_reaped: u64,
    /// Connections of every node, summed from the heartbeats.
    pub connections: usize,
    /// Every node with a fresh heartbeat (this one included), with its age.
    pub nodes: Vec<NodeStatus>,
}

/// One node in [`ClusterStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// Its connections at its last heartbeat.
    pub connections: usize,
    /// Its channels at its last heartbeat.
    pub channels: usize,
    /// How old that heartbeat is, in milliseconds.
    pub age_ms: u64,
}

/// Counters and flags the cluster thread writes and any thread reads.
#[derive(Default)]
struct Status {
    /// The subscription connection is up.
    subscribed: AtomicBool,
    /// The lease is held and fresh.
    leased: AtomicBool,
    /// The lease was lost and the sockets closed; cleared when a new run holds a lease.
    fenced_now: AtomicBool,
    /// Unix ms since when the subscription is down; 0 while up.
    down_since_ms: AtomicU64,
    /// See [`ClusterStatus::gaps`].
    gaps: AtomicU64,
    /// See [`ClusterStatus::gap_ms`] (closed gaps only).
    gap_ms: AtomicU64,
    /// See [`ClusterStatus::dropped`].
    dropped: AtomicU64,
    /// See [`ClusterStatus::publishes_failed`].
    publishes_failed: AtomicU64,
    /// See [`ClusterStatus::probes_failed`].
    probes_failed: AtomicU64,
    /// See [`ClusterStatus::fenced`].
    fenced: AtomicU64,
    /// See [`ClusterStatus::notices_reaped`].
    notices_reaped: AtomicU64,
    /// The current run.
    run: Mutex<Option<String>>,
    /// The last heartbeats read from Redis.
    beats: Mutex<Vec<NodeBeat>>,
}

/// What the handle sends the cluster thread.
enum Command {
    /// Channels or prefixes gained or lost their local members.
    Interest(Vec<Interest>),
    /// Answer once every earlier command is done (subscriptions made).
    Barrier(oneshot::Sender<()>),
    /// Publish to the other nodes.
    Publish {
        /// The channel; None for a broadcast.
        channel: Option<ChannelName>,
        /// The value.
        data: Value,
        /// How it went.
        reply: oneshot::Sender<ClusterReach>,
    },
    /// A connection registered locally.
    Opened {
        /// Its id.
        id: ConnectionId,
        /// Its session serial.
        serial: u64,
        /// Whether a newer connection with its id replaces an older one.
        replace: bool,
    },
    /// A connection ended locally; answered once its entries are gone from Redis.
    Closed {
        /// Its id.
        id: ConnectionId,
        /// Its session serial.
        serial: u64,
        /// Answered when done (or given up).
        done: oneshot::Sender<()>,
    },
    /// Send or close a connection another node holds.
    Remote {
        /// The connection.
        id: ConnectionId,
        /// What to do.
        action: RemoteAction,
        /// The owner's outcome.
        reply: oneshot::Sender<Result<Result<(), Undelivered>, RemoteError>>,
    },
    /// This node is shutting down: drop its heartbeat and lease, so listings stop waiting
    /// for it and its (empty) run is cleaned up at once.
    Leave(oneshot::Sender<()>),
    /// Ask every other node.
    Survey {
        /// The question.
        question: Question,
        /// The answers.
        reply: oneshot::Sender<Surveyed>,
    },
}

/// A request for a connection on another node.
enum RemoteAction {
    /// Send this frame.
    Send(Frame),
    /// Close with this.
    Close(Close),
}

/// The cluster's settings, from `[cluster]` and the backend.
struct Settings {
    /// The Redis URL.
    url: String,
    /// This node's name.
    node: String,
    /// Key and channel names.
    keys: keys::Keys,
    /// `lease_ms`.
    lease: Duration,
    /// `reap_interval_ms`.
    reap_interval: Duration,
    /// `request_timeout_ms`.
    timeout: Duration,
    /// `unsubscribe_delay_ms`.
    unsubscribe_delay: Duration,
    /// `probe_interval_ms`.
    probe_interval: Duration,
    /// Whether this node's connections end with a disconnect notice (http backend whose
    /// format announces ends): only then is a crash notice owed for them.
    announces: bool,
}

/// What the handle and the thread share.
struct Shared {
    /// Commands for the cluster thread.
    commands: mpsc::UnboundedSender<Command>,
    /// State for health.
    status: Status,
    /// Settings.
    settings: Settings,
    /// Publications queued and not yet answered.
    queued: AtomicUsize,
}

/// The cheap, cloneable way into the cluster: every call is a non-blocking send to the
/// cluster thread (the hub actor may call it), or a future the caller awaits.
#[derive(Clone)]
pub struct ClusterHandle(Arc<Shared>);

/// The receiving end, until the thread is started with the local hub.
pub(crate) struct Starter {
    /// The handle's shared state.
    shared: Arc<Shared>,
    /// Commands for the thread.
    commands: mpsc::UnboundedReceiver<Command>,
}

/// Now, Unix milliseconds.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ClusterHandle {
    /// A handle for `[cluster]` (its `url` and `node` set), and what starts its thread.
    pub(crate) fn new(config: &ClusterConfig, announces: bool) -> Option<(Self, Starter)> {
        let url = config.url.as_ref()?.as_str().to_owned();
        let ms = Duration::from_millis;
        let settings = Settings {
            url,
            node: config.node.clone().unwrap_or_default(),
            keys: keys::Keys::new(&config.key_prefix),
            lease: ms(config.lease_ms.get()),
            reap_interval: ms(config.reap_interval_ms.get()),
            timeout: ms(config.request_timeout_ms.get()),
            unsubscribe_delay: ms(config.unsubscribe_delay_ms),
            probe_interval: ms(config.probe_interval_ms.get()),
            announces,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            commands: tx,
            status: Status::default(),
            settings,
            queued: AtomicUsize::new(0),
        });
        Some((
            Self(shared.clone()),
            Starter {
                shared,
                commands: rx,
            },
        ))
    }

    fn send(&self, command: Command) {
        // The thread lives as long as the process; a send after it ended is dropped.
        let _ = self.0.commands.send(command);
    }

    /// Whether this node is part of the cluster now: subscribed and holding a fresh lease.
    /// A readiness check can use it.
    pub fn is_connected(&self) -> bool {
        let status = &self.0.status;
        status.subscribed.load(Ordering::SeqCst) && status.leased.load(Ordering::SeqCst)
    }

    /// Interest changes from the hub.
    pub(crate) fn interest(&self, changes: Vec<Interest>) {
        if !changes.is_empty() {
            self.send(Command::Interest(changes));
        }
    }

    /// Answered once the subscriptions asked for so far are made in Redis (or given up on).
    pub(crate) fn barrier(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Barrier(tx));
        rx
    }

    /// Publish to the other nodes (the local delivery is the hub's); answered with how it
    /// went.
    pub(crate) fn publish(
        &self,
        channel: Option<ChannelName>,
        data: Value,
    ) -> oneshot::Receiver<ClusterReach> {
        let (tx, rx) = oneshot::channel();
        if self.0.queued.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED_PUBLISHES {
            self.0.queued.fetch_sub(1, Ordering::SeqCst);
            self.0
                .status
                .publishes_failed
                .fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(ClusterReach {
                published: false,
                other_nodes: 0,
            });
            return rx;
        }
        self.send(Command::Publish {
            channel,
            data,
            reply: tx,
        });
        rx
    }

    /// A connection registered on this node.
    pub(crate) fn opened(&self, id: ConnectionId, serial: u64, replace: bool) {
        self.send(Command::Opened {
            id,
            serial,
            replace,
        });
    }

    /// A connection ended on this node; the receiver is answered once Redis forgot it, so its
    /// own disconnect notice goes out only after no survivor could claim it any more.
    pub(crate) fn closed(&self, id: ConnectionId, serial: u64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Closed {
            id,
            serial,
            done: tx,
        });
        rx
    }

    /// Send a frame to a connection on another node.
    pub(crate) async fn send_to(
        &self,
        id: ConnectionId,
        frame: Frame,
    ) -> Result<Result<(), Undelivered>, RemoteError> {
        self.remote(id, RemoteAction::Send(frame)).await
    }

    /// Close a connection on another node.
    pub(crate) async fn close(
        &self,
        id: ConnectionId,
        close: Close,
    ) -> Result<Result<(), Undelivered>, RemoteError> {
        self.remote(id, RemoteAction::Close(close)).await
    }

    async fn remote(
        &self,
        id: ConnectionId,
        action: RemoteAction,
    ) -> Result<Result<(), Undelivered>, RemoteError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Remote {
            id,
            action,
            reply: tx,
        });
        rx.await.unwrap_or(Err(RemoteError::Disconnected))
    }

    /// Leave the cluster at shutdown, after every connection ended (bounded by the request
    /// timeout).
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Leave(tx));
        let _ = tokio::time::timeout(self.0.settings.timeout * 2, rx).await;
    }

    /// Ask every other node.
    pub(crate) async fn survey(&self, question: Question) -> Surveyed {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Survey {
            question,
            reply: tx,
        });
        rx.await.unwrap_or_else(|_| Surveyed {
            answers: Vec::new(),
            coverage: Coverage {
                nodes: 1,
                missing: Vec::new(),
                partial: true,
                error: Some("the cluster thread stopped"),
            },
        })
    }

    /// This node's name.
    pub(crate) fn node(&self) -> &str {
        &self.0.settings.node
    }

    /// Merge the other nodes' connection lists into the local one (sorted by id).
    pub(crate) fn merge_connections(
        &self,
        mut local: Vec<ConnectionInfo>,
        surveyed: &Surveyed,
    ) -> Vec<ConnectionInfo> {
        let node: Arc<str> = Arc::from(self.node());
        for info in &mut local {
            info.node = Some(node.clone());
        }
        for (name, answer) in &surveyed.answers {
            let Ok(list) = serde_json::from_value::<Vec<ConnectionInfo>>(answer.clone()) else {
                log::warn!("cluster: node {name} sent a connection list this node cannot read");
                continue;
            };
            let name: Arc<str> = Arc::from(name.as_str());
            local.extend(list.into_iter().map(|mut info| {
                info.node = Some(name.clone());
                info
            }));
        }
        local.sort_by(|a, b| a.id.cmp(&b.id));
        local
    }

    /// Merge the other nodes' channel lists into the local one: members summed per channel.
    pub(crate) fn merge_channels(
        &self,
        local: Vec<ChannelInfo>,
        surveyed: &Surveyed,
    ) -> Vec<ChannelInfo> {
        let mut merged: std::collections::BTreeMap<ChannelName, usize> =
            local.into_iter().map(|c| (c.name, c.subscribers)).collect();
        for (name, answer) in &surveyed.answers {
            let Ok(list) = serde_json::from_value::<Vec<ChannelInfo>>(answer.clone()) else {
                log::warn!("cluster: node {name} sent a channel list this node cannot read");
                continue;
            };
            for channel in list {
                *merged.entry(channel.name).or_default() += channel.subscribers;
            }
        }
        merged
            .into_iter()
            .map(|(name, subscribers)| ChannelInfo { name, subscribers })
            .collect()
    }

    /// The cluster's state for `/healthz`.
    pub fn status(&self) -> ClusterStatus {
        let status = &self.0.status;
        let now = unix_ms();
        let fresh = self.0.settings.lease.as_millis() as u64;
        let nodes: Vec<NodeStatus> = status
            .beats
            .lock()
            .expect("beats lock")
            .iter()
            .map(|beat| NodeStatus {
                node: beat.node.clone(),
                connections: beat.connections,
                channels: beat.channels,
                age_ms: now.saturating_sub(beat.at_ms),
            })
            .filter(|n| n.age_ms <= fresh)
            .collect();
        let subscribed = status.subscribed.load(Ordering::SeqCst);
        let leased = status.leased.load(Ordering::SeqCst);
        let down_since = status.down_since_ms.load(Ordering::SeqCst);
        let open_gap = if down_since == 0 {
            0
        } else {
            now.saturating_sub(down_since)
        };
        ClusterStatus {
            state: if status.fenced_now.load(Ordering::SeqCst) {
                "fenced"
            } else if self.is_connected() {
                "connected"
            } else {
                "disconnected"
            },
            node: self.0.settings.node.clone(),
            run: status.run.lock().expect("run lock").clone(),
            subscribed,
            leased,
            gaps: status.gaps.load(Ordering::Relaxed),
            gap_ms: status.gap_ms.load(Ordering::Relaxed) + open_gap,
            dropped: status.dropped.load(Ordering::Relaxed),
            publishes_failed: status.publishes_failed.load(Ordering::Relaxed),
            probes_failed: status.probes_failed.load(Ordering::Relaxed),
            fenced: status.fenced.load(Ordering::Relaxed),
            notices_reaped: status.notices_reaped.load(Ordering::Relaxed),
            connections: nodes.iter().map(|n| n.connections).sum(),
            nodes,
        }
    }
}

impl From<RemoteError> for Undelivered {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::NoAnswer(_) => Undelivered::NodeUnreachable,
            RemoteError::Disconnected => Undelivered::ClusterUnreachable,
        }
    }
}

impl Starter {
    /// Start the cluster thread: it serves `hub` and sends reaped notices to `orphans` (when
    /// this node's backend announces ends).
    pub(crate) fn start(
        self,
        hub: Box<dyn LocalHub + Send>,
        orphans: Option<actix::Recipient<Orphaned>>,
    ) {
        let Starter { shared, commands } = self;
        std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || node::run(shared, commands, hub, orphans))
            .expect("spawn the cluster thread");
    }
}
