//! Claim: a block from a leader is stored byte for byte with the leader's ticks; blocks that do
//! not follow the log are refused without changing it; a follower's log may start at any tick
//! (after a snapshot) and resumes after a reopen.

mod common;

use bytes::Bytes;
use common::{append_documents, engines, options};
use tickship_storage::wal::{Block, Record};
use tickship_storage::{Error, Tick, Wal};

fn leader_blocks(leader: &Wal, after: Tick) -> Vec<Block> {
    let mut reader = leader.reader_after(after).expect("reader");
    let mut blocks = Vec::new();
    while let Some(block) = reader.next_block().expect("read") {
        blocks.push(block);
    }
    blocks
}

#[test]
fn blocks_are_stored_verbatim() {
    for engine in engines() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let follower_dir = tempfile::tempdir().expect("tempdir");
        let leader = Wal::open(leader_dir.path(), options(engine)).expect("leader");
        append_documents(&leader, 1, 200, 1000);
        let blocks = leader_blocks(&leader, Tick::ZERO);
        {
            let follower = Wal::open(follower_dir.path(), options(engine)).expect("follower");
            for block in &blocks[..120] {
                let ticks = follower
                    .submit_block(block.clone())
                    .expect("submit")
                    .wait()
                    .expect("durable");
                assert_eq!(ticks, block.ticks());
            }
        }
        let follower = Wal::open(follower_dir.path(), options(engine)).expect("follower reopened");
        let resume = follower.last_tick();
        assert_eq!(resume, blocks[119].ticks().last);
        for block in leader_blocks(&leader, resume) {
            follower
                .submit_block(block)
                .expect("submit")
                .wait()
                .expect("durable");
        }
        assert_eq!(follower.last_tick(), leader.last_tick());
        let copied = leader_blocks(&follower, Tick::ZERO);
        assert_eq!(copied.len(), blocks.len());
        for (a, b) in blocks.iter().zip(&copied) {
            assert_eq!(a.bytes(), b.bytes(), "{engine}: byte for byte");
        }
        // A block that does not follow the log changes nothing.
        let stale = blocks[10].clone();
        let error = follower
            .submit_block(stale)
            .expect("queued")
            .wait()
            .expect_err("refused");
        assert!(matches!(error, Error::TickOrder { .. }), "{error}");
        assert_eq!(follower.last_tick(), leader.last_tick());
        // The follower's own appends continue from the leader's ticks (after a promotion).
        let own = follower
            .append(&[Record::put("_system", "c", "k", b"{}")])
            .expect("append");
        assert_eq!(own.first, leader.last_tick().checked_next().expect("next"));
    }
}

#[test]
fn follower_log_may_start_after_a_snapshot_tick() {
    for engine in engines() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let follower_dir = tempfile::tempdir().expect("tempdir");
        let leader = Wal::open(leader_dir.path(), options(engine)).expect("leader");
        append_documents(&leader, 1, 50, 300);
        // The follower was initialised from a snapshot at tick 30: it takes the blocks after it.
        let follower = Wal::open(follower_dir.path(), options(engine)).expect("follower");
        for block in leader_blocks(&leader, Tick::new(30)) {
            follower
                .submit_block(block)
                .expect("submit")
                .wait()
                .expect("durable");
        }
        assert_eq!(follower.first_tick(), Some(Tick::new(31)));
        assert_eq!(follower.last_tick(), Tick::new(50));
        assert!(matches!(
            follower.reader_after(Tick::new(29)),
            Err(Error::TickCompacted(_))
        ));
        assert_eq!(common::read_all(&follower, Tick::new(30)).len(), 20);
        drop(follower);
        let follower = Wal::open(follower_dir.path(), options(engine)).expect("reopen");
        assert_eq!(follower.first_tick(), Some(Tick::new(31)));
    }
}

#[test]
fn damaged_blocks_from_a_peer_are_refused() {
    for engine in engines() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let leader = Wal::open(leader_dir.path(), options(engine)).expect("leader");
        append_documents(&leader, 1, 3, 300);
        let block = leader_blocks(&leader, Tick::ZERO).remove(1);
        let mut bytes = block.bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            Block::parse(Bytes::from(bytes.clone())),
            Err(Error::InvalidBlock(_))
        ));
        assert!(matches!(
            Block::parse(Bytes::from(bytes[..20].to_vec())),
            Err(Error::InvalidBlock(_))
        ));
        assert!(Block::parse(block.bytes().clone()).is_ok());
    }
}
