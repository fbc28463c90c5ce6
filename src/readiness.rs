//! Readiness for load balancers: the reasons this process should get no new clients now, as
//! one cheap shared flag set that `/readyz` reads on every request. Whoever knows a reason
//! sets and clears it with one call: the server while it starts and while it drains; the
//! cluster link, once there is one, while the broker is out of reach
//! ([`NotReady::BrokerDown`]). `/healthz` (liveness) does not look at it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// One reason not to send new clients here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// The servers and the hub are not all running yet.
    Starting,
    /// SIGTERM or SIGINT arrived: the connections are about to be closed with 1001.
    Draining,
    /// Clustered and cut off from the broker (Redis): publishes would not reach other nodes.
    BrokerDown,
}

impl NotReady {
    /// Every reason, in the order `/readyz` lists them.
    const ALL: [NotReady; 3] = [NotReady::Starting, NotReady::Draining, NotReady::BrokerDown];

    fn bit(self) -> u8 {
        match self {
            NotReady::Starting => 1,
            NotReady::Draining => 2,
            NotReady::BrokerDown => 4,
        }
    }

    /// The reason's name in `/readyz`'s body.
    pub fn name(self) -> &'static str {
        match self {
            NotReady::Starting => "starting",
            NotReady::Draining => "draining",
            NotReady::BrokerDown => "broker_down",
        }
    }

    /// The reason in words, for `/readyz`'s `message`.
    pub fn describe(self) -> &'static str {
        match self {
            NotReady::Starting => "the hub is starting",
            NotReady::Draining => "the hub is shutting down: connections are about to close",
            NotReady::BrokerDown => "the node is cut off from the cluster's broker",
        }
    }
}

/// The shared set of reasons; clones share it. A new one holds [`NotReady::Starting`].
#[derive(Debug, Clone)]
pub struct Readiness {
    /// One bit per [`NotReady`] reason that currently holds.
    reasons: Arc<AtomicU8>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            reasons: Arc::new(AtomicU8::new(NotReady::Starting.bit())),
        }
    }
}

impl Readiness {
    /// Record that `reason` holds (again setting it is harmless).
    pub fn set(&self, reason: NotReady) {
        self.reasons.fetch_or(reason.bit(), Ordering::SeqCst);
    }

    /// Record that `reason` no longer holds.
    pub fn clear(&self, reason: NotReady) {
        self.reasons.fetch_and(!reason.bit(), Ordering::SeqCst);
    }

    /// The reasons that hold now; empty means ready.
    pub fn reasons(&self) -> Vec<NotReady> {
        let bits = self.reasons.load(Ordering::SeqCst);
        NotReady::ALL
            .into_iter()
            .filter(|reason| bits & reason.bit() != 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_set_and_cleared_independently() {
        let readiness = Readiness::default();
        assert_eq!(readiness.reasons(), [NotReady::Starting]);
        let shared = readiness.clone();
        shared.clear(NotReady::Starting);
        assert!(readiness.reasons().is_empty());
        shared.set(NotReady::BrokerDown);
        readiness.set(NotReady::Draining);
        readiness.set(NotReady::Draining);
        assert_eq!(
            readiness.reasons(),
            [NotReady::Draining, NotReady::BrokerDown]
        );
        shared.clear(NotReady::BrokerDown);
        assert_eq!(readiness.reasons(), [NotReady::Draining]);
    }
}
