//! The selector cache: for every distinct peer a policy names, the identities it selects now.
//!
//! As in Cilium's `SelectorCache`, a selection is shared by every rule that names the same peer
//! (the same pod and namespace selectors from the same namespace, the same ipBlock, the same
//! named port), and it is kept up to date from identity events — an identity appeared, one went
//! away, a namespace was relabelled — instead of being resolved again for every rule. Each event
//! reports the selections it changed, so the compiler can add or retract exactly the entries of
//! the rules that use them.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use foldhash::HashMap;

use super::{
    identities::{Class, Classes},
    policy::{Block, Namespaces, Peer},
    selector::Selector,
};
use crate::index::{Labels, NAMESPACE_NAME_LABEL, NamespaceInfo};

/// What a peer of a rule selects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selects {
    /// Pod classes matching `pods` in the namespaces of `scope`.
    Pods { scope: Scope, pods: Selector },
    /// Pod classes and CIDR regions inside an ipBlock.
    Block(Block),
    /// Pod classes holding a named port `(name, protocol)`: the peers an egress rule without
    /// peers reaches on that named port.
    PortHolders(String, u8),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One namespace: the policy's own.
    Namespace(String),
    /// Every namespace whose labels match.
    Matching(Selector),
}

impl Selects {
    /// What `peer`, written in a policy of namespace `ns`, selects.
    pub fn peer(ns: &str, peer: &Peer) -> Selects {
        match peer {
            Peer::Block(b) => Selects::Block(b.clone()),
            Peer::Pods { namespaces, pods } => Selects::Pods {
                scope: match namespaces {
                    Namespaces::Own => Scope::Namespace(ns.to_string()),
                    Namespaces::Matching(s) => Scope::Matching(s.clone()),
                },
                pods: pods.clone(),
            },
        }
    }
}

/// Who uses a selection: a rule of a policy, on all its ports or on one (a named port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct User {
    pub policy: u32,
    pub dir: u8,
    pub rule: usize,
    pub port: Option<usize>,
}

pub type SelectionId = usize;

struct Selection {
    key: Selects,
    ids: BTreeSet<u32>,
    users: Vec<User>,
}

/// Labels of namespaces, as selectors see them: a namespace with pods but no object has only
/// its name label.
pub struct NamespaceLabels<'a>(pub &'a BTreeMap<String, Arc<NamespaceInfo>>);

impl NamespaceLabels<'_> {
    pub fn get(&self, ns: &str) -> Cow<'_, Labels> {
        match self.0.get(ns) {
            Some(info) => Cow::Borrowed(&info.labels),
            None => Cow::Owned(Labels::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                ns.to_string(),
            )])),
        }
    }
}

/// A selection that gained (`true`) or lost an identity.
pub type Event = (SelectionId, u32, bool);

#[derive(Default)]
pub struct Selections {
    slots: Vec<Option<Selection>>,
    free: Vec<SelectionId>,
    by_key: HashMap<Selects, SelectionId>,
    /// Pod selections scoped to one namespace, by namespace.
    by_namespace: HashMap<String, BTreeSet<SelectionId>>,
    /// Pod selections scoped by a namespace selector.
    matching: BTreeSet<SelectionId>,
    by_block: HashMap<Block, SelectionId>,
    by_port: HashMap<(String, u8), SelectionId>,
}

impl Selections {
    /// The identities a selection holds.
    pub fn ids(&self, id: SelectionId) -> &BTreeSet<u32> {
        &self.get(id).ids
    }

    /// The rules that use a selection.
    pub fn users(&self, id: SelectionId) -> &[User] {
        &self.get(id).users
    }

    fn get(&self, id: SelectionId) -> &Selection {
        self.slots[id].as_ref().expect("a live selection")
    }

    /// Registers `user` of `key`, resolving the selection against every identity if it is new.
    pub fn acquire(
        &mut self,
        key: Selects,
        user: User,
        classes: &Classes,
        labels: &NamespaceLabels,
    ) -> SelectionId {
        if let Some(&id) = self.by_key.get(&key) {
            self.slots[id].as_mut().expect("live").users.push(user);
            return id;
        }
        let ids = resolve(&key, classes, labels);
        let id = self.free.pop().unwrap_or(self.slots.len());
        match &key {
            Selects::Pods {
                scope: Scope::Namespace(ns),
                ..
            } => {
                self.by_namespace.entry(ns.clone()).or_default().insert(id);
            }
            Selects::Pods {
                scope: Scope::Matching(_),
                ..
            } => {
                self.matching.insert(id);
            }
            Selects::Block(b) => {
                self.by_block.insert(b.clone(), id);
            }
            Selects::PortHolders(name, protocol) => {
                self.by_port.insert((name.clone(), *protocol), id);
            }
        }
        self.by_key.insert(key.clone(), id);
        let selection = Selection {
            key,
            ids,
            users: vec![user],
        };
        if id == self.slots.len() {
            self.slots.push(Some(selection));
        } else {
            self.slots[id] = Some(selection);
        }
        id
    }

