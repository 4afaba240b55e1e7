//! `zt-agent explain` against the oracle: on random clusters (every NetworkPolicy feature and
//! some bad input, `oracle::arbitrary`), every probe's explained verdict equals the oracle's, and
//! each side's attribution is consistent with its verdict — a side that is isolated and passes
//! names at least one admitting rule of a policy that isolates it, a side that drops names none.
//!
//! Pure: no kernel. `PROPTEST_CASES` scales the number of clusters (default 300).

use proptest::prelude::*;
use zt_agent::{
    explain::{Explained, Offline, Side},
    lab::plan::{Port, Protocol},
    resource::Resource,
};
use zt_tests::oracle::{
    self, Cluster,
    arbitrary::{self, cluster},
};

/// The cluster as the lab plans it (the API server's namespace name labels added), so the oracle
/// and explain read the same objects.
fn planned(cluster: &Cluster) -> (Offline, Cluster) {
    let resources: Vec<Resource> = cluster
        .namespaces
        .iter()
        .cloned()
        .map(Resource::Namespace)
        .chain(cluster.pods.iter().cloned().map(Resource::Pod))
        .chain(
            cluster
                .policies
                .iter()
                .cloned()
                .map(Resource::NetworkPolicy),
        )
        .collect();
    let plan = zt_agent::lab::plan::plan(resources.clone()).expect("random clusters plan");
    let mut seen = Cluster::default();
    for r in plan.resources {
        match r {
            Resource::Namespace(n) => seen.namespaces.push(n),
            Resource::Pod(p) => seen.pods.push(p),
            Resource::NetworkPolicy(p) => seen.policies.push(p),
        }
    }
    (
        Offline::new(resources).expect("random clusters compile"),
        seen,
    )
}

/// What is wrong with one side's attribution, if anything.
fn inconsistent(side: &Side) -> Option<&'static str> {
    if side.dropped() && !side.allowed_by.is_empty() {
        return Some("dropped but a rule is named as admitting");
    }
    if side.isolated && side.reason == "allow_policy" && side.allowed_by.is_empty() {
        return Some("admitted by policy but no rule named");
    }
    if side.isolated && side.isolated_by.is_empty() {
        return Some("isolated by no policy");
    }
    if side
        .allowed_by
        .iter()
        .any(|a| !side.isolated_by.contains(&a.policy))
    {
        return Some("admitted by a policy that does not isolate it");
    }
    None
}

fn check(cluster: &Cluster) -> Vec<String> {
    let (offline, seen) = planned(cluster);
    let model = offline.model();
    let mut bad = Vec::new();
    for (src, dst, port, protocol) in arbitrary::probes(cluster) {
        let Some(protocol) = Protocol::parse(protocol) else {
            continue; // ICMP: explain takes TCP, UDP and SCTP
        };
        let pods = oracle::pod_addresses(&seen);
        if !pods.contains(&src) && !pods.contains(&dst) {
            continue; // explain needs a pod on one side
        }
        let want = oracle::allowed(&seen, src, dst, port, protocol.as_str());
        let got: Explained = model.between(src, dst, Port { port, protocol });
        let what = format!("{src} -> {dst} {}/{port}", protocol.as_str());
        if got.allowed != want {
            bad.push(format!(
                "{what}: oracle {want}, explain {}: {got:?}",
                got.allowed
            ));
        }
        for (name, side) in [("egress", &got.egress), ("ingress", &got.ingress)] {
            if let Some(why) = inconsistent(side) {
                bad.push(format!("{what}: {name} {why}: {side:?}"));
            }
        }
    }
    bad
}

proptest! {
    #![proptest_config(arbitrary::cases(300))]

    #[test]
    fn explain_agrees_with_the_oracle_and_names_consistent_rules(cluster in cluster()) {
        let bad = check(&cluster);
        prop_assert!(bad.is_empty(), "{} problems, first: {:#?}", bad.len(), &bad[..bad.len().min(3)]);
    }
}

#[test]
fn a_closed_ingress_is_denied_by_both_and_attributed() {
    // The property above compares real verdicts: here one is a deny on both sides.
    use zt_tests::oracle::build::{mk_ns, mk_pod, mk_policy, sel};
    let mut cluster = Cluster::default();
    cluster.namespaces.push(mk_ns("ns-a", &[]));
    cluster
        .pods
        .push(mk_pod("ns-a", "a", &[], &["10.0.0.1"], &[]));
    cluster.pods.push(mk_pod(
        "ns-a",
        "b",
        &[("app", "b")],
        &["10.0.0.2"],
        &[("http", "TCP", 80)],
    ));
    cluster.policies.push(mk_policy(
        "ns-a",
        "deny",
        sel(&[("app", "b")]),
        Some(&["Ingress"]),
        None,
        None,
    ));
    let (offline, seen) = planned(&cluster);
    let got = offline.model().between(
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
        Port {
            port: 80,
            protocol: Protocol::Tcp,
        },
    );
    assert!(!got.allowed);
    assert!(!oracle::allowed(
        &seen,
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
        80,
        "TCP"
    ));
    assert_eq!(got.ingress.isolated_by, ["ns-a/deny"]);
    assert!(check(&cluster).is_empty());
}
