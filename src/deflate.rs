//! permessage-deflate (RFC 7692): the offer a client makes and the parameters a route agrees
//! to, messages compressed on the way out and inflated on the way in (pure: no sockets).
//!
//! Deflate contexts are large (zlib-rs: about 270 KiB to compress with a 15-bit window, 40 KiB
//! to inflate), so a connection keeps none of its own unless the agreed parameters need one:
//!
//! - With `server_no_context_takeover` the compressed bytes of a message depend on the message
//!   alone. One compressor per worker thread (and window size) serves every connection, and a
//!   publication delivered to many connections is compressed once per worker: the last few
//!   results are kept, keyed by the shared payload they were made from.
//! - With `client_no_context_takeover` a client's message never refers to an earlier one, so
//!   an inflater is taken from a per-thread spare when a compressed message starts and handed
//!   back when it ends.
//! - Without them, the connection's own compressor is dropped when it has been idle for a
//!   heartbeat interval (a new compressor that forgets the old window is always valid for the
//!   receiver); its inflater must stay, bounded by `client_max_window_bits` when the client
//!   offered that parameter.
//!
//! Inflating is hostile input: the size limit applies to the inflated message and is enforced
//! while inflating, so a small frame that inflates to gigabytes is refused (1009) with at
//! most the limit buffered.

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::frame::{close_code, Close};
use crate::wire::DataKind;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub(crate) const EXTENSION: &str = "permessage-deflate";

/// The largest LZ77 window (2^15 bytes), the default on both sides.
pub(crate) const MAX_WINDOW_BITS: usize = 15;

/// The smallest window zlib's raw deflate can produce: an offer that limits the server to 8
/// bits is declined rather than answered with a window the client cannot hold.
pub(crate) const MIN_WINDOW_BITS: usize = 9;

/// Messages shorter than this are sent uncompressed unless a route says otherwise: deflate's
/// block headers and a fresh window gain little on them.
pub(crate) const DEFAULT_THRESHOLD: usize = 128;

/// The zlib level unless a route says otherwise: the fastest. On JSON in 4 KiB messages
/// zlib-rs's level 1 ran about 3x as fast as level 6 for 9.4% of the size instead of 7.5%
/// (prose: 68% instead of 48%, so text-heavy routes may want 2 or more).
pub(crate) const DEFAULT_LEVEL: usize = 1;

/// The four bytes every sync-flushed deflate block ends with, removed from each message on the
/// wire and put back before inflating (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compressed publications each worker thread keeps for the next recipient of the same one.
const SHARED_RESULTS: usize = 8;

/// Reset inflaters each worker thread keeps for the next compressed message.
const SPARE_INFLATERS: usize = 4;

/// How the server compresses: the same message with the same method gives the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Method {
    /// The LZ77 window, in bits (9..=15).
    bits: u8,
    /// The zlib level (1 fastest ..= 9 smallest).
    level: u8,
}

impl Method {
    fn compressor(self) -> Compress {
        Compress::new_with_window_bits(Compression::new(self.level.into()), false, self.bits)
    }
}

/// What a route allows, from its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Messages shorter than this many bytes are sent uncompressed.
    pub threshold: usize,
    /// The zlib level the server compresses with (1 fastest ..= 9 smallest).
    pub level: u8,
    /// Always ask for `server_no_context_takeover`: compressed publications are shared.
    pub server_no_context_takeover: bool,
    /// Always ask for `client_no_context_takeover`: no inflater is kept between messages.
    pub client_no_context_takeover: bool,
    /// The largest window the server compresses with (9..=15).
    pub server_max_window_bits: u8,
    /// The largest window clients are asked to compress with (9..=15), when they offer
    /// `client_max_window_bits`.
    pub client_max_window_bits: u8,
}

