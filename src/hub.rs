//! The hub actor: the registry of connections (id -> `Recipient<Deliver>`), the channel
//! subscriptions, and delivery. It is pure state: it never awaits and never does I/O, so one slow
//! client or backend cannot stall routing for everyone else.
//!
//! Delivery policy: a publication is encoded once per dialect, and the same bytes are queued
//! for every recipient of that dialect. Before queueing, the hub reserves room in the
//! recipient's [`Backlog`] (messages and bytes not yet written to its socket, bounded by
//! `limits.outbound_queue` and `limits.outbound_queue_bytes`). When there is no room the client
//! has stopped reading: the delivery is counted as dropped and reported to whoever sent it, the
//! connection is cut off (removed from the registry and every channel) and told to close with
//! 1008. Memory therefore stays bounded per connection, and neighbours never wait.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::channel::{close_code, ChannelName, Close, Frame, Publication, PublicationKind};
use crate::connection::ConnectionId;
use crate::dialect::DialectKind;
use crate::outbox::Backlog;

/// How many messages may wait in the hub's own mailbox before senders wait (backpressure on
/// the push API and on sessions asking for subscriptions).
const HUB_MAILBOX_CAPACITY: usize = 65_536;

/// Something for one session to send: a frame, or a close.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame to write as it is (a publication already encoded in the session's dialect);
    /// its room in the session's [`Backlog`] is reserved.
    Frame(Frame),
    /// Close the connection with this code and reason.
    Close(Close),
    /// A newer connection took this one's id: close with 4001 and send no disconnect notice.
    Replaced,
}

/// Hub -> session: send this to the client.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Deliver(pub Outbound);

/// Session -> hub: register a new connection.
#[derive(Message)]
#[rtype(result = "Result<(), ConnectRefused>")]
pub struct Connect {
    /// The connection's id.
    pub id: ConnectionId,
    /// The route path it connected on.
    pub route: Arc<str>,
    /// The client's address as the hub sees it.
    pub remote: Option<Arc<str>>,
    /// Where deliveries for it go.
    pub recipient: Recipient<Deliver>,
    /// Unique per session, so a replaced session's late `Disconnect` cannot remove its successor.
    pub serial: u64,
    /// On a duplicate id: replace the live connection (closed with 4001) instead of refusing.
    pub replace: bool,
    /// The dialect its publications are encoded in.
    pub dialect: DialectKind,
    /// What it has queued and not yet written (shared with its session).
    pub backlog: Arc<Backlog>,
}

/// Why the hub refused to register a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefused {
    /// Another live connection has this id.
    #[error("a connection with this id is already registered")]
    Duplicate,
    /// The hub is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Session -> hub: the connection is gone. Idempotent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    /// The connection that ended.
    pub id: ConnectionId,
    /// The session's serial (see [`Connect::serial`]).
    pub serial: u64,
}

/// One channel operation a client asked for through its dialect.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelOp {
    /// Join a channel (idempotent).
    Subscribe(ChannelName),
    /// Leave a channel (also fine when not a member).
    Unsubscribe(ChannelName),
    /// Receive every channel whose name starts with this prefix (fedmsg topics; "" is all).
    SubscribePrefix(String),
    /// Make this exactly the connection's set of channels (AWX groups).
    Replace(BTreeSet<ChannelName>),
    /// Publish to a channel from this connection.
    Publish {
        /// Target channel.
        channel: ChannelName,
        /// Published value.
        data: serde_json::Value,
        /// Leave the sender out of the delivery.
        exclude_sender: bool,
        /// Refuse unless the sender is a member of the channel.
        require_subscribed: bool,
    },
}

