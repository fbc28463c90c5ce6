//! The hub: one actor per process around the [`Registry`], reached through the cloneable
//! [`HubHandle`]. The actor is pure state too: it never awaits and never does I/O, so one slow
//! client or backend cannot stall routing for everyone else. Its messages are private; the
//! rest of the program calls the handle.
//!
//! Delivery policy: a publication is encoded once per dialect, and the same bytes are queued
//! for every recipient of that dialect. Before queueing, the hub reserves room in the
//! recipient's [`Backlog`] (messages and bytes not yet written to its socket, bounded by
//! `limits.outbound_queue` and `limits.outbound_queue_bytes`). When there is no room the client
//! has stopped reading: the delivery is counted as dropped and reported to whoever sent it, the
//! connection is cut off (removed from the registry and every channel) and told to close with
//! 1008. Memory therefore stays bounded per connection, and neighbours never wait.

use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::channel::{ChannelName, Publication, PublicationKind};
use crate::connection::ConnectionId;
use crate::delivery::{Deliver, Delivery, Outbound, Undelivered};
use crate::dialect::{self, DialectKind};
use crate::frame::{close_code, Close, Frame};
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
pub struct HubHandle(Addr<Hub>);

/// Turn the actor's reply into the handle's result.
async fn answer<T>(
    request: impl Future<Output = Result<T, MailboxError>> + 'static,
) -> Result<T, HubUnavailable> {
    request.await.map_err(|_| HubUnavailable)
}

impl HubHandle {
    /// Start the hub (once per process, before the servers) on the current arbiter.
    pub fn start(limits: SubscriptionLimits) -> Self {
        Self(Hub::new(limits).start())
    }

    /// Register a connection. It is queued at once and handled even if the session ends
    /// first (a reply would be dropped with it, and the registration skipped); a refusal
    /// reaches the session as a close (1001 while shutting down, 1013 for a duplicate id).
    pub fn connect(&self, registration: Registration) -> Result<(), HubUnavailable> {
        self.0
            .try_send(Connect(registration))
            .map_err(|_| HubUnavailable)
    }

    /// The connection ended (idempotent; a stale serial is ignored).
    pub fn disconnect(&self, id: ConnectionId, serial: u64) {
        self.0.do_send(Disconnect { id, serial });
    }

    /// Apply channel operations in order for one connection.
    pub fn apply(
        &self,
        id: ConnectionId,
        ops: Vec<ChannelOp>,
    ) -> impl Future<Output = Result<Vec<OpOutcome>, HubUnavailable>> + 'static {
        answer(self.0.send(Apply { id, ops }))
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
        answer(self.0.send(PublishFrom { id, op }))
    }

    /// Publish to a channel (from a backend).
    pub fn publish(
        &self,
        channel: ChannelName,
        data: serde_json::Value,
    ) -> impl Future<Output = Result<Delivery, HubUnavailable>> + 'static {
        answer(self.0.send(Publish { channel, data }))
    }

    /// Send to every connection.
    pub fn broadcast(
        &self,
        data: serde_json::Value,
    ) -> impl Future<Output = Result<Delivery, HubUnavailable>> + 'static {
        answer(self.0.send(Broadcast { data }))
    }

    /// Send a frame to one connection.
    pub fn send_to(
        &self,
        id: ConnectionId,
        frame: Frame,
    ) -> impl Future<Output = Result<Result<(), Undelivered>, HubUnavailable>> + 'static {
        answer(self.0.send(SendTo { id, frame }))
    }

    /// Close one connection with this code and reason.
    pub fn close(
        &self,
        id: ConnectionId,
        close: Close,
    ) -> impl Future<Output = Result<Result<(), Undelivered>, HubUnavailable>> + 'static {
        answer(self.0.send(CloseConnection { id, close }))
    }

    /// Every connection, sorted by id.
    pub fn connections(
        &self,
    ) -> impl Future<Output = Result<Vec<ConnectionInfo>, HubUnavailable>> + 'static {
        answer(self.0.send(ListConnections))
    }

    /// Every channel with its member count, sorted by name.
    pub fn channels(
        &self,
    ) -> impl Future<Output = Result<Vec<ChannelInfo>, HubUnavailable>> + 'static {
        answer(self.0.send(ListChannels))
    }

    /// Members of `channel`, or with `None` the connections in at least one channel.
    pub fn count_subscribers(
        &self,
        channel: Option<ChannelName>,
    ) -> impl Future<Output = Result<usize, HubUnavailable>> + 'static {
        answer(self.0.send(CountSubscribers { channel }))
    }

    /// The counters.
    pub fn stats(&self) -> impl Future<Output = Result<HubStats, HubUnavailable>> + 'static {
        answer(self.0.send(Stats))
    }

    /// Refuse new connections, ask every session to close with `close`; the receiver fires
    /// once the registry is empty.
    pub fn shutdown(
        &self,
        close: Close,
    ) -> impl Future<Output = Result<oneshot::Receiver<()>, HubUnavailable>> + 'static {
        answer(self.0.send(Shutdown { close }))
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
#[rtype(result = "Vec<OpOutcome>")]
struct Apply {
    id: ConnectionId,
    ops: Vec<ChannelOp>,
}

#[derive(Message)]
#[rtype(result = "OpOutcome")]
struct PublishFrom {
    id: ConnectionId,
    op: ChannelOp,
}

#[derive(Message)]
#[rtype(result = "Delivery")]
struct Publish {
    channel: ChannelName,
    data: serde_json::Value,
}

#[derive(Message)]
#[rtype(result = "Delivery")]
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

