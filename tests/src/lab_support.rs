//! The conformance suite's cluster, in the shape of the upstream Kubernetes e2e netpol tests:
//! namespaces x, y, z; pods a, b, c in each; every pod serving TCP and UDP on 80 and 81 under the
//! upstream port names (`serve-80-tcp`, …). Expectations are written as a rule over flows (the
//! case's semantics in one line), and [`converge`] probes the lab until the matrix matches the
//! rule or a deadline passes, then reports every mismatching flow. Once the packets match, it
//! checks that `zt-agent explain --manifests` on the folder the agent follows gives every probe
//! the same verdict ([`explain_disagreements`]).

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use zt_agent::{
    lab::{Lab, Protocol, Report, Timeouts},
    resource::Resource,
};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// How long the agent may take to enforce a change.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// Pod `ns/pod`'s pinned address: namespace x, y, z → 10.88.1/2/3.0/24, pod a, b, c → .1/.2/.3,
/// so ipBlock cases can name namespaces by CIDR.
pub fn pod_ip(ns: &str, pod: &str) -> String {
    let n = NAMESPACES.iter().position(|n| *n == ns).expect("x, y or z") + 1;
    let p = PODS.iter().position(|p| *p == pod).expect("a, b or c") + 1;
    format!("10.88.{n}.{p}")
}

/// The base cluster's YAML, with each pod's labels from `labels(ns, pod)` (upstream: `pod: <name>`).
pub fn cluster_yaml(labels: impl Fn(&str, &str) -> String) -> String {
    let mut out = String::new();
    for ns in NAMESPACES {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n"
        );
        for pod in PODS {
            let _ = write!(
                out,
                "---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {ns}, labels: {{{labels}}}}}
spec:
  containers:
  - name: cont-80-81
    image: agnhost
    ports:
    - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}
    - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}
    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}
    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
status: {{podIP: {ip}, phase: Running}}
",
                labels = labels(ns, pod),
                ip = pod_ip(ns, pod),
            );
        }
    }
    out
}

/// The upstream labels: `pod: <name>`.
pub fn upstream_labels(_ns: &str, pod: &str) -> String {
    format!("pod: {pod}")
}

/// The cluster plus `policies` (YAML documents), as resources.
pub fn resources(cluster: &str, policies: &str) -> Vec<Resource> {
    let text = format!("{cluster}\n---\n{policies}");
    zt_agent::manifests::parse(Path::new("conformance.yaml"), &text)
        .unwrap_or_else(|e| panic!("the case's manifests do not parse: {e}"))
}

/// One probed flow, as a case's rule sees it.
#[derive(Clone, Copy, Debug)]
pub struct Flow<'a> {
    pub from_ns: &'a str,
    pub from_pod: &'a str,
    pub to_ns: &'a str,
    pub to_pod: &'a str,
    pub port: u16,
    pub protocol: Protocol,
}

impl Flow<'_> {
    pub fn from(&self, ns: &str, pod: &str) -> bool {
        self.from_ns == ns && self.from_pod == pod
    }

    pub fn to(&self, ns: &str, pod: &str) -> bool {
        self.to_ns == ns && self.to_pod == pod
    }

    pub fn tcp(&self, port: u16) -> bool {
        self.protocol == Protocol::Tcp && self.port == port
    }

    pub fn udp(&self, port: u16) -> bool {
        self.protocol == Protocol::Udp && self.port == port
    }
}

/// Every flow the base cluster probes: ordered pairs of distinct pods × TCP/UDP × 80/81.
pub fn all_flows() -> Vec<Flow<'static>> {
    let mut flows = Vec::new();
    for from_ns in NAMESPACES {
        for from_pod in PODS {
            for to_ns in NAMESPACES {
                for to_pod in PODS {
                    if (from_ns, from_pod) == (to_ns, to_pod) {
                        continue;
                    }
                    for protocol in [Protocol::Tcp, Protocol::Udp] {
                        for port in [80, 81] {
                            flows.push(Flow {
                                from_ns,
                                from_pod,
                                to_ns,
                                to_pod,
                                port,
                                protocol,
                            });
                        }
                    }
                }
            }
        }
    }
    flows
}