/// What came of one [`ChannelOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpOutcome {
    /// Now a member.
    Subscribed,
    /// No longer a member.
    Unsubscribed,
    /// Published: how many connections it reached and how many were cut off as stalled.
    Published(Delivery),
    /// The authorization hook refused this channel or prefix (never produced by the hub).
    Denied(String),
    /// The channel set was replaced.
    Replaced {
        /// Channels now, sorted.
        current: Vec<ChannelName>,
        /// Channels left, sorted.
        left: Vec<ChannelName>,
        /// Channels joined, sorted.
        joined: Vec<ChannelName>,
        /// Channels the authorization hook refused (filled in by the session, not the hub).
        denied: Vec<ChannelName>,
    },
    /// The sender must be a member of this channel to publish to it.
    NotSubscribed(ChannelName),
    /// The connection is not (or no longer) registered.
    UnknownConnection,
    /// The operation would take the connection or the hub past a subscription limit.
    LimitReached(SubscriptionLimit),
}

/// Which subscription limit refused an operation, with its configured value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionLimit {
    /// `limits.max_subscriptions`: channels plus prefixes one connection may hold.
    Count(usize),
    /// `limits.max_subscription_bytes`: bytes of channel names plus prefixes one connection may
    /// hold.
    Bytes(usize),
    /// `limits.max_channels`: distinct channels plus distinct prefixes the hub holds.
    Channels(usize),
}

impl std::fmt::Display for SubscriptionLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscriptionLimit::Count(n) => {
                write!(f, "a connection may hold {n} channels and topic prefixes")
            }
            SubscriptionLimit::Bytes(n) => write!(
                f,
                "the channel names and topic prefixes of a connection may total {n} bytes"
            ),
            SubscriptionLimit::Channels(n) => write!(
                f,
                "the server holds its maximum of {n} distinct channels and topic prefixes"
            ),
        }
    }
}

/// How much subscription state the hub may hold, per connection and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionLimits {
    /// Channels plus prefixes one connection may hold (`limits.max_subscriptions`).
    pub per_connection: usize,
    /// Bytes of channel names plus prefixes one connection may hold
    /// (`limits.max_subscription_bytes`); with `per_connection` it bounds a connection's share
    /// of the hub's memory.
    pub bytes_per_connection: usize,
    /// Distinct channels plus distinct prefixes of all connections (`limits.max_channels`),
    /// which bounds the channel index however many connections there are.
    pub channels: usize,
}

/// Session -> hub: apply these operations in order for this connection.
#[derive(Message)]
#[rtype(result = "Vec<OpOutcome>")]
pub struct Apply {
    /// The connection asking.
    pub id: ConnectionId,
    /// The operations, applied in order.
    pub ops: Vec<ChannelOp>,
}

/// How a publish or broadcast went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Connections the message was queued for.
    pub reached: usize,
    /// Connections that did not get it because their queue was full (they are cut off).
    pub dropped: usize,
}

/// Push API -> hub: publish to a channel.
#[derive(Message)]
#[rtype(result = "Delivery")]
pub struct Publish {
    /// Target channel.
    pub channel: ChannelName,
    /// Published value.
    pub data: serde_json::Value,
}

/// Push API -> hub: send to every connection.
#[derive(Message)]
#[rtype(result = "Delivery")]
pub struct Broadcast {
    /// Sent value.
    pub data: serde_json::Value,
}

/// Why a message for one connection was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Undelivered {
    /// No such connection.
    #[error("no connection with this id")]
    UnknownConnection,
    /// The connection's queue was full; it has been cut off.
    #[error("the connection's outbound queue is full; it has been closed with 1008")]
    QueueFull,
}

/// Push API -> hub: send a frame to one connection.
#[derive(Message)]
#[rtype(result = "Result<(), Undelivered>")]
pub struct SendTo {
    /// Target connection.
    pub id: ConnectionId,
    /// The frame.
    pub frame: Frame,
}

/// Push API -> hub: close one connection.
#[derive(Message)]
#[rtype(result = "Result<(), Undelivered>")]
pub struct CloseConnection {
    /// Target connection.
    pub id: ConnectionId,
    /// Code and reason sent to the client.
    pub close: Close,
}

/// One connection as the push API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    /// Its id.
    pub id: ConnectionId,
    /// The route it connected on.
    pub route: Arc<str>,
    /// The client's address.
    pub remote: Option<Arc<str>>,
    /// Channels it is a member of, sorted.
    pub channels: Vec<ChannelName>,
    /// Topic prefixes it receives (topics dialect), sorted.
    pub prefixes: Vec<Arc<str>>,
    /// When it connected, Unix seconds.
    pub connected_since: u64,
}