/// How the hub reaches one session.
struct Link {
    recipient: Recipient<Deliver>,
    dialect: DialectKind,
    backlog: Arc<Backlog>,
}

/// Whether a frame was handed to a session.
enum Queued {
    /// Queued.
    Yes,
    /// The connection's backlog or mailbox is full.
    Full,
    /// The session is gone.
    Gone,
}

impl Link {
    /// Reserve room in the connection's backlog, then hand the frame to its session.
    fn queue(&self, frame: Frame) -> Queued {
        let size = match &frame {
            Frame::Text(text) => text.len(),
            Frame::Binary(bytes) => bytes.len(),
        };
        if !self.backlog.try_reserve(size) {
            return Queued::Full;
        }
        match self.recipient.try_send(Deliver(Outbound::Frame(frame))) {
            Ok(()) => Queued::Yes,
            Err(SendError::Full(_)) => {
                self.backlog.release(1, size);
                Queued::Full
            }
            Err(SendError::Closed(_)) => {
                self.backlog.release(1, size);
                Queued::Gone
            }
        }
    }
}

/// The hub actor: the registry, delivery, and shutdown.
struct Hub {
    registry: Registry<Link>,
    /// Set once shutdown began: new connections are refused.
    shutting_down: bool,
    /// Who waits for the registry to become empty.
    empty_waiters: Vec<oneshot::Sender<()>>,
    /// Deliveries dropped because a connection's backlog was full.
    deliveries_dropped: u64,
    /// Connections cut off because they stopped reading.
    stalled: u64,
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(HUB_MAILBOX_CAPACITY);
    }
}

impl Hub {
    fn new(limits: SubscriptionLimits) -> Self {
        Self {
            registry: Registry::new(limits),
            shutting_down: false,
            empty_waiters: Vec::new(),
            deliveries_dropped: 0,
            stalled: 0,
        }
    }

    /// Queue a frame for one connection; a full backlog cuts the connection off.
    fn deliver(&mut self, id: &ConnectionId, frame: Frame) -> Result<(), Undelivered> {
        let member = self
            .registry
            .get(id)
            .ok_or(Undelivered::UnknownConnection)?;
        match member.link.queue(frame) {
            Queued::Yes => Ok(()),
            Queued::Full => {
                self.cut_off(id);
                Err(Undelivered::QueueFull)
            }
            Queued::Gone => {
                self.remove(id);
                Err(Undelivered::UnknownConnection)
            }
        }
    }

    /// Deliver one publication to many connections, then cut off those whose backlog was full.
    /// The publication is encoded once per dialect; every recipient shares those bytes.
    fn fan_out(&mut self, targets: &[ConnectionId], publication: Publication) -> Delivery {
        let mut delivery = Delivery::default();
        let mut stalled = Vec::new();
        let mut closed = Vec::new();
        for id in targets {
            let Some(member) = self.registry.get(id) else {
                continue;
            };
            let frame = dialect::encode(member.link.dialect, &publication);
            match member.link.queue(frame) {
                Queued::Yes => delivery.reached += 1,
                Queued::Full => stalled.push(id),
                Queued::Gone => closed.push(id),
            }
        }
        delivery.dropped = stalled.len();
        for id in stalled {
            self.cut_off(id);
        }
        for id in closed {
            self.remove(id);
        }
        delivery
    }

    /// A connection stopped reading: drop it from the registry and ask it to close with 1008.
    fn cut_off(&mut self, id: &ConnectionId) {
        self.deliveries_dropped += 1;
        self.stalled += 1;
        log::warn!(id:% = id; "outbound queue full: the client stopped reading; closing with 1008");
        if let Some(member) = self.remove(id) {
            // One close message beyond the backlog is the bounded exception: it is sent once,
            // and the connection gets nothing more from the hub.
            member.link.recipient.do_send(Deliver(Outbound::CutOff));
        }
    }

    /// Remove a connection; wake shutdown waiters when the hub is empty.
    fn remove(&mut self, id: &ConnectionId) -> Option<crate::registry::Member<Link>> {
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
        for change in self.registry.take_interest() {
            log::trace!("channel interest: {change:?}");
        }
    }

    /// Apply one operation for a connection; a publish it may make is delivered here.
    fn apply(&mut self, id: &ConnectionId, op: ChannelOp) -> OpOutcome {
        match self.registry.apply(id, op) {
            Applied::Outcome(outcome) => outcome,
            Applied::Publish {
                targets,
                channel,
                data,
            } => OpOutcome::Published(self.publish(&targets, channel, data)),
        }
    }

    fn publish(
        &mut self,
        targets: &[ConnectionId],
        channel: ChannelName,
        data: serde_json::Value,
    ) -> Delivery {
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
        let link = Link {
            recipient: msg.recipient.clone(),
            dialect: msg.dialect,
            backlog: msg.backlog,
        };
        let id = msg.id.clone();
        match self
            .registry
            .register(msg.id, msg.route, msg.remote, msg.serial, msg.replace, link)
        {
            Ok(Some(old)) => {
                // The newer connection wins; the older one is told why and forgotten at once,
                // so a push always reaches the live connection and no orphan is left behind.
                log::info!(id:% = id; "replaced by a newer connection with the same id");
                old.link.recipient.do_send(Deliver(Outbound::Replaced));
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
        member
            .link
            .recipient
            .do_send(Deliver(Outbound::Close(msg.close)));
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
                member
                    .link
                    .recipient
                    .do_send(Deliver(Outbound::Close(msg.close.clone())));
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
        let hub = HubHandle::start(ROOMY);
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
