//! Interop with Ceph's `rbd` diff formats: a sans-IO streaming parser
//! ([`parser`]), a blocking reader on top of it ([`reader`]), a writer
//! ([`writer`]), export of raw image files as diffs ([`export`]) and an
//! atomic, crash-safe import of diffs into raw image files ([`import`],
//! backed by the undo journal in [`undo`]).
//!
//! The formats (Ceph `doc/dev/rbd-diff.rst`, `src/tools/rbd/action/Export.cc`
//! and `Import.cc`, checked against `rbd` 16.2.15):
//!
//! - `"rbd diff v1\n"` (what `rbd export-diff` writes): records of one tag
//!   byte followed by a tag-specific body — `f` from-snap (le32 length +
//!   name), `t` to-snap (same), `s` image size (le64), `w` write (le64
//!   offset, le64 length, data), `z` zero/discard (le64 offset, le64 length),
//!   `e` end (no body). Metadata (`f`, `t`, `s`) comes before data (`w`, `z`).
//! - `"rbd diff v2\n"`: the same records, but every tag except `e` is followed
//!   by an le64 "length of the appending data", so unknown tags can be
//!   skipped. v2 adds `p` (snapshot protected, one byte). `rbd` 16.2 declares
//!   the `p` length as 8 although it writes one byte; `rbd` itself ignores the
//!   declared length of known tags and reads the fixed body, and so does
//!   this parser (it accepts 1 or 8 for `p`).
//! - `"rbd image v2\n"` (what `rbd export --export-format 2` writes): image
//!   properties with v2 framing (`O` order, `T` features, `U` stripe unit,
//!   `C` stripe count, `M` key/value metadata), `E` (no length), then
//!   `"rbd image diffs v2\n"`, an le64 diff count and that many v2 diffs,
//!   each starting with its own `"rbd diff v2\n"` banner.

pub mod export;
pub mod import;
pub mod parser;
pub mod reader;
pub mod undo;
mod wire;
pub mod writer;

pub use parser::{Event, Format, ImageProperty, ParseError, Parser, Step};
pub use reader::{Piece, ReadError, Reader};
pub use wire::{
    tag, BANNER_DIFF_V1, BANNER_DIFF_V2, BANNER_IMAGE_DIFFS_V2, BANNER_IMAGE_V2, MAX_META_RECORD,
    MAX_SNAP_NAME,
};
pub use writer::{
    write_image_v2_header, write_image_v2_header_raw, DiffWriter, ImageProperties, WriteError,
};

/// Whether every byte of `bytes` is zero.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(16);
    let words_zero = chunks.by_ref().all(|c| {
        let mut word = [0u8; 16];
        word.copy_from_slice(c);
        u128::from_ne_bytes(word) == 0
    });
    words_zero && chunks.remainder().iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests;