/// Push API -> hub: list connections.
#[derive(Message)]
#[rtype(result = "Vec<ConnectionInfo>")]
pub struct ListConnections;

/// One channel as the push API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelInfo {
    /// Its name.
    pub name: ChannelName,
    /// How many connections are members.
    pub subscribers: usize,
}

/// Push API -> hub: list channels with their member counts.
#[derive(Message)]
#[rtype(result = "Vec<ChannelInfo>")]
pub struct ListChannels;

/// Backend port -> hub: how many connections are members of `channel`, or, with `None`, how
/// many are members of at least one channel or prefix.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountSubscribers {
    /// The channel, or `None` for all subscribers.
    pub channel: Option<ChannelName>,
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

/// Anyone -> hub: the counters.
#[derive(Message)]
#[rtype(result = "HubStats")]
pub struct Stats;

/// Shutdown -> hub: refuse new connections, ask every session to close with `close`, and
/// answer with a receiver that fires once the registry is empty.
#[derive(Message)]
#[rtype(result = "oneshot::Receiver<()>")]
pub struct Shutdown {
    /// The close sent to every client (1001 going away).
    pub close: Close,
}

/// One registered connection.
struct Entry {
    recipient: Recipient<Deliver>,
    dialect: DialectKind,
    backlog: Arc<Backlog>,
    serial: u64,
    route: Arc<str>,
    remote: Option<Arc<str>>,
    since: SystemTime,
    channels: BTreeSet<ChannelName>,
    prefixes: BTreeSet<Arc<str>>,
    /// Bytes of the names in `channels` plus `prefixes`, held under
    /// `limits.max_subscription_bytes`.
    subscription_bytes: usize,
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

/// The hub actor. Start it once, before the HTTP server, and clone its `Addr` into workers.
pub struct Hub {
    /// How much subscription state connections may make the hub hold.
    limits: SubscriptionLimits,
    connections: HashMap<ConnectionId, Entry>,
    channels: HashMap<ChannelName, HashSet<ConnectionId>>,
    /// Prefix subscriptions: a publish to channel `c` looks up each prefix of `c` here, so its
    /// cost grows with the length of `c`, not with the number of distinct prefixes.
    prefixes: HashMap<Arc<str>, HashSet<ConnectionId>>,
    /// Set once shutdown began: new connections are refused.
    shutting_down: bool,
    /// Who waits for the registry to become empty.
    empty_waiters: Vec<oneshot::Sender<()>>,
    stats: HubStats,
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(HUB_MAILBOX_CAPACITY);
    }
}

impl Hub {
    /// An empty hub whose subscriptions are bounded by `limits`.
    pub fn new(limits: SubscriptionLimits) -> Self {
        Self {
            limits,
            connections: HashMap::new(),
            channels: HashMap::new(),
            prefixes: HashMap::new(),
            shutting_down: false,
            empty_waiters: Vec::new(),
            stats: HubStats::default(),
        }
    }

