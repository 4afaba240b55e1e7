//! Shared helpers for zt's kernel, lab and API-server tests, and the benchmarks.

pub mod apiserver;
pub mod bench;
pub mod chaos;
pub mod kernel;
pub mod lab_support;
pub mod node;
pub mod oracle;
pub mod packet;
pub mod wire;
