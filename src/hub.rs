//! The hub: one actor per process around the [`Registry`], reached through the cloneable
//! [`HubHandle`]. The actor is pure state too: it never awaits and never does I/O, so one slow
//! client or backend cannot stall routing for everyone else. Its messages are private; the
//! rest of the program calls the handle.
//!
//! Delivery: the hub decides who receives a publication and sends each worker thread one
//! [`Fanout`] with the links of that worker's recipients; the worker's [`courier`] queues it
//! into its sessions on their own thread. A publication is encoded once per dialect, and the
//! same bytes are queued for every recipient of that dialect. Before queueing, room is reserved
//! in the recipient's [`Backlog`] (messages and bytes not yet written to its socket, bounded by
//! `limits.outbound_queue` and `limits.outbound_queue_bytes`). When there is no room the client
//! has stopped reading: the delivery is counted as dropped and reported to whoever sent it, the
//! connection is cut off (told to close with 1008, then removed from the registry and every
//! channel). Memory therefore stays bounded per connection, and neighbours never wait. The
//! publisher's `reached` and `dropped` are the sums of the workers' reports, which the handle
//! (not the hub) waits for.
//!
//! [`courier`]: crate::courier

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::channel::{ChannelName, Publication, PublicationKind};
use crate::cluster::{
    ClusterHandle, ClusterReach, Coverage, LocalHub, Question, RemoteError, Surveyed,
};
use crate::connection::ConnectionId;
use crate::courier::{CourierHandle, Fanout, Report};
use crate::delivery::{Deliver, Delivery, Outbound, Undelivered};
use crate::dialect::DialectKind;
use crate::frame::{close_code, Close, Frame};
use crate::link::{Link, Queued};
use crate::metrics::Metrics;
use crate::operation::{ChannelOp, OpOutcome};
use crate::outbox::Backlog;
use crate::registry::{Applied, Registry};
pub use crate::registry::{ChannelInfo, ConnectionInfo, SubscriptionLimits};

/// How many messages may wait in the hub's own mailbox before senders wait (backpressure on
/// the push API and on sessions asking for subscriptions).
const HUB_MAILBOX_CAPACITY: usize = 65_536;

/// The hub is not running (it stopped, or the process is going down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the hub is not running")]
pub struct HubUnavailable;

/// A new connection, as its session registers it.
pub struct Registration {
    /// The connection's id.
    pub id: ConnectionId,
    /// The route path it connected on.
    pub route: Arc<str>,
    /// The client's address as the hub sees it.
    pub remote: Option<Arc<str>>,
    /// Where deliveries for it go.
    pub recipient: Recipient<Deliver>,
    /// Unique per session, so a replaced session's late disconnect cannot remove its successor.
    pub serial: u64,
    /// On a duplicate id: replace the live connection (closed with 4001) instead of refusing.
    pub replace: bool,
    /// The dialect its publications are encoded in.
    pub dialect: DialectKind,
    /// What it has queued and not yet written (shared with its session).
    pub backlog: Arc<Backlog>,
    /// The courier of the worker thread the session runs on.
    pub courier: CourierHandle,
}

/// Counters since start, for health and metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HubStats {
    /// Connections registered now.
    pub connections: usize,
    /// Channels with at least one member now.
    pub channels: usize,
    /// Connections registered since start.
    pub connections_opened: u64,
    /// Connections deregistered since start.
    pub connections_closed: u64,
    /// Deliveries dropped because a connection's queue was full.
    pub deliveries_dropped: u64,
    /// Connections cut off because they stopped reading.
    pub stalled_connections_closed: u64,
}

/// The one way into the hub: cheap to clone, every call a message to the hub actor. In a
/// cluster it also owns the way to the other nodes: a connection this node does not hold is
/// looked for there, and listings and counts cover every node (the handle may await; the hub
/// actor never does).
#[derive(Clone)]
pub struct HubHandle {
    /// The hub actor.
    addr: Addr<Hub>,
    /// The process's metrics (shared by everyone who holds the handle).
    metrics: Arc<Metrics>,
    /// The cluster, when `[cluster]` is set.
    cluster: Option<ClusterHandle>,
}

/// A listing with what it covers.
pub struct Listing<T> {
    /// The entries.
    pub items: Vec<T>,
    /// In a cluster: which nodes answered (a node that did not answer in time makes it
    /// partial).
    pub cluster: Option<Coverage>,
}

/// [`everywhere`] for a listing.
async fn listing<T>(
    listed: impl Future<Output = Result<(Vec<T>, Option<Coverage>), HubUnavailable>>,
) -> Result<Listing<T>, HubUnavailable> {
    let (items, cluster) = listed.await?;
    Ok(Listing { items, cluster })
}

/// A local send or close, and when this node does not hold the connection, the same through
/// the cluster on the node that does.
async fn elsewhere<F: Future<Output = Result<Result<(), Undelivered>, RemoteError>>>(
    local: impl Future<Output = Result<Result<(), Undelivered>, HubUnavailable>>,
    cluster: Option<ClusterHandle>,
    remote: impl FnOnce(ClusterHandle) -> F,
) -> Result<Result<(), Undelivered>, HubUnavailable> {
    match (local.await?, cluster) {
        (Err(Undelivered::UnknownConnection), Some(cluster)) => {
            Ok(remote(cluster).await.unwrap_or_else(|e| Err(e.into())))
        }
        (result, _) => Ok(result),
    }
}

