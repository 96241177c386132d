//! permessage-deflate (RFC 7692): compressed WebSocket messages, negotiated per connection.
//!
//! Herald shares one frame of each publication among all its subscribers, so compression must
//! not depend on the connection. It therefore always answers an offer with both
//! `server_no_context_takeover` and `client_no_context_takeover` (RFC 7692 §7.1.1): each message
//! is compressed, and each of the client's is inflated, on its own, with no sliding window kept
//! between messages. A publication is then compressed once, its compressed frame cached beside
//! the plain one (`WireFormat::NativeWebSocketDeflate`) and shared by every subscriber that
//! negotiated the extension, and an idle connection holds no zlib state at all: a compressor or
//! decompressor lives only while one message is being made or read.
//!
//! What is refused, so that the server never has to keep per-connection state or a smaller
//! window: an offer whose `server_max_window_bits` is below 15 (the shared frames use a 15-bit
//! window) is declined, and the connection goes on uncompressed, as the RFC allows. A client's
//! compressed message is inflated into at most `limits.max_frame_bytes`; one that would inflate
//! further is refused as too large (close 4009) as soon as the output passes the limit, so a
//! small message that inflates enormously costs no more than the limit.

use std::num::NonZeroU8;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The response's extension, for every offer Herald accepts.
pub const ACCEPTED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// What ends every compressed message before it is stripped (RFC 7692 §7.2.1): the empty stored
/// block of a sync flush.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The compression of one node's WebSocket connections, from `[compression]`. Eight bytes, even
/// as an `Option` (the level is never zero), since every socket keeps one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// Messages shorter than this many bytes are sent uncompressed.
    pub threshold: u32,
    /// zlib's level, 1 (fastest) to 9 (smallest).
    pub level: NonZeroU8,
}

/// Whether the client's `Sec-WebSocket-Extensions` header values offer a permessage-deflate that
/// Herald can accept: the first such offer with only known parameters, each at most once, and a
/// `server_max_window_bits` (if any) of 15.
pub fn accepts<'a>(offers: impl IntoIterator<Item = &'a str>) -> bool {
    offers
        .into_iter()
        .flat_map(|value| value.split(','))
        .any(|offer| acceptable(offer.trim()))
}

fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    let mut seen: Vec<String> = Vec::new();
    for parameter in parts {
        let (name, value) = match parameter.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (parameter, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return false;
        }
        let known = match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            // The client may use any window up to 15 bits; Herald inflates with 15.
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(bits)) => window_bits(bits).is_some(),
            // Herald's shared frames are made with a 15-bit window.
            ("server_max_window_bits", Some(bits)) => window_bits(bits) == Some(15),
            _ => false,
        };
        if !known {
            return false;
        }
        seen.push(name);
    }
    true
}

/// A window size parameter's value: 8 to 15, written without leading zeros.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// `message` compressed as one permessage-deflate message: raw DEFLATE, sync-flushed, with the
/// four-byte tail taken off.
pub fn compress(message: &[u8], level: NonZeroU8) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::new(u32::from(level.get())), false);
    let mut out = Vec::with_capacity(message.len() / 2 + 64);
    loop {
        let consumed = compressor.total_in() as usize;
        // Compressing into a Vec only reports an error for a corrupt stream, which a fresh
        // compressor fed plain bytes cannot have.
        let _ = compressor.compress_vec(&message[consumed..], &mut out, FlushCompress::Sync);
        if compressor.total_in() as usize == message.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out
}

/// Why a client's compressed message could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the limit.
    TooLarge,
    /// It is not valid DEFLATE data.
    Corrupt,
}

/// A client's compressed message inflated, into at most `max` bytes. The output grows as it is
/// produced and inflating stops as soon as it passes `max`.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let input = [compressed, &TAIL[..]].concat();
    let mut decompressor = Decompress::new(false);
    let mut out = Vec::with_capacity((compressed.len() * 4).max(64).min(max.saturating_add(1)));
    loop {
        if out.len() == out.capacity() {
            // Room for one byte past the limit at most, so that passing it is seen.
            let more = out
                .capacity()
                .min(max.saturating_add(1) - out.len())
                .max(64);
            out.reserve_exact(more);
        }
        let (read, written) = (decompressor.total_in(), out.len());
        let status = decompressor
            .decompress_vec(&input[read as usize..], &mut out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        if out.len() > max {
            return Err(InflateError::TooLarge);
        }
        let all_read = decompressor.total_in() as usize == input.len();
        let room_left = out.len() < out.capacity();
        match status {
            Status::StreamEnd => return Ok(out),
            _ if all_read && room_left => return Ok(out),
            // Neither read nor wrote with room to write: the data cannot go on.
            _ if room_left && decompressor.total_in() == read && out.len() == written => {
                return Err(InflateError::Corrupt)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(level: u8) -> NonZeroU8 {
        NonZeroU8::new(level).unwrap()
    }

    #[test]
    fn accepts_the_offers_browsers_and_libraries_send() {
        assert!(accepts(["permessage-deflate; client_max_window_bits"]));
        assert!(accepts(["permessage-deflate"]));
        assert!(accepts([
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ]));
        assert!(accepts(["permessage-deflate; server_max_window_bits=15"]));
        assert!(accepts(["x-webkit-deflate-frame", "permessage-deflate"]));
        // The second offer of a list, when the first asks for a smaller server window.
        assert!(accepts([
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ]));
    }

    #[test]
    fn declines_what_it_cannot_honour() {
        assert!(!accepts(Vec::<&str>::new()));
        assert!(!accepts(["permessage-deflate; server_max_window_bits=10"]));
        assert!(!accepts(["permessage-deflate; client_max_window_bits=16"]));
        assert!(!accepts(["permessage-deflate; client_max_window_bits=09"]));
        assert!(!accepts(["permessage-deflate; unknown_parameter"]));
        assert!(!accepts([
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        ]));
        assert!(!accepts([
            "permessage-deflate; server_no_context_takeover=1"
        ]));
        assert!(!accepts(["deflate-frame"]));
    }

    #[test]
    fn a_message_comes_back_as_it_was_and_smaller() {
        let message =
            r#"{"type":"message","channel":"site:1","data":{"temperature":21.5}}"#.repeat(20);
        let compressed = compress(message.as_bytes(), at(6));
        assert!(compressed.len() < message.len() / 4, "{}", compressed.len());
        assert!(!compressed.ends_with(&TAIL));
        let inflated = inflate(&compressed, 1 << 20).unwrap();
        assert_eq!(inflated, message.as_bytes());
        for level in 1..=9 {
            let compressed = compress(message.as_bytes(), at(level));
            assert_eq!(inflate(&compressed, 1 << 20).unwrap(), message.as_bytes());
        }
        assert_eq!(inflate(&compress(b"", at(6)), 16).unwrap(), b"");
        // Incompressible bytes take stored blocks and still round-trip.
        let noise: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(inflate(&compress(&noise, at(6)), 200_000).unwrap(), noise);
    }

    #[test]
    fn a_message_that_inflates_past_the_limit_is_refused_without_inflating_it_all() {
        let bomb = compress(&vec![b'a'; 10 << 20], at(9));
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 65_536), Err(InflateError::TooLarge));
        let exact = compress(&vec![b'a'; 65_536], at(9));
        assert_eq!(inflate(&exact, 65_536).unwrap().len(), 65_536);
        assert_eq!(inflate(&exact, 65_535), Err(InflateError::TooLarge));
    }

    #[test]
    fn corrupt_data_is_refused() {
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff, 0xff, 0x00], 1024),
            Err(InflateError::Corrupt)
        );
    }
}
