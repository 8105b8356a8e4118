//! QoS: the send limit (replication from here) and the receive limit (the
//! standby receiver's write rate), set at run time through the API and
//! persisted in `DIR/qos.json`, which wins over the config file's `[qos]`,
//! also after a `SIGHUP` reload.

use std::path::PathBuf;

use super::{internal, CtlResult, Orchestrator, Qos};
use crate::config::AgentConfig;
use crate::durable::write_durably;

impl Orchestrator {
    fn qos_path(&self) -> PathBuf {
        self.dir.join("qos.json")
    }

    pub(super) fn load_qos(&self) -> Option<Qos> {
        let text = std::fs::read(self.qos_path()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub(super) fn apply_qos(&self, q: &Qos) {
        self.receiver.write_limit.set_rate(q.receive_limit);
        self.send_limit.set_rate(q.send_limit);
    }

    /// A reloaded configuration (`SIGHUP`): the next replication cycle uses
    /// its settings, the send limit becomes the file's, and then QoS set
    /// through the API is applied again (it wins over the file).
    pub fn reload_config(&self, config: AgentConfig) {
        self.send_limit.set_rate(config.send_limit);
        self.replicator.reload(config);
        self.reapply_qos();
    }

    /// Re-applies QoS persisted by `set_qos` (after a config reload, which
    /// set the config file's limits): the API's settings win.
    pub fn reapply_qos(&self) {
        if let Some(q) = self.load_qos() {
            self.apply_qos(&q);
        }
    }

    /// Current QoS.
    pub fn qos(&self) -> Qos {
        Qos {
            receive_limit: self.receiver.write_limit.rate(),
            send_limit: self.send_limit.rate(),
        }
    }

    /// Sets QoS at run time (running syncs pick it up at once) and persists
    /// it in `DIR/qos.json` (it wins over the config file's `[qos]`).
    pub fn set_qos(&self, q: &Qos) -> CtlResult<Qos> {
        let path = self.qos_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(q).unwrap_or_default();
        write_durably(&tmp, &path, &text)
            .map_err(|e| internal(format!("writing {}", path.display()))(e.into()))?;
        self.apply_qos(q);
        Ok(self.qos())
    }
}
