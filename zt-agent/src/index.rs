//! Pure cluster state: namespaces, pods and policies, keeping only the fields that matter.
//!
//! Like linkerd's policy-controller index, every kind has a synchronous `apply` / `delete` /
//! `reset`, each returning whether anything that matters changed: a pod status update that only
//! touches conditions, or a policy whose annotations changed, writes nothing. The index never
//! validates policy content; the compiler does, so a bad field is warned about where it is used.
//!
//! Objects are held behind an `Arc` that is replaced only when the object changes (a re-list
//! keeps the `Arc` of every object it did not change). The compiler keeps clones of these `Arc`s,
//! so it recognises an unchanged object by pointer, without comparing it field by field.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Container, Namespace, Pod},
    networking::v1::{NetworkPolicy, NetworkPolicySpec},
};

use crate::resource::{Kind, Resource, SourceEvent};

/// The label the API server sets on every namespace since 1.21; set here when missing.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub type Labels = BTreeMap<String, String>;

/// `namespace/name`.
pub type ObjectKey = (String, String);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub labels: Labels,
}

/// A container port with a name, as written in the pod spec (validated by the compiler).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    /// `TCP` when the spec leaves it out.
    pub protocol: String,
    pub port: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: Labels,
    /// `status.podIPs` (or `status.podIP`), parsed; empty once the pod has finished.
    pub ips: Vec<IpAddr>,
    /// Addresses in the status that do not parse, kept so the compiler can warn about them.
    pub bad_ips: Vec<String>,
    pub node_name: Option<String>,
    /// Host-network pods share the node's addresses and are not NetworkPolicy endpoints or peers.
    pub host_network: bool,
    /// Every named container port, init (sidecar) containers included, sorted.
    pub named_ports: Vec<NamedPort>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyInfo {
    pub spec: NetworkPolicySpec,
}

/// The cluster as the compiler needs it.
#[derive(Clone, Debug, Default)]
pub struct Index {
    pub namespaces: BTreeMap<String, Arc<NamespaceInfo>>,
    pub pods: BTreeMap<ObjectKey, Arc<PodInfo>>,
    pub policies: BTreeMap<ObjectKey, Arc<PolicyInfo>>,
    /// Bumped on every change, so a consumer can tell a no-op from a change cheaply.
    pub generation: u64,
}

impl Index {
    pub fn handle(&mut self, event: SourceEvent) -> bool {
        match event {
            SourceEvent::Apply(resource) => self.apply(resource),
            SourceEvent::Delete {
                kind,
                namespace,
                name,
            } => self.delete(kind, namespace.as_deref(), &name),
            SourceEvent::Reset { kind, objects } => self.reset(kind, objects),
        }
    }

    /// Inserts or updates an object; `true` when something that matters changed.
    pub fn apply(&mut self, resource: Resource) -> bool {
        let changed = match resource {
            Resource::Namespace(ns) => {
                let Some((name, info)) = namespace_info(&ns) else {
                    return false;
                };
                upsert(&mut self.namespaces, name, info)
            }
            Resource::Pod(pod) => {
                let Some((key, info)) = pod_info(&pod) else {
                    return false;
                };
                upsert(&mut self.pods, key, info)
            }
            Resource::NetworkPolicy(policy) => {
                let Some((key, info)) = policy_info(&policy) else {
                    return false;
                };
                upsert(&mut self.policies, key, info)
            }
        };
        self.bump(changed)
    }

    /// Removes an object; `true` when it was present.
    pub fn delete(&mut self, kind: Kind, namespace: Option<&str>, name: &str) -> bool {
        let changed = match kind {
            Kind::Namespace => self.namespaces.remove(name).is_some(),
            Kind::Pod => self.pods.remove(&key(namespace, name)).is_some(),
            Kind::NetworkPolicy => self.policies.remove(&key(namespace, name)).is_some(),
        };
        self.bump(changed)
    }

    /// Replaces every object of `kind` with `objects` (a re-list); objects of another kind in
    /// `objects` are ignored. `true` when the result differs from before.
    pub fn reset(&mut self, kind: Kind, objects: Vec<Resource>) -> bool {
        let changed = match kind {
            Kind::Namespace => {
                let new = objects
                    .iter()
                    .filter_map(|r| match r {
                        Resource::Namespace(ns) => namespace_info(ns),
                        _ => None,
                    })
                    .collect();
                replace(&mut self.namespaces, new)
            }
            Kind::Pod => {
                let new = objects
                    .iter()
                    .filter_map(|r| match r {
                        Resource::Pod(pod) => pod_info(pod),
                        _ => None,
                    })
                    .collect();
                replace(&mut self.pods, new)
            }
            Kind::NetworkPolicy => {
                let new = objects
                    .iter()
                    .filter_map(|r| match r {
                        Resource::NetworkPolicy(p) => policy_info(p),
                        _ => None,
                    })
                    .collect();
                replace(&mut self.policies, new)
            }
        };
        self.bump(changed)
    }

    fn bump(&mut self, changed: bool) -> bool {
        if changed {
            self.generation += 1;
        }
        changed
    }
}

fn key(namespace: Option<&str>, name: &str) -> ObjectKey {
    (namespace.unwrap_or("default").to_string(), name.to_string())
}