    /// Unregisters one `user` of a selection; a selection nobody uses is dropped.
    pub fn release(&mut self, id: SelectionId, user: User) {
        let selection = self.slots[id].as_mut().expect("live");
        if let Some(i) = selection.users.iter().position(|u| *u == user) {
            selection.users.swap_remove(i);
        }
        if !selection.users.is_empty() {
            return;
        }
        let selection = self.slots[id].take().expect("live");
        self.by_key.remove(&selection.key);
        match &selection.key {
            Selects::Pods {
                scope: Scope::Namespace(ns),
                ..
            } => {
                if let Some(set) = self.by_namespace.get_mut(ns) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.by_namespace.remove(ns);
                    }
                }
            }
            Selects::Pods {
                scope: Scope::Matching(_),
                ..
            } => {
                self.matching.remove(&id);
            }
            Selects::Block(b) => {
                self.by_block.remove(b);
            }
            Selects::PortHolders(name, protocol) => {
                self.by_port.remove(&(name.clone(), *protocol));
            }
        }
        self.free.push(id);
    }

    /// Adds a new identity to every selection it matches.
    pub fn identity_added(
        &mut self,
        id: u32,
        class: Class,
        labels: &NamespaceLabels,
        events: &mut Vec<Event>,
    ) {
        for s in self.candidates(class) {
            let selection = self.slots[s].as_mut().expect("live");
            if matches(&selection.key, class, labels) && selection.ids.insert(id) {
                events.push((s, id, true));
            }
        }
    }

    /// Takes an identity that went away out of every selection holding it.
    pub fn identity_removed(&mut self, id: u32, class: Class, events: &mut Vec<Event>) {
        for s in self.candidates(class) {
            if self.slots[s].as_mut().expect("live").ids.remove(&id) {
                events.push((s, id, false));
            }
        }
    }

    /// Re-evaluates the namespace-selector selections for the pod classes of a namespace whose
    /// labels changed.
    pub fn namespace_relabelled(
        &mut self,
        ns: &str,
        classes: &Classes,
        labels: &NamespaceLabels,
        events: &mut Vec<Event>,
    ) {
        for s in self.matching.iter().copied() {
            let selection = self.slots[s].as_mut().expect("live");
            for id in classes.in_namespace(ns) {
                let Some(class) = classes.get(id) else {
                    continue;
                };
                let now = matches(&selection.key, class, labels);
                let changed = if now {
                    selection.ids.insert(id)
                } else {
                    selection.ids.remove(&id)
                };
                if changed {
                    events.push((s, id, now));
                }
            }
        }
    }

    /// The selections an identity of this class could be in.
    fn candidates(&self, class: Class) -> Vec<SelectionId> {
        let mut out = Vec::new();
        let blocks = match class {
            Class::Pod(c) => {
                out.extend(self.by_namespace.get(&c.namespace).into_iter().flatten());
                out.extend(self.matching.iter());
                for (name, protocol, _) in &c.ports {
                    out.extend(self.by_port.get(&(name.clone(), *protocol)));
                }
                &c.blocks[..]
            }
            Class::Cidr(blocks) => blocks,
        };
        out.extend(blocks.iter().filter_map(|b| self.by_block.get(b)));
        // A class with a port twice (two protocols' worth of the same name) must not count twice.
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Whether an identity of `class` is in the selection `key`.
fn matches(key: &Selects, class: Class, labels: &NamespaceLabels) -> bool {
    match (key, class) {
        (Selects::Pods { scope, pods }, Class::Pod(c)) => {
            let in_scope = match scope {
                Scope::Namespace(ns) => *ns == c.namespace,
                Scope::Matching(sel) => sel.matches(&labels.get(&c.namespace)),
            };
            in_scope && pods.matches(&c.labels)
        }
        (Selects::Block(b), Class::Pod(c)) => c.blocks.contains(b),
        (Selects::Block(b), Class::Cidr(blocks)) => blocks.contains(b),
        (Selects::PortHolders(name, protocol), Class::Pod(c)) => {
            c.port_numbers(name, *protocol).next().is_some()
        }
        _ => false,
    }
}

/// Every identity in a new selection.
fn resolve(key: &Selects, classes: &Classes, labels: &NamespaceLabels) -> BTreeSet<u32> {
    let check = |id: &u32| classes.get(*id).is_some_and(|c| matches(key, c, labels));
    match key {
        Selects::Pods {
            scope: Scope::Namespace(ns),
            ..
        } => classes.in_namespace(ns).filter(check).collect(),
        Selects::Pods {
            scope: Scope::Matching(sel),
            ..
        } => classes
            .namespaces()
            .filter(|ns| sel.matches(&labels.get(ns)))
            .flat_map(|ns| classes.in_namespace(ns))
            .filter(check)
            .collect(),
        _ => classes.all().filter(check).collect(),
    }
}
