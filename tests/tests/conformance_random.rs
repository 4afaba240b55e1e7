//! Conformance on random clusters: the upstream x/y/z × a/b/c cluster with random labels and
//! random policies (every construct of the curated cases, `lab_support::random`), applied one after
//! another to one lab running the real agent, each matrix checked flow by flow against the oracle
//! (`zt_tests::oracle`, written from the API reference and sharing no code with the compiler).
//!
//! `ZT_CONFORMANCE_SEED` (default: time-based, printed) and `ZT_CONFORMANCE_CLUSTERS` (default
//! 12) pick the clusters; a failure names the seed and prints the policies. Root only.

use std::net::IpAddr;

use zt_agent::{lab::Lab, resource::Resource};
use zt_tests::{
    lab_support::{CONVERGE, converge, pod_ip, random, resources},
    oracle,
};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The oracle's view of what the lab's agent follows (addresses filled in by the lab's plan).
fn oracle_cluster(resources: &[Resource]) -> oracle::Cluster {
    let planned = zt_agent::lab::plan::plan(resources.to_vec()).expect("plans");
    let mut cluster = oracle::Cluster::default();
    for resource in planned.resources {
        match resource {
            Resource::Namespace(ns) => cluster.namespaces.push(ns),
            Resource::Pod(pod) => cluster.pods.push(pod),
            Resource::NetworkPolicy(p) => cluster.policies.push(p),
        }
    }
    cluster
}

#[test]
fn random_clusters_match_the_oracle() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the conformance suite needs root (network namespaces, eBPF)"
    );
    let first = env_u64("ZT_CONFORMANCE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let count = env_u64("ZT_CONFORMANCE_CLUSTERS").unwrap_or(12);
    eprintln!(
        "random conformance: seeds {first}..{} (ZT_CONFORMANCE_SEED={first})",
        first + count
    );

    let mut lab: Option<Lab> = None;
    let (mut expected_denied, mut expected_allowed) = (0usize, 0usize);
    for seed in first..first + count {
        let mut rng = random::Rng::new(seed);
        let cluster = random::cluster(&mut rng);
        // Seeded names: consecutive cases always differ, so the agent always sees a change.
        let policies =
            random::policies(&mut rng).replace("name: random-", &format!("name: s{seed}-"));
        let resources = resources(&cluster, &policies);
        let truth = oracle_cluster(&resources);
        match &lab {
            None => {
                lab = Some(
                    Lab::build(resources, None).unwrap_or_else(|e| panic!("build the lab: {e}")),
                )
            }
            Some(lab) => lab
                .apply(resources)
                .unwrap_or_else(|e| panic!("seed {seed}: apply: {e}")),
        }
        let lab = lab.as_ref().expect("built");
        let rule = |f: &zt_tests::lab_support::Flow<'_>| {
            let src: IpAddr = pod_ip(f.from_ns, f.from_pod).parse().expect("an address");
            let dst: IpAddr = pod_ip(f.to_ns, f.to_pod).parse().expect("an address");
            oracle::allowed(&truth, src, dst, f.port, f.protocol.as_str())
        };
        let what = format!(
            "seed {seed} (ZT_CONFORMANCE_SEED={seed} ZT_CONFORMANCE_CLUSTERS=1), policies:\n{policies}\n"
        );
        converge(lab, &what, &rule, CONVERGE);
        for flow in zt_tests::lab_support::all_flows() {
            if rule(&flow) {
                expected_allowed += 1;
            } else {
                expected_denied += 1;
            }
        }
    }
    eprintln!("checked {expected_allowed} allowed and {expected_denied} denied flows");
    // Not vacuous: the generated policies both open and close flows.
    assert!(expected_allowed > 0 && expected_denied > 0);
}
