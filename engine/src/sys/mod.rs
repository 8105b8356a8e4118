//! The engine's only `unsafe` code: thin, documented wrappers over io_uring
//! and Linux file-system calls, each exposing a safe API.
#![allow(unsafe_code)]

pub mod fs;
pub mod librados;
pub mod librbd;
pub mod uring;
