//! Orders map writes so a change never opens a window where a good packet is dropped or a
//! revoked one passes.
//!
//! The order, for a [`StateDelta`] applied on top of the applied state:
//! 1. policy upserts (new allows exist before anything refers to them);
//! 2. identity upserts;
//! 3. endpoint upserts — an endpoint that changes is first written in a *transitional* form that is
//!    the more permissive of old and new (tuple sets united, isolated only where both isolate, audit
//!    where either audits), with its new identity;
//! 4. deletes: endpoints, identities, policy entries;
//! 5. endpoints' final values, where the transitional one differed;
//! 6. a policy-revision bump when anything but pure policy upserts happened, so conntrack entries
//!    admitted under the old state are re-checked against the new one (continuous verification).

use std::net::IpAddr;

use ipnet::IpNet;
use zt_common::{
    endpoint::{EndpointValue, flags},
    policy::{PolicyKey, PolicyValue},
};

use super::{DatapathState, StateDelta};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<V> {
    Upsert(V),
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapWrite {
    Policy(PolicyKey, Op<PolicyValue>),
    Identity(IpNet, Op<u32>),
    Endpoint(IpAddr, Op<EndpointValue>),
    BumpRevision,
}

impl StateDelta {
    /// Takes out the changes whose writes a full map refused (inserts of new keys), so what is
    /// left is what the maps now hold on top of the state the plan started from.
    pub fn drop_refused(&mut self, refused: &[MapWrite]) {
        for write in refused {
            match write {
                MapWrite::Policy(key, Op::Upsert(_)) => {
                    self.policy.remove(key);
                }
                MapWrite::Identity(net, Op::Upsert(_)) => {
                    self.identities.remove(net);
                }
                MapWrite::Endpoint(addr, Op::Upsert(_)) => {
                    self.endpoints.remove(addr);
                }
                MapWrite::Policy(_, Op::Delete)
                | MapWrite::Identity(_, Op::Delete)
                | MapWrite::Endpoint(_, Op::Delete)
                | MapWrite::BumpRevision => {}
            }
        }
    }
}

/// The ordered writes that apply `delta` on top of `applied` (see the module docs).
pub fn plan(applied: &DatapathState, delta: &StateDelta) -> Vec<MapWrite> {
    let mut writes = Vec::with_capacity(delta.len() + 1);
    let mut finals = Vec::new();

    writes.extend(
        delta
            .policy
            .iter()
            .filter_map(|(k, v)| v.map(|v| MapWrite::Policy(*k, Op::Upsert(v)))),
    );
    writes.extend(
        delta
            .identities
            .iter()
            .filter_map(|(k, v)| v.map(|v| MapWrite::Identity(*k, Op::Upsert(v)))),
    );
    for (addr, new) in &delta.endpoints {
        let Some(new) = new else { continue };
        let value = match applied.endpoints.get(addr) {
            Some(old) => {
                let transitional = transitional(old, new);
                if transitional != *new {
                    finals.push(MapWrite::Endpoint(*addr, Op::Upsert(*new)));
                }
                transitional
            }
            None => *new,
        };
        writes.push(MapWrite::Endpoint(*addr, Op::Upsert(value)));
    }

    writes.extend(
        delta
            .endpoints
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| MapWrite::Endpoint(*k, Op::Delete)),
    );
    writes.extend(
        delta
            .identities
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| MapWrite::Identity(*k, Op::Delete)),
    );
    writes.extend(
        delta
            .policy
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| MapWrite::Policy(*k, Op::Delete)),
    );
    writes.extend(finals);

    let may_revoke = !delta.endpoints.is_empty()
        || !delta.identities.is_empty()
        || delta.policy.values().any(Option::is_none);
    if may_revoke {
        writes.push(MapWrite::BumpRevision);
    }
    writes
}

