//! Table tests, one per NetworkPolicy feature and per bad-input case: each row states the
//! verdict the spec requires, checked against both the compiled datapath (model) and the oracle.

use zt_agent::compiler::Options;
use zt_tests::oracle::{
    self, Cluster,
    build::{
        Rule, expr, mk_ns, mk_pod, mk_policy, named, peer_block, peer_pods, port, sel, sel_expr,
    },
    compiled,
};

/// `(src, dst, port, protocol, allowed)`.
type Row = (&'static str, &'static str, u16, &'static str, bool);

fn check(cluster: &Cluster, rows: &[Row]) -> zt_agent::compiler::Compiler {
    let compiler = compiled::compile(cluster, Options::default());
    for (src, dst, port, protocol, want) in rows {
        let (s, d) = (src.parse().unwrap(), dst.parse().unwrap());
        assert_eq!(
            oracle::allowed(cluster, s, d, *port, protocol),
            *want,
            "oracle {src} -> {dst} {protocol}/{port}"
        );
        assert_eq!(
            compiled::allowed(&[compiler.state()], s, d, *port, protocol),
            *want,
            "datapath {src} -> {dst} {protocol}/{port}"
        );
    }
    compiler
}

/// Namespaces `a` (team=x) and `b` (team=y); in `a`: web 10.0.0.1 (http=80), db 10.0.0.2
/// (http=8080); in `b`: web 10.0.1.1, client 10.0.1.2.
fn base(policies: Vec<k8s_openapi::api::networking::v1::NetworkPolicy>) -> Cluster {
    Cluster {
        namespaces: vec![mk_ns("a", &[("team", "x")]), mk_ns("b", &[("team", "y")])],
        pods: vec![
            mk_pod(
                "a",
                "web",
                &[("app", "web")],
                &["10.0.0.1", "fd00::1"],
                &[("http", "TCP", 80)],
            ),
            mk_pod(
                "a",
                "db",
                &[("app", "db")],
                &["10.0.0.2"],
                &[("http", "TCP", 8080), ("dns", "UDP", 53)],
            ),
            mk_pod(
                "b",
                "web",
                &[("app", "web")],
                &["10.0.1.1"],
                &[("http", "TCP", 81)],
            ),
            mk_pod(
                "b",
                "client",
                &[("app", "client")],
                &["10.0.1.2", "fd00::2"],
                &[],
            ),
        ],
        policies,
    }
}

fn ingress(
    ns: &str,
    selector: &[(&str, &str)],
    rules: Vec<Rule>,
) -> k8s_openapi::api::networking::v1::NetworkPolicy {
    mk_policy(ns, "p", sel(selector), None, Some(rules), None)
}

fn egress(
    ns: &str,
    selector: &[(&str, &str)],
    rules: Vec<Rule>,
) -> k8s_openapi::api::networking::v1::NetworkPolicy {
    mk_policy(ns, "e", sel(selector), Some(&["Egress"]), None, Some(rules))
}

#[test]
fn no_policy_allows_everything() {
    check(
        &base(vec![]),
        &[
            ("10.0.1.2", "10.0.0.1", 80, "TCP", true),
            ("8.8.8.8", "10.0.0.2", 1, "UDP", true),
        ],
    );
}

#[test]
fn empty_pod_selector_isolates_the_whole_namespace_only() {
    let c = base(vec![ingress("a", &[], vec![])]);
    check(
        &c,
        &[
            ("10.0.1.2", "10.0.0.1", 80, "TCP", false),
            ("10.0.0.2", "10.0.0.1", 80, "TCP", false),
            ("10.0.0.1", "10.0.1.1", 80, "TCP", true),
            ("10.0.0.1", "10.0.1.2", 80, "ICMP", true),
        ],
    );
}

#[test]
fn policy_types_default_to_egress_only_when_egress_rules_exist() {
    let mut p = mk_policy(
        "a",
        "p",
        sel(&[("app", "web")]),
        None,
        None,
        Some(vec![(None, Some(vec![port(None, Some(53), None)]))]),
    );
    let c = base(vec![p.clone()]);
    check(
        &c,
        &[
            ("10.0.0.1", "10.0.0.2", 53, "TCP", true),
            ("10.0.0.1", "10.0.0.2", 80, "TCP", false),
            ("10.0.1.2", "10.0.0.1", 80, "TCP", false),
        ],
    );
    // Explicit Egress only: ingress stays open.
    p.spec.as_mut().unwrap().policy_types = Some(vec!["Egress".into()]);
    check(
        &base(vec![p]),
        &[
            ("10.0.1.2", "10.0.0.1", 80, "TCP", true),
            ("10.0.0.1", "10.0.0.2", 80, "TCP", false),
        ],
    );
}

#[test]
fn rules_union_across_policies() {
    let a = ingress(
        "a",
        &[("app", "web")],
        vec![(
            Some(vec![peer_pods(None, Some(sel(&[("app", "db")])))]),
            None,
        )],
    );
    let mut b = ingress(
        "a",
        &[],
        vec![(None, Some(vec![port(Some("UDP"), Some(53), None)]))],
    );
    b.metadata.name = Some("q".into());
    check(
        &base(vec![a, b]),
        &[
            ("10.0.0.2", "10.0.0.1", 9, "TCP", true),
            ("10.0.1.2", "10.0.0.1", 53, "UDP", true),
            ("10.0.1.2", "10.0.0.1", 53, "TCP", false),
            ("10.0.1.2", "10.0.0.2", 53, "UDP", true),
        ],
    );
}

#[test]
fn pod_selector_peers_stay_in_the_policy_namespace() {
    let c = base(vec![ingress(
        "a",
        &[("app", "db")],
        vec![(
            Some(vec![peer_pods(None, Some(sel(&[("app", "web")])))]),
            None,
        )],
    )]);
    check(
        &c,
        &[
            ("10.0.0.1", "10.0.0.2", 5432, "TCP", true),
            ("10.0.1.1", "10.0.0.2", 5432, "TCP", false),
        ],
    );
}

#[test]
fn namespace_selector_alone_and_anded_with_pod_selector() {
    let alone = ingress(
        "a",
        &[("app", "db")],
        vec![(
            Some(vec![peer_pods(Some(sel(&[("team", "y")])), None)]),
            None,
        )],
    );
    check(
        &base(vec![alone]),
        &[
            ("10.0.1.1", "10.0.0.2", 1, "TCP", true),
            ("10.0.1.2", "10.0.0.2", 1, "TCP", true),
            ("10.0.0.1", "10.0.0.2", 1, "TCP", false),
        ],
    );
    let and = ingress(
        "a",
        &[("app", "db")],
        vec![(
            Some(vec![peer_pods(
                Some(sel(&[("kubernetes.io/metadata.name", "b")])),
                Some(sel(&[("app", "client")])),
            )]),
            None,
        )],
    );
    check(
        &base(vec![and]),
        &[
            ("10.0.1.2", "10.0.0.2", 1, "TCP", true),
            ("10.0.1.1", "10.0.0.2", 1, "TCP", false),
        ],
    );
}

#[test]
fn match_expressions() {
    let p = ingress(
        "a",
        &[("app", "db")],
        vec![(
            Some(vec![peer_pods(
                Some(sel(&[])),
                Some(sel_expr(vec![
                    expr("app", "NotIn", &["web"]),
                    expr("app", "Exists", &[]),
                ])),
            )]),
            None,
        )],
    );
    check(
        &base(vec![p]),
        &[
            ("10.0.1.2", "10.0.0.2", 1, "TCP", true),
            ("10.0.1.1", "10.0.0.2", 1, "TCP", false),
        ],
    );
}

#[test]
fn ip_block_with_except_covers_pods_and_other_addresses() {
    let p = ingress(
        "a",
        &[("app", "db")],
        vec![(
            Some(vec![peer_block(
                "10.0.0.0/16",
                &["10.0.1.0/24", "10.0.0.1/32"],
            )]),
            None,
        )],
    );
    check(
        &base(vec![p]),
        &[
            ("10.0.2.7", "10.0.0.2", 1, "TCP", true),
            ("10.0.1.2", "10.0.0.2", 1, "TCP", false),
            ("10.0.1.9", "10.0.0.2", 1, "TCP", false),
            ("10.0.0.1", "10.0.0.2", 1, "TCP", false),
            ("10.1.0.1", "10.0.0.2", 1, "TCP", false),
        ],
    );
}

#[test]
fn numbered_ports_end_port_and_protocols() {
    let p = ingress(
        "a",
        &[("app", "db")],
        vec![(
            None,
            Some(vec![
                port(None, Some(8000), Some(8010)),
                port(Some("UDP"), Some(53), None),
                port(Some("SCTP"), None, None),
            ]),
        )],
    );
    check(
        &base(vec![p]),
        &[
            ("10.0.1.2", "10.0.0.2", 7999, "TCP", false),
            ("10.0.1.2", "10.0.0.2", 8000, "TCP", true),
            ("10.0.1.2", "10.0.0.2", 8010, "TCP", true),
            ("10.0.1.2", "10.0.0.2", 8011, "TCP", false),
            ("10.0.1.2", "10.0.0.2", 8005, "UDP", false),
            ("10.0.1.2", "10.0.0.2", 53, "UDP", true),
            ("10.0.1.2", "10.0.0.2", 9999, "SCTP", true),
            ("10.0.1.2", "10.0.0.2", 0, "ICMP", false),
        ],
    );
}

#[test]
fn ingress_named_port_resolves_on_each_destination_pod() {
    let p = ingress("a", &[], vec![(None, Some(vec![named(None, "http")]))]);
    check(
        &base(vec![p]),
        &[
            ("10.0.1.2", "10.0.0.1", 80, "TCP", true),
            ("10.0.1.2", "10.0.0.1", 8080, "TCP", false),
            ("10.0.1.2", "10.0.0.2", 8080, "TCP", true),
            ("10.0.1.2", "10.0.0.2", 80, "TCP", false),
        ],
    );
}

#[test]
fn egress_named_port_resolves_on_each_peer_and_never_on_plain_addresses() {
    let p = egress(
        "b",
        &[("app", "client")],
        vec![(None, Some(vec![named(None, "http")]))],
    );
    check(
        &base(vec![p]),
        &[
            ("10.0.1.2", "10.0.0.1", 80, "TCP", true),
            ("10.0.1.2", "10.0.0.2", 8080, "TCP", true),
            ("10.0.1.2", "10.0.0.2", 80, "TCP", false),
            ("10.0.1.2", "10.0.1.1", 81, "TCP", true),
            ("10.0.1.2", "8.8.8.8", 80, "TCP", false),
            ("fd00::2", "fd00::1", 80, "TCP", true),
        ],
    );
}

#[test]
fn bad_input_is_skipped_towards_deny_and_the_rest_is_enforced() {
    let p = ingress(
        "a",
        &[("app", "db")],
        vec![
            (Some(vec![peer_block("10.0.0.0/33", &[])]), None),
            (
                Some(vec![peer_block("10.0.0.0/16", &["192.168.0.0/24"])]),
                None,
            ),
            (
                Some(vec![peer_pods(
                    None,
                    Some(sel_expr(vec![expr("app", "Like", &["web"])])),
                )]),
                None,
            ),
            (
                None,
                Some(vec![
                    port(Some("ICMP"), Some(1), None),
                    port(None, Some(70000), None),
                    named(None, "nope"),
                ]),
            ),
            (
                Some(vec![peer_pods(None, Some(sel(&[("app", "web")])))]),
                Some(vec![port(None, Some(443), None)]),
            ),
        ],
    );
    let compiler = check(
        &base(vec![p]),
        &[
            ("10.0.0.1", "10.0.0.2", 443, "TCP", true),
            ("10.0.0.1", "10.0.0.2", 80, "TCP", false),
            ("10.0.1.2", "10.0.0.2", 1, "TCP", false),
            ("10.0.2.2", "10.0.0.2", 1, "TCP", false),
        ],
    );
    let warnings: Vec<String> = compiler
        .warnings()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(warnings.len(), 5, "{warnings:#?}");
    assert!(
        warnings
            .iter()
            .all(|w| w.starts_with("networkpolicy a/p: ")),
        "{warnings:#?}"
    );
    assert_eq!(compiler.skipped_total(), 5);
}

#[test]
fn an_invalid_pod_selector_isolates_the_namespace_and_allows_nothing() {
    let p = mk_policy(
        "a",
        "p",
        sel_expr(vec![expr("app", "In", &[])]),
        None,
        Some(vec![(None, None)]),
        None,
    );
    check(
        &base(vec![p]),
        &[
            ("10.0.1.2", "10.0.0.1", 80, "TCP", false),
            ("10.0.0.1", "10.0.1.1", 80, "TCP", true),
        ],
    );
}

#[test]
fn policies_do_not_leak_across_namespaces() {
    let p = ingress("b", &[], vec![(Some(vec![peer_pods(None, None)]), None)]);
    let mut allow_all_in_b = p.clone();
    allow_all_in_b.spec.as_mut().unwrap().ingress = Some(vec![Default::default()]);
    check(
        &base(vec![allow_all_in_b]),
        &[
            ("8.8.8.8", "10.0.1.1", 80, "TCP", true),
            ("8.8.8.8", "10.0.0.1", 80, "TCP", true),
        ],
    );
    let deny_b = ingress("b", &[], vec![]);
    check(
        &base(vec![deny_b]),
        &[
            ("10.0.0.1", "10.0.1.1", 80, "TCP", false),
            ("10.0.1.1", "10.0.0.1", 80, "TCP", true),
        ],
    );
}
