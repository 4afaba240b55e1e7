//! A fresh machine has nothing mounted on `/sys/fs/bpf`. Each test here runs zt in a private mount
//! namespace (`unshare --mount`, private propagation) where bpffs is unmounted, so the machine's
//! own mounts are untouched and whatever the run mounts or pins vanishes with the namespace:
//!
//! - `lab probe` gives the same results as with bpffs mounted;
//! - `zt-agent run --source dir:` mounts bpffs itself and reaches `/readyz` 200;
//! - a pin root that cannot be put on a bpffs (a read-only parent, no `CAP_SYS_ADMIN`) stops the
//!   agent with exit code 1 and a message that says what to mount, and leaves nothing behind.
//!
//! Root only; `--test-threads=1`.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use zt_agent::lab::agent::binary;

/// Shell prologue run inside the private mount namespace: unmount every bpffs stacked on
/// /sys/fs/bpf and prove it is gone.
const UNMOUNT_BPFFS: &str = "while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf || exit 90; done; \
     [ \"$(stat -f -c %T /sys/fs/bpf)\" != bpf_fs ] || exit 91";

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: fresh, labels: {name: fresh}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: fresh, labels: {app: server}}
spec:
  containers: [{name: c, image: none, ports: [{containerPort: 80, protocol: TCP}, {containerPort: 81, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: fresh, labels: {app: client}}
spec:
  containers: [{name: c, image: none, ports: [{containerPort: 80, protocol: TCP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: fresh, labels: {app: other}}
spec:
  containers: [{name: c, image: none, ports: [{containerPort: 80, protocol: TCP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-from-client, namespace: fresh}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]
"#;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (mount namespaces, network namespaces, eBPF)"
    );
}

/// Runs `script` under `sh -c` in a private mount namespace with bpffs unmounted.
fn in_fresh_mount_ns(script: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!("{UNMOUNT_BPFFS}; {script}"));
    cmd
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("unshare (util-linux) runs");
    eprintln!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn manifests() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), MANIFESTS).unwrap();
    dir
}

fn probe_results(stdout: &[u8]) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_slice(stdout).expect("lab probe --json");
    report["results"].clone()
}

#[test]
fn lab_probe_without_bpffs_gives_the_same_results() {
    require_root();
    let dir = manifests();
    let agent = binary().unwrap();
    let probe = |mut cmd: Command| {
        cmd.arg("lab")
            .args(["probe", "--json", "--manifests"])
            .arg(dir.path());
        cmd
    };
    let mounted = run(probe(Command::new(&agent)));
    assert!(mounted.status.success());

    let fresh = run(in_fresh_mount_ns(&format!(
        "exec {} lab probe --json --manifests {}",
        agent.display(),
        dir.path().display()
    )));
    assert!(fresh.status.success(), "lab probe failed without bpffs");
    let (expected, got) = (probe_results(&mounted.stdout), probe_results(&fresh.stdout));
    assert_eq!(got.as_array().map(Vec::len), Some(8), "{got}");
    assert!(
        got.as_array()
            .unwrap()
            .iter()
            .any(|r| r["allowed"] == false),
        "the policy denies something: {got}"
    );
    assert_eq!(got, expected);
}

#[test]
fn agent_without_bpffs_mounts_one_and_becomes_ready() {
    require_root();
    let dir = manifests();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // No pod here is on this machine's interfaces: the agent loads, syncs, and has nothing to
    // attach, so it must be ready once its pin root is on a bpffs.
    let pin_root = format!("/sys/fs/bpf/ztfresh-{}", std::process::id());
    let mut agent = in_fresh_mount_ns(&format!(
        "exec {} run --source dir:{} --node-name no-such-node --pin-root {pin_root} --listen 127.0.0.1:{port}",
        binary().unwrap().display(),
        dir.path().display()
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = false;
    while Instant::now() < deadline && !ready {
        if let Ok(Some(status)) = agent.try_wait() {
            panic!("the agent exited: {status}: {:?}", agent.wait_with_output());
        }
        ready = readyz(port) == Some(200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = agent.kill();
    let out = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(ready, "/readyz never answered 200; the agent's log:\n{log}");
    assert!(log.contains("mounted a bpf filesystem"), "{log}");
    assert!(
        !Path::new(&pin_root).exists(),
        "the private bpffs and its pins went with the namespace"
    );
}

fn readyz(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// The agent's exit code and stderr when it is started on `pin_root` by `prefix` (inside the
/// namespace, after bpffs is gone); the script fails with 92 if `pin_root` exists afterwards.
fn failed_start(setup: &str, prefix: &str, pin_root: &str) -> (Option<i32>, String) {
    let dir = manifests();
    let out = run(in_fresh_mount_ns(&format!(
        "{setup}; {prefix} {} run --source dir:{} --node-name none --pin-root {pin_root} --listen 127.0.0.1:0; \
         code=$?; [ ! -e {pin_root} ] || exit 92; exit $code",
        binary().unwrap().display(),
        dir.path().display()
    )));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pin_root_on_a_read_only_filesystem_fails_clearly_and_leaves_nothing() {
    require_root();
    let ro = tempfile::tempdir().unwrap();
    let ro = ro.path().display();
    let (code, stderr) = failed_start(
        &format!("mount -t tmpfs -o ro tmpfs {ro}"),
        "",
        &format!("{ro}/zt/pins"),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("read-only"), "{stderr}");
    assert!(stderr.contains("mount -t bpf bpf /sys/fs/bpf"), "{stderr}");
}

#[test]
fn without_cap_sys_admin_the_agent_says_what_to_mount() {
    require_root();
    let pin_root = format!("/sys/fs/bpf/ztfresh-nocap-{}", std::process::id());
    let (code, stderr) = failed_start(
        "true",
        "setpriv --bounding-set -sys_admin --inh-caps -sys_admin",
        &pin_root,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("CAP_SYS_ADMIN"), "{stderr}");
    assert!(stderr.contains("mount -t bpf bpf /sys/fs/bpf"), "{stderr}");
}
