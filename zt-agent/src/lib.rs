//! zt-agent: the node agent that compiles Kubernetes NetworkPolicies into zt's eBPF maps.
//!
//! ```text
//!  source (kube | dir) ─▶ index (pure state) ─▶ compiler (pure) ─▶ datapath::plan ─▶ runtime::sync
//!                                                                        runtime::attach ─▶ TC on pod veths
//! ```
//! Only [`runtime`] and [`lab`] touch the kernel or the network; [`index`], [`compiler`] and
//! [`datapath`]'s planning are synchronous and pure.

pub mod cli;
pub mod compiler;
pub mod datapath;
pub mod error;
pub mod explain;
pub mod index;
pub mod lab;
pub mod manifests;
pub mod resource;
pub mod runtime;

pub use error::{Error, Result};
