//! Holds the criterion benchmarks of `benches/*.rs`; no library code.
