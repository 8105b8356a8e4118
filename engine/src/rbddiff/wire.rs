//! The fixed vocabulary of `rbd diff` and `rbd image v2` streams: banners,
//! record tags and size limits, shared by the parser and the writer (and
//! re-exported from [`super`]).

/// `rbd export-diff` banner (diff format v1).
pub const BANNER_DIFF_V1: &[u8] = b"rbd diff v1\n";
/// Banner of one diff in format v2 (inside an `rbd image v2` stream).
pub const BANNER_DIFF_V2: &[u8] = b"rbd diff v2\n";
/// `rbd export --export-format 2` banner.
pub const BANNER_IMAGE_V2: &[u8] = b"rbd image v2\n";
/// Banner between the image properties and the diffs of an image v2 stream.
pub const BANNER_IMAGE_DIFFS_V2: &[u8] = b"rbd image diffs v2\n";

/// Record tags of a diff.
pub mod tag {
    /// From-snapshot name.
    pub const FROM_SNAP: u8 = b'f';
    /// To-snapshot name.
    pub const TO_SNAP: u8 = b't';
    /// Image size at the end of the diff.
    pub const SIZE: u8 = b's';
    /// Data write.
    pub const WRITE: u8 = b'w';
    /// Zeroed (discarded) range.
    pub const ZERO: u8 = b'z';
    /// End of the diff.
    pub const END: u8 = b'e';
    /// Snapshot protection status (v2 only).
    pub const PROTECTED: u8 = b'p';
    /// Image property: object order.
    pub const IMAGE_ORDER: u8 = b'O';
    /// Image property: feature bits.
    pub const IMAGE_FEATURES: u8 = b'T';
    /// Image property: stripe unit.
    pub const IMAGE_STRIPE_UNIT: u8 = b'U';
    /// Image property: stripe count.
    pub const IMAGE_STRIPE_COUNT: u8 = b'C';
    /// Image property: one metadata key/value pair.
    pub const IMAGE_META: u8 = b'M';
    /// End of the image properties.
    pub const IMAGE_END: u8 = b'E';
}

/// Longest snapshot name accepted (the limit `rbd import-diff` applies).
pub const MAX_SNAP_NAME: usize = 4096;
/// Longest image metadata record (`M`) accepted, in bytes.
pub const MAX_META_RECORD: u64 = 1 << 20;
