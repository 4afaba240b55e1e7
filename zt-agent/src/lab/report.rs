//! The probe's results, as a truth table or as JSON.
//!
//! JSON (stable; consumers may rely on it):
//! ```text
//! {"results":     [{"from":"ns/pod","to":"ns/pod","port":80,"protocol":"TCP","allowed":true}, …],
//!  "results_ipv6":[ same shape, IPv6 probes between pods that both have an IPv6 address ],
//!  "not_probed":  [{"from":…,"to":…,"port":…,"protocol":"SCTP","reason":"…"}, …],  (SCTP over IPv6)
//!  "pods":        [{"pod":"ns/pod","ipv4":"10.88.0.1","ipv6":null}, …]}
//! ```
//! `results` holds exactly the probes that ran over IPv4, SCTP included (raw sockets); a probe that
//! could not be run (SCTP over IPv6) is listed in `not_probed`, never with a guessed answer.

use std::fmt::Write as _;

use serde::Serialize;

use super::plan::{LabPod, Port, Probe, Protocol};

const SCTP_REASON: &str = "SCTP is probed over raw IPv4 sockets only (this kernel has no SCTP)";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    pub allowed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotProbed {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodAddress {
    pub pod: String,
    pub ipv4: String,
    pub ipv6: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub results: Vec<Outcome>,
    pub results_ipv6: Vec<Outcome>,
    pub not_probed: Vec<NotProbed>,
    pub pods: Vec<PodAddress>,
}

impl Report {
    /// Puts probes and their outcomes (`None`: not probed) together.
    pub fn new(pods: &[LabPod], probes: &[Probe], outcomes: &[Option<bool>]) -> Self {
        let mut report = Report {
            pods: pods
                .iter()
                .map(|p| PodAddress {
                    pod: p.id(),
                    ipv4: p.ipv4.to_string(),
                    ipv6: p.ipv6.map(|v6| v6.to_string()),
                })
                .collect(),
            ..Report::default()
        };
        for (probe, outcome) in probes.iter().zip(outcomes) {
            let (from, to) = (pods[probe.from].id(), pods[probe.to].id());
            let (port, protocol) = (probe.port.port, probe.port.protocol);
            match outcome {
                Some(allowed) => {
                    let outcome = Outcome {
                        from,
                        to,
                        port,
                        protocol,
                        allowed: *allowed,
                    };
                    if probe.ipv6 {
                        report.results_ipv6.push(outcome);
                    } else {
                        report.results.push(outcome);
                    }
                }
                None => report.not_probed.push(NotProbed {
                    from,
                    to,
                    port,
                    protocol,
                    reason: SCTP_REASON,
                }),
            }
        }
        report
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// One table per port and protocol, sources down, destinations across, as the upstream e2e
    /// suite prints them: `.` allowed, `X` denied, `-` not served there (or the pod itself), `?` not
    /// probed.
    pub fn table(&self) -> String {
        let pods: Vec<&str> = self.pods.iter().map(|p| p.pod.as_str()).collect();
        let mut ports: Vec<Port> = self
            .results
            .iter()
            .map(|o| Port {
                port: o.port,
                protocol: o.protocol,
            })
            .chain(self.not_probed.iter().map(|n| Port {
                port: n.port,
                protocol: n.protocol,
            }))
            .collect();
        ports.sort();
        ports.dedup();
        let width = pods.iter().map(|p| p.len()).max().unwrap_or(0).max(9);
        let mut out = String::new();
        for port in ports {
            let _ = write!(
                out,
                "{:<width$}",
                format!("{}/{}", port.protocol.as_str(), port.port)
            );
            for to in &pods {
                let _ = write!(out, " {to:^width$}");
            }
            out.push('\n');
            for from in &pods {
                let _ = write!(out, "{from:<width$}");
                for to in &pods {
                    let cell = self.cell(from, to, port);
                    let _ = write!(out, " {cell:^width$}");
                }
                out.push('\n');
            }
            out.push('\n');
        }
        out.push_str(
            "rows: from, columns: to; . allowed, X denied, - not served (or self), ? not probed\n",
        );
        let allowed = self.results.iter().filter(|o| o.allowed).count();
        let _ = writeln!(
            out,
            "{} probes: {allowed} allowed, {} denied{}",
            self.results.len(),
            self.results.len() - allowed,
            if self.not_probed.is_empty() {
                String::new()
            } else {
                format!(", {} not probed ({SCTP_REASON})", self.not_probed.len())
            }
        );
        out
    }

    fn cell(&self, from: &str, to: &str, port: Port) -> &'static str {
        let same = |o_from: &str, o_to: &str, p: u16, proto: Protocol| {
            o_from == from && o_to == to && p == port.port && proto == port.protocol
        };
        if let Some(o) = self
            .results
            .iter()
            .find(|o| same(&o.from, &o.to, o.port, o.protocol))
        {
            return if o.allowed { "." } else { "X" };
        }
        if self
            .not_probed
            .iter()
            .any(|n| same(&n.from, &n.to, n.port, n.protocol))
        {
            return "?";
        }
        "-"
    }

    /// The IPv4 outcome of one probe, if it ran.
    pub fn allowed(&self, from: &str, to: &str, port: u16, protocol: Protocol) -> Option<bool> {
        self.results
            .iter()
            .find(|o| o.from == from && o.to == to && o.port == port && o.protocol == protocol)
            .map(|o| o.allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, n: u8, ports: &[Port]) -> LabPod {
        LabPod {
            namespace: "x".into(),
            name: name.into(),
            ipv4: std::net::Ipv4Addr::new(10, 88, 0, n),
            ipv6: None,
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn json_has_the_contract_shape_and_sctp_is_not_guessed() {
        let tcp = Port {
            port: 80,
            protocol: Protocol::Tcp,
        };
        let sctp = Port {
            port: 9,
            protocol: Protocol::Sctp,
        };
        let pods = [pod("a", 1, &[tcp]), pod("b", 2, &[tcp, sctp])];
        let probes = super::super::plan::probes(&pods);
        let outcomes: Vec<_> = probes
            .iter()
            .map(|p| match p.port.protocol {
                Protocol::Sctp => None,
                _ => Some(p.from == 0),
            })
            .collect();
        let report = Report::new(&pods, &probes, &outcomes);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            json["results"],
            serde_json::json!([
                {"from":"x/a","to":"x/b","port":80,"protocol":"TCP","allowed":true},
                {"from":"x/b","to":"x/a","port":80,"protocol":"TCP","allowed":false},
            ])
        );
        assert_eq!(json["not_probed"][0]["protocol"], "SCTP");
        let table = report.table();
        assert!(table.contains("TCP/80"), "{table}");
        assert!(table.contains("SCTP/9"), "{table}");
        assert!(
            table.contains("2 probes: 1 allowed, 1 denied, 1 not probed"),
            "{table}"
        );
        assert_eq!(report.allowed("x/b", "x/a", 80, Protocol::Tcp), Some(false));
    }
}
