//! The conformance suite's cluster, in the shape of the upstream Kubernetes e2e netpol tests:
//! namespaces x, y, z; pods a, b, c in each; every pod serving TCP and UDP on 80 and 81 under the
//! upstream port names (`serve-80-tcp`, …). Expectations are written as a rule over flows (the
//! case's semantics in one line), and [`converge`] probes the lab until the matrix matches the
//! rule or a deadline passes, then reports every mismatching flow.

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
