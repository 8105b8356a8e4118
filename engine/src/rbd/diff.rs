//! `rbd diff` streams from and into RBD images: what `ferry export-diff
//! rbd:…` and `ferry import-diff … rbd:…` run.
//!
//! Export lists the extents with `rbd_diff_iterate2` (exactly what `rbd
//! export-diff` does) and reads them with several requests in flight.
//!
//! Import is all-or-nothing: before touching an existing image it takes a
//! snapshot `ferry-import-undo-<ms>`; any error (malformed or truncated
//! stream, a write past the declared size, a cluster error) rolls the image
//! back to it, and a target the import created is removed again. The undo
//! snapshot is removed at the end either way. Like `rbd import-diff`, the
//! stream's from-snapshot must exist on the target (unless the check is
//! off) and its to-snapshot is created.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::Arc;

use tracing::{info, warn};

use super::{unix_ms, ClusterSpec, RbdError, RbdSpec};
use crate::rbddiff::export::{Emitter, ExportError, ExportFormat, ExportOptions, ExportReport};
use crate::rbddiff::import::ImportReport;
use crate::rbddiff::parser::Event;
use crate::rbddiff::reader::{ReadError, Reader};
use crate::sys::librbd::{Aio, CephError, CreateOptions, Image};

/// Largest single read while exporting.
const READ_PIECE: u64 = 4 << 20;
/// Reads in flight while exporting.
const READS_IN_FLIGHT: usize = 32;
/// Writes in flight while importing.
const WRITES_IN_FLIGHT: usize = 64;

