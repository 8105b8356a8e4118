//! Unit tests of the rbd diff parser, writer, export and import.
