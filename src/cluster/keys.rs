//! The names of the cluster's Redis keys and pub/sub channels, all under `cluster.key_prefix`.

use crate::channel::ChannelName;
use crate::connection::ConnectionId;

/// Builds every Redis name the cluster uses from one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `cluster.key_prefix`.
    prefix: String,
}

impl Keys {
    /// Names under `prefix`.
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix itself (the reaping script builds names from it).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pub/sub channel of one hub channel.
    pub(crate) fn channel(&self, channel: &ChannelName) -> String {
        format!("{}:ch:{channel}", self.prefix)
    }

    /// The hub channel a pub/sub channel name carries, if it is one.
    pub(crate) fn channel_of<'a>(&self, redis_channel: &'a str) -> Option<&'a str> {
        redis_channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(":ch:"))
    }

    /// The pattern matching every channel that starts with `prefix` (glob characters escaped).
    pub(crate) fn pattern(&self, prefix: &str) -> String {
        let mut pattern = format!("{}:ch:", self.prefix);
        for c in prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        pattern
    }

    /// The channel every node reads for broadcasts.
    pub(crate) fn broadcast(&self) -> String {
        format!("{}:broadcast", self.prefix)
    }

    /// The channel every node reads for cluster-wide questions (listings, counts).
    pub(crate) fn survey(&self) -> String {
        format!("{}:survey", self.prefix)
    }

    /// The control channel of one run: requests for its connections, answers, probes.
    pub(crate) fn control(&self, run: &str) -> String {
        format!("{}:ctl:{run}", self.prefix)
    }

    /// The lease of one run (expires unless renewed).
    pub(crate) fn lease(&self, run: &str) -> String {
        format!("{}:lease:{run}", self.prefix)
    }

    /// Hash of every run not yet reaped: run -> node name.
    pub(crate) fn runs(&self) -> String {
        format!("{}:runs", self.prefix)
    }

    /// Hash of heartbeats: run -> JSON figures.
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The latest run of a node name (a restart finds its previous run here).
    pub(crate) fn name(&self, node: &str) -> String {
        format!("{}:name:{node}", self.prefix)
    }

    /// The value every run of one Redis data set shares: a changed one means Redis lost its
    /// data (a restart without persistence), not that this node was reaped.
    pub(crate) fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Hash of one run's live connections: id -> `n:serial` (announced when it ends) or
    /// `q:serial` (not announced).
    pub(crate) fn live(&self, run: &str) -> String {
        format!("{}:live:{run}", self.prefix)
    }

    /// Hash of the disconnect notices one run took over from the runs it reaped and has not
    /// settled yet: `{origin run} {serial}` -> id. When that run dies too, its reaper takes
    /// them over in turn, so a reaper's crash never loses a notice.
    pub(crate) fn owed(&self, run: &str) -> String {
        format!("{}:owed:{run}", self.prefix)
    }

    /// The directory entry of one connection id: `run:serial` of its owner.
    pub(crate) fn connection(&self, id: &ConnectionId) -> String {
        format!("{}:conn:{id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_glob_characters_and_channels_round_trip() {
        let keys = Keys::new("sb");
        assert_eq!(keys.pattern("org.*[x]"), "sb:ch:org.\\*\\[x\\]*");
        let channel = ChannelName::parse("org.fedora.x").unwrap();
        let name = keys.channel(&channel);
        assert_eq!(keys.channel_of(&name), Some("org.fedora.x"));
        assert_eq!(keys.channel_of("sb:broadcast"), None);
    }
}
