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
use serde::Serialize;
use tokio::sync::oneshot;

use crate::channel::{ChannelName, Publication, PublicationKind};
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

/// The one way into the hub: cheap to clone, every call a message to the hub actor.
#[derive(Clone)]
pub struct HubHandle {
    /// The hub actor.
    addr: Addr<Hub>,
    /// The process's metrics (shared by everyone who holds the handle).
    metrics: Arc<Metrics>,
}

/// Turn the actor's reply into the handle's result.
async fn answer<T>(
    request: impl Future<Output = Result<T, MailboxError>> + 'static,
) -> Result<T, HubUnavailable> {
    request.await.map_err(|_| HubUnavailable)
}

impl HubHandle {
    /// Start the hub (once per process, before the servers) on the current arbiter.
    pub fn start(limits: SubscriptionLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            addr: Hub::new(limits, metrics.clone()).start(),
            metrics,
        }
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Register a connection. It is queued at once and handled even if the session ends
    /// first (a reply would be dropped with it, and the registration skipped); a refusal
    /// reaches the session as a close (1001 while shutting down, 1013 for a duplicate id).
    pub fn connect(&self, registration: Registration) -> Result<(), HubUnavailable> {
        self.addr
            .try_send(Connect(registration))
            .map_err(|_| HubUnavailable)
    }

    /// The connection ended (idempotent; a stale serial is ignored).
    pub fn disconnect(&self, id: ConnectionId, serial: u64) {
        self.addr.do_send(Disconnect { id, serial });
    }

    /// Apply channel operations in order for one connection.
    pub fn apply(
        &self,
        id: ConnectionId,
        ops: Vec<ChannelOp>,
    ) -> impl Future<Output = Result<Vec<OpOutcome>, HubUnavailable>> + 'static {
        let hub = self.addr.clone();
        async move {
            let settling = answer(hub.send(Apply { id, ops })).await?;
            let mut outcomes = Vec::with_capacity(settling.len());
            for outcome in settling {
                outcomes.push(outcome.settle(&hub).await);
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
        async move {
            let started = Instant::now();
            let settling = answer(hub.send(PublishFrom { id, op })).await?;
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
        async move {
            let started = Instant::now();
            let fanning = answer(hub.send(Publish { channel, data })).await?;
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
        async move {
            let started = Instant::now();
            let fanning = answer(hub.send(Broadcast { data })).await?;
            let delivery = fanning.settle(&hub).await;
            metrics.published("broadcast");
            metrics.fanned_out(started.elapsed().as_secs_f64());
            Ok(delivery)
        }
    }

    /// Send a frame to one connection.
    pub fn send_to(
        &self,
        id: ConnectionId,
        frame: Frame,
    ) -> impl Future<Output = Result<Result<(), Undelivered>, HubUnavailable>> + 'static {
        answer(self.addr.send(SendTo { id, frame }))
    }

    /// Close one connection with this code and reason.
    pub fn close(
        &self,
        id: ConnectionId,
        close: Close,
    ) -> impl Future<Output = Result<Result<(), Undelivered>, HubUnavailable>> + 'static {
        answer(self.addr.send(CloseConnection { id, close }))
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
#[rtype(result = "Vec<Settling>")]
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

#[derive(Message)]
#[rtype(result = "Result<(), Undelivered>")]
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

/// A fan-out on its way: one report per worker it went to.
struct Fanning(Vec<oneshot::Receiver<Report>>);

impl Fanning {
    /// Wait for every worker's report, sum them, and have the hub forget the connections that
    /// were cut off or gone. A worker that stopped (the process is going down) counts as
    /// having reached nobody.
    async fn settle(self, hub: &Addr<Hub>) -> Delivery {
        let mut delivery = Delivery::default();
        let mut stalled = Vec::new();
        let mut gone = Vec::new();
        for report in self.0 {
            let Ok(report) = report.await else { continue };
            delivery.reached += report.reached;
            delivery.dropped += report.stalled.len();
            stalled.extend(report.stalled);
            gone.extend(report.gone);
        }
        if !stalled.is_empty() || !gone.is_empty() {
            hub.do_send(Forget { stalled, gone });
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
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(HUB_MAILBOX_CAPACITY);
    }
}

impl Hub {
    fn new(limits: SubscriptionLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            registry: Registry::new(limits),
            couriers: Vec::new(),
            shutting_down: false,
            empty_waiters: Vec::new(),
            deliveries_dropped: 0,
            stalled: 0,
            metrics,
        }
    }

    /// Queue a frame for one connection; a full backlog cuts the connection off.
    fn deliver(&mut self, id: &ConnectionId, frame: Frame) -> Result<(), Undelivered> {
        let member = self
            .registry
            .get(id)
            .ok_or(Undelivered::UnknownConnection)?;
        let link = member.link.clone();
        match link.queue(frame) {
            Queued::Yes => {
                self.metrics.delivered(link.dialect, 1);
                Ok(())
            }
            Queued::Full => {
                if link.cut_off() {
                    self.metrics.cut_off();
                    self.forget_stalled(id);
                }
                Err(Undelivered::QueueFull)
            }
            Queued::Gone => {
                self.remove(id);
                Err(Undelivered::UnknownConnection)
            }
        }
    }

    /// Send one publication to many connections: one [`Fanout`] per worker thread with the
    /// links of its recipients. The couriers deliver and report; the hub does not wait.
    fn fan_out(&mut self, targets: &[ConnectionId], publication: Publication) -> Fanning {
        let mut batches: Vec<Vec<Arc<Link>>> = vec![Vec::new(); self.couriers.len()];
        for id in targets {
            if let Some(member) = self.registry.get(id) {
                batches[member.link.worker].push(member.link.clone());
            }
        }
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
        Fanning(reports)
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
    fn settle(&mut self) {
        let mut changed = false;
        for change in self.registry.take_interest() {
            log::trace!("channel interest: {change:?}");
            changed = true;
        }
        if changed {
            self.metrics.set_channels(self.registry.channel_count());
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
        let publication = Publication::new(Some(channel), data, PublicationKind::Message);
        self.fan_out(targets, publication)
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
                log::info!("id={id} replaced by a newer connection with the same id");
                old.link.tell(Outbound::Replaced);
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
        let outcomes = msg
            .ops
            .into_iter()
            .map(|op| self.apply(&msg.id, op))
            .collect();
        self.settle();
        MessageResult(outcomes)
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
        let publication = Publication::new(None, msg.data, PublicationKind::Broadcast);
        let delivery = self.fan_out(&targets, publication);
        self.settle();
        MessageResult(delivery)
    }
}

impl Handler<SendTo> for Hub {
    type Result = Result<(), Undelivered>;

    fn handle(&mut self, msg: SendTo, _: &mut Context<Self>) -> Self::Result {
        let result = self.deliver(&msg.id, msg.frame);
        self.settle();
        result
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
        member.link.tell(Outbound::Close(msg.close));
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
            for (_, member) in self.registry.members() {
                // Shutdown is the one moment every session gets exactly one message beyond its
                // backlog: the close it must see even when its queue is full.
                member.link.tell(Outbound::Close(msg.close.clone()));
            }
        }
        MessageResult(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let hub = HubHandle::start(ROOMY, Arc::new(Metrics::new()));
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
