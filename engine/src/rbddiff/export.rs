//! `export-diff` of raw image files (or block devices) as rbd diffs.
//!
//! A file has no snapshots, so the two modes are:
//! - whole image (no `from_file`): every non-zero 4 KiB-aligned run becomes a
//!   `w` record and every zero run (holes included) a `z` record, so applying
//!   the diff to any image of any content reproduces the source exactly;
//! - against an older copy (`from_file`): only 4 KiB blocks that differ are
//!   emitted, as `w` (new content not zero) or `z` (new content zero); bytes
//!   past the older copy's end count as zero.
//!
//! Data records never cross a 4 MiB boundary (rbd's default object size), so
//! memory stays at two 4 MiB buffers. Holes are skipped with `SEEK_DATA`
//! without reading them. Snapshot names for the `f`/`t` records are labels the
//! caller chooses; the source must not change while it is exported.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::parser::Format;
use super::undo::{is_block_device, target_len};
use super::writer::{write_image_v2_header, DiffWriter, ImageProperties, WriteError};
use crate::sys::fs::seek_data;

/// Comparison granularity.
pub const BLOCK: u64 = 4096;
/// Read size; data records never cross a multiple of it.
pub const CHUNK: u64 = 4 << 20;

/// Which stream to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportFormat {
    /// `rbd diff v1` (`rbd export-diff`, `rbd import-diff`).
    #[default]
    DiffV1,
    /// `rbd image v2` holding one v2 diff (`rbd import --export-format 2`).
    ImageV2,
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Older copy of the image: export only what changed since it.
    pub from_file: Option<PathBuf>,
    /// Name written in the `f` record.
    pub from_snap: Option<String>,
    /// Name written in the `t` record.
    pub to_snap: Option<String>,
    /// Output format.
    pub format: ExportFormat,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportReport {
    /// Image size (the `s` record).
    pub size: u64,
    /// Payload bytes in `w` records.
    pub bytes_data: u64,
    /// Bytes covered by `z` records.
    pub bytes_zero: u64,
    /// `w` plus `z` records.
    pub records: u64,
    /// Stream bytes written.
    pub stream_bytes: u64,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading an image failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the stream failed.
    #[error("writing the diff")]
    Write(#[from] WriteError),
    /// Options that make no sense together.
    #[error("{0}")]
    Invalid(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExportError + 'a {
    move |source| ExportError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Counts bytes passing through to the output.
pub(crate) struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Image {
    file: File,
    path: PathBuf,
    size: u64,
    sparse: bool,
}

impl Image {
    fn open(path: &Path) -> Result<Self, ExportError> {
        let file = File::open(path).map_err(io_err("opening", path))?;
        let size = target_len(&file).map_err(io_err("sizing", path))?;
        let sparse = !is_block_device(&file).map_err(io_err("inspecting", path))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
            sparse,
        })
    }

    /// Next offset at or after `pos` that may hold data (`size` if none).
    fn next_data(&self, pos: u64) -> Result<u64, ExportError> {
        if pos >= self.size {
            return Ok(u64::MAX);
        }
        if !self.sparse {
            return Ok(pos);
        }
        Ok(seek_data(&self.file, pos)
            .map_err(io_err("seeking data in", &self.path))?
            .unwrap_or(u64::MAX))
    }

    /// Reads `[pos, pos+buf.len())`, zero past the end.
    fn read(&self, buf: &mut [u8], pos: u64) -> Result<(), ExportError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = pos + done as u64;
            if at >= self.size {
                break;
            }
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("reading", &self.path)(e)),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }
}

/// Emits records, merging adjacent zero ranges.
pub(crate) struct Emitter<W: Write> {
    w: DiffWriter<Counting<W>>,
    zero: Option<(u64, u64)>,
    report: ExportReport,
}

impl<W: Write> Emitter<W> {
    /// Writes the stream's header records (banner, image v2 header, `f`,
    /// `t`, `s`) for an image of `size` bytes.
    pub(crate) fn start(out: W, opts: &ExportOptions, size: u64) -> Result<Self, ExportError> {
        let mut counting = Counting {
            inner: out,
            count: 0,
        };
        let format = match opts.format {
            ExportFormat::DiffV1 => Format::DiffV1,
            ExportFormat::ImageV2 => {
                write_image_v2_header(&mut counting, &ImageProperties::default(), 1)?;
                Format::DiffV2
            }
        };
        let mut w = DiffWriter::new(counting, format)?;
        if let Some(f) = &opts.from_snap {
            w.from_snap(f)?;
        }
        if let Some(t) = &opts.to_snap {
            w.to_snap(t)?;
            if format == Format::DiffV2 {
                w.protected(false)?;
            }
        }
        w.size(size)?;
        Ok(Self {
            w,
            zero: None,
            report: ExportReport {
                size,
                ..ExportReport::default()
            },
        })
    }

