//! Encoding of extents into a batch payload (compress, checksum) and its verification on the standby.
