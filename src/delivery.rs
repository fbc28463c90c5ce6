//! What the hub hands a session (a shared, already encoded frame, or a close), and how a
//! delivery went for whoever sent it.
//!
//! `reached` and `dropped` count connections: `reached` is every connection the message was
//! queued for (room reserved in its backlog and handed to its session, which writes it on its
//! own worker thread), `dropped` every connection that had no room and was cut off (1008). A
//! connection counted as reached can still miss the message if it is closed before its socket
//! takes it; it is then told so by the close. When delivery runs on several worker threads or
//! nodes, the figures are the sums of what each reported.

use actix::Message;
use serde::Serialize;

use crate::frame::{Close, Frame};

/// Something for one session to send: a frame, or a close.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame to write as it is (a publication already encoded in the session's dialect);
    /// its room in the session's backlog is reserved.
    Frame(Frame),
    /// Close the connection with this code and reason.
    Close(Close),
    /// A newer connection took this one's id: close with 4001 and send no disconnect notice.
    Replaced,
    /// The client stopped reading and was cut off: drop what still waits for it (so the close
    /// frame can get through if it reads again) and close with 1008.
    CutOff,
    /// This node lost its cluster lease: close with 1012 and send no disconnect notice (the
    /// node that reaps this node's run sends it).
    Fenced,
}

/// Hub -> session: send this to the client.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Deliver(pub Outbound);

/// How a publish or broadcast went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Connections of this node the message was queued for.
    pub reached: usize,
    /// Connections of this node that did not get it because their queue was full (they are
    /// cut off).
    pub dropped: usize,
    /// In a cluster: whether it went on to the other nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterReach>,
}

/// How a publication fared beyond this node (in a cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClusterReach {
    /// Whether it was handed to Redis for the other nodes; false means only this node's
    /// connections got it.
    pub published: bool,
    /// Subscriptions of other nodes that received it (a node holding the channel and a
    /// matching prefix counts twice); 0 when not published.
    pub other_nodes: usize,
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
    /// Another node holds it and did not answer in time.
    #[error("the node holding this connection did not answer in time")]
    NodeUnreachable,
    /// The cluster cannot be reached, so a connection on another node cannot be either.
    #[error(
        "no local connection with this id, and the cluster is unreachable (Redis down or cut off)"
    )]
    ClusterUnreachable,
}
