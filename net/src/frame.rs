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

/// What a decoder hands out: a whole control frame, or (when it streams blocks) each block of
/// a `Blocks` frame as soon as that block has arrived whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Frame(Frame),
    /// One block of a `Blocks` frame (`None` for a frame without blocks). `leader_last` is the
    /// frame's `lastTick`; `frame_end` is set on the frame's last piece.
    Block {
        leader_last: u64,
        block: Option<Bytes>,
        frame_end: bool,
    },
}

/// The part of the stream being decoded.
enum Pending {
    /// Between frames: the next bytes are a header.
    Header,
    /// A frame handed out whole: its kind, length and the payload received so far.
    Frame(Kind, usize, BytesMut),
    /// A `Blocks` frame handed out block by block.
    Blocks {
        /// Payload bytes of the frame not yet consumed (the block being filled included).
        left: usize,
        /// The frame's `lastTick`, once its 8 bytes have arrived.
        leader_last: Option<u64>,
        /// The block being filled: its length and the bytes received so far.
        block: Option<(usize, BytesMut)>,
    },
}

/// Incremental decoder: feed bytes as they arrive, take whole frames (or blocks) out.
///
/// Every payload gets an allocation of exactly its declared length, filled as its bytes arrive,
/// so a frame handed out holds no memory of its neighbours: a follower keeps received blocks
/// until its WAL has them, and slices of one shared, doubling buffer kept several frames' worth
/// alive per block.
///
/// A decoder that streams blocks ([`Decoder::streaming_blocks`]) hands out each block of a
/// `Blocks` frame once it is whole, so that a follower stores it at once: on a slow link a frame
/// may take minutes, and what arrived of it is not lost when the connection drops half-way.
pub struct Decoder {
    /// Bytes not yet part of a payload: headers, and what arrived past the pending payload.
    buffer: BytesMut,
    blocks_max: usize,
    stream_blocks: bool,
    pending: Pending,
}

impl Decoder {
    pub fn new(blocks_max: usize) -> Decoder {
        Decoder {
            buffer: BytesMut::new(),
            blocks_max,
            stream_blocks: false,
            pending: Pending::Header,
        }
    }