/// The more permissive of two endpoint values, carrying the new identity and interface.
fn transitional(old: &EndpointValue, new: &EndpointValue) -> EndpointValue {
    const ISOLATION: u32 = flags::INGRESS_ISOLATED | flags::EGRESS_ISOLATED;
    let isolation = old.flags & new.flags & ISOLATION;
    let audit = (old.flags | new.flags) & flags::AUDIT;
    EndpointValue {
        identity: new.identity,
        flags: isolation | audit | (new.flags & !(ISOLATION | flags::AUDIT)),
        ifindex: new.ifindex,
        _pad: 0,
        ingress_tuples: old.ingress_tuples | new.ingress_tuples,
        egress_tuples: old.egress_tuples | new.egress_tuples,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use zt_common::policy::PolicyKey;

    use super::*;

    fn ep(identity: u32, flags: u32, ingress_tuples: u64) -> EndpointValue {
        EndpointValue {
            identity,
            flags,
            ingress_tuples,
            ..Default::default()
        }
    }

    fn key(subject: u32, peer: u32) -> PolicyKey {
        PolicyKey {
            subject,
            peer,
            port: 80,
            protocol: 6,
            tuple: 16,
        }
    }

    #[test]
    fn refused_inserts_leave_the_delta_and_the_rest_stays() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let mut delta = StateDelta::default();
        delta
            .policy
            .insert(key(1, 2), Some(PolicyValue { policy_ref: 1 }));
        delta
            .policy
            .insert(key(1, 3), Some(PolicyValue { policy_ref: 1 }));
        delta.policy.insert(key(1, 4), None);
        delta.identities.insert(IpNet::from(a), Some(7));
        delta.endpoints.insert(a, Some(ep(7, 0, 1)));
        delta.endpoints.insert(b, Some(ep(8, 0, 1)));
        let refused = [
            MapWrite::Policy(key(1, 3), Op::Upsert(PolicyValue { policy_ref: 1 })),
            MapWrite::Endpoint(b, Op::Upsert(ep(8, 0, 1))),
        ];
        let mut kept = delta.clone();
        kept.drop_refused(&refused);
        assert_eq!(
            kept.policy.keys().copied().collect::<Vec<_>>(),
            vec![key(1, 2), key(1, 4)]
        );
        assert_eq!(kept.identities, delta.identities);
        assert_eq!(kept.endpoints.keys().copied().collect::<Vec<_>>(), vec![a]);
    }

    #[test]
    fn pure_policy_adds_do_not_bump_the_revision() {
        let applied = DatapathState::default();
        let mut desired = DatapathState::default();
        desired
            .policy
            .insert(key(1, 2), PolicyValue { policy_ref: 1 });
        let writes = plan(&applied, &applied.diff(&desired));
        assert_eq!(
            writes,
            vec![MapWrite::Policy(
                key(1, 2),
                Op::Upsert(PolicyValue { policy_ref: 1 })
            )]
        );
    }

    #[test]
    fn adds_come_before_deletes_and_deletes_bump_the_revision() {
        let mut applied = DatapathState::default();
        applied
            .policy
            .insert(key(1, 2), PolicyValue { policy_ref: 1 });
        let mut desired = DatapathState::default();
        desired
            .policy
            .insert(key(1, 3), PolicyValue { policy_ref: 2 });
        let writes = plan(&applied, &applied.diff(&desired));
        assert_eq!(
            writes,
            vec![
                MapWrite::Policy(key(1, 3), Op::Upsert(PolicyValue { policy_ref: 2 })),
                MapWrite::Policy(key(1, 2), Op::Delete),
                MapWrite::BumpRevision,
            ]
        );
    }

    #[test]
    fn a_narrowing_endpoint_goes_through_a_permissive_transition() {
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        let applied = DatapathState {
            endpoints: BTreeMap::from([(addr, ep(7, 0, 0b01))]),
            ..Default::default()
        };
        let desired = DatapathState {
            endpoints: BTreeMap::from([(addr, ep(7, flags::INGRESS_ISOLATED, 0b10))]),
            ..Default::default()
        };
        let writes = plan(&applied, &applied.diff(&desired));
        assert_eq!(
            writes,
            vec![
                MapWrite::Endpoint(addr, Op::Upsert(ep(7, 0, 0b11))),
                MapWrite::Endpoint(addr, Op::Upsert(ep(7, flags::INGRESS_ISOLATED, 0b10))),
                MapWrite::BumpRevision,
            ]
        );
    }

    #[test]
    fn applying_the_diff_reaches_the_desired_state() {
        let mut applied = DatapathState::default();
        applied
            .policy
            .insert(key(1, 2), PolicyValue { policy_ref: 1 });
        applied.identities.insert("10.0.0.0/8".parse().unwrap(), 5);
        let mut desired = DatapathState::default();
        desired
            .policy
            .insert(key(1, 3), PolicyValue { policy_ref: 2 });
        desired.identities.insert("10.0.0.0/8".parse().unwrap(), 6);
        let delta = applied.diff(&desired);
        applied.apply(&delta);
        assert_eq!(applied, desired);
        assert!(applied.diff(&desired).is_empty());
    }
}
