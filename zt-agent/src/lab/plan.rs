//! What the lab builds, decided without touching the kernel: the pods with their addresses and
//! served ports, the manifests the agent follows (the input with those addresses filled in, as a
//! kubelet would report them), and the probes to run.
//!
//! Addresses: `status.podIP` / `status.podIPs` when given (ipBlock cases depend on them);
//! otherwise IPv4 from [`AUTO_V4`] in pod order, skipping addresses already taken. IPv6 only when
//! `status.podIPs` lists one.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use k8s_openapi::api::core::v1::{Namespace, Pod, PodIP, PodStatus};

use crate::{error::Error, resource::Resource};

/// Where pods without `status.podIP` get their address: 10.88.0.0/16 (hosts .1 to .254 of each /24).
pub const AUTO_V4: (u8, u8) = (10, 88);

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

/// One declared `containerPort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as the lab wires it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabPod {
    pub namespace: String,
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    /// Sorted, without duplicates.
    pub ports: Vec<Port>,
}

impl LabPod {
    /// `ns/name`, as results name pods.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Everything the lab builds from one folder of manifests.
#[derive(Clone, Debug)]
pub struct Plan {
    /// In manifest order.
    pub pods: Vec<LabPod>,
    /// What the agent follows: the input with pod addresses and phase filled in and every
    /// namespace a pod uses declared.
    pub resources: Vec<Resource>,
}

/// One probe: from pod index `from` to pod index `to` on one of `to`'s ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub from: usize,
    pub to: usize,
    pub port: Port,
    pub ipv6: bool,
}

/// Plans the lab; errors name the object that cannot be wired.
pub fn plan(resources: Vec<Resource>) -> Result<Plan, Error> {
    let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
    let mut declared_namespaces = BTreeSet::new();
    let mut seen_pods = BTreeSet::new();
    let mut pods = Vec::new();
    let mut out = Vec::with_capacity(resources.len());
    // First pass: pinned addresses, so automatic ones never collide with a later pinned one.
    for resource in &resources {
        if let Resource::Pod(pod) = resource {
            for ip in pinned_ips(pod)? {
                if !taken.insert(ip) {
                    return Err(invalid(pod, format!("address {ip} is used by another pod")));
                }
            }
        }
    }
    let mut next_auto = 0u32;
    for resource in resources {
        match resource {
            Resource::Namespace(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                declared_namespaces.insert(name);
                out.push(Resource::Namespace(with_name_label(ns)));
            }
            Resource::Pod(mut pod) => {
                let namespace = pod
                    .metadata
                    .namespace
                    .get_or_insert_with(|| "default".to_owned())
                    .clone();
                let name = pod.metadata.name.clone().unwrap_or_default();
                if !seen_pods.insert((namespace.clone(), name.clone())) {
                    return Err(invalid(&pod, "declared twice".to_owned()));
                }
                let pinned = pinned_ips(&pod)?;
                let ipv4 = match pinned.iter().find_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                }) {
                    Some(v4) => v4,
                    None => auto_v4(&mut next_auto, &mut taken)
                        .ok_or_else(|| invalid(&pod, "no address left in 10.88.0.0/16".into()))?,
                };
                let ipv6 = pinned.iter().find_map(|ip| match ip {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                });
                let ports = ports(&pod)?;
                let status = pod.status.get_or_insert_with(PodStatus::default);
                status.pod_ip = Some(ipv4.to_string());
                let mut ips = vec![PodIP {
                    ip: ipv4.to_string(),
                }];
                ips.extend(ipv6.map(|v6| PodIP { ip: v6.to_string() }));
                status.pod_ips = Some(ips);
                status.phase.get_or_insert_with(|| "Running".to_owned());
                pods.push(LabPod {
                    namespace,
                    name,
                    ipv4,
                    ipv6,
                    ports,
                });
                out.push(Resource::Pod(pod));
            }
            other => out.push(other),
        }
    }
    // A pod's namespace exists in any real cluster; declare the ones the manifests left out.
    let missing: BTreeSet<_> = pods
        .iter()
        .map(|p| p.namespace.clone())
        .filter(|ns| !declared_namespaces.contains(ns))
        .collect();
    for name in missing.into_iter().rev() {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name);
        out.insert(0, Resource::Namespace(with_name_label(ns)));
    }
    if pods.is_empty() {
        return Err(Error::Other(
            "the manifests hold no Pod: the lab has nothing to build (it reads the folder and its \
             subfolders)"
                .into(),
        ));
    }
    Ok(Plan {
        pods,
        resources: out,
    })
}

