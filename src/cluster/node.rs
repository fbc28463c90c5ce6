//! The cluster thread: one current-thread runtime with a task per job, all sharing one
//! [`Node`] state (no locks: one thread).
//!
//! - the command loop: publications (pipelined in order), interest changes, directory
//!   entries, requests for connections of other nodes, surveys;
//! - the subscription loop: the RESP3 subscription connection, re-made (and every channel
//!   subscribed again) whenever it drops or its probe does not come back;
//! - the router: what the subscription delivers, de-duplicated, to the hub or to the request
//!   that waits for it; it never waits itself;
//! - the lease loop: join, renew and heartbeat every quarter of the lease, fence when the
//!   lease is lost or cannot be renewed in time;
//! - the reaper: claims dead runs and sends their connections' notices;
//! - the sweeper: unsubscribes channels whose last local member left a while ago.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use base64::Engine;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Notify};

use super::scripts::{FORGET, JOIN, REAP, RENEW};
use super::wire::{Control, Envelope, Outcome, Question};
use super::{
    unix_ms, ClusterReach, Command, Coverage, LocalHub, NodeBeat, RemoteAction, RemoteError,
    Shared, Surveyed,
};
use crate::backend::http::{notice_id, process_tag, Orphaned};
use crate::channel::ChannelName;
use crate::connection::ConnectionId;
use crate::delivery::Undelivered;
use crate::frame::{close_code, Close, Frame};
use crate::registry::{Interest, Topic};

/// Messages the subscription may hand to the router before it drops (and counts) the rest.
const READER_QUEUE: usize = 16_384;
/// Publications (or new connections) sent to Redis in one pipeline at most.
const PUBLISH_BATCH: usize = 256;
/// Publication ids remembered for de-duplication (a copy through a prefix arrives right
/// after the copy through the channel).
const RECENT: usize = 4_096;
/// Pause before the subscription connection is tried again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// A Redis channel or pattern this node subscribes to for its local members.
struct Subscription {
    /// For a pattern, the topic prefix it stands for.
    prefix: Option<Arc<str>>,
    /// A local member wants it.
    wanted: bool,
    /// When the last local member left.
    lost_at: Option<Instant>,
    /// Subscribed on the current connection.
    subscribed: bool,
}

/// One local connection as Redis knows it.
#[derive(Clone, Copy)]
struct Local {
    /// Its session serial.
    serial: u64,
    /// A newer connection with its id replaces an older one.
    replace: bool,
}

/// The run this process holds a lease as.
#[derive(Clone)]
struct Run {
    /// `{process tag}.{generation}`.
    id: String,
    /// The data set's epoch it joined under.
    epoch: String,
}

/// An answer to a request of this node.
struct Answer {
    /// The answering node.
    node: String,
    /// Its run.
    run: String,
    /// What it said.
    body: Value,
}

/// The cluster thread's state.
struct Node {
    /// What the handle shares.
    shared: Arc<Shared>,
    /// The local hub.
    hub: Box<dyn LocalHub + Send>,
    /// Where reaped notices go (none when this node's backend announces nothing).
    orphans: Option<Recipient<Orphaned>>,
    /// The Redis client (RESP3).
    client: Client,
    /// The command connection (reconnects by itself).
    commands: ConnectionManager,
    /// The subscription connection, while up.
    pubsub: RefCell<Option<MultiplexedConnection>>,
    /// Channels and patterns wanted or still kept, by Redis name.
    subscriptions: RefCell<HashMap<String, Subscription>>,
    /// Local connections, by id.
    local: RefCell<HashMap<ConnectionId, Local>>,
    /// Ended connections Redis could not be told about yet: (id, serial, run).
    forgets: RefCell<Vec<(ConnectionId, u64, String)>>,
    /// The current run, while a lease is held.
    run: RefCell<Option<Run>>,
    /// The next run's generation.
    generation: Cell<u64>,
    /// Earlier runs of this process whose sockets it closed (fenced), to reap once back.
    own_dead: RefCell<Vec<String>>,
    /// The first join has not happened yet (a previous run of the name is looked at then).
    first_join: Cell<bool>,
    /// The last publication sequence number.
    seq: Cell<u64>,
    /// The last request number.
    next_req: Cell<u64>,
    /// Requests waiting for answers.
    pending: RefCell<HashMap<u64, mpsc::UnboundedSender<Answer>>>,
    /// Recently delivered publication ids.
    recent: RefCell<(HashSet<u64>, VecDeque<u64>)>,
    /// When the last probe came back.
    last_probe: Cell<Instant>,
    /// Since when every renewal succeeded (reaping waits a lease after an outage).
    healthy_since: Cell<Option<Instant>>,
    /// The run whose control channel the current subscription connection reads.
    control: RefCell<Option<String>>,
    /// Redis answered the last command (the lease and subscription loops keep asking while
    /// it does not; everything else fails at once meanwhile instead of queueing behind
    /// timeouts).
    reachable: Cell<bool>,
    /// A local connection could not be written to Redis: write them all at the next renewal.
    needs_resync: Cell<bool>,
}

/// Run the cluster on this (new) thread until the process ends.
pub(super) fn run(
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    hub: Box<dyn LocalHub + Send>,
    orphans: Option<Recipient<Orphaned>>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the cluster runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let client = match client(&shared.settings.url) {
            Ok(client) => client,
            Err(e) => {
                log::error!("cluster: cannot use cluster.url: {e}");
                return;
            }
        };
        let timeout = shared.settings.timeout;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let commands_conn = match ConnectionManager::new_lazy_with_config(client.clone(), config) {
            Ok(conn) => conn,
            Err(e) => {
                log::error!("cluster: cannot set up the Redis connection: {e}");
                return;
            }
        };
        let node = Rc::new(Node {
            shared,
            hub,
            orphans,
            client,
            commands: commands_conn,
            pubsub: RefCell::new(None),
            subscriptions: RefCell::new(HashMap::new()),
            local: RefCell::new(HashMap::new()),
            forgets: RefCell::new(Vec::new()),
            run: RefCell::new(None),
            generation: Cell::new(0),
            own_dead: RefCell::new(Vec::new()),
            first_join: Cell::new(true),
            seq: Cell::new(0),
            next_req: Cell::new(0),
            pending: RefCell::new(HashMap::new()),
            recent: RefCell::new((HashSet::new(), VecDeque::new())),
            last_probe: Cell::new(Instant::now()),
            healthy_since: Cell::new(None),
            control: RefCell::new(None),
            reachable: Cell::new(true),
            needs_resync: Cell::new(false),
        });
        let (push_tx, push_rx) = mpsc::channel(READER_QUEUE);
        tokio::task::spawn_local(node.clone().lease_loop());
        tokio::task::spawn_local(node.clone().subscription_loop(push_tx));
        tokio::task::spawn_local(node.clone().router(push_rx));
        tokio::task::spawn_local(node.clone().reap_loop());
        tokio::task::spawn_local(node.clone().sweep_loop());
        node.command_loop(commands).await;
    });
}

