//! How the hub reaches one session: its mailbox, its dialect, its backlog and its worker
//! thread. A link is shared (behind an `Arc`) by the hub's registry and by the courier of the
//! session's worker while a fan-out is on its way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::connection::ConnectionId;
use crate::delivery::{Deliver, Outbound};
use crate::dialect::DialectKind;
use crate::frame::Frame;
use crate::outbox::Backlog;

/// The hub's handle on one session.
pub struct Link {
    /// The connection's id (reported back when it is cut off).
    pub id: ConnectionId,
    /// The session's mailbox.
    pub recipient: Recipient<Deliver>,
    /// The dialect its publications are encoded in.
    pub dialect: DialectKind,
    /// What it has queued and not yet written (shared with its session).
    pub backlog: Arc<Backlog>,
    /// The worker thread its session runs on (which courier delivers to it).
    pub worker: usize,
    /// Set once the connection was cut off for not reading: it gets nothing more, even from
    /// a fan-out that was already on its way when it was cut off.
    cut: AtomicBool,
}

/// Whether a frame was handed to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Queued.
    Yes,
    /// The connection's backlog or mailbox is full.
    Full,
    /// The session is gone, or was cut off already.
    Gone,
}

impl Link {
    /// A link to a session running on `worker`.
    pub fn new(
        id: ConnectionId,
        recipient: Recipient<Deliver>,
        dialect: DialectKind,
        backlog: Arc<Backlog>,
        worker: usize,
    ) -> Self {
        Self {
            id,
            recipient,
            dialect,
            backlog,
            worker,
            cut: AtomicBool::new(false),
        }
    }

    /// Reserve room in the connection's backlog, then hand the frame to its session.
    pub fn queue(&self, frame: Frame) -> Queued {
        if self.cut.load(Ordering::Acquire) {
            return Queued::Gone;
        }
        let size = match &frame {
            Frame::Text(text) => text.len(),
            Frame::Binary(bytes) => bytes.len(),
        };
        if !self.backlog.try_reserve(size) {
            return Queued::Full;
        }
        match self.recipient.try_send(Deliver(Outbound::Frame(frame))) {
            Ok(()) => Queued::Yes,
            Err(SendError::Full(_)) => {
                self.backlog.release(1, size);
                Queued::Full
            }
            Err(SendError::Closed(_)) => {
                self.backlog.release(1, size);
                Queued::Gone
            }
        }
    }

    /// The client stopped reading: tell its session to drop what waits and close with 1008.
    /// True only the first time, so a connection is cut off (and counted) once.
    pub fn cut_off(&self) -> bool {
        if self.cut.swap(true, Ordering::AcqRel) {
            return false;
        }
        log::warn!(
            "id={} outbound queue full: the client stopped reading; closing with 1008",
            self.id
        );
        // One close message beyond the backlog is the bounded exception: it is sent once, and
        // the connection gets nothing more.
        self.recipient.do_send(Deliver(Outbound::CutOff));
        true
    }

    /// Hand the session a message beyond its backlog (a close, a replacement).
    pub fn tell(&self, outbound: Outbound) {
        self.recipient.do_send(Deliver(outbound));
    }
}
