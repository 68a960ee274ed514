//! Framing: every message on a replication stream is `kind: u8 | length: u32 LE | payload`.
//!
//! The decoder is a pure state machine over byte slices: it never allocates more than a frame's
//! declared length, and it refuses a kind it does not know or a length above the kind's limit
//! before reading the payload (PROTOCOL.md "Framing").

use bytes::{Buf, Bytes, BytesMut};

use crate::{Error, Result};

/// Bytes of a frame header.
pub const HEADER_BYTES: usize = 5;
/// Largest payload of a control frame (JSON).
pub const CONTROL_BYTES_MAX: usize = 64 << 10;
/// Default largest payload of a `Blocks` frame; a session may lower or raise it.
pub const BLOCKS_BYTES_MAX: usize = 96 << 20;

/// Frame kinds. Numbers are part of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Challenge = 2,
    Proof = 3,
    Welcome = 4,
    Tail = 5,
    Blocks = 6,
    Idle = 7,
    Ack = 8,
    Close = 9,
}

impl Kind {
    pub fn from_u8(value: u8) -> Option<Kind> {
        Some(match value {
            1 => Kind::Hello,
            2 => Kind::Challenge,
            3 => Kind::Proof,
            4 => Kind::Welcome,
            5 => Kind::Tail,
            6 => Kind::Blocks,
            7 => Kind::Idle,
            8 => Kind::Ack,
            9 => Kind::Close,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub payload: Bytes,
}

/// Encodes a frame header for `kind` with a payload of `len` bytes.
pub fn header(kind: Kind, len: usize) -> [u8; HEADER_BYTES] {
    let len = u32::try_from(len).expect("frame payloads are limited far below 4 GiB");
    let mut out = [0u8; HEADER_BYTES];
    out[0] = kind as u8;
    out[1..].copy_from_slice(&len.to_le_bytes());
    out
}

/// Encodes a whole frame.
pub fn encode(kind: Kind, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&header(kind, payload.len()));
    out.extend_from_slice(payload);
    out.freeze()
}

/// Validates a frame header: known kind, length within the kind's limit.
pub fn parse_header(bytes: [u8; HEADER_BYTES], blocks_max: usize) -> Result<(Kind, usize)> {
    let kind = Kind::from_u8(bytes[0])
        .ok_or_else(|| Error::Protocol(format!("unknown frame kind {}", bytes[0])))?;
    let len = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let max = if kind == Kind::Blocks {
        blocks_max
    } else {
        CONTROL_BYTES_MAX
    };
    if len > max {
        return Err(Error::Protocol(format!(
            "{kind:?} frame of {len} bytes exceeds the limit of {max}"
        )));
    }
    Ok((kind, len))
}

/// Incremental decoder: feed bytes as they arrive, take whole frames out.
///
/// Every payload gets an allocation of exactly its declared length, filled as its bytes arrive,
/// so a frame handed out holds no memory of its neighbours: a follower keeps received blocks
/// until its WAL has them, and slices of one shared, doubling buffer kept several frames' worth
/// alive per block (measured: ~50 MiB of such buffers while catching up).
pub struct Decoder {
    /// Bytes not yet part of a payload: headers, and what arrived past the pending payload.
    buffer: BytesMut,
    blocks_max: usize,
    /// The frame whose header was read: its kind, length and the payload received so far.
    pending: Option<(Kind, usize, BytesMut)>,
}

impl Decoder {
    pub fn new(blocks_max: usize) -> Decoder {
        Decoder {
            buffer: BytesMut::new(),
            blocks_max,
            pending: None,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        if let Some((_, len, payload)) = &mut self.pending {
            let take = (*len - payload.len()).min(bytes.len());
            payload.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` if more bytes are needed, an error for an invalid header.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.pending.is_none() {
            if self.buffer.len() < HEADER_BYTES {
                return Ok(None);
            }
            let mut head = [0u8; HEADER_BYTES];
            head.copy_from_slice(&self.buffer[..HEADER_BYTES]);
            let (kind, len) = parse_header(head, self.blocks_max)?;
            self.buffer.advance(HEADER_BYTES);
            // The length is validated above: the allocation is bounded by the kind's limit.
            let mut payload = BytesMut::with_capacity(len);
            let take = len.min(self.buffer.len());
            payload.extend_from_slice(&self.buffer[..take]);
            self.buffer.advance(take);
            self.pending = Some((kind, len, payload));
        }
        match self.pending.take() {
            Some((kind, len, payload)) if payload.len() == len => Ok(Some(Frame {
                kind,
                payload: payload.freeze(),
            })),
            other => {
                self.pending = other;
                Ok(None)
            }
        }
    }
}

/// Splits a `Blocks` payload: `last_tick: u64 LE` then `(len: u32 LE, bytes)` per block. The
/// slices share the payload's memory.
pub fn split_blocks(mut payload: Bytes) -> Result<(u64, Vec<Bytes>)> {
    if payload.len() < 8 {
        return Err(Error::Protocol(
            "Blocks frame shorter than its last tick".into(),
        ));
    }
    let last_tick = payload.get_u64_le();
    let mut blocks = Vec::new();
    while payload.has_remaining() {
        if payload.len() < 4 {
            return Err(Error::Protocol("Blocks frame ends inside a length".into()));
        }
        let len = payload.get_u32_le() as usize;
        if len == 0 || len > payload.len() {
            return Err(Error::Protocol(format!(
                "block length {len} does not fit the {} bytes left",
                payload.len()
            )));
        }
        blocks.push(payload.split_to(len));
    }
    Ok((last_tick, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip_across_any_split() {
        let frames = [
            encode(Kind::Hello, br#"{"a":1}"#),
            encode(Kind::Blocks, &[7u8; 1000]),
            encode(Kind::Ack, b""),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        for step in [1, 2, 5, 7, 100, wire.len()] {
            let mut decoder = Decoder::new(BLOCKS_BYTES_MAX);
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                decoder.push(chunk);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got.len(), 3);
            assert_eq!(got[0].kind, Kind::Hello);
            assert_eq!(&got[0].payload[..], br#"{"a":1}"#);
            assert_eq!(got[1].payload.len(), 1000);
            assert_eq!(got[2].kind, Kind::Ack);
            assert!(got[2].payload.is_empty());
        }
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused_before_their_payload() {
        let mut decoder = Decoder::new(1024);
        decoder.push(&header(Kind::Blocks, 1025));
        assert!(matches!(decoder.next_frame(), Err(Error::Protocol(m)) if m.contains("exceeds")));
        let mut decoder = Decoder::new(1024);
        decoder.push(&header(Kind::Hello, CONTROL_BYTES_MAX + 1));
        assert!(decoder.next_frame().is_err());
        let mut decoder = Decoder::new(1024);
        decoder.push(&[42, 0, 0, 0, 0]);
        assert!(matches!(decoder.next_frame(), Err(Error::Protocol(m)) if m.contains("unknown")));
    }

    #[test]
    fn blocks_payload_splits_and_rejects_bad_lengths() {
        let mut payload = 99u64.to_le_bytes().to_vec();
        for block in [&b"abc"[..], &b"defgh"[..]] {
            payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
            payload.extend_from_slice(block);
        }
        let (last, blocks) = split_blocks(Bytes::from(payload.clone())).unwrap();
        assert_eq!(last, 99);
        assert_eq!(
            blocks,
            vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")]
        );
        payload.truncate(payload.len() - 1);
        assert!(split_blocks(Bytes::from(payload)).is_err());
        assert!(split_blocks(Bytes::from_static(&[1, 2, 3])).is_err());
        let mut zero = 1u64.to_le_bytes().to_vec();
        zero.extend_from_slice(&0u32.to_le_bytes());
        assert!(split_blocks(Bytes::from(zero)).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut decoder = Decoder::new(2048);
            decoder.push(&bytes);
            while let Ok(Some(frame)) = decoder.next_frame() {
                if frame.kind == Kind::Blocks {
                    let _ = split_blocks(frame.payload);
                }
            }
        }
    }
}
