//! What nodes say to each other over Redis pub/sub, as JSON: publications (on the channel's
//! own pub/sub channel or the broadcast channel) and control messages (on a run's control
//! channel or the survey channel).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One publication as it crosses Redis.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// The run that published it (its own copy is skipped: it delivered locally already).
    #[serde(rename = "o")]
    pub origin: String,
    /// The publisher's sequence number, unique per run: with `origin` it identifies one
    /// publication, so a node reached through a channel and a matching prefix delivers once.
    #[serde(rename = "s")]
    pub seq: u64,
    /// The channel; absent for a broadcast.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The published value.
    #[serde(rename = "d")]
    pub data: Value,
}

/// What a survey asks every node for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Question {
    /// Its connections (`ConnectionInfo` each).
    Connections,
    /// Its channels with member counts (`ChannelInfo` each).
    Channels,
    /// Its count of members of a channel, or of connections in any channel.
    Subscribers {
        /// The channel; absent for "any channel".
        channel: Option<String>,
    },
    /// The ids of its members of a channel.
    Presence {
        /// The channel.
        channel: String,
    },
}

/// A control message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Control {
    /// Send a frame to a connection this run holds.
    Send {
        /// The asker's request number.
        req: u64,
        /// The asker's run (answers go to its control channel).
        from: String,
        /// The connection.
        id: String,
        /// A text frame.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// A binary frame, base64.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
    },
    /// Close a connection this run holds.
    Close {
        /// The asker's request number.
        req: u64,
        /// The asker's run.
        from: String,
        /// The connection.
        id: String,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// A newer connection on another node took this id: close ours with 4001, no notice.
    Replace {
        /// The connection.
        id: String,
        /// The session serial the directory named (a later local session keeps the id).
        serial: u64,
    },
    /// A cluster-wide question, on the survey channel.
    Survey {
        /// The asker's request number.
        req: u64,
        /// The asker's run.
        from: String,
        /// What it asks.
        question: Question,
    },
    /// The answer to a request or survey.
    Answer {
        /// The request it answers.
        req: u64,
        /// The answering node's name.
        node: String,
        /// The answering run.
        run: String,
        /// The answer.
        body: Value,
    },
    /// The liveness probe a node sends itself.
    Probe,
}

/// How a send or close went on the owning node, in an answer's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Done.
    Ok,
    /// The owner does not hold it (any more).
    Unknown,
    /// Its queue was full; it was cut off.
    QueueFull,
    /// The owner's hub is not running.
    Unavailable,
}