/// The flows of `report` whose outcome differs from `rule`, one line each.
pub fn mismatches(report: &Report, rule: &dyn Fn(&Flow<'_>) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for result in &report.results {
        let (from_ns, from_pod) = result.from.split_once('/').expect("ns/pod");
        let (to_ns, to_pod) = result.to.split_once('/').expect("ns/pod");
        let flow = Flow {
            from_ns,
            from_pod,
            to_ns,
            to_pod,
            port: result.port,
            protocol: result.protocol,
        };
        let expected = rule(&flow);
        if expected != result.allowed {
            out.push(format!(
                "{} → {} {}/{}: expected {}, got {}",
                result.from,
                result.to,
                result.protocol.as_str(),
                result.port,
                verdict(expected),
                verdict(result.allowed)
            ));
        }
    }
    out
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

/// Probes until the matrix matches `rule` (the agent applies changes asynchronously), or panics
/// after `deadline` with every mismatch, the truth table and the agent's log tail.
pub fn converge(lab: &Lab, what: &str, rule: &dyn Fn(&Flow<'_>) -> bool, deadline: Duration) {
    let started = Instant::now();
    loop {
        let report = lab.probe(Timeouts::default());
        assert!(
            report.not_probed.is_empty() && !report.results.is_empty(),
            "{what}: the lab probed nothing"
        );
        let wrong = mismatches(&report, rule);
        if wrong.is_empty() {
            let disagree = explain_disagreements(lab, &report);
            assert!(
                disagree.is_empty(),
                "{what}: `explain --manifests` disagrees with the packets on {} flows:\n{}",
                disagree.len(),
                disagree.join("\n")
            );
            return;
        }
        if started.elapsed() > deadline {
            let log = std::fs::read_to_string(lab.agent_log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            panic!(
                "{what}: {} flows differ after {deadline:?}:\n{}\n\n{}\nagent log (last lines):\n{}",
                wrong.len(),
                wrong.join("\n"),
                report.table(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// The probes whose verdict `zt-agent explain --manifests` (computed in-process, on the folder
/// the lab's agent follows) differs from what the packets of `report` found, one line each; an
/// explanation that misses a probe, or has one the lab did not run, counts too.
pub fn explain_disagreements(lab: &Lab, report: &Report) -> Vec<String> {
    let explained = zt_agent::explain::offline(lab.manifests(), &Default::default())
        .unwrap_or_else(|e| panic!("explain --manifests {}: {e}", lab.manifests().display()));
    disagreements(&explained, report)
}

/// The probes of `report` whose verdict `explained` differs from, one line each, plus probes
/// one has and the other has not.
pub fn disagreements(explained: &zt_agent::explain::Explanation, report: &Report) -> Vec<String> {
    let key = |v6: bool, from: &str, to: &str, port: u16, protocol: Protocol| {
        let family = if v6 { "IPv6" } else { "IPv4" };
        format!("{from} → {to} {}/{port} over {family}", protocol.as_str())
    };
    let probed: std::collections::BTreeMap<String, bool> =
        (report.results.iter().map(|o| (false, o)))
            .chain(report.results_ipv6.iter().map(|o| (true, o)))
            .map(|(v6, o)| (key(v6, &o.from, &o.to, o.port, o.protocol), o.allowed))
            .collect();
    let mut out = Vec::new();
    let mut seen = 0;
    for (v6, e) in (explained.results.iter().map(|e| (false, e)))
        .chain(explained.results_ipv6.iter().map(|e| (true, e)))
    {
        let k = key(v6, &e.from, &e.to, e.port, e.protocol);
        match probed.get(&k) {
            Some(&allowed) => {
                seen += 1;
                if allowed != e.allowed {
                    out.push(format!(
                        "{k}: packets {}, explain {} (egress {}, ingress {})",
                        verdict(allowed),
                        verdict(e.allowed),
                        e.egress.reason,
                        e.ingress.reason
                    ));
                }
            }
            // SCTP over IPv6 is not probed; the lab lists it in not_probed.
            None if e.protocol == Protocol::Sctp => {}
            None => out.push(format!("{k}: explained but not probed")),
        }
    }
    if seen != probed.len() {
        out.push(format!(
            "{} probes ran, {seen} of them were explained",
            probed.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_has_nine_pods_with_four_ports_and_pinned_addresses() {
        let resources = resources(&cluster_yaml(upstream_labels), "");
        let plan = zt_agent::lab::plan::plan(resources).unwrap();
        assert_eq!(plan.pods.len(), 9);
        assert!(plan.pods.iter().all(|p| p.ports.len() == 4));
        assert_eq!(plan.pods[4].id(), "y/b");
        assert_eq!(plan.pods[4].ipv4.to_string(), "10.88.2.2");
        assert_eq!(zt_agent::lab::plan::probes(&plan.pods).len(), 288);
        assert_eq!(all_flows().len(), 288);
    }

    #[test]
    fn random_clusters_parse_and_plan_and_vary() {
        use zt_agent::resource::Resource;
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 1..200 {
            let mut rng = random::Rng::new(seed);
            let cluster = random::cluster(&mut rng);
            let policies = random::policies(&mut rng);
            let resources = resources(&cluster, &policies);
            let count = resources
                .iter()
                .filter(|r| matches!(r, Resource::NetworkPolicy(_)))
                .count();
            assert!((1..=3).contains(&count), "seed {seed}: {policies}");
            for word in [
                "ipBlock",
                "endPort",
                "namespaceSelector",
                "matchExpressions",
                "egress",
            ] {
                if policies.contains(word) {
                    kinds.insert(word);
                }
            }
            zt_agent::lab::plan::plan(resources).unwrap();
        }
        assert_eq!(kinds.len(), 5, "some constructs never generated: {kinds:?}");
    }

    #[test]
    fn mismatches_name_each_wrong_flow() {
        use zt_agent::lab::report::Outcome;
        let report = Report {
            results: vec![
                Outcome {
                    from: "x/a".into(),
                    to: "y/b".into(),
                    port: 80,
                    protocol: Protocol::Tcp,
                    allowed: true,
                },
                Outcome {
                    from: "y/b".into(),
                    to: "x/a".into(),
                    port: 81,
                    protocol: Protocol::Udp,
                    allowed: true,
                },
            ],
            ..Report::default()
        };
        let wrong = mismatches(&report, &|f| !f.to("x", "a"));
        assert_eq!(wrong, ["y/b → x/a UDP/81: expected denied, got allowed"]);
    }
}

/// Random clusters for the oracle-checked conformance cases: the same namespaces, pods and ports,
/// with random extra labels and random policies built from every construct the curated cases use.
/// Deterministic per seed, so a failure names the seed that reproduces it.
pub mod random {
    use std::fmt::Write as _;

    /// xorshift64*: small, seedable, good enough to pick cases.
    #[derive(Clone, Debug)]
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Self(seed.max(1))
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }

        pub fn chance(&mut self, percent: u64) -> bool {
            self.next_u64() % 100 < percent
        }
    }

    /// Pod labels: the upstream `pod: <name>` plus a random `role`.
    pub fn pod_labels(rng: &mut Rng) -> impl Fn(&str, &str) -> String + use<> {
        let roles: Vec<&'static str> = (0..9).map(|_| *rng.pick(&["red", "blue"])).collect();
        move |ns, pod| {
            let n = super::NAMESPACES.iter().position(|x| *x == ns).unwrap_or(0) * 3
                + super::PODS.iter().position(|x| *x == pod).unwrap_or(0);
            format!("pod: {pod}, role: {}", roles[n])
        }
    }

    /// The cluster YAML with random pod roles and namespace `env` labels.
    pub fn cluster(rng: &mut Rng) -> String {
        let mut yaml = super::cluster_yaml(pod_labels(rng));
        for ns in super::NAMESPACES {
            let env = rng.pick(&["prod", "dev"]);
            yaml = yaml.replace(
                &format!("labels: {{ns: {ns}}}"),
                &format!("labels: {{ns: {ns}, env: {env}}}"),
            );
        }
        yaml
    }

    fn pod_selector(rng: &mut Rng) -> String {
        match rng.below(5) {
            0 => "{}".to_owned(),
            1 => format!("{{matchLabels: {{pod: {}}}}}", rng.pick(&super::PODS)),
            2 => format!("{{matchLabels: {{role: {}}}}}", rng.pick(&["red", "blue"])),
            3 => format!(
                "{{matchExpressions: [{{key: pod, operator: {}, values: [{}]}}]}}",
                rng.pick(&["In", "NotIn"]),
                rng.pick(&["a", "b", "a, c"])
            ),
            _ => format!(
                "{{matchExpressions: [{{key: role, operator: {}}}]}}",
                rng.pick(&["Exists", "DoesNotExist"])
            ),
        }
    }

    fn namespace_selector(rng: &mut Rng) -> String {
        match rng.below(4) {
            0 => "{}".to_owned(),
            1 => format!("{{matchLabels: {{ns: {}}}}}", rng.pick(&super::NAMESPACES)),
            2 => format!("{{matchLabels: {{env: {}}}}}", rng.pick(&["prod", "dev"])),
            _ => format!(
                "{{matchExpressions: [{{key: ns, operator: NotIn, values: [{}]}}]}}",
                rng.pick(&super::NAMESPACES)
            ),
        }
    }

    fn peer(rng: &mut Rng) -> String {
        match rng.below(5) {
            0 => format!("{{podSelector: {}}}", pod_selector(rng)),
            1 => format!("{{namespaceSelector: {}}}", namespace_selector(rng)),
            2 => format!(
                "{{namespaceSelector: {}, podSelector: {}}}",
                namespace_selector(rng),
                pod_selector(rng)
            ),
            3 => {
                let n = rng.below(3) + 1;
                format!("{{ipBlock: {{cidr: 10.88.0.0/16, except: [10.88.{n}.0/24]}}}}")
            }
            _ => {
                let (n, p) = (rng.below(3) + 1, rng.below(3) + 1);
                let cidr = if rng.chance(50) {
                    format!("10.88.{n}.0/24")
                } else {
                    format!("10.88.{n}.{p}/32")
                };
                format!("{{ipBlock: {{cidr: {cidr}}}}}")
            }
        }
    }

    fn port(rng: &mut Rng) -> &'static str {
        const PORTS: [&str; 8] = [
            "{port: 80, protocol: TCP}",
            "{port: 81}",
            "{port: 80, protocol: UDP}",
            "{port: 81, protocol: UDP}",
            "{port: serve-80-tcp}",
            "{port: serve-81-udp, protocol: UDP}",
            "{port: 80, endPort: 81, protocol: TCP}",
            "{protocol: UDP}",
        ];
        PORTS[rng.below(PORTS.len())]
    }

    fn rules(rng: &mut Rng, peers_key: &str) -> String {
        let mut out = String::from("[");
        for i in 0..rng.below(3) {
            if i > 0 {
                out.push_str(", ");
            }
            let mut parts = Vec::new();
            if rng.chance(75) {
                let peers: Vec<String> = (0..=rng.below(2)).map(|_| peer(rng)).collect();
                parts.push(format!("{peers_key}: [{}]", peers.join(", ")));
            }
            if rng.chance(50) {
                let ports: Vec<&str> = (0..=rng.below(2)).map(|_| port(rng)).collect();
                parts.push(format!("ports: [{}]", ports.join(", ")));
            }
            let _ = write!(out, "{{{}}}", parts.join(", "));
        }
        out.push(']');
        out
    }

    /// 1 to 3 random policies.
    pub fn policies(rng: &mut Rng) -> String {
        let mut out = String::new();
        for i in 0..=rng.below(3) {
            let ns = rng.pick(&super::NAMESPACES);
            let types = *rng.pick(&[
                None,
                Some("[Ingress]"),
                Some("[Egress]"),
                Some("[Ingress, Egress]"),
            ]);
            let mut spec = format!("podSelector: {}", pod_selector(rng));
            let (ingress, egress) = match types {
                None => (true, rng.chance(50)),
                Some(t) => (t.contains("Ingress"), t.contains("Egress")),
            };
            if let Some(types) = types {
                let _ = write!(spec, ", policyTypes: {types}");
            }
            if ingress && rng.chance(80) {
                let _ = write!(spec, ", ingress: {}", rules(rng, "from"));
            }
            if egress && (types.is_none() || rng.chance(80)) {
                let _ = write!(spec, ", egress: {}", rules(rng, "to"));
            }
            let _ = write!(
                out,
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: random-{i}, namespace: {ns}}}\nspec: {{{spec}}}\n"
            );
        }
        out
    }
}
