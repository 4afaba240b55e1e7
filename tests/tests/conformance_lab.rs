//! The lab itself, under the conformance suite: a full 288-probe matrix in seconds, IPv6 pods,
//! nothing left behind after a run, leftovers of a killed run removed by the next one, and bad
//! manifests refused with the file and object named. Root only; `--test-threads=1`.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use zt_agent::lab::{Lab, Protocol, Timeouts, state};
use zt_tests::lab_support::{
    cluster_yaml, disagreements, explain_disagreements, resources, upstream_labels,
};

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
    let disagree = explain_disagreements(&lab, &report);
    assert!(disagree.is_empty(), "{disagree:#?}");
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
    let sctp = Protocol::Sctp;
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
    let disagree = explain_disagreements(&lab, &report);
    assert!(disagree.is_empty(), "{disagree:#?}");
}

/// The zt-agent binary of this target dir (tests run from target/<profile>/deps).
fn agent_binary() -> std::path::PathBuf {
    zt_agent::lab::agent::binary().unwrap_or_else(|e| panic!("{e}"))
}

/// A folder with two pods serving TCP/80, removed on drop.
struct TwoPods(std::path::PathBuf);

impl TwoPods {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ztlab-{tag}-m-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pod = |name: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: t}}\n\
                 spec: {{containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\n"
            )
        };
        std::fs::write(
            dir.join("pods.yaml"),
            format!("{}---\n{}", pod("a"), pod("b")),
        )
        .unwrap();
        Self(dir)
    }
}