/// The RESP3 client for `url`, with TCP_NODELAY on its sockets. redis-rs leaves Nagle's
/// algorithm on by default, and then a small write (a PUBLISH, a renewal) made while an
/// earlier one is still unacknowledged waits for Redis's delayed ACK (up to 40 ms on Linux).
/// At 100 publishes/s one at a time it made no measurable difference (2 nodes, 1,000
/// subscribers: delivery p50 9.5 ms and p99 32 ms with Nagle, 9.0 and 31 ms without); it
/// matters when several commands share the connection at once.
fn client(url: &str) -> redis::RedisResult<Client> {
    let info = url.into_connection_info()?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Client::open(
        info.set_redis_settings(settings)
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)),
    )
}

/// The text of a bulk string.
fn text(value: Option<&redis::Value>) -> Option<&str> {
    match value? {
        redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        redis::Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// The bytes of a bulk string.
fn bytes(value: Option<&redis::Value>) -> Option<&[u8]> {
    match value? {
        redis::Value::BulkString(bytes) => Some(bytes),
        redis::Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// Strike settled notices off the owed hash `key`. Those that cannot be struck off stay owed:
/// if the run dies, its reaper sends them again, with the same notice ids.
async fn strike_owed(
    mut conn: ConnectionManager,
    key: &str,
    fields: Vec<String>,
    timeout: Duration,
) {
    for chunk in fields.chunks(PUBLISH_BATCH) {
        let struck = tokio::time::timeout(
            timeout,
            redis::cmd("HDEL")
                .arg(key)
                .arg(chunk)
                .query_async::<()>(&mut conn),
        )
        .await;
        if !matches!(struck, Ok(Ok(()))) {
            log::warn!(
                "cluster: settled notices not struck off; they are sent again if this run dies"
            );
        }
    }
}

/// The process tag of a run id (`{tag}.{generation}`).
fn tag_of(run: &str) -> &str {
    run.split('.').next().unwrap_or(run)
}

/// Split a directory value `run:serial`.
fn owner_of(value: &str) -> Option<(&str, u64)> {
    let (run, serial) = value.rsplit_once(':')?;
    Some((run, serial.parse().ok()?))
}

impl Node {
    fn settings(&self) -> &super::Settings {
        &self.shared.settings
    }

    fn keys(&self) -> &super::keys::Keys {
        &self.shared.settings.keys
    }

    fn run_id(&self) -> Option<String> {
        self.run.borrow().as_ref().map(|run| run.id.clone())
    }

    /// Run a Redis future within the request timeout.
    async fn timed<T>(
        &self,
        future: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        // A little longer than the connections' own response timeout, so a connection that
        // stopped answering (a blackhole, not a reset) fails inside the client, which then
        // replaces it, instead of being abandoned here and reused.
        let outer = self.settings().timeout + self.settings().timeout / 2;
        match tokio::time::timeout(outer, future).await {
            Ok(Ok(value)) => {
                self.reachable.set(true);
                Ok(value)
            }
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                    self.reachable.set(false);
                }
                Err(e.to_string())
            }
            Err(_) => {
                self.reachable.set(false);
                Err("Redis did not answer in time".into())
            }
        }
    }

    /// The current run, when Redis is reachable and a lease is held: what every command
    /// other than the lease's and the subscription's needs, so that none of them waits out a
    /// timeout while Redis is known to be away.
    fn usable_run(&self) -> Option<String> {
        self.reachable.get().then(|| self.run_id()).flatten()
    }

    fn conn(&self) -> ConnectionManager {
        self.commands.clone()
    }

    // ---- commands ----

    async fn command_loop(self: Rc<Self>, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut stash: Option<Command> = None;
        loop {
            let command = match stash.take() {
                Some(command) => command,
                None => match commands.recv().await {
                    Some(command) => command,
                    None => return,
                },
            };
            match command {
                Command::Publish {
                    channel,
                    data,
                    reply,
                } => {
                    let mut batch = vec![(channel, data, reply)];
                    while batch.len() < PUBLISH_BATCH {
                        match commands.try_recv() {
                            Ok(Command::Publish {
                                channel,
                                data,
                                reply,
                            }) => batch.push((channel, data, reply)),
                            Ok(other) => {
                                stash = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.publish(batch).await;
                }
                Command::Interest(changes) => self.on_interest(changes).await,
                Command::Barrier(done) => {
                    let _ = done.send(());
                }
                Command::Opened {
                    id,
                    serial,
                    replace,
                } => {
                    // A connect storm is entered in pipelines of up to PUBLISH_BATCH.
                    let mut batch = vec![(id, Local { serial, replace })];
                    while batch.len() < PUBLISH_BATCH {
                        match commands.try_recv() {
                            Ok(Command::Opened {
                                id,
                                serial,
                                replace,
                            }) => batch.push((id, Local { serial, replace })),
                            Ok(other) => {
                                stash = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    {
                        let mut local = self.local.borrow_mut();
                        for (id, entry) in &batch {
                            local.insert(id.clone(), *entry);
                        }
                    }
                    match self.usable_run() {
                        Some(run) => self.register(&run, batch).await,
                        None => self.needs_resync.set(true),
                    }
                }
                Command::Closed { id, serial, done } => {
                    // A disconnect storm too goes in pipelines; each is answered after.
                    let mut batch = vec![(id, serial)];
                    let mut answers = vec![done];
                    while batch.len() < PUBLISH_BATCH {
                        match commands.try_recv() {
                            Ok(Command::Closed { id, serial, done }) => {
                                batch.push((id, serial));
                                answers.push(done);
                            }
                            Ok(other) => {
                                stash = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.on_closed(batch).await;
                    for done in answers {
                        let _ = done.send(());
                    }
                }
                Command::Remote { id, action, reply } => {
                    tokio::task::spawn_local(self.clone().remote(id, action, reply));
                }
                Command::Leave(done) => {
                    self.leave().await;
                    let _ = done.send(());
                }
                Command::Survey { question, reply } => {
                    tokio::task::spawn_local(self.clone().survey(question, reply));
                }
            }
        }
    }

    /// Subscriptions of this node that a publication to `channel` reaches (PUBLISH counts
    /// them among its receivers).
    fn own_copies(&self, channel: Option<&ChannelName>) -> usize {
        if self.pubsub.borrow().is_none() {
            return 0;
        }
        let Some(channel) = channel else {
            return 1;
        };
        let subscriptions = self.subscriptions.borrow();
        let exact = subscriptions
            .get(&self.keys().channel(channel))
            .is_some_and(|s| s.subscribed && s.prefix.is_none());
        let patterns = subscriptions
            .values()
            .filter(|s| s.subscribed)
            .filter(|s| {
                s.prefix
                    .as_deref()
                    .is_some_and(|p| channel.as_str().starts_with(p))
            })
            .count();
        usize::from(exact) + patterns
    }

    async fn publish(
        &self,
        batch: Vec<(Option<ChannelName>, Value, oneshot::Sender<ClusterReach>)>,
    ) {
        let n = batch.len();
        let result = match self.usable_run() {
            None => Err("Redis is unreachable or this node holds no lease".to_owned()),
            Some(run) => {
                let mut pipe = redis::pipe();
                for (channel, data, _) in &batch {
                    self.seq.set(self.seq.get() + 1);
                    let envelope = Envelope {
                        origin: run.clone(),
                        seq: self.seq.get(),
                        channel: channel.as_ref().map(|c| c.to_string()),
                        data: data.clone(),
                    };
                    let target = match channel {
                        Some(channel) => self.keys().channel(channel),
                        None => self.keys().broadcast(),
                    };
                    let payload = serde_json::to_string(&envelope).expect("envelope serializes");
                    pipe.cmd("PUBLISH").arg(target).arg(payload);
                }
                let mut conn = self.conn();
                self.timed(pipe.query_async::<Vec<usize>>(&mut conn)).await
            }
        };
        self.shared.queued.fetch_sub(n, Ordering::SeqCst);
        match result {
            Ok(counts) => {
                for ((channel, _, reply), count) in batch.into_iter().zip(counts) {
                    let own = self.own_copies(channel.as_ref());
                    let _ = reply.send(ClusterReach {
                        published: true,
                        other_nodes: count.saturating_sub(own),
                    });
                }
            }
            Err(e) => {
                log::warn!("cluster: {n} publication(s) not sent to the other nodes: {e}");
                self.shared
                    .status
                    .publishes_failed
                    .fetch_add(n as u64, Ordering::Relaxed);
                for (_, _, reply) in batch {
                    let _ = reply.send(ClusterReach {
                        published: false,
                        other_nodes: 0,
                    });
                }
            }
        }
    }

    async fn on_interest(&self, changes: Vec<Interest>) {
        let now = Instant::now();
        let mut wanted = Vec::new();
        let mut dropped = Vec::new();
        {
            let mut subscriptions = self.subscriptions.borrow_mut();
            for change in changes {
                let (gained, topic) = match change {
                    Interest::Gained(topic) => (true, topic),
                    Interest::Lost(topic) => (false, topic),
                };
                let (name, prefix) = match topic {
                    Topic::Channel(channel) => (self.keys().channel(&channel), None),
                    Topic::Prefix(prefix) => (self.keys().pattern(&prefix), Some(prefix)),
                };
                if gained {
                    let entry = subscriptions.entry(name.clone()).or_insert(Subscription {
                        prefix,
                        wanted: true,
                        lost_at: None,
                        subscribed: false,
                    });
                    entry.wanted = true;
                    entry.lost_at = None;
                    if !entry.subscribed {
                        wanted.push(name);
                    }
                } else if let Some(entry) = subscriptions.get_mut(&name) {
                    entry.wanted = false;
                    entry.lost_at = Some(now);
                    if self.settings().unsubscribe_delay.is_zero() {
                        dropped.push(name);
                    }
                }
            }
        }
        self.subscribe(wanted).await;
        self.unsubscribe(dropped).await;
    }

    /// Subscribe these names (channels or patterns) on the current subscription connection.
    async fn subscribe(&self, names: Vec<String>) {
        let Some(mut conn) = self.pubsub.borrow().clone() else {
            return;
        };
        let (patterns, channels): (Vec<String>, Vec<String>) = {
            let subscriptions = self.subscriptions.borrow();
            names
                .into_iter()
                .partition(|name| subscriptions.get(name).is_some_and(|s| s.prefix.is_some()))
        };
        for (list, pattern) in [(channels, false), (patterns, true)] {
            for chunk in list.chunks(512) {
                let result = if pattern {
                    self.timed(conn.psubscribe(chunk)).await
                } else {
                    self.timed(conn.subscribe(chunk)).await
                };
                match result {
                    Ok(()) => {
                        let mut subscriptions = self.subscriptions.borrow_mut();
                        for name in chunk {
                            if let Some(entry) = subscriptions.get_mut(name) {
                                entry.subscribed = true;
                            }
                        }
                    }
                    Err(e) => log::warn!("cluster: subscribing failed ({e}); retried on reconnect"),
                }
            }
        }
    }

    /// Unsubscribe and forget these names, unless a member came back meanwhile.
    async fn unsubscribe(&self, names: Vec<String>) {
        let (patterns, channels): (Vec<String>, Vec<String>) = {
            let mut subscriptions = self.subscriptions.borrow_mut();
            let mut gone: Vec<(String, bool)> = Vec::new();
            for name in names {
                if subscriptions.get(&name).is_some_and(|s| !s.wanted) {
                    let entry = subscriptions.remove(&name).expect("checked");
                    gone.push((name, entry.prefix.is_some()));
                }
            }
            let (patterns, channels): (Vec<_>, Vec<_>) = gone.into_iter().partition(|(_, p)| *p);
            (
                patterns.into_iter().map(|(n, _)| n).collect(),
                channels.into_iter().map(|(n, _)| n).collect(),
            )
        };
        let Some(mut conn) = self.pubsub.borrow().clone() else {
            return;
        };
        if !channels.is_empty() {
            if let Err(e) = self.timed(conn.unsubscribe(&channels)).await {
                log::debug!("cluster: unsubscribing failed: {e}");
            }
        }
        if !patterns.is_empty() {
            if let Err(e) = self.timed(conn.punsubscribe(&patterns)).await {
                log::debug!("cluster: unsubscribing failed: {e}");
            }
        }
    }

    /// Enter a local connection in the directory (and, for announced ends, the live hash),
    /// and settle a duplicate id with whoever held it.
    /// Enter local connections in the directory (and, for announced ends, the live hash) in
    /// one pipeline, and settle each duplicate id with whoever held it.
    async fn register(&self, run: &str, batch: Vec<(ConnectionId, Local)>) {
        let keys = self.keys();
        let kind = if self.settings().announces { 'n' } else { 'q' };
        let mut pipe = redis::pipe();
        for (id, local) in &batch {
            let mut set = redis::cmd("SET");
            set.arg(keys.connection(id))
                .arg(format!("{run}:{}", local.serial));
            if !local.replace {
                set.arg("NX");
            }
            set.arg("GET");
            pipe.add_command(set)
                .cmd("HSET")
                .arg(keys.live(run))
                .arg(id.to_string())
                .arg(format!("{kind}:{}", local.serial))
                .ignore();
        }
        let mut conn = self.conn();
        let previous: Vec<Option<String>> = match self.timed(pipe.query_async(&mut conn)).await {
            Ok(previous) => previous,
            Err(e) => {
                log::warn!(
                        "cluster: {} connection(s) not entered in the directory yet ({e}); entered when Redis is back",
                        batch.len()
                    );
                self.needs_resync.set(true);
                return;
            }
        };
        for ((id, local), previous) in batch.into_iter().zip(previous) {
            if let Some((owner_run, owner_serial)) = previous.as_deref().and_then(owner_of) {
                self.settle_duplicate(run, id, local, owner_run, owner_serial)
                    .await;
            }
        }
    }

    /// `id` was held by `owner_run`'s session `owner_serial` when this node entered it.
    async fn settle_duplicate(
        &self,
        run: &str,
        id: ConnectionId,
        local: Local,
        owner_run: &str,
        owner_serial: u64,
    ) {
        if tag_of(owner_run) == process_tag() {
            if !local.replace && owner_run != run {
                // Our own earlier run left it: ours now.
                let mut conn = self.conn();
                let _ = self
                    .timed(
                        redis::cmd("SET")
                            .arg(self.keys().connection(&id))
                            .arg(format!("{run}:{}", local.serial))
                            .query_async::<()>(&mut conn),
                    )
                    .await;
            }
            return;
        }
        if local.replace {
            // The newer connection (ours) wins: the older one's node closes it with 4001.
            let message = Control::Replace {
                id: id.to_string(),
                serial: owner_serial,
            };
            if let Err(e) = self.tell(owner_run, &message).await {
                log::warn!("id={id} cluster: the older connection's node was not told of its replacement: {e}");
            }
        } else {
            log::warn!("id={id} cluster: another node holds this id; closing ours");
            let close = Close::new(
                close_code::TRY_AGAIN_LATER,
                "a connection with this id is already registered",
            );
            let _ = self.hub.close(id, close).await;
        }
    }

    async fn on_closed(&self, batch: Vec<(ConnectionId, u64)>) {
        {
            let mut local = self.local.borrow_mut();
            for (id, serial) in &batch {
                if local.get(id).is_some_and(|l| l.serial == *serial) {
                    local.remove(id);
                }
            }
        }
        let Some(run) = self.run_id() else {
            // Closed while this node holds no lease (fenced): the run they belonged to is
            // reaped as a whole, their notices included.
            return;
        };
        let batch: Vec<(ConnectionId, u64, String)> = batch
            .into_iter()
            .map(|(id, serial)| (id, serial, run.clone()))
            .collect();
        if !self.reachable.get() {
            self.forgets.borrow_mut().extend(batch);
            return;
        }
        if let Err(e) = self.forget(&batch).await {
            log::debug!(
                "cluster: {} ended connection(s) not removed from Redis yet ({e})",
                batch.len()
            );
            self.forgets.borrow_mut().extend(batch);
        }
    }

    /// Remove ended connections from the directory and their run's live hash, in one
    /// pipeline: each entry only if it is still that session's.
    async fn forget(&self, batch: &[(ConnectionId, u64, String)]) -> Result<(), String> {
        let keys = self.keys();
        let mut pipe = redis::pipe();
        for (id, serial, run) in batch {
            pipe.cmd("EVAL")
                .arg(FORGET)
                .arg(2)
                .arg(keys.connection(id))
                .arg(keys.live(run))
                .arg(format!("{run}:{serial}"))
                .arg(id.to_string())
                .arg(serial)
                .ignore();
        }
        let mut conn = self.conn();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Publish a control message to a run; the number of nodes that heard it.
    async fn tell(&self, run: &str, message: &Control) -> Result<usize, String> {
        let payload = serde_json::to_string(message).expect("control serializes");
        let mut conn = self.conn();
        self.timed(
            redis::cmd("PUBLISH")
                .arg(self.keys().control(run))
                .arg(payload)
                .query_async::<usize>(&mut conn),
        )
        .await
    }

    fn request_number(&self) -> (u64, mpsc::UnboundedReceiver<Answer>) {
        let req = self.next_req.get() + 1;
        self.next_req.set(req);
        let (tx, rx) = mpsc::unbounded_channel();
        self.pending.borrow_mut().insert(req, tx);
        (req, rx)
    }

    async fn remote(
        self: Rc<Self>,
        id: ConnectionId,
        action: RemoteAction,
        reply: oneshot::Sender<Result<Result<(), Undelivered>, RemoteError>>,
    ) {
        let result = self.remote_inner(id, action).await;
        let _ = reply.send(result);
    }

    async fn remote_inner(
        &self,
        id: ConnectionId,
        action: RemoteAction,
    ) -> Result<Result<(), Undelivered>, RemoteError> {
        let Some(me) = self.usable_run() else {
            return Err(RemoteError::Disconnected);
        };
        let mut conn = self.conn();
        let owner: Option<String> = self
            .timed(
                redis::cmd("GET")
                    .arg(self.keys().connection(&id))
                    .query_async(&mut conn),
            )
            .await
            .map_err(|_| RemoteError::Disconnected)?;
        let Some((owner_run, _)) = owner.as_deref().and_then(owner_of) else {
            return Ok(Err(Undelivered::UnknownConnection));
        };
        if tag_of(owner_run) == process_tag() {
            // This process holds it under no live session (the local hub said so).
            return Ok(Err(Undelivered::UnknownConnection));
        }
        let (req, mut answers) = self.request_number();
        let message = match action {
            RemoteAction::Send(Frame::Text(text)) => Control::Send {
                req,
                from: me,
                id: id.to_string(),
                text: Some(text.to_string()),
                binary: None,
            },
            RemoteAction::Send(Frame::Binary(bytes)) => Control::Send {
                req,
                from: me,
                id: id.to_string(),
                text: None,
                binary: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            },
            RemoteAction::Close(close) => Control::Close {
                req,
                from: me,
                id: id.to_string(),
                code: close.code,
                reason: close.reason.to_string(),
            },
        };
        let heard = self.tell(owner_run, &message).await;
        let result = match heard {
            Err(_) => Err(RemoteError::Disconnected),
            Ok(0) => {
                // Nobody reads that run's control channel: if its lease is gone too, the run
                // is dead and the connection with it (a reaper will clean up).
                let mut conn = self.conn();
                let leased: Result<bool, String> = self
                    .timed(
                        redis::cmd("EXISTS")
                            .arg(self.keys().lease(owner_run))
                            .query_async(&mut conn),
                    )
                    .await;
                match leased {
                    Ok(false) => Ok(Err(Undelivered::UnknownConnection)),
                    _ => Err(RemoteError::NoAnswer(owner_run.to_owned())),
                }
            }
            Ok(_) => match tokio::time::timeout(self.settings().timeout, answers.recv()).await {
                Ok(Some(answer)) => {
                    let outcome: Outcome =
                        serde_json::from_value(answer.body).unwrap_or(Outcome::Unavailable);
                    Ok(match outcome {
                        Outcome::Ok => Ok(()),
                        Outcome::Unknown => Err(Undelivered::UnknownConnection),
                        Outcome::QueueFull => Err(Undelivered::QueueFull),
                        Outcome::Unavailable => Err(Undelivered::NodeUnreachable),
                    })
                }
                _ => Err(RemoteError::NoAnswer(owner_run.to_owned())),
            },
        };
        self.pending.borrow_mut().remove(&req);
        result
    }

    /// The other live nodes by run, from the heartbeats (fresh within a lease), and the
    /// heartbeats themselves.
    async fn live_nodes(&self) -> Result<(HashMap<String, String>, Vec<NodeBeat>), String> {
        let mut conn = self.conn();
        let all: HashMap<String, String> = self
            .timed(
                redis::cmd("HGETALL")
                    .arg(self.keys().nodes())
                    .query_async(&mut conn),
            )
            .await?;
        let now = unix_ms();
        let fresh = self.settings().lease.as_millis() as u64;
        let me = self.run_id();
        let mut others = HashMap::new();
        let mut beats = Vec::new();
        for (run, beat) in all {
            let Ok(beat) = serde_json::from_str::<NodeBeat>(&beat) else {
                continue;
            };
            if now.saturating_sub(beat.at_ms) > fresh {
                continue;
            }
            if Some(&run) != me.as_ref() {
                others.insert(run, beat.node.clone());
            }
            beats.push(beat);
        }
        Ok((others, beats))
    }

    async fn survey(self: Rc<Self>, question: Question, reply: oneshot::Sender<Surveyed>) {
        let unreachable = |error| Surveyed {
            answers: Vec::new(),
            coverage: Coverage {
                nodes: 1,
                missing: Vec::new(),
                partial: true,
                error: Some(error),
            },
        };
        let Some(me) = self.usable_run() else {
            let _ = reply.send(unreachable(
                "the cluster is unreachable: this node's answer only",
            ));
            return;
        };
        let Ok((mut expected, _)) = self.live_nodes().await else {
            let _ = reply.send(unreachable(
                "the cluster is unreachable: this node's answer only",
            ));
            return;
        };
        let (req, mut answers) = self.request_number();
        let message = Control::Survey {
            req,
            from: me,
            question,
        };
        let payload = serde_json::to_string(&message).expect("survey serializes");
        let mut conn = self.conn();
        let heard: Result<usize, String> = self
            .timed(
                redis::cmd("PUBLISH")
                    .arg(self.keys().survey())
                    .arg(payload)
                    .query_async(&mut conn),
            )
            .await;
        let mut got = Vec::new();
        if let Ok(heard) = heard {
            // Every node that heard it answers (this one ignores its own question).
            let want = heard.saturating_sub(1).max(expected.len());
            let deadline = tokio::time::Instant::now() + self.settings().timeout;
            while got.len() < want {
                match tokio::time::timeout_at(deadline, answers.recv()).await {
                    Ok(Some(answer)) => {
                        expected.remove(&answer.run);
                        got.push((answer.node, answer.body));
                        if expected.is_empty() && got.len() >= heard.saturating_sub(1) {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        self.pending.borrow_mut().remove(&req);
        let mut missing: Vec<String> = expected.into_values().collect();
        missing.sort();
        let _ = reply.send(Surveyed {
            coverage: Coverage {
                nodes: got.len() + 1,
                partial: !missing.is_empty(),
                missing,
                error: None,
            },
            answers: got,
        });
    }

    // ---- subscription ----

    async fn subscription_loop(self: Rc<Self>, push: mpsc::Sender<PushInfo>) {
        loop {
            let lost = Arc::new(Notify::new());
            let sender = {
                let push = push.clone();
                let lost = lost.clone();
                let shared = self.shared.clone();
                move |info: PushInfo| -> Result<(), ()> {
                    if info.kind == PushKind::Disconnection {
                        lost.notify_one();
                        return Ok(());
                    }
                    match push.try_send(info) {
                        Ok(()) => Ok(()),
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // Never wait: a message the router has no room for is dropped.
                            shared.status.dropped.fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
                    }
                }
            };
            let timeout = self.settings().timeout;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_push_sender(sender);
            let conn = self
                .timed(
                    self.client
                        .get_multiplexed_async_connection_with_config(&config),
                )
                .await;
            let mut conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    log::debug!("cluster: subscription connection failed: {e}");
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            };
            let fixed = vec![
                self.keys().broadcast(),
                self.keys().survey(),
                self.probe_channel(),
            ];
            *self.control.borrow_mut() = None;
            if let Err(e) = self.timed(conn.subscribe(&fixed)).await {
                log::warn!("cluster: subscribing failed: {e}");
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
            let names: Vec<String> = {
                let mut subscriptions = self.subscriptions.borrow_mut();
                for entry in subscriptions.values_mut() {
                    entry.subscribed = false;
                }
                subscriptions.keys().cloned().collect()
            };
            *self.pubsub.borrow_mut() = Some(conn.clone());
            self.ensure_control().await;
            self.subscribe(names).await;
            let status = &self.shared.status;
            let down_since = status.down_since_ms.swap(0, Ordering::SeqCst);
            if down_since != 0 {
                let gap = unix_ms().saturating_sub(down_since);
                status.gap_ms.fetch_add(gap, Ordering::Relaxed);
                log::info!("cluster: subscribed again after {gap} ms without a subscription");
            }
            status.subscribed.store(true, Ordering::SeqCst);
            self.last_probe.set(Instant::now());
            log::info!("cluster: subscription connection up");
            // Watch it: a drop, or a probe that does not come back.
            let interval = self.settings().probe_interval;
            loop {
                tokio::select! {
                    () = lost.notified() => {
                        log::warn!("cluster: subscription connection lost; reconnecting");
                        break;
                    }
                    () = tokio::time::sleep(interval) => {
                        if self.last_probe.get().elapsed() > interval * 2 {
                            status.probes_failed.fetch_add(1, Ordering::Relaxed);
                            log::warn!("cluster: the subscription delivered no probe for {:?}; reconnecting", interval * 2);
                            break;
                        }
                        let _ = self
                            .timed(redis::cmd("PUBLISH").arg(self.probe_channel()).arg("probe").query_async::<usize>(&mut conn))
                            .await;
                    }
                }
            }
            *self.pubsub.borrow_mut() = None;
            status.subscribed.store(false, Ordering::SeqCst);
            status.gaps.fetch_add(1, Ordering::Relaxed);
            status.down_since_ms.store(unix_ms(), Ordering::SeqCst);
            drop(conn);
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }

    /// Read the current run's control channel on the subscription connection.
    async fn ensure_control(&self) {
        let Some(run) = self.run_id() else {
            return;
        };
        if self.control.borrow().as_deref() == Some(run.as_str()) {
            return;
        }
        let Some(mut conn) = self.pubsub.borrow().clone() else {
            return;
        };
        let old = self.control.borrow().clone();
        match self.timed(conn.subscribe(self.keys().control(&run))).await {
            Ok(()) => {
                *self.control.borrow_mut() = Some(run);
                if let Some(old) = old {
                    let _ = self
                        .timed(conn.unsubscribe(self.keys().control(&old)))
                        .await;
                }
            }
            Err(e) => log::warn!("cluster: cannot read the control channel: {e}"),
        }
    }

    fn probe_channel(&self) -> String {
        format!("{}:probe:{}", self.keys().prefix(), process_tag())
    }

    async fn router(self: Rc<Self>, mut push: mpsc::Receiver<PushInfo>) {
        while let Some(info) = push.recv().await {
            let (channel, payload) = match info.kind {
                PushKind::Message => (text(info.data.first()), bytes(info.data.get(1))),
                PushKind::PMessage => (text(info.data.get(1)), bytes(info.data.get(2))),
                _ => continue,
            };
            let (Some(channel), Some(payload)) = (channel, payload) else {
                continue;
            };
            let keys = self.keys();
            if channel == self.probe_channel() {
                self.last_probe.set(Instant::now());
                continue;
            }
            if channel == keys.broadcast() || keys.channel_of(channel).is_some() {
                self.on_publication(payload);
                continue;
            }
            match serde_json::from_slice::<Control>(payload) {
                Ok(control) => self.on_control(control),
                Err(e) => log::warn!("cluster: unreadable control message on {channel}: {e}"),
            }
        }
    }

    fn on_publication(&self, payload: &[u8]) {
        let envelope: Envelope = match serde_json::from_slice(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                log::warn!("cluster: unreadable publication: {e}");
                return;
            }
        };
        if tag_of(&envelope.origin) == process_tag() {
            return;
        }
        let mut hasher = DefaultHasher::new();
        envelope.origin.hash(&mut hasher);
        envelope.seq.hash(&mut hasher);
        let key = hasher.finish();
        {
            let mut recent = self.recent.borrow_mut();
            if !recent.0.insert(key) {
                return;
            }
            recent.1.push_back(key);
            if recent.1.len() > RECENT {
                if let Some(old) = recent.1.pop_front() {
                    recent.0.remove(&old);
                }
            }
        }
        let channel = match envelope.channel {
            Some(name) => match ChannelName::parse(&name) {
                Ok(channel) => Some(channel),
                Err(_) => return,
            },
            None => None,
        };
        if !self.hub.deliver(channel, envelope.data) {
            self.shared.status.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_control(self: &Rc<Self>, control: Control) {
        match control {
            Control::Probe => self.last_probe.set(Instant::now()),
            Control::Answer {
                req,
                node,
                run,
                body,
            } => {
                if let Some(tx) = self.pending.borrow().get(&req) {
                    let _ = tx.send(Answer { node, run, body });
                }
            }
            Control::Replace { id, serial } => {
                if let Ok(id) = ConnectionId::parse(&id) {
                    log::info!(
                        "id={id} replaced by a newer connection with the same id on another node"
                    );
                    self.hub.replace(id, serial);
                }
            }
            Control::Send {
                req,
                from,
                id,
                text,
                binary,
            } => {
                let frame = match (text, binary) {
                    (Some(text), _) => Some(Frame::text(text)),
                    (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                        .decode(encoded.as_bytes())
                        .ok()
                        .map(|bytes| Frame::Binary(bytes.into())),
                    (None, None) => None,
                };
                let node = self.clone();
                tokio::task::spawn_local(async move {
                    let outcome = match (ConnectionId::parse(&id), frame) {
                        (Ok(id), Some(frame)) => node.hub.send_to(id, frame).await,
                        _ => Some(Err(Undelivered::UnknownConnection)),
                    };
                    node.answer(req, &from, outcome_of(outcome)).await;
                });
            }
            Control::Close {
                req,
                from,
                id,
                code,
                reason,
            } => {
                let node = self.clone();
                tokio::task::spawn_local(async move {
                    let outcome = match ConnectionId::parse(&id) {
                        Ok(id) => node.hub.close(id, Close::new(code, reason)).await,
                        Err(_) => Some(Err(Undelivered::UnknownConnection)),
                    };
                    node.answer(req, &from, outcome_of(outcome)).await;
                });
            }
            Control::Survey {
                req,
                from,
                question,
            } => {
                if tag_of(&from) == process_tag() {
                    return;
                }
                let node = self.clone();
                tokio::task::spawn_local(async move {
                    if let Some(body) = node.hub.answer(question).await {
                        node.answer(req, &from, body).await;
                    }
                });
            }
        }
    }

    async fn answer(&self, req: u64, to: &str, body: Value) {
        let Some(run) = self.run_id() else {
            return;
        };
        let message = Control::Answer {
            req,
            node: self.settings().node.clone(),
            run,
            body,
        };
        if let Err(e) = self.tell(to, &message).await {
            log::debug!("cluster: answer to {to} not sent: {e}");
        }
    }

    // ---- lease ----

    async fn leave(&self) {
        let Some(run) = self.run_id() else {
            return;
        };
        let keys = self.keys();
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL")
            .arg(keys.nodes())
            .arg(&run)
            .ignore()
            .cmd("DEL")
            .arg(keys.lease(&run))
            .ignore();
        let mut conn = self.conn();
        match self.timed(pipe.query_async::<()>(&mut conn)).await {
            Ok(()) => log::info!("cluster: run {run} left the cluster"),
            Err(e) => {
                log::warn!("cluster: could not leave the cluster ({e}); its lease expires instead")
            }
        }
    }

    fn beat(&self, figures: Option<(usize, usize)>) -> String {
        let (connections, channels) = figures.unwrap_or_default();
        serde_json::to_string(&NodeBeat {
            node: self.settings().node.clone(),
            connections,
            channels,
            at_ms: unix_ms(),
        })
        .expect("beat serializes")
    }

    async fn lease_loop(self: Rc<Self>) {
        let lease = self.settings().lease;
        let tick = lease / 4;
        // Fence well before Redis lets the lease expire: the last renewal that succeeded was
        // sent no earlier than `last_ok`, and its expiry counts from when Redis ran it.
        let fence_after = lease - lease / 4;
        let mut last_ok: Option<Instant> = None;
        loop {
            let figures = self.hub.figures().await;
            let beat = self.beat(figures);
            let sent = Instant::now();
            let current = self.run.borrow().clone();
            match current {
                None => {
                    if self.join(&beat).await {
                        last_ok = Some(sent);
                        self.healthy_since.set(Some(sent));
                    }
                }
                Some(run) => {
                    let keys = self.keys();
                    let mut invocation = RENEW.prepare_invoke();
                    invocation
                        .key(keys.lease(&run.id))
                        .key(keys.runs())
                        .key(keys.nodes())
                        .key(keys.epoch())
                        .arg(&run.id)
                        .arg(&self.settings().node)
                        .arg(lease.as_millis() as u64)
                        .arg(&beat)
                        .arg(&run.epoch);
                    let mut conn = self.conn();
                    match self.timed(invocation.invoke_async::<i64>(&mut conn)).await {
                        Ok(1) => {
                            last_ok = Some(sent);
                            let back = self.healthy_since.get().is_none();
                            if back {
                                self.healthy_since.set(Some(sent));
                            }
                            if back || self.needs_resync.take() {
                                self.resync(&run.id).await;
                            }
                        }
                        Ok(0) => {
                            self.fence("this run was reaped while it could not renew its lease (a pause or a cut-off longer than cluster.lease_ms)");
                            last_ok = None;
                        }
                        Ok(_) => {
                            log::warn!("cluster: Redis lost its data (restarted without persistence?); joining again");
                            *self.run.borrow_mut() = None;
                            if self.join_as(&run.id, &beat).await {
                                last_ok = Some(sent);
                                self.healthy_since.set(Some(sent));
                            }
                        }
                        Err(e) => {
                            self.healthy_since.set(None);
                            log::warn!("cluster: lease not renewed: {e}");
                        }
                    }
                    if self.run.borrow().is_some()
                        && last_ok.is_none_or(|ok| ok.elapsed() >= fence_after)
                    {
                        self.fence("the lease could not be renewed in time (Redis unreachable)");
                        last_ok = None;
                    }
                }
            }
            let leased =
                self.run.borrow().is_some() && last_ok.is_some_and(|ok| ok.elapsed() < lease);
            self.shared.status.leased.store(leased, Ordering::SeqCst);
            if let Ok((_, beats)) = self.live_nodes().await {
                *self.shared.status.beats.lock().expect("beats lock") = beats;
            }
            tokio::time::sleep(tick.saturating_sub(sent.elapsed())).await;
        }
    }

    /// Join under a new run; true when the lease is held.
    async fn join(&self, beat: &str) -> bool {
        let run = format!("{}.{}", process_tag(), self.generation.get());
        self.join_as(&run, beat).await
    }

    async fn join_as(&self, run: &str, beat: &str) -> bool {
        let keys = self.keys();
        let node = &self.settings().node;
        if self.first_join.get() {
            // A previous run under this name: still alive (a second process with the same
            // name) refuses this start; dead, its notices are sent at once.
            let mut conn = self.conn();
            let previous: Result<Option<String>, String> = self
                .timed(
                    redis::cmd("GET")
                        .arg(keys.name(node))
                        .query_async(&mut conn),
                )
                .await;
            let Ok(previous) = previous else {
                return false;
            };
            if let Some(previous) = previous {
                let alive = self.tell(&previous, &Control::Probe).await.unwrap_or(0) > 0;
                if alive {
                    log::error!("cluster: another running process uses cluster.node = {node:?} (run {previous}); every node needs a name of its own. Exiting.");
                    std::process::exit(3);
                }
                self.own_dead.borrow_mut().push(previous);
            }
        }
        let epoch = uuid::Uuid::new_v4().simple().to_string();
        let mut invocation = JOIN.prepare_invoke();
        invocation
            .key(keys.lease(run))
            .key(keys.runs())
            .key(keys.name(node))
            .key(keys.nodes())
            .key(keys.epoch())
            .arg(run)
            .arg(node)
            .arg(self.settings().lease.as_millis() as u64)
            .arg(beat)
            .arg(epoch);
        let mut conn = self.conn();
        let joined: Result<(Option<String>, String), String> =
            self.timed(invocation.invoke_async(&mut conn)).await;
        let Ok((_, epoch)) = joined else {
            return false;
        };
        self.first_join.set(false);
        *self.run.borrow_mut() = Some(Run {
            id: run.to_owned(),
            epoch,
        });
        *self.shared.status.run.lock().expect("run lock") = Some(run.to_owned());
        self.shared.status.fenced_now.store(false, Ordering::SeqCst);
        log::info!("cluster: node {node} joined as run {run}");
        self.ensure_control().await;
        // Ended connections first (their owner sent their notices), then the earlier runs
        // of this name whose sockets were closed without one, then what is open now.
        self.retry_forgets().await;
        let dead: Vec<String> = std::mem::take(&mut *self.own_dead.borrow_mut());
        for previous in dead {
            self.reap(Some(&previous)).await;
        }
        self.resync(run).await;
        true
    }

    /// Write every local connection (and retry every ended one) after joining or an outage.
    async fn retry_forgets(&self) {
        let forgets: Vec<_> = std::mem::take(&mut *self.forgets.borrow_mut());
        for chunk in forgets.chunks(PUBLISH_BATCH) {
            if self.forget(chunk).await.is_err() {
                self.forgets.borrow_mut().extend(chunk.iter().cloned());
            }
        }
    }

    async fn resync(&self, run: &str) {
        self.retry_forgets().await;
        let local: Vec<(ConnectionId, Local)> = self
            .local
            .borrow()
            .iter()
            .map(|(id, local)| (id.clone(), *local))
            .collect();
        // Entered without replacing: an id another node took meanwhile is theirs.
        let local: Vec<(ConnectionId, Local)> = local
            .into_iter()
            .map(|(id, entry)| {
                (
                    id,
                    Local {
                        replace: false,
                        ..entry
                    },
                )
            })
            .collect();
        for chunk in local.chunks(PUBLISH_BATCH) {
            self.register(run, chunk.to_vec()).await;
        }
    }

    /// The lease is lost: close every local socket without a notice (a survivor sends them,
    /// or this node once it is back), and join again under a new run.
    fn fence(&self, why: &str) {
        let Some(run) = self.run.borrow_mut().take() else {
            return;
        };
        log::warn!("cluster: run {} fenced: {why}; closing every local connection (its notices are sent by the node that reaps this run)", run.id);
        let status = &self.shared.status;
        status.fenced.fetch_add(1, Ordering::Relaxed);
        status.fenced_now.store(true, Ordering::SeqCst);
        status.leased.store(false, Ordering::SeqCst);
        *status.run.lock().expect("run lock") = None;
        self.healthy_since.set(None);
        self.generation.set(self.generation.get() + 1);
        self.own_dead.borrow_mut().push(run.id);
        self.local.borrow_mut().clear();
        self.hub.fence();
    }

    // ---- reaping ----

    async fn reap_loop(self: Rc<Self>) {
        let interval = self.settings().reap_interval;
        let lease = self.settings().lease;
        loop {
            tokio::time::sleep(interval).await;
            let healthy = self
                .healthy_since
                .get()
                .is_some_and(|since| since.elapsed() >= lease);
            if healthy && self.pubsub.borrow().is_some() {
                self.reap(None).await;
            }
        }
    }

    /// Claim dead runs (or the one named) and send their connections' notices.
    async fn reap(&self, only: Option<&str>) {
        let me = self.run_id().unwrap_or_default();
        let mut invocation = REAP.prepare_invoke();
        invocation
            .arg(self.keys().prefix())
            .arg(&me)
            .arg(only.unwrap_or(""));
        let mut conn = self.conn();
        let claimed: Vec<String> = match self.timed(invocation.invoke_async(&mut conn)).await {
            Ok(claimed) => claimed,
            Err(e) => {
                log::warn!("cluster: reaping failed: {e}");
                return;
            }
        };
        let mut sent = 0u64;
        // What this run now owes: settled notices are struck off, the others stay owed and
        // are sent by whoever reaps this run if it dies first.
        let mut unsent = Vec::new();
        let mut settling = Vec::new();
        for entry in claimed.chunks(3) {
            let [run, id, serial] = entry else { continue };
            if id.is_empty() {
                log::warn!("cluster: reaped run {run} (its lease expired or this node restarted under its name)");
                continue;
            }
            let field = format!("{run} {serial}");
            let (Ok(id), Ok(serial)) = (ConnectionId::parse(id), serial.parse::<u64>()) else {
                unsent.push(field);
                continue;
            };
            let Some(orphans) = &self.orphans else {
                unsent.push(field);
                continue;
            };
            log::info!("id={id} disconnect notice for a connection of dead run {run}");
            let (settled, done) = tokio::sync::oneshot::channel();
            orphans.do_send(Orphaned {
                id,
                notice_id: notice_id(tag_of(run), serial),
                settled,
            });
            settling.push((field, done));
            sent += 1;
        }
        self.shared
            .status
            .notices_reaped
            .fetch_add(sent, Ordering::Relaxed);
        let key = self.keys().owed(&me);
        let (conn, timeout) = (self.conn(), self.settings().timeout * 2);
        // Nothing here can send these (malformed, or no backend with notices): not owed.
        strike_owed(conn.clone(), &key, unsent, timeout).await;
        if !settling.is_empty() {
            tokio::task::spawn_local(async move {
                let mut settled = Vec::new();
                for (field, done) in settling {
                    // A notice dropped unsent (the backend stopped) stays owed.
                    if done.await.is_ok() {
                        settled.push(field);
                    }
                }
                strike_owed(conn, &key, settled, timeout).await;
            });
        }
    }

    async fn sweep_loop(self: Rc<Self>) {
        let delay = self.settings().unsubscribe_delay;
        let every = (delay / 2).max(Duration::from_millis(20));
        loop {
            tokio::time::sleep(every).await;
            let due: Vec<String> = self
                .subscriptions
                .borrow()
                .iter()
                .filter(|(_, s)| !s.wanted && s.lost_at.is_some_and(|at| at.elapsed() >= delay))
                .map(|(name, _)| name.clone())
                .collect();
            if !due.is_empty() {
                self.unsubscribe(due).await;
            }
        }
    }
}

/// The answer body for a send or close on this node.
fn outcome_of(result: Option<Result<(), Undelivered>>) -> Value {
    let outcome = match result {
        Some(Ok(())) => Outcome::Ok,
        Some(Err(Undelivered::QueueFull)) => Outcome::QueueFull,
        Some(Err(Undelivered::UnknownConnection)) => Outcome::Unknown,
        Some(Err(_)) | None => Outcome::Unavailable,
    };
    serde_json::to_value(outcome).expect("outcome serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_directory_entries_are_read_back() {
        assert_eq!(tag_of("0123abcd.2"), "0123abcd");
        assert_eq!(owner_of("0123abcd.2:41"), Some(("0123abcd.2", 41)));
        assert_eq!(owner_of("no-serial"), None);
        assert_eq!(
            outcome_of(Some(Err(Undelivered::QueueFull))),
            serde_json::json!("queue_full")
        );
        assert_eq!(outcome_of(None), serde_json::json!("unavailable"));
    }
}
