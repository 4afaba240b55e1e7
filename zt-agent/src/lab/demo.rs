//! `zt-agent lab demo`: the story `cargo xtask demo` tells. A small app runs in the lab with no
//! policy (everything reaches everything), then with a zero-trust set (default deny everywhere,
//! then the flows the app needs), and one denied flow is explained.
//!
//! The folder holds `app/` (namespaces and pods) and `zero-trust/` (the policies; each may carry
//! a `description` annotation, printed as its one-line summary).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use k8s_openapi::{
    api::networking::v1::NetworkPolicy, apimachinery::pkg::apis::meta::v1::LabelSelector,
};

use super::{Lab, Report, Timeouts, plan::Protocol, state};
use crate::{
    cli::LabDemoArgs,
    error::{Error, Result},
    resource::Resource,
};

pub fn run(args: LabDemoArgs) -> Result<()> {
    // What cannot be explained is refused before anything is built.
    let wanted = args.explain.as_deref().map(parse_flow).transpose()?;
    let signals = state::handle_signals()?;
    let app = crate::manifests::load_dir(&args.dir.join("app"))?;
    if let Some(flow) = &wanted {
        probed(&super::plan::plan(app.clone())?.pods, flow)?;
    }
    let policies = crate::manifests::load_dir(&args.dir.join("zero-trust"))?;
    let policies: Vec<NetworkPolicy> = policies
        .into_iter()
        .map(|r| match r {
            Resource::NetworkPolicy(p) => Ok(p),
            other => Err(Error::Other(format!(
                "{}: only NetworkPolicies belong in zero-trust/, found a {:?}",
                args.dir.join("zero-trust").display(),
                other.kind()
            ))),
        })
        .collect::<Result<_>>()?;

    println!("zt demo: a small shop app on a one-node lab (pods in network namespaces, the real");
    println!("zt-agent and eBPF datapath, nothing leaves the machine).\n");
    let lab = Lab::build(app.clone(), Some(signals))?;
    println!("The pods ({}/app):", args.dir.display());
    for pod in lab.pods() {
        let ports: Vec<String> = pod
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.protocol.as_str(), p.port))
            .collect();
        println!(
            "  {:<22} {:<12} serves {}",
            pod.id(),
            pod.ipv4,
            ports.join(" ")
        );
    }

    let before = lab.probe(Timeouts::default());
    println!("\n── 1. No NetworkPolicy ──────────────────────────────────────────────────────────");
    println!("Kubernetes' default: every pod can open every port of every other pod.\n");
    print!("{}", reachability(&before));

    println!("\n── 2. Zero trust ───────────────────────────────────────────────────────────────");
    println!(
        "Default deny in every namespace, then only the flows the app needs ({}/zero-trust):",
        args.dir.display()
    );
    for policy in &policies {
        println!("  {:<40} {}", policy_id(policy), description(policy));
    }
    let mut all = app;
    all.extend(policies.iter().cloned().map(Resource::NetworkPolicy));
    lab.apply(all)?;
    let after = lab.probe(Timeouts::default());
    println!();
    print!("{}", reachability(&after));
    let open = |r: &Report| r.results.iter().filter(|o| o.allowed).count();
    println!(
        "\nOpen flows: {} of {} before, {} after; each one left is allowed by a policy above.",
        open(&before),
        before.results.len(),
        open(&after)
    );

    let flow = match wanted {
        Some(flow) => flow,
        None => first_denied(&after).ok_or_else(|| {
            Error::Other("no denied flow to explain (did the agent enforce the policies?)".into())
        })?,
    };
    let title = |verdict: &str| {
        format!(
            "\n── 3. Why was {} → {} {}/{} {verdict}? ──────────────────",
            flow.0,
            flow.1,
            flow.3.as_str(),
            flow.2
        )
    };
    match after.allowed(&flow.0, &flow.1, flow.2, flow.3) {
        Some(false) => {
            println!("{}", title("denied"));
            print!("{}", explain(&lab, &policies, &after, &flow));
        }
        Some(true) => {
            println!("{}", title("allowed"));
            print!("{}", explain_allowed(&lab, &policies, &flow));
        }
        None => {
            return Err(Error::Other(format!(
                "{} → {} {}/{} was not probed",
                flow.0,
                flow.1,
                flow.3.as_str(),
                flow.2
            )));
        }
    }
    Ok(())
}

