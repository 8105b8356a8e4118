//! The agent's poison-tolerant lock is the engine's one
//! (`ferry_engine::sync_util::lock`): a panic in another holder (a task
//! that died mid-update) must not wedge the agent; the data behind every
//! agent mutex stays usable after a partial update (progress, loop handles,
//! caches).

pub(crate) use ferry_engine::sync_util::lock;
