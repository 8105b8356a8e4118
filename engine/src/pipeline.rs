//! The primary-side pipeline: read → analyse → compress → checksum → ordered batches.