    /// Queue a frame for one connection; a full backlog cuts the connection off.
    fn deliver(&mut self, id: &ConnectionId, frame: Frame) -> Result<(), Undelivered> {
        let entry = self
            .connections
            .get(id)
            .ok_or(Undelivered::UnknownConnection)?;
        match Self::queue(entry, frame) {
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

    /// Reserve room in the connection's backlog, then hand the frame to its session.
    fn queue(entry: &Entry, frame: Frame) -> Queued {
        let size = match &frame {
            Frame::Text(text) => text.len(),
            Frame::Binary(bytes) => bytes.len(),
        };
        if !entry.backlog.try_reserve(size) {
            return Queued::Full;
        }
        match entry.recipient.try_send(Deliver(Outbound::Frame(frame))) {
            Ok(()) => Queued::Yes,
            Err(SendError::Full(_)) => {
                entry.backlog.release(1, size);
                Queued::Full
            }
            Err(SendError::Closed(_)) => {
                entry.backlog.release(1, size);
                Queued::Gone
            }
        }
    }

    /// Deliver one publication to many connections, then cut off those whose backlog was full.
    /// The publication is encoded once per dialect; every recipient shares those bytes.
    fn fan_out<'a>(
        &mut self,
        targets: impl Iterator<Item = &'a ConnectionId>,
        publication: Publication,
    ) -> Delivery {
        let mut delivery = Delivery::default();
        let mut stalled = Vec::new();
        let mut closed = Vec::new();
        for id in targets {
            let Some(entry) = self.connections.get(id) else {
                continue;
            };
            match Self::queue(entry, entry.dialect.encode(&publication)) {
                Queued::Yes => delivery.reached += 1,
                Queued::Full => stalled.push(id.clone()),
                Queued::Gone => closed.push(id.clone()),
            }
        }
        delivery.dropped = stalled.len();
        for id in &stalled {
            self.cut_off(id);
        }
        for id in &closed {
            self.remove(id);
        }
        delivery
    }

    /// A connection stopped reading: drop it from the registry and ask it to close with 1008.
    fn cut_off(&mut self, id: &ConnectionId) {
        self.stats.deliveries_dropped += 1;
        self.stats.stalled_connections_closed += 1;
        log::warn!("id={id} outbound queue full: the client stopped reading; closing with 1008");
        if let Some(entry) = self.remove(id) {
            // One close message beyond capacity is the bounded exception: it is sent once, and
            // the connection gets nothing more from the hub.
            entry.recipient.do_send(Deliver(Outbound::Close(Close::new(
                close_code::POLICY_VIOLATION,
                "outbound queue full: client is not reading",
            ))));
        }
    }

    /// Remove a connection and its memberships; wake shutdown waiters when the hub is empty.
    fn remove(&mut self, id: &ConnectionId) -> Option<Entry> {
        let entry = self.connections.remove(id)?;
        self.stats.connections_closed += 1;
        for channel in &entry.channels {
            self.leave_channel(channel, id);
        }
        for prefix in &entry.prefixes {
            if let Some(members) = self.prefixes.get_mut(prefix) {
                members.remove(id);
                if members.is_empty() {
                    self.prefixes.remove(prefix);
                }
            }
        }
        if self.connections.is_empty() {
            for waiter in self.empty_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        Some(entry)
    }

    fn leave_channel(&mut self, channel: &ChannelName, id: &ConnectionId) {
        if let Some(members) = self.channels.get_mut(channel) {
            members.remove(id);
            if members.is_empty() {
                self.channels.remove(channel);
            }
        }
    }

    fn apply(&mut self, id: &ConnectionId, op: ChannelOp) -> OpOutcome {
        let Some(entry) = self.connections.get_mut(id) else {
            return OpOutcome::UnknownConnection;
        };
        let limits = self.limits;
        let held = entry.channels.len() + entry.prefixes.len();
        // Distinct channels and prefixes of all connections (what `max_channels` bounds).
        let distinct = self.channels.len() + self.prefixes.len();
        match op {
            ChannelOp::Subscribe(channel) => {
                if entry.channels.contains(&channel) {
                    return OpOutcome::Subscribed;
                }
                if held >= limits.per_connection {
                    return OpOutcome::LimitReached(SubscriptionLimit::Count(
                        limits.per_connection,
                    ));
                }
                let bytes = entry.subscription_bytes + channel.as_str().len();
                if bytes > limits.bytes_per_connection {
                    return OpOutcome::LimitReached(SubscriptionLimit::Bytes(
                        limits.bytes_per_connection,
                    ));
                }
                // A channel that exists already lends its name: the bytes are held once.
                let channel = match self.channels.get_key_value(&channel) {
                    Some((name, _)) => name.clone(),
                    None if distinct >= limits.channels => {
                        return OpOutcome::LimitReached(SubscriptionLimit::Channels(
                            limits.channels,
                        ))
                    }
                    None => channel,
                };
                entry.subscription_bytes = bytes;
                entry.channels.insert(channel.clone());
                self.channels.entry(channel).or_default().insert(id.clone());
                OpOutcome::Subscribed
            }
            ChannelOp::Unsubscribe(channel) => {
                if entry.channels.remove(&channel) {
                    entry.subscription_bytes -= channel.as_str().len();
                    self.leave_channel(&channel, id);
                }
                OpOutcome::Unsubscribed
            }
            ChannelOp::SubscribePrefix(prefix) => {
                if entry.prefixes.contains(prefix.as_str()) {
                    return OpOutcome::Subscribed;
                }
                if held >= limits.per_connection {
                    return OpOutcome::LimitReached(SubscriptionLimit::Count(
                        limits.per_connection,
                    ));
                }
                let bytes = entry.subscription_bytes + prefix.len();
                if bytes > limits.bytes_per_connection {
                    return OpOutcome::LimitReached(SubscriptionLimit::Bytes(
                        limits.bytes_per_connection,
                    ));
                }
                let prefix: Arc<str> = match self.prefixes.get_key_value(prefix.as_str()) {
                    Some((name, _)) => name.clone(),
                    None if distinct >= limits.channels => {
                        return OpOutcome::LimitReached(SubscriptionLimit::Channels(
                            limits.channels,
                        ))
                    }
                    None => Arc::from(prefix),
                };
                entry.subscription_bytes = bytes;
                entry.prefixes.insert(prefix.clone());
                self.prefixes.entry(prefix).or_default().insert(id.clone());
                OpOutcome::Subscribed
            }
            ChannelOp::Replace(wanted) => {
                if wanted.len() + entry.prefixes.len() > limits.per_connection {
                    return OpOutcome::LimitReached(SubscriptionLimit::Count(
                        limits.per_connection,
                    ));
                }
                let prefix_bytes: usize = entry.prefixes.iter().map(|p| p.len()).sum();
                let bytes = prefix_bytes + wanted.iter().map(|c| c.as_str().len()).sum::<usize>();
                if bytes > limits.bytes_per_connection {
                    return OpOutcome::LimitReached(SubscriptionLimit::Bytes(
                        limits.bytes_per_connection,
                    ));
                }
                let created = wanted
                    .iter()
                    .filter(|c| !self.channels.contains_key(*c))
                    .count();
                // Channels only this connection is in disappear when it leaves them.
                let emptied = entry
                    .channels
                    .difference(&wanted)
                    .filter(|c| self.channels.get(*c).is_some_and(|m| m.len() == 1))
                    .count();
                if created > 0 && distinct + created - emptied > limits.channels {
                    return OpOutcome::LimitReached(SubscriptionLimit::Channels(limits.channels));
                }
                // Existing channels lend their names, so the bytes are held once.
                let wanted: BTreeSet<ChannelName> = wanted
                    .into_iter()
                    .map(|c| match self.channels.get_key_value(&c) {
                        Some((name, _)) => name.clone(),
                        None => c,
                    })
                    .collect();
                let left: Vec<ChannelName> = entry.channels.difference(&wanted).cloned().collect();
                let joined: Vec<ChannelName> =
                    wanted.difference(&entry.channels).cloned().collect();
                entry.channels = wanted;
                entry.subscription_bytes = bytes;
                let current = entry.channels.iter().cloned().collect();
                for channel in &left {
                    self.leave_channel(channel, id);
                }
                for channel in &joined {
                    self.channels
                        .entry(channel.clone())
                        .or_default()
                        .insert(id.clone());
                }
                OpOutcome::Replaced {
                    current,
                    left,
                    joined,
                    denied: Vec::new(),
                }
            }
            ChannelOp::Publish {
                channel,
                data,
                exclude_sender,
                require_subscribed,
            } => {
                if require_subscribed && !entry.channels.contains(&channel) {
                    return OpOutcome::NotSubscribed(channel);
                }
                let delivery = self.publish(channel, data, exclude_sender.then_some(id));
                OpOutcome::Published(delivery)
            }
        }
    }

    fn publish(
        &mut self,
        channel: ChannelName,
        data: serde_json::Value,
        exclude: Option<&ConnectionId>,
    ) -> Delivery {
        // The targets are copied so delivery may cut members off while walking them.
        let mut targets: Vec<ConnectionId> = self
            .channels
            .get(&channel)
            .into_iter()
            .flatten()
            .filter(|member| Some(*member) != exclude)
            .cloned()
            .collect();
        if !self.prefixes.is_empty() {
            // Each prefix of the name (the empty one and the whole name included) is one
            // lookup; a connection matched several times is delivered to once.
            let name = channel.as_str();
            let mut seen: HashSet<&ConnectionId> = targets.iter().collect();
            let mut matched = Vec::new();
            let ends = name.char_indices().map(|(i, _)| i).chain([name.len()]);
            for end in ends {
                for member in self.prefixes.get(&name[..end]).into_iter().flatten() {
                    if Some(member) != exclude && seen.insert(member) {
                        matched.push(member.clone());
                    }
                }
            }
            targets.extend(matched);
        }
        let publication = Publication::new(Some(channel), data, PublicationKind::Message);
        self.fan_out(targets.iter(), publication)
    }
}

impl Handler<Connect> for Hub {
    type Result = Result<(), ConnectRefused>;

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            return Err(ConnectRefused::ShuttingDown);
        }
        if self.connections.contains_key(&msg.id) {
            if !msg.replace {
                return Err(ConnectRefused::Duplicate);
            }
            // The newer connection wins; the older one is told why and forgotten at once, so a
            // push always reaches the live connection and no orphan entry is left behind.
            if let Some(old) = self.remove(&msg.id) {
                log::info!(
                    "id={} replaced by a newer connection with the same id",
                    msg.id
                );
                old.recipient.do_send(Deliver(Outbound::Replaced));
            }
        }
        self.stats.connections_opened += 1;
        self.connections.insert(
            msg.id,
            Entry {
                recipient: msg.recipient,
                dialect: msg.dialect,
                backlog: msg.backlog,
                serial: msg.serial,
                route: msg.route,
                remote: msg.remote,
                since: SystemTime::now(),
                channels: BTreeSet::new(),
                prefixes: BTreeSet::new(),
                subscription_bytes: 0,
            },
        );
        Ok(())
    }
}

