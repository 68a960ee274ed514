//! `cargo afl fuzz` target: see `tickship_net::fuzzing::frames`.
fn main() {
    afl::fuzz!(|data: &[u8]| tickship_net::fuzzing::frames(data));
}
