//! The Kubernetes objects zt reads, as every source (API server, folder of manifests) delivers them.

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
}

#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "moved once per event; boxing buys nothing"
)]
pub enum Resource {
    Namespace(Namespace),
    Pod(Pod),
    NetworkPolicy(NetworkPolicy),
}

/// What a source reports. After a `Reset` of a kind, every object of that kind absent from it is
/// gone: deletes may be missed across watch restarts, so a re-list is the truth.
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "moved once per event; boxing buys nothing"
)]
pub enum SourceEvent {
    Apply(Resource),
    Delete {
        kind: Kind,
        namespace: Option<String>,
        name: String,
    },
    Reset {
        kind: Kind,
        objects: Vec<Resource>,
    },
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Namespace(_) => Kind::Namespace,
            Resource::Pod(_) => Kind::Pod,
            Resource::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }
}
