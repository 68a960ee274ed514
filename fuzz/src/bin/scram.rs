//! `cargo afl fuzz` target: see `tickship_net::fuzzing::scram`.
fn main() {
    afl::fuzz!(|data: &[u8]| tickship_net::fuzzing::scram(data));
}
