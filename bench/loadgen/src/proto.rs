//! What the coordinator and its worker processes say to each other (JSON lines on the
//! workers' stdin and stdout), and the payload format that carries a send time through any server.

use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The marker that starts a timed payload; the 24 hex digits after it are the send time
/// (16, nanoseconds since the Unix epoch) and the publish sequence number (8; 0 for echo).
pub const MARKER: &str = "#sb";

/// Nanoseconds since the Unix epoch. The wall clock, not `Instant`, because a fan-out
/// publish is stamped by the coordinator and received by other processes on the same machine.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A payload of at least `size` bytes carrying a send time and a sequence number.
pub fn payload(ts_ns: u64, seq: u32, size: usize) -> String {
    let mut text = format!("{MARKER}{ts_ns:016x}{seq:08x}");
    while text.len() < size {
        text.push('x');
    }
    text
}

/// The send time and sequence number found in a received frame, wherever the server put it
/// (echoed as is, inside a JSON-RPC notification, inside a JSON string).
pub fn parse(frame: &[u8]) -> Option<(u64, u32)> {
    let at = frame
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())?;
    let digits = frame.get(at + MARKER.len()..at + MARKER.len() + 24)?;
    let digits = std::str::from_utf8(digits).ok()?;
    let ts = u64::from_str_radix(&digits[..16], 16).ok()?;
    let seq = u32::from_str_radix(&digits[16..], 16).ok()?;
    Some((ts, seq))
}

/// A histogram of latencies in nanoseconds, 1 us to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid histogram bounds")
}

pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut out)
        .expect("serializing to memory");
    base64::engine::general_purpose::STANDARD.encode(out)
}

pub fn decode_histogram(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
    Ok(Deserializer::new().deserialize(&mut &bytes[..])?)
}

/// What one worker process does: its share of the connections.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerPlan {
    /// Index of this worker among all workers (it picks source addresses from it).
    pub index: usize,
    pub url: String,
    pub conns: usize,
    /// Connections opened per second by this worker.
    pub connect_rate: f64,
    /// Source addresses to spread connections over.
    pub sources: Vec<Ipv4Addr>,
    /// A text frame sent right after connecting (a subscribe request), if any.
    pub subscribe: Option<String>,
    /// The Pusher protocol: wait for `pusher:connection_established` before subscribing, the
    /// acknowledgement is `pusher_internal:subscription_succeeded`, answer `pusher:ping`.
    #[serde(default)]
    pub pusher: bool,
    /// Whether a connection counts as ready only after its first frame from the server
    /// (the subscription's acknowledgement).
    pub await_ack: bool,
    /// Handshakes in flight at most (this worker).
    pub max_pending: usize,
    /// Seconds a connection attempt may take.
    pub connect_timeout: f64,
}

/// The longest a worker waits after a phase for what is still on its way.
pub const MAX_DRAIN: std::time::Duration = std::time::Duration::from_secs(60);

/// A phase of a run, sent by the coordinator once every worker is connected.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Reset the counters, run `mode` for `secs`, then wait for answers still in flight
    /// until none has arrived for `grace` seconds (at most [`MAX_DRAIN`]), and report.
    Phase { mode: Mode, secs: f64, grace: f64 },
    /// Close every connection and exit.
    Quit,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mode {
    /// Read only (idle hold, or listening for fan-out deliveries).
    Hold,
    /// Each connection sends timed text frames of `size` bytes: `rate` per second at
    /// random phases (open loop), or the next one as soon as the answer arrives (`rate` 0).
    Echo { rate: f64, size: usize },
}

/// A line a worker prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Report {
    Progress(Counters),
    /// Every connection attempt has ended; `secs` from the first attempt to the last.
    Connected {
        ok: u64,
        failed: u64,
        secs: f64,
        first_error: Option<String>,
    },
    PhaseDone(PhaseResult),
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Counters {
    pub connected: u64,
    pub failed: u64,
    pub sent: u64,
    pub received: u64,
    pub closed: u64,
}

/// What a worker saw during a phase.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PhaseResult {
    pub counters: Counters,
    /// Timed frames received back (echo) or delivered (fan-out), with their latency in `hist`.
    pub timed: u64,
    /// Base64 of the V2-serialized latency histogram (ns).
    pub hist: String,
    /// Per publish sequence number: (sequence, deliveries, latest delivery's latency in ns).
    pub fanout: Vec<(u32, u64, u64)>,
    /// Wall-clock time (ns since epoch) of the first and last timed receipt.
    pub first_ns: u64,
    pub last_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_inside_other_text() {
        let p = payload(0x0123_4567_89ab_cdef, 42, 64);
        assert_eq!(p.len(), 64);
        let wrapped =
            format!(r#"{{"jsonrpc":"2.0","method":"publish","params":{{"data":"{p}"}}}}"#);
        assert_eq!(parse(wrapped.as_bytes()), Some((0x0123_4567_89ab_cdef, 42)));
        assert_eq!(parse(b"no marker here"), None);
        assert_eq!(parse(b"#sb12"), None, "truncated");
    }

    #[test]
    fn histograms_survive_the_pipe() {
        let mut h = histogram();
        for v in [1_000u64, 50_000, 2_000_000, 9_000_000_000] {
            h.record(v).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.max(), h.max());
    }

    #[test]
    fn commands_are_json_lines() {
        let c = Command::Phase {
            mode: Mode::Echo {
                rate: 0.0,
                size: 32,
            },
            secs: 1.0,
            grace: 0.5,
        };
        let line = serde_json::to_string(&c).unwrap();
        assert!(!line.contains('\n'));
        match serde_json::from_str::<Command>(&line).unwrap() {
            Command::Phase { mode, .. } => assert_eq!(
                mode,
                Mode::Echo {
                    rate: 0.0,
                    size: 32
                }
            ),
            Command::Quit => panic!("wrong command"),
        }
    }
}
