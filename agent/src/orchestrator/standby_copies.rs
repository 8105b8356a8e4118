//! The standby copies in this agent's standby store (files or RBD): store
//! calls off the async runtime that wait out a writer still closing
//! (`on_store`), removing copies, pinning recovery points, and listing the
//! engine recovery points the copies hold.

use std::time::Duration;

use ferry_protocol::ImageName;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::{internal, CtlError, CtlResult, Orchestrator};
use crate::control::{GroupId, Resource};

/// How many standby copies are removed at once.
const PARALLEL_REMOVALS: usize = 8;

/// How long a store operation waits for an image a closing writer holds.
const STORE_BUSY_WAIT: Duration = Duration::from_secs(10);

impl Orchestrator {
    /// Runs `f` on the standby store off the async runtime. An image still
    /// held by the writer of a cycle the primary just aborted is waited
    /// for (the receiver drops it when the connection closes).
    pub(super) async fn on_store<T, F>(&self, what: String, f: F) -> CtlResult<T>
    where
        T: Send + 'static,
        F: Fn(
                &ferry_engine::standby_backend::Standby,
            ) -> Result<T, ferry_engine::standby::StoreError>
            + Send
            + 'static,
    {
        self.on_store_for(what, STORE_BUSY_WAIT, f).await
    }

    /// [`Self::on_store`], waiting up to `busy_wait` for a busy image.
    pub(super) async fn on_store_for<T, F>(
        &self,
        what: String,
        busy_wait: Duration,
        f: F,
    ) -> CtlResult<T>
    where
        T: Send + 'static,
        F: Fn(
                &ferry_engine::standby_backend::Standby,
            ) -> Result<T, ferry_engine::standby::StoreError>
            + Send
            + 'static,
    {
        let receiver = self.receiver.clone();
        let mut waited = Duration::ZERO;
        loop {
            let r = receiver.clone();
            let f = &f;
            let result = tokio::task::block_in_place(|| f(&r.store));
            match result {
                Err(ferry_engine::standby::StoreError::Busy { .. }) if waited < busy_wait => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    waited += Duration::from_millis(100);
                }
                other => return other.map_err(|e| internal(what)(e.into())),
            }
        }
    }

    /// Deletes the standby copies of `resources` from the standby store
    /// (absent ones are fine).
    pub(super) async fn remove_standby_images(&self, resources: &[Resource]) -> CtlResult<()> {
        let images = resources
            .iter()
            .map(|r| ImageName::new(r.standby_target.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CtlError::BadRequest(e.to_string()))?;
        // Several at once: removing an RBD image with its snapshots takes
        // about a second, and one after the other a 20-volume group's stop
        // sync or delete outlasted the primary's peer request (15 s).
        let removals = images.into_iter().map(|image| {
            self.on_store(format!("removing standby image {image}"), move |st| {
                st.remove_image(&image)
            })
        });
        let results: Vec<CtlResult<()>> = stream::iter(removals)
            .buffer_unordered(PARALLEL_REMOVALS)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Pins (or unpins) engine recovery point `engine_rp` on the standby
    /// copy of every resource of group `gid`.
    pub(super) async fn pin_standby_point(
        &self,
        gid: GroupId,
        engine_rp: u64,
        pin: bool,
    ) -> CtlResult<()> {
        for r in self.db(|s| s.resources(gid))? {
            let image = ImageName::new(r.standby_target.clone())
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let rp = ferry_protocol::RecoveryPointId(engine_rp);
            let what = format!(
                "{} recovery point {engine_rp} of {image}",
                if pin { "pinning" } else { "unpinning" }
            );
            self.on_store(what, move |st| {
                if pin {
                    st.pin(&image, rp)
                } else {
                    st.unpin(&image, rp)
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Engine recovery points of the standby images of a group (standby side).
    pub fn standby_engine_points(&self, key: &str) -> CtlResult<Value> {
        let g = self.group(key)?;
        let mut out = serde_json::Map::new();
        for r in self.db(|s| s.resources(g.id))? {
            let Ok(image) = ImageName::new(r.standby_target.clone()) else {
                continue;
            };
            let points = self
                .receiver
                .store
                .recovery_points(&image)
                .map(|v| v.iter().map(|p| p.id.get()).collect::<Vec<_>>())
                .unwrap_or_default();
            out.insert(r.standby_target, json!(points));
        }
        Ok(Value::Object(out))
    }
}