impl Handler<Disconnect> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        if self.connections.get(&msg.id).map(|e| e.serial) == Some(msg.serial) {
            self.remove(&msg.id);
        }
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
        MessageResult(outcomes)
    }
}

impl Handler<Publish> for Hub {
    type Result = MessageResult<Publish>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.publish(msg.channel, msg.data, None))
    }
}

impl Handler<Broadcast> for Hub {
    type Result = MessageResult<Broadcast>;

    fn handle(&mut self, msg: Broadcast, _: &mut Context<Self>) -> Self::Result {
        let targets: Vec<ConnectionId> = self.connections.keys().cloned().collect();
        let publication = Publication::new(None, msg.data, PublicationKind::Broadcast);
        MessageResult(self.fan_out(targets.iter(), publication))
    }
}

impl Handler<SendTo> for Hub {
    type Result = Result<(), Undelivered>;

    fn handle(&mut self, msg: SendTo, _: &mut Context<Self>) -> Self::Result {
        self.deliver(&msg.id, msg.frame)
    }
}

impl Handler<CloseConnection> for Hub {
    type Result = Result<(), Undelivered>;

    fn handle(&mut self, msg: CloseConnection, _: &mut Context<Self>) -> Self::Result {
        let entry = self
            .connections
            .get(&msg.id)
            .ok_or(Undelivered::UnknownConnection)?;
        // A close is one small message beyond the backlog: it must reach a stalled client too.
        entry.recipient.do_send(Deliver(Outbound::Close(msg.close)));
        Ok(())
    }
}

