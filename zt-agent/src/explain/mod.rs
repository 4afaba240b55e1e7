//! `zt-agent explain`: for each probe, the verdict the datapath gives a new flow, and why —
//! which policies isolate the source's egress and the destination's ingress, and which rule of
//! which policy admits it (or that none does).
//!
//! ```text
//!  manifests ─▶ lab plan (addresses, ports) ─▶ index ─▶ compiler ─▶ DatapathState
//!  query ─▶ probes (the lab's choice, filtered) ─▶ per side: datapath::model::decide (verdict)
//!                                                 + Compiler::trace (policies, rules)
//! ```
//! Offline ([`offline`]) the state is the compiler's own output; online the agent passes the
//! maps read back from the kernel, so the verdict is what the datapath does now, while the
//! attribution comes from the agent's compiler. The JSON shape is a contract (docs/explain.md).

pub mod query;
pub mod render;
pub mod wire;

use std::{net::IpAddr, path::Path};

use serde::{Deserialize, Serialize};
use zt_common::{
    direction,
    endpoint::flags,
    reason::{self, ALLOW_AUDIT},
};

pub use self::query::{Query, Target};
use crate::{
    compiler::{Compiler, Options},
    datapath::{
        DatapathState,
        model::{self, Packet},
    },
    error::Result,
    index::Index,
    lab::plan::{LabPod, Protocol},
};

/// `{"results":[…],"results_ipv6":[…]}`, like `lab probe --json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub results: Vec<Explained>,
    pub results_ipv6: Vec<Explained>,
}

/// One probe explained. The first five keys are `lab probe --json`'s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explained {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    pub allowed: bool,
    pub egress: Side,
    pub ingress: Side,
    /// The names the destination pod declares for this port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_names: Vec<String>,
    /// Set when one side is an address that is no pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_a_pod: Option<Outside>,
}

/// One direction: the egress of the source or the ingress of the destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    pub isolated: bool,
    pub allowed_by: Vec<RuleRef>,
    pub isolated_by: Vec<String>,
    /// The datapath's reason code name (`zt_common::reason::name`), or `not_a_pod` /
    /// `not_an_endpoint` for a side this datapath does not check.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// `namespace/name`.
    pub policy: String,
    /// The rule's index within the policy's `ingress` or `egress` list.
    pub rule: usize,
    /// The named port of the rule that matched, resolved to this probe's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
}

/// An address that is no pod, and the ipBlocks of policies in force that contain it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outside {
    pub address: String,
    pub ip_blocks: Vec<BlockRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: String,
    pub rule: usize,
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// What one explanation is computed from.
pub struct Model<'a> {
    pub compiler: &'a Compiler,
    /// The datapath state verdicts come from: the compiler's, or the kernel's maps read back.
    pub state: &'a DatapathState,
    pub fail_closed: bool,
    pub index: &'a Index,
    pub pods: &'a [LabPod],
}

