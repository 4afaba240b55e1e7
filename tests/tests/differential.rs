//! Differential tests: proptest-generated clusters mixing every NetworkPolicy feature (and bad
//! input), compiled by zt and answered by the userspace datapath model, against the oracle, on
//! every probe (every ordered pair of addresses × ports × protocols).
//!
//! The compiler is incremental, so the same clusters are also reached through sequences of
//! edits — every kind of object, every field the compiler reads — applied to one index and one
//! compiler, and each step must equal a fresh compile of the same cluster exactly (identity
//! numbers aside) and agree with the oracle.
//!
//! `PROPTEST_CASES` scales the number of clusters (default 1000 per property).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::core::v1::PodIP;
use proptest::prelude::*;
use zt_agent::{
    compiler::{Compiler, Locality, Options},
    datapath::DatapathState,
    index::Index,
    resource::{Kind, Resource},
};
use zt_common::identity::{FIRST_CIDR, FIRST_POD};
use zt_tests::oracle::{
    self, Cluster,
    arbitrary::{EXTERNAL, cluster, probes},
    build::on_node,
    compiled,
};

/// Every probe where the compiled datapath and the oracle disagree.
fn disagreements(cluster: &Cluster, states: &[&DatapathState]) -> Vec<String> {
    probes(cluster)
        .into_iter()
        .filter_map(|(src, dst, port, protocol)| {
            let want = oracle::allowed(cluster, src, dst, port, protocol);
            let got = compiled::allowed(states, src, dst, port, protocol);
            (want != got)
                .then(|| format!("{src} -> {dst} {protocol}/{port}: oracle {want}, datapath {got}"))
        })
        .collect()
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1000);
    ProptestConfig::with_cases(cases)
}

/// A compiler's state and warnings with identity numbers replaced by the first trie key that
/// has them: equal for two compilations of one cluster however their numbers were allocated.
/// A key several policies grant names the one with the lowest ref, which depends on the order
/// policies were first seen, so the policy is left out here and [`stale_refs`] checks it. An entry for a pod identity that no longer exists shows up as
/// `orphan`; a CIDR region whose every prefix is a pod's address (an ipBlock `/32` on a pod) has
/// no trie key of its own and shows up as `shadowed`.
fn canonical(compiler: &Compiler) -> Vec<String> {
    let state = compiler.state();
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    for (net, id) in &state.identities {
        names.entry(*id).or_insert_with(|| net.to_string());
    }
    let name = |id: u32| match names.get(&id) {
        _ if id < FIRST_POD => format!("#{id}"),
        Some(n) => n.clone(),
        None if id >= FIRST_CIDR => "shadowed".to_string(),
        None => format!("orphan {id}"),
    };
    let mut out: Vec<String> = state
        .identities
        .iter()
        .map(|(net, id)| format!("identity {net} = {}", name(*id)))
        .collect();
    out.extend(state.endpoints.iter().map(|(addr, v)| {
        format!(
            "endpoint {addr} = {} flags {:#x} tuples {:#x} {:#x}",
            name(v.identity),
            v.flags,
            v.ingress_tuples,
            v.egress_tuples
        )
    }));
    let policy: BTreeSet<String> = state
        .policy
        .keys()
        .map(|k| {
            format!(
                "policy {} -> {} {}/{} tuple {:#x}",
                name(k.subject),
                name(k.peer),
                k.protocol,
                k.port,
                k.tuple,
            )
        })
        .collect();
    out.extend(policy);
    out.extend(compiler.warnings().iter().map(|w| format!("warning {w}")));
    out
}

/// Policy refs of entries that name no policy of the cluster (a grant left behind).
fn stale_refs(compiler: &Compiler, cluster: &Cluster) -> Vec<String> {
    let names: BTreeSet<String> = cluster
        .policies
        .iter()
        .map(|p| {
            let ns = p.metadata.namespace.as_deref().unwrap_or("default");
            format!("{ns}/{}", p.metadata.name.as_deref().unwrap_or_default())
        })
        .collect();
    let refs: BTreeSet<u32> = compiler
        .state()
        .policy
        .values()
        .map(|v| v.policy_ref)
        .collect();
    refs.into_iter()
        .map(|r| compiler.policy_name(r).unwrap_or("?").to_string())
        .filter(|n| !names.contains(n))
        .collect()
}

/// How many kinds of edit [`edit`] knows.
const EDITS: usize = 13;