/// The local answer, and in a cluster every other node's answer merged into it by `merge`,
/// with what the result covers.
async fn everywhere<T>(
    local: impl Future<Output = Result<T, HubUnavailable>>,
    cluster: Option<ClusterHandle>,
    question: Question,
    merge: impl FnOnce(&ClusterHandle, T, &Surveyed) -> T,
) -> Result<(T, Option<Coverage>), HubUnavailable> {
    let Some(cluster) = cluster else {
        return Ok((local.await?, None));
    };
    let (local, surveyed) = futures_util::future::join(local, cluster.survey(question)).await;
    Ok((merge(&cluster, local?, &surveyed), Some(surveyed.coverage)))
}

/// Turn the actor's reply into the handle's result.
async fn answer<T>(
    request: impl Future<Output = Result<T, MailboxError>> + 'static,
) -> Result<T, HubUnavailable> {
    request.await.map_err(|_| HubUnavailable)
}

impl HubHandle {
    /// Start the hub (once per process, before the servers) on the current arbiter.
    /// With a cluster, the hub tells it about channel interest and publications.
    pub fn start(
        limits: SubscriptionLimits,
        metrics: Arc<Metrics>,
        cluster: Option<ClusterHandle>,
    ) -> Self {
        Self {
            addr: Hub::new(limits, metrics.clone(), cluster.clone()).start(),
            metrics,
            cluster,
        }
    }

