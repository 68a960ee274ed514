//! `cargo afl fuzz` target: see `tickship_storage::fuzzing::segment`.
fn main() {
    afl::fuzz!(|data: &[u8]| tickship_storage::fuzzing::segment(data));
}
