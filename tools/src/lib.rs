//! Shared parts of tickship's tools. The document generator lives in the product (the demo uses
//! it); it is re-exported here for the tools and benchmarks.

pub use tickship::docgen;
