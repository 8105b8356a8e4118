//! Bandwidth limits (token buckets) that can change while a transfer runs.
