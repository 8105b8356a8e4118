//! Per-image coordination shared by the store and its epoch writers: an
//! operation mutex (held by `open_epoch`, `commit`, `restore`, `hash_range`
//! and recovery) and a small metadata mutex the writer updates on `sync`.

use std::sync::Mutex;

use ferry_protocol::types::ImageName;

use super::PendingEpoch;

/// Per-image coordination.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) image: ImageName,
    /// Serialises operations that read or change the image's files.
    pub(crate) op: Mutex<()>,
    /// Quick state shared with the writer.
    pub(crate) meta: Mutex<SlotMeta>,
}

/// What a slot knows without touching the disk.
#[derive(Debug, Default)]
pub(crate) struct SlotMeta {
    /// An [`EpochWriter`](super::EpochWriter) exists for the image.
    pub writer_active: bool,
    /// Durable summary of the pending epoch.
    pub pending: Option<PendingEpoch>,
    /// Fenced for a failover (also recorded in the state file): a writer
    /// stages nothing more, so it ends and lets the failover go on.
    pub fenced: bool,
}
