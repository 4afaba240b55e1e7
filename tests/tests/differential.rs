//! Differential tests: proptest-generated clusters mixing every NetworkPolicy feature (and bad
//! input), compiled by zt and answered by the userspace datapath model, against the oracle, on
//! every probe (every ordered pair of addresses × ports × protocols).
//!
//! `PROPTEST_CASES` scales the number of clusters (default 1000 per property).

use proptest::prelude::*;
use zt_agent::{
    compiler::{Compiler, Locality, Options},
    datapath::DatapathState,
};
use zt_tests::oracle::{
    self, Cluster,
    arbitrary::{cluster, probes},
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
            let bad = disagreements(cluster, &[compiler.state()]);
            prop_assert!(bad.is_empty(), "{} disagreements, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
        }
    }
}