/// An error when `pods` give no probe at all (one pod, or no pod declares a port): a probe run
/// that tries nothing must not look like one that found everything in order.
pub fn require_probes(pods: &[LabPod]) -> Result<(), Error> {
    if pods.len() < 2 {
        return Err(Error::Other(format!(
            "{} pod in the manifests: the lab probes between pods, it needs at least two",
            pods.len()
        )));
    }
    if probes(pods).is_empty() {
        return Err(Error::Other(
            "no pod declares a port (spec.containers[].ports[]): nothing to probe".into(),
        ));
    }
    Ok(())
}

/// Every ordered pair of distinct pods on every port the destination declares, IPv4 always and
/// IPv6 too when both pods have an IPv6 address.
pub fn probes(pods: &[LabPod]) -> Vec<Probe> {
    let mut probes = Vec::new();
    for (from, src) in pods.iter().enumerate() {
        for (to, dst) in pods.iter().enumerate() {
            if from == to {
                continue;
            }
            for &port in &dst.ports {
                probes.push(Probe {
                    from,
                    to,
                    port,
                    ipv6: false,
                });
                if src.ipv6.is_some() && dst.ipv6.is_some() {
                    probes.push(Probe {
                        from,
                        to,
                        port,
                        ipv6: true,
                    });
                }
            }
        }
    }
    probes
}

/// The API server sets this label on every namespace; policies select namespaces by it.
fn with_name_label(mut ns: Namespace) -> Namespace {
    let name = ns.metadata.name.clone().unwrap_or_default();
    ns.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .entry("kubernetes.io/metadata.name".to_owned())
        .or_insert(name);
    ns
}

fn auto_v4(next: &mut u32, taken: &mut BTreeSet<IpAddr>) -> Option<Ipv4Addr> {
    while *next < 256 * 254 {
        let (third, host) = (*next / 254, *next % 254 + 1);
        *next += 1;
        let ip = Ipv4Addr::new(AUTO_V4.0, AUTO_V4.1, third as u8, host as u8);
        if taken.insert(IpAddr::V4(ip)) {
            return Some(ip);
        }
    }
    None
}

fn pinned_ips(pod: &Pod) -> Result<Vec<IpAddr>, Error> {
    let Some(status) = &pod.status else {
        return Ok(Vec::new());
    };
    let mut ips = Vec::new();
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    for text in status.pod_ip.as_deref().into_iter().chain(listed) {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| invalid(pod, format!("status pod IP {text:?} is not an address")))?;
        let usable = match ip {
            IpAddr::V4(v4) => {
                !(v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_broadcast())
            }
            IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast()),
        };
        if !usable {
            return Err(invalid(
                pod,
                format!("status pod IP {ip} cannot be a pod's address"),
            ));
        }
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
    if v4 > 1 || ips.len() - v4 > 1 {
        return Err(invalid(pod, "more than one address per family".to_owned()));
    }
    Ok(ips)
}

fn ports(pod: &Pod) -> Result<Vec<Port>, Error> {
    let mut ports = BTreeSet::new();
    let containers = pod.spec.iter().flat_map(|s| &s.containers);
    for declared in containers.flat_map(|c| c.ports.iter().flatten()) {
        let port = u16::try_from(declared.container_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                invalid(
                    pod,
                    format!("containerPort {} is out of range", declared.container_port),
                )
            })?;
        let text = declared.protocol.as_deref().unwrap_or("TCP");
        let protocol = Protocol::parse(text).ok_or_else(|| {
            invalid(
                pod,
                format!("protocol {text:?} (expected TCP, UDP or SCTP)"),
            )
        })?;
        ports.insert(Port { port, protocol });
    }
    Ok(ports.into_iter().collect())
}

