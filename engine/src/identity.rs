//! Agent identity: key pair and self-signed certificate, fingerprints.
