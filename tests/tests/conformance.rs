//! Conformance: the upstream Kubernetes e2e netpol cases (test/e2e/network/netpol), rewritten from
//! their semantics, run in the lab against the real agent and datapath. Namespaces x, y, z; pods
//! a, b, c; TCP and UDP on 80 and 81. Each case states its expected matrix as a rule over flows.
//!
//! Root only; kernel state is shared, so run with `--test-threads=1` (as `cargo xtask test` does).
//! Needs the agent binary: `cargo build -p zt-agent` (or set ZT_AGENT_BIN).

use zt_agent::lab::Lab;
use zt_tests::lab_support::{CONVERGE, Flow, cluster_yaml, converge, resources, upstream_labels};

fn lab(policies: &str) -> Lab {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the conformance suite needs root (network namespaces, eBPF)"
    );
    Lab::build(resources(&cluster_yaml(upstream_labels), policies), None)
        .unwrap_or_else(|e| panic!("the lab could not be built: {e}"))
}

/// Builds the lab with `policies` and checks the matrix against `rule`.
fn case(what: &str, policies: &str, rule: impl Fn(&Flow<'_>) -> bool) {
    let lab = lab(policies);
    converge(&lab, what, &rule, CONVERGE);
}

const DENY_ALL_INGRESS_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all-ingress, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
";

#[test]
fn no_policy_allows_everything() {
    case("no policy", "", |_| true);
}

#[test]
fn default_deny_ingress() {
    case("deny all ingress in x", DENY_ALL_INGRESS_X, |f| {
        f.to_ns != "x"
    });
}

#[test]
fn default_deny_egress() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all-egress, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
";
    case("deny all egress in x", policy, |f| f.from_ns != "x");
}

#[test]
fn default_deny_both_directions() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
";
    case("deny all in x", policy, |f| {
        f.from_ns != "x" && f.to_ns != "x"
    });
}

#[test]
fn allow_all_ingress_with_an_empty_rule() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec: {podSelector: {}, ingress: [{}], policyTypes: [Ingress]}
";
    case("allow all ingress", policy, |_| true);
}

#[test]
fn allow_from_a_namespace() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
";
    case("x/a from namespace y", policy, |f| {
        !f.to("x", "a") || f.from_ns == "y"
    });
}

#[test]
fn allow_from_a_pod_in_the_same_namespace() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
";
    case("x/a from x/b", policy, |f| {
        !f.to("x", "a") || f.from("x", "b")
    });
}

#[test]
fn namespace_and_pod_selector_in_one_peer_is_an_and() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
";
    case("x/a from y/b only", policy, |f| {
        !f.to("x", "a") || f.from("y", "b")
    });
}

#[test]
fn namespace_and_pod_selector_in_two_peers_is_an_or() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-or-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
";
    case("x/a from namespace y or x/b", policy, |f| {
        !f.to("x", "a") || f.from_ns == "y" || f.from("x", "b")
    });
}

#[test]
fn pod_selector_across_all_namespaces() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-any-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}]}]
";
    case("x/a from any pod c", policy, |f| {
        !f.to("x", "a") || f.from_pod == "c"
    });
}

#[test]
fn match_expressions_not_in() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-not-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: NotIn, values: [y]}]
";
    case("x/a from namespaces not y", policy, |f| {
        !f.to("x", "a") || f.from_ns != "y"
    });
}

#[test]
fn allow_same_namespace_only() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-same-ns, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
";
    case("x only from x", policy, |f| {
        f.to_ns != "x" || f.from_ns == "x"
    });
}

#[test]
fn named_port() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-named-80-tcp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-80-tcp}]}]
";
    case("x/a only on serve-80-tcp", policy, |f| {
        !f.to("x", "a") || f.tcp(80)
    });
}

#[test]
fn named_port_names_the_protocol_too() {
    // `serve-81-udp` with protocol TCP names nothing: TCP is the default protocol of a port.
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-named-81-udp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-81-udp, protocol: UDP}, {port: serve-81-udp}]}]
";
    case("x/a only on serve-81-udp", policy, |f| {
        !f.to("x", "a") || f.udp(81)
    });
}

#[test]
fn numeric_port_and_protocol() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-81-udp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 81, protocol: UDP}]}]
";
    case("x/a only on UDP/81", policy, |f| {
        !f.to("x", "a") || f.udp(81)
    });
}