    /// The same hub without the cluster: what the cluster itself uses to serve other nodes.
    pub(crate) fn local(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            metrics: self.metrics.clone(),
            cluster: None,
        }
    }

    /// The cluster, when this node is part of one.
    pub fn cluster(&self) -> Option<&ClusterHandle> {
        self.cluster.as_ref()
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Register a connection. It is queued at once and handled even if the session ends
    /// first (a reply would be dropped with it, and the registration skipped); a refusal
    /// reaches the session as a close (1001 while shutting down, 1013 for a duplicate id).
    pub fn connect(&self, registration: Registration) -> Result<(), HubUnavailable> {
        if let Some(cluster) = &self.cluster {
            // Before the hub sees it, so a replaced session's end always comes after.
            cluster.opened(
                registration.id.clone(),
                registration.serial,
                registration.replace,
            );
        }
        self.addr
            .try_send(Connect(registration))
            .map_err(|_| HubUnavailable)
    }

    /// The connection ended (idempotent; a stale serial is ignored). In a cluster the answer
    /// comes once Redis forgot it: its disconnect notice waits for that, so a node that
    /// reaps this one later cannot send it a second time.
    pub fn disconnect(&self, id: ConnectionId, serial: u64) -> Option<oneshot::Receiver<()>> {
        let forgotten = self
            .cluster
            .as_ref()
            .map(|cluster| cluster.closed(id.clone(), serial));
        self.addr.do_send(Disconnect { id, serial });
        forgotten
    }

    /// Apply channel operations in order for one connection.
    pub fn apply(
        &self,
        id: ConnectionId,
        ops: Vec<ChannelOp>,
    ) -> impl Future<Output = Result<Vec<OpOutcome>, HubUnavailable>> + 'static {
        let hub = self.addr.clone();
        // Queued now, not when the future is first polled: calls reach the hub in call order.
        let request = hub.send(Apply { id, ops });
        async move {
            let (settling, barrier) = answer(request).await?;
            let mut outcomes = Vec::with_capacity(settling.len());
            for outcome in settling {
                outcomes.push(outcome.settle(&hub).await);
            }
            // In a cluster, subscriptions are answered once this node is subscribed in Redis
            // too, so a publish on another node that follows the answer reaches them.
            if let Some(barrier) = barrier {
                let _ = barrier.await;
            }
            Ok(outcomes)
        }
    }

    /// Publish to a channel from one of its connections: refused unless it is a member when
    /// `require_subscribed`, the sender left out when `exclude_sender`.
    pub fn publish_from(
        &self,
        id: ConnectionId,
        channel: ChannelName,
        data: serde_json::Value,
        exclude_sender: bool,
        require_subscribed: bool,
    ) -> impl Future<Output = Result<OpOutcome, HubUnavailable>> + 'static {
        let op = ChannelOp::Publish {
            channel,
            data,
            exclude_sender,
            require_subscribed,
        };
        let hub = self.addr.clone();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let request = hub.send(PublishFrom { id, op });
        async move {
            let settling = answer(request).await?;
            let outcome = settling.settle(&hub).await;
            if let OpOutcome::Published(_) = outcome {
                metrics.published("client");
                metrics.fanned_out(started.elapsed().as_secs_f64());
            }
            Ok(outcome)
        }
    }

    /// Publish to a channel (from a backend).
    pub fn publish(
        &self,
        channel: ChannelName,
        data: serde_json::Value,
    ) -> impl Future<Output = Result<Delivery, HubUnavailable>> + 'static {
        let hub = self.addr.clone();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let request = hub.send(Publish { channel, data });
        async move {
            let fanning = answer(request).await?;
            let delivery = fanning.settle(&hub).await;
            metrics.published("api");
            metrics.fanned_out(started.elapsed().as_secs_f64());
            Ok(delivery)
        }
    }

    /// Send to every connection.
    pub fn broadcast(
        &self,
        data: serde_json::Value,
    ) -> impl Future<Output = Result<Delivery, HubUnavailable>> + 'static {
        let hub = self.addr.clone();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let request = hub.send(Broadcast { data });
        async move {
            let fanning = answer(request).await?;
            let delivery = fanning.settle(&hub).await;
            metrics.published("broadcast");
            metrics.fanned_out(started.elapsed().as_secs_f64());
            Ok(delivery)
        }
    }

    /// Send a frame to one connection, on whichever node holds it.
    pub fn send_to(
        &self,
        id: ConnectionId,
        frame: Frame,
    ) -> impl Future<Output = Result<Result<(), Undelivered>, HubUnavailable>> + 'static {
        let local = self.send_here(id.clone(), frame.clone());
        elsewhere(local, self.cluster.clone(), move |cluster| async move {
            cluster.send_to(id, frame).await
        })
    }

    /// Close one connection with this code and reason, on whichever node holds it.
    pub fn close(
        &self,
        id: ConnectionId,
        close: Close,
    ) -> impl Future<Output = Result<Result<(), Undelivered>, HubUnavailable>> + 'static {
        let local = self.close_here(id.clone(), close.clone());
        elsewhere(local, self.cluster.clone(), move |cluster| async move {
            cluster.close(id, close).await
        })
    }

    /// Send a frame to one connection of this node.
    fn send_here(
        &self,
        id: ConnectionId,
        frame: Frame,
    ) -> impl Future<Output = Result<Result<(), Undelivered>, HubUnavailable>> + 'static {
        let hub = self.addr.clone();
        let request = hub.send(SendTo {
            id: id.clone(),
            frame,
        });
        async move {
            let queued = match answer(request).await? {
                Ok(queued) => queued.await.unwrap_or(Queued::Gone),
                Err(undelivered) => return Ok(Err(undelivered)),
            };
            Ok(match queued {
                Queued::Yes => Ok(()),
                Queued::Full => {
                    hub.do_send(Forget {
                        stalled: vec![id],
                        gone: Vec::new(),
                    });
                    Err(Undelivered::QueueFull)
                }
                Queued::Gone => {
                    hub.do_send(Forget {
                        stalled: Vec::new(),
                        gone: vec![id],
                    });
                    Err(Undelivered::UnknownConnection)
                }
            })
        }
    }

    /// Close one connection of this node with this code and reason.
    fn close_here(
        &self,
        id: ConnectionId,
        close: Close,
    ) -> impl Future<Output = Result<Result<(), Undelivered>, HubUnavailable>> + 'static {
        answer(self.addr.send(CloseConnection { id, close }))
    }

    /// Every connection of the cluster (of this node without one), sorted by id.
    pub fn connections_everywhere(
        &self,
    ) -> impl Future<Output = Result<Listing<ConnectionInfo>, HubUnavailable>> + 'static {
        let listed = everywhere(
            self.connections(),
            self.cluster.clone(),
            Question::Connections,
            |cluster, local, surveyed| cluster.merge_connections(local, surveyed),
        );
        listing(listed)
    }

    /// Every channel of the cluster with its members summed over the nodes, sorted by name.
    pub fn channels_everywhere(
        &self,
    ) -> impl Future<Output = Result<Listing<ChannelInfo>, HubUnavailable>> + 'static {
        let listed = everywhere(
            self.channels(),
            self.cluster.clone(),
            Question::Channels,
            |cluster, local, surveyed| cluster.merge_channels(local, surveyed),
        );
        listing(listed)
    }

    /// Members of `channel` (or connections in any channel) summed over the cluster.
    pub fn count_subscribers_everywhere(
        &self,
        channel: Option<ChannelName>,
    ) -> impl Future<Output = Result<(usize, Option<Coverage>), HubUnavailable>> + 'static {
        let question = Question::Subscribers {
            channel: channel.as_ref().map(|c| c.to_string()),
        };
        everywhere(
            self.count_subscribers(channel),
            self.cluster.clone(),
            question,
            |_, local, surveyed| {
                let remote: u64 = surveyed
                    .answers
                    .iter()
                    .filter_map(|(_, a)| a.as_u64())
                    .sum();
                local + remote as usize
            },
        )
    }

    /// Presence: the ids of the members of `channel` on every node, sorted.
    pub fn presence(
        &self,
        channel: ChannelName,
    ) -> impl Future<Output = Result<Listing<ConnectionId>, HubUnavailable>> + 'static {
        let question = Question::Presence {
            channel: channel.to_string(),
        };
        let listed = everywhere(
            answer(self.addr.send(ChannelMembers { channel })),
            self.cluster.clone(),
            question,
            |_, mut local, surveyed| {
                for (_, answer) in &surveyed.answers {
                    if let Ok(ids) = serde_json::from_value::<Vec<ConnectionId>>(answer.clone()) {
                        local.extend(ids);
                    }
                }
                local.sort();
                local
            },
        );
        listing(listed)
    }

    /// Every connection, sorted by id.
    pub fn connections(
        &self,
    ) -> impl Future<Output = Result<Vec<ConnectionInfo>, HubUnavailable>> + 'static {
        answer(self.addr.send(ListConnections))
    }

    /// Every channel with its member count, sorted by name.
    pub fn channels(
        &self,
    ) -> impl Future<Output = Result<Vec<ChannelInfo>, HubUnavailable>> + 'static {
        answer(self.addr.send(ListChannels))
    }

    /// Members of `channel`, or with `None` the connections in at least one channel.
    pub fn count_subscribers(
        &self,
        channel: Option<ChannelName>,
    ) -> impl Future<Output = Result<usize, HubUnavailable>> + 'static {
        answer(self.addr.send(CountSubscribers { channel }))
    }

    /// The counters.
    pub fn stats(&self) -> impl Future<Output = Result<HubStats, HubUnavailable>> + 'static {
        answer(self.addr.send(Stats))
    }

    /// Refuse new connections, ask every session to close with `close`; the receiver fires
    /// once the registry is empty.
    pub fn shutdown(
        &self,
        close: Close,
    ) -> impl Future<Output = Result<oneshot::Receiver<()>, HubUnavailable>> + 'static {
        answer(self.addr.send(Shutdown { close }))
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Connect(Registration);

