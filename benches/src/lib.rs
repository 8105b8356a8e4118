//! Shared helpers for ferry benchmarks.