impl Model<'_> {
    /// Explains every probe `query` selects.
    pub fn explain(&self, query: &Query) -> Result<Explanation> {
        let mut out = Explanation::default();
        for probe in query::probes(self.pods, query)? {
            let explained = self.one(&probe);
            if probe.ipv6() {
                out.results_ipv6.push(explained);
            } else {
                out.results.push(explained);
            }
        }
        Ok(out)
    }

    /// One probe between two addresses (a pod's or not) on `port`.
    pub fn between(&self, from: IpAddr, to: IpAddr, port: crate::lab::plan::Port) -> Explained {
        let pod = |addr: IpAddr| {
            self.pods
                .iter()
                .position(|p| IpAddr::V4(p.ipv4) == addr || p.ipv6.map(IpAddr::V6) == Some(addr))
        };
        self.one(&query::Probe {
            from: query::End {
                addr: from,
                pod: pod(from),
            },
            to: query::End {
                addr: to,
                pod: pod(to),
            },
            port,
        })
    }

    fn one(&self, probe: &query::Probe) -> Explained {
        let name = |end: &query::End| match end.pod {
            Some(i) => self.pods[i].id(),
            None => end.addr.to_string(),
        };
        let protocol = match probe.port.protocol {
            Protocol::Tcp => zt_common::proto::TCP,
            Protocol::Udp => zt_common::proto::UDP,
            Protocol::Sctp => zt_common::proto::SCTP,
        };
        let side = |dir: u8, end: &query::End, peer: IpAddr| {
            self.side(&Packet {
                direction: dir,
                local: end.addr,
                peer,
                protocol,
                port: probe.port.port,
            })
            .unwrap_or_else(|| Side {
                reason: if end.pod.is_some() {
                    "not_an_endpoint"
                } else {
                    "not_a_pod"
                }
                .to_owned(),
                ..Side::default()
            })
        };
        let egress = side(direction::EGRESS, &probe.from, probe.to.addr);
        let ingress = side(direction::INGRESS, &probe.to, probe.from.addr);
        let passes = |s: &Side| !s.dropped();
        let port_names = probe
            .to
            .pod
            .map(|i| {
                let pod = &self.pods[i];
                let key = (pod.namespace.clone(), pod.name.clone());
                self.index
                    .pods
                    .get(&key)
                    .map(|info| {
                        info.named_ports
                            .iter()
                            .filter(|n| {
                                i32::from(probe.port.port) == n.port
                                    && n.protocol == probe.port.protocol.as_str()
                            })
                            .map(|n| n.name.clone())
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let outside = [&probe.from, &probe.to]
            .into_iter()
            .find(|e| e.pod.is_none())
            .map(|e| self.outside(e.addr));
        Explained {
            from: name(&probe.from),
            to: name(&probe.to),
            port: probe.port.port,
            protocol: probe.port.protocol,
            allowed: passes(&egress) && passes(&ingress),
            egress,
            ingress,
            port_names,
            not_a_pod: outside,
        }
    }

    /// One direction at a local endpoint; `None` when the address is no endpoint here.
    fn side(&self, packet: &Packet) -> Option<Side> {
        let endpoint = self.state.endpoints.get(&packet.local)?;
        let verdict = model::decide(self.state, self.fail_closed, packet);
        let bit = if packet.direction == direction::EGRESS {
            flags::EGRESS_ISOLATED
        } else {
            flags::INGRESS_ISOLATED
        };
        let trace = self.compiler.trace(packet).unwrap_or_default();
        let policy = |r: u32| {
            self.compiler
                .policy_name(r)
                .map_or_else(|| format!("#{r}"), str::to_owned)
        };
        Some(Side {
            isolated: endpoint.flags & bit != 0,
            allowed_by: trace
                .allowed_by
                .into_iter()
                .map(|a| RuleRef {
                    policy: policy(a.policy_ref),
                    rule: a.rule,
                    named_port: a.named_port,
                })
                .collect(),
            isolated_by: trace.isolated_by.into_iter().map(policy).collect(),
            reason: reason::name(verdict.reason).to_owned(),
        })
    }

    fn outside(&self, addr: IpAddr) -> Outside {
        let ip_blocks = self
            .compiler
            .blocks_containing(addr)
            .into_iter()
            .map(|b| BlockRef {
                policy: self
                    .compiler
                    .policy_name(b.policy_ref)
                    .unwrap_or("?")
                    .to_owned(),
                direction: if b.direction == direction::EGRESS {
                    "egress"
                } else {
                    "ingress"
                }
                .to_owned(),
                rule: b.rule,
                cidr: b.block.net.to_string(),
                except: b.block.except.iter().map(ToString::to_string).collect(),
            })
            .collect();
        Outside {
            address: addr.to_string(),
            ip_blocks,
        }
    }
}

impl Side {
    /// Whether the datapath drops the flow on this side (a `drop_…` reason).
    pub fn dropped(&self) -> bool {
        (reason::FIRST_DROP..=u8::MAX)
            .map(reason::name)
            .any(|name| name != "unknown" && name == self.reason)
    }

    /// Whether a would-be deny passes because the endpoint is in audit mode.
    pub fn audited(&self) -> bool {
        self.reason == reason::name(ALLOW_AUDIT)
    }
}

/// The index the agent would build from `resources` (one reset per kind, as the dir source).
pub fn index_of(resources: Vec<crate::resource::Resource>) -> Index {
    let mut index = Index::default();
    for event in crate::runtime::source::dir::resets(resources) {
        index.handle(event);
    }
    index
}

/// `explain --manifests DIR`: the folder as the lab plans it (addresses filled in), compiled
/// with every pod local, explained without a kernel.
pub fn offline(dir: &Path, query: &Query) -> Result<Explanation> {
    let resources = crate::manifests::load_dir(dir)?;
    of_resources(resources, query)
}

/// [`offline`] for resources already loaded.
pub fn of_resources(
    resources: Vec<crate::resource::Resource>,
    query: &Query,
) -> Result<Explanation> {
    Offline::new(resources)?.model().explain(query)
}

/// Everything an offline explanation is computed from, built once.
pub struct Offline {
    pub pods: Vec<LabPod>,
    pub index: Index,
    pub compiler: Compiler,
}

impl Offline {
    /// Plans `resources` as the lab does (addresses filled in) and compiles them with every pod
    /// local.
    pub fn new(resources: Vec<crate::resource::Resource>) -> Result<Self> {
        let plan = crate::lab::plan::plan(resources)?;
        let index = index_of(plan.resources);
        let mut compiler = Compiler::new(Options::default());
        compiler.update(&index);
        Ok(Self {
            pods: plan.pods,
            index,
            compiler,
        })
    }

    pub fn model(&self) -> Model<'_> {
        Model {
            compiler: &self.compiler,
            state: self.compiler.state(),
            fail_closed: true,
            index: &self.index,
            pods: &self.pods,
        }
    }
}

/// Where the running agent serves explain (and flows): root only.
pub const CONTROL_SOCKET: &str = "/run/zt/control.sock";

/// The filters of `args`.
fn filters_of(args: &crate::cli::ExplainArgs) -> wire::Filters {
    wire::Filters {
        from: args.from.clone(),
        to: args.to.clone(),
        port: args.port,
        protocol: args.protocol.clone(),
    }
}

/// `zt-agent explain`: offline with `--manifests`, else from the running agent.
pub fn main(args: crate::cli::ExplainArgs) -> Result<()> {
    let filters = filters_of(&args);
    let explanation = match &args.manifests {
        Some(dir) => offline(dir, &filters.query()?)?,
        None => {
            filters.query()?; // a bad filter is refused before asking
            wire::ask(&args.socket, &filters)?
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&explanation).expect("an explanation serializes")
        );
    } else {
        print!("{}", render::text(&explanation));
    }
    Ok(())
}

/// The pods an online explanation probes, from the agent's index: each pod with an IPv4
/// address, on its named ports (the index keeps only those) and on the port the query names.
pub fn pods_of(index: &Index, query: &Query) -> Vec<LabPod> {
    let asked: Vec<crate::lab::plan::Port> = match query.port {
        None => Vec::new(),
        Some(port) => match query.protocol {
            Some(p) => vec![p],
            None => vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
        }
        .into_iter()
        .map(|protocol| crate::lab::plan::Port { port, protocol })
        .collect(),
    };
    let mut pods = Vec::new();
    for ((namespace, name), info) in &index.pods {
        if info.host_network {
            continue;
        }
        let Some(ipv4) = info.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        }) else {
            continue;
        };
        let ipv6 = info.ips.iter().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        let mut ports: Vec<crate::lab::plan::Port> = info
            .named_ports
            .iter()
            .filter_map(|n| {
                Some(crate::lab::plan::Port {
                    port: u16::try_from(n.port).ok().filter(|p| *p != 0)?,
                    protocol: Protocol::parse(&n.protocol)?,
                })
            })
            .chain(asked.iter().copied())
            .collect();
        ports.sort();
        ports.dedup();
        pods.push(LabPod {
            namespace: namespace.clone(),
            name: name.clone(),
            ipv4,
            ipv6,
            ports,
        });
    }
    pods
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: t}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}, {containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.88.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.88.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: x, labels: {app: other}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.88.0.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: nobody}}}]
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
  - to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]
    ports: [{port: 443}]
