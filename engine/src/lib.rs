//! ferry's replication engine.
//!
//! Data flows source → pipeline → session (sender) → QUIC → session
//! (receiver) → standby backend:
//! - [`source`]: where changed extents come from (`ExtentSource`): raw files
//!   and block devices (`source/file.rs` + `source/file/`: state,
//!   fingerprint, scan, analyser), `rbd diff` streams, manifests, buffers.
//! - [`pipeline`]: parallel analyse → compress → checksum of source chunks into
//!   ready-to-send batches, with bounded queues and a memory cap.
//! - [`payload_codec`]: encoding of extents into a batch payload and its
//!   verification (the wire format of messages is `ferry_protocol::codec`).
//! - [`compression`]: piece classification and the zstd on/off switch.
//! - [`session`]: the protocol drivers: the sender (`session/sender.rs`:
//!   planning and the group commit; `sender/links.rs`: the connection;
//!   `sender/image.rs`: one image's epoch) over the I/O-free
//!   [`session::send_window`], and the receiver over the I/O-free
//!   [`session::machine`]; framing; `ferry verify`.
//! - [`standby_backend`]: `Standby` / `EpochSink`, the one interface the
//!   receiver and the agent use, over both standby implementations:
//!   - [`standby`]: the durable, crash-consistent file store
//!     (`standby/store.rs` + `standby/store/`: layout, epoch, commit,
//!     recovery, retention, restore, images; journals, undo logs, state
//!     files, power-loss simulation);
//!   - [`rbd::standby`]: images in an RBD pool, recovery points as snapshots.
//! - [`rbd`]: Ceph RBD: the source (snapshots, `rbd_diff_iterate2`), group
//!   captures, the standby, `rbd diff` import/export.
//! - [`rbddiff`]: Ceph `rbd diff` v1/v2 and `rbd image v2` streams: parser, writer,
//!   export of raw files, atomic import into raw files.
//! - [`hashing`]: BLAKE3 of granules, and what `ferry verify` hashes.
//! - [`transport`], [`identity`]: QUIC endpoints with mutual TLS by fingerprint.
//! - [`qos`]: run-time adjustable bandwidth limits.
//! - [`netsim`]: a seeded UDP impairment proxy (link cuts, loss, delay) for demos and tests.
//! - [`testpoint`]: named hold points end-to-end fault tests hold a process at.
//! - [`rendezvous`] (a batch of blocking jobs meeting before a monitor round),
//!   [`sync_util`] (poison-tolerant `lock`) and [`durable`] (write temp,
//!   fsync, rename, fsync directory): small helpers, `pub` for the agent.
//! - [`sys`]: the only place with `unsafe` (io_uring, fallocate, librbd).
#![deny(unsafe_code)]

pub mod compression;
pub mod durable;
pub mod hashing;
pub mod identity;
pub mod netsim;
pub mod payload_codec;
pub mod pipeline;
pub mod qos;
pub mod rbd;
pub mod rbddiff;
pub mod rendezvous;
pub mod session;
pub mod source;
pub mod standby;
pub mod standby_backend;
pub mod standby_drill;
pub mod sync_util;
pub mod sys;
pub mod testpoint;
pub mod transport;