impl Drop for TwoPods {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `lab up` as the login user `uid` (through `SUDO_UID`, as sudo sets it); killed on drop.
struct LabUp(std::process::Child);

impl LabUp {
    fn start(manifests: &Path, uid: u32) -> Self {
        let child = Command::new(agent_binary())
            .args(["lab", "up", "--manifests"])
            .arg(manifests)
            .env("SUDO_UID", uid.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    /// Waits until this lab's agent answers (its record names an agent) or the lab exits.
    fn wait_up(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.0.try_wait().unwrap().is_some() {
                return false;
            }
            let pid = self.0.id();
            let up = state::records()
                .iter()
                .any(|r| r.owner.pid == pid && r.agent.is_some());
            if up {
                // The agent is recorded once it is spawned; give it time to be ready.
                std::thread::sleep(Duration::from_secs(3));
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for LabUp {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn lab_down_stops_only_the_callers_labs() {
    require_root();
    // Login users no one on this machine is: `lab down` as 4343 can touch no one else's lab.
    let (other, me) = (4242, 4343);
    let manifests = TwoPods::new("down");
    let mut theirs = LabUp::start(&manifests.0, other);
    assert!(theirs.wait_up(), "the other user's lab is up");
    let mut mine = LabUp::start(&manifests.0, me);
    assert!(mine.wait_up(), "my lab is up");
    let mine_pid = mine.0.id();
    let out = Command::new(agent_binary())
        .args(["lab", "down"])
        .env("SUDO_UID", me.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("(pid {mine_pid})")), "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while mine.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!mine.running(), "my lab stopped");
    assert!(
        theirs.running(),
        "the other user's lab still runs:\n{stderr}"
    );
    assert!(
        traces_of(&format!("{mine_pid}-")).is_empty(),
        "my lab left nothing: {:?}",
        traces_of(&format!("{mine_pid}-"))
    );
    let theirs_pid = theirs.0.id();
    assert!(
        !traces_of(&format!("{theirs_pid}-")).is_empty(),
        "the other user's lab is intact"
    );
}

#[test]
fn a_failed_start_leaves_no_pin_dir_namespace_or_record() {
    require_root();
    // An agent that pins something and then fails, as a real one failing its load would.
    let dir = std::env::temp_dir().join(format!("ztlab-fail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("agent.sh");
    std::fs::write(
        &fake,
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do\n  [ \"$1\" = --pin-root ] && mkdir -p \"$2/maps\" \"$2/links/7-tc\"\n  shift\ndone\necho failing on purpose >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let manifests = TwoPods::new("fail");
    let child = Command::new(agent_binary())
        .args(["lab", "probe", "--manifests"])
        .arg(&manifests.0)
        .env("ZT_AGENT_BIN", &fake)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run_prefix = format!("{}-", child.id());
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("failing on purpose"),
        "the agent's log is shown: {stderr}"
    );
    // The failed lab's process is gone: whatever is named after its runs is a leftover.
    let mut left = traces_of(&run_prefix);
    left.extend(
        std::fs::read_dir(state::STATE_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&run_prefix)),
    );
    assert!(left.is_empty(), "left behind: {left:?}\n{stderr}");
}

#[test]
fn demo_explain_refuses_what_it_cannot_parse_and_says_when_a_flow_is_allowed() {
    require_root();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo");
    let run = |flow: &str| {
        let started = Instant::now();
        let out = Command::new(agent_binary())
            .args(["lab", "demo", "--dir"])
            .arg(&demo)
            .args(["--explain", flow])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            started.elapsed(),
        )
    };
    for (flow, why) in [
        ("garbage", "FROM:TO:PORT/PROTOCOL"),
        ("default/toolbox:shop/db:5432/tcp", "TCP, UDP or SCTP"),
        (
            "default/toolbox:shop/db:9999/TCP",
            "does not serve TCP/9999",
        ),
        ("default/nobody:shop/db:5432/TCP", "no pod default/nobody"),
    ] {
        let (ok, stdout, stderr, took) = run(flow);
        assert!(!ok, "{flow}: exit status 0\n{stdout}");
        assert!(stderr.contains(why), "{flow}: {stderr}");
        assert!(
            stdout.is_empty(),
            "{flow}: refused before the lab is built:\n{stdout}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{flow}: refused at once ({took:?})"
        );
    }
    let (ok, stdout, stderr, _) = run("shop/frontend:shop/api:8080/TCP");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("Why was shop/frontend → shop/api TCP/8080 allowed?")
            && stdout.contains("It is allowed")
            && stdout.contains("shop/api-from-frontend"),
        "the allowed flow is the one explained, and said to be allowed:\n{stdout}"
    );
    assert!(!stdout.contains("denied, reason"), "{stdout}");
    let (ok, stdout, stderr, _) = run("default/toolbox:shop/db:5432/TCP");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("Why was default/toolbox → shop/db TCP/5432 denied?"),
        "{stdout}"
    );
}

/// `zt-agent explain` without `--manifests` asks the lab's running agent over its control socket:
/// root only (mode 0600; a client of another uid is refused), and its verdicts — from the maps
/// read back from the kernel — are the packets' on every probe, its attribution the compiler's.
#[test]
fn the_running_agent_explains_from_the_kernels_maps() {
    require_root();
    let policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b-on-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}], ports: [{port: serve-80-tcp}]}]
";
    let lab = Lab::build(resources(&cluster_yaml(upstream_labels), policy), None)
        .unwrap_or_else(|e| panic!("build: {e}"));
    let report = lab.probe(Timeouts::default());
    assert_eq!(report.results.len(), 288);
    let socket = lab.control_socket();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&socket)
            .expect("the socket exists")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{}", socket.display());
    let online = zt_agent::explain::wire::ask(&socket, &Default::default())
        .unwrap_or_else(|e| panic!("ask {}: {e}", socket.display()));
    let disagree = disagreements(&online, &report);
    assert!(disagree.is_empty(), "{disagree:#?}");
    let one = online
        .results
        .iter()
        .find(|r| r.from == "y/b" && r.to == "x/a" && r.port == 80 && r.protocol == Protocol::Tcp)
        .expect("y/b → x/a TCP/80 explained");
    assert!(one.allowed, "{one:?}");
    assert_eq!(one.ingress.isolated_by, ["x/a-from-b-on-80"]);
    assert_eq!(
        one.ingress.allowed_by[0].named_port.as_deref(),
        Some("serve-80-tcp")
    );
    let denied = online
        .results
        .iter()
        .find(|r| r.from == "y/c" && r.to == "x/a" && r.port == 80 && r.protocol == Protocol::Tcp)
        .expect("y/c → x/a TCP/80 explained");
    assert_eq!(denied.ingress.reason, "drop_policy_ingress");

    // The CLI, as root and as nobody.
    let cli = |uid: u32| {
        let mut cmd = std::process::Command::new(agent_binary());
        cmd.args([
            "explain",
            "--from",
            "y/b",
            "--to",
            "x/a",
            "--port",
            "80",
            "--protocol",
            "TCP",
            "--socket",
        ])
        .arg(&socket);
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        cmd.output().expect("runs")
    };
    let root = cli(0);
    let text = String::from_utf8_lossy(&root.stdout);
    assert!(
        root.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&root.stderr)
    );
    assert!(
        text.contains("y/b → x/a TCP/80 (named serve-80-tcp): allowed"),
        "{text}"
    );
    let nobody = cli(65534);
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert!(!nobody.status.success(), "a non-root client was answered");
    assert!(
        stderr.contains(&socket.display().to_string()) && stderr.contains("ermission denied"),
        "{stderr}"
    );
}
