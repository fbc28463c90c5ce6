//! How fast one client may send: a token bucket for messages and one for bytes, each refilled
//! at its rate per second and holding at most one second's worth (the burst).

use std::time::Instant;

/// A client's message and byte allowance.
#[derive(Debug)]
pub struct RateLimit {
    messages_per_second: f64,
    bytes_per_second: f64,
    messages: f64,
    bytes: f64,
    refilled: Instant,
}

impl RateLimit {
    /// An allowance of `messages` messages and `bytes` bytes per second, starting full.
    pub fn new(messages: u32, bytes: u64) -> Self {
        Self::starting_at(messages, bytes, Instant::now())
    }

    fn starting_at(messages: u32, bytes: u64, now: Instant) -> Self {
        Self {
            messages_per_second: f64::from(messages),
            bytes_per_second: bytes as f64,
            messages: f64::from(messages),
            bytes: bytes as f64,
            refilled: now,
        }
    }

    /// Take `messages` messages of `bytes` bytes in all; false when over the limit.
    pub fn allow(&mut self, messages: u32, bytes: usize) -> bool {
        self.allow_at(messages, bytes, Instant::now())
    }

    fn allow_at(&mut self, messages: u32, bytes: usize, now: Instant) -> bool {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.messages =
            (self.messages + elapsed * self.messages_per_second).min(self.messages_per_second);
        self.bytes = (self.bytes + elapsed * self.bytes_per_second).min(self.bytes_per_second);
        let (messages, bytes) = (f64::from(messages), bytes as f64);
        if messages > self.messages || bytes > self.bytes {
            return false;
        }
        self.messages -= messages;
        self.bytes -= bytes;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let start = Instant::now();
        let mut limit = RateLimit::starting_at(10, 1000, start);
        for _ in 0..10 {
            assert!(limit.allow_at(1, 10, start));
        }
        assert!(
            !limit.allow_at(1, 10, start),
            "the eleventh message in the same instant"
        );
        // 100 ms later one message's worth is back.
        let later = start + Duration::from_millis(100);
        assert!(limit.allow_at(1, 10, later));
        assert!(!limit.allow_at(1, 10, later));
        // Bytes are limited on their own.
        let much_later = start + Duration::from_secs(5);
        assert!(!limit.allow_at(1, 1001, much_later));
        assert!(limit.allow_at(1, 1000, much_later));
    }
}
