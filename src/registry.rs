//! The hub's state as a plain struct: the registry of connections, their channels and topic
//! prefixes, the prefix index, the subscription limits, the replace-all diff and the serial
//! guard. No actors, no I/O: the hub actor is a thin shell around it, and tests build it
//! directly. Each member carries a `link` of the caller's choosing (the hub keeps the session's
//! mailbox and backlog there).
//!
//! Channel interest changes are visible events: when a channel or prefix gains its first
//! member or loses its last one, an [`Interest`] is recorded for the caller to take (a cluster
//! subscribes to exactly the channels some local connection is in).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::channel::ChannelName;
use crate::connection::ConnectionId;
use crate::operation::{ChannelOp, OpOutcome, SubscriptionLimit};

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

/// Why the hub refused to register a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefused {
    /// Another live connection has this id.
    #[error("a connection with this id is already registered")]
    Duplicate,
}

/// One connection as the push API lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// In a cluster, the node that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Arc<str>>,
}

/// One channel as the push API lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// Its name.
    pub name: ChannelName,
    /// How many connections are members.
    pub subscribers: usize,
}

/// A channel or a topic prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Topic {
    /// One channel.
    Channel(ChannelName),
    /// Every channel whose name starts with this.
    Prefix(Arc<str>),
}

/// A change in which channels and prefixes have local members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Interest {
    /// The first member joined.
    Gained(Topic),
    /// The last member left.
    Lost(Topic),
}

/// What [`Registry::apply`] decided.
#[derive(Debug)]
pub(crate) enum Applied {
    /// The operation's outcome.
    Outcome(OpOutcome),
    /// A publish the sender may make: deliver `data` to `targets` (the sender excluded when
    /// it asked to be).
    Publish {
        /// Who receives it, each once.
        targets: Vec<ConnectionId>,
        /// The channel.
        channel: ChannelName,
        /// The value.
        data: serde_json::Value,
    },
}

/// One registered connection.
pub(crate) struct Member<L> {
    /// The caller's handle on the connection.
    pub link: L,
    /// Unique per session, so a replaced session's late deregistration cannot remove its
    /// successor.
    pub serial: u64,
    route: Arc<str>,
    remote: Option<Arc<str>>,
    since: SystemTime,
    channels: BTreeSet<ChannelName>,
    prefixes: BTreeSet<Arc<str>>,
    /// Bytes of the names in `channels` plus `prefixes`, held under
    /// `limits.max_subscription_bytes`.
    subscription_bytes: usize,
}

/// Who is connected and what each connection is subscribed to.
pub(crate) struct Registry<L> {
    limits: SubscriptionLimits,
    connections: HashMap<ConnectionId, Member<L>>,
    channels: HashMap<ChannelName, HashSet<ConnectionId>>,
    /// Prefix subscriptions: a publish to channel `c` looks up each prefix of `c` here, so its
    /// cost grows with the length of `c`, not with the number of distinct prefixes.
    prefixes: HashMap<Arc<str>, HashSet<ConnectionId>>,
    /// Interest changes not yet taken.
    interest: Vec<Interest>,
    /// Connections registered since start.
    opened: u64,
    /// Connections deregistered since start.
    closed: u64,
}

impl<L> Registry<L> {
    /// An empty registry whose subscriptions are bounded by `limits`.
    pub(crate) fn new(limits: SubscriptionLimits) -> Self {
        Self {
            limits,
            connections: HashMap::new(),
            channels: HashMap::new(),
            prefixes: HashMap::new(),
            interest: Vec::new(),
            opened: 0,
            closed: 0,
        }
    }

