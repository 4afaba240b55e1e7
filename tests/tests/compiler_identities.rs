//! Identities: one per distinct (namespace, labels, named ports, ipBlocks) class, stable.

use std::net::IpAddr;

use zt_agent::compiler::{Compiler, Locality, Options};
use zt_tests::oracle::{
    Cluster,
    build::{mk_ns, mk_pod, mk_policy, named, peer_block, sel},
    compiled,
};

fn identity(state: &zt_agent::datapath::DatapathState, ip: &str) -> u32 {
    let addr: IpAddr = ip.parse().unwrap();
    zt_agent::datapath::model::peer_identity(state, addr)
}

#[test]
fn pods_with_equal_labels_share_an_identity() {
    let cluster = Cluster {
        namespaces: vec![mk_ns("a", &[])],
        pods: vec![
            mk_pod(
                "a",
                "p1",
                &[("app", "web")],
                &["10.0.0.1"],
                &[("http", "TCP", 80)],
            ),
            mk_pod(
                "a",
                "p2",
                &[("app", "web")],
                &["10.0.0.2"],
                &[("http", "TCP", 80)],
            ),
            mk_pod("a", "p3", &[("app", "db")], &["10.0.0.3"], &[]),
        ],
        policies: vec![],
    };
    let c = compiled::compile(&cluster, Options::default());
    let s = c.state();
    assert_eq!(identity(s, "10.0.0.1"), identity(s, "10.0.0.2"));
    assert_ne!(identity(s, "10.0.0.1"), identity(s, "10.0.0.3"));
}

fn two_pods(ports_b: &[(&str, &str, i32)]) -> Cluster {
    Cluster {
        namespaces: vec![mk_ns("a", &[])],
        pods: vec![
            mk_pod(
                "a",
                "p1",
                &[("app", "web")],
                &["10.0.0.1"],
                &[("http", "TCP", 80)],
            ),
            mk_pod("a", "p2", &[("app", "web")], &["10.0.9.2"], ports_b),
        ],
        policies: vec![mk_policy(
            "a",
            "p",
            sel(&[]),
            None,
            Some(vec![(None, Some(vec![named(None, "http")]))]),
            None,
        )],
    }
}

#[test]
fn a_named_port_meaning_differently_splits_an_identity() {
    let same = compiled::compile(&two_pods(&[("http", "TCP", 80)]), Options::default());
    assert_eq!(
        identity(same.state(), "10.0.0.1"),
        identity(same.state(), "10.0.9.2")
    );
    let differ = compiled::compile(&two_pods(&[("http", "TCP", 8080)]), Options::default());
    assert_ne!(
        identity(differ.state(), "10.0.0.1"),
        identity(differ.state(), "10.0.9.2")
    );
}

#[test]
fn ip_block_coverage_splits_pod_identities_and_equal_regions_share_one() {
    let mut cluster = two_pods(&[("http", "TCP", 80)]);
    cluster.policies.push(mk_policy(
        "a",
        "q",
        sel(&[]),
        None,
        Some(vec![
            (Some(vec![peer_block("10.0.0.0/24", &[])]), None),
            (
                Some(vec![peer_block("172.16.0.0/16", &["172.16.1.0/24"])]),
                None,
            ),
            (
                Some(vec![peer_block("172.17.0.0/16", &["172.17.1.0/24"])]),
                None,
            ),
        ]),
        None,
    ));
    let c = compiled::compile(&cluster, Options::default());
    let s = c.state();
    assert_ne!(identity(s, "10.0.0.1"), identity(s, "10.0.9.2"));
    // 10.0.0.9 is in the block but no pod: a CIDR identity.
    assert!(identity(s, "10.0.0.9") >= zt_common::identity::FIRST_CIDR);
    // Both excepts are in no block: the world.
    assert_eq!(identity(s, "172.16.1.1"), zt_common::identity::WORLD);
    assert_eq!(identity(s, "172.17.1.1"), zt_common::identity::WORLD);
    assert_ne!(identity(s, "172.16.0.1"), identity(s, "172.17.0.1"));
    assert_eq!(identity(s, "8.8.8.8"), zt_common::identity::WORLD);
}

#[test]
fn host_addresses_are_host_and_locality_selects_endpoints() {
    let mut cluster = two_pods(&[("http", "TCP", 80)]);
    cluster.pods[1] = zt_tests::oracle::build::on_node(cluster.pods[1].clone(), "node-b");
    let options = Options {
        local: Locality::Node("node-b".into()),
        host_addrs: vec!["192.168.5.5".parse().unwrap()],
        audit: false,
    };
    let c = compiled::compile(&cluster, options);
    let s = c.state();
    assert_eq!(identity(s, "192.168.5.5"), zt_common::identity::HOST);
    let endpoints: Vec<String> = s.endpoints.keys().map(ToString::to_string).collect();
    assert_eq!(endpoints, ["10.0.9.2"]);
}

#[test]
fn identities_and_refs_are_stable_and_a_no_op_writes_nothing() {
    let cluster = two_pods(&[("http", "TCP", 8080)]);
    let mut compiler = Compiler::new(Options::default());
    let mut index = compiled::index(&cluster);
    assert!(!compiler.update(&index).is_empty());
    let before = compiler.state().clone();
    assert!(compiler.update(&index).is_empty());
    // A third pod with a new class changes only what it adds.
    index.apply(zt_agent::resource::Resource::Pod(mk_pod(
        "a",
        "p3",
        &[("app", "db")],
        &["10.0.0.3"],
        &[],
    )));
    let delta = compiler.update(&index);
    assert!(delta.identities.values().all(Option::is_some), "{delta:?}");
    assert!(delta.policy.values().all(Option::is_some), "{delta:?}");
    for (net, id) in &before.identities {
        assert_eq!(compiler.state().identities.get(net), Some(id));
    }
    assert_eq!(compiler.policy_name(1), Some("a/p"));
}