/// The parameters agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// Messages shorter than this many bytes are sent uncompressed.
    pub threshold: usize,
    /// The zlib level the server compresses with.
    pub level: u8,
    /// The server starts every message with an empty window.
    pub server_no_context_takeover: bool,
    /// The client starts every message with an empty window.
    pub client_no_context_takeover: bool,
    /// The window the server compresses with.
    pub server_max_window_bits: u8,
    /// The largest window the client compresses with (15 when it did not offer the
    /// parameter).
    pub client_max_window_bits: u8,
    /// The response names `server_max_window_bits`.
    server_bits_named: bool,
    /// The response names `client_max_window_bits` (only when the client offered it).
    client_bits_named: bool,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the 101 answer.
    pub(crate) fn response(&self) -> String {
        let mut value = String::from(EXTENSION);
        if self.server_no_context_takeover {
            value.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            value.push_str("; client_no_context_takeover");
        }
        if self.server_bits_named {
            value.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        if self.client_bits_named {
            value.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        value
    }
}

/// A window-bits value as RFC 7692 §7.1.2 writes it: 8..=15, digits only, optionally quoted.
fn window_bits(value: &str) -> Option<u8> {
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if value.is_empty() || value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// Accept one `permessage-deflate` offer (its parameters, already split), or decline it: an
/// unknown or repeated parameter, or a bad value, declines it (RFC 7692 §7.1), and so does
/// a window smaller than zlib can make.
fn accept(params: &[(&str, Option<&str>)], settings: &Settings) -> Option<Agreed> {
    let mut seen: Vec<&str> = Vec::new();
    let mut server_nct = false;
    let mut client_nct = false;
    let mut server_bits: Option<u8> = None;
    let mut client_bits: Option<Option<u8>> = None;
    for &(name, value) in params {
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover", None) => server_nct = true,
            ("client_no_context_takeover", None) => client_nct = true,
            ("server_max_window_bits", Some(v)) => server_bits = Some(window_bits(v)?),
            ("client_max_window_bits", None) => client_bits = Some(None),
            ("client_max_window_bits", Some(v)) => client_bits = Some(Some(window_bits(v)?)),
            _ => return None,
        }
    }
    let server_max_window_bits = server_bits.map_or(settings.server_max_window_bits, |asked| {
        asked.min(settings.server_max_window_bits)
    });
    if usize::from(server_max_window_bits) < MIN_WINDOW_BITS {
        return None;
    }
    let client_max_window_bits = match client_bits {
        // The client may be told to use a smaller window than it offered, never a larger one.
        Some(offered) => offered
            .unwrap_or(MAX_WINDOW_BITS as u8)
            .min(settings.client_max_window_bits),
        None => MAX_WINDOW_BITS as u8,
    };
    Some(Agreed {
        threshold: settings.threshold,
        level: settings.level,
        // The server may add either parameter to its answer on its own (RFC 7692 §7.1.1);
        // a client's `client_no_context_takeover` is only a hint, but taking it binds it.
        server_no_context_takeover: server_nct || settings.server_no_context_takeover,
        client_no_context_takeover: client_nct || settings.client_no_context_takeover,
        server_max_window_bits,
        client_max_window_bits,
        server_bits_named: server_bits.is_some()
            || usize::from(server_max_window_bits) < MAX_WINDOW_BITS,
        client_bits_named: client_bits.is_some(),
    })
}

/// The first `permessage-deflate` offer among the `Sec-WebSocket-Extensions` header values
/// that this route can accept (offers come in order of the client's preference).
pub(crate) fn negotiate<'a>(
    headers: impl IntoIterator<Item = &'a str>,
    settings: &Settings,
) -> Option<Agreed> {
    headers
        .into_iter()
        .flat_map(|header| header.split(','))
        .find_map(|offer| {
            let mut parts = offer.split(';').map(str::trim);
            if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
                return None;
            }
            let params: Vec<(&str, Option<&str>)> = parts
                .map(|part| match part.split_once('=') {
                    Some((name, value)) => (name.trim(), Some(value.trim())),
                    None => (part, None),
                })
                .collect();
            accept(&params, settings)
        })
}