    /// Ends the stream; returns what was written.
    pub(crate) fn finish(mut self) -> Result<ExportReport, ExportError> {
        self.flush_zero()?;
        let mut report = self.report;
        let counting = self.w.end()?;
        report.stream_bytes = counting.count;
        Ok(report)
    }

    pub(crate) fn zero(&mut self, start: u64, end: u64) -> Result<(), ExportError> {
        match &mut self.zero {
            Some((_, e)) if *e == start => *e = end,
            _ => {
                self.flush_zero()?;
                self.zero = Some((start, end));
            }
        }
        Ok(())
    }

    pub(crate) fn flush_zero(&mut self) -> Result<(), ExportError> {
        if let Some((s, e)) = self.zero.take() {
            self.w.zero(s, e - s)?;
            self.report.records += 1;
            self.report.bytes_zero += e - s;
        }
        Ok(())
    }

    pub(crate) fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<(), ExportError> {
        self.flush_zero()?;
        self.w.write(offset, bytes)?;
        self.report.records += 1;
        self.report.bytes_data += bytes.len() as u64;
        Ok(())
    }
}

/// Writes `source` (or its changes since `opts.from_file`) to `out` as a
/// diff; see the module docs.
pub fn export_diff<W: Write>(
    source: &Path,
    opts: &ExportOptions,
    out: W,
) -> Result<ExportReport, ExportError> {
    if opts.from_file.is_some() && opts.format == ExportFormat::ImageV2 {
        return Err(ExportError::Invalid(
            "an rbd image v2 export holds a whole image; it cannot be relative to --from-file"
                .into(),
        ));
    }
    let new = Image::open(source)?;
    let old = opts.from_file.as_deref().map(Image::open).transpose()?;
    let mut em = Emitter::start(out, opts, new.size)?;
    // Buffers are allocated only for the chunk size actually needed.
    let chunk_len = CHUNK.min(new.size.max(BLOCK)) as usize;
    let mut buf_new = vec![0u8; chunk_len];
    let mut buf_old = if old.is_some() {
        vec![0u8; chunk_len]
    } else {
        Vec::new()
    };
    let mut pos = 0u64;
    while pos < new.size {
        // Skip what is a hole in both images.
        let mut next = new.next_data(pos)?;
        if let Some(o) = &old {
            next = next.min(o.next_data(pos)?);
        }
        let next = (next.min(new.size) / BLOCK * BLOCK).max(pos);
        if next > pos {
            if old.is_none() {
                em.zero(pos, next)?;
            } else {
                em.flush_zero()?;
            }
            pos = next;
            continue;
        }
        let chunk_end = ((pos / CHUNK + 1) * CHUNK).min(new.size);
        let n = (chunk_end - pos) as usize;
        new.read(&mut buf_new[..n], pos)?;
        if let Some(o) = &old {
            o.read(&mut buf_old[..n], pos)?;
        }
        // (start, end) of the data run being gathered, as buffer indices.
        let mut run: Option<(usize, usize)> = None;
        let mut i = 0usize;
        while i < n {
            let j = (i + BLOCK as usize).min(n);
            let block = &buf_new[i..j];
            let differs = old.is_none() || block != &buf_old[i..j];
            if !differs {
                if let Some((s, e)) = run.take() {
                    em.data(pos + s as u64, &buf_new[s..e])?;
                }
                em.flush_zero()?;
            } else if super::is_zero(block) {
                if let Some((s, e)) = run.take() {
                    em.data(pos + s as u64, &buf_new[s..e])?;
                }
                em.zero(pos + i as u64, pos + j as u64)?;
            } else {
                run = match run {
                    Some((s, _)) => Some((s, j)),
                    None => Some((i, j)),
                };
            }
            i = j;
        }
        if let Some((s, e)) = run.take() {
            em.data(pos + s as u64, &buf_new[s..e])?;
        }
        pos = chunk_end;
    }
    em.finish()
}