    /// From the next frame on, `Blocks` frames come out block by block ([`Piece::Block`]).
    pub fn streaming_blocks(&mut self) {
        self.stream_blocks = true;
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        let filling = match &mut self.pending {
            Pending::Frame(_, len, payload) => Some((*len, payload)),
            Pending::Blocks {
                block: Some((len, payload)),
                ..
            } => Some((*len, payload)),
            _ => None,
        };
        if let Some((len, payload)) = filling {
            let take = (len - payload.len()).min(bytes.len());
            payload.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received of the frame (or block) in progress and its length, if one is.
    pub fn partial(&self) -> Option<(usize, usize)> {
        match &self.pending {
            Pending::Frame(_, len, payload) => Some((payload.len(), *len)),
            Pending::Blocks {
                block: Some((len, payload)),
                ..
            } => Some((payload.len(), *len)),
            _ => None,
        }
    }

    /// The next whole frame, `None` if more bytes are needed, an error for an invalid header.
    /// A decoder streaming blocks refuses a `Blocks` frame here: use [`Decoder::next_piece`].
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        match self.next_piece()? {
            None => Ok(None),
            Some(Piece::Frame(frame)) => Ok(Some(frame)),
            Some(Piece::Block { .. }) => Err(Error::Protocol(
                "a Blocks frame where a control message was expected".into(),
            )),
        }
    }

    /// The next whole frame or block, `None` if more bytes are needed, an error for an invalid
    /// header or block length.
    pub fn next_piece(&mut self) -> Result<Option<Piece>> {
        loop {
            match &mut self.pending {
                Pending::Header => {
                    if self.buffer.len() < HEADER_BYTES {
                        return Ok(None);
                    }
                    let mut head = [0u8; HEADER_BYTES];
                    head.copy_from_slice(&self.buffer[..HEADER_BYTES]);
                    let (kind, len) = parse_header(head, self.blocks_max)?;
                    self.buffer.advance(HEADER_BYTES);
                    if kind == Kind::Blocks && self.stream_blocks {
                        self.pending = Pending::Blocks {
                            left: len,
                            leader_last: None,
                            block: None,
                        };
                        continue;
                    }
                    // The length is validated above: the allocation is bounded by the kind's
                    // limit.
                    let mut payload = BytesMut::with_capacity(len);
                    let take = len.min(self.buffer.len());
                    payload.extend_from_slice(&self.buffer[..take]);
                    self.buffer.advance(take);
                    self.pending = Pending::Frame(kind, len, payload);
                }
                Pending::Frame(_, len, payload) => {
                    if payload.len() < *len {
                        return Ok(None);
                    }
                    let Pending::Frame(kind, _, payload) =
                        std::mem::replace(&mut self.pending, Pending::Header)
                    else {
                        unreachable!("matched a Frame above")
                    };
                    return Ok(Some(Piece::Frame(Frame {
                        kind,
                        payload: payload.freeze(),
                    })));
                }
                Pending::Blocks {
                    left,
                    leader_last,
                    block,
                } => {
                    let Some(last) = *leader_last else {
                        if *left < 8 {
                            return Err(Error::Protocol(
                                "Blocks frame shorter than its last tick".into(),
                            ));
                        }
                        if self.buffer.len() < 8 {
                            return Ok(None);
                        }
                        *leader_last = Some(self.buffer.get_u64_le());
                        *left -= 8;
                        if *left == 0 {
                            let leader_last = self.end_blocks_frame();
                            return Ok(Some(Piece::Block {
                                leader_last,
                                block: None,
                                frame_end: true,
                            }));
                        }
                        continue;
                    };
                    match block {
                        None => {
                            if *left < 4 {
                                return Err(Error::Protocol(
                                    "Blocks frame ends inside a length".into(),
                                ));
                            }
                            if self.buffer.len() < 4 {
                                return Ok(None);
                            }
                            let len = self.buffer.get_u32_le() as usize;
                            *left -= 4;
                            if len == 0 || len > *left {
                                return Err(Error::Protocol(format!(
                                    "block length {len} does not fit the {} bytes left",
                                    *left
                                )));
                            }
                            // Bounded by the frame's validated length.
                            let mut payload = BytesMut::with_capacity(len);
                            let take = len.min(self.buffer.len());
                            payload.extend_from_slice(&self.buffer[..take]);
                            self.buffer.advance(take);
                            *block = Some((len, payload));
                        }
                        Some((len, payload)) => {
                            if payload.len() < *len {
                                return Ok(None);
                            }
                            *left -= *len;
                            let frame_end = *left == 0;
                            let bytes = block.take().map(|(_, payload)| payload.freeze());
                            if frame_end {
                                self.end_blocks_frame();
                            }
                            return Ok(Some(Piece::Block {
                                leader_last: last,
                                block: bytes,
                                frame_end,
                            }));
                        }
                    }
                }
            }
        }
    }

    /// Ends the `Blocks` frame in progress; returns its last tick.
    fn end_blocks_frame(&mut self) -> u64 {
        match std::mem::replace(&mut self.pending, Pending::Header) {
            Pending::Blocks { leader_last, .. } => leader_last.unwrap_or(0),
            _ => 0,
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
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
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

    /// Every piece a streaming decoder gives for `wire` fed in chunks of `step` bytes.
    fn pieces(wire: &[u8], step: usize) -> Vec<Piece> {
        let mut decoder = Decoder::new(BLOCKS_BYTES_MAX);
        decoder.streaming_blocks();
        let mut got = Vec::new();
        for chunk in wire.chunks(step) {
            decoder.push(chunk);
            while let Some(piece) = decoder.next_piece().unwrap() {
                got.push(piece);
            }
        }
        got
    }

    fn blocks_frame(last: u64, blocks: &[&[u8]]) -> Vec<u8> {
        let mut payload = last.to_le_bytes().to_vec();
        for block in blocks {
            payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
            payload.extend_from_slice(block);
        }
        encode(Kind::Blocks, &payload).to_vec()
    }

    // Goal: a streaming decoder hands out each block of a Blocks frame once it is whole, marks
    // the frame's last one, and passes control frames through, across any split of the bytes.
    #[test]
    fn blocks_stream_out_one_by_one() {
        let mut wire = blocks_frame(42, &[b"abc", b"defgh"]);
        wire.extend_from_slice(&encode(Kind::Idle, br#"{"lastTick":42}"#));
        wire.extend_from_slice(&blocks_frame(43, &[]));
        for step in [1, 3, 8, 13, wire.len()] {
            let got = pieces(&wire, step);
            assert_eq!(
                got,
                vec![
                    Piece::Block {
                        leader_last: 42,
                        block: Some(Bytes::from_static(b"abc")),
                        frame_end: false
                    },
                    Piece::Block {
                        leader_last: 42,
                        block: Some(Bytes::from_static(b"defgh")),
                        frame_end: true
                    },
                    Piece::Frame(Frame {
                        kind: Kind::Idle,
                        payload: Bytes::from_static(br#"{"lastTick":42}"#)
                    }),
                    Piece::Block {
                        leader_last: 43,
                        block: None,
                        frame_end: true
                    },
                ],
                "step {step}"
            );
        }
    }

    // Goal: the first block of a frame comes out before the rest of the frame has arrived, and
    // the decoder says how much of the block in progress it has.
    #[test]
    fn a_whole_block_comes_out_before_its_frame_ends() {
        let wire = blocks_frame(7, &[b"first", b"second-block"]);
        let mut decoder = Decoder::new(BLOCKS_BYTES_MAX);
        decoder.streaming_blocks();
        // Header, last tick, first block, the second's length and 3 of its bytes.
        let cut = HEADER_BYTES + 8 + 4 + 5 + 4 + 3;
        decoder.push(&wire[..cut]);
        assert!(matches!(
            decoder.next_piece().unwrap(),
            Some(Piece::Block { block: Some(b), frame_end: false, .. }) if &b[..] == b"first"
        ));
        assert_eq!(decoder.next_piece().unwrap(), None);
        assert_eq!(decoder.partial(), Some((3, 12)));
        decoder.push(&wire[cut..]);
        assert!(matches!(
            decoder.next_piece().unwrap(),
            Some(Piece::Block { block: Some(b), frame_end: true, .. }) if &b[..] == b"second-block"
        ));
        assert_eq!(decoder.partial(), None);
    }

    // Goal: block lengths that do not fit their frame are refused before anything is allocated
    // for them, as `split_blocks` refuses them.
    #[test]
    fn streamed_blocks_refuse_bad_lengths() {
        let refuse = |payload: Vec<u8>| {
            let mut decoder = Decoder::new(BLOCKS_BYTES_MAX);
            decoder.streaming_blocks();
            decoder.push(&encode(Kind::Blocks, &payload));
            let mut result = decoder.next_piece();
            while let Ok(Some(_)) = result {
                result = decoder.next_piece();
            }
            result.expect_err("refused")
        };
        let mut zero = 1u64.to_le_bytes().to_vec();
        zero.extend_from_slice(&0u32.to_le_bytes());
        assert!(refuse(zero).to_string().contains("block length 0"));
        let mut long = 1u64.to_le_bytes().to_vec();
        long.extend_from_slice(&100u32.to_le_bytes());
        long.extend_from_slice(b"short");
        assert!(refuse(long).to_string().contains("block length 100"));
        assert!(refuse(vec![1, 2, 3]).to_string().contains("last tick"));
        let mut torn = 1u64.to_le_bytes().to_vec();
        torn.extend_from_slice(&[1, 0]);
        assert!(refuse(torn).to_string().contains("inside a length"));
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
            let mut decoder = Decoder::new(2048);
            decoder.streaming_blocks();
            decoder.push(&bytes);
            while let Ok(Some(_)) = decoder.next_piece() {}
        }
    }
}