/// Compress one whole message (sync flush, the tail removed). None if zlib fails, in which
/// case the message goes out uncompressed.
fn compress(compressor: &mut Compress, input: &[u8]) -> Option<Bytes> {
    let start = compressor.total_in();
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let consumed = (compressor.total_in() - start) as usize;
        compressor
            .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        // zlib has flushed everything once all input is taken and room is left over.
        if (compressor.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    if !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len() - TAIL.len());
    Some(Bytes::from(out))
}

/// A compressed publication kept for the next recipient on this thread.
struct SharedResult {
    /// The payload it was made from (kept, so that its address cannot be reused while the
    /// entry exists).
    original: Bytes,
    /// How it was compressed.
    method: Method,
    /// The compressed payload.
    compressed: Bytes,
}

/// What one worker thread shares between its connections.
#[derive(Default)]
struct ThreadContexts {
    /// One compressor per method, reset after every message.
    compressors: Vec<(Method, Compress)>,
    /// The last publications compressed here, newest last.
    results: VecDeque<SharedResult>,
    /// Reset 15-bit inflaters ready for the next compressed message.
    inflaters: Vec<Decompress>,
}

thread_local! {
    /// This worker thread's shared deflate contexts.
    static THREAD: RefCell<ThreadContexts> = RefCell::default();
}

/// Compress a message without context takeover, with this thread's compressor.
fn compress_alone(input: &[u8], method: Method) -> Option<Bytes> {
    THREAD.with(|thread| {
        let mut thread = thread.borrow_mut();
        let index = match thread.compressors.iter().position(|(m, _)| *m == method) {
            Some(index) => index,
            None => {
                thread.compressors.push((method, method.compressor()));
                thread.compressors.len() - 1
            }
        };
        let compressor = &mut thread.compressors[index].1;
        let result = compress(compressor, input);
        compressor.reset();
        result
    })
}

/// Compress a payload shared by many recipients once per thread: the same payload (the same
/// bytes, not only equal ones) with the same method gives the kept result.
fn compress_shared(payload: &Bytes, method: Method) -> Option<Bytes> {
    let same = |entry: &SharedResult| {
        entry.method == method
            && entry.original.as_ptr() == payload.as_ptr()
            && entry.original.len() == payload.len()
    };
    let kept = THREAD.with(|thread| {
        let thread = thread.borrow();
        thread
            .results
            .iter()
            .find(|entry| same(entry))
            .map(|entry| entry.compressed.clone())
    });
    if kept.is_some() {
        return kept;
    }
    let compressed = compress_alone(payload, method)?;
    THREAD.with(|thread| {
        let mut thread = thread.borrow_mut();
        if thread.results.len() == SHARED_RESULTS {
            thread.results.pop_front();
        }
        thread.results.push_back(SharedResult {
            original: payload.clone(),
            method,
            compressed: compressed.clone(),
        });
    });
    Some(compressed)
}

/// An inflater for one message: a spare one of this thread, or a new one.
fn take_spare_inflater() -> Decompress {
    THREAD
        .with(|thread| thread.borrow_mut().inflaters.pop())
        .unwrap_or_else(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS as u8))
}

/// Hand an inflater back once its message is done (dropped when the thread has enough).
fn give_back_inflater(mut inflater: Decompress) {
    inflater.reset(false);
    THREAD.with(|thread| {
        let mut thread = thread.borrow_mut();
        if thread.inflaters.len() < SPARE_INFLATERS {
            thread.inflaters.push(inflater);
        }
    });
}

/// Why an inflated message was refused.
#[derive(Debug, PartialEq, Eq)]
enum InflateError {
    /// It inflates to more than the limit.
    TooBig,
    /// The compressed data is not valid deflate data.
    Corrupt,
}

