//! The streaming half of a replication session, both sides, after `Tail` (PROTOCOL.md
//! "Streaming"): which blocks a leader sends in which frame and when it says `Idle`; where a
//! follower places each block it receives, how much it holds before it stops reading (flow
//! control), and what it acknowledges when.
//!
//! As with the handshake, each side is a state machine that does no I/O: the drivers (the
//! leader's shipper, the follower's session) read the log, send and receive frames and append
//! blocks, and tell the machine what happened; the machine says what to do next. So every
//! transition can be driven without sockets, disks or clocks, as `tests/simulated_sessions.rs`
//! does over a seeded link with loss, delay, duplication, reordering and crashes.
//!
//! Ticks are plain `u64` here (the wire's), blocks opaque: the drivers parse and check them.

use std::collections::VecDeque;
use std::time::Duration;

/// How long a leader with nothing new waits before it says `Idle`.
pub const IDLE_EVERY: Duration = Duration::from_secs(1);

/// A block's ticks and size, as the drivers read them from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpan {
    pub first: u64,
    pub last: u64,
    /// Its bytes on the wire.
    pub bytes: usize,
}

/// The leader's side: collects the blocks after the follower's position into frames of about
/// `chunk` bytes, and says when to send `Idle`.
#[derive(Debug)]
pub struct LeaderStream {
    /// The last tick sent (or asked after, before anything is sent).
    sent: u64,
    chunk: usize,
    /// Blocks of the frame being filled, and their bytes.
    pending: usize,
    pending_bytes: usize,
    /// Time (the driver's clock) since something was last sent.
    quiet: Duration,
    /// The highest tick the follower acknowledged as durable.
    acked: u64,
}

/// What a leader does with a block its reader gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// The follower has it already (the reader starts at the block holding `from + 1`).
    Skip,
    /// Add it to the frame being filled; the frame is not full yet.
    Add,
    /// Add it, and send the frame now: it is full.
    AddAndSend,
}

impl LeaderStream {
    /// A stream to a follower that asked for the ticks after `from`, in frames of `chunk` bytes.
    pub fn new(from: u64, chunk: usize) -> LeaderStream {
        LeaderStream {
            sent: from,
            chunk: chunk.max(1),
            pending: 0,
            pending_bytes: 0,
            quiet: Duration::ZERO,
            acked: 0,
        }
    }

    /// The last tick sent, where the log reader goes on after.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The highest durable tick the follower acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The reader found `block`, the next in the log.
    pub fn offer(&mut self, block: BlockSpan) -> Offer {
        if block.last <= self.sent {
            return Offer::Skip;
        }
        self.sent = block.last;
        self.pending += 1;
        self.pending_bytes += block.bytes;
        if self.pending_bytes >= self.chunk {
            Offer::AddAndSend
        } else {
            Offer::Add
        }
    }

    /// Whether a frame is being filled (send it when the reader has nothing more now).
    pub fn has_pending(&self) -> bool {
        self.pending > 0
    }

    /// The frame being filled was sent.
    pub fn frame_sent(&mut self) {
        self.pending = 0;
        self.pending_bytes = 0;
        self.quiet = Duration::ZERO;
    }

    /// Nothing new for `elapsed` more: whether to send `Idle` now (every `IDLE_EVERY` of
    /// silence).
    pub fn quiet_for(&mut self, elapsed: Duration) -> bool {
        self.quiet += elapsed;
        if self.quiet >= IDLE_EVERY {
            self.quiet = Duration::ZERO;
            return true;
        }
        false
    }

    /// The follower acknowledged `durable`: returns the tick its barrier may move to. What it
    /// holds past the last tick sent it cannot have from this leader on this session, so the
    /// barrier never passes that (it stays where retention keeps what the follower may still
    /// ask for); an older ack (one that was in flight) never moves it back.
    pub fn on_ack(&mut self, durable: u64) -> u64 {
        self.acked = self.acked.max(durable.min(self.sent));
        self.acked
    }
}