#[derive(Message)]
#[rtype(result = "()")]
struct Disconnect {
    id: ConnectionId,
    serial: u64,
}

#[derive(Message)]
#[rtype(result = "(Vec<Settling>, Option<oneshot::Receiver<()>>)")]
struct Apply {
    id: ConnectionId,
    ops: Vec<ChannelOp>,
}

#[derive(Message)]
#[rtype(result = "Settling")]
struct PublishFrom {
    id: ConnectionId,
    op: ChannelOp,
}

#[derive(Message)]
#[rtype(result = "Fanning")]
struct Publish {
    channel: ChannelName,
    data: serde_json::Value,
}

#[derive(Message)]
#[rtype(result = "Fanning")]
struct Broadcast {
    data: serde_json::Value,
}

/// A publication (or, without a channel, a broadcast) from another node: delivered here only.
#[derive(Message)]
#[rtype(result = "()")]
struct RemotePublish {
    /// The channel; None for a broadcast.
    channel: Option<ChannelName>,
    /// The published value.
    data: serde_json::Value,
}

/// A newer connection with this id registered on another node.
#[derive(Message)]
#[rtype(result = "()")]
struct ReplaceRemote {
    /// The id the newer connection took.
    id: ConnectionId,
    /// The local session the directory named (a later local session keeps the id).
    serial: u64,
}

/// This node lost its cluster lease: close every connection without a notice.
#[derive(Message)]
#[rtype(result = "()")]
struct Fence;

/// Who is in a channel here (presence).
#[derive(Message)]
#[rtype(result = "Vec<ConnectionId>")]
struct ChannelMembers {
    /// The channel.
    channel: ChannelName,
}

#[derive(Message)]
#[rtype(result = "Result<oneshot::Receiver<Queued>, Undelivered>")]
struct SendTo {
    id: ConnectionId,
    frame: Frame,
}

#[derive(Message)]
#[rtype(result = "Result<(), Undelivered>")]
struct CloseConnection {
    id: ConnectionId,
    close: Close,
}

#[derive(Message)]
#[rtype(result = "Vec<ConnectionInfo>")]
struct ListConnections;

#[derive(Message)]
#[rtype(result = "Vec<ChannelInfo>")]
struct ListChannels;

#[derive(Message)]
#[rtype(result = "usize")]
struct CountSubscribers {
    channel: Option<ChannelName>,
}

#[derive(Message)]
#[rtype(result = "HubStats")]
struct Stats;

#[derive(Message)]
#[rtype(result = "oneshot::Receiver<()>")]
struct Shutdown {
    close: Close,
}

/// Connections a fan-out found cut off or gone: the hub removes them from the registry.
#[derive(Message)]
#[rtype(result = "()")]
struct Forget {
    stalled: Vec<ConnectionId>,
    gone: Vec<ConnectionId>,
}

/// A fan-out on its way: one report per worker it went to, and in a cluster the answer of
/// the other nodes.
struct Fanning {
    /// One report per worker.
    reports: Vec<oneshot::Receiver<Report>>,
    /// Whether the cluster took it to the other nodes, when there is a cluster.
    remote: Option<oneshot::Receiver<ClusterReach>>,
}

impl Fanning {
    /// Wait for every worker's report, sum them, and have the hub forget the connections that
    /// were cut off or gone. A worker that stopped (the process is going down) counts as
    /// having reached nobody.
    async fn settle(self, hub: &Addr<Hub>) -> Delivery {
        let mut delivery = Delivery::default();
        let mut stalled = Vec::new();
        let mut gone = Vec::new();
        for report in self.reports {
            let Ok(report) = report.await else { continue };
            delivery.reached += report.reached;
            delivery.dropped += report.stalled.len();
            stalled.extend(report.stalled);
            gone.extend(report.gone);
        }
        if !stalled.is_empty() || !gone.is_empty() {
            hub.do_send(Forget { stalled, gone });
        }
        if let Some(remote) = self.remote {
            delivery.cluster = Some(remote.await.unwrap_or(ClusterReach {
                published: false,
                other_nodes: 0,
            }));
        }
        delivery
    }
}

