//! Extent sources: where changed extents of a protected image come from.
