//! `ferry export-diff` and `ferry import-diff`: rbd diff interop for raw
//! image files (`file:`) and RBD images (`rbd:POOL[/NAMESPACE]/IMAGE[@SNAP]`).

use std::fs::OpenOptions;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use ferry_engine::rbd::diff::{export_rbd, import_rbd, RbdImportOptions};
use ferry_engine::rbd::{ClusterSpec, RbdError, RbdSpec};
use ferry_engine::rbddiff::export::{self, ExportFormat, ExportOptions, ExportReport};
use ferry_engine::rbddiff::import::{self, DiffInput, ImportOptions, ImportReport};

/// An image address accepted by the diff commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSpec {
    /// A raw image file or block device.
    File(PathBuf),
    /// An RBD image (`rbd:POOL[/NAMESPACE]/IMAGE[@SNAP]`).
    Rbd(RbdSpec),
}

/// Errors of the diff commands.
#[derive(Debug, thiserror::Error)]
pub enum DiffCmdError {
    /// The image address could not be understood.
    #[error("bad image {input:?}: {reason} (expected file:/path.raw or rbd:POOL[/NAMESPACE]/IMAGE[@SNAP])")]
    BadSpec {
        /// What was given.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Options that do not apply.
    #[error("{0}")]
    Usage(String),
    /// The output file could not be created or written.
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
    /// Export failed.
    #[error(transparent)]
    Export(#[from] export::ExportError),
    /// Import failed.
    #[error(transparent)]
    Import(#[from] import::ImportError),
    /// Export from or import into an RBD image failed.
    #[error(transparent)]
    Rbd(#[from] ferry_engine::rbd::diff::RbdDiffError),
}

impl ImageSpec {
    /// Parses `file:/path`, `file:///path`, a bare path, or
    /// `rbd:POOL[/NAMESPACE]/IMAGE[@SNAP]`.
    pub fn parse(input: &str) -> Result<Self, DiffCmdError> {
        if let Some(rest) = input.strip_prefix("rbd:") {
            return RbdSpec::parse(rest)
                .map(Self::Rbd)
                .map_err(|e| DiffCmdError::BadSpec {
                    input: input.to_owned(),
                    reason: match e {
                        RbdError::BadSpec { reason, .. } => reason,
                        _ => "not an rbd address",
                    },
                });
        }
        let path = input
            .strip_prefix("file://")
            .or_else(|| input.strip_prefix("file:"))
            .unwrap_or(input);
        if path.is_empty() {
            return Err(DiffCmdError::BadSpec {
                input: input.to_owned(),
                reason: "empty path",
            });
        }
        if input.contains("://") && !input.starts_with("file://") {
            return Err(DiffCmdError::BadSpec {
                input: input.to_owned(),
                reason: "unknown scheme",
            });
        }
        Ok(Self::File(PathBuf::from(path)))
    }
}

/// Arguments of `ferry export-diff`.
#[derive(Debug, Clone, Default)]
pub struct ExportArgs {
    /// SOURCE address.
    pub source: String,
    /// Output path or `-` for stdout.
    pub output: String,
    /// `--from-snap` (rbd sources only).
    pub from_snap: Option<String>,
    /// `--from-file OLD.raw`.
    pub from_file: Option<PathBuf>,
    /// `--from-snap-name`: label for the `f` record.
    pub from_snap_name: Option<String>,
    /// `--to-snap-name`: label for the `t` record.
    pub to_snap_name: Option<String>,
    /// `--export-format 2`: write an `rbd image v2` stream.
    pub image_v2: bool,
    /// Cluster of `rbd:` sources.
    pub cluster: ClusterSpec,
}

/// Runs `ferry export-diff`.
pub fn export_diff(args: &ExportArgs) -> Result<ExportReport, DiffCmdError> {
    let source = ImageSpec::parse(&args.source)?;
    let format = if args.image_v2 {
        ExportFormat::ImageV2
    } else {
        ExportFormat::DiffV1
    };
    let path = match source {
        ImageSpec::File(path) => path,
        ImageSpec::Rbd(spec) => {
            if args.from_file.is_some()
                || args.from_snap_name.is_some()
                || args.to_snap_name.is_some()
            {
                return Err(DiffCmdError::Usage(
                    "--from-file/--from-snap-name/--to-snap-name are for file sources; an rbd: source names its snapshots (--from-snap S, SOURCE@SNAP)".into(),
                ));
            }
            return with_output(&args.output, |out| {
                Ok(export_rbd(
                    &args.cluster,
                    &spec,
                    args.from_snap.as_deref(),
                    format,
                    out,
                )?)
            });
        }
    };
    if let Some(snap) = &args.from_snap {
        return Err(DiffCmdError::Usage(format!(
            "--from-snap {snap:?}: a file source has no snapshots; use --from-file OLD.raw to \
             diff against an older copy (and --from-snap-name {snap:?} to label the stream)"
        )));
    }
    if args.from_snap_name.is_some() && args.from_file.is_none() {
        return Err(DiffCmdError::Usage(
            "--from-snap-name labels a diff against --from-file; without --from-file the whole image is exported".into(),
        ));
    }
    let opts = ExportOptions {
        from_file: args.from_file.clone(),
        from_snap: args.from_snap_name.clone(),
        to_snap: args.to_snap_name.clone(),
        format,
    };
    with_output(&args.output, |out| {
        Ok(export::export_diff(&path, &opts, out)?)
    })
}

/// Runs `export` into stdout (`-`) or a new file that is removed again if
/// the export fails (like rbd, never overwriting).
fn with_output(
    output: &str,
    export: impl FnOnce(&mut dyn io::Write) -> Result<ExportReport, DiffCmdError>,
) -> Result<ExportReport, DiffCmdError> {
    if output == "-" {
        let stdout = io::stdout();
        let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
        let report = export(&mut out)?;
        io::Write::flush(&mut out).map_err(|source| DiffCmdError::Io {
            op: "writing",
            path: PathBuf::from("-"),
            source,
        })?;
        return Ok(report);
    }
    let out_path = Path::new(output);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out_path)
        .map_err(|source| DiffCmdError::Io {
            op: "creating",
            path: out_path.to_path_buf(),
            source,
        })?;
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    let result = export(&mut out)
        .and_then(|report| {
            io::Write::flush(&mut out).map_err(|source| DiffCmdError::Io {
                op: "writing",
                path: out_path.to_path_buf(),
                source,
            })?;
            Ok(report)
        })
        .and_then(|report| {
            file.sync_all().map_err(|source| DiffCmdError::Io {
                op: "fsyncing",
                path: out_path.to_path_buf(),
                source,
            })?;
            Ok(report)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(out_path);
    }
    result
}

/// Arguments of `ferry import-diff`.
#[derive(Debug, Clone, Default)]
pub struct ImportArgs {
    /// Diff path or `-` for stdin.
    pub input: String,
    /// TARGET address.
    pub target: String,
    /// `--no-snap-check`.
    pub no_snap_check: bool,
    /// `--no-create`.
    pub no_create: bool,
    /// Cluster of `rbd:` targets.
    pub cluster: ClusterSpec,
}

/// Runs `ferry import-diff`.
pub fn import_diff(args: &ImportArgs) -> Result<ImportReport, DiffCmdError> {
    let target = match ImageSpec::parse(&args.target)? {
        ImageSpec::File(path) => path,
        ImageSpec::Rbd(spec) => {
            let options = RbdImportOptions {
                check_snapshots: !args.no_snap_check,
                create: !args.no_create,
            };
            if args.input == "-" {
                let stdin = io::stdin();
                let mut lock = stdin.lock();
                return Ok(import_rbd(&args.cluster, &spec, &mut lock, "-", options)?);
            }
            let mut file = std::fs::File::open(&args.input).map_err(|source| DiffCmdError::Io {
                op: "opening",
                path: PathBuf::from(&args.input),
                source,
            })?;
            return Ok(import_rbd(
                &args.cluster,
                &spec,
                &mut file,
                &args.input,
                options,
            )?);
        }
    };
    let opts = ImportOptions {
        check_snapshots: !args.no_snap_check,
        create: !args.no_create,
    };
    if args.input == "-" {
        let stdin = io::stdin();
        let mut lock = stdin.lock();
        Ok(import::import_diff(
            DiffInput::Stream(&mut lock),
            &target,
            &opts,
        )?)
    } else {
        Ok(import::import_diff(
            DiffInput::Path(Path::new(&args.input)),
            &target,
            &opts,
        )?)
    }
}

/// One-line human summary of an export.
pub fn export_summary(r: &ExportReport) -> String {
    format!(
        "exported image of {} bytes: {} records, {} data bytes, {} zero bytes, {} stream bytes",
        r.size, r.records, r.bytes_data, r.bytes_zero, r.stream_bytes
    )
}

/// One-line human summary of an import.
pub fn import_summary(r: &ImportReport) -> String {
    format!(
        "imported {} ({} diff{}){}{}: size {} -> {}, {} records, {} bytes written, {} bytes zeroed{}",
        r.format,
        r.diffs,
        if r.diffs == 1 { "" } else { "s" },
        r.from_snap
            .as_deref()
            .map_or(String::new(), |s| format!(" from {s:?}")),
        r.to_snap
            .as_deref()
            .map_or(String::new(), |s| format!(" to {s:?}")),
        r.old_size
            .map_or("(new)".to_owned(), |s| s.to_string()),
        r.new_size,
        r.records,
        r.bytes_written,
        r.bytes_zeroed,
        if r.recovered {
            " (rolled back an interrupted earlier import first)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            ImageSpec::parse("file:/a/b.raw").unwrap(),
            ImageSpec::File("/a/b.raw".into())
        );
        assert_eq!(
            ImageSpec::parse("file:///a/b.raw").unwrap(),
            ImageSpec::File("/a/b.raw".into())
        );
        assert_eq!(
            ImageSpec::parse("rbd:rbd/vol1@s1").unwrap(),
            ImageSpec::Rbd(RbdSpec {
                pool: "rbd".into(),
                namespace: None,
                image: "vol1".into(),
                snap: Some("s1".into())
            })
        );
        assert_eq!(
            ImageSpec::parse("rbd:rbd/tenant/vol1").unwrap(),
            ImageSpec::Rbd(RbdSpec {
                pool: "rbd".into(),
                namespace: Some("tenant".into()),
                image: "vol1".into(),
                snap: None
            })
        );
        assert!(ImageSpec::parse("rbd:vol1").is_err());
        assert!(ImageSpec::parse("rbd:a/b/c/d").is_err());
        assert!(ImageSpec::parse("rbd:rbd/vol1@").is_err());
        assert!(ImageSpec::parse("s3://x").is_err());
    }

    #[test]
    fn rbd_sources_refuse_file_only_options() {
        let err = export_diff(&ExportArgs {
            source: "rbd:rbd/vol1@s1".into(),
            output: "-".into(),
            from_file: Some("/x.raw".into()),
            ..ExportArgs::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("file sources"), "{err}");
    }

    #[test]
    fn from_snap_on_a_file_explains_from_file() {
        let err = export_diff(&ExportArgs {
            source: "file:/x.raw".into(),
            output: "-".into(),
            from_snap: Some("s1".into()),
            ..ExportArgs::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--from-file"), "{err}");
    }
}