/// An operation's outcome, or a publish it made that is still on its way.
enum Settling {
    /// Done.
    Ready(OpOutcome),
    /// A publish: its outcome once the workers have reported.
    Publishing(Fanning),
}

impl Settling {
    async fn settle(self, hub: &Addr<Hub>) -> OpOutcome {
        match self {
            Settling::Ready(outcome) => outcome,
            Settling::Publishing(fanning) => OpOutcome::Published(fanning.settle(hub).await),
        }
    }
}

/// The hub actor: the registry, delivery, and shutdown.
struct Hub {
    registry: Registry<Arc<Link>>,
    /// Each worker's courier, by worker number, learnt from the registrations.
    couriers: Vec<Option<CourierHandle>>,
    /// Set once shutdown began: new connections are refused.
    shutting_down: bool,
    /// Who waits for the registry to become empty.
    empty_waiters: Vec<oneshot::Sender<()>>,
    /// Deliveries dropped because a connection's backlog was full.
    deliveries_dropped: u64,
    /// Connections cut off because they stopped reading.
    stalled: u64,
    /// The process's metrics (the channel gauge, pushes and their cut-offs).
    metrics: Arc<Metrics>,
    /// The cluster: told about channel interest and every publication made here.
    cluster: Option<ClusterHandle>,
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(HUB_MAILBOX_CAPACITY);
    }
}

impl Hub {
    fn new(
        limits: SubscriptionLimits,
        metrics: Arc<Metrics>,
        cluster: Option<ClusterHandle>,
    ) -> Self {
        Self {
            registry: Registry::new(limits),
            couriers: Vec::new(),
            shutting_down: false,
            empty_waiters: Vec::new(),
            deliveries_dropped: 0,
            stalled: 0,
            metrics,
            cluster,
        }
    }

    /// The courier of a link's worker (every registered link's courier is known).
    fn courier_of(&self, link: &Link) -> Option<&CourierHandle> {
        self.couriers.get(link.worker).and_then(Option::as_ref)
    }

    /// Links grouped by the worker their session runs on, in worker order.
    fn by_worker<'a>(&self, links: impl Iterator<Item = &'a Arc<Link>>) -> Vec<Vec<Arc<Link>>> {
        let mut batches: Vec<Vec<Arc<Link>>> = vec![Vec::new(); self.couriers.len()];
        for link in links {
            batches[link.worker].push(link.clone());
        }
        batches
    }

    /// Tell every member something beyond its backlog, one message per worker.
    fn tell_all(&self, outbound: &Outbound) {
        let batches = self.by_worker(self.registry.members().map(|(_, member)| &member.link));
        for (batch, courier) in batches.into_iter().zip(&self.couriers) {
            if let (Some(courier), false) = (courier, batch.is_empty()) {
                courier.tell(batch, outbound.clone());
            }
        }
    }

    /// Send one publication to many connections: one [`Fanout`] per worker thread with the
    /// links of its recipients. The couriers deliver and report; the hub does not wait.
    fn fan_out(&mut self, targets: &[ConnectionId], publication: Publication) -> Fanning {
        let batches = self.by_worker(
            targets
                .iter()
                .filter_map(|id| self.registry.get(id))
                .map(|member| &member.link),
        );
        let publication = Arc::new(publication);
        let mut reports = Vec::new();
        for (batch, courier) in batches.into_iter().zip(&self.couriers) {
            let (Some(courier), false) = (courier, batch.is_empty()) else {
                continue;
            };
            let (report, receiver) = oneshot::channel();
            courier.send(Fanout {
                publication: publication.clone(),
                targets: batch,
                report,
            });
            reports.push(receiver);
        }
        Fanning {
            reports,
            remote: None,
        }
    }

    /// A connection that stopped reading was cut off: count it and forget it.
    fn forget_stalled(&mut self, id: &ConnectionId) {
        self.deliveries_dropped += 1;
        self.stalled += 1;
        self.remove(id);
    }

    /// Remove a connection; wake shutdown waiters when the hub is empty.
    fn remove(&mut self, id: &ConnectionId) -> Option<crate::registry::Member<Arc<Link>>> {
        let member = self.registry.remove(id);
        self.after_removal();
        member
    }

    fn after_removal(&mut self) {
        if self.registry.is_empty() {
            for waiter in self.empty_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Interest changes are the seam for a cluster; a single node has nobody to tell.
    /// Interest changes go to the cluster (which subscribes in Redis); a single node has
    /// nobody to tell. The channel gauge follows them.
    fn settle(&mut self) {
        let changes = self.registry.take_interest();
        if changes.is_empty() {
            return;
        }
        self.metrics.set_channels(self.registry.channel_count());
        match &self.cluster {
            Some(cluster) => cluster.interest(changes),
            None => {
                for change in changes {
                    log::trace!("channel interest: {change:?}");
                }
            }
        }
    }

    /// Apply one operation for a connection; a publish it may make is delivered here.
    fn apply(&mut self, id: &ConnectionId, op: ChannelOp) -> Settling {
        match self.registry.apply(id, op) {
            Applied::Outcome(outcome) => Settling::Ready(outcome),
            Applied::Publish {
                targets,
                channel,
                data,
            } => Settling::Publishing(self.publish(&targets, channel, data)),
        }
    }

    fn publish(
        &mut self,
        targets: &[ConnectionId],
        channel: ChannelName,
        data: serde_json::Value,
    ) -> Fanning {
        let remote = self
            .cluster
            .as_ref()
            .map(|cluster| cluster.publish(Some(channel.clone()), data.clone()));
        let publication = Publication::new(Some(channel), data, PublicationKind::Message);
        let mut fanning = self.fan_out(targets, publication);
        fanning.remote = remote;
        fanning
    }
}

impl Handler<Connect> for Hub {
    type Result = ();

    fn handle(&mut self, Connect(msg): Connect, _: &mut Context<Self>) {
        let refuse = |recipient: &Recipient<Deliver>, close: Close| {
            recipient.do_send(Deliver(Outbound::Close(close)));
        };
        if self.shutting_down {
            let close = Close::new(close_code::GOING_AWAY, "server shutting down");
            return refuse(&msg.recipient, close);
        }
        let worker = msg.courier.worker();
        if self.couriers.len() <= worker {
            self.couriers.resize(worker + 1, None);
        }
        self.couriers[worker].get_or_insert(msg.courier);
        let link = Arc::new(Link::new(
            msg.id.clone(),
            msg.recipient.clone(),
            msg.dialect,
            msg.backlog,
            worker,
        ));
        let id = msg.id.clone();
        match self
            .registry
            .register(msg.id, msg.route, msg.remote, msg.serial, msg.replace, link)
        {
            Ok(Some(old)) => {
                // The newer connection wins; the older one is told why and forgotten at once,
                // so a push always reaches the live connection and no orphan is left behind.
                log::info!(id:% = id; "replaced by a newer connection with the same id");
                if let Some(courier) = self.courier_of(&old.link) {
                    courier.tell(vec![old.link.clone()], Outbound::Replaced);
                }
            }
            Ok(None) => {}
            Err(refused) => {
                let close = Close::new(close_code::TRY_AGAIN_LATER, refused.to_string());
                refuse(&msg.recipient, close);
            }
        }
        self.settle();
    }
}

impl Handler<Disconnect> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        if self.registry.deregister(&msg.id, msg.serial).is_some() {
            self.after_removal();
        }
        self.settle();
    }
}

