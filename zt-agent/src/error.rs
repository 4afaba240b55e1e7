//! The agent library's one error type.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    /// The pin root is not, and could not be made, a directory on a bpf filesystem.
    #[error("pin root {path}: {message}")]
    PinRoot { path: PathBuf, message: String },
    #[error("eBPF: {0}")]
    Ebpf(String),
    /// A map has no room for another entry (`E2BIG` from a hash map, `ENOSPC` from a trie).
    #[error("eBPF map {map} is full")]
    MapFull { map: &'static str },
    #[error("{0}")]
    Other(String),
}
