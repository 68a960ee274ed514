//! Claim: the streaming state machines (`tickship_net::stream`) keep a follower's log an exact
//! prefix of its leader's (no block twice, none skipped) and the leader's view of what the
//! follower holds durably never ahead of the truth, whatever the link and the follower's disk
//! do; and once the faults stop, the follower catches up.
//!
//! Each run is one seed: a leader whose log grows, a follower that tails it through sessions
//! over a simulated connection, on a virtual clock. The connection is a QUIC stream, so what a
//! lossy link does to a session is delay (a lost packet holds up everything after it until it
//! is sent again), duplicates and reordering the transport hides, and broken connections
//! (enough loss and the session times out): after one the follower reconnects and asks from
//! what it holds durably, so blocks it holds but not yet durably come again, and acks of the
//! old session may still be in flight. The follower's log takes appended blocks after a delay,
//! makes them durable later, may fail an append (a full disk: that block and those after it are
//! not stored), and the follower may crash, losing what was not durable.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use tickship_net::stream::{BlockSpan, FollowerStream, FrameEnd, LeaderStream, Offer, Placement};

/// splitmix64: a seeded stream of numbers, enough for choosing faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// How bad the link and the follower's disk are in one run.
#[derive(Clone, Copy, Debug)]
struct Faults {
    /// Per mille of pieces whose packet is lost and sent again (the piece and those after it
    /// wait for the retransmission).
    loss: u64,
    /// Per mille of pieces after which the connection breaks.
    breaks: u64,
    /// Per mille of appends that fail (full disk).
    append_fails: u64,
    /// Per mille of durability events at which the follower crashes instead.
    crashes: u64,
    /// Per mille of blocks the link delivers twice, or swapped with the next one of the same
    /// frame: what QUIC never does, but a follower must not store wrong whatever a leader or a
    /// middlebox sends.
    duplicates: u64,
    swaps: u64,
    /// Link delay and jitter, in virtual milliseconds.
    delay_ms: u64,
    jitter_ms: u64,
}

