//! A seeded UDP impairment proxy: loss, delay, reorder, duplication, blackhole (link cut).