impl Handler<ListConnections> for Hub {
    type Result = MessageResult<ListConnections>;

    fn handle(&mut self, _: ListConnections, _: &mut Context<Self>) -> Self::Result {
        let mut list: Vec<ConnectionInfo> = self
            .connections
            .iter()
            .map(|(id, entry)| ConnectionInfo {
                id: id.clone(),
                route: entry.route.clone(),
                remote: entry.remote.clone(),
                channels: entry.channels.iter().cloned().collect(),
                prefixes: entry.prefixes.iter().cloned().collect(),
                connected_since: entry
                    .since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        MessageResult(list)
    }
}

impl Handler<ListChannels> for Hub {
    type Result = MessageResult<ListChannels>;

    fn handle(&mut self, _: ListChannels, _: &mut Context<Self>) -> Self::Result {
        let mut list: Vec<ChannelInfo> = self
            .channels
            .iter()
            .map(|(name, members)| ChannelInfo {
                name: name.clone(),
                subscribers: members.len(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        MessageResult(list)
    }
}

impl Handler<CountSubscribers> for Hub {
    type Result = usize;

    fn handle(&mut self, msg: CountSubscribers, _: &mut Context<Self>) -> usize {
        match msg.channel {
            Some(channel) => self.channels.get(&channel).map_or(0, HashSet::len),
            None => self
                .connections
                .values()
                .filter(|e| !e.channels.is_empty() || !e.prefixes.is_empty())
                .count(),
        }
    }
}

impl Handler<Stats> for Hub {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(HubStats {
            connections: self.connections.len(),
            channels: self.channels.len(),
            ..self.stats
        })
    }
}

impl Handler<Shutdown> for Hub {
    type Result = MessageResult<Shutdown>;

    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        let (tx, rx) = oneshot::channel();
        if self.connections.is_empty() {
            let _ = tx.send(());
        } else {
            self.empty_waiters.push(tx);
            for entry in self.connections.values() {
                // Shutdown is the one moment every session gets exactly one message beyond its
                // queue: the close it must see even when its queue is full.
                entry
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

    /// A session stand-in that swallows deliveries.
    struct Sink;

    impl Actor for Sink {
        type Context = Context<Self>;
    }

    impl Handler<Deliver> for Sink {
        type Result = ();

        fn handle(&mut self, _: Deliver, _: &mut Context<Self>) {}
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    /// A hub with these limits and `n` registered connections `c0`, `c1`, ...
    async fn hub_with(limits: SubscriptionLimits, n: usize) -> (Addr<Hub>, Vec<ConnectionId>) {
        let hub = Hub::new(limits).start();
        let mut ids = Vec::new();
        for i in 0..n {
            let id = ConnectionId::parse(&format!("c{i}")).unwrap();
            hub.send(Connect {
                id: id.clone(),
                route: Arc::from("/rpc"),
                remote: None,
                recipient: Sink.start().recipient(),
                serial: i as u64,
                replace: false,
                dialect: DialectKind::JsonRpc,
                backlog: Arc::new(Backlog::new(16, 1 << 20)),
            })
            .await
            .unwrap()
            .unwrap();
            ids.push(id);
        }
        (hub, ids)
    }

    async fn apply(hub: &Addr<Hub>, id: &ConnectionId, op: ChannelOp) -> OpOutcome {
        let mut outcomes = hub
            .send(Apply {
                id: id.clone(),
                ops: vec![op],
            })
            .await
            .unwrap();
        outcomes.pop().unwrap()
    }

    const ROOMY: SubscriptionLimits = SubscriptionLimits {
        per_connection: 1_000,
        bytes_per_connection: 1 << 20,
        channels: 1_000,
    };

    #[actix_web::test]
    async fn a_connection_holds_at_most_its_byte_budget() {
        let limits = SubscriptionLimits {
            bytes_per_connection: 600,
            ..ROOMY
        };
        let (hub, ids) = hub_with(limits, 1).await;
        let c = &ids[0];
        let a = "a".repeat(256);
        let b = "b".repeat(256);
        let sub = |name: &str| ChannelOp::Subscribe(channel(name));
        assert_eq!(apply(&hub, c, sub(&a)).await, OpOutcome::Subscribed);
        assert_eq!(apply(&hub, c, sub(&b)).await, OpOutcome::Subscribed);
        assert_eq!(
            apply(&hub, c, sub(&a)).await,
            OpOutcome::Subscribed,
            "idempotent"
        );
        let refused = OpOutcome::LimitReached(SubscriptionLimit::Bytes(600));
        assert_eq!(apply(&hub, c, sub(&"c".repeat(89))).await, refused);
        assert_eq!(
            apply(&hub, c, ChannelOp::SubscribePrefix("p".repeat(89))).await,
            refused
        );
        assert_eq!(
            apply(&hub, c, sub(&"c".repeat(88))).await,
            OpOutcome::Subscribed
        );
        // Leaving gives the bytes back.
        apply(&hub, c, ChannelOp::Unsubscribe(channel(&a))).await;
        assert_eq!(
            apply(&hub, c, ChannelOp::SubscribePrefix("p".repeat(256))).await,
            OpOutcome::Subscribed
        );
        // A replacement is measured whole, the prefixes included (256 + 256 + 89 > 600).
        let wanted: BTreeSet<_> = [b.as_str(), &"d".repeat(89)]
            .into_iter()
            .map(channel)
            .collect();
        assert_eq!(apply(&hub, c, ChannelOp::Replace(wanted)).await, refused);
        let wanted: BTreeSet<_> = [b.as_str(), &"d".repeat(88)]
            .into_iter()
            .map(channel)
            .collect();
        assert!(matches!(
            apply(&hub, c, ChannelOp::Replace(wanted)).await,
            OpOutcome::Replaced { .. }
        ));
        // The count limit is still reported as such.
        let limits = SubscriptionLimits {
            per_connection: 1,
            ..ROOMY
        };
        let (hub, ids) = hub_with(limits, 1).await;
        apply(&hub, &ids[0], sub("x")).await;
        assert_eq!(
            apply(&hub, &ids[0], sub("y")).await,
            OpOutcome::LimitReached(SubscriptionLimit::Count(1))
        );
    }

    #[actix_web::test]
    async fn the_hub_holds_at_most_max_channels_distinct_channels_and_prefixes() {
        let limits = SubscriptionLimits {
            channels: 3,
            ..ROOMY
        };
        let (hub, ids) = hub_with(limits, 2).await;
        let (a, b) = (&ids[0], &ids[1]);
        let sub = |name: &str| ChannelOp::Subscribe(channel(name));
        let full = OpOutcome::LimitReached(SubscriptionLimit::Channels(3));
        assert_eq!(apply(&hub, a, sub("one")).await, OpOutcome::Subscribed);
        assert_eq!(apply(&hub, a, sub("two")).await, OpOutcome::Subscribed);
        assert_eq!(
            apply(&hub, a, ChannelOp::SubscribePrefix("p.".into())).await,
            OpOutcome::Subscribed
        );
        assert_eq!(apply(&hub, b, sub("three")).await, full);
        assert_eq!(
            apply(&hub, b, ChannelOp::SubscribePrefix("q.".into())).await,
            full
        );
        // Existing channels and prefixes can still be joined.
        assert_eq!(apply(&hub, b, sub("one")).await, OpOutcome::Subscribed);
        assert_eq!(
            apply(&hub, b, ChannelOp::SubscribePrefix("p.".into())).await,
            OpOutcome::Subscribed
        );
        let more: BTreeSet<_> = ["one", "four"].into_iter().map(channel).collect();
        assert_eq!(apply(&hub, b, ChannelOp::Replace(more)).await, full);
        // A replacement that empties a channel of its own makes room for its new one.
        apply(&hub, a, ChannelOp::Unsubscribe(channel("one"))).await;
        let keep: BTreeSet<_> = ["two", "four"].into_iter().map(channel).collect();
        assert_eq!(
            apply(&hub, a, ChannelOp::Replace(keep)).await,
            full,
            "two stays"
        );
        let swap: BTreeSet<_> = ["four"].into_iter().map(channel).collect();
        assert!(matches!(
            apply(&hub, a, ChannelOp::Replace(swap)).await,
            OpOutcome::Replaced { .. }
        ));
        // Once a channel's last member leaves, its slot is free again.
        hub.send(Disconnect {
            id: a.clone(),
            serial: 0,
        })
        .await
        .unwrap();
        assert_eq!(apply(&hub, b, sub("five")).await, OpOutcome::Subscribed);
        let stats = hub.send(Stats).await.unwrap();
        assert_eq!(stats.channels, 2, "one and five");
    }
}
