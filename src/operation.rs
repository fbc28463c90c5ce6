//! Channel operations a client asks for through its dialect, and what came of each: the
//! vocabulary shared by the dialects (which produce operations and render outcomes) and the hub
//! (which applies them).

use std::collections::BTreeSet;

use crate::channel::ChannelName;
use crate::delivery::Delivery;

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
