//! The policy keys one rule grants one subject towards one peer.
//!
//! Everything the compiler writes is a sum of these: for each subject, each policy selecting it,
//! each rule, each identity the rule's peers select (or [`ANY`] for a rule without peers). Adding
//! a peer to a selection, or a subject to a policy, adds exactly the keys this function gives for
//! them; taking it away retracts the same keys.

use zt_common::{
    direction,
    identity::ANY,
    policy::{PolicyKey, tuple},
    proto,
};

use super::{
    identities::{Class, PodClass},
    policy::{Port, Rule},
    ports,
};

/// The peer side of the keys.
#[derive(Clone, Copy, Debug)]
pub enum Peer<'a> {
    /// Any peer: a rule without peers.
    Any,
    Identity(u32, Class<'a>),
}

/// Appends to `out` the keys `rule` (of direction `dir`) grants `subject`, of class `class`,
/// towards `peer`: on every port of the rule, or on the one port `only`.
///
/// An egress rule's named port is resolved on the destination, the peer, so it needs the peer's
/// class: towards [`Peer::Any`] it gives nothing — those keys come from the selection of the
/// port's holders, which names each destination.
pub fn keys(
    subject: u32,
    class: &PodClass,
    dir: u8,
    rule: &Rule,
    only: Option<usize>,
    peer: Peer,
    out: &mut Vec<PolicyKey>,
) {
    let peer_id = match peer {
        Peer::Any => ANY,
        Peer::Identity(id, _) => id,
    };
    let mut put = |port: u16, protocol: u8, slot: u32| {
        out.push(PolicyKey {
            subject,
            peer: peer_id,
            port,
            protocol,
            tuple: tuple::key_byte(dir, slot),
        })
    };
    let Some(all) = &rule.ports else {
        put(0, proto::ANY, tuple::ANY_PROTOCOL);
        return;
    };
    let ports = match only {
        Some(i) => &all[i..=i],
        None => &all[..],
    };
    for port in ports {
        match port {
            Port::Protocol(p) => put(0, *p, 0),
            Port::Range(p, lo, hi) => {
                for (base, prefix) in ports::range_blocks(*lo, *hi) {
                    put(base, *p, prefix);
                }
            }
            Port::Named(p, name) if dir == direction::INGRESS => {
                for number in class.port_numbers(name, *p) {
                    put(number, *p, 16);
                }
            }
            Port::Named(p, name) => {
                if let Peer::Identity(_, Class::Pod(dest)) = peer {
                    for number in dest.port_numbers(name, *p) {
                        put(number, *p, 16);
                    }
                }
            }
        }
    }
}

/// The endpoint tuple-set bit a key uses, and whether it is an egress key.
pub fn slot_bit(key: &PolicyKey) -> (bool, u64) {
    let egress = key.tuple & tuple::EGRESS_BIT != 0;
    let slot = if key.protocol == proto::ANY {
        tuple::ANY_PROTOCOL
    } else {
        u32::from(key.tuple & !tuple::EGRESS_BIT)
    };
    (egress, tuple::bit(key.peer == ANY, slot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Labels;

    fn class(ports: &[(&str, u8, u16)]) -> PodClass {
        PodClass {
            namespace: "ns".into(),
            labels: Labels::new(),
            ports: ports
                .iter()
                .map(|(n, p, x)| (n.to_string(), *p, *x))
                .collect(),
            blocks: vec![],
        }
    }

    #[test]
    fn named_ports_resolve_on_the_destination() {
        let rule = Rule {
            peers: None,
            ports: Some(vec![Port::Named(proto::TCP, "http".into())]),
        };
        let (me, them) = (
            class(&[("http", proto::TCP, 80)]),
            class(&[("http", proto::TCP, 8080)]),
        );
        let mut out = vec![];
        keys(
            300,
            &me,
            direction::INGRESS,
            &rule,
            None,
            Peer::Any,
            &mut out,
        );
        assert_eq!((out[0].peer, out[0].port), (ANY, 80));
        out.clear();
        keys(
            300,
            &me,
            direction::EGRESS,
            &rule,
            None,
            Peer::Any,
            &mut out,
        );
        assert!(out.is_empty());
        let peer = Peer::Identity(301, Class::Pod(&them));
        keys(300, &me, direction::EGRESS, &rule, Some(0), peer, &mut out);
        assert_eq!((out[0].peer, out[0].port), (301, 8080));
        assert_eq!(slot_bit(&out[0]), (true, tuple::bit(false, 16)));
    }

    #[test]
    fn a_rule_without_ports_is_one_any_protocol_key() {
        let mut out = vec![];
        keys(
            300,
            &class(&[]),
            direction::INGRESS,
            &Rule::default(),
            None,
            Peer::Any,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            slot_bit(&out[0]),
            (false, tuple::bit(true, tuple::ANY_PROTOCOL))
        );
    }
}
