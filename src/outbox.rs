//! What one connection has waiting to be written, and the budget that bounds it.
//!
//! [`Backlog`] is shared by the hub and the session: the hub reserves room before it queues a
//! delivery (a full backlog means the client stopped reading: the delivery is dropped and the
//! connection cut off), the session releases it once the bytes are in the kernel. It counts
//! messages and payload bytes, so a stalled client holds at most `limits.outbound_queue`
//! messages and `limits.outbound_queue_bytes` bytes (or one message, when a single message is
//! larger than the byte budget), whatever is published.
//!
//! [`Outbox`] is the session's write queue: frame headers plus payloads that stay shared with
//! every other recipient (a publication's bytes are never copied per connection), written with
//! vectored writes, and only queued at all when the socket would block.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use crate::wire::Header;

/// Messages and payload bytes queued for one connection and not yet written to its socket.
#[derive(Debug)]
pub struct Backlog {
    messages: AtomicUsize,
    bytes: AtomicUsize,
    max_messages: usize,
    max_bytes: usize,
}

impl Backlog {
    /// An empty backlog with these bounds.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_messages,
            max_bytes,
        }
    }

    /// Reserve room for one message of `size` bytes. False (and nothing reserved) when the
    /// message does not fit: too many messages, or too many bytes unless the backlog is empty.
    pub fn try_reserve(&self, size: usize) -> bool {
        let messages = self.messages.fetch_add(1, Ordering::AcqRel);
        let bytes = self.bytes.fetch_add(size, Ordering::AcqRel);
        let fits =
            messages < self.max_messages && (messages == 0 || bytes + size <= self.max_bytes);
        if !fits {
            self.release(1, size);
        }
        fits
    }

    /// Count a message the session queues for itself (a reply, an echo, a pong): always taken;
    /// the session stops reading while the backlog is over budget.
    pub fn add(&self, size: usize) {
        self.messages.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(size, Ordering::AcqRel);
    }

    /// Give back what written (or dropped) messages held.
    pub fn release(&self, messages: usize, bytes: usize) {
        self.messages.fetch_sub(messages, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Whether the backlog is above its bounds.
    pub fn over_budget(&self) -> bool {
        self.messages.load(Ordering::Acquire) > self.max_messages
            || self.bytes.load(Ordering::Acquire) > self.max_bytes
    }

    /// Whether the backlog is at most half full (reading resumes below this).
    pub fn below_half(&self) -> bool {
        self.messages.load(Ordering::Acquire) <= self.max_messages / 2
            && self.bytes.load(Ordering::Acquire) <= self.max_bytes / 2
    }
}

/// One frame waiting to be written.
struct Pending {
    header: Header,
    payload: Bytes,
    /// Payload bytes this frame holds in the [`Backlog`] (0 for frames not counted there).
    counted: Option<usize>,
}

impl Pending {
    fn len(&self) -> usize {
        self.header.as_bytes().len() + self.payload.len()
    }
}

/// What one [`Outbox::flush`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Bytes written.
    pub written: usize,
    /// Counted messages completed, and their payload bytes (to release from the backlog).
    pub released_messages: usize,
    /// Payload bytes of those messages.
    pub released_bytes: usize,
    /// The socket would block with frames still queued.
    pub blocked: bool,
}

/// Frames per vectored write (two slices each).
const FRAMES_PER_WRITE: usize = 32;

/// The frames one connection has queued, in order.
#[derive(Default)]
pub struct Outbox {
    frames: VecDeque<Pending>,
    /// Bytes of the front frame already written.
    offset: usize,
}

impl Outbox {
    /// Queue a frame. `counted` is the size it holds in the backlog, if it is counted there.
    pub fn push(&mut self, header: Header, payload: Bytes, counted: Option<usize>) {
        self.frames.push_back(Pending {
            header,
            payload,
            counted,
        });
    }

