//! BLAKE3 hashing of byte ranges in fixed granules (used by `ferry verify` on both sides).
