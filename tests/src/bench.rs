//! Benchmarks (figures, not pass/fail: these machines are shared and noisy).

pub mod compiler;
pub mod datapath;
