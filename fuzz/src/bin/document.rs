//! `cargo afl fuzz` target: see `tickship::fuzzing::document_body`.
fn main() {
    afl::fuzz!(|data: &[u8]| tickship::fuzzing::document_body(data));
}