    /// Register a connection. With a live connection of the same id: refuse, or with
    /// `replace`, take its place and hand the older member back (its session is to be told).
    pub(crate) fn register(
        &mut self,
        id: ConnectionId,
        route: Arc<str>,
        remote: Option<Arc<str>>,
        serial: u64,
        replace: bool,
        link: L,
    ) -> Result<Option<Member<L>>, ConnectRefused> {
        let replaced = if self.connections.contains_key(&id) {
            if !replace {
                return Err(ConnectRefused::Duplicate);
            }
            self.remove(&id)
        } else {
            None
        };
        self.opened += 1;
        self.connections.insert(
            id,
            Member {
                link,
                serial,
                route,
                remote,
                since: SystemTime::now(),
                channels: BTreeSet::new(),
                prefixes: BTreeSet::new(),
                subscription_bytes: 0,
            },
        );
        Ok(replaced)
    }

    /// Deregister the session with this serial; a later session with the same id stays.
    pub(crate) fn deregister(&mut self, id: &ConnectionId, serial: u64) -> Option<Member<L>> {
        if self.connections.get(id).map(|m| m.serial) == Some(serial) {
            self.remove(id)
        } else {
            None
        }
    }

    /// Remove a connection and its memberships, whatever its serial.
    pub(crate) fn remove(&mut self, id: &ConnectionId) -> Option<Member<L>> {
        let member = self.connections.remove(id)?;
        self.closed += 1;
        for channel in &member.channels {
            self.leave_channel(channel, id);
        }
        for prefix in &member.prefixes {
            if let Some(members) = self.prefixes.get_mut(prefix) {
                members.remove(id);
                if members.is_empty() {
                    self.prefixes.remove(prefix);
                    self.interest
                        .push(Interest::Lost(Topic::Prefix(prefix.clone())));
                }
            }
        }
        Some(member)
    }

    /// The member registered under `id`.
    pub(crate) fn get(&self, id: &ConnectionId) -> Option<&Member<L>> {
        self.connections.get(id)
    }

    /// Every registered member.
    pub(crate) fn members(&self) -> impl Iterator<Item = (&ConnectionId, &Member<L>)> {
        self.connections.iter()
    }

    /// Connections registered now.
    pub(crate) fn len(&self) -> usize {
        self.connections.len()
    }