/// One edit of `c`: kind `kind`, on the object `pick` chooses, new content from `other`.
/// Edits that do not apply (nothing to remove, no free address) leave `c` as it is.
fn edit(c: &Cluster, other: &Cluster, kind: usize, pick: usize) -> Cluster {
    let mut c = c.clone();
    let nth = |len: usize| (len > 0).then(|| pick % len);
    let free_address = |c: &Cluster, v4: bool| {
        let used = oracle::pod_addresses(c);
        EXTERNAL
            .iter()
            .map(|a| a.parse::<IpAddr>().expect("literal"))
            .find(|a| a.is_ipv4() == v4 && !used.contains(a))
    };
    let set_ips = |pod: &mut k8s_openapi::api::core::v1::Pod, ips: Vec<IpAddr>| {
        let status = pod.status.get_or_insert_with(Default::default);
        status.pod_ip = ips.first().map(ToString::to_string);
        status.pod_ips = Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect());
    };
    match kind {
        // A policy deleted.
        0 => {
            if let Some(i) = nth(c.policies.len()) {
                c.policies.remove(i);
            }
        }
        // A pod relabelled.
        1 => {
            if let (Some(i), Some(j)) = (nth(c.pods.len()), nth(other.pods.len())) {
                c.pods[i].metadata.labels = other.pods[j].metadata.labels.clone();
            }
        }
        // A pod deleted.
        2 => {
            if let Some(i) = nth(c.pods.len()) {
                c.pods.remove(i);
            }
        }
        // A namespace relabelled: its team label moves on (a, b, none).
        3 => {
            if let Some(i) = nth(c.namespaces.len()) {
                let labels = c.namespaces[i]
                    .metadata
                    .labels
                    .get_or_insert_with(Default::default);
                match labels.get("team").map(String::as_str) {
                    None => labels.insert("team".into(), "a".into()),
                    Some("a") => labels.insert("team".into(), "b".into()),
                    Some(_) => labels.remove("team"),
                };
            }
        }
        // A pod's named ports changed.
        4 => {
            if let (Some(i), Some(j)) = (nth(c.pods.len()), nth(other.pods.len())) {
                let ports = other.pods[j].spec.clone();
                c.pods[i]
                    .spec
                    .as_mut()
                    .expect("built with a spec")
                    .containers = ports.expect("built with a spec").containers;
            }
        }
        // A pod's address changed (into or out of ipBlocks).
        5 => {
            if let Some(i) = nth(c.pods.len())
                && let Some(addr) = free_address(&c, pick.is_multiple_of(2))
            {
                set_ips(&mut c.pods[i], vec![addr]);
            }
        }
        // A pod moved to the other node.
        6 => {
            if let Some(i) = nth(c.pods.len()) {
                let node = c.pods[i].spec.as_ref().and_then(|s| s.node_name.clone());
                let to = if node.as_deref() == Some("node-b") {
                    "node-a"
                } else {
                    "node-b"
                };
                c.pods[i] = on_node(c.pods[i].clone(), to);
            }
        }
        // A policy's spec replaced (other selectors, ipBlocks, ports, types).
        7 => {
            if let (Some(i), Some(j)) = (nth(c.policies.len()), nth(other.policies.len())) {
                c.policies[i].spec = other.policies[j].spec.clone();
            }
        }
        // A policy added.
        8 => {
            if let Some(j) = nth(other.policies.len()) {
                let mut p = other.policies[j].clone();
                p.metadata.name = Some(format!("added-{pick}"));
                c.policies.retain(|q| q.metadata != p.metadata);
                c.policies.push(p);
            }
        }
        // A namespace object deleted (its pods stay).
        9 => {
            if let Some(i) = nth(c.namespaces.len()) {
                c.namespaces.remove(i);
            }
        }
        // A pod finished: no address any more.
        10 => {
            if let Some(i) = nth(c.pods.len()) {
                c.pods[i].status.get_or_insert_with(Default::default).phase =
                    Some("Succeeded".into());
            }
        }
        // A pod on the host network: not a pod for policy.
        11 => {
            if let Some(i) = nth(c.pods.len()) {
                c.pods[i]
                    .spec
                    .get_or_insert_with(Default::default)
                    .host_network = Some(true);
            }
        }
        // A pod added.
        _ => {
            if let Some(j) = nth(other.pods.len())
                && let Some(addr) = free_address(&c, !pick.is_multiple_of(2))
            {
                let mut p = other.pods[j].clone();
                p.metadata.name = Some(format!("added-{pick}"));
                set_ips(&mut p, vec![addr]);
                c.pods.retain(|q| q.metadata != p.metadata);
                c.pods.push(p);
            }
        }
    }
    c
}

