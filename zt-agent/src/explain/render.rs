//! The readable form of an [`Explanation`]: one block per probe, the verdict first, then the
//! source's egress and the destination's ingress.
//!
//! ```text
//! x/b → x/a TCP/80: denied (drop_policy_ingress)
//!   egress of x/b: not isolated
//!   ingress of x/a: isolated by x/allow-from-c; no rule admits it
//! ```

use std::fmt::Write as _;

use super::{Explained, Explanation, Side};

pub fn text(explanation: &Explanation) -> String {
    let mut out = String::new();
    for result in explanation.results.iter().chain(&explanation.results_ipv6) {
        one(&mut out, result);
    }
    let all = explanation.results.len() + explanation.results_ipv6.len();
    let allowed = explanation
        .results
        .iter()
        .chain(&explanation.results_ipv6)
        .filter(|r| r.allowed)
        .count();
    let _ = writeln!(
        out,
        "{all} probes: {allowed} allowed, {} denied",
        all - allowed
    );
    out
}

fn one(out: &mut String, r: &Explained) {
    let verdict = if !r.allowed {
        "denied"
    } else if r.egress.audited() || r.ingress.audited() {
        "allowed (audit mode: a deny that was let through)"
    } else {
        "allowed"
    };
    let why = [&r.egress, &r.ingress]
        .into_iter()
        .find(|s| s.dropped())
        .map(|s| format!(" ({})", s.reason))
        .unwrap_or_default();
    let names = if r.port_names.is_empty() {
        String::new()
    } else {
        format!(" (named {})", r.port_names.join(", "))
    };
    let _ = writeln!(
        out,
        "{} → {} {}/{}{names}: {verdict}{why}",
        r.from,
        r.to,
        r.protocol.as_str(),
        r.port
    );
    side(out, "egress of", &r.from, &r.egress);
    side(out, "ingress of", &r.to, &r.ingress);
    if let Some(outside) = &r.not_a_pod {
        let blocks: Vec<String> = outside
            .ip_blocks
            .iter()
            .map(|b| {
                let except = if b.except.is_empty() {
                    String::new()
                } else {
                    format!(" except {}", b.except.join(", "))
                };
                format!(
                    "{} {} rule {}: {}{except}",
                    b.policy, b.direction, b.rule, b.cidr
                )
            })
            .collect();
        if blocks.is_empty() {
            let _ = writeln!(
                out,
                "  {} is no pod; no ipBlock in force contains it",
                outside.address
            );
        } else {
            let _ = writeln!(
                out,
                "  {} is no pod; ipBlocks containing it: {}",
                outside.address,
                blocks.join("; ")
            );
        }
    }
}

fn side(out: &mut String, what: &str, who: &str, s: &Side) {
    match s.reason.as_str() {
        "not_a_pod" => {
            let _ = writeln!(out, "  {what} {who}: no pod, not checked by zt");
            return;
        }
        "not_an_endpoint" => {
            let _ = writeln!(
                out,
                "  {what} {who}: not an endpoint of this node, not checked here"
            );
            return;
        }
        _ => {}
    }
    if !s.isolated {
        let _ = writeln!(
            out,
            "  {what} {who}: not isolated (no policy selects it for this direction)"
        );
        return;
    }
    let by = s.isolated_by.join(", ");
    let admitted = if s.allowed_by.is_empty() {
        "no rule admits it".to_owned()
    } else {
        let rules: Vec<String> = s
            .allowed_by
            .iter()
            .map(|a| match &a.named_port {
                Some(name) => format!("{} rule {} (port {name})", a.policy, a.rule),
                None => format!("{} rule {}", a.policy, a.rule),
            })
            .collect();
        format!("allowed by {}", rules.join(", "))
    };
    let _ = writeln!(out, "  {what} {who}: isolated by {by}; {admitted}");
}
