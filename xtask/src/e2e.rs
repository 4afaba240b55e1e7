//! `cargo xtask e2e …`: end-to-end tests against real components.
//!
//! `kube`: a real kube-apiserver v1.20.2 and etcd on loopback ports (found, unpacked or built by
//! deploy/build-kube-apiserver.sh), the agent with `--source kube`, and real packets between pods in
//! network namespaces. Runs every `tests/tests/kube_*.rs` one test at a time and prints
//! `N passed, M failed`.
//!
//! `node`: a real single-node cluster on this machine (tests/src/node.rs: etcd, kube-apiserver,
//! controller-manager, scheduler, containerd, kubelet, the CNI bridge plugin), the agent image
//! and `deploy/` applied with kubectl, and tests/tests/node_e2e.rs's checks. Installs what it
//! needs (Debian packages, the Kubernetes binaries through deploy/build-kube.sh, the images).

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::Subcommand;

use std::path::Path;

use crate::{cmd, ebpf, image, toolchain};

#[derive(Debug, Subcommand)]
pub enum Which {
    /// The agent against a real kube-apiserver, checked with real packets (root).
    Kube,
    /// The image and deploy/ on a real single-node cluster: kubelet, containerd, CNI (root).
    Node,
}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Kube => kube(),
        Which::Node => node(),
    }
}

/// What the node tier installs from Debian: (package, a command it provides).
const NODE_PACKAGES: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("containernetworking-plugins", "/usr/lib/cni/bridge"),
    ("busybox-static", "/bin/busybox"),
    ("curl", "curl"),
];

/// The Kubernetes binaries the node runs, from deploy/build-kube.sh.
const NODE_BINARIES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "pause",
    "agnhost",
];

pub fn node() -> anyhow::Result<()> {
    cmd::require_root("cargo xtask e2e node")?;
    toolchain::ensure_debian_packages(&[
        toolchain::LAB_PACKAGES,
        toolchain::TEST_PACKAGES,
        NODE_PACKAGES,
    ])?;
    let mut bin_dir = None;
    for name in NODE_BINARIES {
        let path = kube_binary(name)?;
        bin_dir = Path::new(&path).parent().map(Path::to_path_buf);
    }
    let bin_dir = bin_dir.expect("at least one binary");

    let images = cmd::target_dir().join("image");
    let tag = image::default_tag();
    let next = format!("{tag}-next");
    let agent = image::build(image::Opts {
        tag: Some(tag.clone()),
        out: None,
        rootfs: None,
    })?;
    // The same image under a second tag: the rollout check moves the DaemonSet to it.
    let agent_next = image::build(image::Opts {
        tag: Some(next.clone()),
        out: None,
        rootfs: None,
    })?;
    let pause = images.join("pause.tar");
    image::pause_image(NODE_PAUSE_IMAGE, &bin_dir.join("pause-v1.20.2"), &pause)?;
    cmd::run(Command::new("cargo").args([
        "build",
        "--package",
        "zt-tests",
        "--bin",
        "zt-netprobe",
    ]))?;
    let agnhost = images.join("agnhost.tar");
    image::agnhost_image(
        AGNHOST_IMAGE,
        &bin_dir.join("agnhost-v1.20.2"),
        &cmd::target_dir().join("debug/zt-netprobe"),
        &agnhost,
    )?;

    let root = cmd::workspace_root();
    let mut cargo = Command::new("cargo");
    cargo
        .args(["test", "--package", "zt-tests", "--test", "node_e2e"])
        .env("ZT_KUBE_BIN_DIR", &bin_dir)
        .env("ZT_NODE_PAUSE_TAR", &pause)
        .env("ZT_NODE_AGNHOST_TAR", &agnhost)
        .env("ZT_NODE_AGENT_TAR", &agent.path)
        .env("ZT_NODE_AGENT_TAR_NEXT", &agent_next.path)
        .env("ZT_NODE_AGENT_TAG", &tag)
        .env("ZT_NODE_AGENT_TAG_NEXT", &next)
        .env("ZT_DEPLOY_DIR", root.join("deploy"));
    let (passed, failed, ok) = run_counting(&mut cargo)?;
    if !ok || failed > 0 || passed == 0 {
        bail!("e2e node failed");
    }
    Ok(())
}

/// The sandbox image the node's containerd and kubelet name.
const NODE_PAUSE_IMAGE: &str = "k8s.local/pause:3.4";
/// The test servers' image, as upstream's e2e suite names it.
const AGNHOST_IMAGE: &str = "k8s.gcr.io/e2e-test-images/agnhost:2.21";

