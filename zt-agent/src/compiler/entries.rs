//! Policy entries as a multiset of grants, so they can be added and retracted one at a time.
//!
//! Several rules (of one policy or several) may grant the same key; the key stays while any
//! grant remains, and its value names the lowest policy ref among them (the choice a full compile
//! makes, deterministically). This is Cilium's `MapState` with owners per entry, reduced to
//! counts per policy ref. Alongside, per subject, how many keys use each tuple slot: the
//! endpoint's tuple sets follow from it without a scan.

use std::collections::{BTreeMap, BTreeSet, hash_map::Entry};

use foldhash::HashMap;

use zt_common::policy::{PolicyKey, PolicyValue};

use super::emit::slot_bit;

/// One policy ref's grants of a key: (ref, count).
type Grants = (u32, u32);

/// Keys per tuple slot of one subject: `[ingress, egress]`, 64 slots each.
type SlotCounts = [[u32; 64]; 2];

#[derive(Default)]
pub struct Entries {
    /// Every key with its lowest ref's grants: the key's value. Eight bytes a key, as most keys
    /// are granted by one policy.
    lowest: HashMap<PolicyKey, Grants>,
    /// The grants of the other refs of a key granted by several policies, sorted by ref.
    others: HashMap<PolicyKey, Vec<Grants>>,
    slots: HashMap<u32, Box<SlotCounts>>,
    /// Keys whose value may have changed since the last [`Entries::take_delta`] (repeats
    /// allowed).
    touched: Vec<PolicyKey>,
    /// Subjects whose tuple sets may have changed since the last [`Entries::take_subjects`].
    subjects: BTreeSet<u32>,
}

impl Entries {
    pub fn add(&mut self, key: PolicyKey, policy_ref: u32) {
        let lowest = match self.lowest.entry(key) {
            Entry::Vacant(e) => {
                e.insert((policy_ref, 1));
                self.touched.push(key);
                self.count_slot(&key, true);
                return;
            }
            Entry::Occupied(e) => e.into_mut(),
        };
        if lowest.0 == policy_ref {
            lowest.1 += 1;
            return;
        }
        let mut other = (policy_ref, 1);
        if policy_ref < lowest.0 {
            // The new ref becomes the value; the old lowest joins the others.
            other = std::mem::replace(lowest, other);
            self.touched.push(key);
        }
        let others = self.others.entry(key).or_default();
        match others.binary_search_by_key(&other.0, |g| g.0) {
            Ok(i) => others[i].1 += other.1,
            Err(i) => others.insert(i, other),
        }
    }

    pub fn remove(&mut self, key: PolicyKey, policy_ref: u32) {
        let Some(lowest) = self.lowest.get_mut(&key) else {
            debug_assert!(false, "retracting {key:?}, which has no grant");
            return;
        };
        if lowest.0 == policy_ref {
            lowest.1 -= 1;
            if lowest.1 > 0 {
                return;
            }
            self.touched.push(key);
            // The next ref, if any, becomes the value.
            match self.others.get_mut(&key) {
                Some(others) => {
                    *lowest = others.remove(0);
                    if others.is_empty() {
                        self.others.remove(&key);
                    }
                }
                None => {
                    self.lowest.remove(&key);
                    self.count_slot(&key, false);
                }
            }
            return;
        }
        let Some(others) = self.others.get_mut(&key) else {
            debug_assert!(false, "retracting a grant of ref {policy_ref} never made");
            return;
        };
        let Ok(i) = others.binary_search_by_key(&policy_ref, |g| g.0) else {
            debug_assert!(false, "retracting a grant of ref {policy_ref} never made");
            return;
        };
        others[i].1 -= 1;
        if others[i].1 == 0 {
            others.remove(i);
            if others.is_empty() {
                self.others.remove(&key);
            }
        }
    }

    /// The tuple sets of a subject: `(ingress, egress)`.
    pub fn tuples(&self, subject: u32) -> (u64, u64) {
        let Some(counts) = self.slots.get(&subject) else {
            return (0, 0);
        };
        let bits = |dir: &[u32; 64]| {
            dir.iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .fold(0u64, |acc, (i, _)| acc | 1 << i)
        };
        (bits(&counts[0]), bits(&counts[1]))
    }