/// What a session's connection carries, leader to follower.
#[derive(Clone, Debug)]
enum Down {
    Block(BlockSpan),
    FrameEnd,
    Idle { leader_last: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The leader appends a block.
    LeaderAppends,
    /// The leader's shipper of session `s` looks at its log.
    LeaderShips { session: u64 },
    /// Piece `index` of session `s` reaches the follower.
    Deliver { session: u64 },
    /// An ack of session `s` reaches the leader.
    AckArrives { session: u64, durable: u64 },
    /// The follower's log writer takes the next appended block.
    Taken { epoch: u64 },
    /// The follower's log makes the oldest appended block durable (or fails it).
    Durable { epoch: u64 },
    /// The follower reconnects.
    Reconnect { epoch: u64 },
}

/// The follower's log: durable blocks, then appended ones not yet durable.
#[derive(Default)]
struct FollowerLog {
    durable: Vec<BlockSpan>,
    appended: VecDeque<(BlockSpan, bool)>, // (block, will it fail)
    taken: usize,
}

impl FollowerLog {
    fn last(&self) -> u64 {
        self.appended
            .back()
            .map(|(b, _)| b.last)
            .or(self.durable.last().map(|b| b.last))
            .unwrap_or(0)
    }
    fn durable_last(&self) -> u64 {
        self.durable.last().map_or(0, |b| b.last)
    }
}

struct Sim {
    rng: Rng,
    faults: Faults,
    now: u64,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    leader_log: Vec<BlockSpan>,
    leader_target: usize,
    /// The leader's shipper and its session.
    leader: Option<(u64, LeaderStream, usize)>, // (session, machine, next index in leader_log)
    /// The barrier the leader keeps for the follower: the highest durable tick it was told.
    barrier: u64,
    /// Session number, and the pieces in flight to the follower with their arrival times.
    session: u64,
    down: VecDeque<(u64, Down)>,
    link_free_at: u64,
    /// The follower's machine of its current (or ending) session, and whether that session's
    /// connection is up: an ending session waits until every block it handed to the log is
    /// durable or failed, as the real one does, before the applier reconnects.
    follower: Option<FollowerStream>,
    connected: bool,
    log: FollowerLog,
    /// The follower process's life: bumped by a crash, which voids the log's pending events.
    epoch: u64,
    faults_until: u64,
    checks: u64,
    /// Durable blocks already compared with the leader's.
    checked_durable: usize,
    /// A block held back to be sent after the next one (a swap).
    held_back: Option<BlockSpan>,
    /// Blocks the follower refused as not continuing its log, rightly.
    refused: u64,
}

const CHUNK: usize = 3000;

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let faults = Faults {
            loss: rng.below(100),
            breaks: rng.below(30),
            append_fails: rng.below(20),
            crashes: rng.below(20),
            duplicates: rng.below(20),
            swaps: rng.below(10),
            delay_ms: 1 + rng.below(50),
            jitter_ms: rng.below(20),
        };
        let leader_target = 20 + rng.below(60) as usize;
        let mut sim = Sim {
            rng,
            faults,
            now: 0,
            events: BinaryHeap::new(),
            seq: 0,
            leader_log: Vec::new(),
            leader_target,
            leader: None,
            barrier: 0,
            session: 0,
            down: VecDeque::new(),
            link_free_at: 0,
            follower: None,
            connected: false,
            log: FollowerLog::default(),
            epoch: 0,
            faults_until: 20_000,
            checks: 0,
            checked_durable: 0,
            held_back: None,
            refused: 0,
        };
        sim.at(0, Event::LeaderAppends);
        sim.at(0, Event::Reconnect { epoch: 0 });
        sim
    }

    fn at(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.events
            .push(Reverse((self.now + delay, self.seq, event)));
    }

    fn faulty(&self) -> bool {
        self.now < self.faults_until
    }

    /// Sends a piece down the current session: in order, after the link's delay, later if its
    /// packet is lost and sent again.
    fn send_down(&mut self, piece: Down) {
        let mut delay = self.faults.delay_ms + self.rng.below(self.faults.jitter_ms + 1);
        if self.faulty() && self.rng.chance(self.faults.loss) {
            delay += 200; // a retransmission timeout
        }
        let arrives = (self.now + delay).max(self.link_free_at);
        self.link_free_at = arrives;
        self.down.push_back((arrives, piece));
        let session = self.session;
        self.events
            .push(Reverse((arrives, self.seq + 1, Event::Deliver { session })));
        self.seq += 1;
    }

    /// Sends `block`, or (while faulty) sends it twice, or holds it back to go after the next
    /// one of the frame.
    fn send_block(&mut self, block: BlockSpan) {
        if let Some(held) = self.held_back.take() {
            self.send_down(Down::Block(block));
            self.send_down(Down::Block(held));
            return;
        }
        if self.faulty() {
            if self.rng.chance(self.faults.swaps) {
                self.held_back = Some(block);
                return;
            }
            if self.rng.chance(self.faults.duplicates) {
                self.send_down(Down::Block(block));
            }
        }
        self.send_down(Down::Block(block));
    }

    /// Ends a `Blocks` frame (a block held back for a swap goes last in it).
    fn end_frame(&mut self) {
        if let Some(held) = self.held_back.take() {
            self.send_down(Down::Block(held));
        }
        self.send_down(Down::FrameEnd);
    }

    /// The connection breaks: both ends notice; blocks handed to the log become durable (or
    /// fail) on their own; the follower reconnects after a while.
    fn break_session(&mut self) {
        self.held_back = None;
        self.leader = None;
        self.connected = false;
        self.down.clear();
        let epoch = self.epoch;
        let wait = 100 + self.rng.below(200);
        self.at(wait, Event::Reconnect { epoch });
    }

    /// The follower process dies. What was written but not durable is kept by the kernel (a
    /// process crash) or lost with it (a machine crash); recovery makes what is kept durable.
    fn crash(&mut self) {
        if self.rng.chance(500) {
            let kept: Vec<BlockSpan> = self
                .log
                .appended
                .drain(..)
                .take_while(|(_, fails)| !fails)
                .map(|(b, _)| b)
                .collect();
            self.log.durable.extend(kept);
        }
        self.log.appended.clear();
        self.log.taken = 0;
        self.leader = None;
        self.follower = None;
        self.connected = false;
        self.down.clear();
        self.epoch += 1;
        let epoch = self.epoch;
        let wait = 50 + self.rng.below(200);
        self.at(wait, Event::Reconnect { epoch });
    }

    fn check(&mut self) {
        self.checks += 1;
        // The follower's log is a prefix of the leader's, block for block (checked from where
        // the last check left off: durable blocks never change).
        let held = self.log.durable.len() + self.log.appended.len();
        assert!(
            held <= self.leader_log.len(),
            "the follower holds more blocks than the leader"
        );
        for i in self.checked_durable..self.log.durable.len() {
            assert_eq!(
                self.log.durable[i], self.leader_log[i],
                "block {i} differs from the leader's"
            );
        }
        self.checked_durable = self.log.durable.len();
        let base = self.log.durable.len();
        for (i, (mine, _)) in self.log.appended.iter().enumerate() {
            assert_eq!(
                *mine,
                self.leader_log[base + i],
                "block {} differs from the leader's",
                base + i
            );
        }
        // The leader never believes the follower holds durably more than it does.
        assert!(
            self.barrier <= self.log.durable_last(),
            "the leader's barrier {} is past the follower's durable tick {}",
            self.barrier,
            self.log.durable_last()
        );
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::LeaderAppends => {
                let first = self.leader_log.last().map_or(1, |b| b.last + 1);
                let last = first + self.rng.below(5);
                let bytes = 100 + self.rng.below(2000) as usize;
                self.leader_log.push(BlockSpan { first, last, bytes });
                if self.leader_log.len() < self.leader_target {
                    let next = 1 + self.rng.below(40);
                    self.at(next, Event::LeaderAppends);
                }
                if let Some((session, _, _)) = &self.leader {
                    let session = *session;
                    self.at(0, Event::LeaderShips { session });
                }
            }
            Event::LeaderShips { session } => {
                let Some((current, mut machine, mut next)) = self.leader.take() else {
                    return;
                };
                if current != session {
                    self.leader = Some((current, machine, next));
                    return;
                }
                let leader_last = self.leader_log.last().map_or(0, |b| b.last);
                while let Some(block) = self.leader_log.get(next).copied() {
                    next += 1;
                    let offer = machine.offer(block);
                    if offer == Offer::Skip {
                        continue;
                    }
                    self.send_block(block);
                    if offer == Offer::AddAndSend {
                        self.end_frame();
                        machine.frame_sent();
                    }
                }
                if machine.has_pending() {
                    self.end_frame();
                    machine.frame_sent();
                } else if machine.quiet_for(Duration::from_millis(500)) {
                    self.send_down(Down::Idle { leader_last });
                }
                self.leader = Some((current, machine, next));
                self.at(500, Event::LeaderShips { session });
            }
            Event::Deliver { session } => {
                if session != self.session || !self.connected {
                    return;
                }
                let Some(&(arrives, _)) = self.down.front() else {
                    return;
                };
                if arrives > self.now {
                    return;
                }
                // Flow control: a follower that may not read leaves the piece in the window.
                if !self.follower.as_ref().unwrap().can_receive() {
                    self.at(5, Event::Deliver { session });
                    return;
                }
                let (_, piece) = self.down.pop_front().unwrap();
                if self.faulty() && self.rng.chance(self.faults.breaks) {
                    self.break_session();
                    return;
                }
                let follower = self.follower.as_mut().unwrap();
                let ack = match piece {
                    Down::Block(block) => {
                        let last_stored = follower.last_stored();
                        let placement = match follower.on_block(block) {
                            Ok(placement) => placement,
                            Err(e) => {
                                // Only a block that does not continue the log is refused (one
                                // held already is dropped); the session ends (the real applier
                                // stops or reconnects).
                                assert!(
                                    block.first != last_stored + 1 && block.last > last_stored,
                                    "a block that continues the log, or one held already, was \
                                     refused: {e}"
                                );
                                self.refused += 1;
                                self.break_session();
                                return;
                            }
                        };
                        match placement {
                            Placement::Skip => None,
                            Placement::Begin { .. } => panic!("the log is never empty here"),
                            Placement::Store => {
                                let fails =
                                    self.faulty() && self.rng.chance(self.faults.append_fails);
                                self.log.appended.push_back((block, fails));
                                let epoch = self.epoch;
                                let (t, d) = (1 + self.rng.below(5), 2 + self.rng.below(20));
                                self.at(t, Event::Taken { epoch });
                                self.at(d, Event::Durable { epoch });
                                None
                            }
                        }
                    }
                    Down::FrameEnd => match follower.on_frame_end() {
                        FrameEnd::AckNow(ack) => Some(ack),
                        FrameEnd::Nothing | FrameEnd::AckWhenDurable => None,
                    },
                    Down::Idle { leader_last } => Some(follower.on_idle(leader_last)),
                };
                if let Some(ack) = ack {
                    self.send_ack(ack.0);
                }
                // More may have arrived meanwhile.
                self.at(0, Event::Deliver { session });
            }
            Event::AckArrives { session, durable } => {
                // Acks of an older session may arrive late; only a live session's count.
                if let Some((current, machine, _)) = &mut self.leader {
                    if *current == session {
                        let acked = machine.on_ack(durable);
                        self.barrier = self.barrier.max(acked);
                    }
                }
            }
            Event::Taken { epoch } => {
                if epoch != self.epoch {
                    return;
                }
                if self.log.taken < self.log.appended.len() {
                    self.log.taken += 1;
                    if let Some(f) = self.follower.as_mut() {
                        f.on_taken();
                    }
                }
            }
            Event::Durable { epoch } => {
                if epoch != self.epoch {
                    return;
                }
                if self.faulty() && self.rng.chance(self.faults.crashes) {
                    self.crash();
                    return;
                }
                let Some((block, fails)) = self.log.appended.pop_front() else {
                    return;
                };
                self.log.taken = self.log.taken.saturating_sub(1);
                if fails {
                    // This append and every one queued after it fail (the log stays as it was).
                    let failed = 1 + self.log.appended.len();
                    self.log.appended.clear();
                    self.log.taken = 0;
                    if let Some(f) = self.follower.as_mut() {
                        for _ in 0..failed {
                            assert_eq!(f.on_durable(false), None);
                        }
                        assert_eq!(f.durable(), self.log.durable_last());
                    }
                    // The session ends (a full disk: the applier waits, then reconnects).
                    if self.connected {
                        self.leader = None;
                        self.connected = false;
                        self.down.clear();
                        let epoch = self.epoch;
                        self.at(300, Event::Reconnect { epoch });
                    }
                    return;
                }
                self.log.durable.push(block);
                let ack = self.follower.as_mut().and_then(|f| f.on_durable(true));
                if let Some(f) = &self.follower {
                    assert_eq!(f.durable(), self.log.durable_last());
                }
                if let Some(ack) = ack {
                    self.send_ack(ack.0);
                }
                if !self.log.appended.is_empty() {
                    let epoch = self.epoch;
                    let wait = 1 + self.rng.below(10);
                    self.at(wait, Event::Durable { epoch });
                }
            }
            Event::Reconnect { epoch } => {
                if epoch != self.epoch || self.connected {
                    return;
                }
                if !self.log.appended.is_empty() {
                    // The ending session still waits for its blocks.
                    self.at(10, Event::Reconnect { epoch });
                    return;
                }
                // Ask after what is durable (all of the log now). Now and then the position
                // asked from is older (a restart from an older saved state): the leader sends
                // again blocks the follower holds, which it must skip.
                let durable = self.log.durable_last();
                let from = if self.rng.chance(200) {
                    self.rng.below(durable + 1)
                } else {
                    durable
                };
                self.session += 1;
                self.link_free_at = self.now;
                self.follower = Some(FollowerStream::new(
                    from,
                    self.log.last(),
                    false,
                    durable,
                    4000,
                    6000,
                ));
                self.connected = true;
                let session = self.session;
                self.leader = Some((session, LeaderStream::new(from, CHUNK), 0));
                self.at(self.faults.delay_ms, Event::LeaderShips { session });
            }
        }
    }

    fn send_ack(&mut self, durable: u64) {
        let session = self.session;
        let delay = self.faults.delay_ms + self.rng.below(self.faults.jitter_ms + 1);
        self.at(delay, Event::AckArrives { session, durable });
    }

    /// Runs until nothing is left to happen or `limit` virtual ms pass.
    fn run(&mut self, limit: u64) {
        while let Some(Reverse((time, _, event))) = self.events.pop() {
            if time > limit {
                break;
            }
            self.now = time;
            self.step(event);
            self.check();
        }
    }
}

fn run_seed(seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    sim.run(120_000);
    // Faults stopped at 20 s; by 120 s the follower holds the whole log, durably.
    assert_eq!(
        sim.log.durable, sim.leader_log,
        "seed {seed} ({:?}): the follower did not catch up",
        sim.faults
    );
    sim
}

#[test]
fn thousands_of_seeded_sessions_keep_the_follower_an_exact_prefix() {
    let seeds: u64 = std::env::var("TICKSHIP_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let base: u64 = std::env::var("TICKSHIP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED);
    let started = std::time::Instant::now();
    let (mut checks, mut refused) = (0u64, 0u64);
    for seed in base..base + seeds {
        let sim = run_seed(seed);
        checks += sim.checks;
        refused += sim.refused;
    }
    println!(
        "{seeds} seeds from {base} in {:.2} s ({:.0} seeds/s), {checks} state checks, {refused} \
         blocks rightly refused",
        started.elapsed().as_secs_f64(),
        seeds as f64 / started.elapsed().as_secs_f64()
    );
    assert!(refused > 0, "the link's misbehaviour was never exercised");
}