"#;

    fn explain(query: Query) -> Explanation {
        let resources = crate::manifests::parse(Path::new("t.yaml"), CLUSTER).unwrap();
        of_resources(resources, &query).unwrap()
    }

    fn find<'a>(e: &'a Explanation, from: &str, to: &str, port: u16) -> &'a Explained {
        e.results
            .iter()
            .find(|r| r.from == from && r.to == to && r.port == port)
            .unwrap_or_else(|| panic!("no {from} → {to}:{port} in {e:#?}"))
    }

    #[test]
    fn an_allowed_flow_names_the_isolating_policies_and_the_admitting_rule() {
        let e = explain(Query::default());
        let r = find(&e, "x/client", "x/web", 8080);
        assert!(r.allowed);
        assert_eq!(r.port_names, ["http"]);
        assert_eq!(r.ingress.isolated_by, ["x/deny-all", "x/web-from-client"]);
        assert_eq!(
            r.ingress.allowed_by,
            [RuleRef {
                policy: "x/web-from-client".into(),
                rule: 1,
                named_port: Some("http".into())
            }]
        );
        assert_eq!(r.ingress.reason, "allow_policy");
        assert!(r.egress.isolated);
        assert_eq!(r.egress.allowed_by[0].policy, "x/client-out");
        assert_eq!(r.egress.allowed_by[0].rule, 0);
    }

    #[test]
    fn a_denied_flow_says_no_rule_admits_it() {
        let e = explain(Query::default());
        let r = find(&e, "x/other", "x/web", 8080);
        assert!(!r.allowed);
        assert!(!r.egress.isolated && r.egress.isolated_by.is_empty());
        assert_eq!(r.egress.reason, "allow_not_isolated");
        assert!(r.ingress.isolated && r.ingress.allowed_by.is_empty());
        assert_eq!(r.ingress.reason, "drop_policy_ingress");
        // client's egress allows web only: UDP/53 on web passes egress, not ingress.
        let r = e
            .results
            .iter()
            .find(|r| r.from == "x/client" && r.to == "x/web" && r.port == 53)
            .unwrap();
        assert!(!r.allowed && !r.egress.dropped() && r.ingress.dropped());
        let r = find(&e, "x/client", "x/other", 80);
        assert_eq!(r.egress.reason, "drop_policy_egress");
        let text = render::text(&e);
        assert!(
            text.contains("x/other → x/web TCP/8080 (named http): denied (drop_policy_ingress)"),
            "{text}"
        );
        assert!(
            text.contains(
                "ingress of x/web: isolated by x/deny-all, x/web-from-client; no rule admits it"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_address_outside_is_reported_with_its_ip_blocks() {
        let query = Query {
            from: Some(Target::parse("x/client").unwrap()),
            to: Some(Target::parse("192.0.2.7").unwrap()),
            port: Some(443),
            protocol: Some(Protocol::Tcp),
        };
        let e = explain(query.clone());
        let [r] = &e.results[..] else {
            panic!("{e:#?}")
        };
        assert!(r.allowed);
        assert_eq!(r.ingress.reason, "not_a_pod");
        assert_eq!(r.egress.allowed_by[0].rule, 1);
        let outside = r.not_a_pod.as_ref().unwrap();
        assert_eq!(outside.ip_blocks[0].cidr, "192.0.2.0/24");
        assert_eq!(outside.ip_blocks[0].direction, "egress");
        // In the except: no block contains it, the egress denies.
        let e = explain(Query {
            to: Some(Target::parse("192.0.2.200").unwrap()),
            ..query
        });
        assert!(!e.results[0].allowed);
        assert!(
            e.results[0]
                .not_a_pod
                .as_ref()
                .unwrap()
                .ip_blocks
                .is_empty()
        );
    }

    #[test]
    fn json_has_the_contract_shape() {
        let e = explain(Query {
            from: Some(Target::parse("x/client").unwrap()),
            to: Some(Target::parse("x/other").unwrap()),
            ..Query::default()
        });
        let text = serde_json::to_string(&e.results[0]).unwrap();
        let head = r#"{"from":"x/client","to":"x/other","port":80,"protocol":"TCP","allowed":false,"egress":{"isolated":true,"allowed_by":[],"isolated_by":["x/client-out"],"reason":"drop_policy_egress"},"ingress":{"isolated":true,"allowed_by":[],"isolated_by":["x/deny-all"]"#;
        assert!(text.starts_with(head), "{text}");
        let json = serde_json::to_value(&e).unwrap();
        let back: Explanation = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
