//! The other side of the differential: the same [`Cluster`] through zt's index and compiler,
//! answered by the userspace model of the datapath lookup. Kept apart from the oracle proper,
//! which must not touch compiler code.

use std::net::IpAddr;

use zt_agent::{
    compiler::{Compiler, Options},
    datapath::{
        DatapathState,
        model::{self, Packet},
    },
    index::Index,
    resource::{Kind, Resource},
};
use zt_common::{direction, proto};

use super::Cluster;

/// The cluster as an index, every kind loaded with a reset.
pub fn index(cluster: &Cluster) -> Index {
    let mut index = Index::default();
    index.reset(
        Kind::Namespace,
        cluster
            .namespaces
            .iter()
            .cloned()
            .map(Resource::Namespace)
            .collect(),
    );
    index.reset(
        Kind::Pod,
        cluster.pods.iter().cloned().map(Resource::Pod).collect(),
    );
    index.reset(
        Kind::NetworkPolicy,
        cluster
            .policies
            .iter()
            .cloned()
            .map(Resource::NetworkPolicy)
            .collect(),
    );
    index
}

/// Compiles `cluster` with a fresh compiler.
pub fn compile(cluster: &Cluster, options: Options) -> Compiler {
    let mut compiler = Compiler::new(options);
    compiler.update(&index(cluster));
    compiler
}

pub fn protocol_number(name: &str) -> u8 {
    match name {
        "TCP" => proto::TCP,
        "UDP" => proto::UDP,
        "SCTP" => proto::SCTP,
        _ => proto::ICMP,
    }
}

/// Whether the datapath admits a new connection, given every node's compiled state: the
/// source's egress hook and the destination's ingress hook must both allow it. An address that
/// is no node's endpoint is not checked there (fail open, as `ALLOW_UNKNOWN_ENDPOINT`).
pub fn allowed(
    states: &[&DatapathState],
    src: IpAddr,
    dst: IpAddr,
    port: u16,
    protocol: &str,
) -> bool {
    let protocol = protocol_number(protocol);
    let check = |dir: u8, local: IpAddr, peer: IpAddr| {
        states.iter().all(|state| {
            !state.endpoints.contains_key(&local)
                || model::decide(
                    state,
                    false,
                    &Packet {
                        direction: dir,
                        local,
                        peer,
                        protocol,
                        port,
                    },
                )
                .allowed()
        })
    };
    check(direction::EGRESS, src, dst) && check(direction::INGRESS, dst, src)
}
