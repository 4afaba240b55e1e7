//! Why the compiled state decides a packet the way it does: which policies isolate an endpoint
//! in a direction, and which rules (policy ref, rule index) grant the very keys the datapath
//! looks up for the packet.
//!
//! The answer is computed from the same terms the output is the sum of (module docs of
//! [`super`]): for each policy selecting the subject and each rule of the direction, the keys
//! [`emit::keys`] gives towards the packet's peer — exactly what [`Compiler::grant_all`] added.
//! A rule admits the packet when one of its keys is a key step 7 looks up
//! ([`model::lookup_key`]) for a tuple slot the endpoint uses, so a rule is named here exactly
//! when the key the datapath finds carries it among its grants.

use std::net::IpAddr;

use zt_common::{direction, policy::PolicyKey};

use super::{
    Compiler,
    emit::{self, Peer as EmitPeer},
    policy::{Block, Port},
};
use crate::datapath::{
    DatapathState,
    model::{self, Packet},
};

/// One rule that admits a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitting {
    pub policy_ref: u32,
    /// Index of the rule within the policy's rules of the direction.
    pub rule: usize,
    /// The named port of the rule that matched, when it was one.
    pub named_port: Option<String>,
}

/// One direction of one endpoint for one packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionTrace {
    /// Refs of the policies selecting the endpoint that isolate it in this direction.
    pub isolated_by: Vec<u32>,
    /// The rules whose keys the datapath's lookup finds, in policy-ref then rule order.
    pub allowed_by: Vec<Admitting>,
}

/// An ipBlock of a rule that contains an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockUse<'a> {
    pub policy_ref: u32,
    pub direction: u8,
    pub rule: usize,
    pub block: &'a Block,
}

impl Compiler {
    /// The policies and rules behind the verdict for `packet` at its local endpoint, as
    /// compiled; `None` when the local address is no endpoint of the compiled state.
    pub fn trace(&self, packet: &Packet) -> Option<DirectionTrace> {
        let state: &DatapathState = &self.state;
        let endpoint = state.endpoints.get(&packet.local)?;
        let subject = endpoint.identity;
        let dir = packet.direction;
        let mut trace = DirectionTrace::default();
        let Some(policies) = self.subjects.get(&subject) else {
            return Some(trace);
        };
        let peer = model::peer_identity(state, packet.peer);
        let tuples = if dir == direction::EGRESS {
            endpoint.egress_tuples
        } else {
            endpoint.ingress_tuples
        };
        let wanted: Vec<PolicyKey> = (0..64u32)
            .filter(|bit| tuples & (1u64 << bit) != 0)
            .map(|bit| model::lookup_key(subject, peer, packet, bit))
            .collect();
        let Some(class) = self.classes.pod(subject) else {
            return Some(trace);
        };
        let peer_class = self.classes.get(peer);
        for &policy_ref in policies {
            let Some(active) = self.policies.get(&policy_ref) else {
                continue;
            };
            let isolates = if dir == direction::EGRESS {
                active.policy.egress.is_some()
            } else {
                active.policy.ingress.is_some()
            };
            if isolates {
                trace.isolated_by.push(policy_ref);
            }
            for (rule_dir, r, rule) in active.rules() {
                if rule_dir != dir {
                    continue;
                }
                // The (peer, port) terms grant_all sums for this rule and this peer.
                let mut terms: Vec<(EmitPeer, Option<usize>)> = Vec::new();
                if rule.peers.is_none() {
                    terms.push((EmitPeer::Any, None));
                }
                if let Some(peer_class) = peer_class {
                    for (selection, user) in &active.uses {
                        if user.dir == dir
                            && user.rule == r
                            && self.selections.ids(*selection).contains(&peer)
                        {
                            terms.push((EmitPeer::Identity(peer, peer_class), user.port));
                        }
                    }
                }
                let port_count = rule.ports.as_ref().map_or(0, Vec::len);
                let found = terms.into_iter().find_map(|(emit_peer, only)| {
                    // Port by port, to name the one that matched.
                    let indexes: Vec<Option<usize>> = match (only, port_count) {
                        (Some(i), _) => vec![Some(i)],
                        (None, 0) => vec![None],
                        (None, n) => (0..n).map(Some).collect(),
                    };
                    indexes.into_iter().find(|&only| {
                        let mut keys = Vec::new();
                        emit::keys(subject, class, dir, rule, only, emit_peer, &mut keys);
                        keys.iter().any(|k| wanted.contains(k))
                    })
                });
                if let Some(only) = found {
                    let named_port = only
                        .and_then(|i| rule.ports.as_ref().map(|p| &p[i]))
                        .and_then(|p| match p {
                            Port::Named(_, name) => Some(name.clone()),
                            _ => None,
                        });
                    trace.allowed_by.push(Admitting {
                        policy_ref,
                        rule: r,
                        named_port,
                    });
                }
            }
        }
        Some(trace)
    }

    /// Every ipBlock of a policy in force that contains `addr`, in policy-ref order.
    pub fn blocks_containing(&self, addr: IpAddr) -> Vec<BlockUse<'_>> {
        let mut refs: Vec<u32> = self.policies.keys().copied().collect();
        refs.sort_unstable();
        let mut out = Vec::new();
        for policy_ref in refs {
            let active = &self.policies[&policy_ref];
            for (dir, rules) in [
                (direction::INGRESS, &active.policy.ingress),
                (direction::EGRESS, &active.policy.egress),
            ] {
                for (r, rule) in rules.iter().flatten().enumerate() {
                    for peer in rule.peers.iter().flatten() {
                        if let super::policy::Peer::Block(block) = peer
                            && block.contains(&addr)
                        {
                            out.push(BlockUse {
                                policy_ref,
                                direction: dir,
                                rule: r,
                                block,
                            });
                        }
                    }
                }
            }
        }
        out
    }
}
