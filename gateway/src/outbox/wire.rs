//! WebSocket server frames as they go on the wire, written straight from the queue's items.
//!
//! A server frame is unmasked: a 2- to 10-byte header, then the payload as it is. So the payload
//! bytes the fan-out encoded once are written to every member's socket as they are, each behind
//! a header built on the stack, in one vectored `write(2)` per call; nothing is copied into a
//! per-connection buffer.

use std::io::{self, IoSlice};

use super::outbound::Outbound;

/// Replies larger than this go out in fragments of this size (a continuation frame each), so a
/// large reply, such as the listing of a user in thousands of conversations, is written in
/// pieces a slow socket can take.
pub(crate) const FRAGMENT: usize = 64 * 1024;

/// The most frames one write gathers.
const GATHER: usize = 64;

const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const FIN: u8 = 0x80;

/// A frame header: its bytes and their length.
#[derive(Clone, Copy, Default)]
struct Header([u8; 10], u8);

impl Header {
    fn new(opcode: u8, fin: bool, len: usize) -> Self {
        let mut h = [0u8; 10];
        h[0] = opcode | if fin { FIN } else { 0 };
        let n = if len < 126 {
            h[1] = len as u8;
            2
        } else if len <= u16::MAX as usize {
            h[1] = 126;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            h[1] = 127;
            h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Self(h, n)
    }

    fn bytes(&self) -> &[u8] {
        &self.0[..self.1 as usize]
    }
}

/// Calls `f` with each wire piece of `item` (header, payload) in order; stops when `f` says so.
fn pieces<'a>(item: &'a Outbound, mut f: impl FnMut(Option<Header>, &'a [u8]) -> bool) -> bool {
    let text = |f: &mut dyn FnMut(Option<Header>, &'a [u8]) -> bool, p: &'a [u8]| {
        f(Some(Header::new(TEXT, true, p.len())), p)
    };
    match item {
        Outbound::Frame(p) => text(&mut f, p.as_bytes()),
        Outbound::Batch(frames) => frames.iter().all(|p| text(&mut f, p.as_bytes())),
        Outbound::Reply(p) if p.len() <= FRAGMENT => text(&mut f, p.as_bytes()),
        Outbound::Reply(p) => {
            let p = p.as_bytes();
            (0..p.len()).step_by(FRAGMENT).all(|start| {
                let end = (start + FRAGMENT).min(p.len());
                let opcode = if start == 0 { TEXT } else { CONTINUATION };
                f(
                    Some(Header::new(opcode, end == p.len(), end - start)),
                    &p[start..end],
                )
            })
        }
        Outbound::Raw(b) => f(None, b),
    }
}

/// The bytes `item` takes on the wire.
pub(crate) fn wire_len(item: &Outbound) -> usize {
    let mut n = 0;
    pieces(item, |h, p| {
        n += h.map_or(0, |h| h.1 as usize) + p.len();
        true
    });
    n
}

/// Writes `item` from its start in one vectored call. A single frame, the fan-out's common case,
/// is its header and payload, without the gathering below.
pub(crate) fn write_item(
    item: &Outbound,
    write: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
) -> io::Result<usize> {
    match item {
        Outbound::Frame(p) => {
            let header = Header::new(TEXT, true, p.len());
            write(&[IoSlice::new(header.bytes()), IoSlice::new(p.as_bytes())])
        }
        other => write_gathered([other], 0, write),
    }
}

/// Writes as much of `items` as `write` takes in one vectored call, skipping the first `skip`
/// bytes (what an earlier call wrote of the first item). Returns the bytes written.
pub(crate) fn write_gathered<'a>(
    items: impl IntoIterator<Item = &'a Outbound>,
    skip: usize,
    write: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut headers = [Header::default(); GATHER];
    let mut parts: [(usize, &[u8]); 2 * GATHER] = [(usize::MAX, &[]); 2 * GATHER];
    let (mut frames, mut n, mut skip) = (0, 0, skip);
    'items: for item in items {
        let more = pieces(item, |h, payload| {
            if frames == GATHER {
                return false;
            }
            if let Some(h) = h {
                headers[frames] = h;
                parts[n] = (frames, &[]);
                n += 1;
            }
            parts[n] = (usize::MAX, payload);
            n += 1;
            frames += 1;
            true
        });
        if !more {
            break 'items;
        }
    }
    let mut slices: [IoSlice<'_>; 2 * GATHER] = [IoSlice::new(&[]); 2 * GATHER];
    let mut k = 0;
    for &(header, payload) in &parts[..n] {
        let bytes = if header == usize::MAX {
            payload
        } else {
            headers[header].bytes()
        };
        if skip >= bytes.len() {
            skip -= bytes.len();
            continue;
        }
        slices[k] = IoSlice::new(&bytes[skip..]);
        skip = 0;
        k += 1;
    }
    if k == 0 {
        return Ok(0);
    }
    write(&slices[..k])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn gathered(items: &[Outbound], skip: usize) -> Vec<u8> {
        let mut out = Vec::new();
        write_gathered(items, skip, |slices| {
            slices.iter().for_each(|s| out.extend_from_slice(s));
            Ok(out.len())
        })
        .unwrap();
        out
    }

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        assert_eq!(Header::new(TEXT, true, 5).bytes(), [0x81, 5]);
        assert_eq!(Header::new(TEXT, true, 126).bytes(), [0x81, 126, 0, 126]);
        assert_eq!(
            Header::new(CONTINUATION, false, 70_000).bytes(),
            [0x00, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
    }

    #[test]
    fn frames_batches_and_raw_bytes_gather_in_order_and_resume_mid_frame() {
        let items = [
            Outbound::Raw(bytes::Bytes::from_static(b"\x8a\x00")),
            Outbound::Frame(Utf8Bytes::from_static("hi")),
            Outbound::Batch(vec![
                Utf8Bytes::from_static("a"),
                Utf8Bytes::from_static("bc"),
            ]),
        ];
        let all = gathered(&items, 0);
        assert_eq!(all, b"\x8a\x00\x81\x02hi\x81\x01a\x81\x02bc");
        assert_eq!(items.iter().map(wire_len).sum::<usize>(), all.len());
        assert_eq!(gathered(&items, 3), all[3..]);
    }

    #[test]
    fn a_single_frame_is_written_as_its_gathered_form() {
        let item = Outbound::Frame(Utf8Bytes::from_static("hello"));
        let mut direct = Vec::new();
        write_item(&item, |slices| {
            slices.iter().for_each(|s| direct.extend_from_slice(s));
            Ok(direct.len())
        })
        .unwrap();
        assert_eq!(direct, gathered(std::slice::from_ref(&item), 0));
    }

    #[test]
    fn a_large_reply_goes_out_in_continuation_frames() {
        let body = "x".repeat(FRAGMENT * 2 + 10);
        let item = Outbound::Reply(Utf8Bytes::from(body));
        let wire = gathered(std::slice::from_ref(&item), 0);
        assert_eq!(wire.len(), wire_len(&item));
        // 64 KiB is past the 16-bit length: each full fragment has a 10-byte header.
        assert_eq!(wire[..2], [TEXT, 127]);
        let second = 10 + FRAGMENT;
        assert_eq!(wire[second], CONTINUATION);
        let third = second + 10 + FRAGMENT;
        assert_eq!(wire[third], FIN | CONTINUATION);
        assert_eq!(wire[third + 1], 10);
    }
}
