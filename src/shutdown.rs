//! Graceful shutdown without polling (mini-redis's recipe): whatever the drain must wait for
//! holds a [`Guard`] (every session does), and the drain waits until the last guard is gone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// Hands out guards, and counts the ones alive (the connection cap reads it).
/// It holds only a weak sender, so the tracker itself (kept by every worker's route
/// settings) never keeps the drain waiting.
#[derive(Clone)]
pub struct Tracker {
    tx: mpsc::WeakSender<()>,
    live: Arc<AtomicUsize>,
}

/// Held for as long as something must finish before the process may exit.
pub struct Guard {
    /// Never sent on: the channel closes when the last sender is dropped (None once the
    /// drain is over).
    _tx: Option<mpsc::Sender<()>>,
    live: Arc<AtomicUsize>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Tracker {
    /// A guard that keeps the drain waiting until it is dropped.
    pub fn guard(&self) -> Guard {
        self.live.fetch_add(1, Ordering::SeqCst);
        Guard {
            _tx: self.tx.upgrade(),
            live: self.live.clone(),
        }
    }

    /// Guards alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

/// The waiting side: holds the channel open until the drain begins, then resolves once
/// every guard is gone.
pub struct Drain {
    tx: Option<mpsc::Sender<()>>,
    rx: mpsc::Receiver<()>,
}

/// A tracker to hand out and the drain that waits for it.
pub fn tracker() -> (Tracker, Drain) {
    let (tx, rx) = mpsc::channel(1);
    let tracker = Tracker {
        tx: tx.downgrade(),
        live: Arc::new(AtomicUsize::new(0)),
    };
    (tracker, Drain { tx: Some(tx), rx })
}

impl Drain {
    /// Wait until every guard is dropped.
    pub async fn finished(&mut self) {
        self.tx = None;
        // Nothing is ever sent: recv returns None once all senders are gone.
        while self.rx.recv().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_drain_ends_when_the_last_guard_is_dropped() {
        let (tracker, mut drain) = tracker();
        let first = tracker.guard();
        let second = tracker.guard();
        assert_eq!(tracker.live(), 2);
        drop(first);
        let waited = tokio::time::timeout(Duration::from_millis(50), drain.finished()).await;
        assert!(waited.is_err(), "one guard is still held");
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), drain.finished())
            .await
            .expect("drained, although the tracker is still alive");
        assert_eq!(tracker.live(), 0);
    }
}
