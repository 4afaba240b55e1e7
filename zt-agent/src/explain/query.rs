//! Which probes an explain request covers: the lab's choice ([`crate::lab::plan::probes`]:
//! every ordered pair of distinct pods on every port/protocol the destination declares), narrowed
//! by the filters given; a filter left out means every value.
//!
//! A side given as an address that is no pod is probed against the pods of the other side: on
//! the destination pod's declared ports, or — the destination being an address, which declares
//! nothing — on `--port` (required then) over `--protocol` or each of TCP, UDP and SCTP.

use std::net::IpAddr;

use crate::{
    error::{Error, Result},
    lab::plan::{self, LabPod, Port, Protocol},
};

/// One side of a request: a pod (`ns/name`) or an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pod { namespace: String, name: String },
    Address(IpAddr),
}

impl Target {
    /// `NS/POD` or an IPv4/IPv6 address.
    pub fn parse(text: &str) -> Result<Self> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Address(ip));
        }
        match text.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::Pod {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(Error::Other(format!(
                "{text:?} is neither NS/POD nor an IP address"
            ))),
        }
    }
}

/// The filters of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub from: Option<Target>,
    pub to: Option<Target>,
    pub port: Option<u16>,
    pub protocol: Option<Protocol>,
}

/// One end of a probe: an address, and the pod it belongs to (an index into the pods).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    pub addr: IpAddr,
    pub pod: Option<usize>,
}

/// One probe to explain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub from: End,
    pub to: End,
    pub port: Port,
}

impl Probe {
    pub fn ipv6(&self) -> bool {
        self.to.addr.is_ipv6()
    }
}

/// A resolved side: a pod index, an address that is a pod's (resolved to the pod), or an
/// address that is no pod.
enum Side {
    Any,
    Pod(usize),
    Outside(IpAddr),
}

fn resolve(pods: &[LabPod], target: Option<&Target>) -> Result<Side> {
    match target {
        None => Ok(Side::Any),
        Some(Target::Pod { namespace, name }) => pods
            .iter()
            .position(|p| &p.namespace == namespace && &p.name == name)
            .map(Side::Pod)
            .ok_or_else(|| {
                let known: Vec<String> = pods.iter().map(LabPod::id).collect();
                Error::Other(format!(
                    "no pod {namespace}/{name} (pods: {})",
                    known.join(", ")
                ))
            }),
        Some(Target::Address(ip)) => Ok(pods
            .iter()
            .position(|p| IpAddr::V4(p.ipv4) == *ip || p.ipv6.map(IpAddr::V6) == Some(*ip))
            .map_or(Side::Outside(*ip), Side::Pod)),
    }
}

fn addr(pod: &LabPod, ipv6: bool) -> Option<IpAddr> {
    if ipv6 {
        pod.ipv6.map(IpAddr::V6)
    } else {
        Some(IpAddr::V4(pod.ipv4))
    }
}

