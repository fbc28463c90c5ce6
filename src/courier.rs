//! The courier: one actor per worker thread that delivers a publication to the sessions of
//! its worker. The hub sends each worker one [`Fanout`] per publication with the links of that
//! worker's recipients, so a publish to 19,000 subscribers is a handful of cross-thread
//! messages instead of 19,000; the courier queues the frame into each session's mailbox on the
//! session's own thread (no cross-thread wake-up per recipient), and each dialect's encoding is
//! made once and shared by every worker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::channel::Publication;
use crate::connection::ConnectionId;
use crate::dialect::{self, DialectKind};
use crate::link::{Link, Queued};
use crate::metrics::Metrics;

/// Numbers the couriers (one per worker thread) in the order they start.
static NEXT_WORKER: AtomicUsize = AtomicUsize::new(0);

/// One publication for some of a worker's sessions.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fanout {
    /// What to deliver (encoded at most once per dialect across all workers).
    pub publication: Arc<Publication>,
    /// Who on this worker receives it, each once.
    pub targets: Vec<Arc<Link>>,
    /// Where the courier reports how it went.
    pub report: oneshot::Sender<Report>,
}

/// How one worker's share of a fan-out went.
#[derive(Debug, Default)]
pub struct Report {
    /// Sessions the frame was queued for.
    pub reached: usize,
    /// Connections found with a full backlog: cut off (told to close with 1008) by the
    /// courier, still to be removed from the registry by the hub.
    pub stalled: Vec<ConnectionId>,
    /// Connections whose session had already ended.
    pub gone: Vec<ConnectionId>,
}

/// The courier actor of one worker thread.
struct Courier {
    /// Deliveries and cut-offs are counted here.
    metrics: Arc<Metrics>,
}

impl Actor for Courier {
    type Context = Context<Self>;
}

impl Handler<Fanout> for Courier {
    type Result = ();

    fn handle(&mut self, msg: Fanout, _: &mut Context<Self>) {
        let report = deliver(&msg.publication, &msg.targets, &self.metrics);
        // The publisher may have stopped waiting; the delivery stands all the same.
        let _ = msg.report.send(report);
    }
}

/// Queue `publication` for every link, cutting off those with no room.
fn deliver(publication: &Publication, targets: &[Arc<Link>], metrics: &Metrics) -> Report {
    let mut report = Report::default();
    let mut delivered = [0u64; DialectKind::COUNT];
    for link in targets {
        let frame = dialect::encode(link.dialect, publication);
        match link.queue(frame) {
            Queued::Yes => {
                report.reached += 1;
                delivered[link.dialect.index()] += 1;
            }
            Queued::Full => {
                if link.cut_off() {
                    metrics.cut_off();
                    report.stalled.push(link.id.clone());
                }
            }
            Queued::Gone => report.gone.push(link.id.clone()),
        }
    }
    for (kind, count) in DialectKind::ALL.into_iter().zip(delivered) {
        metrics.delivered(kind, count);
    }
    report
}

/// A worker's courier: which worker it serves and its mailbox.
#[derive(Clone)]
pub struct CourierHandle {
    /// The worker's number (stored in each of its sessions' links).
    worker: usize,
    /// The courier's mailbox.
    addr: Addr<Courier>,
}

impl CourierHandle {
    /// Start the courier of the current worker thread (once per worker, on its arbiter).
    pub fn start(metrics: Arc<Metrics>) -> Self {
        Self {
            worker: NEXT_WORKER.fetch_add(1, Ordering::Relaxed),
            addr: Courier { metrics }.start(),
        }
    }

    /// The worker's number.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Hand the courier a fan-out. Never waits: a courier's mailbox is not bounded, and what
    /// it holds is bounded by the publishers (each waits for its report).
    pub fn send(&self, fanout: Fanout) {
        self.addr.do_send(fanout);
    }
}
