//! Helpers for ferry end-to-end tests.