/// The probes `query` selects among `pods`, in the lab's order.
pub fn probes(pods: &[LabPod], query: &Query) -> Result<Vec<Probe>> {
    let from = resolve(pods, query.from.as_ref())?;
    let to = resolve(pods, query.to.as_ref())?;
    let port_ok = |p: &Port| {
        query.port.is_none_or(|n| n == p.port) && query.protocol.is_none_or(|x| x == p.protocol)
    };
    let pod_ok = |side: &Side, i: usize| match side {
        Side::Any => true,
        Side::Pod(p) => *p == i,
        Side::Outside(_) => false,
    };
    let mut out = Vec::new();
    match (&from, &to) {
        (Side::Outside(_), Side::Outside(_)) => {
            return Err(Error::Other(
                "neither --from nor --to is a pod: explain needs a pod on at least one side".into(),
            ));
        }
        (Side::Outside(src), _) => {
            for (i, dst) in pods.iter().enumerate().filter(|(i, _)| pod_ok(&to, *i)) {
                let Some(dst_addr) = addr(dst, src.is_ipv6()) else {
                    continue;
                };
                for port in dst.ports.iter().filter(|p| port_ok(p)) {
                    out.push(Probe {
                        from: End {
                            addr: *src,
                            pod: None,
                        },
                        to: End {
                            addr: dst_addr,
                            pod: Some(i),
                        },
                        port: *port,
                    });
                }
            }
        }
        (_, Side::Outside(dst)) => {
            let number = query.port.ok_or_else(|| {
                Error::Other(format!(
                    "--to {dst} is no pod, so it declares no port: give --port (and --protocol)"
                ))
            })?;
            let protocols = match query.protocol {
                Some(p) => vec![p],
                None => vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
            };
            for (i, src) in pods.iter().enumerate().filter(|(i, _)| pod_ok(&from, *i)) {
                let Some(src_addr) = addr(src, dst.is_ipv6()) else {
                    continue;
                };
                for &protocol in &protocols {
                    out.push(Probe {
                        from: End {
                            addr: src_addr,
                            pod: Some(i),
                        },
                        to: End {
                            addr: *dst,
                            pod: None,
                        },
                        port: Port {
                            port: number,
                            protocol,
                        },
                    });
                }
            }
        }
        _ => {
            for probe in plan::probes(pods) {
                if !(pod_ok(&from, probe.from) && pod_ok(&to, probe.to) && port_ok(&probe.port)) {
                    continue;
                }
                let (src, dst) = (&pods[probe.from], &pods[probe.to]);
                let (Some(a), Some(b)) = (addr(src, probe.ipv6), addr(dst, probe.ipv6)) else {
                    continue;
                };
                out.push(Probe {
                    from: End {
                        addr: a,
                        pod: Some(probe.from),
                    },
                    to: End {
                        addr: b,
                        pod: Some(probe.to),
                    },
                    port: probe.port,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn pods() -> Vec<LabPod> {
        let tcp = |port| Port {
            port,
            protocol: Protocol::Tcp,
        };
        let pod = |name: &str, n: u8, ports: Vec<Port>| LabPod {
            namespace: "x".into(),
            name: name.into(),
            ipv4: Ipv4Addr::new(10, 88, 0, n),
            ipv6: None,
            ports,
        };
        vec![
            pod("a", 1, vec![tcp(80), tcp(81)]),
            pod("b", 2, vec![tcp(80)]),
            pod("c", 3, vec![]),
        ]
    }

    #[test]
    fn no_filter_is_the_labs_probe_set_and_filters_narrow_it() {
        let pods = pods();
        let all = probes(&pods, &Query::default()).unwrap();
        assert_eq!(all.len(), plan::probes(&pods).len());
        let query = Query {
            to: Some(Target::parse("x/a").unwrap()),
            port: Some(81),
            ..Query::default()
        };
        let some = probes(&pods, &query).unwrap();
        assert_eq!(some.len(), 2, "{some:?}");
        assert!(
            some.iter()
                .all(|p| p.to.pod == Some(0) && p.port.port == 81)
        );
    }

    #[test]
    fn a_pod_address_is_the_pod_and_other_addresses_are_outside() {
        let pods = pods();
        let query = Query {
            from: Some(Target::parse("10.88.0.2").unwrap()),
            to: Some(Target::parse("x/a").unwrap()),
            ..Query::default()
        };
        let p = probes(&pods, &query).unwrap();
        assert!(p.iter().all(|p| p.from.pod == Some(1)), "{p:?}");
        let query = Query {
            from: Some(Target::parse("192.0.2.7").unwrap()),
            to: Some(Target::parse("x/a").unwrap()),
            ..Query::default()
        };
        let p = probes(&pods, &query).unwrap();
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|p| p.from.pod.is_none()));
    }

    #[test]
    fn an_outside_destination_needs_a_port() {
        let pods = pods();
        let mut query = Query {
            from: Some(Target::parse("x/c").unwrap()),
            to: Some(Target::parse("192.0.2.7").unwrap()),
            ..Query::default()
        };
        let message = probes(&pods, &query).unwrap_err().to_string();
        assert!(message.contains("--port"), "{message}");
        query.port = Some(443);
        assert_eq!(probes(&pods, &query).unwrap().len(), 3);
        query.from = Some(Target::parse("192.0.2.8").unwrap());
        assert!(probes(&pods, &query).is_err());
    }

    #[test]
    fn bad_targets_are_errors() {
        assert!(Target::parse("nope").is_err());
        assert!(Target::parse("a/b/c").is_err());
        let query = Query {
            from: Some(Target::parse("x/zz").unwrap()),
            ..Query::default()
        };
        let message = probes(&pods(), &query).unwrap_err().to_string();
        assert!(message.contains("no pod x/zz"), "{message}");
    }
}
