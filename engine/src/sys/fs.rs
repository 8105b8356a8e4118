//! Linux file-system calls std does not wrap (hole punching, directory fsync).
