//! Where the agent learns about Namespaces, Pods and NetworkPolicies: `kube` (the API server) or
//! `dir:PATH` (a folder of manifests). Both send [`crate::resource::SourceEvent`]s into one index.

pub mod dir;
pub mod kube;

use std::path::PathBuf;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Kube,
    Dir(PathBuf),
}

impl Source {
    /// Parses `--source`: `kube` or `dir:PATH`.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "kube" => Ok(Source::Kube),
            _ => match text.strip_prefix("dir:") {
                Some(path) if !path.is_empty() => Ok(Source::Dir(path.into())),
                _ => Err(Error::Other(format!(
                    "--source {text:?}: expected `kube` or `dir:PATH`"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(Source::parse("kube").unwrap(), Source::Kube);
        assert_eq!(Source::parse("dir:/m").unwrap(), Source::Dir("/m".into()));
        for bad in ["", "dir:", "kube:", "file:/m", "Kube"] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }
}