    /// Bytes still to be written (headers included).
    pub fn queued_bytes(&self) -> usize {
        self.frames.iter().map(Pending::len).sum::<usize>() - self.offset
    }

    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Write as much as `write` accepts. `write` is a non-blocking vectored write; WouldBlock
    /// ends the flush with `blocked` set, any other error is returned.
    pub fn flush(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<Flushed> {
        let mut done = Flushed::default();
        while !self.frames.is_empty() {
            let n = {
                let mut slices = Vec::with_capacity(2 * FRAMES_PER_WRITE);
                let mut skip = self.offset;
                for frame in self.frames.iter().take(FRAMES_PER_WRITE) {
                    for part in [frame.header.as_bytes(), &frame.payload[..]] {
                        if skip >= part.len() {
                            skip -= part.len();
                        } else {
                            slices.push(IoSlice::new(&part[skip..]));
                            skip = 0;
                        }
                    }
                }
                match write(&slices) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        done.blocked = true;
                        return Ok(done);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            done.written += n;
            let mut left = self.offset + n;
            while let Some(front) = self.frames.front() {
                if left < front.len() {
                    break;
                }
                left -= front.len();
                let frame = self.frames.pop_front().expect("front frame");
                if let Some(size) = frame.counted {
                    done.released_messages += 1;
                    done.released_bytes += size;
                }
            }
            self.offset = left;
        }
        Ok(done)
    }

    /// Drop every frame not yet started (a partly written one stays, or the stream would
    /// break), returning what they held in the backlog.
    pub fn drop_unstarted(&mut self) -> (usize, usize) {
        let keep = usize::from(self.offset > 0);
        let mut held = (0, 0);
        for frame in self.frames.drain(keep..) {
            if let Some(size) = frame.counted {
                held.0 += 1;
                held.1 += size;
            }
        }
        held
    }

    /// Drop everything still queued, returning what it held in the backlog.
    pub fn clear(&mut self) -> (usize, usize) {
        let mut held = (0, 0);
        for frame in self.frames.drain(..) {
            if let Some(size) = frame.counted {
                held.0 += 1;
                held.1 += size;
            }
        }
        self.offset = 0;
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Opcode;

    #[test]
    fn the_backlog_bounds_messages_and_bytes() {
        let backlog = Backlog::new(3, 100);
        // One message larger than the byte budget fits into an empty backlog.
        assert!(backlog.try_reserve(500));
        assert!(!backlog.try_reserve(1));
        backlog.release(1, 500);
        assert!(backlog.try_reserve(60));
        assert!(!backlog.try_reserve(60), "bytes");
        assert!(backlog.try_reserve(40));
        assert!(backlog.try_reserve(0));
        assert!(!backlog.try_reserve(0), "three messages at most");
        let backlog = Backlog::new(2, 1000);
        assert!(backlog.try_reserve(1) && backlog.try_reserve(1));
        assert!(!backlog.try_reserve(1), "messages");
        assert!(!backlog.over_budget());
        backlog.add(5000);
        assert!(backlog.over_budget());
        assert!(!backlog.below_half());
    }

    /// A writer that takes at most `budget` bytes per call, then would block.
    fn writer<'a>(
        sink: &'a mut Vec<u8>,
        per_call: usize,
        calls: &'a mut usize,
    ) -> impl FnMut(&[IoSlice<'_>]) -> io::Result<usize> + 'a {
        move |slices| {
            if *calls == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            *calls -= 1;
            let mut n = 0;
            for s in slices {
                let take = (per_call - n).min(s.len());
                sink.extend_from_slice(&s[..take]);
                n += take;
                if n == per_call {
                    break;
                }
            }
            Ok(n)
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped_and_release_whole_frames() {
        let shared = Bytes::from(vec![b'x'; 300]);
        let mut outbox = Outbox::default();
        outbox.push(Header::new(Opcode::Text, 300), shared.clone(), Some(300));
        outbox.push(Header::new(Opcode::Text, 300), shared.clone(), Some(300));
        outbox.push(Header::new(Opcode::Pong, 0), Bytes::new(), None);
        let mut sink = Vec::new();
        let mut calls = 1;
        let first = outbox.flush(writer(&mut sink, 310, &mut calls)).unwrap();
        assert_eq!(first.written, 310);
        assert_eq!((first.released_messages, first.released_bytes), (1, 300));
        assert!(first.blocked);
        let mut calls = 10;
        let rest = outbox.flush(writer(&mut sink, 64, &mut calls)).unwrap();
        assert!(!rest.blocked && outbox.is_empty());
        assert_eq!((rest.released_messages, rest.released_bytes), (1, 300));
        // Two text frames of 300 (4-byte headers) and an empty pong, byte for byte.
        let mut expected = Vec::new();
        for _ in 0..2 {
            expected.extend_from_slice(&[0x81, 126, 1, 44]);
            expected.extend_from_slice(&shared);
        }
        expected.extend_from_slice(&[0x8a, 0]);
        assert_eq!(sink, expected);
    }

    #[test]
    fn a_partly_written_frame_survives_dropping_the_unstarted_ones() {
        let mut outbox = Outbox::default();
        for _ in 0..3 {
            outbox.push(
                Header::new(Opcode::Binary, 3),
                Bytes::from_static(b"abc"),
                Some(3),
            );
        }
        let mut sink = Vec::new();
        let mut calls = 1;
        outbox.flush(writer(&mut sink, 2, &mut calls)).unwrap();
        assert_eq!(outbox.drop_unstarted(), (2, 6));
        let mut calls = 10;
        let rest = outbox.flush(writer(&mut sink, 64, &mut calls)).unwrap();
        assert_eq!((rest.released_messages, rest.released_bytes), (1, 3));
        assert_eq!(sink, [0x82, 3, b'a', b'b', b'c']);
        assert!(outbox.is_empty());
        let mut empty = Outbox::default();
        assert_eq!(empty.drop_unstarted(), (0, 0));
    }

    #[test]
    fn clearing_returns_what_was_counted() {
        let mut outbox = Outbox::default();
        outbox.push(
            Header::new(Opcode::Binary, 3),
            Bytes::from_static(b"abc"),
            Some(3),
        );
        outbox.push(Header::new(Opcode::Ping, 0), Bytes::new(), None);
        assert_eq!(outbox.clear(), (1, 3));
        assert!(outbox.is_empty());
    }
}
