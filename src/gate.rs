//! The authorization gate between a client's channel requests and the hub: which channels a
//! request asks the authorization hook about, and, once the hook has answered, which
//! operations go on to the hub and how the hook's refusals are merged back into the outcomes
//! in request order (a replace-all keeps its allowed channels and reports the denied ones).
//! The session keeps the requests in order behind a pending question; this is the pure part.

use std::collections::{BTreeSet, HashSet};

use crate::channel::ChannelName;
use crate::operation::{ChannelOp, OpOutcome};

/// The channels (and topic prefixes) a list of operations would join.
pub(crate) fn channels_to_authorize(ops: &[ChannelOp]) -> Vec<String> {
    let mut channels = Vec::new();
    for op in ops {
        match op {
            ChannelOp::Subscribe(channel) => channels.push(channel.to_string()),
            ChannelOp::SubscribePrefix(prefix) => channels.push(prefix.clone()),
            ChannelOp::Replace(wanted) => channels.extend(wanted.iter().map(|c| c.to_string())),
            ChannelOp::Unsubscribe(_) | ChannelOp::Publish { .. } => {}
        }
    }
    channels
}

/// A request after the gate: the operations for the hub, and what was decided without it.
#[derive(Debug)]
pub(crate) struct Screened {
    /// The operations the hub applies, in order.
    pub kept: Vec<ChannelOp>,
    /// Per requested operation: decided here, or `None` for the hub's next outcome.
    decided: Vec<Option<OpOutcome>>,
    /// Channels a replace-all asked for that the hook refused.
    replace_denied: Vec<ChannelName>,
}

/// Pass `ops` through the gate: with `allowed` (the hook's answer), subscriptions to anything
/// else are denied; without it, everything goes on.
pub(crate) fn screen(ops: Vec<ChannelOp>, allowed: Option<&HashSet<String>>) -> Screened {
    let mut decided = Vec::with_capacity(ops.len());
    let mut kept = Vec::with_capacity(ops.len());
    let mut replace_denied = Vec::new();
    for op in ops {
        let Some(allowed) = allowed else {
            kept.push(op);
            decided.push(None);
            continue;
        };
        match op {
            ChannelOp::Subscribe(channel) if !allowed.contains(channel.as_str()) => {
                decided.push(Some(OpOutcome::Denied(channel.to_string())));
            }
            ChannelOp::SubscribePrefix(prefix) if !allowed.contains(&prefix) => {
                decided.push(Some(OpOutcome::Denied(prefix)));
            }
            ChannelOp::Replace(wanted) => {
                let (ok, denied): (BTreeSet<_>, BTreeSet<_>) = wanted
                    .into_iter()
                    .partition(|c| allowed.contains(c.as_str()));
                replace_denied = denied.into_iter().collect();
                kept.push(ChannelOp::Replace(ok));
                decided.push(None);
            }
            op => {
                kept.push(op);
                decided.push(None);
            }
        }
    }
    Screened {
        kept,
        decided,
        replace_denied,
    }
}

impl Screened {
    /// The outcome of every requested operation, in request order, from the hub's outcomes
    /// for the kept ones.
    pub(crate) fn outcomes(self, hub: Vec<OpOutcome>) -> Vec<OpOutcome> {
        let mut hub = hub.into_iter();
        let replace_denied = self.replace_denied;
        self.decided
            .into_iter()
            .map(|slot| match slot.or_else(|| hub.next()) {
                Some(OpOutcome::Replaced {
                    current,
                    left,
                    joined,
                    ..
                }) => OpOutcome::Replaced {
                    current,
                    left,
                    joined,
                    denied: replace_denied.clone(),
                },
                Some(outcome) => outcome,
                None => OpOutcome::UnknownConnection,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn denials_are_merged_back_in_request_order() {
        let ops = vec![
            ChannelOp::Subscribe(channel("ok")),
            ChannelOp::Subscribe(channel("secret")),
            ChannelOp::Unsubscribe(channel("old")),
            ChannelOp::Replace(["ok", "secret"].into_iter().map(channel).collect()),
        ];
        assert_eq!(
            channels_to_authorize(&ops),
            ["ok", "secret", "ok", "secret"]
        );
        let allowed: HashSet<String> = ["ok".to_owned()].into_iter().collect();
        let screened = screen(ops, Some(&allowed));
        assert_eq!(
            screened.kept.len(),
            3,
            "the denied subscribe never reaches the hub"
        );
        assert_eq!(
            screened.kept[2],
            ChannelOp::Replace([channel("ok")].into_iter().collect())
        );
        let hub = vec![
            OpOutcome::Subscribed,
            OpOutcome::Unsubscribed,
            OpOutcome::Replaced {
                current: vec![channel("ok")],
                left: vec![],
                joined: vec![channel("ok")],
                denied: vec![],
            },
        ];
        let outcomes = screened.outcomes(hub);
        assert_eq!(outcomes[0], OpOutcome::Subscribed);
        assert_eq!(outcomes[1], OpOutcome::Denied("secret".into()));
        assert_eq!(outcomes[2], OpOutcome::Unsubscribed);
        match &outcomes[3] {
            OpOutcome::Replaced { denied, .. } => assert_eq!(denied, &vec![channel("secret")]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_a_hook_everything_goes_on() {
        let ops = vec![ChannelOp::Subscribe(channel("a"))];
        let screened = screen(ops, None);
        assert_eq!(screened.kept.len(), 1);
        assert_eq!(
            screened.outcomes(vec![OpOutcome::Subscribed]),
            vec![OpOutcome::Subscribed]
        );
    }
}