fn upsert<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, Arc<V>>, key: K, value: V) -> bool {
    if map.get(&key).is_some_and(|old| **old == value) {
        return false;
    }
    map.insert(key, Arc::new(value));
    true
}

/// Replaces `map` with `new`, keeping the `Arc` of every object whose value did not change.
fn replace<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, Arc<V>>, new: BTreeMap<K, V>) -> bool {
    let mut changed = map.len() != new.len();
    let mut old = std::mem::take(map);
    for (key, value) in new {
        let kept = old.remove(&key).filter(|o| **o == value);
        changed |= kept.is_none();
        map.insert(key, kept.unwrap_or_else(|| Arc::new(value)));
    }
    changed
}

fn namespace_info(ns: &Namespace) -> Option<(String, NamespaceInfo)> {
    let name = ns.metadata.name.clone()?;
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels
        .entry(NAMESPACE_NAME_LABEL.to_string())
        .or_insert_with(|| name.clone());
    Some((name, NamespaceInfo { labels }))
}

fn pod_info(pod: &Pod) -> Option<(ObjectKey, PodInfo)> {
    let name = pod.metadata.name.clone()?;
    let key = key(pod.metadata.namespace.as_deref(), &name);
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let finished = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );

    let mut raw_ips: Vec<&str> = Vec::new();
    if !finished && let Some(status) = status {
        match status.pod_ips.as_deref() {
            Some(ips) if !ips.is_empty() => raw_ips.extend(ips.iter().map(|ip| ip.ip.as_str())),
            _ => raw_ips.extend(status.pod_ip.as_deref()),
        }
    }
    let mut ips = BTreeSet::new();
    let mut bad_ips = Vec::new();
    for raw in raw_ips {
        match raw.parse::<IpAddr>() {
            Ok(ip) => {
                ips.insert(ip);
            }
            Err(_) => bad_ips.push(raw.to_string()),
        }
    }

    let mut named_ports: Vec<NamedPort> = spec
        .map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .flat_map(container_ports)
                .collect()
        })
        .unwrap_or_default();
    named_ports.sort();
    named_ports.dedup();

    let info = PodInfo {
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ips: ips.into_iter().collect(),
        bad_ips,
        node_name: spec.and_then(|s| s.node_name.clone()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        named_ports,
    };
    Some((key, info))
}

fn container_ports(container: &Container) -> impl Iterator<Item = NamedPort> + '_ {
    container.ports.iter().flatten().filter_map(|p| {
        Some(NamedPort {
            name: p.name.clone()?,
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
            port: p.container_port,
        })
    })
}

fn policy_info(policy: &NetworkPolicy) -> Option<(ObjectKey, PolicyInfo)> {
    let name = policy.metadata.name.clone()?;
    let key = key(policy.metadata.namespace.as_deref(), &name);
    Some((
        key,
        PolicyInfo {
            spec: policy.spec.clone().unwrap_or_default(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{ContainerPort, PodIP, PodSpec, PodStatus},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn pod(name: &str, labels: &[(&str, &str)], ip: &str, phase: &str) -> Resource {
        Resource::Pod(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                conditions: None,
                ..Default::default()
            }),
        })
    }

    #[test]
    fn a_no_op_update_changes_nothing() {
        let mut index = Index::default();
        assert!(index.apply(pod("a", &[("app", "x")], "10.0.0.1", "Running")));
        let generation = index.generation;
        assert!(!index.apply(pod("a", &[("app", "x")], "10.0.0.1", "Running")));
        assert_eq!(index.generation, generation);
        assert!(index.apply(pod("a", &[("app", "y")], "10.0.0.1", "Running")));
        let info = &index.pods[&("ns".to_string(), "a".to_string())];
        assert_eq!(
            info.named_ports[0],
            NamedPort {
                name: "http".into(),
                protocol: "TCP".into(),
                port: 8080
            }
        );
    }

    #[test]
    fn finished_pods_have_no_address_and_bad_addresses_are_kept_for_warnings() {
        let mut index = Index::default();
        index.apply(pod("a", &[], "10.0.0.1", "Succeeded"));
        index.apply(pod("b", &[], "not-an-ip", "Running"));
        assert!(index.pods[&("ns".into(), "a".into())].ips.is_empty());
        assert_eq!(
            index.pods[&("ns".into(), "b".into())].bad_ips,
            vec!["not-an-ip".to_string()]
        );
    }

    #[test]
    fn namespaces_get_the_name_label_and_reset_drops_the_missing() {
        let mut index = Index::default();
        let ns = |n: &str| {
            Resource::Namespace(Namespace {
                metadata: ObjectMeta {
                    name: Some(n.into()),
                    ..Default::default()
                },
                ..Default::default()
            })
        };
        index.apply(ns("a"));
        assert_eq!(index.namespaces["a"].labels[NAMESPACE_NAME_LABEL], "a");
        assert!(index.reset(Kind::Namespace, vec![ns("b")]));
        assert!(!index.namespaces.contains_key("a"));
        assert!(!index.reset(Kind::Namespace, vec![ns("b")]));
        assert!(index.delete(Kind::Namespace, None, "b"));
        assert!(!index.delete(Kind::Namespace, None, "b"));
    }
}
