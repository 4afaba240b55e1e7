//! Installs what zt's builds and tests need, idempotently: the nightly's `rust-src` (to build
//! `core` for the BPF target), `bpf-linker` 0.10.3 (it links rustc's own LLVM; later versions want
//! an external LLVM), and the Debian packages the lab and the tests use.

use std::process::Command;

use anyhow::Context as _;

use crate::cmd;

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.10.3";

/// Debian packages: (package, a command it provides, used to check it is there).
type Packages = &'static [(&'static str, &'static str)];

/// What the lab and the demo run: `ip`, `nsenter`, `sysctl`, `modprobe` (for `veth` and the tc
/// attach mode's modules where they are not built in).
pub const LAB_PACKAGES: Packages = &[
    ("iproute2", "ip"),
    ("util-linux", "nsenter"),
    ("procps", "sysctl"),
    ("kmod", "modprobe"),
];

/// What the test tiers add: the API server's etcd and certificates, its unpacking, kubectl.
pub const TEST_PACKAGES: Packages = &[
    ("etcd-server", "etcd"),
    ("xz-utils", "xz"),
    ("openssl", "openssl"),
    ("kubernetes-client", "kubectl"),
];

pub fn ensure_ebpf_toolchain() -> anyhow::Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", NIGHTLY]))
        .context("rustup with a nightly toolchain is required to build the eBPF object (`rustup toolchain install nightly`)")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!(
            "installing the nightly's rust-src component (needed to build core for the BPF target)"
        );
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    let linker = cmd::output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!(
            "installing bpf-linker {BPF_LINKER_VERSION} (links the eBPF object with rustc's LLVM)"
        );
        cmd::run(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]))?;
    }
    Ok(())
}

pub fn ensure_debian_packages(sets: &[Packages]) -> anyhow::Result<()> {
    let missing: Vec<&str> = sets
        .iter()
        .flat_map(|set| set.iter())
        .filter(|(_, probe)| {
            !cmd::succeeds(Command::new("sh").args(["-c", &format!("command -v {probe}")]))
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    cmd::run(Command::new("apt-get").arg("update").arg("-q"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