impl Handler<Forget> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Forget, _: &mut Context<Self>) {
        for id in &msg.stalled {
            self.forget_stalled(id);
        }
        for id in &msg.gone {
            self.remove(id);
        }
        self.settle();
    }
}

impl Handler<Apply> for Hub {
    type Result = MessageResult<Apply>;

    fn handle(&mut self, msg: Apply, _: &mut Context<Self>) -> Self::Result {
        let subscribes = msg.ops.iter().any(|op| {
            matches!(
                op,
                ChannelOp::Subscribe(_) | ChannelOp::SubscribePrefix(_) | ChannelOp::Replace(_)
            )
        });
        let outcomes = msg
            .ops
            .into_iter()
            .map(|op| self.apply(&msg.id, op))
            .collect();
        self.settle();
        let barrier = match &self.cluster {
            Some(cluster) if subscribes => Some(cluster.barrier()),
            _ => None,
        };
        MessageResult((outcomes, barrier))
    }
}

impl Handler<PublishFrom> for Hub {
    type Result = MessageResult<PublishFrom>;

    fn handle(&mut self, msg: PublishFrom, _: &mut Context<Self>) -> Self::Result {
        let outcome = self.apply(&msg.id, msg.op);
        self.settle();
        MessageResult(outcome)
    }
}

impl Handler<Publish> for Hub {
    type Result = MessageResult<Publish>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        let targets = self.registry.targets(&msg.channel, None);
        let delivery = self.publish(&targets, msg.channel, msg.data);
        self.settle();
        MessageResult(delivery)
    }
}

impl Handler<Broadcast> for Hub {
    type Result = MessageResult<Broadcast>;

    fn handle(&mut self, msg: Broadcast, _: &mut Context<Self>) -> Self::Result {
        let targets: Vec<ConnectionId> =
            self.registry.members().map(|(id, _)| id.clone()).collect();
        let remote = self
            .cluster
            .as_ref()
            .map(|cluster| cluster.publish(None, msg.data.clone()));
        let publication = Publication::new(None, msg.data, PublicationKind::Broadcast);
        let mut fanning = self.fan_out(&targets, publication);
        fanning.remote = remote;
        self.settle();
        MessageResult(fanning)
    }
}

impl Handler<RemotePublish> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RemotePublish, ctx: &mut Context<Self>) {
        let (targets, publication) = match msg.channel {
            Some(channel) => (
                self.registry.targets(&channel, None),
                Publication::new(Some(channel), msg.data, PublicationKind::Message),
            ),
            None => (
                self.registry.members().map(|(id, _)| id.clone()).collect(),
                Publication::new(None, msg.data, PublicationKind::Broadcast),
            ),
        };
        let fanning = self.fan_out(&targets, publication);
        self.settle();
        // Nobody here waits for it, but cut-off connections must still be forgotten: the
        // reports are summed on a task of their own, never awaited by the hub.
        let hub = ctx.address();
        actix::spawn(async move {
            fanning.settle(&hub).await;
        });
    }
}