/// The follower's side: places each received block, tracks the blocks handed to its log until
/// they are durable, and says when to acknowledge and whether to read more.
#[derive(Debug)]
pub struct FollowerStream {
    /// The tick asked after (`Tail.from`).
    from: u64,
    /// The last tick handed to this server's log.
    last_stored: u64,
    /// Whether this server's log holds no block yet: it begins with the first one received.
    log_empty: bool,
    /// Blocks handed to the log, not yet durable, in order.
    inflight: VecDeque<Inflight>,
    /// Of those, the first `taken` are taken by the log's writer (no longer held in memory).
    taken: usize,
    queued_bytes: usize,
    inflight_bytes: usize,
    receive_ahead: usize,
    durable_ahead: usize,
    /// Whether the frame being received brought a block this server did not have.
    frame_stored: bool,
    /// The last tick known durable here.
    durable: u64,
    /// Whether this session brought something (a new block, or news that it is level), and
    /// whether the driver was told so.
    progressed: bool,
    progress_told: bool,
}

#[derive(Clone, Copy, Debug)]
struct Inflight {
    last: u64,
    bytes: usize,
    /// The last new block of a frame: acknowledged once durable.
    frame_end: bool,
}

/// Where a received block goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// This server has it (the leader resends from the tick asked for): drop it.
    Skip,
    /// This server's log is empty: begin it just before `start` (the block's first tick), with
    /// the store holding the state through `from`, then offer the block again (`begun`).
    Begin { start: u64, from: u64 },
    /// Hand it to the log: it is the next one.
    Store,
}

/// What a follower acknowledges: the tick durable here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckDue(pub u64);

/// What a follower does when a `Blocks` frame ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameEnd {
    /// The frame brought nothing new.
    Nothing,
    /// Its blocks are durable already: acknowledge now.
    AckNow(AckDue),
    /// Acknowledge when its last new block is durable (`on_durable` says so).
    AckWhenDurable,
}

impl FollowerStream {
    /// A stream that asked for the ticks after `from`, with this server's log ending at
    /// `last_stored` (empty if `log_empty`), durable through `durable`. It stops reading while
    /// `receive_ahead` bytes of blocks wait for the log's writer, or `durable_ahead` bytes wait
    /// to be durable.
    pub fn new(
        from: u64,
        last_stored: u64,
        log_empty: bool,
        durable: u64,
        receive_ahead: usize,
        durable_ahead: usize,
    ) -> FollowerStream {
        FollowerStream {
            from,
            last_stored,
            log_empty,
            inflight: VecDeque::new(),
            taken: 0,
            queued_bytes: 0,
            inflight_bytes: 0,
            receive_ahead,
            durable_ahead: durable_ahead.max(receive_ahead),
            frame_stored: false,
            durable,
            progressed: false,
            progress_told: false,
        }
    }

    /// The last tick handed to the log.
    pub fn last_stored(&self) -> u64 {
        self.last_stored
    }

    /// The last tick durable here: where a next session resumes.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Whether to read the next piece from the leader now (flow control: what waits for the
    /// log is bounded, and the leader waits on the transport's window meanwhile).
    pub fn can_receive(&self) -> bool {
        self.queued_bytes < self.receive_ahead && self.inflight_bytes < self.durable_ahead
    }

    /// Blocks handed to the log and not yet durable.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Blocks handed to the log and not yet taken by its writer.
    pub fn untaken(&self) -> usize {
        self.inflight.len() - self.taken
    }

    /// Whether this session brought something yet; true once a session, then false (the
    /// driver resets its failed-connect count on it).
    pub fn take_progress(&mut self) -> bool {
        if self.progressed && !self.progress_told {
            self.progress_told = true;
            return true;
        }
        false
    }

