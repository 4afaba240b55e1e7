//! `cargo xtask bench compiler [--json]`: compile a synthetic cluster — 10,000 pods in 100
//! namespaces, 1,000 policies mixing selectors, namespace selectors, ipBlocks with excepts,
//! named ports, endPort ranges and both directions — from scratch, then time incremental
//! changes (one pod's labels, or one policy's port) from the index change to the ordered map
//! writes. Also reports how the entry count grows with pods and with policies.

use std::time::Instant;

use k8s_openapi::api::{core::v1::Pod, networking::v1::NetworkPolicy};
use serde_json::json;
use zt_agent::{
    compiler::{Compiler, Options},
    datapath::{DatapathState, plan},
    index::Index,
    resource::{Kind, Resource},
};

use crate::oracle::build::{
    expr, mk_ns, mk_pod, mk_policy, named, peer_block, peer_pods, port, sel, sel_expr,
};

const NAMESPACES: usize = 100;
const PODS_PER_NS: usize = 100;
const POLICIES_PER_NS: usize = 10;
const APPS: usize = 10;
const INCREMENTAL_SAMPLES: usize = 200;

struct Cluster {
    namespaces: Vec<Resource>,
    pods: Vec<Pod>,
    policies: Vec<NetworkPolicy>,
}

fn ns_name(n: usize) -> String {
    format!("ns-{n:03}")
}

fn pod(n: usize, i: usize, app: usize) -> Pod {
    let ns = ns_name(n);
    let index = n * PODS_PER_NS + i;
    let v4 = format!(
        "10.{}.{}.{}",
        1 + index / 65536,
        (index / 256) % 256,
        index % 256
    );
    let v6 = format!("fd00::{index:x}");
    let app = format!("app-{app}");
    let tier = ["web", "api", "db"][i % 3];
    // The same port name means different numbers on different apps.
    let http = if app.ends_with(['0', '2', '4']) {
        8080
    } else {
        80
    };
    mk_pod(
        &ns,
        &format!("pod-{i}"),
        &[("app", &app), ("tier", tier)],
        &[&v4, &v6],
        &[
            ("http", "TCP", http),
            ("metrics", "TCP", 9090),
            ("dns", "UDP", 53),
        ],
    )
}

fn policy(n: usize, p: usize, port_number: i32) -> NetworkPolicy {
    let ns = ns_name(n);
    let app = format!("app-{}", p % APPS);
    let (next, after) = (ns_name((n + 1) % NAMESPACES), ns_name((n + 2) % NAMESPACES));
    let ingress = vec![
        (
            Some(vec![peer_pods(None, Some(sel(&[("tier", "web")])))]),
            Some(vec![named(None, "http")]),
        ),
        (
            Some(vec![peer_pods(
                Some(sel_expr(vec![expr(
                    "kubernetes.io/metadata.name",
                    "In",
                    &[&next, &after],
                )])),
                Some(sel_expr(vec![expr("tier", "In", &["api", "web"])])),
            )]),
            Some(vec![port(
                Some("TCP"),
                Some(port_number),
                Some(port_number + 10),
            )]),
        ),
        (
            Some(vec![peer_block(
                "10.0.0.0/8",
                &["10.1.0.0/16", &format!("10.2.{}.0/24", p % 50)],
            )]),
            Some(vec![port(None, Some(443), None)]),
        ),
    ];
    let egress = vec![
        (
            Some(vec![peer_pods(
                Some(sel(&[("kubernetes.io/metadata.name", "ns-000")])),
                None,
            )]),
            Some(vec![named(Some("UDP"), "dns")]),
        ),
        (
            Some(vec![peer_pods(None, Some(sel(&[("tier", "db")])))]),
            Some(vec![port(Some("TCP"), Some(5432), None)]),
        ),
        (
            Some(vec![peer_block(
                "0.0.0.0/0",
                &["10.0.0.0/8", "192.168.0.0/16"],
            )]),
            None,
        ),
    ];
    let types: &[&str] = if p.is_multiple_of(2) {
        &["Ingress", "Egress"]
    } else {
        &["Ingress"]
    };
    mk_policy(
        &ns,
        &format!("policy-{p}"),
        sel(&[("app", &app)]),
        Some(types),
        Some(ingress),
        Some(egress),
    )
}

