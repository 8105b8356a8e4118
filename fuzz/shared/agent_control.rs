//! The agent's `control` module as the fuzz targets see it: the model plus
//! the RPO thresholds the model names as `crate::control::RpoThresholds`,
//! compiled from the agent's own files (`#[path]`) without ferry-agent.

#[path = "../../agent/src/control/model.rs"]
mod model;
#[path = "../../agent/src/control/rpo.rs"]
mod rpo;

pub use model::*;
pub use rpo::{RpoError, RpoThresholds};
