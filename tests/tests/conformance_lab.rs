//! The lab itself, under the conformance suite: a full 288-probe matrix in seconds, IPv6 pods,
//! nothing left behind after a run, leftovers of a killed run removed by the next one, and bad
//! manifests refused with the file and object named. Root only; `--test-threads=1`.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use zt_agent::lab::{Lab, Timeouts, state};
use zt_tests::lab_support::{cluster_yaml, resources, upstream_labels};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the lab tests need root (network namespaces, eBPF)"
    );
}

/// Names under /run/netns and /sys/fs/bpf that belong to run `run`.
fn traces_of(run: &str) -> Vec<String> {
    let mut found = Vec::new();
    for dir in ["/run/netns", "/sys/fs/bpf"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("ztlab-{run}")) {
                found.push(format!("{dir}/{name}"));
            }
        }
    }
    if Path::new(state::STATE_DIR)
        .join(format!("{run}.json"))
        .exists()
    {
        found.push(format!("{}/{run}.json", state::STATE_DIR));
    }
    found
}

#[test]
fn the_upstream_matrix_runs_in_seconds_and_leaves_nothing() {
    require_root();
    let started = Instant::now();
    let lab = Lab::build(resources(&cluster_yaml(upstream_labels), ""), None)
        .unwrap_or_else(|e| panic!("build: {e}"));
    let built = started.elapsed();
    let run = lab.run_id().to_owned();
    assert!(!traces_of(&run).is_empty(), "the run is recorded");
    let probing = Instant::now();
    let report = lab.probe(Timeouts::default());
    let probed = probing.elapsed();
    assert_eq!(report.results.len(), 288);
    let denied: Vec<_> = report.results.iter().filter(|o| !o.allowed).collect();
    assert!(
        denied.is_empty(),
        "no policy, yet denied: {denied:?}\n{}",
        report.table()
    );
    assert!(
        probed < Duration::from_secs(5),
        "288 probes took {probed:?}"
    );
    eprintln!("lab built (agent ready) in {built:?}; 288 probes in {probed:?}");
    drop(lab);
    assert_eq!(traces_of(&run), Vec::<String>::new(), "left behind");
}

#[test]
fn ipv6_pods_are_probed_over_ipv6_too() {
    require_root();
    let yaml = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: v6}
spec: {containers: [{name: c, image: none, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]}]}
status: {podIPs: [{ip: 10.88.9.1}, {ip: 'fd00:88::1'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: v6}
spec: {containers: [{name: c, image: none, ports: [{containerPort: 80}]}]}
status: {podIPs: [{ip: 10.88.9.2}, {ip: 'fd00:88::2'}]}
";
    let resources = zt_agent::manifests::parse(Path::new("v6.yaml"), yaml).unwrap();
    let lab = Lab::build(resources, None).unwrap_or_else(|e| panic!("build: {e}"));
    let report = lab.probe(Timeouts::default());
    assert_eq!(report.results.len(), 3);
    assert_eq!(report.results_ipv6.len(), 3);
    assert!(
        report
            .results
            .iter()
            .chain(&report.results_ipv6)
            .all(|o| o.allowed),
        "{report:?}"
    );
}

#[test]
fn a_killed_runs_leftovers_are_removed_by_the_next_lab() {
    require_root();
    // A run whose owner is gone: a process that has exited, with a namespace and a pin dir.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let run = format!("{dead}-0");
    let netns = format!("ztlab-{run}-node");
    let pin = format!("/sys/fs/bpf/ztlab-{run}");
    let status = Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::create_dir_all(&pin).unwrap();
    let lab = Lab::build(resources(&cluster_yaml(upstream_labels), ""), None);
    let left = traces_of(&run);
    // Clean up ourselves before asserting, so a failure leaves nothing either.
    zt_agent::lab::net::delete_netns(&netns);
    let _ = std::fs::remove_dir_all(&pin);
    lab.unwrap_or_else(|e| panic!("build: {e}"));
    assert_eq!(
        left,
        Vec::<String>::new(),
        "leftovers of run {run} survived"
    );
}

#[test]
fn bad_manifests_are_refused_naming_file_and_object() {
    let dir = std::env::temp_dir().join(format!("ztlab-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("10-app.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\n",
    )
    .unwrap();
    // The zt-agent binary of this target dir (tests run from target/<profile>/deps).
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("zt-agent");
    let out = Command::new(&binary)
        .args(["lab", "probe", "--manifests"])
        .arg(&dir)
        .output();
    std::fs::remove_dir_all(&dir).unwrap();
    let out = out.unwrap_or_else(|e| panic!("{}: {e} (cargo build -p zt-agent)", binary.display()));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("10-app.yaml")
            && stderr.contains("document 1")
            && stderr.contains("Service"),
        "{stderr}"
    );
}

#[test]
fn sctp_is_probed_over_raw_sockets_and_enforced_by_port() {
    require_root();
    let yaml = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: s, labels: {app: a}}
spec: {containers: [{name: c, image: none, ports: [{containerPort: 9, protocol: SCTP}, {containerPort: 10, protocol: SCTP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: s, labels: {app: b}}
spec: {containers: [{name: c, image: none, ports: [{containerPort: 9, protocol: SCTP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: s, labels: {app: c}}
spec: {containers: [{name: c, image: none}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-sctp-9-from-b, namespace: s}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 9, protocol: SCTP}]}]
";
    let resources = zt_agent::manifests::parse(Path::new("sctp.yaml"), yaml).unwrap();
    let lab = Lab::build(resources, None).unwrap_or_else(|e| panic!("build: {e}"));
    let report = lab.probe(Timeouts::default());
    assert!(report.not_probed.is_empty(), "{report:?}");
    let sctp = zt_agent::lab::Protocol::Sctp;
    let expect = [
        ("s/b", "s/a", 9, true),
        ("s/c", "s/a", 9, false),
        ("s/b", "s/a", 10, false),
        ("s/c", "s/a", 10, false),
        ("s/a", "s/b", 9, true),
        ("s/c", "s/b", 9, true),
    ];
    for (from, to, port, allowed) in expect {
        assert_eq!(
            report.allowed(from, to, port, sctp),
            Some(allowed),
            "{from} → {to} SCTP/{port}\n{}",
            report.table()
        );
    }
    assert_eq!(report.results.len(), expect.len());
}