#[test]
fn port_range_with_end_port() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-80-81-tcp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 80, endPort: 81, protocol: TCP}]}]
";
    case("x/a on TCP 80-81", policy, |f| {
        !f.to("x", "a") || f.protocol == zt_agent::lab::Protocol::Tcp
    });
}

#[test]
fn ip_block_with_except() {
    // All pods sit in 10.88.0.0/16; namespace y is 10.88.2.0/24.
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-cidr-except-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 10.88.0.0/16, except: [10.88.2.0/24]}}]}]
";
    case("x/a from the pod CIDR except y", policy, |f| {
        !f.to("x", "a") || f.from_ns != "y"
    });
}

#[test]
fn ip_block_single_address() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-z-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 10.88.3.3/32}}]}]
";
    case("x/a from 10.88.3.3 (z/c) only", policy, |f| {
        !f.to("x", "a") || f.from("z", "c")
    });
}

#[test]
fn egress_to_a_namespace() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
";
    case("x/a to namespace y only", policy, |f| {
        !f.from("x", "a") || f.to_ns == "y"
    });
}

#[test]
fn egress_to_ip_block_on_one_port() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-cidr-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.88.3.0/24}}], ports: [{port: 80, protocol: TCP}]}]
";
    case("x/a to z's CIDR on TCP/80 only", policy, |f| {
        !f.from("x", "a") || (f.to_ns == "z" && f.tcp(80))
    });
}

#[test]
fn ingress_and_egress_isolation_are_independent() {
    // x/a may not start anything, but everyone may reach it (replies pass by conntrack).
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-no-egress, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}
";
    case("x/a egress denied, ingress open", policy, |f| {
        !f.from("x", "a")
    });
}

#[test]
fn multiple_policies_are_a_union() {
    let policies = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-z-b-on-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 81, protocol: TCP}]
";
    case("x/a from y, and from z/b on TCP/81", policies, |f| {
        !f.to("x", "a") || f.from_ns == "y" || (f.from("z", "b") && f.tcp(81))
    });
}

#[test]
fn deny_all_plus_an_allow_is_the_allow() {
    let policies = format!(
        "{DENY_ALL_INGRESS_X}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-b-to-a, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]
"
    );
    case("x closed, x/a open to x/b", &policies, |f| {
        f.to_ns != "x" || (f.to("x", "a") && f.from("x", "b"))
    });
}

#[test]
fn policy_updates_take_effect_and_revoke() {
    let cluster = cluster_yaml(upstream_labels);
    let lab = lab(DENY_ALL_INGRESS_X);
    converge(&lab, "deny all ingress in x", &|f| f.to_ns != "x", CONVERGE);

    let allow_y = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all-ingress, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
";
    lab.apply(resources(&cluster, allow_y)).expect("apply");
    converge(
        &lab,
        "the same policy now allows y",
        &|f| f.to_ns != "x" || f.from_ns == "y",
        CONVERGE,
    );

    lab.apply(resources(&cluster, "")).expect("apply");
    converge(&lab, "the policy deleted", &|_| true, CONVERGE);

    lab.apply(resources(&cluster, DENY_ALL_INGRESS_X))
        .expect("apply");
    converge(&lab, "deny all again", &|f| f.to_ns != "x", CONVERGE);
}

#[test]
fn pod_and_namespace_relabels_take_effect() {
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}, podSelector: {matchLabels: {pod: b}}}]}]
";
    let lab = lab(policy);
    converge(&lab, "no namespace is blue", &|f| !f.to("x", "a"), CONVERGE);

    // z becomes blue and z/c takes the label pod=b.
    let relabelled = cluster_yaml(|ns, pod| match (ns, pod) {
        ("z", "c") => "pod: b".to_owned(),
        _ => format!("pod: {pod}"),
    })
    .replace("labels: {ns: z}", "labels: {ns: z, team: blue}");
    lab.apply(resources(&relabelled, policy)).expect("apply");
    converge(
        &lab,
        "z is blue, z/b and z/c are pod=b",
        &|f| !f.to("x", "a") || (f.from_ns == "z" && f.from_pod != "a"),
        CONVERGE,
    );
}
