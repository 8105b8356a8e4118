//! ferry's agent: daemon, control surface and CLI plumbing.
#![forbid(unsafe_code)]