/// `FROM:TO:PORT/PROTOCOL`, pods as `namespace/name`, e.g. `default/toolbox:shop/db:5432/TCP`.
pub fn parse_flow(text: &str) -> Result<Flow> {
    let bad = |why: &str| {
        Error::Other(format!(
            "--explain {text:?}: {why}; expected FROM:TO:PORT/PROTOCOL with pods as \
             namespace/name, e.g. default/toolbox:shop/db:5432/TCP"
        ))
    };
    let parts: Vec<&str> = text.split(':').collect();
    let [from, to, port] = parts[..] else {
        return Err(bad("not three parts separated by ':'"));
    };
    for pod in [from, to] {
        let ok = pod
            .split_once('/')
            .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'));
        if !ok {
            return Err(bad(&format!("{pod:?} is not namespace/name")));
        }
    }
    let Some((number, protocol)) = port.split_once('/') else {
        return Err(bad(&format!("{port:?} is not PORT/PROTOCOL")));
    };
    let number: u16 = number
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad(&format!("{number:?} is not a port number (1 to 65535)")))?;
    let protocol = Protocol::parse(protocol)
        .ok_or_else(|| bad(&format!("{protocol:?} is not TCP, UDP or SCTP")))?;
    Ok((from.to_owned(), to.to_owned(), number, protocol))
}

/// An error unless the lab probes `flow`: both pods exist, they differ, and the destination
/// serves the port.
fn probed(pods: &[super::LabPod], flow: &Flow) -> Result<()> {
    let (from, to, port, protocol) = flow;
    let find = |id: &str| pods.iter().find(|p| p.id() == id);
    let known = || {
        pods.iter()
            .map(super::LabPod::id)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if find(from).is_none() {
        return Err(Error::Other(format!(
            "--explain: no pod {from} in the demo (pods: {})",
            known()
        )));
    }
    let Some(dst) = find(to) else {
        return Err(Error::Other(format!(
            "--explain: no pod {to} in the demo (pods: {})",
            known()
        )));
    };
    if from == to {
        return Err(Error::Other(
            "--explain: a pod to itself is not probed".into(),
        ));
    }
    if !dst
        .ports
        .iter()
        .any(|p| p.port == *port && p.protocol == *protocol)
    {
        let serves: Vec<String> = dst
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.protocol.as_str(), p.port))
            .collect();
        return Err(Error::Other(format!(
            "--explain: {to} does not serve {}/{port} (it serves {})",
            protocol.as_str(),
            serves.join(" ")
        )));
    }
    Ok(())
}

/// Why an allowed flow passes: each side is open or has a policy admitting it.
fn explain_allowed(lab: &Lab, policies: &[NetworkPolicy], flow: &Flow) -> String {
    let (from, to, port, protocol) = flow;
    let mut out =
        "It is allowed: the probe got through. A flow passes only if the source's egress\n\
                   policies and the destination's ingress policies both allow it.\n"
            .to_owned();
    out.push_str(&sides(lab, policies, from, to, " (one of these admits it)"));
    let _ = writeln!(
        out,
        "\n  So {from} → {to} on {}/{port} passes both sides.",
        protocol.as_str()
    );
    out
}

/// For each destination port, who may open it.
fn reachability(report: &Report) -> String {
    let mut by_target: BTreeMap<(String, Protocol, u16), (Vec<String>, usize)> = BTreeMap::new();
    for o in &report.results {
        let entry = by_target
            .entry((o.to.clone(), o.protocol, o.port))
            .or_default();
        entry.1 += 1;
        if o.allowed {
            entry.0.push(o.from.clone());
        }
    }
    let mut out = String::new();
    for ((to, protocol, port), (from, total)) in by_target {
        let who = if from.len() == total {
            format!("everyone (all {total} other pods)")
        } else if from.is_empty() {
            "nobody".to_owned()
        } else {
            from.join(", ")
        };
        let _ = writeln!(
            out,
            "  {:<30} ← {who}",
            format!("{to} {}/{port}", protocol.as_str())
        );
    }
    out
}

