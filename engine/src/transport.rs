//! QUIC endpoints with mutual TLS where peers are trusted by certificate fingerprint.
