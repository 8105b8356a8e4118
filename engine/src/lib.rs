//! ferry's replication engine.
//!
//! Data flows source → pipeline → session (sender) → QUIC → session
//! (receiver) → standby store:
//! - [`source`]: where changed extents come from (`ExtentSource`; file backend now).
//! - [`pipeline`]: parallel analyse → compress → checksum of source chunks into
//!   ready-to-send batches, with bounded queues and a memory cap.
//! - [`codec`]: encoding of extents into a batch payload and its verification.
//! - [`standby`]: the durable, crash-consistent store of standby images.
//! - [`transport`], [`identity`]: QUIC endpoints with mutual TLS by fingerprint.
//! - [`session`]: the sender and receiver protocol drivers.
//! - [`qos`]: run-time adjustable bandwidth limits.
//! - [`netsim`]: a seeded UDP impairment proxy (link cuts, loss, delay) for demos and tests.
//! - [`rbddiff`]: Ceph `rbd diff` v1/v2 and `rbd image v2` streams: parser, writer,
//!   export of raw files, atomic import into raw files.
//! - [`testpoint`]: named hold points end-to-end fault tests hold a process at.
//! - [`sys`]: the only place with `unsafe` (io_uring, fallocate).
#![deny(unsafe_code)]

pub mod codec;
pub mod compression;
pub mod durable;
pub mod hashing;
pub mod identity;
pub mod netsim;
pub mod pipeline;
pub mod qos;
pub mod rbd;
pub mod rbddiff;
pub mod session;
pub mod source;
pub mod standby;
pub mod sync_util;
pub mod sys;
pub mod testpoint;
pub mod transport;
