//! Shared parts of tickship's tools: the document generator the load tools and benchmarks use.

pub mod docgen;