/// Why an RBD export or import failed.
#[derive(Debug, thiserror::Error)]
pub enum RbdDiffError {
    /// The cluster refused something.
    #[error(transparent)]
    Rbd(#[from] RbdError),
    /// Writing the stream failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The stream is malformed or unreadable; the target was restored.
    #[error("invalid diff {input}; {target} left as it was before the import")]
    Diff {
        /// The diff ("-" for stdin).
        input: String,
        /// The target.
        target: String,
        /// The problem, with its stream offset.
        #[source]
        source: ReadError,
    },
    /// The stream does not fit the target.
    #[error("{target}: {reason}; nothing was changed")]
    Refused {
        /// The target.
        target: String,
        /// Why.
        reason: String,
    },
    /// Applying failed and restoring the target failed too.
    #[error("{target}: the import failed ({cause}) and rolling back to snapshot {undo_snap} failed too; roll back by hand with `rbd snap rollback`")]
    RollbackFailed {
        /// The target.
        target: String,
        /// The first failure.
        cause: String,
        /// The undo snapshot left in place.
        undo_snap: String,
        /// The rollback failure.
        #[source]
        source: CephError,
    },
}

fn ceph(e: CephError) -> RbdDiffError {
    RbdDiffError::Rbd(RbdError::Ceph(e))
}

/// Writes the changes of `spec` (at its snapshot, else its head) since
/// `from_snap` (everything allocated when `None`) to `out`.
pub fn export_rbd<W: Write>(
    cluster: &ClusterSpec,
    spec: &RbdSpec,
    from_snap: Option<&str>,
    format: ExportFormat,
    out: W,
) -> Result<ExportReport, RbdDiffError> {
    if from_snap.is_some() && format == ExportFormat::ImageV2 {
        return Err(RbdDiffError::Refused {
            target: spec.to_string(),
            reason: "an rbd image v2 export holds a whole image; it cannot start at --from-snap"
                .into(),
        });
    }
    let pool = spec.open_pool(cluster)?;
    let image = Arc::new(
        pool.open_read_only(&spec.image, spec.snap.as_deref())
            .map_err(ceph)?,
    );
    let size = image.size().map_err(ceph)?;
    let opts = ExportOptions {
        from_file: None,
        from_snap: from_snap.map(str::to_owned),
        to_snap: spec.snap.clone(),
        format,
    };
    let mut em = Emitter::start(out, &opts, size)?;
    let mut extents: Vec<(u64, u64, bool)> = Vec::new();
    const WINDOW: u64 = 1 << 30;
    let mut window = 0;
    while window < size {
        let len = WINDOW.min(size - window);
        extents.clear();
        image
            .diff_iterate(from_snap, window, len, false, &mut |o, l, e| {
                extents.push((o, l, e));
                true
            })
            .map_err(ceph)?;
        let mut pending: VecDeque<(u64, Option<Aio>, u64)> = VecDeque::new();
        let mut iter = extents.iter().flat_map(|&(offset, len, exists)| {
            let pieces = if exists { len.div_ceil(READ_PIECE) } else { 1 };
            (0..pieces).map(move |i| {
                let start = offset + i * READ_PIECE;
                let piece = if exists {
                    READ_PIECE.min(offset + len - start)
                } else {
                    len
                };
                (start, piece, exists)
            })
        });
        loop {
            while pending.len() < READS_IN_FLIGHT {
                let Some((offset, len, exists)) = iter.next() else {
                    break;
                };
                let read = if exists {
                    Some(image.aio_read(offset, len as usize).map_err(ceph)?)
                } else {
                    None
                };
                pending.push_back((offset, read, len));
            }
            let Some((offset, read, len)) = pending.pop_front() else {
                break;
            };
            match read {
                Some(aio) => {
                    let data = aio.wait().map_err(ceph)?.unwrap_or_default();
                    em.data(offset, &data)?;
                }
                None => em.zero(offset, offset + len)?,
            }
        }
        window += len;
    }
    Ok(em.finish()?)
}

/// Options of an RBD import.
#[derive(Debug, Clone, Copy)]
pub struct RbdImportOptions {
    /// Require the stream's from-snapshot to exist on the target.
    pub check_snapshots: bool,
    /// Create the target when it does not exist.
    pub create: bool,
}

/// Applies the diff stream `input` (named `input_name` in messages) to the
/// RBD image `spec`; all or nothing (see the module docs).
pub fn import_rbd(
    cluster: &ClusterSpec,
    spec: &RbdSpec,
    input: &mut dyn Read,
    input_name: &str,
    options: RbdImportOptions,
) -> Result<ImportReport, RbdDiffError> {
    let target = spec.to_string();
    if spec.snap.is_some() {
        return Err(RbdDiffError::Refused {
            target,
            reason: "import into an image, not a snapshot".into(),
        });
    }
    let pool = spec.open_pool(cluster)?;
    let mut reader = Reader::new(input);
    let diff_error = |source: ReadError| RbdDiffError::Diff {
        input: input_name.to_owned(),
        target: target.clone(),
        source,
    };
    // Read up to the first size record before touching anything.
    let mut report = ImportReport::default();
    let mut head_events = Vec::new();
    loop {
        let Some(piece) = reader.next_piece().map_err(&diff_error)? else {
            return Err(RbdDiffError::Refused {
                target,
                reason: "the stream has no size record".into(),
            });
        };
        let event = piece.event.clone();
        let is_size = matches!(event, Event::Size(_));
        head_events.push(event);
        if is_size {
            break;
        }
    }
    for event in &head_events {
        match event {
            Event::Banner(format) => report.format = format.to_string(),
            Event::FromSnap(s) => report.from_snap = Some(s.clone()),
            Event::ToSnap(s) => report.to_snap = Some(s.clone()),
            Event::Size(s) => report.new_size = *s,
            _ => {}
        }
    }
    let (image, created) = match pool.open(&spec.image) {
        Ok(image) => (Arc::new(image), false),
        Err(e) if e.is_not_found() && options.create => {
            if report.from_snap.is_some() && options.check_snapshots {
                return Err(RbdDiffError::Refused {
                    target,
                    reason: format!(
                        "the diff starts at snapshot {:?} but the image does not exist",
                        report.from_snap
                    ),
                });
            }
            pool.create_image(&spec.image, report.new_size, CreateOptions::default())
                .map_err(ceph)?;
            (Arc::new(pool.open(&spec.image).map_err(ceph)?), true)
        }
        Err(e) => return Err(ceph(e)),
    };
    report.created = created;
    if !created {
        report.old_size = Some(image.size().map_err(ceph)?);
        if let (Some(from), true) = (&report.from_snap, options.check_snapshots) {
            if !image.snap_exists(from).map_err(ceph)? {
                return Err(RbdDiffError::Refused {
                    target,
                    reason: format!(
                        "the diff starts at snapshot {from:?}, which the image does not have"
                    ),
                });
            }
        }
    }
    if let Some(to) = &report.to_snap {
        if !created && image.snap_exists(to).map_err(ceph)? {
            return Err(RbdDiffError::Refused {
                target,
                reason: format!("snapshot {to:?} already exists"),
            });
        }
    }
    let undo_snap = format!("ferry-import-undo-{}", unix_ms());
    if !created {
        image.snap_create(&undo_snap).map_err(ceph)?;
    }
    let applied = apply(&image, &mut reader, &mut report).and_then(|()| {
        if let Some(to) = &report.to_snap {
            image.snap_create(to).map_err(ceph)?;
        }
        Ok(())
    });
    match applied {
        Ok(()) => {
            if !created {
                if let Err(error) = image.snap_remove(&undo_snap) {
                    warn!(image = %target, snap = %undo_snap, %error, "could not remove the import's undo snapshot");
                }
            }
            info!(image = %target, records = report.records, "imported diff");
            Ok(report)
        }
        Err(e) => {
            let e = match e {
                RbdDiffError::Diff { source, .. } => diff_error(source),
                other => other,
            };
            if created {
                drop(image);
                if let Err(error) = pool.remove_image(&spec.image) {
                    warn!(image = %target, %error, "could not remove the image the failed import created");
                }
            } else {
                let restored = image
                    .snap_rollback(&undo_snap)
                    .and_then(|()| image.flush())
                    .and_then(|()| image.snap_remove(&undo_snap));
                if let Err(source) = restored {
                    return Err(RbdDiffError::RollbackFailed {
                        target,
                        cause: e.to_string(),
                        undo_snap,
                        source,
                    });
                }
            }
            Err(e)
        }
    }
}

fn apply<R: Read>(
    image: &Arc<Image>,
    reader: &mut Reader<R>,
    report: &mut ImportReport,
) -> Result<(), RbdDiffError> {
    let diff = |source| RbdDiffError::Diff {
        input: String::new(),
        target: String::new(),
        source,
    };
    let mut in_flight: VecDeque<Aio> = VecDeque::new();
    let mut size = image.size().map_err(ceph)?;
    if size != report.new_size {
        image.resize(report.new_size).map_err(ceph)?;
        size = report.new_size;
    }
    while let Some(piece) = reader.next_piece().map_err(diff)? {
        match *piece.event {
            Event::Size(new) => {
                while let Some(op) = in_flight.pop_front() {
                    op.wait().map_err(ceph)?;
                }
                if new != size {
                    image.resize(new).map_err(ceph)?;
                    size = new;
                }
                report.new_size = new;
            }
            Event::Data { offset, len } => {
                let data = bytes::Bytes::copy_from_slice(&piece.data[..len]);
                in_flight.push_back(image.aio_write(offset, data).map_err(ceph)?);
                report.bytes_written += len as u64;
            }
            Event::Write { .. } => report.records += 1,
            Event::Zero { offset, length } => {
                let end = (offset + length).min(size);
                if end > offset {
                    // Not aio_discard: librbd skips partial-object discards
                    // (rbd_skip_partial_discard), which would leave old data.
                    let len = usize::try_from(end - offset).unwrap_or(usize::MAX);
                    in_flight.push_back(image.aio_write_zeroes(offset, len).map_err(ceph)?);
                }
                report.records += 1;
                report.bytes_zeroed += length;
            }
            Event::DiffBegin { .. } => report.diffs += 1,
            Event::ToSnap(ref s) => report.to_snap = Some(s.clone()),
            Event::Unknown { .. } => report.unknown_records += 1,
            _ => {}
        }
        while in_flight.len() > WRITES_IN_FLIGHT {
            if let Some(op) = in_flight.pop_front() {
                op.wait().map_err(ceph)?;
            }
        }
    }
    while let Some(op) = in_flight.pop_front() {
        op.wait().map_err(ceph)?;
    }
    report.diffs = report.diffs.max(1);
    image.flush().map_err(ceph)
}