/// A binary's path from deploy/build-kube.sh; prebuilt copies come from `$ZT_KUBE_XZ_DIR`, or
/// `../shared/bin` beside the workspace when it has them.
fn kube_binary(name: &str) -> anyhow::Result<String> {
    let script = cmd::workspace_root().join("deploy/build-kube.sh");
    let mut find = Command::new("bash");
    find.arg(&script).arg(name).stderr(Stdio::inherit());
    if std::env::var_os("ZT_KUBE_XZ_DIR").is_none() {
        let shared = cmd::workspace_root().join("../shared/bin");
        if shared.is_dir() {
            find.env("ZT_KUBE_XZ_DIR", shared);
        }
    }
    let out = find
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} {name} failed ({})", script.display(), out.status);
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

pub fn kube() -> anyhow::Result<()> {
    cmd::require_root("cargo xtask e2e kube")?;
    toolchain::ensure_debian_packages(&[toolchain::LAB_PACKAGES, toolchain::TEST_PACKAGES])?;
    let apiserver = kube_apiserver()?;
    ebpf::build()?;

    let tests = test_targets(|name| name.starts_with("kube_"))?;
    if tests.is_empty() {
        bail!("no tests/tests/kube_*.rs");
    }
    // The packet tests run the agent binary itself, in the lab's node namespace.
    cmd::run(Command::new("cargo").args(["build", "--package", "zt-agent", "--bin", "zt-agent"]))?;
    let agent = cmd::agent_binary();
    let mut cargo = Command::new("cargo");
    cargo.args(["test", "--package", "zt-tests"]);
    for test in &tests {
        cargo.args(["--test", test]);
    }
    // Kernel state and loopback ports are shared: one test at a time.
    cargo
        .args(["--", "--test-threads=1"])
        .env("KUBE_APISERVER", &apiserver)
        .env("ZT_AGENT_BIN", agent);
    let (passed, failed, ok) = run_counting(&mut cargo)?;
    println!("{passed} passed, {failed} failed");
    if !ok || failed > 0 || passed == 0 {
        bail!("e2e kube failed");
    }
    Ok(())
}

/// The integration-test targets of `tests/` whose name passes `keep`, sorted: `NAME.rs`, or
/// `NAME/main.rs` for a test with modules of its own.
pub fn test_targets(keep: impl Fn(&str) -> bool) -> anyhow::Result<Vec<String>> {
    let dir = cmd::workspace_root().join("tests/tests");
    let mut tests: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let name = match name.strip_suffix(".rs") {
                Some(stem) => stem.to_owned(),
                None if entry.path().join("main.rs").exists() => name,
                None => return None,
            };
            keep(&name).then_some(name)
        })
        .collect();
    tests.sort();
    Ok(tests)
}

/// The binary's path, from deploy/build-kube-apiserver.sh (which may take minutes to build it).
fn kube_apiserver() -> anyhow::Result<String> {
    let script = cmd::workspace_root().join("deploy/build-kube-apiserver.sh");
    let mut find = Command::new("bash");
    find.arg(&script).stderr(Stdio::inherit());
    eprintln!("+ {}", cmd::display(&find));
    let out = find
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let path = String::from_utf8(out.stdout)?.trim().to_owned();
    eprintln!("kube-apiserver: {path}");
    Ok(path)
}

/// Runs a test binary through cargo, passing its output through, and adds up its libtest
/// `test result:` lines or its own `N passed, M failed` line.
fn run_counting(cargo: &mut Command) -> anyhow::Result<(u64, u64, bool)> {
    eprintln!("+ {}", cmd::display(cargo));
    let mut child = cargo
        .current_dir(cmd::workspace_root())
        .stdout(Stdio::piped())
        .spawn()?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("stdout is piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = parse_result(&line).or_else(|| parse_plain(&line)) {
            passed += p;
            failed += f;
        }
    }
    Ok((passed, failed, child.wait()?.success()))
}

/// `test result: FAILED. 2 passed; 1 failed; 0 ignored; …` → (2, 1).
fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |what: &str| -> Option<u64> {
        rest.split(';').find_map(|part| {
            part.trim()
                .rsplit_once(' ')
                .filter(|(_, w)| *w == what)?
                .0
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
    };
    Some((count("passed")?, count("failed")?))
}

/// `9 passed, 1 failed` → (9, 1).
fn parse_plain(line: &str) -> Option<(u64, u64)> {
    let (passed, failed) = line.trim().split_once(", ")?;
    Some((
        passed.strip_suffix(" passed")?.parse().ok()?,
        failed.strip_suffix(" failed")?.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::{parse_plain, parse_result};

    #[test]
    fn parses_plain_summaries() {
        assert_eq!(parse_plain("9 passed, 1 failed"), Some((9, 1)));
        assert_eq!(parse_plain("check x ... ok"), None);
    }

    #[test]
    fn parses_libtest_summaries() {
        assert_eq!(
            parse_result(
                "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s"
            ),
            Some((3, 0))
        );
        assert_eq!(
            parse_result("test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured"),
            Some((2, 1))
        );
        assert_eq!(parse_result("test something ... ok"), None);
    }
}
