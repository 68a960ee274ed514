//! `cargo afl fuzz` target: see `tickship_storage::fuzzing::block`.
fn main() {
    afl::fuzz!(|data: &[u8]| tickship_storage::fuzzing::block(data));
}