fn cluster(namespaces: usize, pods_per_ns: usize, policies_per_ns: usize) -> Cluster {
    let namespaces_list = (0..namespaces)
        .map(|n| Resource::Namespace(mk_ns(&ns_name(n), &[("team", ["a", "b", "c", "d"][n % 4])])))
        .collect();
    let pods = (0..namespaces)
        .flat_map(|n| (0..pods_per_ns).map(move |i| pod(n, i, i % APPS)))
        .collect();
    let policies = (0..namespaces)
        .flat_map(|n| (0..policies_per_ns).map(move |p| policy(n, p, 8000)))
        .collect();
    Cluster {
        namespaces: namespaces_list,
        pods,
        policies,
    }
}

fn build_index(c: &Cluster) -> Index {
    let mut index = Index::default();
    index.reset(Kind::Namespace, c.namespaces.clone());
    index.reset(
        Kind::Pod,
        c.pods.iter().cloned().map(Resource::Pod).collect(),
    );
    index.reset(
        Kind::NetworkPolicy,
        c.policies
            .iter()
            .cloned()
            .map(Resource::NetworkPolicy)
            .collect(),
    );
    index
}

fn entries(state: &DatapathState) -> serde_json::Value {
    json!({"policy": state.policy.len(), "identities": state.identities.len(), "endpoints": state.endpoints.len()})
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

pub fn run(json: bool) -> anyhow::Result<()> {
    let full = cluster(NAMESPACES, PODS_PER_NS, POLICIES_PER_NS);
    let mut index = build_index(&full);
    let mut compiler = Compiler::new(Options::default());
    let start = Instant::now();
    let delta = compiler.update(&index);
    let writes = plan(&DatapathState::default(), &delta);
    let full_compile_ms = ms(start);
    anyhow::ensure!(
        !writes.is_empty() && compiler.warnings().is_empty(),
        "bench cluster compiled to nothing"
    );

    let mut samples = Vec::with_capacity(INCREMENTAL_SAMPLES);
    let mut total_writes = 0;
    for s in 0..INCREMENTAL_SAMPLES {
        let n = (s * 37) % NAMESPACES;
        let resource = if s % 2 == 0 {
            // A pod moves to another app: new identity, other policies select it.
            let i = (s * 13) % PODS_PER_NS;
            Resource::Pod(pod(n, i, (i + 1 + s) % APPS))
        } else {
            Resource::NetworkPolicy(policy(n, s % POLICIES_PER_NS, 8000 + s as i32))
        };
        // `plan` reads only the applied endpoints (for transitional values).
        let applied = DatapathState {
            endpoints: compiler.state().endpoints.clone(),
            ..Default::default()
        };
        let start = Instant::now();
        index.apply(resource);
        let delta = compiler.update(&index);
        let writes = plan(&applied, &delta);
        samples.push(ms(start));
        total_writes += writes.len();
    }
    samples.sort_by(f64::total_cmp);
    let p99 = samples[(samples.len() * 99).div_ceil(100) - 1];
    let p50 = samples[samples.len() / 2];

    let mut growth = Vec::new();
    for (namespaces, pods_per_ns, policies_per_ns) in [
        (100, 25, 10),
        (100, 50, 10),
        (100, 100, 10),
        (100, 100, 2),
        (100, 100, 5),
    ] {
        let c = cluster(namespaces, pods_per_ns, policies_per_ns);
        let mut compiler = Compiler::new(Options::default());
        compiler.update(&build_index(&c));
        growth.push(json!({"pods": c.pods.len(), "policies": c.policies.len(), "entries": entries(compiler.state())}));
    }

    let report = json!({
        "pods": full.pods.len(),
        "policies": full.policies.len(),
        "full_compile_ms": round(full_compile_ms),
        "incremental_p50_ms": round(p50),
        "incremental_p99_ms": round(p99),
        "incremental_mean_writes": total_writes / INCREMENTAL_SAMPLES,
        "entries": entries(compiler.state()),
        "growth": growth,
        "peak_rss_mb": round(peak_rss_mb()),
    });
    if json {
        println!("{report}");
    } else {
        println!("pods {}  policies {}", full.pods.len(), full.policies.len());
        println!(
            "full compile            {:.1} ms ({} writes)",
            full_compile_ms,
            writes.len()
        );
        println!("incremental p50 / p99   {p50:.2} / {p99:.2} ms ({INCREMENTAL_SAMPLES} changes)");
        println!("entries                 {}", report["entries"]);
        for g in &growth {
            println!("growth                  {g}");
        }
        println!("peak RSS                {:.0} MB", peak_rss_mb());
    }
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