impl Handler<ReplaceRemote> for Hub {
    type Result = ();

    fn handle(&mut self, msg: ReplaceRemote, _: &mut Context<Self>) {
        if self.registry.get(&msg.id).map(|m| m.serial) != Some(msg.serial) {
            return;
        }
        if let Some(old) = self.remove(&msg.id) {
            if let Some(courier) = self.courier_of(&old.link) {
                courier.tell(vec![old.link.clone()], Outbound::Replaced);
            }
        }
        self.settle();
    }
}

impl Handler<Fence> for Hub {
    type Result = ();

    fn handle(&mut self, _: Fence, _: &mut Context<Self>) {
        // Like shutdown: the one close every session must see, beyond its backlog.
        self.tell_all(&Outbound::Fenced);
    }
}

impl Handler<ChannelMembers> for Hub {
    type Result = MessageResult<ChannelMembers>;

    fn handle(&mut self, msg: ChannelMembers, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.registry.members_of(&msg.channel))
    }
}

impl Handler<SendTo> for Hub {
    type Result = Result<oneshot::Receiver<Queued>, Undelivered>;

    fn handle(&mut self, msg: SendTo, _: &mut Context<Self>) -> Self::Result {
        let member = self
            .registry
            .get(&msg.id)
            .ok_or(Undelivered::UnknownConnection)?;
        let courier = self
            .courier_of(&member.link)
            .ok_or(Undelivered::UnknownConnection)?;
        // Through the worker's courier, so the frame keeps its place after the publications
        // already on their way to this connection.
        Ok(courier.send_one(member.link.clone(), msg.frame))
    }
}

impl Handler<CloseConnection> for Hub {
    type Result = Result<(), Undelivered>;

    fn handle(&mut self, msg: CloseConnection, _: &mut Context<Self>) -> Self::Result {
        let member = self
            .registry
            .get(&msg.id)
            .ok_or(Undelivered::UnknownConnection)?;
        // A close is one small message beyond the backlog: it must reach a stalled client too.
        // It goes through the courier, behind the publications already on their way.
        let courier = self
            .courier_of(&member.link)
            .ok_or(Undelivered::UnknownConnection)?;
        courier.tell(vec![member.link.clone()], Outbound::Close(msg.close));
        Ok(())
    }
}

impl Handler<ListConnections> for Hub {
    type Result = MessageResult<ListConnections>;

    fn handle(&mut self, _: ListConnections, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.registry.list_connections())
    }
}

impl Handler<ListChannels> for Hub {
    type Result = MessageResult<ListChannels>;

    fn handle(&mut self, _: ListChannels, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.registry.list_channels())
    }
}

impl Handler<CountSubscribers> for Hub {
    type Result = usize;

    fn handle(&mut self, msg: CountSubscribers, _: &mut Context<Self>) -> usize {
        self.registry.count_subscribers(msg.channel.as_ref())
    }
}

impl Handler<Stats> for Hub {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        let (opened, closed) = self.registry.totals();
        MessageResult(HubStats {
            connections: self.registry.len(),
            channels: self.registry.channel_count(),
            connections_opened: opened,
            connections_closed: closed,
            deliveries_dropped: self.deliveries_dropped,
            stalled_connections_closed: self.stalled,
        })
    }
}

impl Handler<Shutdown> for Hub {
    type Result = MessageResult<Shutdown>;

    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        let (tx, rx) = oneshot::channel();
        if self.registry.is_empty() {
            let _ = tx.send(());
        } else {
            self.empty_waiters.push(tx);
            // Shutdown is the one moment every session gets exactly one message beyond its
            // backlog: the close it must see even when its queue is full.
            self.tell_all(&Outbound::Close(msg.close));
        }
        MessageResult(rx)
    }
}

/// The cluster's way into this hub (the handle without a cluster: what comes from other
/// nodes is delivered and served here only).
impl LocalHub for HubHandle {
    fn deliver(&self, channel: Option<ChannelName>, data: serde_json::Value) -> bool {
        self.addr.try_send(RemotePublish { channel, data }).is_ok()
    }

