//! The replication state of a leased group's sources, handed from one
//! holder to the next. Each time an `rbd:` source of the group saves its
//! state (the capture and cycle it is in, the committed snapshot the next
//! cycle diffs from), the holder also keeps that state in the site's
//! records (`crate::placement::site`), before the save counts; an agent
//! taking the group over writes it back into its own state directories
//! before its first cycle, so it resumes exactly where the previous holder
//! was — as that holder would have after a restart — instead of copying
//! every image again. A holder another agent has fenced can no longer
//! write it: RADOS refuses its client.

use std::sync::Arc;

use ferry_engine::rbd::source::{RbdSource, StateMirror};
use ferry_protocol::ImageName;
use tracing::info;

use super::{error_chain, internal, CtlResult, Orchestrator};
use crate::control::GroupId;
use crate::placement::site::SiteRecords;
use crate::replicate::{source_state_dir, MirrorFor};

/// Keeps one source's state in the site's records.
struct SiteMirror {
    site: Arc<SiteRecords>,
    group: String,
    image: String,
}

impl StateMirror for SiteMirror {
    fn store(&self, state: &[u8]) -> Result<(), String> {
        self.site
            .save_state(&self.group, &self.image, state)
            .map_err(|e| {
                format!(
                    "keeping the source state in the site's records: {}",
                    error_chain(&e)
                )
            })
    }
}

impl Orchestrator {
    /// Where the sources of group `group` keep their state too (a
    /// multi-agent site; `None` without leases).
    pub(super) fn state_mirror(&self, group: &str) -> Option<Box<MirrorFor>> {
        let site = self.leases.as_ref()?.site.clone();
        let group = group.to_owned();
        Some(Box::new(move |image: &ImageName| {
            Arc::new(SiteMirror {
                site: site.clone(),
                group: group.clone(),
                image: image.as_str().to_owned(),
            }) as Arc<dyn StateMirror>
        }))
    }

    /// Writes the source states the site's records hold for group `gid`
    /// into this agent's state directories (before it replicates the group).
    pub(super) async fn restore_handover(&self, gid: GroupId) -> CtlResult<()> {
        let Some(leases) = &self.leases else {
            return Ok(());
        };
        let g = self.db(|s| s.group(gid))?;
        let peer = self.db(|s| s.service(g.service_id))?.remote_fingerprint;
        let site = leases.site.clone();
        let name = g.name.clone();
        let states = tokio::task::spawn_blocking(move || site.states(&name))
            .await
            .map_err(|e| internal("reading the group's source states")(e.into()))?
            .map_err(|e| internal("reading the group's source states")(e.into()))?;
        for (image, state) in states {
            let image = ImageName::new(image)
                .map_err(|e| internal("a source state's image name")(e.into()))?;
            let dir = source_state_dir(&self.dir, peer, &image);
            write_atomically(&dir, &RbdSource::state_file(&dir), &state).map_err(|e| {
                internal(format!("restoring the source state of {image}"))(e.into())
            })?;
            info!(group = %g.name, %image, "restored the source state the previous holder kept");
        }
        Ok(())
    }
}

/// Replaces `path` (in `dir`) by `bytes`: a reader sees the old or the new
/// content, never part of it.
fn write_atomically(
    dir: &std::path::Path,
    path: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