/// Moves `index` from `from` to `to`: with one re-list per kind, or with an event per object
/// (applies of unchanged objects are no-ops), deletes first.
fn sync(index: &mut Index, from: &Cluster, to: &Cluster, relist: bool) {
    let resources = |c: &Cluster| -> Vec<(Kind, Resource)> {
        let ns = c
            .namespaces
            .iter()
            .cloned()
            .map(|n| (Kind::Namespace, Resource::Namespace(n)));
        let pods = c
            .pods
            .iter()
            .cloned()
            .map(|p| (Kind::Pod, Resource::Pod(p)));
        let policies = c
            .policies
            .iter()
            .cloned()
            .map(|p| (Kind::NetworkPolicy, Resource::NetworkPolicy(p)));
        ns.chain(pods).chain(policies).collect()
    };
    let name = |r: &Resource| {
        let meta = match r {
            Resource::Namespace(n) => &n.metadata,
            Resource::Pod(p) => &p.metadata,
            Resource::NetworkPolicy(p) => &p.metadata,
        };
        (meta.namespace.clone(), meta.name.clone().expect("named"))
    };
    let new = resources(to);
    if relist {
        for kind in [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy] {
            let objects = new
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, r)| r.clone());
            index.reset(kind, objects.collect());
        }
        return;
    }
    let keep: BTreeSet<_> = new.iter().map(|(k, r)| (*k, name(r))).collect();
    for (kind, r) in resources(from) {
        let (ns, n) = name(&r);
        if !keep.contains(&(kind, (ns.clone(), n.clone()))) {
            index.delete(kind, ns.as_deref(), &n);
        }
    }
    for (_, r) in new {
        index.apply(r);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn datapath_model_agrees_with_the_oracle(cluster in cluster()) {
        let compiler = compiled::compile(&cluster, Options::default());
        let bad = disagreements(&cluster, &[compiler.state()]);
        prop_assert!(bad.is_empty(), "{} disagreements, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
    }

    #[test]
    fn per_node_compilations_together_agree_with_the_oracle(cluster in cluster()) {
        let a = compiled::compile(&cluster, Options { local: Locality::Node("node-a".into()), ..Default::default() });
        let b = compiled::compile(&cluster, Options { local: Locality::Node("node-b".into()), ..Default::default() });
        let bad = disagreements(&cluster, &[a.state(), b.state()]);
        prop_assert!(bad.is_empty(), "{} disagreements, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
    }

    #[test]
    fn incremental_updates_reach_the_state_a_fresh_compile_enforces(before in cluster(), after in cluster()) {
        let mut compiler = Compiler::new(Options::default());
        let mut applied = DatapathState::default();
        for cluster in [&before, &after] {
            let delta = compiler.update(&compiled::index(cluster));
            applied.apply(&delta);
            prop_assert_eq!(&applied, compiler.state());
        }
        prop_assert!(compiler.update(&compiled::index(&after)).is_empty());
        let bad = disagreements(&after, &[compiler.state()]);
        prop_assert!(bad.is_empty(), "{} disagreements, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
    }
}

proptest! {
    #![proptest_config(config())]

    /// Small edits (a policy removed, a pod relabelled, a pod gone), back and forth, through one
    /// compiler: most subjects reuse their cached entries, and every step must still agree.
    #[test]
    fn small_edits_through_one_compiler_agree_with_the_oracle(before in cluster(), pick in 0usize..16) {
        let mut edits = vec![before.clone()];
        if !before.policies.is_empty() {
            let mut c = before.clone();
            c.policies.remove(pick % before.policies.len());
            edits.push(c);
        }
        let mut relabelled = before.clone();
        let n = relabelled.pods.len();
        let labels = relabelled.pods[(pick + 1) % n].metadata.labels.clone();
        relabelled.pods[pick % n].metadata.labels = labels;
        edits.push(relabelled);
        let mut fewer = before.clone();
        fewer.pods.remove(pick % n);
        edits.push(fewer);
        edits.push(before.clone());

        let mut compiler = Compiler::new(Options::default());
        let mut applied = DatapathState::default();
        for cluster in &edits {
            applied.apply(&compiler.update(&compiled::index(cluster)));
            prop_assert_eq!(&applied, compiler.state());
            let fresh = compiled::compile(cluster, Options::default());
            prop_assert_eq!(canonical(&compiler), canonical(&fresh));
            prop_assert!(stale_refs(&compiler, cluster).is_empty());
            let bad = disagreements(cluster, &[compiler.state()]);
            prop_assert!(bad.is_empty(), "{} disagreements, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Sequences of edits of every kind through one index (alternately re-listed and fed events)
    /// and one compiler per locality: after every step the compiler's output is what its deltas
    /// add up to, equals a fresh compile of the same cluster, and agrees with the oracle.
    #[test]
    fn edit_sequences_through_one_index_equal_a_fresh_compile(
        start in cluster(),
        other in cluster(),
        edits in proptest::collection::vec((0..EDITS, 0usize..16), 1..=6),
    ) {
        let mut steps = vec![start.clone()];
        for (kind, pick) in edits {
            let next = edit(steps.last().expect("one at least"), &other, kind, pick);
            steps.push(next);
        }
        steps.push(start);
        let node = |n: &str| Options { local: Locality::Node(n.into()), ..Default::default() };
        let options = [Options::default(), node("node-a"), node("node-b")];
        let mut compilers: Vec<(Compiler, DatapathState)> = options
            .iter()
            .map(|o| (Compiler::new(o.clone()), DatapathState::default()))
            .collect();
        let (mut index, mut current) = (Index::default(), Cluster::default());
        for (step, cluster) in steps.iter().enumerate() {
            sync(&mut index, &current, cluster, step % 2 == 0);
            current = cluster.clone();
            for ((compiler, applied), options) in compilers.iter_mut().zip(&options) {
                applied.apply(&compiler.update(&index));
                prop_assert_eq!(&*applied, compiler.state());
                let fresh = compiled::compile(cluster, options.clone());
                prop_assert_eq!(canonical(compiler), canonical(&fresh), "step {}", step);
                let stale = stale_refs(compiler, cluster);
                prop_assert!(stale.is_empty(), "step {step}: entries of {stale:?}");
            }
            let all = disagreements(cluster, &[compilers[0].0.state()]);
            prop_assert!(all.is_empty(), "step {step}: {} disagreements, first: {:?}", all.len(), &all[..all.len().min(5)]);
            let nodes = disagreements(cluster, &[compilers[1].0.state(), compilers[2].0.state()]);
            prop_assert!(nodes.is_empty(), "step {step}: {} per-node disagreements, first: {:?}", nodes.len(), &nodes[..nodes.len().min(5)]);
        }
    }
}

/// Every edit kind on one fixed cluster: a namespace selector and an ipBlock and a named port
/// that each edit can move peers in and out of.
#[test]
fn every_edit_kind_on_a_fixed_cluster_equals_a_fresh_compile() {
    use zt_tests::oracle::build::{mk_ns, mk_pod, mk_policy, named, peer_block, peer_pods, sel};
    let cluster = |team_b: &str| Cluster {
        namespaces: vec![
            mk_ns("ns-a", &[("team", "a")]),
            mk_ns("ns-b", &[("team", team_b)]),
        ],
        pods: vec![
            mk_pod(
                "ns-a",
                "pod-0",
                &[("app", "web")],
                &["10.0.0.1"],
                &[("http", "TCP", 80)],
            ),
            mk_pod(
                "ns-b",
                "pod-1",
                &[("app", "db")],
                &["10.0.1.2"],
                &[("http", "TCP", 8080)],
            ),
        ],
        policies: vec![mk_policy(
            "ns-a",
            "policy-0",
            sel(&[]),
            Some(&["Ingress", "Egress"]),
            Some(vec![(
                Some(vec![peer_pods(Some(sel(&[("team", "b")])), None)]),
                None,
            )]),
            Some(vec![
                (
                    Some(vec![peer_block("10.0.1.0/24", &[])]),
                    Some(vec![named(None, "http")]),
                ),
                (None, Some(vec![named(None, "http")])),
            ]),
        )],
    };
    let (start, other) = (cluster("b"), cluster("x"));
    for kind in 0..EDITS {
        for pick in 0..4 {
            let steps = [
                start.clone(),
                edit(&start, &other, kind, pick),
                start.clone(),
            ];
            let mut compiler = Compiler::new(Options::default());
            let (mut index, mut current) = (Index::default(), Cluster::default());
            for (step, cluster) in steps.iter().enumerate() {
                sync(&mut index, &current, cluster, step % 2 == 0);
                current = cluster.clone();
                compiler.update(&index);
                let fresh = compiled::compile(cluster, Options::default());
                assert_eq!(
                    canonical(&compiler),
                    canonical(&fresh),
                    "edit {kind}/{pick} step {step}"
                );
            }
        }
    }
}