    fn send_to(
        &self,
        id: ConnectionId,
        frame: Frame,
    ) -> LocalBoxFuture<'static, Option<Result<(), Undelivered>>> {
        let request = self.send_here(id, frame);
        Box::pin(async move { request.await.ok() })
    }

    fn close(
        &self,
        id: ConnectionId,
        close: Close,
    ) -> LocalBoxFuture<'static, Option<Result<(), Undelivered>>> {
        let request = self.close_here(id, close);
        Box::pin(async move { request.await.ok() })
    }

    fn replace(&self, id: ConnectionId, serial: u64) {
        self.addr.do_send(ReplaceRemote { id, serial });
    }

    fn fence(&self) {
        self.addr.do_send(Fence);
    }

    fn answer(&self, question: Question) -> LocalBoxFuture<'static, Option<serde_json::Value>> {
        let hub = self.local();
        Box::pin(async move {
            let value = match question {
                Question::Connections => serde_json::to_value(hub.connections().await.ok()?),
                Question::Channels => serde_json::to_value(hub.channels().await.ok()?),
                Question::Subscribers { channel } => {
                    let channel = match channel {
                        Some(name) => Some(ChannelName::parse(&name).ok()?),
                        None => None,
                    };
                    serde_json::to_value(hub.count_subscribers(channel).await.ok()?)
                }
                Question::Presence { channel } => {
                    let channel = ChannelName::parse(&channel).ok()?;
                    serde_json::to_value(hub.addr.send(ChannelMembers { channel }).await.ok()?)
                }
            };
            value.ok()
        })
    }

    fn figures(&self) -> LocalBoxFuture<'static, Option<(usize, usize)>> {
        let stats = self.stats();
        Box::pin(async move { stats.await.ok().map(|s| (s.connections, s.channels)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session stand-in that records what it was handed, in order.
    struct Recorder(std::rc::Rc<std::cell::RefCell<Vec<&'static str>>>);

    impl Actor for Recorder {
        type Context = Context<Self>;
    }

    impl Handler<Deliver> for Recorder {
        type Result = ();

        fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
            self.0.borrow_mut().push(match msg.0 {
                Outbound::Frame(_) => "frame",
                Outbound::Close(_) => "close",
                Outbound::Replaced => "replaced",
                Outbound::CutOff => "cut off",
                Outbound::Fenced => "fenced",
            });
        }
    }

    #[actix_web::test]
    async fn a_close_or_a_push_never_overtakes_a_publication_on_its_way() {
        let hub = HubHandle::start(ROOMY, Arc::new(Metrics::new()), None);
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let id = ConnectionId::parse("ordered").unwrap();
        hub.connect(Registration {
            id: id.clone(),
            route: Arc::from("/rpc"),
            remote: None,
            recipient: Recorder(seen.clone()).start().recipient(),
            serial: 1,
            replace: false,
            dialect: DialectKind::JsonRpc,
            backlog: Arc::new(Backlog::new(100, 1 << 20)),
            courier: CourierHandle::start(Arc::new(Metrics::new())),
        })
        .unwrap();
        let channel = ChannelName::parse("c").unwrap();
        hub.apply(id.clone(), vec![ChannelOp::Subscribe(channel.clone())])
            .await
            .unwrap();
        // Issued back to back: the hub handles all three before any courier runs.
        let published = hub.publish(channel, serde_json::json!({"n": 1}));
        let pushed = hub.send_to(id.clone(), Frame::text("direct"));
        let closed = hub.close(id, Close::new(close_code::NORMAL, "bye"));
        let (published, pushed, closed) = futures_util::join!(published, pushed, closed);
        assert_eq!(published.unwrap().reached, 1);
        assert_eq!(pushed.unwrap(), Ok(()));
        assert_eq!(closed.unwrap(), Ok(()));
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(*seen.borrow(), ["frame", "frame", "close"]);
    }

    /// A session stand-in that counts deliveries.
    struct Counter(std::rc::Rc<std::cell::Cell<usize>>);

    impl Actor for Counter {
        type Context = Context<Self>;
    }

    impl Handler<Deliver> for Counter {
        type Result = ();

        fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
            if let Outbound::Frame(_) = msg.0 {
                self.0.set(self.0.get() + 1);
            }
        }
    }

    const ROOMY: SubscriptionLimits = SubscriptionLimits {
        per_connection: 100,
        bytes_per_connection: 1 << 20,
        channels: 1000,
    };

    #[actix_web::test]
    async fn a_full_backlog_drops_the_delivery_and_cuts_the_connection_off() {
        let hub = HubHandle::start(ROOMY, Arc::new(Metrics::new()), None);
        let count = std::rc::Rc::new(std::cell::Cell::new(0));
        let backlog = Arc::new(Backlog::new(2, 1 << 20));
        let id = ConnectionId::parse("slow").unwrap();
        hub.connect(Registration {
            id: id.clone(),
            route: Arc::from("/rpc"),
            remote: None,
            recipient: Counter(count.clone()).start().recipient(),
            serial: 1,
            replace: false,
            dialect: DialectKind::JsonRpc,
            backlog: backlog.clone(),
            courier: CourierHandle::start(Arc::new(Metrics::new())),
        })
        .unwrap();
        let channel = ChannelName::parse("c").unwrap();
        let ops = vec![ChannelOp::Subscribe(channel.clone())];
        hub.apply(id.clone(), ops).await.unwrap();
        // Nobody writes: the backlog holds two, the third publication finds it full.
        for expected in [(1, 0), (1, 0), (0, 1)] {
            let delivery = hub
                .publish(channel.clone(), serde_json::json!({"n": 1}))
                .await
                .unwrap();
            assert_eq!((delivery.reached, delivery.dropped), expected);
        }
        let stats = hub.stats().await.unwrap();
        assert_eq!(stats.connections, 0);
        assert_eq!(stats.stalled_connections_closed, 1);
        assert_eq!(count.get(), 2);
    }
}