/// Inflate `input` into `out` while `out` stays within `limit` bytes, growing `out` only as
/// far as the output needs (and never beyond the limit plus one byte).
fn inflate(
    inflater: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), InflateError> {
    let mut consumed = 0;
    loop {
        if out.len() == out.capacity() {
            let room = (limit + 1).saturating_sub(out.len());
            if room == 0 {
                return Err(InflateError::TooBig);
            }
            // Doubling, from a guess at the ratio for the first reservation.
            let guess = (4 * input.len()).clamp(1024, 64 * 1024);
            out.reserve_exact(out.len().max(guess).min(room));
        }
        let (before_in, before_out) = (inflater.total_in(), out.len());
        let status = inflater
            .decompress_vec(&input[consumed..], out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        consumed += (inflater.total_in() - before_in) as usize;
        if out.len() > limit {
            return Err(InflateError::TooBig);
        }
        if status == Status::StreamEnd {
            // A final block (BFINAL): whatever follows starts a new stream.
            inflater.reset(false);
        }
        let room_left = out.len() < out.capacity();
        if consumed == input.len() && room_left {
            return Ok(());
        }
        if room_left && inflater.total_in() == before_in && out.len() == before_out {
            return Err(InflateError::Corrupt);
        }
    }
}

/// Where the inflater of a connection lives.
enum Inflater {
    /// None now: one is taken from the thread's spares for each compressed message.
    PerMessage(Option<Decompress>),
    /// The connection's own, kept across messages (context takeover), made on first use.
    Kept(Option<Box<Decompress>>),
}

/// One connection's side of the extension.
pub(crate) struct Deflate {
    /// What was agreed in the handshake.
    agreed: Agreed,
    /// The connection's own compressor (context takeover only), dropped when idle.
    compressor: Option<Box<Compress>>,
    /// The compressor was used since the last idle check.
    compressed_lately: bool,
    /// The inflater, per message or kept.
    inflater: Inflater,
    /// Bytes inflated so far of the compressed message being received; None when the message
    /// being received (if any) is not compressed.
    inflating: Option<usize>,
    /// The largest message, inflated.
    max_message_size: usize,
}

impl Deflate {
    /// The extension on a connection with these agreed parameters.
    pub(crate) fn new(agreed: Agreed, max_message_size: usize) -> Self {
        Self {
            agreed,
            compressor: None,
            compressed_lately: false,
            inflater: if agreed.client_no_context_takeover {
                Inflater::PerMessage(None)
            } else {
                Inflater::Kept(None)
            },
            inflating: None,
            max_message_size,
        }
    }

    /// The payload to send for a message, compressed (`Some`) or not (`None`: too small, or
    /// zlib failed). `shared` marks a payload that other connections receive too.
    pub(crate) fn outgoing(&mut self, payload: &Bytes, shared: bool) -> Option<Bytes> {
        if payload.len() < self.agreed.threshold {
            return None;
        }
        let method = Method {
            bits: self.agreed.server_max_window_bits,
            level: self.agreed.level,
        };
        if self.agreed.server_no_context_takeover {
            let compressed = if shared {
                compress_shared(payload, method)
            } else {
                compress_alone(payload, method)
            };
            // Data that does not shrink goes out as it is, unless the route compresses every
            // message (threshold 0). With context takeover it cannot: the compressor's window
            // already holds it, so the client's must too.
            let always = self.agreed.threshold == 0;
            return compressed.filter(|c| always || c.len() < payload.len());
        }
        self.compressed_lately = true;
        let compressor = self
            .compressor
            .get_or_insert_with(|| Box::new(method.compressor()));
        let compressed = compress(compressor, payload);
        if compressed.is_none() {
            // Its state is unknown now; the next message starts a fresh one.
            self.compressor = None;
        }
        compressed
    }

    /// Called every heartbeat interval: drop the connection's compressor if it was not used
    /// since the last call.
    pub(crate) fn idle_check(&mut self) {
        if !std::mem::take(&mut self.compressed_lately) {
            self.compressor = None;
        }
    }

    /// Take one data frame's payload: inflated if its message is compressed (`compressed` is
    /// the first frame's RSV1), as it is otherwise. The limit applies to the inflated message.
    pub(crate) fn incoming(
        &mut self,
        kind: DataKind,
        fin: bool,
        compressed: bool,
        payload: Bytes,
    ) -> Result<Bytes, Close> {
        if kind != DataKind::Continuation {
            // A new message while one is in progress is refused by the reassembly; its
            // inflater must not carry into the next one either way.
            self.end_message();
            self.inflating = compressed.then_some(0);
        }
        let Some(so_far) = self.inflating else {
            return Ok(payload);
        };
        let limit = self.max_message_size - so_far;
        let mut out = Vec::new();
        let result = {
            let inflater: &mut Decompress = match &mut self.inflater {
                Inflater::PerMessage(slot) => slot.get_or_insert_with(take_spare_inflater),
                // A wider window than the client's always decodes it (flate2 needs 9 bits).
                Inflater::Kept(slot) => slot.get_or_insert_with(|| {
                    Box::new(Decompress::new_with_window_bits(
                        false,
                        self.agreed
                            .client_max_window_bits
                            .max(MIN_WINDOW_BITS as u8),
                    ))
                }),
            };
            inflate(inflater, &payload, &mut out, limit).and_then(|()| {
                if fin {
                    inflate(inflater, &TAIL, &mut out, limit)
                } else {
                    Ok(())
                }
            })
        };
        if fin || result.is_err() {
            self.end_message();
        } else {
            self.inflating = Some(so_far + out.len());
        }
        match result {
            Ok(()) => Ok(Bytes::from(out)),
            Err(InflateError::TooBig) => {
                Err(Close::new(close_code::MESSAGE_TOO_BIG, "message too big"))
            }
            Err(InflateError::Corrupt) => Err(Close::new(
                close_code::INVALID_PAYLOAD,
                "invalid permessage-deflate data",
            )),
        }
    }

    /// The compressed message ended (or failed): its per-message inflater goes back.
    fn end_message(&mut self) {
        self.inflating = None;
        if let Inflater::PerMessage(slot) = &mut self.inflater {
            if let Some(inflater) = slot.take() {
                give_back_inflater(inflater);
            }
        }
    }

    /// Forget the message being received (the connection is closing).
    pub(crate) fn clear(&mut self) {
        self.end_message();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: Settings = Settings {
        threshold: 16,
        level: 6,
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };

    fn agreed(offer: &str, settings: &Settings) -> Option<String> {
        negotiate([offer], settings).map(|a| a.response())
    }

    #[test]
    fn offers_are_accepted_declined_or_narrowed() {
        assert_eq!(
            agreed("permessage-deflate", &ROUTE).as_deref(),
            Some("permessage-deflate")
        );
        // Chromium's offer.
        assert_eq!(
            agreed("permessage-deflate; client_max_window_bits", &ROUTE).as_deref(),
            Some("permessage-deflate; client_max_window_bits=15")
        );
        assert_eq!(
            agreed(
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
                &ROUTE
            )
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=10")
        );
        // Declined: unknown, repeated or malformed parameters, or a window zlib cannot make.
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; server_max_window_bits=8",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(agreed(bad, &ROUTE), None, "{bad}");
        }
        // The first acceptable offer wins: the 8-bit one is declined, the next one taken.
        assert_eq!(
            agreed(
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits=\"12\"",
                &ROUTE
            )
            .as_deref(),
            Some("permessage-deflate; client_max_window_bits=12")
        );
    }

    #[test]
    fn the_route_adds_its_own_limits() {
        let route = Settings {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 11,
            client_max_window_bits: 10,
            ..ROUTE
        };
        assert_eq!(
            agreed("permessage-deflate; client_max_window_bits", &route).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=11; client_max_window_bits=10")
        );
        // Without client_max_window_bits in the offer the client may use 15 bits.
        let a = negotiate(["permessage-deflate; server_max_window_bits=13"], &route).unwrap();
        assert_eq!(a.client_max_window_bits, 15);
        assert_eq!(a.server_max_window_bits, 11);
    }

    /// Inflate a whole message as a client would (a 15-bit window, the tail put back).
    fn client_inflate(inflater: &mut Decompress, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        inflate(inflater, payload, &mut out, usize::MAX - 1).unwrap();
        inflate(inflater, &TAIL, &mut out, usize::MAX - 1).unwrap();
        out
    }

    /// Compress a whole message as a client would (fresh context each time).
    fn client_compress(input: &[u8]) -> Bytes {
        compress(
            &mut Compress::new_with_window_bits(Compression::default(), false, 15),
            input,
        )
        .unwrap()
    }

    /// `n` bytes of words in a pseudo-random order: compressible, but not to nothing.
    fn sample(n: usize) -> Bytes {
        const WORDS: [&str; 8] = [
            "hub ", "channel ", "frame ", "socket ", "publish ", "zlib ", "window ", "deflate ",
        ];
        let mut state = 0x2545_f491_u32;
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            out.extend_from_slice(WORDS[(state >> 16) as usize % WORDS.len()].as_bytes());
        }
        out.truncate(n);
        Bytes::from(out)
    }

    #[test]
    fn small_messages_go_out_plain_and_the_rest_round_trips() {
        let agreed = negotiate(["permessage-deflate"], &ROUTE).unwrap();
        let mut deflate = Deflate::new(agreed, 1 << 20);
        assert_eq!(deflate.outgoing(&Bytes::from_static(b"short"), false), None);
        // Without context takeover, data that would grow goes out plain.
        let alone = Settings {
            server_no_context_takeover: true,
            ..ROUTE
        };
        let mut alone = Deflate::new(negotiate(["permessage-deflate"], &alone).unwrap(), 1 << 20);
        let mut state = 0x9e37_79b9_u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        let noise = Bytes::from(noise);
        assert_eq!(alone.outgoing(&noise, false), None);
        // Unless the route compresses everything (threshold 0).
        let every = Settings {
            threshold: 0,
            server_no_context_takeover: true,
            ..ROUTE
        };
        let mut every = Deflate::new(negotiate(["permessage-deflate"], &every).unwrap(), 1 << 20);
        assert!(every.outgoing(&noise, false).is_some());
        let mut client = Decompress::new(false);
        let message = sample(10_000);
        for _ in 0..3 {
            let wire = deflate.outgoing(&message, false).unwrap();
            assert!(wire.len() < message.len() / 2, "{} bytes", wire.len());
            assert_eq!(client_inflate(&mut client, &wire), message);
        }
    }

    #[test]
    fn with_context_takeover_a_repeated_message_costs_almost_nothing() {
        let agreed = negotiate(["permessage-deflate"], &ROUTE).unwrap();
        let mut deflate = Deflate::new(agreed, 1 << 20);
        let message = sample(4_000);
        let first = deflate.outgoing(&message, false).unwrap();
        let second = deflate.outgoing(&message, false).unwrap();
        assert!(
            second.len() * 10 < first.len(),
            "{} vs {}",
            second.len(),
            first.len()
        );
        // Idle for an interval: the compressor goes, and a new one starts from nothing.
        deflate.idle_check();
        deflate.idle_check();
        assert!(deflate.compressor.is_none());
        let third = deflate.outgoing(&message, false).unwrap();
        assert_eq!(third, first);
    }

    #[test]
    fn without_server_context_a_shared_payload_is_compressed_once_per_thread() {
        let route = Settings {
            server_no_context_takeover: true,
            ..ROUTE
        };
        let agreed = negotiate(["permessage-deflate"], &route).unwrap();
        let (mut a, mut b) = (Deflate::new(agreed, 1 << 20), Deflate::new(agreed, 1 << 20));
        let publication = sample(5_000);
        let to_a = a.outgoing(&publication, true).unwrap();
        let to_b = b.outgoing(&publication.clone(), true).unwrap();
        // The very same bytes, not only equal ones.
        assert_eq!(to_a.as_ptr(), to_b.as_ptr());
        // Equal bytes at another address are compressed again, to the same result.
        let copy = Bytes::copy_from_slice(&publication);
        let again = b.outgoing(&copy, true).unwrap();
        assert_ne!(again.as_ptr(), to_a.as_ptr());
        assert_eq!(again, to_a);
        let mut client = Decompress::new(false);
        assert_eq!(client_inflate(&mut client, &to_a), publication);
        // A 9-bit window, as a client that asked for it gets.
        let narrow = negotiate(["permessage-deflate; server_max_window_bits=9"], &route).unwrap();
        let wire = Deflate::new(narrow, 1 << 20)
            .outgoing(&publication, true)
            .unwrap();
        let mut small = Decompress::new_with_window_bits(false, 9);
        assert_eq!(client_inflate(&mut small, &wire), publication);
    }

    #[test]
    fn fragments_and_context_takeover_are_inflated() {
        let agreed = negotiate(["permessage-deflate"], &ROUTE).unwrap();
        let mut deflate = Deflate::new(agreed, 1 << 20);
        let message = sample(3_000);
        // A client with context takeover: one compressor for two messages.
        let mut client = Compress::new_with_window_bits(Compression::default(), false, 15);
        let first = compress(&mut client, &message).unwrap();
        let second = compress(&mut client, &message).unwrap();
        let (head, tail) = first.split_at(first.len() / 2);
        let a = deflate
            .incoming(DataKind::Binary, false, true, Bytes::copy_from_slice(head))
            .unwrap();
        let b = deflate
            .incoming(
                DataKind::Continuation,
                true,
                false,
                Bytes::copy_from_slice(tail),
            )
            .unwrap();
        assert_eq!([a, b].concat(), message);
        assert_eq!(
            deflate
                .incoming(DataKind::Text, true, true, second)
                .unwrap(),
            message
        );
        // An uncompressed message passes as it is.
        let plain = Bytes::from_static(b"plain");
        assert_eq!(
            deflate
                .incoming(DataKind::Text, true, false, plain.clone())
                .unwrap(),
            plain
        );
    }

    #[test]
    fn a_decompression_bomb_is_refused_within_the_limit() {
        let route = Settings {
            client_no_context_takeover: true,
            ..ROUTE
        };
        let agreed = negotiate(["permessage-deflate"], &route).unwrap();
        let limit = 64 * 1024;
        let mut deflate = Deflate::new(agreed, limit);
        // 8 MiB of zeros compress to about 8 KiB.
        let bomb = client_compress(&vec![0u8; 8 << 20]);
        assert!(bomb.len() < 16 * 1024);
        let err = deflate
            .incoming(DataKind::Binary, true, true, bomb.clone())
            .unwrap_err();
        assert_eq!(err.code, close_code::MESSAGE_TOO_BIG);
        // What inflating held stayed within the limit: check the inflate step itself.
        let mut inflater = take_spare_inflater();
        let mut out = Vec::new();
        assert_eq!(
            inflate(&mut inflater, &bomb, &mut out, limit),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() <= limit + 1, "{}", out.capacity());
        // Exactly the limit passes; spread over fragments too.
        let exact = client_compress(&vec![7u8; limit]);
        let (head, tail) = exact.split_at(10);
        deflate
            .incoming(DataKind::Binary, false, true, Bytes::copy_from_slice(head))
            .unwrap();
        let rest = deflate
            .incoming(
                DataKind::Continuation,
                true,
                false,
                Bytes::copy_from_slice(tail),
            )
            .unwrap();
        assert!(rest.len() <= limit);
        // Corrupt data is refused as invalid.
        let err = deflate
            .incoming(DataKind::Text, true, true, Bytes::from_static(&[0xff; 8]))
            .unwrap_err();
        assert_eq!(err.code, close_code::INVALID_PAYLOAD);
    }
}