    /// A block arrived. The leader's log has no gaps, so a new block holds the tick after the
    /// last one stored, or after `from` while that is past this server's log (a gap would be
    /// changes this follower silently never has): it may start before such a `from`, as the
    /// block holding `from + 1` does, but never inside what is stored.
    pub fn on_block(&mut self, block: BlockSpan) -> Result<Placement, String> {
        if self.log_empty && block.last > self.from {
            return Ok(Placement::Begin {
                start: block.first.saturating_sub(1),
                from: self.from,
            });
        }
        let continues_after = self.last_stored.max(self.from);
        if block.last <= continues_after {
            return Ok(Placement::Skip);
        }
        if block.first <= self.last_stored {
            return Err(format!(
                "block {}..={} from the leader overlaps this server's log ending at {}",
                block.first, block.last, self.last_stored
            ));
        }
        let expected = continues_after.saturating_add(1);
        if block.first > expected {
            return Err(format!(
                "block {}..={} from the leader does not continue the log from tick \
                 {continues_after}",
                block.first, block.last
            ));
        }
        self.last_stored = block.last;
        self.log_empty = false;
        self.inflight.push_back(Inflight {
            last: block.last,
            bytes: block.bytes,
            frame_end: false,
        });
        self.queued_bytes += block.bytes;
        self.inflight_bytes += block.bytes;
        self.frame_stored = true;
        self.progressed = true;
        Ok(Placement::Store)
    }

    /// The log was begun (after `Placement::Begin`); it now ends at `last`.
    pub fn begun(&mut self, last: u64) {
        self.log_empty = false;
        self.last_stored = last;
        self.durable = self.durable.max(last);
    }

    /// The log's writer took the oldest block not yet taken (copied it: it is no longer held).
    pub fn on_taken(&mut self) {
        if let Some(block) = self.inflight.get(self.taken) {
            self.queued_bytes -= block.bytes;
            self.taken += 1;
        }
    }

    /// The oldest block handed to the log is durable (`Ok`) or failed (`Err`, which ends the
    /// session: the blocks after it fail too, and the next session asks from `durable`). An
    /// acknowledgement is due when it ended a frame.
    pub fn on_durable(&mut self, stored: bool) -> Option<AckDue> {
        let block = self.inflight.pop_front()?;
        self.inflight_bytes -= block.bytes;
        if self.taken == 0 {
            // Completed before it was seen taken (a failed append, say).
            self.queued_bytes -= block.bytes;
        } else {
            self.taken -= 1;
        }
        if !stored {
            return None;
        }
        self.durable = self.durable.max(block.last);
        block.frame_end.then_some(AckDue(self.durable))
    }

    /// A `Blocks` frame ended. Its last new block is acknowledged once durable, or now if it is
    /// durable already.
    pub fn on_frame_end(&mut self) -> FrameEnd {
        if !std::mem::take(&mut self.frame_stored) {
            return FrameEnd::Nothing;
        }
        match self.inflight.back_mut() {
            Some(last) if last.last == self.last_stored => {
                last.frame_end = true;
                FrameEnd::AckWhenDurable
            }
            _ => FrameEnd::AckNow(AckDue(self.durable)),
        }
    }