fn invalid(pod: &Pod, message: String) -> Error {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    Error::Other(format!("Pod {ns}/{name}: {message}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn load(text: &str) -> Result<Plan, Error> {
        plan(crate::manifests::parse(Path::new("t.yaml"), text).unwrap())
    }

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec:
  containers:
  - name: c
    image: none
    ports:
    - {containerPort: 81, protocol: UDP}
    - {containerPort: 80}
    - {containerPort: 80, protocol: TCP, name: dup}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y}
spec: {containers: [{name: c, image: none, ports: [{containerPort: 80}]}]}
status: {podIP: 10.88.0.1, podIPs: [{ip: 10.88.0.1}, {ip: "fd00::b"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x}
spec: {containers: [{name: c, image: none}]}
"#;

    #[test]
    fn pinned_addresses_win_and_automatic_ones_avoid_them() {
        let plan = load(PODS).unwrap();
        let ips: Vec<_> = plan.pods.iter().map(|p| p.ipv4.to_string()).collect();
        assert_eq!(ips, ["10.88.0.2", "10.88.0.1", "10.88.0.3"]);
        assert_eq!(plan.pods[1].ipv6, Some("fd00::b".parse().unwrap()));
        assert_eq!(plan.pods[0].ipv6, None);
    }

    #[test]
    fn ports_are_sorted_and_deduplicated_with_tcp_as_default() {
        let plan = load(PODS).unwrap();
        let tcp80 = Port {
            port: 80,
            protocol: Protocol::Tcp,
        };
        let udp81 = Port {
            port: 81,
            protocol: Protocol::Udp,
        };
        assert_eq!(plan.pods[0].ports, [tcp80, udp81]);
    }

    #[test]
    fn the_agent_sees_the_addresses_and_every_namespace() {
        let plan = load(PODS).unwrap();
        let namespaces: Vec<_> = plan
            .resources
            .iter()
            .filter_map(|r| match r {
                Resource::Namespace(ns) => Some(ns.metadata.name.clone().unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(namespaces, ["x", "y"]);
        let Some(Resource::Pod(a)) = plan
            .resources
            .iter()
            .find(|r| matches!(r, Resource::Pod(p) if p.metadata.name.as_deref() == Some("a")))
        else {
            panic!("pod a is missing");
        };
        let status = a.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.88.0.2"));
        assert_eq!(status.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn probes_cover_ordered_pairs_of_distinct_pods_on_destination_ports() {
        let plan = load(PODS).unwrap();
        let probes = probes(&plan.pods);
        // to a: 2 sources x 2 ports; to b: 2 sources x 1 port; to c: none.
        assert_eq!(probes.len(), 6);
        assert!(probes.iter().all(|p| p.from != p.to && !p.ipv6));
        assert!(
            probes
                .iter()
                .all(|p| plan.pods[p.to].ports.contains(&p.port))
        );
    }

    #[test]
    fn a_lab_without_pods_or_probes_is_an_error() {
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
        let message = load(ns).unwrap_err().to_string();
        assert!(message.contains("no Pod"), "{message}");
        let one = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{containerPort: 80}]}]}\n";
        let message = require_probes(&load(one).unwrap().pods)
            .unwrap_err()
            .to_string();
        assert!(message.contains("at least two"), "{message}");
        let portless = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec: {containers: [{name: c}]}\n";
        let message = require_probes(&load(portless).unwrap().pods)
            .unwrap_err()
            .to_string();
        assert!(message.contains("nothing to probe"), "{message}");
        assert!(require_probes(&load(PODS).unwrap().pods).is_ok());
    }

    #[test]
    fn bad_pods_are_errors_naming_the_pod() {
        let cases = [
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: nope}\n",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 70000}]}]}\n",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, protocol: ICMP}]}]}\n",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 127.0.0.1}\n",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\n",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n",
        ];
        for text in cases {
            // The manifests' validation refuses some of these already; the plan refuses the
            // rest, and objects built in code that never went through a file.
            let message = match crate::manifests::parse(Path::new("t.yaml"), text) {
                Err(e) => e.to_string(),
                Ok(resources) => plan(resources).unwrap_err().to_string(),
            };
            assert!(
                message.contains("Pod x/a") || message.contains("Pod x/b"),
                "{message}"
            );
        }
    }
}