/// `(from, to, port, protocol)`, pods as `ns/name`.
pub type Flow = (String, String, u16, Protocol);

/// The first denied flow of the report.
fn first_denied(report: &Report) -> Option<Flow> {
    report
        .results
        .iter()
        .find(|o| !o.allowed)
        .map(|o| (o.from.clone(), o.to.clone(), o.port, o.protocol))
}

/// Which policies isolate the source's egress and the destination's ingress; `isolated_note`
/// follows the word "isolated by" when some do.
fn sides(
    lab: &Lab,
    policies: &[NetworkPolicy],
    from: &str,
    to: &str,
    isolated_note: &str,
) -> String {
    let mut out = String::new();
    for (side, pod, ingress) in [("egress of", from, false), ("ingress of", to, true)] {
        let selecting: Vec<&NetworkPolicy> = policies
            .iter()
            .filter(|p| selects(p, lab, pod) && applies(p, ingress))
            .collect();
        if selecting.is_empty() {
            let _ = writeln!(out, "\n  {side} {pod}: open (no policy selects it)");
            continue;
        }
        let _ = writeln!(out, "\n  {side} {pod}: isolated by{isolated_note}");
        for p in selecting {
            let _ = writeln!(out, "    {:<40} {}", policy_id(p), description(p));
        }
    }
    out
}

fn explain(lab: &Lab, policies: &[NetworkPolicy], report: &Report, flow: &Flow) -> String {
    let (from, to, port, protocol) = flow;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "A flow passes only if the source's egress policies and the destination's ingress policies\n\
         both allow it; a pod no policy selects for a direction is open in that direction."
    );
    out.push_str(&sides(lab, policies, from, to, ""));
    let ip = |id: &str| {
        lab.pods()
            .iter()
            .find(|p| p.id() == *id)
            .map(|p| p.ipv4.to_string())
            .unwrap_or_default()
    };
    let log = std::fs::read_to_string(lab.agent_log()).unwrap_or_default();
    let want = [
        ("verdict", "denied".to_owned()),
        ("src", ip(from)),
        ("dst", ip(to)),
        ("dport", port.to_string()),
    ];
    let event = log
        .lines()
        .map(fields)
        .find(|f| want.iter().all(|(k, v)| f.get(*k) == Some(v)));
    match event {
        Some(event) => {
            let reason = event.get("reason").map_or("?", String::as_str);
            let (side, pod) = if reason.contains("egress") {
                ("egress", from)
            } else {
                ("ingress", to)
            };
            let _ = writeln!(
                out,
                "\n  The datapath's drop event (ring buffer zt_events, logged by the agent):\n    \
                 denied, reason {reason}: at the {side} of {pod}, no policy above admits\n    \
                 {from} → {to} on {}/{port}.",
                protocol.as_str()
            );
        }
        None => {
            let _ = writeln!(
                out,
                "\n  (the agent logged no drop event for {} → {}:{port}; see {})",
                ip(from),
                ip(to),
                lab.agent_log().display()
            );
        }
    }
    if report.allowed(to, from, *port, *protocol) == Some(true) {
        let _ = writeln!(
            out,
            "  The other direction is open: policies are per direction."
        );
    }
    out
}

