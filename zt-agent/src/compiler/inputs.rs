//! What changed in the [`Index`] since the last update.
//!
//! The compiler keeps a snapshot of the objects it compiled: clones of the index's `Arc`s. The
//! index replaces an object's `Arc` only when the object changes, so walking both sorted maps
//! side by side finds the changes with one pointer comparison per unchanged object. An object
//! that arrives in a new `Arc` with an equal value (another index, a rebuilt one) is compared by
//! value and is not a change.

use std::{collections::BTreeMap, sync::Arc};

use crate::index::{Index, NamespaceInfo, ObjectKey, PodInfo, PolicyInfo};

/// One object that was added, changed or removed.
pub struct Change<K, V> {
    pub key: K,
    pub old: Option<Arc<V>>,
    pub new: Option<Arc<V>>,
}

/// Every change of one update, per kind, in key order.
#[derive(Default)]
pub struct Changes {
    pub namespaces: Vec<Change<String, NamespaceInfo>>,
    pub pods: Vec<Change<ObjectKey, PodInfo>>,
    pub policies: Vec<Change<ObjectKey, PolicyInfo>>,
}

/// The objects of the last update.
#[derive(Default)]
pub struct Snapshot {
    namespaces: BTreeMap<String, Arc<NamespaceInfo>>,
    pods: BTreeMap<ObjectKey, Arc<PodInfo>>,
    policies: BTreeMap<ObjectKey, Arc<PolicyInfo>>,
}

impl Snapshot {
    /// Moves the snapshot to `index` and returns what changed.
    pub fn update(&mut self, index: &Index) -> Changes {
        Changes {
            namespaces: sync(&mut self.namespaces, &index.namespaces),
            pods: sync(&mut self.pods, &index.pods),
            policies: sync(&mut self.policies, &index.policies),
        }
    }

    pub fn namespaces(&self) -> &BTreeMap<String, Arc<NamespaceInfo>> {
        &self.namespaces
    }

    pub fn pods(&self) -> &BTreeMap<ObjectKey, Arc<PodInfo>> {
        &self.pods
    }
}

/// Makes `old` equal to `new` and returns the changes, in key order.
fn sync<K: Ord + Clone, V: PartialEq>(
    old: &mut BTreeMap<K, Arc<V>>,
    new: &BTreeMap<K, Arc<V>>,
) -> Vec<Change<K, V>> {
    let mut changes = Vec::new();
    // Equal values in new `Arc`s: adopted without being reported.
    let mut adopted = Vec::new();
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let order = match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((ok, _)), Some((nk, _))) => ok.cmp(nk),
        };
        match order {
            std::cmp::Ordering::Less => {
                let (k, v) = o.next().expect("peeked");
                changes.push(Change {
                    key: k.clone(),
                    old: Some(v.clone()),
                    new: None,
                });
            }
            std::cmp::Ordering::Greater => {
                let (k, v) = n.next().expect("peeked");
                changes.push(Change {
                    key: k.clone(),
                    old: None,
                    new: Some(v.clone()),
                });
            }
            std::cmp::Ordering::Equal => {
                let ((k, ov), (_, nv)) = (o.next().expect("peeked"), n.next().expect("peeked"));
                if Arc::ptr_eq(ov, nv) {
                    continue;
                }
                if ov == nv {
                    adopted.push((k.clone(), nv.clone()));
                } else {
                    changes.push(Change {
                        key: k.clone(),
                        old: Some(ov.clone()),
                        new: Some(nv.clone()),
                    });
                }
            }
        }
    }
    for (k, v) in adopted {
        old.insert(k, v);
    }
    for c in &changes {
        match &c.new {
            Some(v) => old.insert(c.key.clone(), v.clone()),
            None => old.remove(&c.key),
        };
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(u32, &str)]) -> BTreeMap<u32, Arc<String>> {
        entries
            .iter()
            .map(|(k, v)| (*k, Arc::new(v.to_string())))
            .collect()
    }

    #[test]
    fn reports_adds_changes_and_removes_but_not_equal_values_in_new_arcs() {
        let mut old = map(&[(1, "a"), (2, "b"), (3, "c")]);
        let new = map(&[(2, "b"), (3, "C"), (4, "d")]);
        let changes = sync(&mut old, &new);
        let seen: Vec<(u32, Option<&str>, Option<&str>)> = changes
            .iter()
            .map(|c| {
                (
                    c.key,
                    c.old.as_deref().map(String::as_str),
                    c.new.as_deref().map(String::as_str),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (1, Some("a"), None),
                (3, Some("c"), Some("C")),
                (4, None, Some("d"))
            ]
        );
        // The snapshot now shares every `Arc` of `new`, so the next walk compares pointers only.
        assert!(old.iter().zip(&new).all(|(a, b)| Arc::ptr_eq(a.1, b.1)));
        assert!(sync(&mut old, &new).is_empty());
    }
}