    /// What turns `applied` (the entries as of the last call) into the entries now: `Some`
    /// upserts, `None` deletes.
    pub fn take_delta(
        &mut self,
        applied: &BTreeMap<PolicyKey, PolicyValue>,
    ) -> BTreeMap<PolicyKey, Option<PolicyValue>> {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        touched
            .into_iter()
            .filter_map(|key| {
                let now = self.lowest.get(&key).map(|(policy_ref, _)| PolicyValue {
                    policy_ref: *policy_ref,
                });
                (applied.get(&key) != now.as_ref()).then_some((key, now))
            })
            .collect()
    }

    /// Subjects whose tuple sets may have changed since the last call.
    pub fn take_subjects(&mut self) -> BTreeSet<u32> {
        std::mem::take(&mut self.subjects)
    }

    fn count_slot(&mut self, key: &PolicyKey, present: bool) {
        let (egress, bit) = slot_bit(key);
        let counts = self
            .slots
            .entry(key.subject)
            .or_insert_with(|| Box::new([[0; 64]; 2]));
        let n = &mut counts[usize::from(egress)][bit.trailing_zeros() as usize];
        if present {
            *n += 1;
            if *n == 1 {
                self.subjects.insert(key.subject);
            }
        } else {
            *n -= 1;
            if *n == 0 {
                self.subjects.insert(key.subject);
                if counts.iter().flatten().all(|n| *n == 0) {
                    self.slots.remove(&key.subject);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use zt_common::policy::tuple;

    use super::*;

    fn key(peer: u32) -> PolicyKey {
        PolicyKey {
            subject: 300,
            peer,
            port: 80,
            protocol: zt_common::proto::TCP,
            tuple: 16,
        }
    }

    /// Takes the delta and applies it, as the compiler does with its state.
    fn step(
        e: &mut Entries,
        applied: &mut BTreeMap<PolicyKey, PolicyValue>,
    ) -> Vec<(PolicyKey, Option<PolicyValue>)> {
        let delta = e.take_delta(applied);
        for (k, v) in &delta {
            match v {
                Some(v) => applied.insert(*k, *v),
                None => applied.remove(k),
            };
        }
        delta.into_iter().collect()
    }

    #[test]
    fn a_key_lives_while_a_grant_does_and_carries_the_lowest_ref() {
        let (mut e, mut applied) = (Entries::default(), BTreeMap::new());
        e.add(key(1), 5);
        e.add(key(1), 3);
        e.add(key(1), 5);
        let value = |r| Some(PolicyValue { policy_ref: r });
        assert_eq!(step(&mut e, &mut applied), [(key(1), value(3))]);
        assert_eq!(e.tuples(300), (tuple::bit(false, 16), 0));
        e.remove(key(1), 3);
        assert_eq!(step(&mut e, &mut applied), [(key(1), value(5))]);
        e.remove(key(1), 5);
        assert!(
            step(&mut e, &mut applied).is_empty(),
            "one grant of ref 5 is left"
        );
        e.remove(key(1), 5);
        assert_eq!(step(&mut e, &mut applied), [(key(1), None)]);
        assert_eq!(e.tuples(300), (0, 0));
        // Added and retracted within one update: no write.
        e.add(key(2), 1);
        e.remove(key(2), 1);
        assert!(step(&mut e, &mut applied).is_empty());
        // Three refs: retracting one that is not the value writes nothing.
        for r in [7, 5, 3] {
            e.add(key(3), r);
        }
        e.remove(key(3), 5);
        assert_eq!(step(&mut e, &mut applied), [(key(3), value(3))]);
        e.remove(key(3), 3);
        assert_eq!(step(&mut e, &mut applied), [(key(3), value(7))]);
        e.remove(key(3), 7);
        assert_eq!(step(&mut e, &mut applied), [(key(3), None)]);
        assert!(e.lowest.is_empty() && e.others.is_empty());
    }
}
