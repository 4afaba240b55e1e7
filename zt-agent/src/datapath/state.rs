//! The desired (or applied) contents of the datapath maps, as plain ordered collections.
//!
//! The compiler produces a [`DatapathState`]; the runtime keeps the one it applied, diffs, and
//! writes only the difference. `BTreeMap`s keep every iteration deterministic.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use zt_common::{
    endpoint::EndpointValue,
    policy::{PolicyKey, PolicyValue},
};

/// Everything the agent owns in the kernel maps (conntrack and counters belong to the kernel).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathState {
    /// Local endpoints by address. `ifindex` is 0 as compiled; the runtime fills it in from the
    /// interfaces it attached to.
    pub endpoints: BTreeMap<IpAddr, EndpointValue>,
    /// Identity tries, IPv4 and IPv6 together (a /32 or /128 for a pod address).
    pub identities: BTreeMap<IpNet, u32>,
    /// Policy entries.
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
}

/// A change to a [`DatapathState`]: `Some` upserts, `None` deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDelta {
    pub endpoints: BTreeMap<IpAddr, Option<EndpointValue>>,
    pub identities: BTreeMap<IpNet, Option<u32>>,
    pub policy: BTreeMap<PolicyKey, Option<PolicyValue>>,
}

impl StateDelta {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.identities.is_empty() && self.policy.is_empty()
    }

    pub fn len(&self) -> usize {
        self.endpoints.len() + self.identities.len() + self.policy.len()
    }

    /// Adds `later` on top of `self`: where both change a key, `later`'s change stands.
    pub fn merge(&mut self, later: StateDelta) {
        self.endpoints.extend(later.endpoints);
        self.identities.extend(later.identities);
        self.policy.extend(later.policy);
    }
}

impl DatapathState {
    /// The delta that turns `self` into `desired`; empty when they are equal.
    pub fn diff(&self, desired: &DatapathState) -> StateDelta {
        StateDelta {
            endpoints: diff_maps(&self.endpoints, &desired.endpoints),
            identities: diff_maps(&self.identities, &desired.identities),
            policy: diff_maps(&self.policy, &desired.policy),
        }
    }

    /// The changes in `delta` that `self` does not hold already: a delta that turns `self` into
    /// `self` + `delta` with no redundant write.
    pub fn missing(&self, delta: &StateDelta) -> StateDelta {
        StateDelta {
            endpoints: missing(&self.endpoints, &delta.endpoints),
            identities: missing(&self.identities, &delta.identities),
            policy: missing(&self.policy, &delta.policy),
        }
    }

    /// Applies a delta in place.
    pub fn apply(&mut self, delta: &StateDelta) {
        apply_map(&mut self.endpoints, &delta.endpoints);
        apply_map(&mut self.identities, &delta.identities);
        apply_map(&mut self.policy, &delta.policy);
    }
}

fn missing<K: Ord + Clone, V: PartialEq + Clone>(
    applied: &BTreeMap<K, V>,
    delta: &BTreeMap<K, Option<V>>,
) -> BTreeMap<K, Option<V>> {
    delta
        .iter()
        .filter(|(k, v)| applied.get(*k) != v.as_ref())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The changes that turn `applied` into `desired`.
pub fn diff_maps<K: Ord + Clone, V: PartialEq + Clone>(
    applied: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> BTreeMap<K, Option<V>> {
    let upserts = desired
        .iter()
        .filter(|(k, v)| applied.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), Some(v.clone())));
    let deletes = applied
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .map(|k| (k.clone(), None));
    upserts.chain(deletes).collect()
}

fn apply_map<K: Ord + Clone, V: Clone>(map: &mut BTreeMap<K, V>, delta: &BTreeMap<K, Option<V>>) {
    if map.is_empty() {
        // Built in one go from sorted input: a first compile writes every entry.
        *map = delta
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        return;
    }
    for (k, v) in delta {
        match v {
            Some(v) => {
                map.insert(k.clone(), v.clone());
            }
            None => {
                map.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn identities(changes: &[(&str, Option<u32>)]) -> StateDelta {
        StateDelta {
            identities: changes.iter().map(|(n, v)| (net(n), *v)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn merged_changes_keep_the_later_one_per_key() {
        let mut pending = identities(&[("10.0.0.1/32", Some(300)), ("10.0.0.2/32", Some(301))]);
        pending.merge(identities(&[
            ("10.0.0.1/32", None),
            ("10.0.0.3/32", Some(302)),
        ]));
        assert_eq!(
            pending,
            identities(&[
                ("10.0.0.1/32", None),
                ("10.0.0.2/32", Some(301)),
                ("10.0.0.3/32", Some(302)),
            ])
        );
    }

    #[test]
    fn missing_changes_leave_out_what_the_state_holds_already() {
        let applied = DatapathState {
            identities: [(net("10.0.0.1/32"), 300), (net("10.0.0.2/32"), 301)].into(),
            ..Default::default()
        };
        let changes = identities(&[
            ("10.0.0.1/32", Some(300)), // held already
            ("10.0.0.2/32", Some(999)), // another value
            ("10.0.0.3/32", None),      // deleting what is not there
            ("10.0.0.1/32", Some(300)),
        ]);
        assert_eq!(
            applied.missing(&changes),
            identities(&[("10.0.0.2/32", Some(999))])
        );
        let gone = identities(&[("10.0.0.1/32", None)]);
        assert_eq!(applied.missing(&gone), gone);
        // Applying what is missing gives what applying every change would.
        let mut all = applied.clone();
        all.apply(&changes);
        let mut only_missing = applied.clone();
        only_missing.apply(&applied.missing(&changes));
        assert_eq!(only_missing, all);
    }
}
