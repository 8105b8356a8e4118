//! The standby store: crash-consistent standby images, recovery points, restore.
