//! Entry points of the fuzz targets (`fuzz/`, `scripts/fuzz`), also replayed over the saved
//! corpus by `tests/fuzz_corpus_replays.rs`. Each takes arbitrary bytes, as a peer may send them,
//! and must return without panicking, hanging or allocating without bound.

use crate::frame::{split_blocks, Decoder, Frame, Kind, Piece, BLOCKS_BYTES_MAX};
use crate::message::{Ack, Challenge, Close, Control, Hello, Idle, Proof, Tail, Welcome};
use std::sync::OnceLock;

use crate::scram::{salted_password, ScramClient, ScramServer, StoredCredential, MIN_ITERATIONS};

/// A byte stream from a peer: fed to the frame decoder in pieces of 1 to 128 bytes (first input
/// byte), streaming blocks or not, and each whole frame decoded as the message of its kind.
pub fn frames(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new(BLOCKS_BYTES_MAX);
    if mode & 1 == 1 {
        decoder.streaming_blocks();
    }
    for piece in rest.chunks(usize::from(mode >> 1) + 1) {
        decoder.push(piece);
        loop {
            match decoder.next_piece() {
                Ok(Some(Piece::Frame(frame))) => message(&frame),
                Ok(Some(Piece::Block { .. })) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn message(frame: &Frame) {
    match frame.kind {
        Kind::Hello => drop(Hello::from_frame(frame)),
        Kind::Challenge => drop(Challenge::from_frame(frame)),
        Kind::Proof => drop(Proof::from_frame(frame)),
        Kind::Welcome => drop(Welcome::from_frame(frame)),
        Kind::Tail => drop(Tail::from_frame(frame)),
        Kind::Blocks => drop(split_blocks(frame.payload.clone())),
        Kind::Idle => drop(Idle::from_frame(frame)),
        Kind::Ack => drop(Ack::from_frame(frame)),
        Kind::Close => drop(Close::from_frame(frame)),
    }
}

/// Both sides of a SCRAM exchange against a peer that says anything. The input is up to three
/// messages split at zero bytes. The leader's side reads them as client-first and client-final
/// (for user `root`, whose credential it knows); the follower's side reads them as server-first
/// and server-final.
pub fn scram(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0).map(String::from_utf8_lossy);
    let (first, second) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    // Fixed nonces ("c" and "s"), so that the fuzzer can echo them and get to the proofs.
    static CREDENTIAL: OnceLock<StoredCredential> = OnceLock::new();
    let credential = CREDENTIAL.get_or_init(|| {
        let salt = b"fuzzing-salt".to_vec();
        StoredCredential {
            salted_password: salted_password("secret", &salt, MIN_ITERATIONS),
            salt,
            iterations: MIN_ITERATIONS,
        }
    });
    let lookup = |name: &str| (name == "root").then(|| credential.clone());
    if let Ok(server) = ScramServer::start_with_nonce(&first, lookup, "s") {
        let _ = server.finish(&second, &[7; 32]);
    }
    let mut client = ScramClient::with_nonce("root", "secret", "c".into());
    if client.client_final(&first, &[7; 32]).is_ok() {
        let _ = client.verify_server_final(&second);
    }
}
