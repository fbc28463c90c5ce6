//! Dialects: one pure codec per WebSocket route. A dialect turns a client frame into an
//! [`Action`] (relay it, ask the hub, answer, ignore) and a publication into the frame its clients
//! expect. Dialects know nothing of sockets, actors or HTTP, so each is unit-tested on values.

pub mod groups;
pub mod jsonrpc;
pub mod kind;
pub mod raw;
pub mod topics;

pub use kind::DialectKind;

use crate::channel::Publication;
use crate::connection::ConnectionId;
use crate::frame::Frame;
use crate::operation::{ChannelOp, OpOutcome};

/// Publication -> the frame this dialect's clients get (encoded once per publication and
/// dialect; every recipient shares the bytes).
pub fn encode(kind: DialectKind, publication: &Publication) -> Frame {
    match kind {
        DialectKind::Raw => publication.frame_for(kind, raw::encode),
        DialectKind::JsonRpc => publication.frame_for(kind, jsonrpc::encode),
        DialectKind::Groups => publication.frame_for(kind, groups::encode),
        DialectKind::Topics => publication.frame_for(kind, topics::encode),
    }
}

/// Renders the hub's outcomes for a request into the reply frames (none if it wants none).
pub struct ReplyPlan(Box<dyn FnOnce(Vec<OpOutcome>) -> Vec<Frame>>);

impl ReplyPlan {
    /// A plan from a closure.
    pub fn new(render: impl FnOnce(Vec<OpOutcome>) -> Vec<Frame> + 'static) -> Self {
        Self(Box::new(render))
    }

    /// Render the reply from the outcomes of the plan's operations (same order).
    pub fn render(self, outcomes: Vec<OpOutcome>) -> Vec<Frame> {
        (self.0)(outcomes)
    }
}

/// What the session should do with one client frame.
pub enum Action {
    /// Hand the frame to the route's backend.
    Relay(Frame),
    /// Apply these channel operations in the hub, then send what `reply` renders.
    Hub {
        /// Operations, applied in order.
        ops: Vec<ChannelOp>,
        /// Turns their outcomes into the reply.
        reply: ReplyPlan,
    },
    /// Answer at once with this frame.
    Reply(Frame),
    /// Nothing to do.
    Ignore,
}

/// A route's codec, with whatever per-connection state it needs.
pub enum Dialect {
    /// Raw relay.
    Raw(raw::Raw),
    /// JSON-RPC channels.
    JsonRpc(jsonrpc::JsonRpc),
    /// AWX groups.
    Groups(groups::Groups),
    /// fedmsg topics.
    Topics(topics::Topics),
}

/// A route's dialect settings from the config.
#[derive(Debug, Clone)]
pub struct DialectOptions {
    /// topics: match exactly instead of by prefix.
    pub strict: bool,
    /// topics: clients may publish `{"topic", "body"}`.
    pub client_publish: bool,
    /// groups: the value of the handshake cookie every message must carry as `xrftoken`
    /// (`Some("")` when the rule is on but the cookie was missing).
    pub xrf_token: Option<String>,
    /// jsonrpc: calls one batch may hold (`limits.max_batch`).
    pub max_batch: usize,
}

impl Default for DialectOptions {
    fn default() -> Self {
        Self {
            strict: false,
            client_publish: false,
            xrf_token: None,
            max_batch: jsonrpc::DEFAULT_MAX_BATCH,
        }
    }
}

impl Dialect {
    /// The codec for one connection.
    pub fn new(kind: DialectKind, id: &ConnectionId, options: DialectOptions) -> Self {
        match kind {
            DialectKind::Raw => Dialect::Raw(raw::Raw),
            DialectKind::JsonRpc => {
                Dialect::JsonRpc(jsonrpc::JsonRpc::new(id.clone(), options.max_batch))
            }
            DialectKind::Groups => Dialect::Groups(groups::Groups::new(options.xrf_token)),
            DialectKind::Topics => {
                Dialect::Topics(topics::Topics::new(options.strict, options.client_publish))
            }
        }
    }

    /// Client frame -> action.
    pub fn decode(&mut self, frame: Frame) -> Action {
        match self {
            Dialect::Raw(d) => d.decode(frame),
            Dialect::JsonRpc(d) => d.decode(frame),
            Dialect::Groups(d) => d.decode(frame),
            Dialect::Topics(d) => d.decode(frame),
        }
    }
}
