//! Dialects: one pure codec per WebSocket route. A dialect turns a client frame into an
//! [`Action`] (relay it, ask the hub, answer, close) and a publication into the frame its clients
//! expect. Dialects know nothing of sockets, actors or HTTP, so each is unit-tested on values.

pub mod jsonrpc;
pub mod raw;

use serde::Deserialize;

use crate::channel::{Close, Frame, Publication};
use crate::connection::ConnectionId;
use crate::hub::{ChannelOp, OpOutcome};

/// The dialects a route can speak, as named in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DialectKind {
    /// Frames go to the backend as they are (SocketDock, ws2api, the demo echo).
    #[serde(rename = "raw")]
    Raw,
    /// RocketWS's JSON-RPC 2.0 channels.
    #[serde(rename = "jsonrpc")]
    JsonRpc,
}

impl DialectKind {
    /// How many dialects there are (the size of per-dialect caches).
    pub const COUNT: usize = 2;

    /// A dense index for per-dialect caches.
    pub fn index(self) -> usize {
        match self {
            DialectKind::Raw => 0,
            DialectKind::JsonRpc => 1,
        }
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            DialectKind::Raw => "raw",
            DialectKind::JsonRpc => "jsonrpc",
        }
    }
}

/// Renders the hub's outcomes for a request into the reply frame, if the request wants one.
pub struct ReplyPlan(Box<dyn FnOnce(Vec<OpOutcome>) -> Option<Frame>>);

impl ReplyPlan {
    /// A plan from a closure.
    pub fn new(render: impl FnOnce(Vec<OpOutcome>) -> Option<Frame> + 'static) -> Self {
        Self(Box::new(render))
    }

    /// Render the reply from the outcomes of the plan's operations (same order).
    pub fn render(self, outcomes: Vec<OpOutcome>) -> Option<Frame> {
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
    /// Close the connection.
    Close(Close),
    /// Nothing to do.
    Ignore,
}

/// A route's codec, with whatever per-connection state it needs.
pub enum Dialect {
    /// Raw relay.
    Raw(raw::Raw),
    /// JSON-RPC channels.
    JsonRpc(jsonrpc::JsonRpc),
}

impl Dialect {
    /// The codec for one connection.
    pub fn new(kind: DialectKind, id: &ConnectionId) -> Self {
        match kind {
            DialectKind::Raw => Dialect::Raw(raw::Raw),
            DialectKind::JsonRpc => Dialect::JsonRpc(jsonrpc::JsonRpc::new(id.clone())),
        }
    }

    /// Which dialect this is.
    pub fn kind(&self) -> DialectKind {
        match self {
            Dialect::Raw(_) => DialectKind::Raw,
            Dialect::JsonRpc(_) => DialectKind::JsonRpc,
        }
    }

    /// Client frame -> action.
    pub fn decode(&mut self, frame: Frame) -> Action {
        match self {
            Dialect::Raw(d) => d.decode(frame),
            Dialect::JsonRpc(d) => d.decode(frame),
        }
    }

    /// Publication -> the frame this dialect's clients get (encoded once per publication).
    pub fn encode(&self, publication: &Publication) -> Frame {
        match self {
            Dialect::Raw(_) => publication.frame_for(DialectKind::Raw, raw::encode),
            Dialect::JsonRpc(_) => publication.frame_for(DialectKind::JsonRpc, jsonrpc::encode),
        }
    }
}