    /// The leader said `Idle` with its last tick: acknowledge what is durable (the leader's
    /// barrier and lag figures follow it); level with it counts as progress.
    pub fn on_idle(&mut self, leader_last: u64) -> AckDue {
        if leader_last <= self.last_stored {
            self.progressed = true;
        }
        AckDue(self.durable)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
mod tests {
    use super::*;

    fn span(first: u64, last: u64) -> BlockSpan {
        BlockSpan {
            first,
            last,
            bytes: 100,
        }
    }

    // Goal: blocks go where the log continues: resent ones are skipped, gaps and overlaps are
    // refused, the block holding `from + 1` may start before `from` past the log's end.
    #[test]
    fn blocks_are_placed_where_the_log_continues() {
        let mut f = FollowerStream::new(10, 10, false, 10, 1 << 20, 1 << 20);
        assert_eq!(f.on_block(span(1, 10)).unwrap(), Placement::Skip);
        let overlap = f.on_block(span(5, 12)).unwrap_err();
        assert!(
            overlap.contains("5..=12") && overlap.contains("ending at 10"),
            "{overlap}"
        );
        let gap = f.on_block(span(12, 15)).unwrap_err();
        assert!(
            gap.contains("12..=15") && gap.contains("from tick 10"),
            "{gap}"
        );
        assert_eq!(f.on_block(span(11, 12)).unwrap(), Placement::Store);
        assert!(f.on_block(span(12, 14)).is_err(), "overlap");
        assert!(f.on_block(span(15, 16)).is_err(), "gap");
        assert_eq!(f.on_block(span(13, 14)).unwrap(), Placement::Store);
        // Asked after 20 with the log at 10 (a restored dump): the block holding 21.
        let mut f = FollowerStream::new(20, 10, false, 10, 1 << 20, 1 << 20);
        assert_eq!(f.on_block(span(15, 20)).unwrap(), Placement::Skip);
        assert!(f.on_block(span(22, 30)).is_err(), "a gap after from");
        assert_eq!(f.on_block(span(15, 30)).unwrap(), Placement::Store);
        let mut f = FollowerStream::new(20, 10, false, 10, 1 << 20, 1 << 20);
        assert_eq!(f.on_block(span(18, 22)).unwrap(), Placement::Store);
        // An empty log begins before the first block past `from`.
        let mut f = FollowerStream::new(20, 0, true, 0, 1 << 20, 1 << 20);
        assert_eq!(f.on_block(span(1, 20)).unwrap(), Placement::Skip);
        assert_eq!(
            f.on_block(span(18, 22)).unwrap(),
            Placement::Begin {
                start: 17,
                from: 20
            }
        );
        f.begun(17);
        assert_eq!(f.on_block(span(18, 22)).unwrap(), Placement::Store);
    }

    // Goal: a frame's last new block is acknowledged once durable, or at once if it was
    // durable already; flow control stops reading past the limits and resumes as the writer
    // takes blocks.
    #[test]
    fn acks_follow_durability_and_reading_follows_the_writer() {
        let mut f = FollowerStream::new(0, 0, false, 0, 250, 250);
        assert!(f.can_receive());
        f.on_block(span(1, 1)).unwrap();
        f.on_block(span(2, 2)).unwrap();
        f.on_block(span(3, 3)).unwrap();
        assert!(!f.can_receive(), "300 bytes queued");
        assert_eq!(f.on_frame_end(), FrameEnd::AckWhenDurable);
        f.on_taken();
        assert!(!f.can_receive(), "still 300 bytes not durable");
        assert_eq!(f.on_durable(true), None);
        assert!(f.can_receive());
        assert_eq!(f.on_durable(true), None);
        assert_eq!(f.on_durable(true), Some(AckDue(3)));
        assert_eq!(f.durable(), 3);
        // A frame of nothing new acknowledges nothing; an Idle acknowledges what is durable.
        assert_eq!(f.on_frame_end(), FrameEnd::Nothing);
        assert_eq!(f.on_idle(3), AckDue(3));
        assert!(f.take_progress());
        assert!(!f.take_progress());
        // A failed append moves nothing.
        f.on_block(span(4, 4)).unwrap();
        assert!(!f.take_progress(), "told once a session");
        assert_eq!(f.on_durable(false), None);
        assert_eq!(f.durable(), 3);
    }

    // Goal: the leader fills frames up to the chunk, skips what the follower has, says Idle
    // after a second of silence, and keeps the barrier within what it sent.
    #[test]
    fn the_leader_fills_frames_and_checks_acks() {
        let mut l = LeaderStream::new(10, 250);
        assert_eq!(l.offer(span(8, 10)), Offer::Skip);
        assert_eq!(l.offer(span(11, 11)), Offer::Add);
        assert_eq!(l.offer(span(12, 12)), Offer::Add);
        assert_eq!(l.offer(span(13, 13)), Offer::AddAndSend);
        assert!(l.has_pending());
        l.frame_sent();
        assert!(!l.has_pending());
        assert_eq!(l.sent(), 13);
        assert!(!l.quiet_for(Duration::from_millis(600)));
        assert!(l.quiet_for(Duration::from_millis(600)));
        assert_eq!(l.on_ack(12), 12);
        assert_eq!(
            l.on_ack(11),
            12,
            "an older ack never moves the barrier back"
        );
        assert_eq!(l.on_ack(14), 13, "never past what was sent");
    }
}