/// The `key=value` fields of a tracing log line (quotes and ANSI colours stripped).
fn fields(line: &str) -> BTreeMap<String, String> {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `ESC [ … letter`.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .split_whitespace()
        .filter_map(|token| {
            let (k, v) = token.split_once('=')?;
            Some((k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect()
}

fn policy_id(p: &NetworkPolicy) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or("?")
    )
}

fn description(p: &NetworkPolicy) -> String {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("description"))
        .cloned()
        .unwrap_or_default()
}

/// Whether `p` isolates its pods for ingress (`true`) or egress, as Kubernetes defaults
/// `policyTypes`: Ingress always, Egress when egress rules are present.
fn applies(p: &NetworkPolicy, ingress: bool) -> bool {
    let Some(spec) = &p.spec else { return false };
    match &spec.policy_types {
        Some(types) => types
            .iter()
            .any(|t| t == if ingress { "Ingress" } else { "Egress" }),
        None => ingress || spec.egress.is_some(),
    }
}

/// Whether `p`'s podSelector selects the lab pod `id`.
fn selects(p: &NetworkPolicy, lab: &Lab, id: &str) -> bool {
    let Some((ns, _)) = id.split_once('/') else {
        return false;
    };
    if p.metadata.namespace.as_deref().unwrap_or("default") != ns {
        return false;
    }
    let Some(labels) = lab.labels(id) else {
        return false;
    };
    p.spec
        .as_ref()
        .is_some_and(|s| matches(s.pod_selector.as_ref(), &labels))
}

/// Label selector semantics; an absent or empty selector selects everything. An operator this does
/// not know selects nothing (this is only the demo's explanation, never enforcement).
fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values: BTreeSet<&String> = e.values.iter().flatten().collect();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    #[test]
    fn flows_parse_and_malformed_ones_are_refused() {
        assert_eq!(
            parse_flow("default/toolbox:shop/db:5432/TCP").unwrap(),
            (
                "default/toolbox".into(),
                "shop/db".into(),
                5432,
                Protocol::Tcp
            )
        );
        assert_eq!(parse_flow("a/b:c/d:53/UDP").unwrap().3, Protocol::Udp);
        for (bad, why) in [
            ("garbage", "three parts"),
            ("default/toolbox:shop/db", "three parts"),
            ("toolbox:shop/db:5432/TCP", "namespace/name"),
            ("default/toolbox:shop/db/x:5432/TCP", "namespace/name"),
            ("default/toolbox:shop/db:5432", "PORT/PROTOCOL"),
            ("default/toolbox:shop/db:0/TCP", "port number"),
            ("default/toolbox:shop/db:65536/TCP", "port number"),
            ("default/toolbox:shop/db:http/TCP", "port number"),
            ("default/toolbox:shop/db:5432/tcp", "TCP, UDP or SCTP"),
            ("default/toolbox:shop/db:5432/ICMP", "TCP, UDP or SCTP"),
        ] {
            let message = parse_flow(bad).unwrap_err().to_string();
            assert!(message.contains(why), "{bad}: {message}");
            assert!(message.contains("FROM:TO:PORT/PROTOCOL"), "{message}");
        }
    }

    #[test]
    fn a_flow_the_lab_does_not_probe_is_refused() {
        let app = crate::manifests::load_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo/app"),
        )
        .unwrap();
        let pods = super::super::plan::plan(app).unwrap().pods;
        let flow = |s: &str| parse_flow(s).unwrap();
        assert!(probed(&pods, &flow("default/toolbox:shop/db:5432/TCP")).is_ok());
        for (bad, why) in [
            ("default/nobody:shop/db:5432/TCP", "no pod default/nobody"),
            ("default/toolbox:shop/nodb:5432/TCP", "no pod shop/nodb"),
            ("shop/db:shop/db:5432/TCP", "to itself"),
            (
                "default/toolbox:shop/db:5433/TCP",
                "does not serve TCP/5433",
            ),
            (
                "default/toolbox:shop/db:5432/UDP",
                "does not serve UDP/5432",
            ),
        ] {
            let message = probed(&pods, &flow(bad)).unwrap_err().to_string();
            assert!(message.contains(why), "{bad}: {message}");
        }
    }

    #[test]
    fn log_fields_are_read_through_colours_and_quotes() {
        let line = "\u{1b}[2m2026\u{1b}[0m denied \u{1b}[3mreason\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"drop_policy_ingress\" src=10.88.0.5 dport=5432";
        let f = fields(line);
        assert_eq!(f["reason"], "drop_policy_ingress");
        assert_eq!(f["src"], "10.88.0.5");
        assert_eq!(f["dport"], "5432");
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let labels: BTreeMap<String, String> = [("app".to_owned(), "db".to_owned())].into();
        let req = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        };
        assert!(matches(None, &labels));
        assert!(matches(Some(&LabelSelector::default()), &labels));
        assert!(matches(Some(&req("In", &["db", "x"])), &labels));
        assert!(!matches(Some(&req("NotIn", &["db"])), &labels));
        assert!(matches(Some(&req("Exists", &[])), &labels));
        assert!(!matches(Some(&req("DoesNotExist", &[])), &labels));
        assert!(!matches(Some(&req("Bogus", &[])), &labels));
    }
}