    /// Nobody is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Channels with at least one member now.
    pub(crate) fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Connections registered and deregistered since start.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (self.opened, self.closed)
    }

    /// Take the interest changes recorded since the last call.
    pub(crate) fn take_interest(&mut self) -> Vec<Interest> {
        std::mem::take(&mut self.interest)
    }

    fn join_channel(&mut self, channel: ChannelName, id: &ConnectionId) {
        let members = self.channels.entry(channel.clone()).or_default();
        if members.is_empty() {
            self.interest
                .push(Interest::Gained(Topic::Channel(channel)));
        }
        members.insert(id.clone());
    }

    fn join_prefix(&mut self, prefix: Arc<str>, id: &ConnectionId) {
        let members = self.prefixes.entry(prefix.clone()).or_default();
        if members.is_empty() {
            self.interest.push(Interest::Gained(Topic::Prefix(prefix)));
        }
        members.insert(id.clone());
    }

    fn leave_channel(&mut self, channel: &ChannelName, id: &ConnectionId) {
        if let Some(members) = self.channels.get_mut(channel) {
            members.remove(id);
            if members.is_empty() {
                self.channels.remove(channel);
                self.interest
                    .push(Interest::Lost(Topic::Channel(channel.clone())));
            }
        }
    }

    /// Apply one operation for connection `id`. A publish is only checked here: its targets
    /// come back for the caller to deliver to.
    pub(crate) fn apply(&mut self, id: &ConnectionId, op: ChannelOp) -> Applied {
        Applied::Outcome(match self.apply_op(id, op) {
            Ok(outcome) => outcome,
            Err(publish) => return publish,
        })
    }

    fn apply_op(&mut self, id: &ConnectionId, op: ChannelOp) -> Result<OpOutcome, Applied> {
        let Some(entry) = self.connections.get_mut(id) else {
            return Ok(OpOutcome::UnknownConnection);
        };
        let limits = self.limits;
        let held = entry.channels.len() + entry.prefixes.len();
        // Distinct channels and prefixes of all connections (what `max_channels` bounds).
        let distinct = self.channels.len() + self.prefixes.len();
        match op {
            ChannelOp::Subscribe(channel) => {
                if entry.channels.contains(&channel) {
                    return Ok(OpOutcome::Subscribed);
                }
                if held >= limits.per_connection {
                    return Ok(OpOutcome::LimitReached(SubscriptionLimit::Count(
                        limits.per_connection,
                    )));
                }
                let bytes = entry.subscription_bytes + channel.as_str().len();
                if bytes > limits.bytes_per_connection {
                    return Ok(OpOutcome::LimitReached(SubscriptionLimit::Bytes(
                        limits.bytes_per_connection,
                    )));
                }
                // A channel that exists already lends its name: the bytes are held once.
                let channel = match self.channels.get_key_value(&channel) {
                    Some((name, _)) => name.clone(),
                    None if distinct >= limits.channels => {
                        return Ok(OpOutcome::LimitReached(SubscriptionLimit::Channels(
                            limits.channels,
                        )))
                    }
                    None => channel,
                };
                entry.subscription_bytes = bytes;
                entry.channels.insert(channel.clone());
                self.join_channel(channel, id);
                Ok(OpOutcome::Subscribed)
            }
            ChannelOp::Unsubscribe(channel) => {
                if entry.channels.remove(&channel) {
                    entry.subscription_bytes -= channel.as_str().len();
                    self.leave_channel(&channel, id);
                }
                Ok(OpOutcome::Unsubscribed)
            }
            ChannelOp::SubscribePrefix(prefix) => {
                if entry.prefixes.contains(prefix.as_str()) {
                    return Ok(OpOutcome::Subscribed);
                }
                if held >= limits.per_connection {
                    return Ok(OpOutcome::LimitReached(SubscriptionLimit::Count(
                        limits.per_connection,
                    )));
                }
                let bytes = entry.subscription_bytes + prefix.len();
                if bytes > limits.bytes_per_connection {
                    return Ok(OpOutcome::LimitReached(SubscriptionLimit::Bytes(
                        limits.bytes_per_connection,
                    )));
                }
                let prefix: Arc<str> = match self.prefixes.get_key_value(prefix.as_str()) {
                    Some((name, _)) => name.clone(),
                    None if distinct >= limits.channels => {
                        return Ok(OpOutcome::LimitReached(SubscriptionLimit::Channels(
                            limits.channels,
                        )))
                    }
                    None => Arc::from(prefix),
                };
                entry.subscription_bytes = bytes;
                entry.prefixes.insert(prefix.clone());
                self.join_prefix(prefix, id);
                Ok(OpOutcome::Subscribed)
            }
            ChannelOp::Replace(wanted) => {
                if wanted.len() + entry.prefixes.len() > limits.per_connection {
                    return Ok(OpOutcome::LimitReached(SubscriptionLimit::Count(
                        limits.per_connection,
                    )));
                }
                let prefix_bytes: usize = entry.prefixes.iter().map(|p| p.len()).sum();
                let bytes = prefix_bytes + wanted.iter().map(|c| c.as_str().len()).sum::<usize>();
                if bytes > limits.bytes_per_connection {
                    return Ok(OpOutcome::LimitReached(SubscriptionLimit::Bytes(
                        limits.bytes_per_connection,
                    )));
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
                    return Ok(OpOutcome::LimitReached(SubscriptionLimit::Channels(
                        limits.channels,
                    )));
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
                    self.join_channel(channel.clone(), id);
                }
                Ok(OpOutcome::Replaced {
                    current,
                    left,
                    joined,
                    denied: Vec::new(),
                })
            }
            ChannelOp::Publish {
                channel,
                data,
                exclude_sender,
                require_subscribed,
            } => {
                if require_subscribed && !entry.channels.contains(&channel) {
                    return Ok(OpOutcome::NotSubscribed(channel));
                }
                let targets = self.targets(&channel, exclude_sender.then_some(id));
                Err(Applied::Publish {
                    targets,
                    channel,
                    data,
                })
            }
        }
    }

    /// Who receives a publication to `channel`: its members and every connection with a
    /// matching prefix, each once, `exclude` left out.
    pub(crate) fn targets(
        &self,
        channel: &ChannelName,
        exclude: Option<&ConnectionId>,
    ) -> Vec<ConnectionId> {
        let mut targets: Vec<ConnectionId> = self
            .channels
            .get(channel)
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
        targets
    }

    /// Every connection, sorted by id.
    pub(crate) fn list_connections(&self) -> Vec<ConnectionInfo> {
        let mut list: Vec<ConnectionInfo> = self
            .connections
            .iter()
            .map(|(id, member)| ConnectionInfo {
                id: id.clone(),
                route: member.route.clone(),
                remote: member.remote.clone(),
                channels: member.channels.iter().cloned().collect(),
                prefixes: member.prefixes.iter().cloned().collect(),
                connected_since: member
                    .since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                node: None,
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// Every channel with its member count, sorted by name.
    pub(crate) fn list_channels(&self) -> Vec<ChannelInfo> {
        let mut list: Vec<ChannelInfo> = self
            .channels
            .iter()
            .map(|(name, members)| ChannelInfo {
                name: name.clone(),
                subscribers: members.len(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The ids of the members of `channel`, sorted.
    pub(crate) fn members_of(&self, channel: &ChannelName) -> Vec<ConnectionId> {
        let mut ids: Vec<ConnectionId> = self
            .channels
            .get(channel)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Members of `channel`, or with `None` the connections in at least one channel or prefix.
    pub(crate) fn count_subscribers(&self, channel: Option<&ChannelName>) -> usize {
        match channel {
            Some(channel) => self.channels.get(channel).map_or(0, HashSet::len),
            None => self
                .connections
                .values()
                .filter(|m| !m.channels.is_empty() || !m.prefixes.is_empty())
                .count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    /// A registry with these limits and `n` registered connections `c0`, `c1`, ...
    fn registry_with(limits: SubscriptionLimits, n: usize) -> (Registry<()>, Vec<ConnectionId>) {
        let mut registry = Registry::new(limits);
        let mut ids = Vec::new();
        for i in 0..n {
            let id = ConnectionId::parse(&format!("c{i}")).unwrap();
            registry
                .register(id.clone(), Arc::from("/rpc"), None, i as u64, false, ())
                .unwrap();
            ids.push(id);
        }
        (registry, ids)
    }

    fn apply(registry: &mut Registry<()>, id: &ConnectionId, op: ChannelOp) -> OpOutcome {
        match registry.apply(id, op) {
            Applied::Outcome(outcome) => outcome,
            Applied::Publish { .. } => panic!("a publish"),
        }
    }

    const ROOMY: SubscriptionLimits = SubscriptionLimits {
        per_connection: 1_000,
        bytes_per_connection: 1 << 20,
        channels: 1_000,
    };

    #[test]
    fn a_connection_holds_at_most_its_byte_budget() {
        let limits = SubscriptionLimits {
            bytes_per_connection: 600,
            ..ROOMY
        };
        let (mut hub, ids) = registry_with(limits, 1);
        let c = &ids[0];
        let a = "a".repeat(256);
        let b = "b".repeat(256);
        let sub = |name: &str| ChannelOp::Subscribe(channel(name));
        assert_eq!(apply(&mut hub, c, sub(&a)), OpOutcome::Subscribed);
        assert_eq!(apply(&mut hub, c, sub(&b)), OpOutcome::Subscribed);
        assert_eq!(
            apply(&mut hub, c, sub(&a)),
            OpOutcome::Subscribed,
            "idempotent"
        );
        let refused = OpOutcome::LimitReached(SubscriptionLimit::Bytes(600));
        assert_eq!(apply(&mut hub, c, sub(&"c".repeat(89))), refused);
        assert_eq!(
            apply(&mut hub, c, ChannelOp::SubscribePrefix("p".repeat(89))),
            refused
        );
        assert_eq!(
            apply(&mut hub, c, sub(&"c".repeat(88))),
            OpOutcome::Subscribed
        );
        // Leaving gives the bytes back.
        apply(&mut hub, c, ChannelOp::Unsubscribe(channel(&a)));
        assert_eq!(
            apply(&mut hub, c, ChannelOp::SubscribePrefix("p".repeat(256))),
            OpOutcome::Subscribed
        );
        // A replacement is measured whole, the prefixes included (256 + 256 + 89 > 600).
        let wanted: BTreeSet<_> = [b.as_str(), &"d".repeat(89)]
            .into_iter()
            .map(channel)
            .collect();
        assert_eq!(apply(&mut hub, c, ChannelOp::Replace(wanted)), refused);
        let wanted: BTreeSet<_> = [b.as_str(), &"d".repeat(88)]
            .into_iter()
            .map(channel)
            .collect();
        assert!(matches!(
            apply(&mut hub, c, ChannelOp::Replace(wanted)),
            OpOutcome::Replaced { .. }
        ));
        // The count limit is still reported as such.
        let limits = SubscriptionLimits {
            per_connection: 1,
            ..ROOMY
        };
        let (mut hub, ids) = registry_with(limits, 1);
        apply(&mut hub, &ids[0], sub("x"));
        assert_eq!(
            apply(&mut hub, &ids[0], sub("y")),
            OpOutcome::LimitReached(SubscriptionLimit::Count(1))
        );
    }

    #[test]
    fn the_hub_holds_at_most_max_channels_distinct_channels_and_prefixes() {
        let limits = SubscriptionLimits {
            channels: 3,
            ..ROOMY
        };
        let (mut hub, ids) = registry_with(limits, 2);
        let (a, b) = (&ids[0], &ids[1]);
        let sub = |name: &str| ChannelOp::Subscribe(channel(name));
        let full = OpOutcome::LimitReached(SubscriptionLimit::Channels(3));
        assert_eq!(apply(&mut hub, a, sub("one")), OpOutcome::Subscribed);
        assert_eq!(apply(&mut hub, a, sub("two")), OpOutcome::Subscribed);
        assert_eq!(
            apply(&mut hub, a, ChannelOp::SubscribePrefix("p.".into())),
            OpOutcome::Subscribed
        );
        assert_eq!(apply(&mut hub, b, sub("three")), full);
        assert_eq!(
            apply(&mut hub, b, ChannelOp::SubscribePrefix("q.".into())),
            full
        );
        // Existing channels and prefixes can still be joined.
        assert_eq!(apply(&mut hub, b, sub("one")), OpOutcome::Subscribed);
        assert_eq!(
            apply(&mut hub, b, ChannelOp::SubscribePrefix("p.".into())),
            OpOutcome::Subscribed
        );
        let more: BTreeSet<_> = ["one", "four"].into_iter().map(channel).collect();
        assert_eq!(apply(&mut hub, b, ChannelOp::Replace(more)), full);
        // A replacement that empties a channel of its own makes room for its new one.
        apply(&mut hub, a, ChannelOp::Unsubscribe(channel("one")));
        let keep: BTreeSet<_> = ["two", "four"].into_iter().map(channel).collect();
        assert_eq!(
            apply(&mut hub, a, ChannelOp::Replace(keep)),
            full,
            "two stays"
        );
        let swap: BTreeSet<_> = ["four"].into_iter().map(channel).collect();
        assert!(matches!(
            apply(&mut hub, a, ChannelOp::Replace(swap)),
            OpOutcome::Replaced { .. }
        ));
        // Once a channel's last member leaves, its slot is free again.
        hub.deregister(a, 0);
        assert_eq!(apply(&mut hub, b, sub("five")), OpOutcome::Subscribed);
        assert_eq!(hub.channel_count(), 2, "one and five");
    }

    #[test]
    fn a_newer_connection_replaces_an_older_one_and_a_stale_serial_is_ignored() {
        let (mut registry, ids) = registry_with(ROOMY, 1);
        let id = ids[0].clone();
        assert_eq!(
            registry
                .register(id.clone(), Arc::from("/x"), None, 7, false, ())
                .err(),
            Some(ConnectRefused::Duplicate)
        );
        let replaced = registry.register(id.clone(), Arc::from("/x"), None, 7, true, ());
        assert_eq!(replaced.unwrap().map(|old| old.serial), Some(0));
        // The replaced session's late deregistration leaves its successor alone.
        assert!(registry.deregister(&id, 0).is_none());
        assert_eq!(registry.len(), 1);
        assert!(registry.deregister(&id, 7).is_some());
        assert!(registry.is_empty());
    }

    #[test]
    fn channel_interest_is_reported_on_the_first_join_and_the_last_leave() {
        let (mut registry, ids) = registry_with(ROOMY, 2);
        let news = channel("news");
        apply(&mut registry, &ids[0], ChannelOp::Subscribe(news.clone()));
        apply(&mut registry, &ids[1], ChannelOp::Subscribe(news.clone()));
        apply(
            &mut registry,
            &ids[1],
            ChannelOp::SubscribePrefix("org.".into()),
        );
        assert_eq!(
            registry.take_interest(),
            vec![
                Interest::Gained(Topic::Channel(news.clone())),
                Interest::Gained(Topic::Prefix(Arc::from("org."))),
            ]
        );
        apply(&mut registry, &ids[0], ChannelOp::Unsubscribe(news.clone()));
        assert_eq!(registry.take_interest(), vec![]);
        registry.remove(&ids[1]);
        let lost = registry.take_interest();
        assert!(lost.contains(&Interest::Lost(Topic::Channel(news))));
        assert!(lost.contains(&Interest::Lost(Topic::Prefix(Arc::from("org.")))));
    }

    #[test]
    fn a_publish_reaches_members_and_prefixes_once_and_the_replace_diff_is_exact() {
        let (mut registry, ids) = registry_with(ROOMY, 3);
        let (a, b, c) = (&ids[0], &ids[1], &ids[2]);
        let job = channel("org.job.1");
        apply(&mut registry, a, ChannelOp::Subscribe(job.clone()));
        apply(&mut registry, a, ChannelOp::SubscribePrefix("org.".into()));
        apply(
            &mut registry,
            b,
            ChannelOp::SubscribePrefix("org.job".into()),
        );
        apply(&mut registry, c, ChannelOp::SubscribePrefix("net.".into()));
        let mut targets = registry.targets(&job, None);
        targets.sort();
        assert_eq!(targets, vec![a.clone(), b.clone()]);
        assert_eq!(registry.targets(&job, Some(a)), vec![b.clone()]);
        // A member-only publish from a non-member is refused.
        let refused = registry.apply(
            c,
            ChannelOp::Publish {
                channel: job.clone(),
                data: serde_json::json!({}),
                exclude_sender: true,
                require_subscribed: true,
            },
        );
        assert!(matches!(
            refused,
            Applied::Outcome(OpOutcome::NotSubscribed(_))
        ));
        // Replace-all reports what was left and joined.
        apply(
            &mut registry,
            b,
            ChannelOp::Replace([channel("x")].into_iter().collect()),
        );
        let wanted: BTreeSet<_> = ["org.job.1", "org.job.2"]
            .into_iter()
            .map(channel)
            .collect();
        match apply(&mut registry, b, ChannelOp::Replace(wanted)) {
            OpOutcome::Replaced {
                left,
                joined,
                current,
                ..
            } => {
                assert_eq!(left, vec![channel("x")]);
                assert_eq!(joined, vec![channel("org.job.1"), channel("org.job.2")]);
                assert_eq!(current.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(registry.count_subscribers(Some(&job)), 2);
    }
}
